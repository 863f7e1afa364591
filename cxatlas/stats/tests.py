"""Hypothesis tests across held-out regions and false-discovery-rate control.

Cowen et al. (2021), Nature 589:251, Methods and Fig. 3c: a canonical dimension is deemed preserved across cultures
when its held-out (leave-one-region-out) canonical correlations are reliably positive across the 12 regions, tested
with a one-sided Wilcoxon signed-rank test per dimension, with Benjamini-Hochberg correction over dimensions.

(This module holds statistical tests, not pytest tests; those live in ``tests/stats/test_stats.py``.)
"""
from __future__ import annotations

import numpy as np
import scipy.stats
from scipy.stats import false_discovery_control

__all__ = ["signed_rank_tests", "bh_qvalues"]


def signed_rank_tests(heldout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Wilcoxon signed-rank test per dimension that held-out correlations exceed zero.

    Parameters
    ----------
    heldout : ndarray, shape (R, D)
        Held-out canonical correlations (e.g. :func:`cxatlas.stats.cca.leave_one_region_out`); NaN rows (regions
        without data) are dropped per dimension.

    Returns
    -------
    statistic : ndarray, shape (D,)
        Sum of the ranks of positive differences (scipy's ``W+`` for ``alternative='greater'``).
    p : ndarray, shape (D,)
        One-sided p-values (exact for small samples without ties or zeros, as scipy chooses); NaN for a dimension
        with no finite value.
    """
    heldout = np.asarray(heldout, dtype=np.float64)
    if heldout.ndim != 2:
        raise ValueError(f"heldout must be (R, D), got {heldout.shape}")
    D = heldout.shape[1]
    stat = np.full(D, np.nan)
    pval = np.full(D, np.nan)
    for d in range(D):
        x = heldout[:, d]
        x = x[np.isfinite(x)]
        if x.size == 0 or not np.any(x != 0):
            continue
        res = scipy.stats.wilcoxon(x, alternative="greater")
        stat[d], pval[d] = float(res.statistic), float(res.pvalue)
    return stat, pval


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg (1995) adjusted p-values (q-values), any shape, NaN entries ignored and kept NaN.

    ``q_(i) = min_{j >= i} p_(j) * m / j`` over the sorted finite p-values, clipped to 1, so q is monotone in p.
    Computed by :func:`scipy.stats.false_discovery_control` (``method="bh"``) over the finite entries; this wrapper
    adds what it lacks: any shape, NaN kept in place (the paper's tests over absent regions), one error message.

    Parameters
    ----------
    p : ndarray
        p-values in [0, 1].

    Returns
    -------
    ndarray, same shape as ``p``
    """
    p = np.asarray(p, dtype=np.float64)
    flat = p.ravel()
    q = np.full(flat.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(flat))
    m = ok.size
    if m == 0:
        return q.reshape(p.shape)
    if np.any((flat[ok] < 0) | (flat[ok] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    q[ok] = false_discovery_control(flat[ok], method="bh")
    return q.reshape(p.shape)
