"""The report's privacy/utility section: what differential privacy cost each release of an analysis.

For every release of the analysis whose correlation kind matches the analysis' own (``analyze.correlation``), the
released correlations are put beside the exact ones of ``context_expression_correlations`` (the analysis' point
estimates): mean and largest absolute error over the cells both hold, one scatter per epsilon. Exact values appear
only in this internal report, never in a release's ``--out`` folder.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np
import pandas as pd

from cxatlas.core.release_schemas import RELEASED_CORRELATIONS, RELEASES
from cxatlas.core.result_schemas import CONTEXT_EXPRESSION_CORRELATIONS

SECTION_ID = "privacy-utility"


def utility_table(releases: pd.DataFrame, released: pd.DataFrame, exact: pd.DataFrame) -> pd.DataFrame:
    """One row per release: epsilon, delta, cells compared, mean and max absolute error, suppressed share.

    ``releases``: rows of ``releases``; ``released``: ``released_correlations`` rows of those releases; ``exact``:
    the analysis' ``context_expression_correlations`` (region, context, expression, r).
    """
    keys = ["region", "context", "expression"]
    ex = exact[keys + ["r"]].rename(columns={"r": "r_exact"})
    rows = []
    for _, rel in releases.sort_values(["epsilon", "finished"]).iterrows():
        mine = released[released["release_id"] == rel["release_id"]]
        both = mine.merge(ex, on=keys)
        ok = both["r"].notna() & np.isfinite(both["r_exact"].astype(float))
        err = (both.loc[ok, "r"] - both.loc[ok, "r_exact"]).abs()
        sd = json.loads(rel["noise_scale"] or "{}")
        rows.append(dict(release_id=rel["release_id"], epsilon=float(rel["epsilon"]), delta=float(rel["delta"]),
                         correlation=rel["correlation"], cells_compared=int(ok.sum()),
                         mae=float(err.mean()) if len(err) else np.nan,
                         max_abs_error=float(err.max()) if len(err) else np.nan,
                         suppressed_share=float(mine["suppressed"].mean()) if len(mine) else np.nan,
                         noise_sd_sxc=float(sd.get("sxc", np.nan))))
    return pd.DataFrame(rows)


def scatter(released: pd.DataFrame, exact: pd.DataFrame, releases: pd.DataFrame, path: str, dpi: int = 80) -> str:
    """Released vs exact correlation, one panel per epsilon (the first release of each), the diagonal drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["region", "context", "expression"]
    firsts = releases.sort_values("finished").drop_duplicates("epsilon").sort_values("epsilon")
    n = max(len(firsts), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False)
    for ax, (_, rel) in zip(axes[0], firsts.iterrows()):
        both = released[released["release_id"] == rel["release_id"]].merge(
            exact[keys + ["r"]].rename(columns={"r": "r_exact"}), on=keys)
        both = both[both["r"].notna() & np.isfinite(both["r_exact"].astype(float))]
        ax.scatter(both["r_exact"], both["r"], s=3, alpha=0.4)
        lim = max(0.05, float(np.nanmax(np.abs(both[["r", "r_exact"]].to_numpy()))) if len(both) else 0.05)
        ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8)
        mae = (both["r"] - both["r_exact"]).abs().mean() if len(both) else np.nan
        ax.set_title(f"epsilon {rel['epsilon']:g}: MAE {mae:.3g}", fontsize=9)
        ax.set_xlabel("exact r")
        ax.set_ylabel("released r")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def report_sections(spark, cfg, store, analysis_row: Mapping[str, Any]) -> list:
    """The section for :mod:`cxatlas.stages.report` (nothing when the analysis has no release)."""
    from pyspark.sql import functions as F

    from cxatlas.stages.report import ReportSection, ReportTable

    aid = analysis_row["analysis_id"]
    rel_t, cor_t = store.table(RELEASES), store.table(RELEASED_CORRELATIONS)
    if not rel_t.exists() or not cor_t.exists():
        return []
    releases = rel_t.read().filter(F.col("analysis_id") == aid).toPandas()
    if releases.empty:
        return []
    kind = json.loads(analysis_row.get("parameters") or "{}").get("correlation", "partial")
    comparable = releases[releases["correlation"] == kind]
    paragraphs = [
        "Differentially private releases of this analysis (cxatlas release): each region's sums were perturbed by "
        "OpenDP's Gaussian mechanism (privacy unit: one video) and the correlations computed from the noisy sums. "
        "Below, the released correlations beside this analysis' exact ones: mean absolute error (MAE) and the "
        "largest error over the cells both hold (suppressed contexts left out), and one scatter per epsilon.",
    ]
    others = releases[releases["correlation"] != kind]
    if not others.empty:
        paragraphs.append(f"{len(others)} release(s) of {', '.join(sorted(set(others['correlation'])))} "
                          f"correlations are not compared (this analysis holds {kind} correlations).")
    if comparable.empty:
        return [ReportSection(SECTION_ID, "Privacy and utility of the releases", paragraphs)]
    ids = list(comparable["release_id"])
    released = cor_t.read().filter(F.col("release_id").isin(ids)).select(
        "release_id", "region", "context", "expression", "r", "suppressed").toPandas()
    exact = store.table(CONTEXT_EXPRESSION_CORRELATIONS).read().filter(F.col("analysis_id") == aid).select(
        "region", "context", "expression", "r").toPandas()
    table = utility_table(comparable, released, exact)
    png = os.path.join(cfg.data_root, cfg.settings.analyze.report_dir, f"{aid}-release-utility.png")
    figures = {"release_utility_scatter": scatter(released, exact, comparable, png)}
    return [ReportSection(SECTION_ID, "Privacy and utility of the releases", paragraphs,
                          [ReportTable("Released vs exact correlations, per release", table)], figures)]
