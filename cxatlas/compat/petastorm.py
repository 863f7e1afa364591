"""petastorm 0.13.1 (the latest release): its end-of-data race patched, its deprecation chatter silenced.

Why petastorm pins pyarrow 14 / numpy 1.26 (README "Install"): it reads its cache through pyarrow's legacy dataset
API, removed in pyarrow 15, and pyarrow 14's wheels are built against numpy 1.x.

* :func:`fix_end_of_data_race`: ``ThreadPool.get_results`` decides that the data has ended when every worker has
  finished what it was given and then the ventilator says it has ventilated everything, two checks in that order. If
  the ventilator thread hands out the last items between the two, both hold and the reader stops early: a pass over
  a one-row-group cache came back empty in 2 of 18 shuffled epochs, and the training loop saw an epoch of nothing.
  Once the ventilator has completed no item is added any more, so checking the workers again after
  ``EmptyResultError`` is exact: still busy means the race happened, and reading goes on.
  :func:`race_present` replays the interleaving on the unpatched pool; ``tests/compat/test_compat.py`` fails when it no
  longer loses the item, i.e. when upstream has fixed it and this patch can go.
* :func:`quiet` / :func:`quiet_for_good`: pyarrow 14 deprecates the legacy API petastorm uses with a FutureWarning per
  call, and petastorm logs at INFO that a plain Parquet cache has no petastorm metadata; neither says anything about
  a run.
"""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import Iterator

_FIXED = "_cxatlas_fixed"


def fix_end_of_data_race() -> None:
    """Process-wide, once: make petastorm's thread pool stop only at the real end of the data (module docstring)."""
    from petastorm.workers_pool import EmptyResultError
    from petastorm.workers_pool.thread_pool import ThreadPool

    original = ThreadPool.get_results
    if getattr(original, _FIXED, False):
        return

    def get_results(self):
        while True:
            try:
                return original(self)
            except EmptyResultError:
                stopped = getattr(self._ventilator, "_stop_requested", False)
                if stopped or self.all_workers_done():
                    raise

    setattr(get_results, _FIXED, True)
    get_results.upstream = original
    ThreadPool.get_results = get_results


def race_present(patched: bool = False) -> bool:
    """Replay the race with the real pool, worker thread and ventilator: the ventilation thread is not started, and
    the one item is ventilated at the moment the pool asks whether ventilation has completed (just after it checked
    the workers). True when the pool ends the pass without reading the item. ``patched``: with
    :func:`fix_end_of_data_race`'s pool, else upstream's own ``get_results``."""
    from petastorm.workers_pool import EmptyResultError
    from petastorm.workers_pool.thread_pool import ThreadPool
    from petastorm.workers_pool.ventilator import ConcurrentVentilator
    from petastorm.workers_pool.worker_base import WorkerBase

    class Echo(WorkerBase):
        def process(self, value):
            self.publish_func(value)

    class LateVentilator(ConcurrentVentilator):
        def start(self) -> None:
            pass

        def completed(self) -> bool:
            if self._iterations_remaining:
                self._ventilate_fn(**self._items_to_ventilate[0])
                self._iterations_remaining = 0
            return super().completed()

    if patched:
        fix_end_of_data_race()
    current = ThreadPool.get_results
    get_results = current if patched else getattr(current, "upstream", current)
    pool = ThreadPool(1)
    pool.start(Echo, None, ventilator=LateVentilator(pool.ventilate, [{"value": 7}]))
    try:
        try:
            if get_results(pool) != 7:
                return True
        except EmptyResultError:
            return True
        try:
            get_results(pool)
        except EmptyResultError:
            return False
        return True  # a second item out of one: not the race, but not right either
    finally:
        pool.stop()
        pool.join()


@contextmanager
def quiet() -> Iterator[None]:
    """Around petastorm calls: its FutureWarnings (and pyarrow's about the legacy API) are not shown. Some fire when
    its objects are collected, after this block: :func:`quiet_for_good`."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\..*)?$")
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*pyarrow.*")
        yield


def quiet_for_good() -> None:
    """Process-wide: petastorm's own FutureWarnings and INFO chatter are dropped (it stays WARNING and up)."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\..*)?$")
    logging.getLogger("petastorm").setLevel(logging.WARNING)
