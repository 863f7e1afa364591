"""``cxatlas annotate``: every upload without annotations for the configured model versions gets one row of
expression scores and one row of context scores (or a quarantine row with its reason).

Flow: uploads LEFT ANTI (rows already annotated for these versions, and videos already quarantined for them) ->
repartition over ``annotate.partitions`` -> ``mapInPandas(cxatlas.udfs.annotate.AnnotateBatches)`` on the executors ->
results staged as Parquet under ``<data_root>/_staging`` -> ``video_expressions`` (one commit),
``video_contexts`` (one commit), ``quarantine`` (one commit), each a MERGE that inserts only keys still missing.
A rerun therefore does nothing, and a crash loses nothing: the tables stay at their previous versions and the next
run picks up the same videos. Checkpoints are validated on the driver BEFORE any work starts.
"""
from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass

from tqdm import tqdm

from cxatlas.core.config import Config, join_uri
from cxatlas.core.runs import RunReport
from cxatlas.core.schemas import QUARANTINE, UPLOADS, VIDEO_CONTEXTS, VIDEO_EXPRESSIONS, live_uploads
from cxatlas.core.settings import AnnotateSettings
from cxatlas.core.uris import UriPolicy
from cxatlas.models.annotation import annotation_versions, build_annotation_models
from cxatlas.udfs.annotate import ANNOTATED, OUTPUT_SCHEMA, QUARANTINED, AnnotateBatches
from cxatlas.warehouse.catalog import register_catalog
from cxatlas.warehouse.quarantine import to_quarantine_rows, write_quarantine
from cxatlas.warehouse.spark import ARROW_BATCH, remove_path, scoped_conf
from cxatlas.warehouse.tables import CommitResult, TableStore

log = logging.getLogger(__name__)
STAGE = "annotate"
STAGING_DIR = "_staging"  # under data_root: a run's UDF output, deleted when the run ends


@dataclass
class AnnotateReport(RunReport):
    """``considered == annotated + quarantined`` always; ``no_face`` videos are annotated with n_windows = 0."""

    expression_version: str = ""
    context_version: str = ""
    considered: int = 0
    annotated: int = 0
    no_face: int = 0
    quarantined: int = 0
    face_windows: int = 0
    frames_decoded: int = 0
    skipped_quarantined: int = 0
    remaining: int = 0  # uploads still waiting after a bounded run (--max-videos)

    def headline(self) -> str:
        return f"annotate (run {self.run_id}) with {self.expression_version} / {self.context_version}"

    def balance(self):
        return ("uploads considered", self.considered), [
            ("annotated", self.annotated, f"(of which no face: {self.no_face})"), ("quarantined", self.quarantined)]

    def details(self) -> list[str]:
        lines = [f"  frames decoded {self.frames_decoded}, face windows scored {self.face_windows}"]
        if self.remaining:
            lines.append(f"  {self.remaining} uploads still wait for these model versions (bounded run: the next "
                         f"run continues)")
        if self.skipped_quarantined:
            lines.append(f"  skipped {self.skipped_quarantined} uploads already quarantined for these model versions "
                         f"(retry them all with --set annotate.retry_quarantined=true; reasons in "
                         f"annotate.retry_reasons are retried on every run)")
        return lines


def validate_models(settings: AnnotateSettings) -> tuple[str, tuple[str, ...], str]:
    """Load the models once on the driver (CPU) so a missing or wrong checkpoint refuses the job before any task
    starts, naming the file and what was expected. Returns (expression version, columns, context version)."""
    models = build_annotation_models(settings, "cpu")
    expression_version, context_version = annotation_versions(settings, models)
    return expression_version, models.expression.columns, context_version


class _Progress:
    """The annotate tasks' progress as tqdm bars, fed from Spark's status tracker by a daemon thread: one bar per stage
    with one task per annotate partition (the first decodes and scores; later ones, over the staged result, write).
    Drawn on stdout, whose lines are not filtered (``cxatlas.cli.quiet`` reads fd 2 line by line, which would hold a
    bar back): a terminal redraws it in place; a log or a pipe gets one update per change, each
    ``\\r[annotate] partitions annotated: ...`` (text-mode readers split lines at ``\\r``). Not drawn under ``--quiet`` (this module's logger below INFO)."""

    def __init__(self, spark, n_tasks: int, every_s: float = 2.0):
        self.tracker, self.every_s, self.n_tasks = spark.sparkContext.statusTracker(), every_s, n_tasks
        self.disabled = not log.isEnabledFor(logging.INFO)
        self.bars: dict[int, tqdm] = {}  # stage id -> its bar
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _bar(self, stage_id: int) -> tqdm:
        if stage_id not in self.bars:
            phase = "annotated" if not self.bars else "written"
            self.bars[stage_id] = tqdm(total=self.n_tasks, desc=f"[annotate] partitions {phase}", unit="partition",
                                       file=sys.stdout, disable=self.disabled, mininterval=0, dynamic_ncols=True)
        return self.bars[stage_id]

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            for stage_id in sorted(self.tracker.getActiveStageIds()):
                self._advance(stage_id)

    def _advance(self, stage_id: int) -> None:
        info = self.tracker.getStageInfo(stage_id)
        if info is None or info.numTasks != self.n_tasks:
            return
        bar = self._bar(stage_id)
        if info.numCompletedTasks > bar.n:
            bar.update(info.numCompletedTasks - bar.n)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for stage_id, bar in list(self.bars.items()):
            self._advance(stage_id)  # a stage that ended between two polls shows its last count
            bar.close()


def run_annotate(spark, cfg: Config, store: TableStore, max_videos: int | None = None) -> AnnotateReport:
    """Annotate every upload not yet annotated (or quarantined) for the configured model versions.

    ``max_videos`` bounds the work of one run (a scheduled run drains a backlog over several runs): the uploads
    with the smallest ``xxhash64(video_id)`` go first, so consecutive runs never pick the same video twice and
    the choice does not depend on partitioning. ``report.remaining`` says how many still wait.
    """
    from pyspark.sql import functions as F

    settings = cfg.settings.annotate
    report = AnnotateReport()
    expression_version, columns, context_version = validate_models(settings)
    report.expression_version, report.context_version = expression_version, context_version
    taxonomy = settings.context.taxonomy
    versions_key = f"{expression_version}|{context_version}|{taxonomy}"

    uploads = store.table(UPLOADS).create_if_missing()
    expressions = store.table(VIDEO_EXPRESSIONS).create_if_missing()
    contexts = store.table(VIDEO_CONTEXTS).create_if_missing()
    quarantine = store.table(QUARANTINE).create_if_missing()
    done_expr = expressions.read_unique().filter(F.col("model_version") == expression_version).select("video_id")
    done_ctx = (contexts.read_unique().filter((F.col("model_version") == context_version) &
                                       (F.col("taxonomy") == taxonomy)).select("video_id"))
    todo = live_uploads(uploads.read_unique()).join(done_expr.join(done_ctx, "video_id"), "video_id", "left_anti")
    if not settings.retry_quarantined:
        # Videos this configuration already gave up on are skipped, except for reasons whose cause may have been
        # fixed outside cxatlas (a restored file): those are tried again on every run.
        given_up = (quarantine.read().filter((F.col("stage") == STAGE) &
                                             (F.get_json_object("source_row", "$.versions") == versions_key) &
                                             ~F.col("reason").isin(list(settings.retry_reasons)))
                    .select("video_id").distinct())
        before = todo
        todo = todo.join(given_up, "video_id", "left_anti")
        report.skipped_quarantined = before.join(given_up, "video_id", "left_semi").count()
    todo = todo.select("video_id", "uri", "title", "description", "region", "lat_bin", "lon_bin")
    if max_videos is not None:
        pending = todo.count()
        todo = todo.orderBy(F.xxhash64("video_id"), "video_id").limit(max_videos)
        report.remaining = max(0, pending - max_videos)
        idle = pending == 0
    else:
        idle = todo.limit(1).count() == 0
    if idle:
        # Nothing waits (a scheduled run with no new upload): no UDF job, no staging, no commit (issue #25: a run
        # costs what it does; the full path would only find the same nothing in 5-7 s of jobs).
        for table in (expressions, contexts, quarantine):
            report.commits[table.spec.name] = CommitResult(table.spec.name, None)
        return _finish(report, store)

    n_parts = settings.partitions
    batches = AnnotateBatches(settings, UriPolicy.from_settings(cfg.settings.ingest))
    annotated = (todo.repartition(n_parts, "video_id").mapInPandas(batches, OUTPUT_SCHEMA)
                 .join(todo.select("video_id", "uri", "region", "lat_bin", "lon_bin"), "video_id"))
    # The UDF's output is staged as Parquet before any table is written: every later step (counts, three commits,
    # MERGE's own reads of its source) reads these files instead of decoding the videos again, and a lost executor
    # cannot take a cached result with it. Arrow batches of annotate.videos_per_batch videos for this write only:
    # the session's own setting is back afterwards.
    staging = join_uri(cfg.data_root, STAGING_DIR, f"annotate-{report.run_id}")
    with scoped_conf(spark, {ARROW_BATCH: settings.videos_per_batch}), _Progress(spark, n_parts):
        annotated.write.mode("overwrite").parquet(staging)
    try:
        _write_outputs(store, settings, report, spark.read.parquet(staging), (expressions, contexts), columns,
                       versions_key)
    finally:
        remove_path(spark, staging)
    return _finish(report, store)


def _finish(report: AnnotateReport, store: TableStore) -> AnnotateReport:
    register_catalog(store)  # the expression_scores view follows the columns a new model added
    report.finish()
    log.info("annotate run %s finished in %.1fs", report.run_id, report.seconds)
    return report


def _write_outputs(store: TableStore, settings: AnnotateSettings, report: AnnotateReport, results, tables, columns,
                   versions_key: str) -> None:
    """Count the staged results into the report, then one commit each to the two annotation tables and quarantine."""
    from pyspark.sql import functions as F

    expressions, contexts = tables
    expression_version, context_version = report.expression_version, report.context_version
    taxonomy = settings.context.taxonomy
    counts = results.groupBy("status", "reason").agg(
        F.count("*").alias("n"), F.sum(F.when(F.col("n_windows") == 0, 1).otherwise(0)).alias("no_face"),
        F.sum("n_windows").alias("windows"), F.sum("frames_decoded").alias("frames")).collect()
    for row in counts:
        if row["status"] == ANNOTATED:
            report.annotated += row["n"]
            report.no_face += row["no_face"]
        else:
            report.quarantined += row["n"]
            report.count(row["reason"], row["n"])
        report.face_windows += row["windows"] or 0
        report.frames_decoded += row["frames"] or 0
    report.considered = report.annotated + report.quarantined

    now = F.current_timestamp()
    ok = results.filter(F.col("status") == ANNOTATED)
    common = [F.col("video_id"), F.col("region"), F.col("lat_bin"), F.col("lon_bin"),
              F.lit(settings.expression.model).alias("model_name"), now.alias("annotate_time"),
              F.lit(report.run_id).alias("run_id")]
    # insert_new keeps only keys the tables do not hold yet (a video scored by a concurrent run is skipped there).
    # The rows are one per key by construction (keys_unique: no check job): one UDF row per row of ``todo``, whose
    # video ids are unique (read_unique of uploads), with one model version (and taxonomy) per table.
    expr_rows = ok.select(
        *common, F.lit(expression_version).alias("model_version"),
        F.col("n_windows"), F.col("n_faces"),
        *[F.col("scores")[i].alias(col) for i, col in enumerate(columns)])
    for missing in [c for c in VIDEO_EXPRESSIONS.schema.names if c not in expr_rows.columns]:
        expr_rows = expr_rows.withColumn(missing, F.lit(None).cast("float"))  # other models' label columns
    ctx_rows = ok.select(
        *common[:4], F.lit(f"text:{settings.context.mode}").alias("model_name"), *common[5:],
        F.lit(context_version).alias("model_version"), F.lit(taxonomy).alias("taxonomy"),
        F.coalesce(F.col("contexts"), F.array().cast("array<struct<label:string,score:float>>")).alias("contexts"))
    source_row = F.to_json(F.struct(F.col("video_id"), F.col("uri"), F.lit(versions_key).alias("versions")))
    rejects = to_quarantine_rows(
        results.filter(F.col("status") == QUARANTINED).withColumn("_source_row", source_row)
        .withColumn("_from", F.lit("uploads")),
        stage=STAGE, reason_col="reason", detail_col="detail", source_row_col="_source_row", source_col="_from",
        run_id=report.run_id)

    report.commits["video_expressions"] = expressions.insert_new(expr_rows, evolve_schema=True, keys_unique=True)
    report.commits["video_contexts"] = contexts.insert_new(ctx_rows.select(*VIDEO_CONTEXTS.schema.names),
                                                           keys_unique=True)
    report.commits["quarantine"] = write_quarantine(store, rejects)
