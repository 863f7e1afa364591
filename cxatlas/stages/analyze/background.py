"""Work an analysis starts early and waits for later: a function in a daemon thread, its outcome in a future.

Why not a ``ThreadPoolExecutor``: its threads are joined when the interpreter exits, so a command whose analysis
failed would still wait for the table creation or housekeeping it had started. A daemon thread is dropped with the
process, and the future hands its result, or what it raised, to whoever waits for it.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Callable, TypeVar

__all__ = ["in_background"]

T = TypeVar("T")


def in_background(name: str, fn: Callable[..., T], *args) -> "Future[T]":
    """``fn(*args)`` in a daemon thread named ``name``; the future's ``result()`` waits for it and raises what it
    raised."""
    done: Future = Future()

    def run() -> None:
        try:
            done.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the result
            done.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return done
