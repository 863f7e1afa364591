"""Annotate un-annotated uploads with expression and context scores (see ``cxatlas annotate --help``).

    spark-submit --master spark://HOST:7077 jobs/annotate.py --conf conf/cluster.yaml

Thin entry point: all logic lives in :mod:`cxatlas.stages.annotate` and :mod:`cxatlas.udfs.annotate`.
"""
import sys

from cxatlas.cli import main

if __name__ == "__main__":
    sys.exit(main(["annotate", *sys.argv[1:]]))
