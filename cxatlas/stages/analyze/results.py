"""Driver algebra and writing: combined sums -> result frames (pure numpy/pandas) -> result tables and figures."""
from __future__ import annotations

import logging
import os
import tempfile
import warnings
import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from cxatlas.core.regions import REGION_IDS
from cxatlas.core.schemas import TableSpec, spark_schema
from cxatlas.core.settings import AnalyzeSettings
from cxatlas.stages.analyze.settings import BALANCED_FIT, LORO
from cxatlas.core.config import join_uri
from cxatlas.core.paper_values import ExperimentMatch, experiment_for_labels
from cxatlas.stages.analyze import headline as hl
from cxatlas.stats import (CcaMoments, Moments, analysed_contexts, balanced_covariance, bartlett_test, bh_qvalues,
                           bootstrap_summary, cca_fit, context_expression_correlations, context_variates,
                           dims_positive_everywhere, expression_variates, fisher_mean, fit_on_one_region,
                           geobin_variance_share, leave_one_region_out, prevalence, region_similarity_batched,
                           region_vs_world_batched, signed_rank_tests, structure_correlations, tenfold_prediction_r,
                           variate_tracking)
from cxatlas.udfs.moments import GeobinSums

log = logging.getLogger(__name__)


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
    sign_agreement: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    cca_loadings: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    headline: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    experiment: ExperimentMatch | None = None  # which of the paper's experiments the headline is paired with


ALL_EXPRESSIONS = hl.ALL_EXPRESSIONS


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
    pc = context_expression_correlations(m, settings.correlation)[:, :, ka]   # (R, B1, Ka, E)
    prev = prevalence(m)[:, :, ka]                           # (R, B1, Ka): share of videos where it occurred
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
    headline = [hl.row("n_videos", float(n_videos.sum())), hl.row("n_regions", float(Rp)),
                hl.row("n_contexts", float(K)), hl.row("n_contexts_analysed", float(Ka))]

    sim_rows, world_rows, sign_rows = [], [], []
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
            j0 = best[0, i]
            # SE of the squared similarity with the replicate-0 best match; how often a resample picks the same one.
            bm_se = float(bootstrap_summary(sims[:, i, j0] ** 2)[1]) if j0 >= 0 else np.nan
            world_rows.append(dict(region=a, r2=w_point[i], se=w_se[i],
                                   best_match_region=names[j0] if j0 >= 0 else None,
                                   best_match_r2=best_r2[0, i], best_match_se=bm_se,
                                   best_match_agreement=float(np.mean(best[1:, i] == j0)) if B1 > 1 else np.nan))
        sign_rows, sign_head = hl.sign_rows(pcp, expr_columns)
        headline += sign_head
        headline += hl.similarity_rows(sims, names)
        headline += hl.world_rows(r2, best_r2, names)
        headline += hl.named_region_rows(sims, r2, names)

    heldout_rows, test_rows, loading_rows = [], [], []
    geo = pd.DataFrame(columns=GEOBIN_COLUMNS)
    if Ka >= 1 and Rp >= 1:
        cm_a = cm.select_contexts(keep)
        if cm_a.fold_n.sum() > 0:
            pred_r, pred_n = tenfold_prediction_r(cm_a)
            headline.append(hl.row(
                "context_prediction_r", pred_r,
                detail=f"tenfold OLS of the {Ka} analysed contexts on the {E} expressions over {pred_n} videos (the "
                       "first analyze.prediction_per_region of each region's balanced sample); out-of-fold "
                       "predictions and annotations centred per context, r pooled over (video, context) pairs"))
        equal_mass = settings.cca.balance == "reweight"
        sample_regions = np.flatnonzero(cm_a.n > 0)
        if sample_regions.size >= 2:
            loro = leave_one_region_out(cm_a, settings.cca.ridge, equal_mass)
            heldout_rows += _heldout_rows(LORO, loro, region_ids)
            test_rows += _wilcoxon_rows(LORO, loro)
            headline += _dims_headline(LORO, loro, test_rows[-loro.shape[1]:])
        fit_idx = region_ids.index(settings.cca.fit_region)
        if cm_a.n[fit_idx] > 0 and sample_regions.size >= 2:
            variant = f"fit_on_{settings.cca.fit_region}"
            one, one_fit = fit_on_one_region(cm_a, fit_idx, settings.cca.ridge,
                                             all_videos=settings.cca.fit_region_sample == "all", return_fit=True)
            heldout_rows += _heldout_rows(variant, one, region_ids)
            test_rows += _wilcoxon_rows(variant, one)
            headline += _dims_headline(variant, one, test_rows[-one.shape[1]:])
            src = cm_a.all_videos() if settings.cca.fit_region_sample == "all" and cm_a.n_all[fit_idx] > 0 else cm_a
            headline.append(hl.row(f"{variant}_n_videos", float(src.n[fit_idx]),
                                      detail="videos the one-region CCA was fitted on"))
            loading_rows += _loading_rows(variant, one_fit, balanced_covariance(src, [fit_idx]), expr_columns,
                                          labels_a)
        if sample_regions.size >= 1:
            blocks = balanced_covariance(cm_a, sample_regions, equal_mass)
            fit = cca_fit(blocks.cov_xx, blocks.cov_cc, blocks.cov_xc, settings.cca.ridge)
            lawley = settings.cca.bartlett == "lawley"
            chi2, df, p = bartlett_test(fit.rho, blocks.n, E, Ka, lawley=lawley)
            q = bh_qvalues(p) if settings.cca.bartlett_fdr else np.full(p.shape, np.nan)
            test = "lawley_chi2" if lawley else "bartlett_chi2"
            test_rows += [dict(variant=BALANCED_FIT, dimension=d + 1, test=test, statistic=chi2[d],
                               df=df[d], p=p[d], q=q[d], rho=fit.rho[d]) for d in range(fit.rho.size)]
            if fit.rho.size:
                headline.append(hl.row(f"{test}_last", float(chi2[-1]),
                                          detail=f"dimension {fit.rho.size}, df {df[-1]:.0f} (p in cca_tests)"))
            loading_rows += _loading_rows(BALANCED_FIT, fit, blocks, expr_columns, labels_a)
            geo, geo_head = _geobin_frame(geobins, fit, blocks, keep, settings)
            headline += geo_head

    match = experiment_for_labels(labels)
    headline_frame = hl.attach_paper_values(pd.DataFrame(headline, columns=hl.HEADLINE_COLUMNS), match,
                                            [region_ids[i] for i in present])

    return ResultFrames(
        correlations=corr, similarity=pd.DataFrame(sim_rows, columns=["region_a", "region_b", "r", "se"]),
        world=pd.DataFrame(world_rows, columns=["region", "r2", "se", "best_match_region", "best_match_r2",
                                                "best_match_se", "best_match_agreement"]),
        cca_heldout=pd.DataFrame(heldout_rows, columns=["variant", "dimension", "heldout_region", "r"]),
        cca_tests=pd.DataFrame(test_rows, columns=["variant", "dimension", "test", "statistic", "df", "p", "q",
                                                   "rho"]),
        geobins=geo, analysed=keep,
        figure_contexts=_figure_contexts(r_point[present], labels_a, settings),
        sign_agreement=pd.DataFrame(sign_rows, columns=["expression", "share", "se", "n_contexts"]),
        cca_loadings=pd.DataFrame(loading_rows, columns=["variant", "dimension", "side", "feature", "weight",
                                                         "correlation"]),
        headline=headline_frame, experiment=match,
    )


GEOBIN_COLUMNS = ["lat_bin", "lon_bin", "n_videos", "variate_1", "variate_2", "variate_3", "context_variate_1",
                  "context_variate_2", "context_variate_3"]




def _dims_headline(variant: str, heldout: np.ndarray, wilcoxon_rows: list[dict]) -> list[dict]:
    count, _ = dims_positive_everywhere(heldout)
    q = np.array([r["q"] for r in wilcoxon_rows], dtype=float)
    D = heldout.shape[1]
    return [hl.row(f"{variant}_dims_positive_everywhere", count,
                      detail=f"of {D} canonical dimensions, > 0 in every held-out region"),
            hl.row(f"{variant}_dims_significant", float(np.sum(q < 0.05)),
                      detail=f"of {D}: one-sided Wilcoxon across held-out regions, BH q < 0.05")]


def _loading_rows(variant: str, fit, blocks, expr_columns: Sequence[str], labels_a: Sequence[str]) -> list[dict]:
    """Canonical weights and variate-feature correlations (structure coefficients) of both sides of a fit."""
    rows = []
    for side, W, cov, names in (("expression", fit.A, blocks.cov_xx, expr_columns),
                                ("context", fit.B, blocks.cov_cc, labels_a)):
        corr = structure_correlations(W, cov)
        for d in range(W.shape[1]):
            rows += [dict(variant=variant, dimension=d + 1, side=side, feature=names[i], weight=W[i, d],
                          correlation=corr[i, d]) for i in range(W.shape[0])]
    return rows


def _geobin_frame(geobins: GeobinSums, fit, blocks, keep: np.ndarray,
                  settings: AnalyzeSettings) -> tuple[pd.DataFrame, list[dict]]:
    """Per 0.5-degree bin, the mean expression-side and context-side scores on the first three canonical variates
    of the balanced fit (Fig. 4), and the share of expression variance between bins."""
    ok = geobins.n >= max(1, settings.geobin_min_videos)
    head: list[dict] = []
    if geobins.n.size:
        share, _ = geobin_variance_share(geobins.n, geobins.sx, geobins.sxx)
        head.append(hl.row("geobin_expression_variance_share", share,
                              detail=f"{geobins.n.size} bins, {int(geobins.n.sum())} videos with coordinates"))
        adj, _ = geobin_variance_share(geobins.n, geobins.sx, geobins.sxx, adjusted=True)
        head.append(hl.row("geobin_expression_variance_share_adjusted", adj,
                              detail="epsilon squared: the raw share minus what noise alone gives with this many bins"))
    if not ok.any():
        return pd.DataFrame(columns=GEOBIN_COLUMNS), head
    n = geobins.n[ok, None]
    v = expression_variates(fit, geobins.sx[ok] / n, blocks.mean_x, dims=3)
    v = np.pad(v, ((0, 0), (0, 3 - v.shape[1])), constant_values=np.nan)
    if geobins.sc.shape[1] == keep.size:
        c = context_variates(fit, geobins.sc[ok][:, keep] / n, blocks.mean_c, dims=3)
        c = np.pad(c, ((0, 0), (0, 3 - c.shape[1])), constant_values=np.nan)
    else:  # sums without the context side (older partials)
        c = np.full((int(ok.sum()), 3), np.nan)
    if np.isfinite(c).any():
        r, se = variate_tracking(v, c, settings.replicates, settings.seed)
        head += [hl.row(f"geobin_variate_tracking_{d + 1}", r[d], se[d],
                        f"r across {int(ok.sum())} bins between the expression-side and context-side scores of "
                        "canonical variate " f"{d + 1} (how closely expression variation tracks context variation, "
                        "Fig. 4); SE resamples bins") for d in range(3) if np.isfinite(r[d])]
    geo = pd.DataFrame({"lat_bin": geobins.lat_bin[ok], "lon_bin": geobins.lon_bin[ok],
                        "n_videos": geobins.n[ok].astype(np.int64), "variate_1": v[:, 0], "variate_2": v[:, 1],
                        "variate_3": v[:, 2], "context_variate_1": c[:, 0], "context_variate_2": c[:, 1],
                        "context_variate_3": c[:, 2]})
    return geo, head


def _figure_contexts(r_point: np.ndarray, labels_a: list[str], settings: AnalyzeSettings) -> list[str]:
    """Contexts for the Fig. 2 heatmap: the configured ones that were analysed, else the ``figure_n_contexts`` with
    the strongest association worldwide (largest |Fisher-mean over regions of r| over expressions)."""
    if settings.figures.contexts:
        wanted = [c for c in settings.figures.contexts if c in set(labels_a)]
        skipped = [c for c in settings.figures.contexts if c not in set(labels_a)]
        if skipped:
            log.warning("figure contexts not analysed (too rare or not in the taxonomy): %s", skipped)
        return wanted
    if not labels_a or r_point.size == 0:
        return []
    with warnings.catch_warnings():  # a context with no finite cell (tiny data) ranks last, not with a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        strength = np.nan_to_num(np.nanmax(np.abs(fisher_mean(r_point, axis=0)), axis=1)
                                 if np.isfinite(r_point).any() else np.zeros(len(labels_a)), nan=-1.0)
    order = np.argsort(-strength, kind="stable")[: settings.figures.n_contexts]
    return [labels_a[i] for i in order]


# --------------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------------
def _to_spark(spark, spec: TableSpec, pdf: pd.DataFrame, analysis_id: str, id_column: str = "analysis_id"):
    """``pdf`` with ``id_column = analysis_id`` in front, typed by ``spec``'s schema, as a Spark DataFrame."""
    import pyarrow as pa

    pdf = pdf.copy()
    pdf.insert(0, id_column, analysis_id)
    table = pa.Table.from_pandas(pdf[spec.schema.names], schema=spec.schema, preserve_index=False)
    return spark.createDataFrame(table.to_pandas(), schema=spark_schema(spec.schema))


def write_figures(frames: ResultFrames, out_dir: str, bin_deg: float, dpi: int) -> dict[str, str]:
    """The paper's figures as PNG under ``out_dir`` (a local path or a URI: drawn locally, then copied)."""
    from cxatlas.stages.analyze import figures

    local = out_dir if "://" not in out_dir else tempfile.mkdtemp(prefix="cxatlas-figures-")
    made: dict[str, str] = {}
    jobs = [
        ("fig2_context_expression_heatmap", not frames.correlations.empty and bool(frames.figure_contexts),
         lambda p: figures.heatmap_contexts(frames.correlations, frames.figure_contexts, p, dpi=dpi)),
        ("fig2_zscored_with_marginal_means", not frames.correlations.empty and bool(frames.figure_contexts),
         lambda p: figures.heatmap_contexts(frames.correlations, frames.figure_contexts, p, dpi=dpi,
                                            zscore_rows=True, marginals=True,
                                            title="Context-expression correlations, z-scored within each context")),
        ("fig3a_region_similarity", not frames.similarity.empty,
         lambda p: figures.region_similarity_matrix(frames.similarity, p, dpi=dpi)),
        ("fig3b_region_vs_world", not frames.world.empty,
         lambda p: figures.region_vs_world_bars(frames.world, p, dpi=dpi)),
        ("fig3c_heldout_canonical_correlations", not frames.cca_heldout.empty,
         lambda p: figures.heldout_canonical_correlations(frames.cca_heldout, p, dpi=dpi)),
        ("fig4_geobin_variates", not frames.geobins.empty and frames.geobins["variate_3"].notna().any(),
         lambda p: figures.geobin_map(frames.geobins, p, bin_deg, dpi=dpi,
                                      title="Expression side: canonical variates 1-3 as colour, per geographic bin")),
        ("fig4_geobin_context_variates",
         not frames.geobins.empty and frames.geobins["context_variate_3"].notna().any(),
         lambda p: figures.geobin_map(frames.geobins, p, bin_deg, dpi=dpi,
                                      variates=("context_variate_1", "context_variate_2", "context_variate_3"),
                                      title="Context side: canonical variates 1-3 as colour, per geographic bin")),
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
