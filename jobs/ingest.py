"""Ingest a manifest into the ``uploads`` table (bad rows to ``quarantine``).

    spark-submit --master spark://HOST:7077 jobs/ingest.py --conf conf/cluster.yaml --manifest s3a://bucket/m.parquet

Thin entry point: all logic lives in :mod:`cxatlas.stages.ingest`; arguments are those of ``cxatlas ingest --help``.
"""
import sys

from cxatlas.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
