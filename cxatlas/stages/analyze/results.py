"""Driver algebra and writing: combined sums -> result frames (pure numpy/pandas) -> result tables and figures."""
from __future__ import annotations

import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from cxatlas.core.regions import REGION_IDS
from cxatlas.core.schemas import TableSpec, spark_schema
from cxatlas.core.settings import AnalyzeSettings
from cxatlas.stages.analyze.settings import BALANCED_FIT, LORO
from cxatlas.core.config import join_uri
from cxatlas.stats import (CcaMoments, Moments, analysed_contexts, balanced_covariance, bartlett_test, bh_qvalues,
                           bootstrap_summary, cca_fit, expression_variates, fisher_mean, fit_on_one_region,
                           leave_one_region_out, partial_correlations, prevalence, region_similarity_batched,
                           region_vs_world_batched, signed_rank_tests)
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
        equal_mass = settings.cca.balance == "reweight"
        sample_regions = np.flatnonzero(cm_a.n > 0)
        if sample_regions.size >= 2:
            loro = leave_one_region_out(cm_a, settings.cca.ridge, equal_mass)
            heldout_rows += _heldout_rows(LORO, loro, region_ids)
            test_rows += _wilcoxon_rows(LORO, loro)
        fit_idx = region_ids.index(settings.cca.fit_region)
        if cm_a.n[fit_idx] > 0 and sample_regions.size >= 2:
            variant = f"fit_on_{settings.cca.fit_region}"
            one = fit_on_one_region(cm_a, fit_idx, settings.cca.ridge)
            heldout_rows += _heldout_rows(variant, one, region_ids)
            test_rows += _wilcoxon_rows(variant, one)
        if sample_regions.size >= 1:
            blocks = balanced_covariance(cm_a, sample_regions, equal_mass)
            fit = cca_fit(blocks.cov_xx, blocks.cov_cc, blocks.cov_xc, settings.cca.ridge)
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
def _to_spark(spark, spec: TableSpec, pdf: pd.DataFrame, analysis_id: str):
    import pyarrow as pa

    pdf = pdf.copy()
    pdf.insert(0, "analysis_id", analysis_id)
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
