"""Compatibility shims (cxatlas/compat/): each works, and each test fails once upstream makes its shim unnecessary."""
from __future__ import annotations

from importlib.metadata import version

import pytest

from cxatlas.compat import petastorm as compat


def test_petastorm_end_of_data_race_is_patched_and_still_needed():
    """petastorm's thread pool ended a pass early when the ventilator handed out the last item between the pool's
    two end-of-data checks (an empty shuffled epoch, seen in 2 of 18 here); the interleaving is made certain with
    the real pool, worker thread and ventilator. The patched pool reads the item. Upstream's own pool must still
    lose it: when a petastorm release fixes the race, this fails, and cxatlas/compat/petastorm.py's patch goes."""
    assert compat.race_present(patched=True) is False
    assert compat.race_present(patched=False) is True, (
        f"petastorm {version('petastorm')} no longer ends a pass early: remove fix_end_of_data_race "
        "(cxatlas/compat/petastorm.py) and its call in cxatlas/stages/train.py")


def test_petastorm_patch_is_applied_once_and_keeps_upstream():
    from petastorm.workers_pool.thread_pool import ThreadPool

    compat.fix_end_of_data_race()
    first = ThreadPool.get_results
    compat.fix_end_of_data_race()
    assert ThreadPool.get_results is first and first.upstream is not first
    assert not getattr(first.upstream, "_cxatlas_fixed", False)


def test_petastorm_still_needs_pyarrow_14():
    """README "Install": petastorm reads through pyarrow's legacy dataset API, which pyarrow 15 removed; the pin
    can go when a petastorm release no longer uses it."""
    import inspect

    import petastorm.etl.dataset_metadata as meta
    import petastorm.fs_utils as fs_utils
    import pyarrow

    assert pyarrow.__version__.startswith("14."), pyarrow.__version__
    if "metadata_nthreads" not in inspect.getsource(meta) and "pyarrow.localfs" not in inspect.getsource(fs_utils):
        pytest.fail(f"petastorm {version('petastorm')} no longer uses pyarrow's legacy dataset API: the pyarrow 14 / "
                    "numpy 1.26 pins (requirements.txt, README Install) may go")
