"""Test-only fault injection into annotation: proves that one failing video is quarantined while its batch goes on.

Nothing of cxatlas imports this module and no setting names it; the tests install it:

* the faults are the lines of the file named by ``$CXATLAS_TEST_FAULTS`` (``tests/conftest.py`` sets it to a file of
  the test run before the Spark JVM starts, so Spark's Python workers inherit it): ``<video_id>`` makes the
  expression model call of a batch holding that video raise, ``context:<video_id>`` its context model call. No
  file, or an empty one: no fault. The ``inject_faults`` fixture writes the file and removes it after the test.
* in Spark's Python workers: the test session runs its Python daemon through this module
  (``spark.python.daemon.module``, Spark's documented hook for customising the workers, as PySpark's debugging
  guide does), which patches :class:`cxatlas.udfs.annotate.AnnotateBatches` in a worker before it runs a task
  while faults are listed;
* in the test process itself (a test calling ``AnnotateBatches`` directly): :func:`install`, which the fixture
  calls with ``monkeypatch.setattr`` so the patch is undone after the test.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

ENV = "CXATLAS_TEST_FAULTS"
MODULE = "cxatlas_test_faults"  # this module's name on the workers' PYTHONPATH (tests/hooks)
HOOKS_DIR = str(Path(__file__).resolve().parent)


def listed() -> set[str]:
    """The faults listed now (read on every call: a test changes them while the workers live on)."""
    path = os.environ.get(ENV)
    if not path or not os.path.exists(path):
        return set()
    return {line.strip() for line in Path(path).read_text().splitlines() if line.strip()}


def check(video_ids: Iterable[str], prefix: str = "") -> None:
    """Raise if one of ``video_ids`` (as ``<prefix><video_id>``) is listed."""
    faults = listed()
    faulty = [v for v in video_ids if f"{prefix}{v}" in faults]
    if faulty:
        raise RuntimeError(f"fault injected by tests/hooks/{MODULE}.py for {prefix}{faulty}")


def install(set_attribute: Callable = setattr) -> None:
    """Patch ``AnnotateBatches``' two model calls to raise for listed videos first (once per process)."""
    from cxatlas.udfs.annotate import AnnotateBatches

    if getattr(AnnotateBatches, "_test_faults_installed", False):
        return
    predict, contexts = AnnotateBatches._predict, AnnotateBatches._score_contexts

    def _predict(self, videos, models):
        check(v.video_id for v in videos)
        return predict(self, videos, models)

    def _score_contexts(self, videos, models):
        check((v.video_id for v in videos), "context:")
        return contexts(self, videos, models)

    set_attribute(AnnotateBatches, "_predict", _predict)
    set_attribute(AnnotateBatches, "_score_contexts", _score_contexts)
    set_attribute(AnnotateBatches, "_test_faults_installed", True)


def _daemon() -> None:
    """PySpark's daemon, whose forked workers install the patch before a task while faults are listed (so workers
    of tests without faults never import the annotation models for it)."""
    import pyspark.daemon

    run_task = pyspark.daemon.worker_main

    def worker_main(infile, outfile):
        if listed():
            install()
        return run_task(infile, outfile)

    pyspark.daemon.worker_main = worker_main
    pyspark.daemon.manager()


if __name__ == "__main__":
    _daemon()
