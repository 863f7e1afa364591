"""The paper's summary numbers, computed from the per-region matrices (pure numpy, vectorised over replicates).

Cowen et al. (2021), Nature 589:251, main text and Methods, summarise the per-region context-expression
correlations and the canonical correlation analysis with a few headline numbers; each function here computes one of
them for every bootstrap replicate at once (leading axis B1), so :func:`cxatlas.stats.bootstrap.bootstrap_summary`
gives its standard error:

* :func:`same_sign_share`: the share of contexts whose correlation with an expression has the same sign in every
  region (49.6% in experiment 1, 33.5% in experiment 2), overall and per expression;
* :func:`universality`: the square root of the lowest pairwise region similarity, the paper's lower bound on the
  share of the associations that is universal (70%, s.e. 0.8%);
* :func:`dims_positive_everywhere`: how many canonical dimensions correlate positively in every held-out region
  (16 of 16);
* :func:`structure_correlations`: correlations between each canonical variate and each input variable (the
  loadings of Extended Data Fig. 3);
* :func:`geobin_variance_share`: the share of expression variance explained by 0.5-degree geographic bins (about
  2%).
"""
from __future__ import annotations

import numpy as np

__all__ = ["same_sign_share", "universality", "dims_positive_everywhere", "structure_correlations",
           "geobin_variance_share"]


def same_sign_share(pcorr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Share of context-expression correlations with the same sign in every region.

    A cell (context, expression) counts when it is finite in every region; it agrees when it is > 0 in all of them
    or < 0 in all of them (an exact 0 agrees with nothing).

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
    pcorr = np.asarray(pcorr, dtype=np.float64)
    if pcorr.ndim != 4:
        raise ValueError(f"pcorr must be (B1, R, K, E), got {pcorr.shape}")
    finite = np.all(np.isfinite(pcorr), axis=1)                         # (B1, K, E)
    with np.errstate(invalid="ignore"):
        agree = finite & (np.all(pcorr > 0, axis=1) | np.all(pcorr < 0, axis=1))
    counted = finite.sum(axis=1)                                         # (B1, E)
    agreeing = agree.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_expr = np.where(counted > 0, agreeing / np.maximum(counted, 1), np.nan)
        total = counted.sum(axis=1)
        overall = np.where(total > 0, agreeing.sum(axis=1) / np.maximum(total, 1), np.nan)
    return overall, per_expr, counted


def universality(similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The square root of the lowest pairwise region similarity, and the pair it comes from.

    If the associations of every pair of regions correlate at least ``r_min``, a share of at least
    ``sqrt(r_min)`` of each region's (standardised) associations is common to all (Cowen et al. 2021, main text:
    "at least 70% ... universal"). NaN where the lowest similarity is negative.

    Parameters
    ----------
    similarity : ndarray, shape (B1, R, R)

    Returns
    -------
    estimate : (B1,), minimum : (B1,), pair : int (B1, 2)
        ``sqrt(min)``, the minimum over pairs ``a < b`` (NaN pairs skipped), and its pair of region indices.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    B1, R, _ = sim.shape
    iu = np.triu_indices(R, 1)
    off = sim[:, iu[0], iu[1]]                                          # (B1, P)
    ok = np.isfinite(off)
    filled = np.where(ok, off, np.inf)
    idx = filled.argmin(axis=1)
    minimum = np.where(ok.any(axis=1), filled[np.arange(B1), idx], np.nan)
    with np.errstate(invalid="ignore"):
        estimate = np.where(minimum >= 0, np.sqrt(np.where(minimum >= 0, minimum, 0.0)), np.nan)
    pair = np.stack([iu[0][idx], iu[1][idx]], axis=1)
    return estimate, minimum, pair


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
