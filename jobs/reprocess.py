"""The scheduled run: new manifests, withdrawals, bounded annotation, incremental statistics (``cxatlas reprocess``).

    spark-submit --master spark://HOST:7077 jobs/reprocess.py --conf conf/cluster.yaml --manifest-dir s3a://bucket/manifests

Thin entry point: all logic lives in :mod:`cxatlas.stages.reprocess`; arguments are those of ``cxatlas reprocess --help``.
"""
import sys

from cxatlas.cli import main

if __name__ == "__main__":
    sys.exit(main(["reprocess", *sys.argv[1:]]))
