"""``cxatlas release``: publish an analysis' per-region context x expression correlations with differential privacy.

Why: Cowen et al. (2021), Nature 589:251, shared their per-region correlations only privatised (Fig. 2 legend:
"Anonymized (differentially private 50) versions of all context–expression correlations are available in the GitHub
repository"). A platform that reproduces the study must be able to publish its own results the same way, with the
guarantee stated and accounted for. Data flow::

    the analysis' input tables, at the analysis' Delta versions (the same videos as the analysis)
      -> clip: scores to [0, 1], each video's non-zero contexts to its release.max_contexts_per_video highest
      -> the release's own Spark pass: per region n, sums, cross-products, occurrence counts (never the incremental
         stat_sums, never bootstrap replicates)
      -> checks (delta < 1/n), then ONE charge to the privacy_ledger (refused beyond release.total_epsilon/_delta)
      -> per region: OpenDP Gaussian noise on the packed sums (cxatlas.stages.release.mechanism)
      -> post-processing (cxatlas.stats.dp): nearest-PSD covariance, (semi-)partial correlations, suppression of
         contexts whose NOISY occurrence count is below release.min_occurrences
      -> one CSV per region in the published data's layout, released_correlations, then the releases row

Privacy unit: one video (add/remove). Bad input -- epsilon <= 0, delta outside (0, 1/n), an analysis that does not
exist, a budget that would be exceeded, an output folder already holding a release -- is refused with one line
(exit 2) before anything is charged or written.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from cxatlas import __version__
from cxatlas.core.errors import UserError
from cxatlas.core.regions import REGION_IDS, region_by_id
from cxatlas.core.release_schemas import RELEASED_CORRELATIONS, RELEASES
from cxatlas.core.result_schemas import ANALYSES
from cxatlas.core.runs import new_run_id
from cxatlas.core.schemas import EXPR_PREFIX, PAPER_EXPRESSIONS, UPLOADS, VIDEO_CONTEXTS, VIDEO_EXPRESSIONS, \
    TableSpec, label_to_column, live_uploads, spark_schema
from cxatlas.core.settings import ReleaseSettings
from cxatlas.stages.release.ledger import BudgetExceeded, Spent, charge, check_budget, spent
from cxatlas.stages.release.mechanism import Calibration, CalibrationError, calibrate
from cxatlas.stats.dp import RegionSums, correlations_from_sums, pack, unpack
from cxatlas.warehouse.tables import CommitResult, TableStore

log = logging.getLogger(__name__)

__all__ = ["BudgetExceeded", "CalibrationError", "ReleaseError", "ReleaseReport", "csv_layout", "release_sums",
           "run_release"]

PRIVACY_UNIT = "one video: neighbouring data sets differ by adding or removing one video (all its rows)"


class ReleaseError(UserError, ValueError):
    """The release cannot run as asked (bad epsilon or delta, no such analysis, output folder in use, ...)."""


@dataclass
class ReleaseReport:
    """What one release did."""

    release_id: str
    analysis_id: str
    epsilon: float
    delta: float
    correlation: str
    calibration: Calibration | None = None
    out_dir: str = ""
    files: list[str] = field(default_factory=list)
    videos_per_region: dict[str, int] = field(default_factory=dict)
    n_contexts: int = 0
    n_suppressed: int = 0
    spent: Spent | None = None
    commits: dict[str, CommitResult] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def n_videos(self) -> int:
        return int(sum(self.videos_per_region.values()))

    def summary(self) -> str:
        cal = self.calibration
        lines = [f"release {self.release_id} of analysis {self.analysis_id} in {self.seconds:.1f}s: "
                 f"({self.epsilon:g}, {self.delta:g})-differentially private {self.correlation} correlations, "
                 f"privacy unit one video",
                 f"  {len(self.files)} CSV files in {self.out_dir} ({self.n_contexts} contexts per region; "
                 f"{self.n_suppressed} region x context cells suppressed by their noisy occurrence count)"]
        if cal is not None:
            lines.append(f"  mechanism: OpenDP {cal.library_version} Gaussian, rho {cal.rho:.4g} per region; noise sd "
                         + ", ".join(f"{k} {v:.4g}" for k, v in cal.scales.items()))
        if self.spent is not None:
            lines.append(f"  budget: {self.spent.describe()}")
        for name, commit in self.commits.items():
            lines.append(commit.describe())
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# Checks before anything is read or charged
# --------------------------------------------------------------------------------------------------------------------
def check_request(epsilon: float, delta: float, settings: ReleaseSettings) -> None:
    """Refuse an impossible request before any table is read (the bound delta < 1/n needs the data: see
    :func:`run_release`)."""
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise ReleaseError(f"--epsilon must be a finite number > 0, got {epsilon!r}")
    if not (isinstance(delta, (int, float)) and math.isfinite(delta) and 0 < delta < 1):
        raise ReleaseError(f"--delta must lie in (0, 1/n) for n videos, got {delta!r}")
    if epsilon > settings.total_epsilon * (1 + 1e-9) or delta > settings.total_delta * (1 + 1e-9):
        raise BudgetExceeded(f"this release (epsilon {epsilon:g}, delta {delta:g}) asks more than the whole privacy "
                             f"budget (release.total_epsilon={settings.total_epsilon:g}, release.total_delta="
                             f"{settings.total_delta:g}); nothing was released or charged")


def find_analysis(store: TableStore, analysis_id: str | None) -> dict[str, Any]:
    """The ``analyses`` row of ``analysis_id`` (default: the latest), or :class:`ReleaseError`."""
    from pyspark.sql import functions as F

    table = store.table(ANALYSES)
    if not table.exists():
        raise ReleaseError("no analysis to release: run `cxatlas analyze` first")
    df = table.read()
    if analysis_id:
        df = df.filter(F.col("analysis_id") == analysis_id)
    rows = df.orderBy(F.col("finished").desc()).limit(1).collect()
    if not rows:
        known = [r[0] for r in table.read().orderBy(F.col("finished").desc()).select("analysis_id").limit(5).collect()]
        raise ReleaseError(f"analysis {analysis_id!r} does not exist; latest analyses: {', '.join(known) or 'none'}")
    return rows[0].asDict()


# --------------------------------------------------------------------------------------------------------------------
# The release's own pass
# --------------------------------------------------------------------------------------------------------------------
def _clip01(col):
    from pyspark.sql import functions as F

    return F.least(F.greatest(col.cast("double"), F.lit(0.0)), F.lit(1.0))


def release_sums(spark, uploads, expressions, contexts, expr_version: str, ctx_version: str, taxonomy: str,
                 expr_columns: Sequence[str], labels: Sequence[str], max_contexts: int,
                 occur_threshold: float) -> dict[str, RegionSums]:
    """Exact per-region sufficient statistics of the clipped data, in one Spark pass of the release's own.

    The videos are those of the analysis (:func:`cxatlas.stages.analyze.prepare_input`: expression scores without
    null or NaN, a context row, a live upload with a region), each once (every input is read with its key checked).
    Clipping, which makes :func:`cxatlas.stats.dp.sensitivities` hold whatever the tables contain: expression and
    context scores to [0, 1] (NaN or null context scores dropped), contexts outside ``labels`` dropped, a label
    listed twice for one video counted once (its highest score), and only the ``max_contexts`` highest non-zero
    context scores of a video kept (ties by taxonomy order).

    Returns
    -------
    dict region id -> RegionSums (only regions with videos)
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    E, K = len(expr_columns), len(labels)
    xs = [f"_x{e}" for e in range(E)]
    ok = F.lit(True)
    for c in expr_columns:
        ok = ok & F.col(c).isNotNull() & ~F.isnan(F.col(c))
    ex = expressions.filter((F.col("model_version") == expr_version) & ok).select(
        "video_id", *[_clip01(F.col(c)).alias(x) for c, x in zip(expr_columns, xs)])
    cx = (contexts.filter((F.col("model_version") == ctx_version) & (F.col("taxonomy") == taxonomy))
          .select("video_id", "contexts"))
    up = live_uploads(uploads).filter(F.col("region").isin(list(REGION_IDS))).select("video_id", "region")
    videos = ex.join(cx, "video_id").join(up, "video_id").persist()
    try:
        aggs = [F.count(F.lit(1)).alias("n")] + [F.sum(x).alias(f"s{e}") for e, x in enumerate(xs)]
        pairs_idx = [(e, f) for e in range(E) for f in range(e, E)]
        aggs += [F.sum(F.col(xs[e]) * F.col(xs[f])).alias(f"ss{e}_{f}") for e, f in pairs_idx]
        region_rows = videos.groupBy("region").agg(*aggs).collect()

        label_df = spark.createDataFrame([(lab, k) for k, lab in enumerate(labels)], "label string, _k int")
        score = F.col("_c.score")
        pairs = (videos.select("video_id", "region", *xs, F.explode("contexts").alias("_c"))
                 .filter(score.isNotNull() & ~F.isnan(score))
                 .select("video_id", "region", *xs, F.col("_c.label").alias("label"), _clip01(score).alias("_s"))
                 .filter(F.col("_s") > 0)
                 .join(F.broadcast(label_df), "label")
                 .groupBy("video_id", "region", "_k", *xs).agg(F.max("_s").alias("_s")))
        rank = F.row_number().over(Window.partitionBy("video_id").orderBy(F.col("_s").desc(), F.col("_k")))
        kept = pairs.withColumn("_rank", rank).filter(F.col("_rank") <= int(max_contexts))
        ctx_aggs = [F.sum(F.when(F.col("_s") >= float(occur_threshold), 1.0).otherwise(0.0)).alias("occ"),
                    F.sum("_s").alias("sc"), F.sum(F.col("_s") * F.col("_s")).alias("scc")]
        ctx_aggs += [F.sum(F.col("_s") * F.col(x)).alias(f"sxc{e}") for e, x in enumerate(xs)]
        ctx_rows = kept.groupBy("region", "_k").agg(*ctx_aggs).collect()
    finally:
        videos.unpersist()

    out: dict[str, RegionSums] = {}
    for row in region_rows:
        s = RegionSums.zeros(E, K)
        s.n = float(row["n"])
        s.sx = np.array([row[f"s{e}"] for e in range(E)], dtype=np.float64)
        for e, f in pairs_idx:
            s.sxx[e, f] = s.sxx[f, e] = row[f"ss{e}_{f}"]
        out[row["region"]] = s
    for row in ctx_rows:
        s, k = out[row["region"]], int(row["_k"])
        s.occurrences[k], s.sc[k], s.scc[k] = row["occ"], row["sc"], row["scc"]
        s.sxc[:, k] = [row[f"sxc{e}"] for e in range(E)]
    return out


# --------------------------------------------------------------------------------------------------------------------
# The published layout
# --------------------------------------------------------------------------------------------------------------------
def expression_header(column: str) -> str:
    """``expr_amusement`` -> ``Amusement`` (the published files' header) for the paper's 16; else the label."""
    for label in PAPER_EXPRESSIONS:
        if label_to_column(label) == column:
            return label
    return column[len(EXPR_PREFIX):] if column.startswith(EXPR_PREFIX) else column


def csv_name(taxonomy: str, region_id: str) -> str:
    """``Exp1_<Region>.csv`` / ``Exp2_<Region>.csv`` for the paper's taxonomies (as the published files are
    named), ``<taxonomy>_<Region>.csv`` otherwise; ``<Region>`` is the paper's display name."""
    prefix = {"nature2021_exp1": "Exp1", "nature2021_exp2": "Exp2"}.get(taxonomy)
    if prefix is None:
        prefix = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in os.path.basename(str(taxonomy)))
    return f"{prefix}_{region_by_id(region_id).display_name}.csv"


def _num(v: float) -> str:
    return "NaN" if not np.isfinite(v) else f"{v:.5g}"


def csv_layout(labels: Sequence[str], expr_columns: Sequence[str], r: np.ndarray) -> str:
    """One region's file as published: an empty first header cell then the expressions, one row per context in
    taxonomy order (a label listed twice appears twice), ``NaN`` for suppressed contexts, no trailing newline.

    ``r`` is (K_unique, E) in the order of the first occurrence of each label."""
    index = {lab: i for i, lab in enumerate(dict.fromkeys(labels))}
    lines = ["," + ",".join(expression_header(c) for c in expr_columns)]
    for lab in labels:
        cell = lab if not any(ch in lab for ch in ',"\n') else '"' + lab.replace('"', '""') + '"'
        lines.append(cell + "," + ",".join(_num(v) for v in r[index[lab]]))
    return "\n".join(lines)


def _to_spark(spark, spec: TableSpec, pdf: pd.DataFrame):
    import pyarrow as pa

    table = pa.Table.from_pandas(pdf[spec.schema.names], schema=spec.schema, preserve_index=False)
    return spark.createDataFrame(table.to_pandas(), schema=spark_schema(spec.schema))


# --------------------------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------------------------
def run_release(spark, cfg, store: TableStore, epsilon: float, delta: float, out: str,
                analysis_id: str | None = None, release_id: str | None = None,
                correlation: str | None = None) -> ReleaseReport:
    """Release the per-region correlations of one analysis (default: the latest) with (epsilon, delta)-DP.

    Parameters
    ----------
    epsilon, delta : the guarantee of this release; charged to the data root's budget (``release.total_*``).
    out : local folder for the per-region CSVs (created; must not already hold this layout's files).
    analysis_id : the analysis whose inputs and model versions are released (default: the latest).
    correlation : ``partial`` or ``semipartial`` (default ``release.correlation``).

    Returns
    -------
    ReleaseReport
    """
    from cxatlas.stages.analyze.sums import Inputs, resolve_inputs, taxonomy_labels

    started = time.time()
    settings: ReleaseSettings = cfg.settings.release
    kind = correlation or settings.correlation
    if kind not in ("partial", "semipartial"):
        raise ReleaseError(f"correlation must be partial or semipartial, got {kind!r}")
    check_request(epsilon, delta, settings)
    if not out:
        raise ReleaseError("--out is required: the folder for the per-region CSV files")
    row = find_analysis(store, analysis_id)
    aid = row["analysis_id"]
    params = json.loads(row.get("parameters") or "{}")
    occur_threshold = float(params.get("occur_threshold", cfg.settings.analyze.occur_threshold))
    if occur_threshold <= 0:
        raise ReleaseError(f"analysis {aid} counts a context as occurring at score >= {occur_threshold}: every video "
                           f"would 'occur' in every context; release needs analyze.occur_threshold > 0")
    current = spent(store)
    check_budget(current, epsilon, delta, settings.total_epsilon, settings.total_delta)
    release_id = release_id or new_run_id()
    report = ReleaseReport(release_id, aid, float(epsilon), float(delta), kind, out_dir=out)

    # The analysis' inputs, at the versions it read.
    versions = json.loads(row.get("input_versions") or "{}")
    frames = {}
    for spec in (UPLOADS, VIDEO_EXPRESSIONS, VIDEO_CONTEXTS):
        table = store.table(spec)
        if not table.exists():
            raise ReleaseError(f"table '{spec.name}' of analysis {aid} no longer exists under {store.root}")
        frames[spec.name] = table.read_unique(versions.get(spec.name))
    inputs = Inputs(versions, frames[UPLOADS.name], frames[VIDEO_EXPRESSIONS.name], frames[VIDEO_CONTEXTS.name])
    asettings = dataclasses.replace(cfg.settings.analyze, expression_model_version=row["expression_model_version"],
                                    context_model_version=row["context_model_version"], taxonomy=row["taxonomy"],
                                    expressions=tuple(params["expressions"]) if params.get("expressions") else None)
    expr_version, ctx_version, taxonomy, expr_columns, _ = resolve_inputs(inputs, asettings)
    labels = taxonomy_labels(inputs, ctx_version, taxonomy)
    unique = list(dict.fromkeys(labels))
    E, K = len(expr_columns), len(unique)
    report.n_contexts = K

    # Output files: refuse a folder already holding this layout before anything is charged.
    names = {r: csv_name(taxonomy, r) for r in REGION_IDS}
    taken = [n for n in names.values() if os.path.exists(os.path.join(out, n))]
    if taken or os.path.exists(os.path.join(out, "release.json")):
        raise ReleaseError(f"{out} already holds a release ({', '.join(taken[:3]) or 'release.json'} ...); choose "
                           f"an empty folder: a published release is never overwritten")

    cal = calibrate(float(epsilon), float(delta), E, settings.max_contexts_per_video, settings.count_share)
    report.calibration = cal

    sums = release_sums(spark, inputs.uploads, inputs.expressions, inputs.contexts, expr_version, ctx_version,
                        taxonomy, expr_columns, unique, settings.max_contexts_per_video, occur_threshold)
    report.videos_per_region = {r: int(s.n) for r, s in sums.items()}
    n = report.n_videos
    if n == 0:
        raise ReleaseError(f"analysis {aid}: no video has expression scores, a context row and a region")
    if not delta < 1.0 / n:
        raise ReleaseError(f"--delta {delta:g} must lie in (0, 1/n) = (0, {1.0 / n:.3g}) for the n = {n} videos of "
                           f"this release (a delta near 1/n allows publishing one video's data outright)")

    # The charge: from here on the budget is spent, whatever happens next.
    report.spent = charge(store, release_id, aid, float(epsilon), float(delta), settings.total_epsilon,
                          settings.total_delta, settings.charge_attempts)

    # Noise (OpenDP) per region -- every region, with or without videos, so which regions are present is not
    # revealed by the layout -- then post-processing only.
    rows, suppressed, files = [], {}, []
    os.makedirs(out, exist_ok=True)
    for region in REGION_IDS:
        exact = sums.get(region) or RegionSums.zeros(E, K)
        noisy = unpack(cal.add_noise(pack(exact, cal.sensitivities, cal.shares)), E, K, cal.sensitivities,
                       cal.shares)
        r = correlations_from_sums(noisy, kind)
        hidden = ~(noisy.occurrences >= settings.min_occurrences)
        if not noisy.n >= 2:  # a (noisy) region of fewer than 2 videos has no correlations at all
            hidden[:] = True
        r[hidden] = np.nan
        suppressed[region] = [unique[k] for k in np.flatnonzero(hidden)]
        path = os.path.join(out, names[region])
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(csv_layout(labels, expr_columns, r))
        files.append(path)
        rows.append(pd.DataFrame({
            "release_id": release_id, "region": region,
            "context": np.repeat(np.array(unique, dtype=object), E),
            "expression": np.tile(np.array(expr_columns, dtype=object), K),
            "r": np.where(np.repeat(hidden, E), np.nan, r.ravel()),
            "suppressed": np.repeat(hidden, E),
            "noisy_occurrences": np.repeat(noisy.occurrences, E), "noisy_n_videos": float(noisy.n)}))
    report.files = files
    report.n_suppressed = int(sum(len(v) for v in suppressed.values()))

    meta = dict(release_id=release_id, analysis_id=aid, epsilon=epsilon, delta=delta, privacy_unit=PRIVACY_UNIT,
                mechanism=cal.mechanism, rho_per_region=cal.rho, correlation=kind, library=cal.library,
                library_version=cal.library_version, sensitivity=cal.sensitivities, budget_shares=cal.shares,
                noise_scale=cal.scales,
                clipping=dict(score_range=[0.0, 1.0], max_contexts_per_video=settings.max_contexts_per_video,
                              occur_threshold=occur_threshold),
                min_occurrences=settings.min_occurrences, suppressed=suppressed,
                taxonomy=taxonomy, expressions=[expression_header(c) for c in expr_columns])
    with open(os.path.join(out, "release.json"), "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=2, sort_keys=True)

    corr = pd.concat(rows, ignore_index=True)
    corr["suppressed"] = corr["suppressed"].astype(bool)  # r of a suppressed cell is NaN: null in the table
    table = store.table(RELEASED_CORRELATIONS).create_if_missing()
    report.commits[RELEASED_CORRELATIONS.name] = table.append(_to_spark(spark, RELEASED_CORRELATIONS, corr))
    report.seconds = time.time() - started
    release_row = pd.DataFrame([dict(
        release_id=release_id, analysis_id=aid, started=pd.Timestamp(int(started * 1e6), unit="us", tz="UTC"),
        finished=pd.Timestamp.now(tz="UTC").floor("us"), epsilon=float(epsilon), delta=float(delta), rho=cal.rho,
        privacy_unit=PRIVACY_UNIT, mechanism=cal.mechanism, correlation=kind,
        sensitivity=json.dumps(cal.sensitivities, sort_keys=True),
        budget_shares=json.dumps(cal.shares, sort_keys=True), noise_scale=json.dumps(cal.scales, sort_keys=True),
        clipping=json.dumps(meta["clipping"], sort_keys=True), min_occurrences=float(settings.min_occurrences),
        n_videos=n, n_contexts=K, n_suppressed=report.n_suppressed, suppressed=json.dumps(suppressed, sort_keys=True),
        library=cal.library, library_version=cal.library_version, out_dir=os.path.abspath(out),
        input_versions=json.dumps(versions, sort_keys=True), cxatlas_version=__version__)])
    report.commits[RELEASES.name] = store.table(RELEASES).create_if_missing().append(
        _to_spark(spark, RELEASES, release_row))
    log.info("release %s of analysis %s written to %s", release_id, aid, out)
    return report
