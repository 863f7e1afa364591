"""Train an expression model on rated faces (see ``cxatlas train --help``).

    spark-submit --master spark://HOST:7077 jobs/train.py --conf conf/cluster.yaml --model fer7 --ratings r.parquet

Thin entry point: all logic lives in :mod:`cxatlas.stages.train`, :mod:`cxatlas.udfs.training` and
:mod:`cxatlas.models.training`.
"""
import sys

from cxatlas.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
