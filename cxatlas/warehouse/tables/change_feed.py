"""Delta's change data feed: what changed in a table since a reader last saw a version."""
from __future__ import annotations

from typing import Sequence

CHANGE_FEED = "delta.enableChangeDataFeed"


class ChangeFeedMixin:
    """The change feed of a :class:`~cxatlas.warehouse.tables.Table` whose spec asks for one."""

    def change_feed_since(self) -> int | None:
        """The first version from which the change feed is complete (None: the feed is off).

        Tables written before the feed was switched on by cxatlas get it switched on here (one ALTER TABLE commit);
        their feed then starts at that commit.
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

    def changed_keys(self, after: int, upto: int, columns: Sequence[str]):
        """Distinct ``columns`` of the rows inserted, updated or deleted in versions ``(after, upto]``: what changed
        since a reader last saw version ``after`` (Delta's change data feed; before and after images alike)."""
        if upto <= after:
            return self.spark.createDataFrame([], self.read(upto).select(*columns).schema)
        return (self.spark.read.format("delta").option("readChangeFeed", "true")
                .option("startingVersion", after + 1).option("endingVersion", upto).load(self.path)
                .select(*columns).distinct())
