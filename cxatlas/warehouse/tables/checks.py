"""Checks at the boundary of a table: the input a write is given, and the keys a reader relies on."""
from __future__ import annotations

import logging
import threading

from cxatlas.warehouse.tables.errors import DuplicateKeyError, TableError

log = logging.getLogger(__name__)

#: Delta table id -> the versions of it this process found unique. A version never changes, so a job reading it
#: again (every stage of a scheduled run reads ``uploads``; every analysis its inputs) need not aggregate it again,
#: and a later version needs only the keys its commits changed checked (:meth:`ChecksMixin.read_unique`).
#: The table's id, not its path: a table deleted and created again at the same path starts again at version 0.
_UNIQUE_VERSIONS: dict[str, set[int]] = {}
#: Table path -> its id when this process last checked it: where a commit of ours finds the versions known unique.
_TABLE_IDS: dict[str, str] = {}
_UNIQUE_LOCK = threading.Lock()
#: The commits (by :meth:`~cxatlas.warehouse.tables.commit.CommitMixin._commit`'s ``op``) that cannot make a unique
#: table hold a key twice: MERGEs on the key of a source whose keys are unique (checked, or one per key by the
#: caller's construction: ``keys_unique``) and deletions. Appends and replaceWhere overwrites can, and are not here.
KEY_PRESERVING = frozenset({"insert", "upsert", "delete"})
#: Above this many keys changed since a version known unique, the whole table is checked (one aggregation) instead
#: of collecting the changed keys to the driver and broadcasting them.
MAX_CHANGED_KEYS = 200_000


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
        """:meth:`read` of ``version`` (default: the latest, pinned), after checking that no key occurs twice: once
        per table version and process; for a table with a change feed, of at least ``tables.changed_keys_check_min_
        bytes``, whose earlier version this process found unique, only the keys changed since
        (:meth:`_duplicate_changed_keys`; at 1M uploads 1.2 s instead of 1.7 s, and it does not shuffle every key);
        else one aggregation over the key columns of the whole table (faster for a small table).

        Every job reads its keyed inputs through this: a table that somehow holds a key twice (a hand edit, a writer
        outside cxatlas) would otherwise be multiplied silently by every join downstream.
        Raises :class:`DuplicateKeyError` naming the table and a few keys.
        """
        version = self.version() if version is None else version
        df = self.read(version)
        detail = self._delta().detail().first()
        table_id = detail["id"]
        with _UNIQUE_LOCK:
            known = set(_UNIQUE_VERSIONS.get(table_id, ()))
        if version in known:
            return df
        earlier = max((v for v in known if v < version), default=None)
        dup = None
        if earlier is not None and self.spec.change_feed and \
                (detail["sizeInBytes"] or 0) >= self.store.changed_keys_check_min_bytes:
            dup = self._duplicate_changed_keys(df, earlier, version, examples)
        if dup is None:
            log.debug("%s: version %d checked for duplicates among every key", self.spec.name, version)
            dup = self._duplicate_keys(df, examples)
        if dup:
            key = list(self.spec.key)
            shown = "; ".join(", ".join(f"{k}={row[k]!r}" for k in key) + f" ({row['count']} rows)" for row in dup)
            raise DuplicateKeyError(
                f"table '{self.spec.name}' (at {self.path}) holds duplicate keys {key}, e.g. {shown}. Refusing to "
                f"read it: joins would multiply these rows. Restore a clean version (`cxatlas history "
                f"{self.spec.name}`, Delta time travel) or remove the extra rows, then rerun.")
        with _UNIQUE_LOCK:
            _UNIQUE_VERSIONS.setdefault(table_id, set()).add(version)
            _TABLE_IDS[self.path] = table_id
        return df

    def _unique_after_commit(self, op: str, version: int, read_version: int | None) -> None:
        """Record that ``version``, committed by this process, holds no duplicate key, when it needs no check:
        uniqueness enforced where the rows are written (issue #25). That holds when the commit is
        :data:`KEY_PRESERVING` and was made on a version this process found unique with no commit in between
        (``version == read_version + 1``: Delta commits a transaction at the version after the one it read unless
        another writer committed first, and that writer's rows are then checked by the next reader as before)."""
        if op not in KEY_PRESERVING or read_version is None or version != read_version + 1:
            return
        with _UNIQUE_LOCK:
            known = _UNIQUE_VERSIONS.get(_TABLE_IDS.get(self.path, ""))
            if known is not None and read_version in known:
                known.add(version)
                log.debug("%s: version %d known unique: this process's %s of version %d, itself unique",
                          self.spec.name, version, op, read_version)

    def _duplicate_changed_keys(self, df, after: int, upto: int, limit: int) -> list | None:
        """Up to ``limit`` duplicate keys of ``df`` (the table at version ``upto``) given that version ``after`` held
        none: only keys that a commit of ``(after, upto]`` inserted or updated can occur twice now (two rows of a key
        that no commit since touched were both there at ``after``), and the change feed lists those keys. So the
        check follows the change (issue #25): the changed keys are collected (one read of the feed's commits, not a
        snapshot) and the table's rows of those keys only are counted.

        None when this cannot answer (the feed does not cover the range, or more than :data:`MAX_CHANGED_KEYS` keys
        changed): the caller checks the whole table.
        """
        from pyspark.sql import functions as F

        from cxatlas.warehouse.tables.change_feed import WRITTEN, is_feed_gap

        key = list(self.spec.key)
        try:
            changed = (self.changes(after, upto).filter(F.col("_change_type").isin(*WRITTEN))
                       .select(*key).distinct().limit(MAX_CHANGED_KEYS + 1).collect())
        except Exception as exc:
            if is_feed_gap(exc):
                log.debug("%s: change feed of versions (%d, %d] unreadable; checking every key", self.spec.name,
                          after, upto)
                return None
            raise
        if len(changed) > MAX_CHANGED_KEYS:
            return None
        log.debug("%s: version %d checked for duplicates among the %d keys changed since version %d",
                  self.spec.name, upto, len(changed), after)
        if not changed:
            return []
        keys = self.spark.createDataFrame([tuple(r) for r in changed], df.select(*key).schema)
        return self._duplicate_keys(df.join(F.broadcast(keys), key, "left_semi"), limit)
