"""Canonical correlation analysis between expressions and contexts, from covariance blocks.

Cowen et al. (2021), Nature 589:251, Methods and Fig. 3c, ask how many independent dimensions of context-expression
association are preserved across cultures: CCA is fitted on the videos of all regions but one and its canonical
variates are evaluated on the held-out region (leave-one-region-out), and the held-out canonical correlations are
tested across the 12 regions (:mod:`cxatlas.stats.tests`). To interpret the dimensions they fit CCA to a balanced
sample of 25,000 videos per region and report Bartlett's chi-square test (Extended Data Fig. 3).

Everything here works on covariance matrices derived from :class:`cxatlas.stats.moments.CcaMoments`, never on
per-video data, so the Spark driver only needs the added sums.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.stats

from .moments import CcaMoments, covariance_from_sums, mean_from_sums

__all__ = [
    "CcaFit", "CovarianceBlocks", "cca_fit", "canonical_correlations_on", "balanced_covariance",
    "leave_one_region_out", "fit_on_one_region", "bartlett_test", "rao_f_test", "expression_variates",
    "context_variates",
]


@dataclass(eq=False)
class CcaFit:
    """Canonical weights and correlations.

    Attributes
    ----------
    A : ndarray, shape (E, D)
        Expression-side canonical weights; the variates ``(x - mean_x) @ A`` have unit variance on the fit sample.
    B : ndarray, shape (K, D)
        Context-side canonical weights (unit variance under the ridge-regularised context covariance).
    rho : ndarray, shape (D,)
        In-sample canonical correlations (of the fitted variate pairs on the unregularised fit covariance; with
        ``ridge=0`` these are the usual canonical correlations, in decreasing order).
    """

    A: np.ndarray
    B: np.ndarray
    rho: np.ndarray


@dataclass(eq=False)
class CovarianceBlocks:
    """Means and covariance blocks of a (pooled) sample.

    Attributes
    ----------
    n : float
        Number of videos behind the sums (unweighted, for significance tests).
    mean_x : (E,)
    mean_c : (K,)
    cov_xx : (E, E)
    cov_cc : (K, K)
    cov_xc : (E, K)
    """

    n: float
    mean_x: np.ndarray
    mean_c: np.ndarray
    cov_xx: np.ndarray
    cov_cc: np.ndarray
    cov_xc: np.ndarray


def _inv_sqrt_psd(S: np.ndarray, rtol: float) -> np.ndarray:
    """Symmetric (pseudo-)inverse square root of a PSD matrix.

    Eigen-directions with eigenvalue ``<= rtol * max eigenvalue`` (e.g. contexts that never occur in the fit
    sample) are dropped rather than inverted, so an unregularised fit stays finite.
    """
    S = 0.5 * (S + S.T)
    vals, vecs = np.linalg.eigh(S)
    top = vals.max() if vals.size else 0.0
    keep = vals > rtol * top if top > 0 else np.zeros(vals.shape, dtype=bool)
    scale = np.zeros_like(vals)
    scale[keep] = 1.0 / np.sqrt(vals[keep])
    return (vecs * scale) @ vecs.T


def canonical_correlations_on(fit: CcaFit, Sxx: np.ndarray, Scc: np.ndarray, Sxc: np.ndarray) -> np.ndarray:
    """Correlation of each fitted pair of variates ``(x @ a_j, c @ b_j)`` under another sample's covariance.

    Used to score a fit on a held-out region (the paper's cross-validated canonical correlations): the weights are
    fixed, only the covariance changes, so the result can be negative or small when a dimension does not
    generalise.

    Parameters
    ----------
    fit : CcaFit
    Sxx : ndarray, shape (E, E)
    Scc : ndarray, shape (K, K)
    Sxc : ndarray, shape (E, K)

    Returns
    -------
    ndarray, shape (D,); NaN where a variate has zero variance in that sample.
    """
    A, B = fit.A, fit.B
    num = np.einsum("ed,ed->d", A, Sxc @ B)
    va = np.einsum("ed,ed->d", A, Sxx @ A)
    vb = np.einsum("kd,kd->d", B, Scc @ B)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / np.sqrt(va * vb)
    return np.where((va > 0) & (vb > 0), np.clip(r, -1.0, 1.0), np.nan)


def cca_fit(Sxx: np.ndarray, Scc: np.ndarray, Sxc: np.ndarray, ridge: float = 0.0, rtol: float = 1e-10) -> CcaFit:
    """CCA from covariance blocks by whitening and SVD.

    With ``Kx = Sxx^-1/2`` and ``Kc = (Scc + ridge * mean(diag Scc) * I)^-1/2``, the SVD ``Kx Sxc Kc = U s V^T``
    gives ``A = Kx U``, ``B = Kc V`` (Hotelling 1936; the statsmodels ``CanCorr`` SVD route, but from covariances so
    it runs on added sums). The ridge, scaled by the mean context variance so it is unit-free, shrinks the weights of
    rare contexts whose covariance is estimated from few videos.

    Parameters
    ----------
    Sxx : ndarray, shape (E, E)
    Scc : ndarray, shape (K, K)
    Sxc : ndarray, shape (E, K)
    ridge : float
        Relative ridge on the context covariance (0 = plain CCA).
    rtol : float
        Relative eigenvalue cut-off for the pseudo-inverse square roots.

    Returns
    -------
    CcaFit
        ``D = min(E, K)`` pairs; each pair's sign is fixed so that its largest-magnitude expression weight is
        positive (deterministic output).
    """
    Sxx = np.asarray(Sxx, dtype=np.float64)
    Scc = np.asarray(Scc, dtype=np.float64)
    Sxc = np.asarray(Sxc, dtype=np.float64)
    E, K = Sxc.shape
    if Sxx.shape != (E, E) or Scc.shape != (K, K):
        raise ValueError(f"inconsistent blocks: Sxx {Sxx.shape}, Scc {Scc.shape}, Sxc {Sxc.shape}")
    if ridge < 0:
        raise ValueError("ridge must be >= 0")
    D = min(E, K)
    Scc_reg = Scc + ridge * np.mean(np.diag(Scc)) * np.eye(K) if ridge > 0 else Scc
    Kx = _inv_sqrt_psd(Sxx, rtol)
    Kc = _inv_sqrt_psd(Scc_reg, rtol)
    U, _, Vt = np.linalg.svd(Kx @ Sxc @ Kc, full_matrices=False)
    A = Kx @ U[:, :D]
    B = Kc @ Vt[:D].T
    pivot = np.abs(A).argmax(axis=0)
    sign = np.where(A[pivot, np.arange(D)] < 0, -1.0, 1.0)
    A, B = A * sign, B * sign
    fit = CcaFit(A=A, B=B, rho=np.zeros(D))
    fit.rho = np.nan_to_num(canonical_correlations_on(fit, Sxx, Scc, Sxc), nan=0.0)
    return fit


def balanced_covariance(cm: CcaMoments, regions: Sequence[int] | np.ndarray,
                        equal_mass: bool = False) -> CovarianceBlocks:
    """Pooled means and covariance over a set of regions.

    Parameters
    ----------
    cm : CcaMoments
    regions : index array
        Region indices to pool (a boolean mask of length R also works).
    equal_mass : bool
        False: add the (already balanced by subsampling) sums as they are. True: re-weight each region so all carry
        the same total weight, which keeps the pooled fit balanced when a region had fewer videos than the
        subsample size. The covariance is about the pooled mean in both cases.

    Returns
    -------
    CovarianceBlocks
        ``n`` is the actual number of videos pooled.
    """
    idx = np.arange(cm.n_regions)[np.asarray(regions)]
    idx = idx[cm.n[idx] > 0]
    if idx.size == 0:
        raise ValueError("no videos in the chosen regions")
    if equal_mass:
        alpha = cm.n[idx].mean() / cm.n[idx]
    else:
        alpha = np.ones(idx.size)
    n = float(alpha @ cm.n[idx])
    sx = np.tensordot(alpha, cm.sx[idx], axes=1)
    sc = np.tensordot(alpha, cm.sc[idx], axes=1)
    sxx = np.tensordot(alpha, cm.sxx[idx], axes=1)
    sxc = np.tensordot(alpha, cm.sxc[idx], axes=1)
    scc = np.tensordot(alpha, cm.scc_full[idx], axes=1)
    return CovarianceBlocks(
        n=float(cm.n[idx].sum()),
        mean_x=mean_from_sums(np.array(n), sx),
        mean_c=mean_from_sums(np.array(n), sc),
        cov_xx=covariance_from_sums(np.array(n), sx, sx, sxx),
        cov_cc=covariance_from_sums(np.array(n), sc, sc, scc),
        cov_xc=covariance_from_sums(np.array(n), sx, sc, sxc),
    )


def leave_one_region_out(cm: CcaMoments, ridge: float = 0.0, equal_mass: bool = False) -> np.ndarray:
    """Held-out canonical correlations: fit on all regions but one, evaluate on that one, for every region.

    Parameters
    ----------
    cm : CcaMoments
    ridge : float
        See :func:`cca_fit`.
    equal_mass : bool
        See :func:`balanced_covariance` (applies to the pooled training regions).

    Returns
    -------
    ndarray, shape (R, D)
        Row ``r``: correlations on region ``r`` of the variates fitted without it; NaN rows for empty regions.
    """
    R, E, K = cm.shape
    out = np.full((R, min(E, K)), np.nan)
    all_regions = np.arange(R)
    for r in all_regions[cm.n > 0]:
        train = balanced_covariance(cm, all_regions[all_regions != r], equal_mass)
        test = balanced_covariance(cm, [r])
        fit = cca_fit(train.cov_xx, train.cov_cc, train.cov_xc, ridge)
        out[r] = canonical_correlations_on(fit, test.cov_xx, test.cov_cc, test.cov_xc)
    return out


def fit_on_one_region(cm: CcaMoments, region_index: int, ridge: float = 0.0, all_videos: bool = False,
                      return_fit: bool = False) -> np.ndarray | tuple[np.ndarray, CcaFit]:
    """Fit CCA on one region and evaluate the variates on every other region's (balanced) sample.

    Parameters
    ----------
    cm : CcaMoments
    region_index : int
        The region the CCA is fitted on.
    ridge : float
        See :func:`cca_fit`.
    all_videos : bool
        True: fit on every video of the region (``cm``'s ``*_all`` sums; the paper fits its USA/Canada CCA on all
        333,226 US/Canada videos). If those sums are empty (e.g. every video is in the sample anyway) the sample is
        used. False: fit on the region's balanced sample.
    return_fit : bool
        Also return the fit.

    Returns
    -------
    ndarray, shape (R, D)
        NaN for the fit region itself and for empty regions. With ``return_fit``: ``(heldout, fit)``.
    """
    R, E, K = cm.shape
    out = np.full((R, min(E, K)), np.nan)
    source = cm.all_videos() if all_videos and cm.n_all[region_index] > 0 else cm
    train = balanced_covariance(source, [region_index])
    fit = cca_fit(train.cov_xx, train.cov_cc, train.cov_xc, ridge)
    for r in range(R):
        if r == region_index or cm.n[r] <= 0:
            continue
        test = balanced_covariance(cm, [r])
        out[r] = canonical_correlations_on(fit, test.cov_xx, test.cov_cc, test.cov_xc)
    return (out, fit) if return_fit else out


def _wilks_tail(rho: np.ndarray) -> np.ndarray:
    """Wilks' lambda for dims k..D: ``prod_{j >= k} (1 - rho_j**2)``."""
    r2 = np.clip(np.asarray(rho, dtype=np.float64), 0.0, 1.0) ** 2
    return np.cumprod((1.0 - r2)[::-1])[::-1]


def bartlett_test(rho: np.ndarray, n: float, p: int, q: int,
                  lawley: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bartlett's sequential chi-square test that canonical correlations k..D are all zero.

    ``chi2_k = -(n - 1 - (p + q + 1) / 2) * ln(prod_{j >= k} (1 - rho_j**2))`` with ``(p - k)(q - k)`` degrees of
    freedom (0-based ``k``; Bartlett 1938/1941). This is the test the paper reports for the 16 dimensions
    (Extended Data Fig. 3; its chi2 = 860.4 for the 16th variate has df (16 - 15)(653 - 15)). statsmodels'
    ``CanCorr.corr_test`` uses the same Wilks' lambda with Rao's F approximation instead (:func:`rao_f_test`).

    ``lawley=True`` uses Lawley's (1959) modification of the multiplier for the k-th test, which corrects the
    bias of the later tests by the dimensions already removed:
    ``-(n - 1 - k - (p + q + 1) / 2 + sum_{j < k} 1 / rho_j**2) * ln(prod_{j >= k} (1 - rho_j**2))``.

    Parameters
    ----------
    rho : ndarray, shape (D,)
        Canonical correlations in decreasing order.
    n : float
        Number of observations.
    p, q : int
        Number of variables on each side.
    lawley : bool
        Lawley's multiplier instead of Bartlett's.

    Returns
    -------
    chi2 : (D,), df : (D,), p : (D,)
    """
    lam = _wilks_tail(rho)
    k = np.arange(lam.size)
    factor = np.full(lam.size, n - 1.0 - (p + q + 1) / 2.0)
    if lawley:
        r2 = np.clip(np.asarray(rho, dtype=np.float64), 0.0, 1.0) ** 2
        with np.errstate(divide="ignore"):
            inv = np.where(r2 > 0, 1.0 / np.where(r2 > 0, r2, 1.0), np.inf)
        factor = factor - k + np.concatenate([[0.0], np.cumsum(inv)[:-1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        chi2 = -factor * np.log(lam)
    df = ((p - k) * (q - k)).astype(np.float64)
    return chi2, df, scipy.stats.chi2.sf(chi2, df)


def rao_f_test(rho: np.ndarray, n: float, p: int, q: int) -> tuple[np.ndarray, ...]:
    """Sequential Wilks' lambda test with Rao's F approximation, as statsmodels ``CanCorr.corr_test`` computes it.

    Parameters
    ----------
    rho : ndarray, shape (D,)
    n : float
        Number of observations.
    p : int
        Number of variables of the side statsmodels calls ``endog``.
    q : int
        Number of variables of ``exog``.

    Returns
    -------
    wilks, F, df1, df2, pvalue : ndarray, shape (D,) each
    """
    lam = _wilks_tail(rho)
    i = np.arange(lam.size)
    pp, qq = p - i, q - i
    r = (n - p - 1) - (pp - qq + 1) / 2.0
    u = (pp * qq - 2) / 4.0
    df1 = (pp * qq).astype(np.float64)
    denom = pp ** 2 + qq ** 2 - 5
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(denom > 0, np.sqrt(((pp * qq) ** 2 - 4) / np.where(denom > 0, denom, 1)), 1.0)
        df2 = r * t - 2 * u
        lmd = lam ** (1.0 / t)
        F = (1 - lmd) / lmd * df2 / df1
    return lam, F, df1, df2, scipy.stats.f.sf(F, df1, df2)


def _variates(weights: np.ndarray, means: np.ndarray, center: np.ndarray, dims: int | None) -> np.ndarray:
    means = np.asarray(means, dtype=np.float64)
    W = weights if dims is None else weights[:, :dims]
    return (means - np.asarray(center, dtype=np.float64)) @ W


def expression_variates(fit: CcaFit, x_means_per_bin: np.ndarray, x_mean: np.ndarray,
                        dims: int | None = None) -> np.ndarray:
    """Mean expression-side canonical variate scores per bin (e.g. per geographic cell, for maps).

    The variate is linear, so the mean of ``(x - x_mean) @ a_j`` over the videos of a bin is
    ``(mean x in bin - x_mean) @ a_j``: per-bin means of X suffice.

    Parameters
    ----------
    fit : CcaFit
    x_means_per_bin : ndarray, shape (n_bins, E)
    x_mean : ndarray, shape (E,)
        The mean of the fit sample (:attr:`CovarianceBlocks.mean_x`), so scores are centred as in the fit.
    dims : int, optional
        Keep only the first ``dims`` variates.

    Returns
    -------
    ndarray, shape (n_bins, D or dims)
    """
    return _variates(fit.A, x_means_per_bin, x_mean, dims)


def context_variates(fit: CcaFit, c_means_per_bin: np.ndarray, c_mean: np.ndarray,
                     dims: int | None = None) -> np.ndarray:
    """Context-side counterpart of :func:`expression_variates` (``(mean c in bin - c_mean) @ B``).

    Returns
    -------
    ndarray, shape (n_bins, D or dims)
    """
    return _variates(fit.B, c_means_per_bin, c_mean, dims)
