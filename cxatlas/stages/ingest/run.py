"""``run_ingest``: one manifest into ``uploads`` and ``quarantine``, counts reconciled; and the withdrawals."""
from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cxatlas.core.config import Config
from cxatlas.core.regions import load_country_regions
from cxatlas.core.runs import RunReport, StageClock, utc_timestamp
from cxatlas.core.schemas import QUARANTINE, UPLOADS, spark_schema
from cxatlas.stages.ingest.duplicates import (KEEP_NULLS, classify, mark_shared_uris, reject_columns,
                                              shared_uri_holders)
from cxatlas.stages.ingest.manifest import CORRUPT, ManifestError, check_columns, read_manifest
from cxatlas.stages.ingest.validation import prepare, source_columns, validate
from cxatlas.warehouse.quarantine import to_quarantine_rows, write_quarantine
from cxatlas.warehouse.spark import scoped_conf
from cxatlas.warehouse.tables import CommitResult, TableStore

log = logging.getLogger(__name__)


@dataclass
class IngestReport(RunReport):
    """Counts of one ingest run; ``rows_in == new + updated + unchanged + quarantined`` always."""

    manifest: str = ""
    rows_in: int = 0
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0
    replaced_rows_quarantined: int = 0
    withdrawn: int = 0
    annotations_deleted: int = 0
    shared_uri_rows: int = 0
    #: wall seconds per step of the run (:func:`run_ingest` names them), as ``AnalyzeReport.stage_seconds``
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def headline(self) -> str:
        return f"ingest {self.manifest} (run {self.run_id})"

    def balance(self):
        return ("rows in", self.rows_in), [("new", self.new), ("updated", self.updated),
                                           ("unchanged", self.unchanged), ("quarantined", self.quarantined)]

    def details(self) -> list[str]:
        lines = []
        if self.withdrawn or self.annotations_deleted:
            lines.append(f"  withdrawals (tombstones among new + updated): {self.withdrawn}; annotation rows deleted: "
                         f"{self.annotations_deleted}")
        if self.shared_uri_rows:
            lines.append(f"  warning: shared uri: {self.shared_uri_rows} new or updated uploads name a uri another "
                         f"video_id names first (ingest.shared_uri=quarantine quarantines them)")
        if self.replaced_rows_quarantined:
            lines.append(f"  older uploads replaced and moved to quarantine: {self.replaced_rows_quarantined}")
        return lines


def apply_withdrawals(store: TableStore, commits: dict | None = None) -> int:
    """Delete the annotation rows of every withdrawn video (Delta deletions: time travel still shows them).

    Idempotent and cheap when there is nothing to do (no commit), so a scheduled run calls it every time: a run
    killed between writing a tombstone and deleting the annotations is completed by the next run. Returns the
    number of annotation rows deleted.
    """
    from pyspark.sql import functions as F

    from cxatlas.core.schemas import VIDEO_CONTEXTS, VIDEO_EXPRESSIONS

    uploads = store.table(UPLOADS)
    if not uploads.exists() or "withdrawn" not in uploads.read().columns:
        return 0
    gone = uploads.read().filter(F.col("withdrawn")).select("video_id")
    deleted = 0
    for spec in (VIDEO_EXPRESSIONS, VIDEO_CONTEXTS):
        table = store.table(spec)
        if table.exists():
            commit = table.delete_matching(gone, ["video_id"])
            deleted += commit.rows_deleted
            if commits is not None and commit.version is not None:
                commits[spec.name] = commit
    return deleted


def run_ingest(spark, cfg: Config, store: TableStore, manifest: str, fmt: str | None = None) -> IngestReport:
    """Ingest one manifest into ``uploads`` and ``quarantine``; returns the reconciled counts.

    Where the work goes (``IngestReport.stage_seconds``): ``read`` (the manifest's header), ``tables`` (``uploads``
    ready, its version), ``validate`` (the one pass over every row: parse, check, rank duplicates against
    ``uploads``, kept in memory, counted), ``shared uris``, ``write uploads`` (one MERGE), ``write quarantine`` and
    ``withdrawals``. Spark jobs only where a number is needed: one for the counts, one for the shared uris, then the
    commits.
    """
    from pyspark.sql import functions as F

    report = IngestReport(manifest=manifest)
    stages = StageClock()
    stages.enter("read")
    ing = cfg.settings.ingest
    raw = read_manifest(spark, manifest, fmt, csv_multiline=ing.csv_multiline)
    if raw is None or not raw.columns:
        log.warning("manifest %s is empty: nothing to ingest", manifest)
        return _finish(report, stages)
    if raw.columns == [CORRUPT]:  # lines, but not one JSON object among them: not "empty", the wrong format
        raise ManifestError(f"no line of manifest {manifest} is a JSON object: a JSON manifest holds one object per "
                            "line (for a CSV, name it .csv or pass --format csv)")
    check_columns(raw.columns, ing.allow_extra_columns)
    country_regions = load_country_regions(cfg.path("regions.file"))

    stages.enter("tables")
    uploads = store.table(UPLOADS)
    if uploads.exists():
        stored = uploads.read(uploads.version())  # this version throughout, whatever other writers commit meanwhile
    else:  # the first ingest into this data root: nothing is stored yet (an empty relation built in the JVM: a
        # DataFrame made from a Python list would start Python workers to produce no rows)
        stored = spark.range(0).select(*[F.lit(None).cast(f.dataType).alias(f.name)
                                         for f in spark_schema(UPLOADS.schema).fields])
    # The catalog entries (the metastore server's first round trips in a process take seconds) are made in a thread
    # while the pass over the rows runs, which needs only the table's files; the first commit waits for them.
    with ThreadPoolExecutor(1, thread_name_prefix="ingest-catalog") as pool:
        catalog = []
        marked, kept, counts = _classify_rows(spark, cfg, raw, stored, manifest, country_regions, report, stages,
                                              on_pass=lambda: catalog.append(pool.submit(_catalog_ready, store)))
        stages.enter("tables")
        for ready in catalog or [pool.submit(_catalog_ready, store)]:
            ready.result()
    try:
        _write(spark, store, report, stages, stored, marked, counts)
    finally:
        for df in kept:
            df.unpersist()
    return _finish(report, stages)


def _catalog_ready(store: TableStore) -> None:
    """``uploads`` and ``quarantine`` exist and are named in the catalog."""
    store.table(UPLOADS).create_if_missing()
    store.table(QUARANTINE).create_if_missing()


def _finish(report: IngestReport, stages: StageClock) -> IngestReport:
    stages.enter(None)
    report.stage_seconds = {step: round(seconds, 3) for step, seconds in stages.seconds.items()}
    report.finish()
    log.info("ingest run %s finished in %.1fs (%s)", report.run_id, report.seconds,
             ", ".join(f"{k} {v:.1f}s" for k, v in report.stage_seconds.items()))
    return report


@dataclass
class _Counts:
    """What the counting pass found beyond the report's counts: the tombstones among the new and updated rows."""

    tombstones: int = 0


def _classify_rows(spark, cfg: Config, raw, stored, manifest: str, country_regions, report: IngestReport,
                   stages: StageClock, on_pass=None):
    """The one pass over every row (validate, rank, compare with ``uploads``), kept in memory, counted into
    ``report``; then the shared uris. Returns (the rows marked, the DataFrames kept in memory, :class:`_Counts`).

    ``on_pass`` is called once every DataFrame of the pass is built, just before its job runs: the catalog work
    started then runs beside the job, where starting it earlier would stall building the DataFrames (resolving a
    function waits for the session catalog the metastore's first round trips hold).
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    ing = cfg.settings.ingest
    stages.enter("validate")
    original = source_columns(raw)
    # Manifest order breaks upload_time ties (the later row wins); the Python checks run where the rows are read
    # (:func:`prepare`); then shard by a stable hash of video_id, and validate, rank and join on every core.
    raw = raw.withColumn("_order", F.monotonically_increasing_id())
    raw = prepare(raw, country_regions=country_regions, cfg=cfg).repartition(ing.partitions, "_vid")
    checked = validate(raw, source=manifest, country_regions=country_regions, cfg=cfg)
    # Kept in memory for the counts, the MERGE and the quarantine: the columns a row of uploads needs and what a
    # rejected row keeps (nothing of the manifest's own columns), uncompressed (the rows live for one run; gathering
    # compression statistics cost more than the memory it saves).
    with scoped_conf(spark, {"spark.sql.inMemoryColumnarStorage.compressed": False}):
        classified = reject_columns(classify(checked, stored), original, ing.shared_uri).persist(
            StorageLevel.MEMORY_AND_DISK)

    counts = _Counts()
    status_counts, rejected = Counter(), Counter()
    by_status = classified.groupBy("_status", "withdrawn", "_reason").count()
    if on_pass is not None:
        on_pass()
    for r in by_status.collect():
        status_counts[r["_status"]] += r["count"]
        counts.tombstones += r["count"] if r["withdrawn"] and r["_status"] in ("new", "updated") else 0
        rejected[r["_reason"]] += r["count"] if r["_status"] == "quarantined" else 0

    stages.enter("shared uris")
    holders = shared_uri_holders(classified, stored).persist(StorageLevel.MEMORY_AND_DISK)
    shared = {r["_status"]: r["count"] for r in holders.groupBy("_status").count().collect()}
    if ing.shared_uri == "quarantine":
        for status, n in shared.items():
            status_counts[status] -= n
            status_counts["quarantined"] += n
            rejected["shared_uri"] += n
    else:
        report.shared_uri_rows = sum(shared.values())
    marked = mark_shared_uris(classified, holders, ing.shared_uri,
                              any_shared=bool(shared) and ing.shared_uri == "quarantine")

    report.rows_in = sum(status_counts.values())
    report.new, report.updated = status_counts["new"], status_counts["updated"]
    report.unchanged = status_counts["unchanged"]
    report.quarantined = status_counts["quarantined"]
    report.reasons = {reason: n for reason, n in rejected.items() if n}
    if report.shared_uri_rows:
        log.warning("%d new or updated uploads name a uri another video_id already names (ingest.shared_uri: warn)",
                    report.shared_uri_rows)
    return marked, [classified, holders], counts


def _write(spark, store: TableStore, report: IngestReport, stages: StageClock, stored, marked, counts: _Counts):
    """The commits: ``uploads`` (one MERGE), ``quarantine`` (rejected rows and the stored rows that updated rows
    replaced; no commit when there are none), then the withdrawals."""
    from pyspark.sql import functions as F

    uploads = store.table(UPLOADS)
    stages.enter("write uploads")
    ingest_time = F.lit(utc_timestamp(report.started)).cast("timestamp")
    accepted = (marked.filter(F.col("_status").isin("new", "updated"))
                .withColumn("ingest_time", ingest_time).select(*UPLOADS.schema.names))
    updated = report.updated
    report.replaced_rows_quarantined = updated
    if report.new or report.updated:
        # One MERGE: new keys inserted, later uploads replace older ones. Never a blind append: if another ingest
        # commits the same keys first, Delta makes this commit conflict and retry, and the retry's own counts (what
        # it inserted and replaced) are the ones reported; rows the other writer already stored count as unchanged.
        # The source is the rows kept in memory: Delta need not copy it again before the MERGE reads it twice (its
        # materializeSource guards sources that could change between the two reads; these cannot).
        with scoped_conf(spark, {"spark.databricks.delta.merge.materializeSource": "none"}):
            commit = uploads.upsert(accepted, update_when="t.upload_time IS NULL OR s.upload_time >= t.upload_time",
                                    evolve_schema=True, keys_unique=True)  # _rank 1 of its video_id: one row each
        planned = report.new + report.updated
        report.new, report.updated = commit.rows_inserted, commit.rows_updated
        report.unchanged += planned - report.new - report.updated
        report.commits["uploads"] = commit
    else:
        report.commits["uploads"] = CommitResult(UPLOADS.name, None)

    stages.enter("write quarantine")
    if report.quarantined or updated:
        common = dict(stage="ingest", reason_col="_reason", detail_col="_detail", source_row_col="_source_row",
                      run_id=report.run_id)
        quarantine_rows = to_quarantine_rows(marked.filter(F.col("_status") == "quarantined"), source_col="source",
                                             **common)
        if updated:
            quarantine_rows = quarantine_rows.unionByName(to_quarantine_rows(
                _replaced_rows(stored, marked).withColumn("_from", F.lit("uploads")), source_col="_from", **common))
        report.commits["quarantine"] = write_quarantine(store, quarantine_rows)
    else:  # nothing rejected, nothing replaced: no rows to look for and no commit
        report.commits["quarantine"] = CommitResult(QUARANTINE.name, None)

    stages.enter("withdrawals")
    if counts.tombstones and report.commits["uploads"].version is not None:
        # What the commit wrote, not what was planned: a concurrent ingest may have stored a later upload first.
        report.withdrawn = (uploads.read(report.commits["uploads"].version)
                            .filter(F.col("withdrawn") & (F.col("ingest_time") == ingest_time)).count())
    if report.withdrawn:
        report.annotations_deleted = apply_withdrawals(store, report.commits)


def _replaced_rows(stored, marked):
    """The stored rows that updated rows replace, shaped as rejects: what ``uploads`` held before (its row, JSON),
    reason ``withdrawn`` (the uploader withdrew the video) or ``duplicate`` (a later upload replaced it)."""
    from pyspark.sql import functions as F

    incoming = marked.filter(F.col("_status") == "updated").select(
        "video_id", F.col("upload_time").alias("_new_time"), F.col("withdrawn").alias("_new_withdrawn"))
    return (stored.join(incoming, "video_id")
            .withColumn("_source_row", F.to_json(F.struct(*[c for c in UPLOADS.schema.names
                                                            if c in stored.columns]), KEEP_NULLS))
            .withColumn("_reason", F.when(F.col("_new_withdrawn"), F.lit("withdrawn"))
                        .otherwise(F.lit("duplicate")))
            .withColumn("_detail", F.when(F.col("_new_withdrawn"), F.concat(F.lit(
                "the uploader withdrew this video at "), F.col("_new_time").cast("string"), F.lit(
                "; this was its row in uploads"))).when(F.col("_new_time") == F.col("upload_time"), F.lit(
                "replaced in uploads by a new row of this video_id with the same upload_time (ties: the newer "
                "ingest wins)")).otherwise(F.lit("replaced in uploads by a later upload of this video_id")))
            .drop("_new_time", "_new_withdrawn"))
