"""Delta's change data feed: what changed in a table since a reader last saw a version, and how it was before."""
from __future__ import annotations

CHANGE_FEED = "delta.enableChangeDataFeed"
#: Columns Delta adds to every row of the change feed.
FEED_COLUMNS = ("_change_type", "_commit_version", "_commit_timestamp")
#: ``_change_type`` values of a row as a commit left it (an insert or an update's post-image), and as it was before.
WRITTEN = ("insert", "update_postimage")
REMOVED = ("delete", "update_preimage")
#: Delta's error classes for a feed that cannot be read over a range: a version written with the feed off, a
#: version whose log or data files were cleaned up (log retention, VACUUM), a schema change the feed cannot span.
FEED_GAP_ERRORS = ("DELTA_MISSING_CHANGE_DATA", "DELTA_VERSION_NOT_FOUND", "DELTA_FILE_NOT_FOUND",
                   "DELTA_CHANGE_DATA_FILE_NOT_FOUND", "DELTA_CHANGE_DATA_FEED_INCOMPATIBLE", "FileNotFound",
                   "VersionNotFound", "DELTA_TIMESTAMP_GREATER_THAN_COMMIT")


def is_feed_gap(exc: BaseException) -> bool:
    """Whether ``exc`` says the change feed does not cover the range asked for (not a fault of the reader)."""
    return any(name in str(exc) for name in FEED_GAP_ERRORS)


class ChangeFeedMixin:
    """The change feed of a :class:`~cxatlas.warehouse.tables.Table` whose spec asks for one."""

    def change_feed_since(self) -> int | None:
        """The first version from which the change feed is complete (None: the feed is off).

        Tables written before the feed was switched on by cxatlas get it switched on here (one ALTER TABLE commit);
        their feed then starts at that commit. Reads the whole history: called when a feed read failed, to say why.
        """
        if not self.spec.change_feed or not self.exists():
            return None
        for row in self._delta().history().orderBy("version").collect():
            params = row["operationParameters"] or {}
            if row["operation"] in ("CREATE TABLE", "CREATE OR REPLACE TABLE", "WRITE") and \
                    CHANGE_FEED in (params.get("properties") or ""):
                return int(row["version"])
            if row["operation"] == "SET TBLPROPERTIES" and CHANGE_FEED in (params.get("properties") or ""):
                return int(row["version"])
        self.spark.sql(f"ALTER TABLE delta.`{self.path}` SET TBLPROPERTIES ('{CHANGE_FEED}' = 'true')")
        return self.version()

    def feed_gap(self, after: int, upto: int) -> str | None:
        """Why the change feed cannot give versions ``(after, upto]``, from the table's history (None: nothing there
        explains it): a commit in the range that switched it off, or a feed that starts later."""
        import json

        for row in self._delta().history().filter(f"version > {after} AND version <= {upto}").collect():
            props = (row["operationParameters"] or {}).get("properties") or "{}"
            try:
                off = str(json.loads(props).get(CHANGE_FEED, "")).lower() == "false"
            except ValueError:
                off = False
            if off:
                return f"version {row['version']} of {self.spec.name} switched its change feed off"
        since = self.change_feed_since()
        if since is None or since > after + 1:
            return f"{self.spec.name}'s change feed starts at version {since}, after version {after}"
        return None

    def changes(self, after: int, upto: int):
        """The change feed of versions ``(after, upto]`` (``upto > after``): rows inserted, deleted, and updated
        (pre- and post-image), with the table's columns and :data:`FEED_COLUMNS`. Lazy: a range the feed does not
        cover raises when read (:func:`is_feed_gap`). It reads the commits of the range and the files they wrote,
        never a snapshot of the table, so its cost follows the change."""
        return (self.spark.read.format("delta").option("readChangeFeed", "true")
                .option("startingVersion", after + 1).option("endingVersion", upto).load(self.path))

    def rows_before(self, feed):
        """The rows that the keys changed in ``feed`` (:meth:`changes` of ``(after, upto]``) had at version
        ``after``: for each key, the pre-image of its first commit in the range (a ``delete`` or
        ``update_preimage`` row); a key whose first change is an insert had no row. This is time travel to
        ``after`` for the changed keys only, without rebuilding that version's snapshot.

        Exact when no version holds a key twice, which cxatlas's writers guarantee (MERGE on the key; blind
        appends only of keys new by construction) and its readers check (:meth:`read_unique`).
        """
        return self._images(feed, "min", REMOVED)

    def rows_after(self, feed):
        """The rows that the keys changed in ``feed`` have at version ``upto``: for each key, the insert or
        post-image of its last commit in the range; a key whose last change deleted it has no row. The same rows
        as a scan of version ``upto`` restricted to those keys, without the scan (same assumption as
        :meth:`rows_before`)."""
        return self._images(feed, "max", WRITTEN)

    def _images(self, feed, which: str, change_types: tuple[str, ...]):
        """Per key, the ``change_types`` rows of its first (``min``) or last (``max``) commit in ``feed``."""
        from pyspark.sql import functions as F

        key = list(self.spec.key)
        edge = feed.groupBy(*key).agg(getattr(F, which)("_commit_version").alias("_edge_version"))
        rows = (feed.filter(F.col("_change_type").isin(*change_types))
                .join(edge, key).filter(F.col("_commit_version") == F.col("_edge_version")))
        return rows.drop("_edge_version", *FEED_COLUMNS)
