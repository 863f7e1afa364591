"""The paper's summary numbers, computed from the per-region matrices (pure numpy, vectorised over replicates).

Cowen et al. (2021), Nature 589:251, main text and Methods, summarise the per-region context-expression
correlations and the canonical correlation analysis with a few headline numbers; each function here computes one of
them for every bootstrap replicate at once (leading axis B1), so :func:`cxatlas.stats.bootstrap.bootstrap_summary`
gives its standard error:

* :func:`contexts_positive_everywhere`: the share of contexts with some expression whose correlation is positive
  in every region (49.6% in experiment 1, 33.5% in experiment 2), and per expression;
* :func:`cells_same_sign_everywhere`: the share of context x expression cells of one sign in every region (no
  published counterpart);
* :func:`variate_tracking`: how closely the geobin map of each expression variate tracks its context variate;
* :func:`dims_positive_everywhere`: how many canonical dimensions correlate positively in every held-out region
  (16 of 16);
* :func:`structure_correlations`: correlations between each canonical variate and each input variable (the
  loadings of Extended Data Fig. 3);
* :func:`geobin_variance_share`: the share of expression variance explained by 0.5-degree geographic bins (about
  2%).
"""
from __future__ import annotations

import numpy as np

__all__ = ["contexts_positive_everywhere", "cells_same_sign_everywhere", "variate_tracking", "dims_positive_everywhere",
           "structure_correlations", "geobin_variance_share"]


def contexts_positive_everywhere(pcorr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Share of contexts with at least one expression whose correlation is positive in every region.

    Cowen et al. (2021), Fig. 2a legend: "For about half (49.6%) of the contexts, including many shown here, we
    uncovered correlations with specific expressions that were positive in all 12 regions, as represented by the red
    rectangles" (Fig. 2b: "For about a third (33.5%) of contexts ..."). The unit counted is the *context*: it counts
    when any one of its expression correlations is > 0 in every region. (Counting context x expression cells of
    either common sign is another quantity: about a fifth of this one on the authors' released correlations.)

    A context is counted (in the denominator) when at least one of its expressions has a finite correlation in every
    region; per expression, when that cell is finite in every region.

    Parameters
    ----------
    pcorr : ndarray, shape (B1, R, K, E)

    Returns
    -------
    overall : ndarray, shape (B1,)
        Contexts positive everywhere with some expression / counted contexts (NaN if none counted).
    per_expression : ndarray, shape (B1, E)
        Per expression, the share of counted contexts whose correlation with it is > 0 in every region (the red
        rectangles of that expression's column).
    counted : ndarray of int, shape (B1,)
        Contexts counted overall.
    """
    pcorr, finite = _finite_in_every_region(pcorr)
    with np.errstate(invalid="ignore"):
        positive = finite & np.all(pcorr > 0, axis=1)                   # (B1, K, E): the red rectangles
    counted_ctx = finite.any(axis=2)                                     # (B1, K)
    counted = counted_ctx.sum(axis=1)
    hits = (positive.any(axis=2) & counted_ctx).sum(axis=1)
    per_counted = finite.sum(axis=1)                                     # (B1, E)
    with np.errstate(invalid="ignore", divide="ignore"):
        overall = np.where(counted > 0, hits / np.maximum(counted, 1), np.nan)
        per_expr = np.where(per_counted > 0, positive.sum(axis=1) / np.maximum(per_counted, 1), np.nan)
    return overall, per_expr, counted


def _finite_in_every_region(pcorr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pcorr`` (B1, R, K, E) as float64, and whether each (replicate, context, expression) cell is finite in every
    region (B1, K, E)."""
    pcorr = np.asarray(pcorr, dtype=np.float64)
    if pcorr.ndim != 4:
        raise ValueError(f"pcorr must be (B1, R, K, E), got {pcorr.shape}")
    return pcorr, np.all(np.isfinite(pcorr), axis=1)


def cells_same_sign_everywhere(pcorr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Share of context x expression cells whose correlation has one sign (either) in every region.

    Not a number of the paper (it has no published counterpart; see :func:`contexts_positive_everywhere` for the
    paper's share). A cell counts when it is finite in every region; it agrees when it is > 0 in all of them or
    < 0 in all of them (an exact 0 agrees with nothing).

    Parameters
    ----------
    pcorr : ndarray, shape (B1, R, K, E)

    Returns
    -------
    overall : ndarray, shape (B1,)
        Agreeing cells / counted cells over all expressions (NaN if none counted).
    per_expression : ndarray, shape (B1, E)
        The same over the contexts of each expression.
    counted : ndarray of int, shape (B1, E)
        Contexts counted per expression.
    """
    pcorr, finite = _finite_in_every_region(pcorr)
    with np.errstate(invalid="ignore"):
        agree = finite & (np.all(pcorr > 0, axis=1) | np.all(pcorr < 0, axis=1))
    counted = finite.sum(axis=1)                                         # (B1, E)
    agreeing = agree.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_expr = np.where(counted > 0, agreeing / np.maximum(counted, 1), np.nan)
        total = counted.sum(axis=1)
        overall = np.where(total > 0, agreeing.sum(axis=1) / np.maximum(total, 1), np.nan)
    return overall, per_expr, counted


def variate_tracking(expression_side: np.ndarray, context_side: np.ndarray, n_boot: int,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Correlation across geographic bins of the expression-side and the context-side score of each variate.

    Cowen et al. (2021), main text: "This analysis revealed geographical variation in the rates of different facial
    expressions, but these variations closely tracked variations in the contexts found in videos (Fig. 4)." The paper
    gives no number for "closely tracked"; this is the one that supports it: for variate k, Pearson's r between the
    bins' mean expression-side score and their mean context-side score (each bin one observation, unweighted, as the
    map shows them). Its SE resamples the bins (``n_boot`` draws with replacement, a fixed ``seed``: the bins are the
    units here; the video-level bootstrap of the other numbers does not reach bin means).

    Parameters
    ----------
    expression_side, context_side : ndarray, shape (G, D)
        Per bin, the mean canonical score of each side for D variates (NaN rows are skipped per variate).

    Returns
    -------
    r, se : ndarray, shape (D,)
    """
    X = np.asarray(expression_side, dtype=np.float64)
    C = np.asarray(context_side, dtype=np.float64)
    D = X.shape[1]
    r, se = np.full(D, np.nan), np.full(D, np.nan)
    rng = np.random.default_rng(seed)
    for d in range(D):
        ok = np.isfinite(X[:, d]) & np.isfinite(C[:, d])
        x, c = X[ok, d], C[ok, d]
        if x.size < 3:
            continue
        r[d] = _pearson(x, c)
        if n_boot >= 2:
            idx = rng.integers(0, x.size, size=(n_boot, x.size))
            draws = np.array([_pearson(x[i], c[i]) for i in idx])
            se[d] = np.nanstd(draws, ddof=1) if np.isfinite(draws).sum() >= 2 else np.nan
    return r, se


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = x - x.mean(), y - y.mean()
    den = np.sqrt((xc @ xc) * (yc @ yc))
    return float(xc @ yc / den) if den > 0 else float("nan")


def dims_positive_everywhere(heldout: np.ndarray) -> tuple[int, np.ndarray]:
    """Number of canonical dimensions whose held-out correlation is > 0 in every evaluated region.

    Parameters
    ----------
    heldout : ndarray, shape (R, D)
        Rows of regions that were not evaluated are all NaN and are skipped.

    Returns
    -------
    count : int
    positive : ndarray of bool, shape (D,)
    """
    h = np.asarray(heldout, dtype=np.float64)
    rows = np.any(np.isfinite(h), axis=1)
    h = h[rows]
    if h.shape[0] == 0:
        return 0, np.zeros(h.shape[1], dtype=bool)
    with np.errstate(invalid="ignore"):
        positive = np.all(h > 0, axis=0)
    return int(positive.sum()), positive


def structure_correlations(weights: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Correlation of each canonical variate with each variable of its side (structure coefficients).

    For variates ``v_d = z @ weights[:, d]`` of variables ``z`` with covariance ``cov``:
    ``corr(z_i, v_d) = (cov @ weights)[i, d] / sqrt(cov[i, i] * weights[:, d] @ cov @ weights[:, d])``.

    Parameters
    ----------
    weights : ndarray, shape (P, D)
    cov : ndarray, shape (P, P)

    Returns
    -------
    ndarray, shape (P, D); NaN for a constant variable or a zero-variance variate.
    """
    W = np.asarray(weights, dtype=np.float64)
    S = np.asarray(cov, dtype=np.float64)
    SW = S @ W
    var_v = np.einsum("pd,pd->d", W, SW)
    var_z = np.diag(S)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = SW / np.sqrt(var_z[:, None] * var_v[None, :])
    return np.where((var_z[:, None] > 0) & (var_v[None, :] > 0), np.clip(out, -1.0, 1.0), np.nan)


def geobin_variance_share(n: np.ndarray, sx: np.ndarray, sxx_diag: np.ndarray,
                          adjusted: bool = False) -> tuple[float, np.ndarray]:
    """Share of the expression variance that lies between geographic bins (a one-way ANOVA's eta squared).

    ``between_e = sum_g n_g (mean_ge - mean_e)**2`` and ``total_e = sum over videos (x_e - mean_e)**2``; the
    overall share is ``sum_e between_e / sum_e total_e`` (the expressions' total variance), the per-expression
    share ``between_e / total_e``. Computed from per-bin counts, sums and sums of squares.

    With many small bins the raw share is inflated by noise: without any geographic structure it is about
    ``(G - 1) / (N - 1)``. ``adjusted=True`` gives epsilon squared instead, ``(between - (G - 1) * within / (N - G))
    / total``, which is about 0 then.

    Parameters
    ----------
    n : ndarray, shape (G,)
    sx : ndarray, shape (G, E)
    sxx_diag : ndarray, shape (G, E)
        Per bin, the sum of squared expression scores.

    Returns
    -------
    overall : float
    per_expression : ndarray, shape (E,)
    """
    n = np.asarray(n, dtype=np.float64)
    N = n.sum()
    if N <= 0:
        return float("nan"), np.full(np.shape(sx)[1], np.nan)
    mean = sx.sum(axis=0) / N
    total = sxx_diag.sum(axis=0) - N * mean ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_mean = np.where(n[:, None] > 0, sx / np.where(n > 0, n, 1.0)[:, None], 0.0)
        between = (n[:, None] * (bin_mean - mean) ** 2).sum(axis=0)
        if adjusted:
            G = int(np.sum(n > 0))
            within_ms = (total - between) / (N - G) if N > G else np.full(total.shape, np.nan)
            between = between - (G - 1) * within_ms
        per = np.where(total > 0, between / total, np.nan)
        overall = between.sum() / total.sum() if total.sum() > 0 else np.nan
    return float(overall), per
