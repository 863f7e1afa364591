"""Checks at the boundary of a table: the input a write is given, and the keys a reader relies on."""
from __future__ import annotations

from cxatlas.warehouse.tables.errors import DuplicateKeyError, TableError


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
        """:meth:`read`, after checking that no key occurs twice (one aggregation over the key columns).

        Every job reads its keyed inputs through this: a table that somehow holds a key twice (a hand edit, a writer
        outside cxatlas) would otherwise be multiplied silently by every join downstream.
        Raises :class:`DuplicateKeyError` naming the table and a few keys.
        """
        df = self.read(version)
        key = list(self.spec.key)
        dup = self._duplicate_keys(df, examples)
        if dup:
            shown = "; ".join(", ".join(f"{k}={row[k]!r}" for k in key) + f" ({row['count']} rows)" for row in dup)
            raise DuplicateKeyError(
                f"table '{self.spec.name}' (at {self.path}) holds duplicate keys {key}, e.g. {shown}. Refusing to "
                f"read it: joins would multiply these rows. Restore a clean version (`cxatlas history "
                f"{self.spec.name}`, Delta time travel) or remove the extra rows, then rerun.")
        return df
