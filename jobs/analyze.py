"""Run the paper's statistics on the annotation tables (see ``cxatlas analyze --help``).

    spark-submit --master spark://HOST:7077 jobs/analyze.py --conf conf/cluster.yaml

Thin entry point: the heavy pass lives in :mod:`cxatlas.udfs.moments`, the driver algebra in :mod:`cxatlas.stats`.
"""
import sys

from cxatlas.cli import main

if __name__ == "__main__":
    sys.exit(main(["analyze", *sys.argv[1:]]))
