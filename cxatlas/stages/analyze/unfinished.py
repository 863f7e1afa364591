"""Result rows of unfinished analyses: invisible to every reader, and removed by a later analysis.

An analysis commits one replace per result table, then its ``analyses`` row: that row is the commit marker every
reader and view joins on (README "Statistics"). A run killed or failed in between leaves result rows without it. They
are never shown, a rerun of the same id replaces them, and the next ``cxatlas analyze`` deletes those whose data files
are older than ``failures.unfinished_results_hours`` (younger ones may belong to an analysis still running).
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Future

from cxatlas.core.result_schemas import ANALYSES, RESULT_TABLES
from cxatlas.stages.analyze.background import in_background
from cxatlas.warehouse.tables import TableStore

log = logging.getLogger(__name__)


def remove_unfinished(store: TableStore, older_than_hours: float, keep: str | None = None) -> dict[str, list[str]]:
    """Delete the rows of analyses without an ``analyses`` row whose newest data file is older than
    ``older_than_hours`` (never those of ``keep``, the running analysis). Returns {table: analysis ids removed}."""
    from pyspark.sql import functions as F

    spark = store.spark
    analyses = store.table(ANALYSES)
    finished = analyses.read().select("analysis_id") if analyses.exists() else \
        spark.createDataFrame([], "analysis_id string")
    cutoff = F.lit(time.time() - older_than_hours * 3600.0).cast("timestamp")
    tables = [store.table(spec) for spec in RESULT_TABLES if spec is not ANALYSES]
    present = [t for t in tables if t.exists()]
    if not present:
        return {}
    # One job over every result table (issue #25: a job per table cost 12 s per analysis, whatever the data).
    written = None
    for table in present:
        part = table.read().select(F.lit(table.spec.name).alias("table"), "analysis_id",
                                   F.col("_metadata.file_modification_time").alias("written"))
        written = part if written is None else written.unionByName(part)
    stale = (written.join(F.broadcast(finished), "analysis_id", "left_anti").groupBy("table", "analysis_id")
             .agg(F.max("written").alias("written")).filter(F.col("written") < cutoff))
    if keep is not None:
        stale = stale.filter(F.col("analysis_id") != keep)
    by_table: dict[str, list[str]] = {}
    for row in stale.select("table", "analysis_id").collect():
        by_table.setdefault(row["table"], []).append(row["analysis_id"])
    removed: dict[str, list[str]] = {}
    for table in present:
        ids = sorted(by_table.get(table.spec.name, []))
        if ids:
            table.delete_matching(spark.createDataFrame([(i,) for i in ids], "analysis_id string"), ["analysis_id"])
            removed[table.spec.name] = ids
    if removed:
        log.warning("removed the rows of unfinished analyses (no analyses row, older than %g h): %s",
                    older_than_hours, removed)
    return removed


def start_removal(store: TableStore, older_than_hours: float, keep: str) -> Future:
    """:func:`remove_unfinished` in the background (:func:`~cxatlas.stages.analyze.background.in_background`),
    started when an analysis starts and waited for before its commit marker (issue #25: its Spark jobs wait on I/O
    and the metastore while the analysis computes, instead of adding seconds after it). It never touches ``keep``'s
    rows; a failure is logged (the next analysis tries again) and the future holds None."""
    def run() -> None:
        try:
            remove_unfinished(store, older_than_hours, keep=keep)
        except Exception as exc:  # noqa: BLE001 - housekeeping: the next analysis tries again
            log.warning("could not remove the rows of unfinished analyses (%s: %s)", type(exc).__name__, exc)

    return in_background("cxatlas-unfinished", run)
