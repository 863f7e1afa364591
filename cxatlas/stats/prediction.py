"""Extended Data Fig. 7 of Cowen et al. (2021): how well the expressions predict the context annotations.

"The amount of variance in context predictions explained by randomly superimposed expressions (prediction
correlation r = 0.0094) was negligible compared to the amount of variance explained in context predictions by the
expression predictions in actual videos from experiment 1 (r = 0.154, tenfold ordinary least squares linear
regression applied to a subset of 60,000 videos from experiment 1; 5,000 from each of the 12 regions)."

Computed from sums, so it runs inside the analysis' one pass: the balanced sample's first videos of each region are
dealt into ten folds (:func:`cxatlas.stats.moments.prediction_folds`), each fold's sums are kept
(:class:`~cxatlas.stats.moments.CcaMoments` ``fold_*``), and every fold is predicted by the OLS fitted on the other
nine (folds pooled over regions, as the paper pools its 60,000 videos).

How predictions are pooled (the paper does not say): every context is one outcome of a multivariate regression on
the E expressions with an intercept. The out-of-fold predictions and the annotations of each context are centred on
that context's mean over the whole sample, and r is Pearson's correlation over all (video, context) pairs, i.e.
``sum_k cov_k / sqrt(sum_k var(pred_k) * sum_k var(c_k))``: contexts count in proportion to their variance.
"""
from __future__ import annotations

import numpy as np

from cxatlas.stats.moments import CcaMoments

__all__ = ["tenfold_prediction_r"]


def tenfold_prediction_r(cm: CcaMoments) -> tuple[float, int]:
    """Out-of-fold prediction correlation of the context annotations from the expressions, and the videos used.

    Parameters
    ----------
    cm : CcaMoments whose ``fold_*`` sums hold the prediction sample (any contexts selection).

    Returns
    -------
    r : float (NaN when fewer than two folds hold videos, or nothing varies)
    n : int, videos in the prediction sample
    """
    n_f = cm.fold_n.sum(axis=0)                       # (F,) pooled over regions
    sx, sc = cm.fold_sx.sum(axis=0), cm.fold_sc.sum(axis=0)
    sxx, sxc, scc = cm.fold_sxx.sum(axis=0), cm.fold_sxc.sum(axis=0), cm.fold_scc.sum(axis=0)
    N = float(n_f.sum())
    used = np.flatnonzero(n_f > 0)
    if used.size < 2 or N < 3:
        return float("nan"), int(N)
    K = sc.shape[1]
    p1, pc, pp = np.zeros(K), np.zeros(K), np.zeros(K)
    for f in used:
        nt = N - n_f[f]
        mx, mc = (sx.sum(0) - sx[f]) / nt, (sc.sum(0) - sc[f]) / nt
        cxx = (sxx.sum(0) - sxx[f]) / nt - np.outer(mx, mx)
        cxc = (sxc.sum(0) - sxc[f]) / nt - np.outer(mx, mc)
        beta = np.linalg.lstsq(cxx, cxc, rcond=None)[0]   # (E, K): OLS slopes of the training folds
        a = mc - mx @ beta                                   # (K,) intercepts
        # Sums over the test fold of p = a + x beta, p * c and p^2, from the fold's own sums.
        sxb = sx[f] @ beta
        p1 += n_f[f] * a + sxb
        pc += a * sc[f] + np.einsum("ek,ek->k", beta, sxc[f])
        pp += n_f[f] * a ** 2 + 2 * a * sxb + np.einsum("ek,ef,fk->k", beta, sxx[f], beta)
    c1, cc = sc.sum(0), scc.sum(0)
    cov = pc - p1 * c1 / N
    var_p, var_c = pp - p1 ** 2 / N, cc - c1 ** 2 / N
    den = np.sqrt(max(var_p.sum(), 0.0) * max(var_c.sum(), 0.0))
    return (float(cov.sum() / den) if den > 0 else float("nan")), int(N)
