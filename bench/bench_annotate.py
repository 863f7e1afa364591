"""Benchmarks of the annotation pipeline (decode, annotate, memory): the command line's entry point.

    python -m bench.bench_annotate --help
    python -m bench.bench_annotate --only annotate --videos 4 --annotate-repeats 1

The measures live in the package :mod:`bench.annotate`, one module per measure (see its docstring and
bench/README.md); this file keeps the command line (and the children it starts) as it always was.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/bench_annotate.py` as well as `python -m bench.bench_annotate`
    sys.path.insert(0, str(REPO))

from bench.annotate.cli import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    main()
