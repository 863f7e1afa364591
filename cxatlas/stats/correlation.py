"""Context-expression correlations and their comparison across world regions.

Follows the Methods of Cowen et al. (2021), "Sixteen facial expressions occur in similar contexts worldwide",
Nature 589:251:

* within each region, the association of context ``c`` with expression ``e`` is the correlation between them
  controlling for the other 15 expressions (:func:`partial_correlations`; the published per-region CSVs hold the
  semi-partial variant, :func:`semipartial_correlations`);
* two regions are compared by a weighted Pearson correlation between their K x E association matrices, each cell of
  context ``c`` weighted by the geometric mean of the context's binomial variance ``p(1 - p)`` in the two regions
  (:func:`region_similarity`), so rare, noisy contexts count less;
* each region is compared with the rest of the world, the Fisher-z average of the other regions
  (:func:`region_vs_world`).

All functions are small algebra on the sums of :class:`cxatlas.stats.moments.Moments`; the leading replicate axis
(B1) gives bootstrap standard errors via :func:`cxatlas.stats.bootstrap.bootstrap_summary`.
"""
from __future__ import annotations

import warnings

import numpy as np

from .moments import Moments, covariance_parts

__all__ = [
    "partial_correlations", "semipartial_correlations", "prevalence", "mean_context_score", "CORRELATION_KINDS",
    "context_expression_correlations", "analysed_contexts", "weighted_pearson",
    "fisher_mean", "region_similarity", "region_similarity_batched", "region_vs_world", "region_vs_world_batched",
]

_FISHER_EPS = 1e-7


def _batched_inverse(A: np.ndarray) -> np.ndarray:
    """Inverse of each trailing square matrix; NaN for non-finite or singular ones instead of failing the batch."""
    out = np.full(A.shape, np.nan)
    flat_in = A.reshape(-1, *A.shape[-2:])
    flat_out = out.reshape(-1, *A.shape[-2:])
    ok = np.all(np.isfinite(flat_in), axis=(1, 2))
    if not ok.any():
        return out
    try:
        flat_out[ok] = np.linalg.inv(flat_in[ok])
    except np.linalg.LinAlgError:
        for i in np.flatnonzero(ok):
            try:
                flat_out[i] = np.linalg.inv(flat_in[i])
            except np.linalg.LinAlgError:
                pass
    return out


def _precision_terms(m: Moments, rtol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shared pieces: ``P = inv(cov_xx)``, ``u = P cov_xc``, the residual context variance ``k`` and ``var_c``.

    ``k = var_c - cov_xc^T P cov_xc`` is the Schur complement of ``cov_xx`` in the (E+1) x (E+1) covariance of
    ``[expressions, context c]``: the variance of context ``c`` left after regressing it on all expressions.
    """
    parts = covariance_parts(m, ddof=0)
    P = _batched_inverse(parts.cov_xx)                      # (R, B1, E, E)
    u = P @ parts.cov_xc                                     # (R, B1, E, K)
    var_c = parts.var_c                                      # (R, B1, K)
    k = var_c - np.einsum("rbek,rbek->rbk", parts.cov_xc, u)
    # Constant contexts (never seen, or always at the same score) have no correlation: NaN, not 0/0 noise.
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_sq = m.scc / parts.n[..., None]
    degenerate = ~(var_c > rtol * mean_sq)  # also True where var_c is NaN (no weight)
    k = np.where(degenerate, np.nan, np.maximum(k, 0.0))
    var_c = np.where(degenerate, np.nan, var_c)
    return P, u, k, var_c


def partial_correlations(m: Moments, rtol: float = 1e-12) -> np.ndarray:
    """Partial correlation of each context with each expression, controlling for the other expressions.

    For region ``r``, replicate ``b`` and context ``c`` let ``S`` be the weighted covariance of
    ``[x_1..x_E, c]`` and ``O = inv(S)``; the partial correlation of ``c`` with ``x_e`` given the other expressions is
    ``-O[e, c] / sqrt(O[e, e] O[c, c])`` (Cowen et al. 2021, Methods). Instead of K inversions of (E+1) x (E+1)
    matrices, the block-inverse (Schur complement) identity gives, with ``P = inv(S_xx)``, ``u = P s_xc`` and
    ``k = var_c - s_xc^T u``::

        O[c, c] = 1 / k,  O[e, c] = -u_e / k,  O[e, e] = P[e, e] + u_e**2 / k
        pcorr[e, c] = u_e / sqrt(k P[e, e] + u_e**2)

    which is vectorised over all contexts at once.

    Parameters
    ----------
    m : Moments
    rtol : float
        A context whose variance is ``<= rtol * mean(c**2)`` in a region/replicate is treated as constant.

    Returns
    -------
    ndarray, shape (R, B1, K, E)
        NaN where the context has zero variance (or the expression covariance is singular) in that
        region/replicate.
    """
    P, u, k, _ = _precision_terms(m, rtol)
    p_diag = np.diagonal(P, axis1=-2, axis2=-1)[..., :, None]  # (R, B1, E, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        pc = u / np.sqrt(k[..., None, :] * p_diag + u * u)
    return np.clip(pc, -1.0, 1.0).transpose(0, 1, 3, 2)


def semipartial_correlations(m: Moments, rtol: float = 1e-12) -> np.ndarray:
    """Semi-partial correlation: context ``c`` with the part of expression ``e`` not explained by the others.

    The published per-region tables of Cowen et al. (2021) are described by the authors as semi-partial
    correlations; this is the variant where only the expression is residualised on the other expressions:
    ``corr(c, e - E[e | other expressions]) = u_e / sqrt(P[e, e] var_c)`` with ``P``, ``u`` as in
    :func:`partial_correlations`.

    Returns
    -------
    ndarray, shape (R, B1, K, E)
    """
    P, u, _, var_c = _precision_terms(m, rtol)
    p_diag = np.diagonal(P, axis1=-2, axis2=-1)[..., :, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        sr = u / np.sqrt(p_diag * var_c[..., None, :])
    return np.clip(sr, -1.0, 1.0).transpose(0, 1, 3, 2)


def prevalence(m: Moments) -> np.ndarray:
    """The proportion of videos in which the context occurred, per region and replicate.

    The paper weights contexts by "the proportion of times that the context occurred in each region" (Methods);
    "occurred" is the same event as in the minimum-occurrence filter (:func:`analysed_contexts`): the context's
    score reached ``occur_threshold`` (see :func:`cxatlas.stats.moments.accumulate`). With binary scores this is the
    mean score; with continuous scores (a classifier's probabilities) it is not, and the mean score is available
    as :func:`mean_context_score`. Counts are bootstrap-weighted, so every replicate has its own prevalence.

    Returns
    -------
    ndarray, shape (R, B1, K); NaN for a region/replicate with no weight.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m.n[..., None] > 0, m.so / m.n[..., None], np.nan)


def mean_context_score(m: Moments) -> np.ndarray:
    """Mean context score per region and replicate (equals :func:`prevalence` only for binary scores).

    Returns
    -------
    ndarray, shape (R, B1, K); NaN for a region/replicate with no weight.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m.n[..., None] > 0, m.sc / m.n[..., None], np.nan)


CORRELATION_KINDS = ("partial", "semipartial")


def context_expression_correlations(m: Moments, kind: str = "partial", rtol: float = 1e-12) -> np.ndarray:
    """:func:`partial_correlations` (``kind="partial"``, the Methods' definition) or
    :func:`semipartial_correlations` (``"semipartial"``, what the authors' released per-region tables hold).

    Returns
    -------
    ndarray, shape (R, B1, K, E)
    """
    if kind == "partial":
        return partial_correlations(m, rtol)
    if kind == "semipartial":
        return semipartial_correlations(m, rtol)
    raise ValueError(f"correlation kind must be one of {CORRELATION_KINDS}, got {kind!r}")


def analysed_contexts(m: Moments, min_occurrences: int = 30, per_region: bool = False) -> np.ndarray:
    """Contexts frequent enough to analyse (counts are unweighted, so the set is the same in every replicate).

    Parameters
    ----------
    m : Moments
    min_occurrences : int
        Minimum number of videos in which the context occurred (score >= the accumulation threshold).
    per_region : bool
        False (default): the count summed over all regions must reach ``min_occurrences``. True: every region must.

    Returns
    -------
    ndarray of bool, shape (K,)
    """
    if per_region:
        return np.all(m.occurred >= min_occurrences, axis=0)
    return m.occurred.sum(axis=0) >= min_occurrences


def weighted_pearson(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    """Weighted Pearson correlation of two 1-D arrays; cells where ``a``, ``b`` or ``w`` is NaN are dropped.

    Parameters
    ----------
    a, b, w : ndarray, shape (n,)
        Values and non-negative weights.

    Returns
    -------
    float
        NaN when fewer than two cells remain, the weights sum to zero or either side is constant.
    """
    a, b, w = (np.asarray(v, dtype=np.float64).ravel() for v in (a, b, w))
    if not (a.shape == b.shape == w.shape):
        raise ValueError(f"shapes differ: {a.shape}, {b.shape}, {w.shape}")
    keep = np.isfinite(a) & np.isfinite(b) & np.isfinite(w)
    a, b, w = a[keep], b[keep], w[keep]
    if np.any(w < 0):
        raise ValueError("weights must be non-negative")
    sw = w.sum()
    if a.size < 2 or sw <= 0:
        return float("nan")
    da = a - (w @ a) / sw
    db = b - (w @ b) / sw
    denom = np.sqrt((w @ (da * da)) * (w @ (db * db)))
    if not denom > 0:
        return float("nan")
    return float(np.clip((w @ (da * db)) / denom, -1.0, 1.0))


def fisher_mean(r: np.ndarray, axis: int | tuple[int, ...] | None = None, eps: float = _FISHER_EPS) -> np.ndarray:
    """Average correlations in Fisher-z space: ``tanh(mean(arctanh(r)))``, ignoring NaN.

    Parameters
    ----------
    r : ndarray
    axis : int or tuple of int, optional
    eps : float
        Correlations are clipped to ``[-1 + eps, 1 - eps]`` first, so a perfect correlation does not turn the
        mean infinite.

    Returns
    -------
    ndarray; NaN where all inputs along ``axis`` are NaN.
    """
    z = np.arctanh(np.clip(np.asarray(r, dtype=np.float64), -1.0 + eps, 1.0 - eps))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.tanh(np.nanmean(z, axis=axis))


def _context_sd(prev: np.ndarray) -> np.ndarray:
    """``sqrt(p (1 - p))``, the binomial standard deviation of a context of prevalence ``p``."""
    p = np.clip(prev, 0.0, 1.0)
    return np.sqrt(p * (1.0 - p))


def _check_pcorr_prev(pcorr: np.ndarray, prev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pcorr = np.asarray(pcorr, dtype=np.float64)
    prev = np.asarray(prev, dtype=np.float64)
    if pcorr.ndim != 3 or prev.shape != pcorr.shape[:2]:
        raise ValueError(f"pcorr must be (R, K, E) and prev (R, K); got {pcorr.shape} and {prev.shape}")
    return pcorr, prev


def _pairwise_weighted_corr(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted Pearson over the last axis for broadcastable stacks, NaN cells dropped (two-pass centring)."""
    a, b, w = np.broadcast_arrays(a, b, w)
    keep = np.isfinite(a) & np.isfinite(b) & np.isfinite(w)
    w = np.where(keep, w, 0.0)
    a = np.where(keep, a, 0.0)
    b = np.where(keep, b, 0.0)
    sw = w.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        da = np.where(keep, a - (w * a).sum(axis=-1, keepdims=True) / sw, 0.0)
        db = np.where(keep, b - (w * b).sum(axis=-1, keepdims=True) / sw, 0.0)
        num = (w * da * db).sum(axis=-1)
        den = np.sqrt((w * da * da).sum(axis=-1) * (w * db * db).sum(axis=-1))
        r = np.where((den > 0) & (keep.sum(axis=-1) >= 2), num / den, np.nan)
    return np.clip(r, -1.0, 1.0)


def region_similarity(pcorr: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """Weighted correlation between the context-expression matrices of every pair of regions.

    For regions ``r`` and ``s`` the K x E matrices are flattened and correlated with every cell of context ``c``
    weighted by ``w_c = sqrt(p_rc (1 - p_rc) p_sc (1 - p_sc))`` (Cowen et al. 2021, Methods); cells that are NaN in
    either region are left out.

    Parameters
    ----------
    pcorr : ndarray, shape (R, K, E)
        One replicate of :func:`partial_correlations` (``pc[:, b]``), typically restricted to analysed contexts.
    prev : ndarray, shape (R, K)
        The matching :func:`prevalence` (``prevalence(m)[:, b]``).

    Returns
    -------
    ndarray, shape (R, R)
        Symmetric, diagonal 1.
    """
    pcorr, prev = _check_pcorr_prev(pcorr, prev)
    R, K, E = pcorr.shape
    sd = _context_sd(prev)                                     # (R, K)
    flat = pcorr.reshape(R, K * E)                             # cell (k, e) -> k * E + e
    sim = np.empty((R, R))
    for r in range(R):  # one row at a time keeps the temporaries at R x K x E
        w = np.repeat(sd[r][None, :] * sd, E, axis=-1)        # (R, K*E)
        sim[r] = _pairwise_weighted_corr(flat[r][None, :], flat, w)
    sim = 0.5 * (sim + sim.T)  # exact symmetry despite different summation order
    np.fill_diagonal(sim, 1.0)
    return sim


def region_similarity_batched(pcorr: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """:func:`region_similarity` for each replicate.

    Parameters
    ----------
    pcorr : ndarray, shape (B1, R, K, E)
        e.g. ``np.moveaxis(partial_correlations(m), 1, 0)``.
    prev : ndarray, shape (B1, R, K)
        e.g. ``np.moveaxis(prevalence(m), 1, 0)``.

    Returns
    -------
    ndarray, shape (B1, R, R)
    """
    return np.stack([region_similarity(pc, pv) for pc, pv in zip(pcorr, prev)])


def region_vs_world(pcorr: np.ndarray, prev: np.ndarray, eps: float = _FISHER_EPS,
                    similarity: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How well each region's context-expression associations match the rest of the world.

    The world average for region ``r`` is, cell by cell, ``tanh(mean over the other regions of arctanh(pcorr))``
    (NaN cells of other regions skipped). Context ``c`` is weighted by ``sqrt(p_rc (1 - p_rc))`` times the mean over
    the other regions of ``sqrt(p_sc (1 - p_sc))``. ``r2`` is the square of the weighted correlation between the
    region and its world average (Cowen et al. 2021, Methods: the share of variance preserved). The best match is
    the other region with the highest squared :func:`region_similarity`.

    Parameters
    ----------
    pcorr : ndarray, shape (R, K, E)
    prev : ndarray, shape (R, K)
    eps : float
        Clipping used by the Fisher transform (see :func:`fisher_mean`).
    similarity : ndarray, shape (R, R), optional
        :func:`region_similarity` of the same inputs, if already computed.

    Returns
    -------
    r2 : ndarray, shape (R,)
    best_match : ndarray of int, shape (R,)
        Index of the most similar other region (-1 if no other region is comparable).
    best_match_r2 : ndarray, shape (R,)
    """
    pcorr, prev = _check_pcorr_prev(pcorr, prev)
    R = pcorr.shape[0]
    z = np.arctanh(np.clip(pcorr, -1.0 + eps, 1.0 - eps))
    finite = np.isfinite(z)
    z_sum = np.where(finite, z, 0.0).sum(axis=0)
    z_cnt = finite.sum(axis=0)
    sd = _context_sd(prev)
    sd_ok = np.isfinite(sd)
    sd_sum = np.where(sd_ok, sd, 0.0).sum(axis=0)
    sd_cnt = sd_ok.sum(axis=0)
    r2 = np.full(R, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        for r in range(R):
            # Leave-one-out means: subtract region r's own contribution where it had one.
            cnt = z_cnt - finite[r]
            world = np.tanh(np.where(cnt > 0, (z_sum - np.where(finite[r], z[r], 0.0)) / cnt, np.nan))
            sd_cnt_r = sd_cnt - sd_ok[r]
            sd_world = np.where(sd_cnt_r > 0, (sd_sum - np.where(sd_ok[r], sd[r], 0.0)) / sd_cnt_r, np.nan)
            w = np.repeat(sd[r] * sd_world, pcorr.shape[2])
            r2[r] = weighted_pearson(pcorr[r].ravel(), world.ravel(), w) ** 2
    sim2 = (region_similarity(pcorr, prev) if similarity is None else np.array(similarity, dtype=np.float64)) ** 2
    np.fill_diagonal(sim2, np.nan)
    best = np.full(R, -1, dtype=np.int64)
    best_r2 = np.full(R, np.nan)
    for r in range(R):
        if np.any(np.isfinite(sim2[r])):
            best[r] = int(np.nanargmax(sim2[r]))
            best_r2[r] = sim2[r, best[r]]
    return r2, best, best_r2


def region_vs_world_batched(pcorr: np.ndarray, prev: np.ndarray, eps: float = _FISHER_EPS,
                            similarity: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`region_vs_world` for each replicate.

    Parameters
    ----------
    pcorr : ndarray, shape (B1, R, K, E)
    prev : ndarray, shape (B1, R, K)
    eps : float
    similarity : ndarray, shape (B1, R, R), optional
        :func:`region_similarity_batched` of the same inputs, if already computed.

    Returns
    -------
    r2 : (B1, R), best_match : (B1, R) int, best_match_r2 : (B1, R)
    """
    res = [region_vs_world(pc, pv, eps, None if similarity is None else similarity[i])
           for i, (pc, pv) in enumerate(zip(pcorr, prev))]
    return (np.stack([x[0] for x in res]), np.stack([x[1] for x in res]), np.stack([x[2] for x in res]))
