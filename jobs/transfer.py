"""Cross-dataset transfer of an expression head (see ``cxatlas transfer --help``).

    spark-submit jobs/transfer.py --conf conf/cluster.yaml --ratings r.parquet --country-a US --country-b IN --out t/

Thin entry point: all logic lives in :mod:`cxatlas.stages.transfer`.
"""
import sys

from cxatlas.cli import main

if __name__ == "__main__":
    sys.exit(main(["transfer", *sys.argv[1:]]))
