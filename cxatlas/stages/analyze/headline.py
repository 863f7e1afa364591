"""The ``headline_numbers`` rows of an analysis: each a quantity of Cowen et al. (2021) computed the paper's way,
next to the paper's value for the same quantity (:mod:`cxatlas.core.paper_values`).

Why a module of its own: what matters here is *which* summary is computed and what it is paired with. Each row
builder quotes the sentence that defines its number; the algebra underneath (region similarity, region vs world,
bootstrap) lives in :mod:`cxatlas.stats`. Every value is a point estimate on replicate 0 with its bootstrap SE over
replicates 1..B (:func:`cxatlas.stats.bootstrap_summary`).

Fewer than 12 regions: rows are computed over the regions present, a row that names an absent region is null with
the reason in ``detail``, and :func:`attach_paper_values` pairs no paper value with a number from fewer regions.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from cxatlas.core.paper_values import ExperimentMatch, paper_value
from cxatlas.core.regions import REGION_IDS
from cxatlas.stats import bootstrap_summary, cells_same_sign_everywhere, contexts_positive_everywhere

__all__ = ["HEADLINE_COLUMNS", "ALL_EXPRESSIONS", "row", "sign_rows", "similarity_rows", "world_rows",
           "named_region_rows", "attach_paper_values"]

HEADLINE_COLUMNS = ["name", "value", "se", "detail"]
ALL_EXPRESSIONS = "all"  # the sign_agreement row over every expression

#: The pairs the paper names as shared variances (r2 of the pair's similarity), and the regions it names against the
#: world average ("Cross-regional expression correlations" and the Discussion).
NAMED_PAIRS: tuple[tuple[str, str], ...] = (
    ("africa", "middle_east"), ("middle_east", "indian_subcontinent"), ("africa", "indian_subcontinent"),
    ("middle_east", "us_canada"), ("indian_subcontinent", "us_canada"))
NAMED_WORLD_REGIONS: tuple[str, ...] = ("africa", "indian_subcontinent")
#: Experiment 2's outlier region: "r >= 0.490 (s.e., 0.014) for other regions" excludes it.
OUTLIER_REGION = "indian_subcontinent"


def row(name: str, value: float, se: float = np.nan, detail: str = "") -> dict:
    """One headline row."""
    return dict(name=name, value=float(value), se=float(se), detail=detail)


def _summary(values: np.ndarray) -> tuple[float, float]:
    point, se = bootstrap_summary(np.asarray(values, dtype=np.float64))
    return float(point), float(se)


def sign_rows(pcp: np.ndarray, expr_columns: Sequence[str]) -> tuple[list[dict], list[dict]]:
    """``sign_agreement`` rows (contexts positive everywhere, per expression and ``all``) and two headline rows.

    ``contexts_positive_everywhere``: Fig. 2a legend, "For about half (49.6%) of the contexts ... we uncovered
    correlations with specific expressions that were positive in all 12 regions" (see
    :func:`cxatlas.stats.contexts_positive_everywhere`). ``cells_same_sign_everywhere`` is the share of context x
    expression cells of one sign in every region, a different quantity with no published counterpart.

    Parameters
    ----------
    pcp : ndarray, shape (B1, R, K, E): per replicate, the present regions' correlations of the analysed contexts.
    """
    overall, per_expr, counted = contexts_positive_everywhere(pcp)
    o_point, o_se = _summary(overall)
    e_point, e_se = bootstrap_summary(per_expr)
    finite = np.all(np.isfinite(pcp[0]), axis=0).sum(axis=0)            # (E,) contexts counted per expression
    rows = [dict(expression=ALL_EXPRESSIONS, share=o_point, se=o_se, n_contexts=int(counted[0]))]
    rows += [dict(expression=c, share=e_point[i], se=e_se[i], n_contexts=int(finite[i]))
             for i, c in enumerate(expr_columns)]
    cells, _, _ = cells_same_sign_everywhere(pcp)
    c_point, c_se = _summary(cells)
    R = pcp.shape[1]
    return rows, [
        row("contexts_positive_everywhere", o_point, o_se,
            f"share of {int(counted[0])} contexts with at least one expression whose correlation is > 0 in all "
            f"{R} regions (Fig. 2's red rectangles)"),
        row("cells_same_sign_everywhere", c_point, c_se,
            f"share of context x expression cells of one sign (either) in all {R} regions; not a number of the "
            "paper"),
    ]


def _pairs(sims: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The upper-triangle pair similarities per replicate (B1, P) and the pairs' region indices."""
    iu = np.triu_indices(sims.shape[1], 1)
    return sims[:, iu[0], iu[1]], iu[0], iu[1]


def similarity_rows(sims: np.ndarray, names: Sequence[str]) -> list[dict]:
    """Minimum, its square root, maximum and means of the pairwise region similarities (Fig. 3a).

    Main text: "correlations between world regions in context-expression association (Fig. 3a) ranged from 0.703
    (s.e., 0.008) between the Indian subcontinent and East Asia to 0.971 (s.e., 0.005) between USA and Canada ...
    and western Europe, with a mean of 0.838. The square root of the minimum correlation between two regions (0.703)
    approximates their correlation with universal associations ... This yields a correlation of 0.84, which
    indicates that all regions share 70% (s.e., 0.8%) of their variance with universal context-expression
    associations". So the "70%" is the minimum similarity itself (0.84 squared), and 0.84 its square root.

    Readings taken: the minimum and maximum are those of replicate 0, and their SE is the bootstrap SE of *that
    pair's* similarity (the paper names the pair with its s.e.); the mean is the arithmetic mean over the pairs (the
    paper does not say Fisher; the Fisher-z mean is the separate row ``mean_region_similarity_fisher``). Experiment
    2's "r >= 0.490 (s.e., 0.014) for other regions" is the minimum over the pairs without the Indian subcontinent.

    Parameters
    ----------
    sims : ndarray, shape (B1, Rp, Rp): region similarity per replicate, present regions only.
    names : the Rp present region ids.
    """
    vals, ia, ib = _pairs(sims)
    if vals.shape[1] == 0 or not np.isfinite(vals[0]).any():
        return []
    rep0 = np.where(np.isfinite(vals[0]), vals[0], np.nan)
    lo, hi = int(np.nanargmin(rep0)), int(np.nanargmax(rep0))
    label = lambda p: f"{names[ia[p]]} / {names[ib[p]]}"  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(vals, axis=1)
        fisher = np.tanh(np.nanmean(np.arctanh(np.clip(vals, -1 + 1e-12, 1 - 1e-12)), axis=1))
        root = np.sqrt(np.where(vals[:, lo] >= 0, vals[:, lo], np.nan))
    P = vals.shape[1]
    out = [
        row("min_region_similarity", *_summary(vals[:, lo]),
            f"{label(lo)}: the lowest of {P} pair similarities; SE of this pair's similarity; the paper's 70% "
            "shared with universal associations"),
        row("sqrt_min_region_similarity", *_summary(root),
            f"sqrt of the similarity of {label(lo)}: the correlation of each region with universal associations"),
        row("max_region_similarity", *_summary(vals[:, hi]), f"{label(hi)}: the highest of {P} pair similarities"),
        row("mean_region_similarity", *_summary(mean), f"arithmetic mean over {P} region pairs"),
        row("mean_region_similarity_fisher", *_summary(fisher),
            f"Fisher-z mean over {P} region pairs (tanh of the mean arctanh); not a number of the paper"),
    ]
    keep = np.array([OUTLIER_REGION not in (names[a], names[b]) for a, b in zip(ia, ib)])
    if keep.any():
        sub = np.where(keep, rep0, np.nan)
        if np.isfinite(sub).any():
            k = int(np.nanargmin(sub))
            out.append(row("min_region_similarity_without_indian_subcontinent", *_summary(vals[:, k]),
                           f"{label(k)}: the lowest of {int(keep.sum())} pairs without the Indian subcontinent"))
    return out


def world_rows(r2: np.ndarray, best_r2: np.ndarray, names: Sequence[str]) -> list[dict]:
    """Region vs world average (Fig. 3b): minimum, mean, mean best match, and the region closest to the world.

    Main text: "we computed the shared variance between context-expression correlations in each region and the
    average from the remaining regions (Fig. 3b). A minimum of 70.1% (s.e., 0.6%) of the variance was shared between
    an individual region (the Indian subcontinent) and the world average ... On average, 82.5% was shared. The
    variance that each region shared with the region with which it was most similar was only slightly higher, on
    average, than the variance each region shared with the world average (84.8% compared with 82.5%)". Discussion:
    "one would expect the world average to be most strongly correlated with Western regions, but it is most
    correlated with maritime Southeast Asia".

    Parameters
    ----------
    r2 : ndarray, shape (B1, Rp): each region's r2 with the average of the others, per replicate.
    best_r2 : ndarray, shape (B1, Rp): its r2 with its most similar region, per replicate.
    """
    rep0 = r2[0]
    if not np.isfinite(rep0).any():
        return []
    lo, hi = int(np.nanargmin(rep0)), int(np.nanargmax(rep0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, mean_best = np.nanmean(r2, axis=1), np.nanmean(best_r2, axis=1)
    n = int(np.isfinite(rep0).sum())
    return [
        row("min_region_vs_world_r2", *_summary(r2[:, lo]),
            f"{names[lo]}: the lowest of {n} regions' r2 with the average of the remaining regions"),
        row("mean_region_vs_world_r2", *_summary(mean), f"arithmetic mean over {n} regions"),
        row("mean_best_match_r2", *_summary(mean_best),
            f"mean over {n} regions of the r2 with the region each is most similar to"),
        row("world_average_closest_region", *_summary(r2[:, hi]),
            f"{names[hi]}: the region whose r2 with the world average is highest (value: that r2)"),
    ]


def named_region_rows(sims: np.ndarray, r2: np.ndarray, names: Sequence[str]) -> list[dict]:
    """The shared variances the paper names for particular regions.

    Main text: "Africa was most similar in its context-expression associations to the Middle East (r2 = 79.8%,
    s.e., 1.6%) and the Middle East to the Indian subcontinent (85.0%; s.e., 0.4%). However, Africa and the Indian
    subcontinent were less similar to each other (67.3%; s.e., 2.1%) than to the world average (82.1% and 70.1%;
    s.e., 1.3% and 0.8%, respectively)." Discussion: "the Middle East and Indian subcontinent shared 85.0% (s.e.,
    0.8%) of their variance ... but only 63.9% (s.e., 1.2%) and 53.8% (s.e., 0.9%), respectively, with the
    USA/Canada." A pair's shared variance is the square of its similarity; a region's is its r2 with the world
    average. A row naming a region absent from the analysis is null, with the reason in ``detail``.
    """
    idx = {n: i for i, n in enumerate(names)}
    out = []
    for a, b in NAMED_PAIRS:
        name = f"pair_r2_{a}_{b}"
        missing = [x for x in (a, b) if x not in idx]
        if missing:
            out.append(row(name, np.nan, detail=f"not computed: region {', '.join(missing)} not in this analysis"))
        else:
            out.append(row(name, *_summary(sims[:, idx[a], idx[b]] ** 2),
                           f"squared similarity of {a} and {b} (shared variance)"))
    for region in NAMED_WORLD_REGIONS:
        name = f"world_r2_{region}"
        if region not in idx:
            out.append(row(name, np.nan, detail=f"not computed: region {region} not in this analysis"))
        else:
            out.append(row(name, *_summary(r2[:, idx[region]]),
                           f"r2 of {region} with the average of the remaining regions"))
    return out


def attach_paper_values(headline: pd.DataFrame, match: ExperimentMatch, regions_present: Sequence[str]
                        ) -> pd.DataFrame:
    """``headline`` with ``paper_value``, ``paper_se`` and ``paper_source`` beside each row.

    The values are those of the experiment the analysis is compared with (``match``). They are paired only when
    every one of the 12 regions is present: a number from fewer regions is never labelled as the paper's (its
    ``paper_source`` says why the value is missing).
    """
    out = headline.copy()
    complete = set(REGION_IDS) <= set(regions_present)
    found = [paper_value(match.experiment, n) for n in out["name"]]
    out["paper_value"] = [float(p.value) if p and complete else np.nan for p in found]
    out["paper_se"] = [float(p.se) if p and p.se is not None and complete else np.nan for p in found]
    missing = sorted(set(REGION_IDS) - set(regions_present))
    note = f" (not paired: {len(missing)} of the paper's 12 regions absent)" if missing else ""
    out["paper_source"] = [(f"experiment {match.experiment}, {p.source}{note}" if p else None) for p in found]
    return out
