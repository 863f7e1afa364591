"""``python -m bench.annotate``: the same command line as ``python -m bench.bench_annotate``."""
from bench.annotate.cli import main

if __name__ == "__main__":
    main()
