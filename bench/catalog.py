"""The benches' own data roots and the catalog: tables deleted or rebuilt by a bench leave no catalog entry behind.

A catalog entry whose Delta folder is gone makes the next run fail before it starts (Spark then refuses to list the
database or to create a table of that name: ``DELTA_PATH_DOES_NOT_EXIST``), so a bench that deletes table folders
drops their entries too. ``DROP TABLE IF EXISTS`` works whether the folder is still there or already gone; for these
external tables it removes the entry only.
"""
from __future__ import annotations

from typing import Any, Iterable


def forget_tables(store: Any, specs: Iterable[Any]) -> None:
    """Drop the catalog entries of these tables (``TableSpec``s) of ``store``, a ``TableStore``."""
    store.ensure_database()
    for spec in specs:
        store.spark.sql(f"DROP TABLE IF EXISTS {store.table(spec).name}")
