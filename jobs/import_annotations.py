"""Import per-video annotations made elsewhere (see ``cxatlas import-annotations --help`` and the README format).

    spark-submit --master spark://HOST:7077 jobs/import_annotations.py --conf conf/cluster.yaml --input s3a://b/ann/

Thin entry point: all logic lives in :mod:`cxatlas.stages.import_annotations`.
"""
import sys

from cxatlas.cli import main

if __name__ == "__main__":
    sys.exit(main(["import-annotations", *sys.argv[1:]]))
