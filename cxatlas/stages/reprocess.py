"""``cxatlas reprocess``: the one scheduled command that keeps every table and statistic current.

One run, under a lease (:mod:`cxatlas.warehouse.lease`) so overlapping schedules never work at once::

    manifest folder --(files not in processed_manifests, by sha256)--> ingest (withdrawals become tombstones)
      -> apply withdrawals (annotations of withdrawn videos deleted; idempotent, so a killed run is completed)
      -> annotate uploads lacking rows for the configured model versions (at most --max-videos per run)
      -> statistics: the stored sums of the analysed versions updated from Delta's change feed, results written
         (unless the latest analysis already has these settings and input table versions: nothing new is written)
      -> one row in ``runs`` (written first as "running", completed at the end)

Why it is safe to kill at any point: every write is one Delta commit and every step is idempotent. Ingest upserts
(re-ingesting a manifest changes nothing) and its file is recorded only after its commits; annotation inserts only
missing keys; the stored sums are replaced in one commit together with the versions they are exact for. A restart
redoes at most the step that was cut, and finds the lease of the dead run free at once on the same host (or when it
expires, elsewhere), marking the dead run's row ``failed``.

Model versions: analyses use the configured model versions once they cover every live upload; until then (a new
checkpoint being rolled out in bounded batches) they keep using the versions of the latest analysis, so no analysis
ever mixes two versions.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass, field

from cxatlas.core.config import Config
from cxatlas.core.errors import UserError
from cxatlas.core.result_schemas import ANALYSES
from cxatlas.core.run_schemas import PROCESSED_MANIFESTS
from cxatlas.core.runs import RunReport, StageClock, utc_timestamp
from cxatlas.warehouse.lease import Lease
from cxatlas.warehouse.run_log import RunLog
from cxatlas.warehouse.tables import TableStore

log = logging.getLogger(__name__)

LEASE_NAME = "reprocess"
MANIFEST_SUFFIXES = (".csv", ".json", ".jsonl", ".ndjson", ".parquet", ".pq", ".csv.gz", ".json.gz")


@dataclass
class ReprocessReport(RunReport):
    """What one scheduled run did. Its counts are the ``runs`` row's."""

    manifest_dir: str = ""
    status: str = "running"
    message: str = ""
    manifests: int = 0
    rows_in: int = 0
    new: int = 0
    updated: int = 0
    withdrawn: int = 0
    annotated: int = 0
    quarantined: int = 0
    remaining: int = 0
    annotations_deleted: int = 0
    analysis_id: str | None = None
    statistics: str = ""
    versions: dict[str, int] = field(default_factory=dict)
    step: str = ""                                                    # the step running (or that failed)
    refused: dict[str, str] = field(default_factory=dict)            # manifests refused by THIS run: path -> why
    still_refused: dict[str, str] = field(default_factory=dict)      # refused earlier, unchanged since: skipped

    def headline(self) -> str:
        return f"reprocess {self.manifest_dir} (run {self.run_id}): {self.status}"

    def counts(self) -> dict[str, int]:
        return dict(manifests=self.manifests, rows_in=self.rows_in, new=self.new, updated=self.updated,
                    withdrawn=self.withdrawn, annotated=self.annotated, quarantined=self.quarantined,
                    remaining=self.remaining)

    def details(self) -> list[str]:
        lines = [f"  {self.message}"] if self.message else []
        if self.status == "skipped":
            return lines
        lines.append("  " + ", ".join(f"{k} {v}" for k, v in self.counts().items()))
        if self.annotations_deleted:
            lines.append(f"  annotation rows of withdrawn videos deleted: {self.annotations_deleted}")
        lines.append(f"  uploads still waiting for annotation: {self.remaining}" + (
            " (the next runs continue)" if self.remaining else ""))
        if self.statistics:
            lines.append(f"  statistics: {self.statistics}")
        lines += [f"  manifest refused (recorded; skipped until the file changes): {p}: {why}"
                  for p, why in self.refused.items()]
        lines += [f"  manifest skipped, refused earlier and unchanged: {p}: {why}" for p, why in self.still_refused.items()]
        return lines


def list_manifests(manifest_dir: str) -> list[tuple[str, str, int]]:
    """(path, sha256, size) of each manifest file in the folder (any fsspec URI), in name order."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(manifest_dir)
    if not fs.isdir(root):
        raise UserError(f"--manifest-dir {manifest_dir} is not a folder")
    out = []
    for info in sorted(fs.ls(root, detail=True), key=lambda i: i["name"]):
        name = info["name"]
        base = name.rsplit("/", 1)[-1]
        if info.get("type") != "file" or base.startswith((".", "_")) or not base.lower().endswith(MANIFEST_SUFFIXES):
            continue
        digest = hashlib.sha256()
        with fs.open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        path = name if local else fs.unstrip_protocol(name)
        out.append((path, digest.hexdigest(), int(info.get("size") or 0)))
    return out


def _processed(store: TableStore) -> dict[tuple[str, str], str | None]:
    """(path, checksum) of every manifest already read -> None when ingested, else why it was refused."""
    table = store.table(PROCESSED_MANIFESTS)
    if not table.exists():
        return {}
    df = table.read()
    error = "error" if "error" in df.columns else "CAST(NULL AS STRING) AS error"
    return {(r["path"], r["checksum"]): r["error"] for r in df.selectExpr("path", "checksum", error).collect()}


def _record_manifest(store: TableStore, path: str, checksum: str, size: int, rows_in: int, run_id: str,
                     ingest_run_id: str | None, error: str | None = None) -> None:
    from pyspark.sql import functions as F

    df = store.spark.createDataFrame([(path, checksum, size, rows_in, run_id, ingest_run_id,
                                       utc_timestamp(time.time()), error)],
                                     "path string, checksum string, size long, rows_in long, run_id string, "
                                     "ingest_run_id string, processed string, error string")
    store.table(PROCESSED_MANIFESTS).insert_new(df.withColumn("processed", F.col("processed").cast("timestamp")),
                                                evolve_schema=True, keys_unique=True)  # one row


class StepFailed(Exception):
    """A step of the run ended without raising but failed (its counts, a systemic share of failures)."""


def _latest_analysis(store: TableStore):
    """The ``analyses`` row that finished last (a Spark Row), or None when there is none."""
    from pyspark.sql import functions as F

    table = store.table(ANALYSES)
    if not table.exists():
        return None
    rows = table.read().orderBy(F.col("finished").desc()).limit(1).collect()
    return rows[0] if rows else None


def _analysed_versions(latest, current: tuple[str, str, str], complete: bool) -> tuple[str, str, str] | None:
    """The (expression version, context version, taxonomy) to analyse: the configured ones once they cover every
    upload, else those of the ``latest`` analysis (never a mix); None when there is nothing complete yet."""
    if complete:
        return current
    if latest is None:
        return None
    return latest["expression_model_version"], latest["context_model_version"], latest["taxonomy"]


def _annotated_by(store: TableStore, expression_version: str) -> bool:
    """Whether ``video_expressions`` holds a row of ``expression_version``: without one there is nothing to analyse
    (a new data root whose manifest folder is still empty, or whose uploads all went to quarantine)."""
    from pyspark.sql import functions as F

    from cxatlas.core.schemas import VIDEO_EXPRESSIONS

    table = store.table(VIDEO_EXPRESSIONS)
    return table.exists() and table.read().filter(F.col("model_version") == expression_version).limit(1).count() > 0


def _unchanged_analysis(store: TableStore, latest, settings) -> tuple[str, dict[str, int]] | None:
    """(analysis id, input versions) of the ``latest`` analysis when it already is what this run would write: the
    same settings (model versions and taxonomy included) over the same Delta versions of the three input tables. A
    scheduled run with nothing new then records that analysis instead of writing an identical one."""
    import json

    from cxatlas.core.schemas import UPLOADS, VIDEO_CONTEXTS, VIDEO_EXPRESSIONS

    if latest is None or latest["parameters"] != json.dumps(dataclasses.asdict(settings), sort_keys=True):
        return None
    versions = {spec.name: store.table(spec).version() for spec in (UPLOADS, VIDEO_EXPRESSIONS, VIDEO_CONTEXTS)}
    return (latest["analysis_id"], versions) if json.loads(latest["input_versions"]) == versions else None


def run_reprocess(spark, cfg: Config, store: TableStore, manifest_dir: str, max_videos: int | None = None,
                  wait: bool = False, analysis_settings=None) -> ReprocessReport:
    """One scheduled run (see the module docstring). ``analysis_settings`` default to ``cfg``'s ``analyze:``."""
    from cxatlas.stages.analyze import run_analyze
    from cxatlas.stages.annotate import run_annotate, validate_models
    from cxatlas.stages.ingest import apply_withdrawals, run_ingest

    rs = cfg.settings.reprocess
    report = ReprocessReport(manifest_dir=manifest_dir)
    max_videos = max_videos if max_videos is not None else rs.max_videos
    command = f"reprocess --manifest-dir {manifest_dir}" + (f" --max-videos {max_videos}" if max_videos else "")
    run_log = RunLog(store, report.run_id, command, cfg)
    lease = Lease(store, LEASE_NAME, report.run_id, rs.lease_ttl_seconds)
    if not lease.acquire(wait=wait, poll_seconds=rs.wait_poll_seconds, max_wait_seconds=rs.max_wait_seconds):
        report.status = "skipped"
        report.message = f"another run holds the lease '{LEASE_NAME}': {lease.holder_description()}; nothing done"
        run_log.finish("skipped", error=report.message)
        return report.finish()
    if lease.displaced is not None:
        run_log.mark_dead(lease.displaced.holder, f"died holding the lease (host {lease.displaced.host}, pid "
                                                  f"{lease.displaced.pid}); run {report.run_id} took over")
    run_log.start()
    clock = StageClock()
    outputs: dict[str, int] = {}

    def note(commits: dict) -> None:
        for name, commit in commits.items():
            if getattr(commit, "version", None) is not None:
                outputs[name] = commit.version
        report.commits.update(commits)

    failures = cfg.settings.failures

    def check(step_report) -> None:
        why = step_report.systemic_failure(failures.systemic_share, failures.systemic_min_inputs,
                                           failures.not_failures)
        if why is not None:
            raise StepFailed(why)

    try:
        report.step = "list manifests"
        clock.enter(report.step)
        done = _processed(store)
        found = list_manifests(manifest_dir)
        report.still_refused = {m[0]: done[(m[0], m[1])] for m in found if done.get((m[0], m[1]), None)}
        pending = [m for m in found if (m[0], m[1]) not in done]
        log.info("reprocess %s: %d new or changed manifest(s) in %s", report.run_id, len(pending), manifest_dir)
        for path, checksum, size in pending:
            report.step = f"ingest {path}"
            clock.enter("ingest")
            try:
                ing = run_ingest(spark, cfg, store, path)
            except UserError as exc:  # a file that is not a manifest: recorded, and the others go on
                why = str(exc).splitlines()[0][:1000]
                _record_manifest(store, path, checksum, size, 0, report.run_id, None, error=why)
                report.refused[path] = why
                log.warning("reprocess %s: manifest %s refused: %s", report.run_id, path, why)
                continue
            print(ing.summary(), flush=True)
            report.manifests += 1
            report.rows_in += ing.rows_in
            report.new += ing.new
            report.updated += ing.updated
            report.withdrawn += ing.withdrawn
            report.quarantined += ing.quarantined
            report.annotations_deleted += ing.annotations_deleted
            note(ing.commits)
            _record_manifest(store, path, checksum, size, ing.rows_in, report.run_id, ing.run_id)
            check(ing)  # recorded first: its rows are committed, and the next run must not fail on it again
            lease.renew_if_due(rs.lease_renew_share)
        report.step = "withdrawals"
        clock.enter(report.step)
        report.annotations_deleted += apply_withdrawals(store, report.commits)

        report.step = "annotate"

        clock.enter(report.step)
        annotated = run_annotate(spark, cfg, store, max_videos=max_videos)
        print(annotated.summary(), flush=True)
        report.annotated, report.remaining = annotated.annotated, annotated.remaining
        report.quarantined += annotated.quarantined
        note(annotated.commits)
        check(annotated)
        lease.renew_if_due(rs.lease_renew_share)
        report.step = "statistics"
        clock.enter(report.step)

        expr_version, _, ctx_version = validate_models(cfg.settings.annotate)
        latest = _latest_analysis(store)
        chosen = _analysed_versions(latest, (expr_version, ctx_version, cfg.settings.annotate.context.taxonomy),
                                    complete=annotated.remaining == 0)
        if chosen is None:
            report.statistics = (f"not updated: the configured models still have {annotated.remaining} uploads "
                                 f"to annotate and no earlier analysis exists")
        elif latest is None and not _annotated_by(store, chosen[0]):
            # A scheduled run before the first manifest arrives did what was asked: nothing to analyse yet.
            report.statistics = f"not updated: no upload is annotated by {chosen[0]} yet (nothing to analyse)"
        else:
            base = analysis_settings or cfg.settings.analyze
            settings = dataclasses.replace(base, expression_model_version=chosen[0], context_model_version=chosen[1],
                                           taxonomy=chosen[2])
            unchanged = _unchanged_analysis(store, latest, settings)
            if unchanged is not None:
                report.analysis_id, report.versions = unchanged
                report.statistics = (f"current: analysis {report.analysis_id} already covers these settings and "
                                     f"input versions {report.versions}; nothing written")
            else:
                analysis = run_analyze(spark, cfg, store, settings=settings, incremental=True)
                report.analysis_id = analysis.analysis_id
                report.versions = dict(analysis.input_versions)
                note(analysis.commits)
                sums = analysis.sums
                report.statistics = (f"analysis {analysis.analysis_id} on {chosen[0]} / {chosen[1]} / {chosen[2]}: "
                                     f"sums {sums.get('mode')} ({sums.get('reason')}), {analysis.n_videos} videos")
            if chosen[0] != expr_version or chosen[1] != ctx_version:
                report.statistics += (f"; the configured models ({expr_version} / {ctx_version}) take over once they "
                                      f"cover every upload ({annotated.remaining} to go)")
        report.status = "succeeded"
        if report.refused:  # every other manifest was ingested and the run went on; now it says so, and fails
            report.status = "failed"
            report.step = "ingest"
            report.message = ("step ingest: manifest(s) refused (recorded in processed_manifests; skipped until "
                              "changed): " + "; ".join(f"{p}: {why}" for p, why in report.refused.items()))
    except StepFailed as exc:
        report.status = "failed"
        report.message = f"step {report.step}: {exc}"[:2000]
    except BaseException as exc:
        report.status = "failed"
        report.message = f"step {report.step}: {type(exc).__name__}: {exc}".splitlines()[0][:2000]
        run_log.finish("failed", error=report.message, counts=report.counts(), input_versions=report.versions,
                       output_versions=outputs, stage_seconds=clock.as_json())
        lease.release()
        raise
    run_log.finish(report.status, error=report.message or None, counts=report.counts(),
                   analysis_id=report.analysis_id, input_versions=report.versions, output_versions=outputs,
                   stage_seconds=clock.as_json())
    lease.release()
    return report.finish()
