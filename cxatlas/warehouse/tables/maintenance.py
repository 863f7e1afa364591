"""Delta's own maintenance of one table: history, vacuum, optimize (Z-order)."""
from __future__ import annotations

from cxatlas.warehouse.spark import scoped_conf

SAFE_RETENTION_HOURS = 168.0  # Delta's own default: below it Delta refuses to vacuum unless told it is intended
RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"


class MaintenanceMixin:
    """History, vacuum and optimize for :class:`~cxatlas.warehouse.tables.Table`."""

    def history(self) -> list[dict]:
        return [r.asDict(recursive=True) for r in self._delta().history().collect()]

    def vacuum(self, retention_hours: float | None = None) -> list[str]:
        """Delete data files no longer referenced by versions younger than the retention; returns their paths.

        A retention below Delta's safe default (168 h) shortens how far back time travel and slow readers can go;
        it is allowed because the user asked for it (``--retention-hours``), not silently: Delta's retention check
        is switched off for this vacuum only, and the session's setting restored after.
        """
        hours = self.store.vacuum_retention_hours if retention_hours is None else float(retention_hours)
        with scoped_conf(self.spark, {RETENTION_CHECK: "false"} if hours < SAFE_RETENTION_HOURS else {}):
            listed = self.spark.sql(f"VACUUM delta.`{self.path}` RETAIN {hours} HOURS DRY RUN").collect()
            removed = [row[0] for row in listed]
            if removed:
                self.spark.sql(f"VACUUM delta.`{self.path}` RETAIN {hours} HOURS")
        return removed

    def optimize(self) -> dict:
        """Compact small files; Z-order by the spec's ``zorder_by`` columns (the geobins of the annotation tables)."""
        opt = self._delta().optimize()
        result = opt.executeZOrderBy(*self.spec.zorder_by) if self.spec.zorder_by else opt.executeCompaction()
        rows = result.collect()
        metrics = rows[0].asDict(recursive=True).get("metrics", {}) if rows else {}
        return {"zorder_by": list(self.spec.zorder_by), **{k: metrics.get(k) for k in
                                                             ("numFilesAdded", "numFilesRemoved")}}
