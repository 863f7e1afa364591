"""``cxatlas analyze``: the statistics of Cowen et al. (2021) from the annotation tables, in one distributed pass.

Data flow (only small partial sums and the result rows ever reach the driver)::

    video_expressions (one model version)  --+
    video_contexts (one model version, one taxonomy) --join on video_id--> prepared rows
    uploads (region not null, geobin)  ------+
      -> mapInArrow(udfs.moments.MomentsPass): partial Moments (regions x replicates), geobin sums, and per region
         the candidate rows of the balanced CCA sample (each task's 25,000 smallest of a second hash)
      -> groupBy(kind, key).applyInPandas(combine_partials): sums added, CCA sample = global bottom-25,000 -> sums
      -> driver: cxatlas.stats algebra (partial correlations, region similarity, region vs world, CCA, tests)
      -> one commit per result table (cxatlas.results), the ``analyses`` row last, PNG figures

Definitions follow the paper's Methods (Cowen et al. 2021, Nature 589:251) as implemented in :mod:`cxatlas.stats`:
per region, the partial correlation of each context with each expression controlling for the other expressions;
prevalence = mean context score; a context is analysed when it occurred (score >= ``analyze.occur_threshold``) at
least ``analyze.min_occurrences`` times over all regions; region similarity and region-vs-world are weighted
correlations of the regions' context x expression matrices; CCA is fitted on a balanced sample (25,000 videos per
region, or all videos with regions re-weighted to equal mass) and evaluated on held-out regions. Standard errors
come from a one-pass Poisson bootstrap whose weights derive from ``(xxhash64(video_id), replicate, seed)``, so the
numbers do not depend on partitioning, executor count or retries.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from cxatlas import __version__
from cxatlas.config import Config, join_uri
from cxatlas.regions import REGION_IDS
from cxatlas.results import (ANALYSES, CCA_HELDOUT, CCA_TESTS, CONTEXT_EXPRESSION_CORRELATIONS, GEOBIN_VARIATES,
                             REGION_SIMILARITY, REGION_VS_WORLD)
from cxatlas.schemas import EXPR_PREFIX, UPLOADS, VIDEO_CONTEXTS, VIDEO_EXPRESSIONS, TableSpec, spark_schema
from cxatlas.stats import (CcaMoments, Moments, analysed_contexts, balanced_covariance, bartlett_test, bh_qvalues,
                           bootstrap_summary, cca_fit, expression_variates, fisher_mean, fit_on_one_region,
                           leave_one_region_out, partial_correlations, prevalence, region_similarity_batched,
                           region_vs_world_batched, signed_rank_tests)
from cxatlas.tables import CommitResult, TableStore
from udfs.moments import PARTIAL_SCHEMA, GeobinSums, MomentsPass, assemble, combine_partials

log = logging.getLogger(__name__)

CCA_BALANCE = ("subsample", "reweight")
LORO = "leave_one_region_out"
BALANCED_FIT = "balanced_fit"


class AnalyzeError(ValueError):
    """The analysis cannot run as configured (no input, ambiguous model version, ...); the message says how to fix."""


# --------------------------------------------------------------------------------------------------------------------
# Settings and report
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class AnalyzeSettings:
    """Everything that defines an analysis (stored as JSON in ``analyses.parameters``). See ``analyze:`` in
    ``conf/local.yaml`` for what each setting means."""

    expression_model_version: str | None = None
    context_model_version: str | None = None
    taxonomy: str | None = None
    expressions: list[str] | None = None
    replicates: int = 50
    seed: int = 0
    occur_threshold: float = 0.5
    min_occurrences: int = 30
    min_occurrences_per_region: bool = False
    cca_balance: str = "subsample"
    cca_per_region: int = 25_000
    cca_sample_seed: int = 0
    cca_ridge: float = 0.0
    cca_fit_region: str = "us_canada"
    geobin_min_videos: int = 1
    partitions: int = 4
    broadcast_max_rows: int = 5_000_000
    batch_rows: int = 20_000
    chunk_rows: int = 4_096
    geobin_shards: int = 4
    figures: bool = True
    figures_dir: str = "figures"
    figure_contexts: list[str] | None = None
    figure_n_contexts: int = 12
    figure_dpi: int = 150

    def __post_init__(self) -> None:
        if self.cca_balance not in CCA_BALANCE:
            raise AnalyzeError(f"analyze.cca.balance must be one of {CCA_BALANCE}, got {self.cca_balance!r}")
        if self.replicates < 0:
            raise AnalyzeError("analyze.replicates must be >= 0")
        if self.cca_fit_region not in REGION_IDS:
            raise AnalyzeError(f"analyze.cca.fit_region {self.cca_fit_region!r} is not a region id: {REGION_IDS}")
        if self.cca_per_region < 1 or self.partitions < 1:
            raise AnalyzeError("analyze.cca.per_region and analyze.partitions must be >= 1")

    @classmethod
    def from_config(cls, cfg: Config, **overrides: Any) -> "AnalyzeSettings":
        """Settings from the ``analyze:`` section; keyword overrides (e.g. from CLI flags) win when not None."""
        a = cfg.section("analyze")
        cca = dict(a.get("cca") or {})
        fig = dict(a.get("figures") or {})
        values = dict(
            expression_model_version=a.get("expression_model_version"),
            context_model_version=a.get("context_model_version"),
            taxonomy=a.get("taxonomy"),
            expressions=a.get("expressions"),
            replicates=int(a.get("replicates", 50)),
            seed=int(a.get("seed", 0)),
            occur_threshold=float(a.get("occur_threshold", 0.5)),
            min_occurrences=int(a.get("min_occurrences", 30)),
            min_occurrences_per_region=bool(a.get("min_occurrences_per_region", False)),
            cca_balance=str(cca.get("balance", "subsample")),
            cca_per_region=int(cca.get("per_region", 25_000)),
            cca_sample_seed=int(cca.get("sample_seed", 0)),
            cca_ridge=float(cca.get("ridge", 0.0)),
            cca_fit_region=str(cca.get("fit_region", "us_canada")),
            geobin_min_videos=int(a.get("geobin_min_videos", 1)),
            partitions=int(a.get("partitions", 4)),
            broadcast_max_rows=int(a.get("broadcast_max_rows", 5_000_000)),
            batch_rows=int(a.get("batch_rows", 20_000)),
            chunk_rows=int(a.get("chunk_rows", 4_096)),
            geobin_shards=int(a.get("geobin_shards", 4)),
            figures=bool(fig.get("enabled", True)),
            figures_dir=str(fig.get("dir", "figures")),
            figure_contexts=fig.get("contexts"),
            figure_n_contexts=int(fig.get("n_contexts", 12)),
            figure_dpi=int(fig.get("dpi", 150)),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class AnalyzeReport:
    """What one analysis did. ``moments``/``cca_moments``/``geobins`` hold the combined sums (for tests/benchmarks)."""

    analysis_id: str
    settings: AnalyzeSettings
    expression_model_version: str = ""
    context_model_version: str = ""
    taxonomy: str = ""
    expressions: list[str] = field(default_factory=list)
    n_contexts: int = 0
    n_contexts_analysed: int = 0
    expression_rows: int = 0
    videos_per_region: dict[str, int] = field(default_factory=dict)
    input_versions: dict[str, int] = field(default_factory=dict)
    commits: dict[str, CommitResult] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    moments: Moments | None = field(default=None, repr=False)
    cca_moments: CcaMoments | None = field(default=None, repr=False)
    geobins: GeobinSums | None = field(default=None, repr=False)

    @property
    def n_videos(self) -> int:
        return int(sum(self.videos_per_region.values()))

    def summary(self) -> str:
        lines = [
            f"analysis {self.analysis_id} in {self.seconds:.1f}s "
            f"({', '.join(f'{k} {v:.1f}s' for k, v in self.stage_seconds.items())})",
            f"  expressions: model {self.expression_model_version} ({len(self.expressions)} columns); contexts: "
            f"model {self.context_model_version}, taxonomy {self.taxonomy} ({self.n_contexts_analysed} of "
            f"{self.n_contexts} contexts analysed)",
            f"  videos analysed: {self.n_videos} of {self.expression_rows} expression rows "
            f"(the rest lack scores, a context row or a region)",
            "  per region: " + ", ".join(f"{r}={n}" for r, n in self.videos_per_region.items()),
            f"  bootstrap: {self.settings.replicates} Poisson replicates (seed {self.settings.seed}); CCA: "
            + (f"balanced sample of {self.settings.cca_per_region} videos per region"
               if self.settings.cca_balance == "subsample" else "all videos, regions re-weighted to equal mass")
            + f", ridge {self.settings.cca_ridge}",
        ]
        for name, commit in self.commits.items():
            lines.append(f"  {name}: " + (f"version {commit.version}, {commit.rows_written} rows"
                                          if commit.version is not None else "no rows"))
        if self.figures:
            lines.append(f"  figures: {os.path.dirname(next(iter(self.figures.values())))}/ "
                         f"({', '.join(sorted(os.path.basename(p) for p in self.figures.values()))})")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    """The three input tables, each read once at a pinned Delta version (a consistent snapshot for the analysis)."""

    versions: dict[str, int]
    uploads: Any
    expressions: Any
    contexts: Any

    @classmethod
    def read(cls, store: TableStore) -> "Inputs":
        frames, versions = {}, {}
        for spec in (UPLOADS, VIDEO_EXPRESSIONS, VIDEO_CONTEXTS):
            table = store.table(spec)
            if not table.exists():
                raise AnalyzeError(f"table '{spec.name}' does not exist under {store.root}: run `cxatlas ingest` and "
                                   f"`cxatlas annotate`, or `cxatlas import-annotations`, first")
            versions[spec.name] = table.version()
            frames[spec.name] = table.read(versions[spec.name])
        return cls(versions, frames[UPLOADS.name], frames[VIDEO_EXPRESSIONS.name], frames[VIDEO_CONTEXTS.name])


def _choose(options: list[tuple], wanted: dict[str, str | None], what: str, setting: str) -> tuple:
    """Pick the one option matching the wanted values (None = any); refuse ambiguity with the choices listed."""
    names = list(wanted)
    matches = [o for o in options if all(w is None or o[i] == w for i, w in enumerate(wanted.values()))]
    listing = ", ".join("/".join(str(x) for x in o) for o in sorted(options, key=str)) or "none"
    if not matches:
        raise AnalyzeError(f"no {what} rows with {dict(wanted)}; present ({'/'.join(names)}): {listing}")
    if len(matches) > 1:
        raise AnalyzeError(f"several {what} ({'/'.join(names)}) are present: {listing}; choose one with {setting}")
    return matches[0]


def resolve_inputs(inputs: Inputs, settings: AnalyzeSettings) -> tuple[str, str, str, list[str], int]:
    """The expression model version, context model version, taxonomy and expression columns of the analysis.

    Each may be set in ``analyze:`` (or on the command line); when not set it must be unambiguous in the tables.
    Expression columns default to those the chosen model filled (any non-null value): ``video_expressions`` holds
    the union of every model's labels. Two small aggregations, one per annotation table.

    Returns
    -------
    (expression_model_version, context_model_version, taxonomy, expression_columns, expression_rows)
    """
    from pyspark.sql import functions as F

    candidates = [c for c in inputs.expressions.columns if c.startswith(EXPR_PREFIX)]
    per_version = {r["model_version"]: r for r in inputs.expressions.groupBy("model_version").agg(
        F.count(F.lit(1)).alias("_rows"), *[F.count(F.col(c)).alias(c) for c in candidates]).collect()}
    (expr_version,) = _choose([(v,) for v in per_version], {"model_version": settings.expression_model_version},
                              "expression model versions", "--set analyze.expression_model_version=...")
    if settings.context_model_version is not None and settings.taxonomy is not None:
        cx_options = [(settings.context_model_version, settings.taxonomy)]  # checked by the join (0 rows: error)
    else:
        cx_options = [(r[0], r[1]) for r in inputs.contexts.select("model_version", "taxonomy").distinct().collect()]
    ctx_version, taxonomy = _choose(cx_options, {"model_version": settings.context_model_version,
                                                 "taxonomy": settings.taxonomy},
                                    "context model versions / taxonomies",
                                    "--set analyze.context_model_version=... / analyze.taxonomy=...")
    counts = per_version[expr_version]
    if settings.expressions:
        from cxatlas.schemas import label_to_column

        columns = [c if c.startswith(EXPR_PREFIX) else label_to_column(c) for c in settings.expressions]
        missing = [c for c in columns if c not in candidates]
        if missing:
            raise AnalyzeError(f"analyze.expressions names columns not in video_expressions: {missing}")
    else:
        columns = [c for c in candidates if counts[c] > 0]
    if not columns:
        raise AnalyzeError(f"expression model {expr_version} has no non-null expr_* column")
    return expr_version, ctx_version, taxonomy, columns, int(counts["_rows"])


def taxonomy_labels(inputs: Inputs, ctx_version: str, taxonomy: str) -> list[str]:
    """The context labels in column order: the taxonomy's own order when it can be loaded (a built-in name or a
    file), else the labels present in the data, sorted (e.g. an imported taxonomy)."""
    from pyspark.sql import functions as F

    from cxatlas.taxonomies import load_taxonomy

    try:
        return list(load_taxonomy(taxonomy).labels)
    except (FileNotFoundError, ValueError):
        pass
    rows = (inputs.contexts.filter((F.col("model_version") == ctx_version) & (F.col("taxonomy") == taxonomy))
            .select(F.explode("contexts.label").alias("label")).distinct().collect())
    return sorted(r[0] for r in rows if r[0] is not None)


def prepare_input(inputs: Inputs, expr_version: str, ctx_version: str, taxonomy: str,
                  expr_columns: Sequence[str], sample_seed: int = 0, broadcast: bool = False):
    """The analysed videos, one row each: annotations joined with ``uploads`` (region not null, a known region).

    Columns: ``_region`` (code in :data:`cxatlas.regions.REGION_IDS` order), ``_hash`` = ``xxhash64(video_id)``
    (bootstrap weights), ``_key`` = ``xxhash64(salt, video_id)`` (an independent order for the CCA sample),
    ``lat_bin``, ``lon_bin``, the expression columns (rows with any null or NaN score are left out: no face found)
    and ``contexts``. Region and geobin come from ``uploads`` (the table of record), not from the annotation rows.

    ``broadcast=True`` joins the narrow sides (uploads, then expressions) as broadcast hash tables, so the wide
    context rows stream through without a shuffle or sort; it needs the expression rows to fit in executor memory
    (``analyze.broadcast_max_rows``). Otherwise Spark shuffles all three sides by ``video_id``.
    """
    from pyspark.sql import functions as F

    expr_ok = F.lit(True)
    for c in expr_columns:
        expr_ok = expr_ok & F.col(c).isNotNull() & ~F.isnan(F.col(c))
    ex = inputs.expressions.filter((F.col("model_version") == expr_version) & expr_ok).select("video_id",
                                                                                            *expr_columns)
    cx = (inputs.contexts.filter((F.col("model_version") == ctx_version) & (F.col("taxonomy") == taxonomy))
          .select("video_id", "contexts"))
    up = inputs.uploads.filter(F.col("region").isin(list(REGION_IDS))).select("video_id", "region", "lat_bin",
                                                                              "lon_bin")
    region_code = F.create_map(*[x for i, r in enumerate(REGION_IDS) for x in (F.lit(r), F.lit(i))])
    if broadcast:
        joined = cx.join(F.broadcast(ex.join(F.broadcast(up), "video_id")), "video_id")
    else:
        joined = ex.join(cx, "video_id").join(up, "video_id")
    return joined.select(
        region_code[F.col("region")].cast("int").alias("_region"),
        F.xxhash64("video_id").alias("_hash"),
        F.xxhash64(F.lit(f"cxatlas-cca-sample-{sample_seed}"), F.col("video_id")).alias("_key"),
        F.col("lat_bin"), F.col("lon_bin"), *[F.col(c) for c in expr_columns], F.col("contexts"),
    )


# --------------------------------------------------------------------------------------------------------------------
# The heavy pass
# --------------------------------------------------------------------------------------------------------------------
def compute_sums(prepared, expr_columns: Sequence[str], labels: Sequence[str], settings: AnalyzeSettings
                 ) -> tuple[Moments, CcaMoments, GeobinSums]:
    """Run :class:`udfs.moments.MomentsPass` over the prepared rows and add the partials (on the executors).

    The balanced CCA sample (``settings.cca_per_region`` videos per region with the smallest ``_key``) is drawn in
    the same pass: tasks send their per-region bottom-k candidates, the combine step keeps the global bottom-k.
    """
    n_regions = len(REGION_IDS)
    per_region = settings.cca_per_region if settings.cca_balance == "subsample" else None
    task = MomentsPass(expr_columns=list(expr_columns), labels=list(labels), n_regions=n_regions,
                       n_replicates=settings.replicates, seed=settings.seed, cca_per_region=per_region,
                       occur_threshold=settings.occur_threshold, batch_rows=settings.batch_rows,
                       chunk_rows=settings.chunk_rows, geobin_shards=settings.geobin_shards)
    partials = prepared.coalesce(settings.partitions).mapInArrow(task, PARTIAL_SCHEMA)
    combined = partials.groupBy("kind", "key").applyInPandas(combine_partials, PARTIAL_SCHEMA)
    rows = [(r["kind"], int(r["key"]), r["payload"]) for r in combined.collect()]
    return assemble(rows, n_regions, settings.replicates + 1, len(expr_columns), len(labels))


# --------------------------------------------------------------------------------------------------------------------
# Driver algebra: sums -> result frames (pure numpy/pandas; tests call this directly)
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class ResultFrames:
    """The result tables of one analysis as pandas frames (without ``analysis_id``), plus what the figures need."""

    correlations: pd.DataFrame
    similarity: pd.DataFrame
    world: pd.DataFrame
    cca_heldout: pd.DataFrame
    cca_tests: pd.DataFrame
    geobins: pd.DataFrame
    analysed: np.ndarray  # (K,) bool
    figure_contexts: list[str]


def _subset_cca(cm: CcaMoments, keep: np.ndarray) -> CcaMoments:
    return CcaMoments(n=cm.n, sx=cm.sx, sc=cm.sc[:, keep], sxx=cm.sxx, sxc=cm.sxc[:, :, keep],
                      scc_full=cm.scc_full[:, keep][:, :, keep])


def _wilcoxon_rows(variant: str, heldout: np.ndarray) -> list[dict]:
    stat, p = signed_rank_tests(heldout)
    q = bh_qvalues(p)
    with np.errstate(all="ignore"):
        med = np.array([np.nanmedian(col) if np.isfinite(col).any() else np.nan for col in heldout.T])
    return [dict(variant=variant, dimension=d + 1, test="wilcoxon_signed_rank", statistic=stat[d], df=np.nan,
                 p=p[d], q=q[d], rho=med[d]) for d in range(heldout.shape[1])]


def _heldout_rows(variant: str, heldout: np.ndarray, regions: Sequence[str]) -> list[dict]:
    return [dict(variant=variant, dimension=d + 1, heldout_region=regions[r], r=heldout[r, d])
            for r in range(heldout.shape[0]) for d in range(heldout.shape[1]) if np.isfinite(heldout[r, d])]


def compute_results(m: Moments, cm: CcaMoments, geobins: GeobinSums, expr_columns: Sequence[str],
                    labels: Sequence[str], settings: AnalyzeSettings,
                    region_ids: Sequence[str] = REGION_IDS) -> ResultFrames:
    """Every statistic of the analysis from the combined sums (Cowen et al. 2021, Methods; see module docstring).

    Point estimates come from replicate 0 (the observed data), standard errors are the sd over replicates 1..B
    (:func:`cxatlas.stats.bootstrap_summary`). Regions without videos are left out of every table.
    """
    R, B1, E, K = m.shape
    region_ids = list(region_ids)
    n_videos = m.n[:, 0]
    present = np.flatnonzero(n_videos > 0)
    keep = analysed_contexts(m, settings.min_occurrences, settings.min_occurrences_per_region)
    ka = np.flatnonzero(keep)
    labels_a = [labels[k] for k in ka]
    pc = partial_correlations(m)[:, :, ka]                  # (R, B1, Ka, E)
    prev = prevalence(m)[:, :, ka]                           # (R, B1, Ka)
    r_point, r_se = bootstrap_summary(np.moveaxis(pc, 1, 0))   # (R, Ka, E)
    p_point, p_se = bootstrap_summary(np.moveaxis(prev, 1, 0))  # (R, Ka)

    Ka, Rp = ka.size, present.size
    corr = pd.DataFrame({
        "region": np.repeat(np.array(region_ids, dtype=object)[present], Ka * E),
        "context": np.tile(np.repeat(np.array(labels_a, dtype=object), E), Rp),
        "expression": np.tile(np.array(expr_columns, dtype=object), Rp * Ka),
        "r": r_point[present].ravel(), "se": r_se[present].ravel(),
        "prevalence": np.repeat(p_point[present].ravel(), E), "prevalence_se": np.repeat(p_se[present].ravel(), E),
        "occurrences": np.repeat(m.occurred[present][:, ka].ravel(), E).astype(np.int64),
        "n_videos": np.repeat(n_videos[present], Ka * E).astype(np.int64),
    })

    sim_rows, world_rows = [], []
    if Rp >= 2 and Ka >= 1:
        pcp = np.moveaxis(pc[present], 1, 0)                  # (B1, Rp, Ka, E)
        prp = np.moveaxis(prev[present], 1, 0)                # (B1, Rp, Ka)
        sims = region_similarity_batched(pcp, prp)            # (B1, Rp, Rp)
        s_point, s_se = bootstrap_summary(sims)
        r2, best, best_r2 = region_vs_world_batched(pcp, prp, similarity=sims)
        w_point, w_se = bootstrap_summary(r2)
        names = [region_ids[i] for i in present]
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                sim_rows.append(dict(region_a=a, region_b=b, r=s_point[i, j], se=s_se[i, j]))
            world_rows.append(dict(region=a, r2=w_point[i], se=w_se[i],
                                   best_match_region=names[best[0, i]] if best[0, i] >= 0 else None,
                                   best_match_r2=best_r2[0, i]))

    heldout_rows, test_rows, geo = [], [], pd.DataFrame(columns=["lat_bin", "lon_bin", "n_videos", "variate_1",
                                                                  "variate_2", "variate_3"])
    if Ka >= 1 and Rp >= 1:
        cm_a = _subset_cca(cm, keep)
        equal_mass = settings.cca_balance == "reweight"
        sample_regions = np.flatnonzero(cm_a.n > 0)
        if sample_regions.size >= 2:
            loro = leave_one_region_out(cm_a, settings.cca_ridge, equal_mass)
            heldout_rows += _heldout_rows(LORO, loro, region_ids)
            test_rows += _wilcoxon_rows(LORO, loro)
        fit_idx = region_ids.index(settings.cca_fit_region)
        if cm_a.n[fit_idx] > 0 and sample_regions.size >= 2:
            variant = f"fit_on_{settings.cca_fit_region}"
            one = fit_on_one_region(cm_a, fit_idx, settings.cca_ridge)
            heldout_rows += _heldout_rows(variant, one, region_ids)
            test_rows += _wilcoxon_rows(variant, one)
        if sample_regions.size >= 1:
            blocks = balanced_covariance(cm_a, sample_regions, equal_mass)
            fit = cca_fit(blocks.cov_xx, blocks.cov_cc, blocks.cov_xc, settings.cca_ridge)
            chi2, df, p = bartlett_test(fit.rho, blocks.n, E, Ka)
            q = bh_qvalues(p)
            test_rows += [dict(variant=BALANCED_FIT, dimension=d + 1, test="bartlett_chi2", statistic=chi2[d],
                               df=df[d], p=p[d], q=q[d], rho=fit.rho[d]) for d in range(fit.rho.size)]
            ok = geobins.n >= max(1, settings.geobin_min_videos)
            if ok.any():
                means = geobins.sx[ok] / geobins.n[ok, None]
                v = expression_variates(fit, means, blocks.mean_x, dims=3)
                v = np.pad(v, ((0, 0), (0, 3 - v.shape[1])), constant_values=np.nan)
                geo = pd.DataFrame({"lat_bin": geobins.lat_bin[ok], "lon_bin": geobins.lon_bin[ok],
                                    "n_videos": geobins.n[ok].astype(np.int64), "variate_1": v[:, 0],
                                    "variate_2": v[:, 1], "variate_3": v[:, 2]})

    return ResultFrames(
        correlations=corr, similarity=pd.DataFrame(sim_rows, columns=["region_a", "region_b", "r", "se"]),
        world=pd.DataFrame(world_rows, columns=["region", "r2", "se", "best_match_region", "best_match_r2"]),
        cca_heldout=pd.DataFrame(heldout_rows, columns=["variant", "dimension", "heldout_region", "r"]),
        cca_tests=pd.DataFrame(test_rows, columns=["variant", "dimension", "test", "statistic", "df", "p", "q",
                                                   "rho"]),
        geobins=geo, analysed=keep,
        figure_contexts=_figure_contexts(r_point[present], labels_a, settings),
    )


def _figure_contexts(r_point: np.ndarray, labels_a: list[str], settings: AnalyzeSettings) -> list[str]:
    """Contexts for the Fig. 2 heatmap: the configured ones that were analysed, else the ``figure_n_contexts`` with
    the strongest association worldwide (largest |Fisher-mean over regions of r| over expressions)."""
    if settings.figure_contexts:
        wanted = [c for c in settings.figure_contexts if c in set(labels_a)]
        skipped = [c for c in settings.figure_contexts if c not in set(labels_a)]
        if skipped:
            log.warning("figure contexts not analysed (too rare or not in the taxonomy): %s", skipped)
        return wanted
    if not labels_a or r_point.size == 0:
        return []
    with warnings.catch_warnings():  # a context with no finite cell (tiny data) ranks last, not with a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        strength = np.nan_to_num(np.nanmax(np.abs(fisher_mean(r_point, axis=0)), axis=1)
                                 if np.isfinite(r_point).any() else np.zeros(len(labels_a)), nan=-1.0)
    order = np.argsort(-strength, kind="stable")[: settings.figure_n_contexts]
    return [labels_a[i] for i in order]


# --------------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------------
def _to_spark(spark, spec: TableSpec, pdf: pd.DataFrame, analysis_id: str):
    import pyarrow as pa

    pdf = pdf.copy()
    pdf.insert(0, "analysis_id", analysis_id)
    table = pa.Table.from_pandas(pdf[spec.schema.names], schema=spec.schema, preserve_index=False)
    return spark.createDataFrame(table.to_pandas(), schema=spark_schema(spec.schema))


def write_figures(frames: ResultFrames, out_dir: str, bin_deg: float, dpi: int) -> dict[str, str]:
    """The paper's figures as PNG under ``out_dir`` (a local path or a URI: drawn locally, then copied)."""
    from cxatlas import figures

    local = out_dir if "://" not in out_dir else tempfile.mkdtemp(prefix="cxatlas-figures-")
    made: dict[str, str] = {}
    jobs = [
        ("fig2_context_expression_heatmap", not frames.correlations.empty and bool(frames.figure_contexts),
         lambda p: figures.heatmap_contexts(frames.correlations, frames.figure_contexts, p, dpi=dpi)),
        ("fig3a_region_similarity", not frames.similarity.empty,
         lambda p: figures.region_similarity_matrix(frames.similarity, p, dpi=dpi)),
        ("fig3b_region_vs_world", not frames.world.empty,
         lambda p: figures.region_vs_world_bars(frames.world, p, dpi=dpi)),
        ("fig3c_heldout_canonical_correlations", not frames.cca_heldout.empty,
         lambda p: figures.heldout_canonical_correlations(frames.cca_heldout, p, dpi=dpi)),
        ("fig4_geobin_variates", not frames.geobins.empty and frames.geobins["variate_3"].notna().any(),
         lambda p: figures.geobin_map(frames.geobins, p, bin_deg, dpi=dpi)),
    ]
    for name, ok, draw in jobs:
        if not ok:
            log.warning("figure %s skipped: its table is empty (too few videos, regions or analysed contexts)", name)
            continue
        try:
            made[name] = str(draw(os.path.join(local, f"{name}.png")))
        except Exception:  # noqa: BLE001 - the result tables are committed; a failed drawing must not lose the run
            log.exception("figure %s could not be drawn; the result tables are complete", name)
    if local != out_dir:
        from pyarrow import fs as pafs

        dest, base = pafs.FileSystem.from_uri(out_dir)
        dest.create_dir(base, recursive=True)
        pafs.copy_files(local, base, destination_filesystem=dest)
        made = {k: join_uri(out_dir, os.path.basename(v)) for k, v in made.items()}
    return made


def new_analysis_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def run_analyze(spark, cfg: Config, store: TableStore, analysis_id: str | None = None,
                settings: AnalyzeSettings | None = None) -> AnalyzeReport:
    """Run one analysis from the annotation tables to the result tables and figures.

    Parameters
    ----------
    spark, cfg, store : the session, configuration and table store.
    analysis_id : id of the analysis (default: UTC timestamp + random suffix); must be new.
    settings : default :meth:`AnalyzeSettings.from_config` (``analyze:`` section).

    Returns
    -------
    AnalyzeReport
    """
    from pyspark.sql import functions as F

    started = time.time()
    settings = settings or AnalyzeSettings.from_config(cfg)
    analyses = store.table(ANALYSES)
    if analysis_id and analyses.exists() and analyses.read().filter(F.col("analysis_id") == analysis_id).limit(1) \
            .count():
        raise AnalyzeError(f"analysis {analysis_id!r} already exists; choose another id")
    analysis_id = analysis_id or new_analysis_id()
    report = AnalyzeReport(analysis_id, settings)

    def stage(name: str, t0: float) -> float:
        now = time.time()
        report.stage_seconds[name] = now - t0
        log.info("analyze %s: %s done in %.1fs", analysis_id, name, now - t0)
        return now

    t = time.time()
    inputs = Inputs.read(store)
    versions = report.input_versions = inputs.versions
    expr_version, ctx_version, taxonomy, expr_columns, expr_rows = resolve_inputs(inputs, settings)
    labels = taxonomy_labels(inputs, ctx_version, taxonomy)
    report.expression_model_version, report.context_model_version, report.taxonomy = expr_version, ctx_version, \
        taxonomy
    report.expressions, report.n_contexts, report.expression_rows = list(expr_columns), len(labels), expr_rows
    log.info("analyze %s: expressions %s (%d columns), contexts %s / %s (%d labels), tables %s", analysis_id,
             expr_version, len(expr_columns), ctx_version, taxonomy, len(labels), versions)
    prepared = prepare_input(inputs, expr_version, ctx_version, taxonomy, expr_columns, settings.cca_sample_seed,
                             broadcast=expr_rows <= settings.broadcast_max_rows)
    t = stage("inputs", t)

    m, cm, geobins = compute_sums(prepared, expr_columns, labels, settings)
    report.moments, report.cca_moments, report.geobins = m, cm, geobins
    report.videos_per_region = {r: int(n) for r, n in zip(REGION_IDS, m.n[:, 0]) if n > 0}
    if not report.videos_per_region:
        raise AnalyzeError("no video has expression scores, a context row and a region: nothing to analyse")
    t = stage("heavy_pass", t)

    frames = compute_results(m, cm, geobins, expr_columns, labels, settings)
    report.n_contexts_analysed = int(frames.analysed.sum())
    if report.n_contexts_analysed == 0:
        log.warning("no context occurred %d times (analyze.min_occurrences): correlation tables stay empty",
                    settings.min_occurrences)
    t = stage("statistics", t)

    for spec, pdf in ((CONTEXT_EXPRESSION_CORRELATIONS, frames.correlations), (REGION_SIMILARITY, frames.similarity),
                      (REGION_VS_WORLD, frames.world), (CCA_HELDOUT, frames.cca_heldout),
                      (CCA_TESTS, frames.cca_tests), (GEOBIN_VARIATES, frames.geobins)):
        table = store.table(spec).create_if_missing()
        report.commits[spec.name] = table.append(_to_spark(spark, spec, pdf, analysis_id))
    t = stage("write_tables", t)

    figures_dir = join_uri(cfg.data_root, settings.figures_dir, analysis_id)
    if settings.figures:
        report.figures = write_figures(frames, figures_dir, float(cfg.get("geo.bin_deg", 0.5)), settings.figure_dpi)
        t = stage("figures", t)

    report.seconds = time.time() - started
    row = pd.DataFrame([dict(
        started=pd.Timestamp(int(started * 1e6), unit="us", tz="UTC"),
        finished=pd.Timestamp.now(tz="UTC").floor("us"),
        run_seconds=report.seconds, expression_model_version=expr_version, context_model_version=ctx_version,
        taxonomy=taxonomy, n_videos=report.n_videos, n_contexts=len(labels),
        n_contexts_analysed=report.n_contexts_analysed, n_expressions=len(expr_columns),
        n_replicates=settings.replicates, parameters=json.dumps(dataclasses.asdict(settings), sort_keys=True),
        input_versions=json.dumps(versions, sort_keys=True),
        result_versions=json.dumps({k: c.version for k, c in report.commits.items()}, sort_keys=True),
        figures_dir=figures_dir if report.figures else None, cxatlas_version=__version__)])
    report.commits[ANALYSES.name] = analyses.create_if_missing().append(_to_spark(spark, ANALYSES, row, analysis_id))
    log.info("analysis %s finished in %.1fs", analysis_id, report.seconds)
    return report


# --------------------------------------------------------------------------------------------------------------------
# Simulation (thin wrapper for the CLI)
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class SimulateReport:
    out: str
    population_dir: str
    n_videos: int
    n_contexts: int
    seconds: float

    def summary(self) -> str:
        return (f"simulated {self.n_videos} videos x {self.n_contexts} contexts in {self.seconds:.1f}s -> {self.out} "
                f"(import it with `cxatlas import-annotations --input {self.out}`); population values in "
                f"{self.population_dir}")


def world_params_from_config(cfg: Config):
    """:func:`cxatlas.simulate.make_world_params` with the ``simulate:`` settings."""
    from cxatlas import simulate
    from cxatlas.taxonomies import published_data_dir

    s = cfg.section("simulate")
    data_dir = s.get("data_dir") or published_data_dir()
    lo, hi = s.get("prevalence_range", [0.002, 0.15])
    return simulate.make_world_params(
        int(s.get("experiment", 1)), data_dir=data_dir, regions_csv=cfg.path("regions.file"),
        regional_share=float(s.get("regional_share", 0.3)), seed=int(s.get("seed", 0)),
        n_contexts=s.get("n_contexts"), prevalence_range=(float(lo), float(hi)),
        prevalence_regional_sd=float(s.get("prevalence_regional_sd", 0.3)),
        effect_scale=float(s.get("effect_scale", 1.0)), region_weights=s.get("region_weights"))


def run_simulate(cfg: Config, n_videos: int, out: str) -> SimulateReport:
    """Write an ``n_videos`` simulated world in the import format to folder ``out`` (Parquet parts) and its exact
    population statistics to ``out/_population`` (Spark and the importer skip ``_``-prefixed entries)."""
    from cxatlas import simulate

    started = time.time()
    params = world_params_from_config(cfg)
    chunk = int(cfg.get("simulate.chunk_rows", 25_000))
    simulate.write_import_dataset(params, n_videos, out, chunk_rows=chunk)
    pop_dir = simulate.save_population(simulate.population_truth(params), Path(out) / "_population")
    return SimulateReport(str(out), str(pop_dir), n_videos, len(params.contexts), time.time() - started)
