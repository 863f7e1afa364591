"""Checks at the boundary of a table: the input a write is given, and the keys a reader relies on."""
from __future__ import annotations

import threading

from cxatlas.warehouse.tables.errors import DuplicateKeyError, TableError

#: (Delta table id, version) whose keys this process found unique. A version never changes, so a job reading it
#: again (every stage of a scheduled run reads ``uploads``; every analysis its inputs) need not aggregate it again.
#: The table's id, not its path: a table deleted and created again at the same path starts again at version 0.
_UNIQUE_VERSIONS: set[tuple[str, int]] = set()
_UNIQUE_LOCK = threading.Lock()


class ChecksMixin:
    """Argument and key checks for :class:`~cxatlas.warehouse.tables.Table`."""

    def _check_df(self, df, op: str) -> None:
        from pyspark.sql import DataFrame

        if not isinstance(df, DataFrame):
            raise TypeError(f"Type of 'df' in {op} must be DataFrame, got {type(df).__name__}.")
        missing = [c for c in self.spec.schema.names if c not in df.columns]
        if missing:
            raise TableError(f"{op} into '{self.spec.name}': the DataFrame lacks column(s) {missing}")

    def _duplicate_keys(self, df, limit: int) -> list:
        """Up to ``limit`` keys of the spec that occur more than once in ``df``, with their ``count``."""
        from pyspark.sql import functions as F

        return df.groupBy(*self.spec.key).count().filter(F.col("count") > 1).limit(limit).collect()

    def _check_unique_keys(self, df, op: str) -> None:
        dup = self._duplicate_keys(df, 1)
        if dup:
            raise TableError(f"{op} into '{self.spec.name}': key {list(self.spec.key)} is not unique in the input, "
                             f"e.g. {dup[0].asDict()}")

    def read_unique(self, version: int | None = None, examples: int = 5):
        """:meth:`read` of ``version`` (default: the latest, pinned), after checking that no key occurs twice (one
        aggregation over the key columns, once per table version and process).

        Every job reads its keyed inputs through this: a table that somehow holds a key twice (a hand edit, a writer
        outside cxatlas) would otherwise be multiplied silently by every join downstream.
        Raises :class:`DuplicateKeyError` naming the table and a few keys.
        """
        version = self.version() if version is None else version
        df = self.read(version)
        checked = (self._delta().detail().first()["id"], version)
        with _UNIQUE_LOCK:
            if checked in _UNIQUE_VERSIONS:
                return df
        key = list(self.spec.key)
        dup = self._duplicate_keys(df, examples)
        if dup:
            shown = "; ".join(", ".join(f"{k}={row[k]!r}" for k in key) + f" ({row['count']} rows)" for row in dup)
            raise DuplicateKeyError(
                f"table '{self.spec.name}' (at {self.path}) holds duplicate keys {key}, e.g. {shown}. Refusing to "
                f"read it: joins would multiply these rows. Restore a clean version (`cxatlas history "
                f"{self.spec.name}`, Delta time travel) or remove the extra rows, then rerun.")
        with _UNIQUE_LOCK:
            _UNIQUE_VERSIONS.add(checked)
        return df
