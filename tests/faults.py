"""Test-only fault injection into annotation: proves that one failing video is quarantined while its batch goes on.

Nothing of cxatlas imports this module and no setting names it. A test asks for a subclass of
:class:`cxatlas.udfs.annotate.AnnotateBatches` whose model calls raise for the videos it lists
(:func:`faulty_batches`); the ``inject_faults`` fixture (``tests/conftest.py``) also puts that subclass where
``run_annotate`` takes its ``mapInPandas`` function from, for the test only.

Why a subclass travelling with the task, and not a patch installed in Spark's Python workers: the faulty class is
defined inside a function, so PySpark's cloudpickle ships it to the executors by value with the job itself. A fault
therefore reaches exactly the job that asked for it, whatever worker processes run it, however the session was
created (an earlier test, a CLI call inside the test process) and whichever daemon forked them; an earlier version
of this hook patched the workers through ``spark.python.daemon.module`` and once missed a fault in a full run for
want of that hook in the worker that took the task.
"""
from __future__ import annotations

from typing import Iterable

CONTEXT = "context:"  # prefix of a listed video whose context model call fails (bare id: expression model call)


def faulty_batches(*ids: str) -> type:
    """``AnnotateBatches`` whose expression model call raises for a batch holding one of ``ids``, and whose context
    model call raises for one holding a ``context:<video_id>`` of ``ids``."""
    from cxatlas.udfs.annotate import AnnotateBatches

    expression = frozenset(i for i in ids if not i.startswith(CONTEXT))
    context = frozenset(i[len(CONTEXT):] for i in ids if i.startswith(CONTEXT))

    def check(videos: Iterable, listed: frozenset, prefix: str) -> None:
        faulty = [v.video_id for v in videos if v.video_id in listed]
        if faulty:
            raise RuntimeError(f"fault injected by tests/faults.py for {prefix}{faulty}")

    class FaultyAnnotateBatches(AnnotateBatches):
        def _predict(self, videos, models):
            check(videos, expression, "")
            return super()._predict(videos, models)

        def _score_contexts(self, videos, models):
            check(videos, context, CONTEXT)
            return super()._score_contexts(videos, models)

    return FaultyAnnotateBatches
