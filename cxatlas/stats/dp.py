"""Differentially private release of the per-region context-expression correlations: the numpy side.

Cowen et al. (2021), Nature 589:251, published their per-region correlations only in a privatised form (Fig. 2
legend: "Anonymized (differentially private 50) versions of all context–expression correlations are available in
the GitHub repository"; the repository's README: the correlations "with small noise added for differential
privacy"). Neither says which mechanism, epsilon or delta. ``cxatlas release`` does it with the guarantee stated:

* **Privacy unit**: one video. Neighbouring data sets differ by adding or removing one video (its one row per
  input table: ``video_id`` is every table's key).
* **What a video can change**: its expression scores are clipped to [0, 1], its context scores to [0, 1], and it
  keeps at most ``L`` non-zero contexts (its ``L`` highest; ``release.max_contexts_per_video``). The per-region
  sufficient statistics of the correlations are then sums whose L2 sensitivity is bounded
  (:func:`sensitivities`), whatever the rest of the data.
* **Noise** is added to those sums by OpenDP's Gaussian mechanism (``cxatlas.stages.release.mechanism``; never by
  hand here), and everything below -- correlations, the nearest positive semi-definite covariance, suppression of
  rare contexts by their noisy count -- is post-processing of the noisy sums, which costs no privacy.

This module holds what is pure algebra: the sensitivity of each statistic, how the budget is split between them, the
packing of the sums into one vector of L2 sensitivity 1 (so one Gaussian measurement covers all of them), and the
correlations computed from (noisy) sums. Regions are disjoint sets of videos, so each region's release uses the
whole (epsilon, delta) (parallel composition); within a region the statistics share it through that one vector.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["STATISTICS", "SUM_STATISTICS", "RegionSums", "sensitivities", "budget_shares", "noise_scales",
           "pack", "unpack", "nearest_psd", "correlations_from_sums"]

#: The released statistics of one region, in vector order. ``occurrences`` feeds only the suppression of rare
#: contexts; the others are the sufficient statistics of the correlations.
STATISTICS = ("n", "sx", "sxx", "sc", "scc", "sxc", "occurrences")
SUM_STATISTICS = STATISTICS[:-1]


@dataclass
class RegionSums:
    """Sufficient statistics of one region (exact, or noisy after the mechanism).

    Attributes
    ----------
    n : float
        Number of videos.
    sx : ndarray (E,)
        Sum of the expression scores.
    sxx : ndarray (E, E)
        Sum of the expression cross-products (symmetric; only the upper triangle is released).
    sc, scc : ndarray (K,)
        Sum of the context scores and of their squares.
    sxc : ndarray (E, K)
        Sum of expression x context products.
    occurrences : ndarray (K,)
        Number of videos whose context score reached the occurrence threshold.
    """

    n: float
    sx: np.ndarray
    sxx: np.ndarray
    sc: np.ndarray
    scc: np.ndarray
    sxc: np.ndarray
    occurrences: np.ndarray

    @classmethod
    def zeros(cls, n_expressions: int, n_contexts: int) -> "RegionSums":
        E, K = n_expressions, n_contexts
        return cls(0.0, np.zeros(E), np.zeros((E, E)), np.zeros(K), np.zeros(K), np.zeros((E, K)), np.zeros(K))

    @property
    def shape(self) -> tuple[int, int]:
        """``(E, K)``."""
        return self.sxc.shape  # type: ignore[return-value]


def sensitivities(n_expressions: int, max_contexts: int) -> dict[str, float]:
    """L2 sensitivity of each statistic of one region under adding or removing one video.

    With every score in [0, 1] and at most ``L = max_contexts`` non-zero context scores per video, one video changes

    * ``n`` by 1;
    * ``sx`` by its E scores: L2 <= sqrt(E);
    * ``sxx`` (upper triangle with diagonal, E(E+1)/2 entries) by ``x_e x_f`` <= 1 each: L2 <= sqrt(E(E+1)/2);
    * ``sc``, ``scc`` and ``occurrences`` in at most L entries, each by at most 1: L2 <= sqrt(L);
    * ``sxc`` in at most E x L entries ``x_e c_k`` <= 1: L2 <= sqrt(E L).

    A video belongs to one region, so it changes one region's statistics only.
    """
    E, L = int(n_expressions), int(max_contexts)
    if E < 1 or L < 1:
        raise ValueError("n_expressions and max_contexts must be >= 1")
    return {"n": 1.0, "sx": math.sqrt(E), "sxx": math.sqrt(E * (E + 1) / 2), "sc": math.sqrt(L),
            "scc": math.sqrt(L), "sxc": math.sqrt(E * L), "occurrences": math.sqrt(L)}


def budget_shares(sens: dict[str, float], count_share: float) -> dict[str, float]:
    """The share of the region's zCDP budget (rho) each statistic gets; they add to 1.

    ``occurrences`` (used only to suppress rare contexts) gets ``count_share``; the sums behind the correlations
    share the rest in proportion to their squared sensitivity, which gives them all the same noise standard
    deviation (no sum is favoured: the correlations need all of them).
    """
    if not 0.0 < count_share < 1.0:
        raise ValueError(f"count_share must lie in (0, 1), got {count_share}")
    total = sum(sens[s] ** 2 for s in SUM_STATISTICS)
    shares = {s: (1.0 - count_share) * sens[s] ** 2 / total for s in SUM_STATISTICS}
    shares["occurrences"] = count_share
    return shares


def noise_scales(sens: dict[str, float], shares: dict[str, float], unit_scale: float) -> dict[str, float]:
    """Standard deviation of the Gaussian noise on each entry of each statistic, for noise ``unit_scale`` on the
    packed vector (:func:`pack`): entry ``s_b`` is packed as ``s_b sqrt(share_b) / sens_b``."""
    return {s: unit_scale * sens[s] / math.sqrt(shares[s]) for s in STATISTICS}


def _weights(sens: dict[str, float], shares: dict[str, float]) -> dict[str, float]:
    return {s: math.sqrt(shares[s]) / sens[s] for s in STATISTICS}


def pack(sums: RegionSums, sens: dict[str, float], shares: dict[str, float]) -> np.ndarray:
    """The statistics as one vector whose L2 sensitivity is 1.

    Block ``b`` is multiplied by ``sqrt(share_b) / sens_b``, so one video moves it by at most ``sqrt(share_b)`` in L2
    and the whole vector by at most ``sqrt(sum_b share_b) = 1``. One Gaussian measurement of scale ``u`` on this
    vector therefore costs ``rho = 1 / (2 u^2)`` and puts noise ``u sens_b / sqrt(share_b)`` on block ``b``, i.e.
    ``rho_b = share_b rho`` per statistic.
    """
    w = _weights(sens, shares)
    E, _ = sums.shape
    iu = np.triu_indices(E)
    parts = [np.array([sums.n]) * w["n"], sums.sx * w["sx"], sums.sxx[iu] * w["sxx"], sums.sc * w["sc"],
             sums.scc * w["scc"], sums.sxc.ravel() * w["sxc"], sums.occurrences * w["occurrences"]]
    return np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in parts])


def unpack(vec: np.ndarray, n_expressions: int, n_contexts: int, sens: dict[str, float],
           shares: dict[str, float]) -> RegionSums:
    """Inverse of :func:`pack` (``sxx`` made symmetric from its upper triangle)."""
    w = _weights(sens, shares)
    E, K = n_expressions, n_contexts
    sizes = [1, E, E * (E + 1) // 2, K, K, E * K, K]
    if vec.shape != (sum(sizes),):
        raise ValueError(f"vector of {vec.shape} does not hold E={E}, K={K}")
    parts = np.split(np.asarray(vec, dtype=np.float64), np.cumsum(sizes)[:-1])
    iu = np.triu_indices(E)
    sxx = np.zeros((E, E))
    sxx[iu] = parts[2] / w["sxx"]
    sxx = sxx + np.triu(sxx, 1).T
    return RegionSums(float(parts[0][0] / w["n"]), parts[1] / w["sx"], sxx, parts[3] / w["sc"], parts[4] / w["scc"],
                      parts[5].reshape(E, K) / w["sxc"], parts[6] / w["occurrences"])


def nearest_psd(S: np.ndarray, floor_rel: float = 1e-10) -> np.ndarray:
    """The nearest positive semi-definite matrix (Frobenius norm) of each trailing square matrix of ``S``.

    Higham (1988): symmetrise, then set negative eigenvalues to zero. Here they are set to ``floor_rel`` times the
    largest absolute eigenvalue instead, so the result stays invertible for the partial correlations; a matrix that
    is already PSD with eigenvalues above that floor comes back unchanged (to rounding).
    """
    S = 0.5 * (S + np.swapaxes(S, -1, -2))
    w, V = np.linalg.eigh(S)
    top = np.max(np.abs(w), axis=-1, keepdims=True)
    w = np.maximum(w, floor_rel * np.where(top > 0, top, 1.0))
    return (V * w[..., None, :]) @ np.swapaxes(V, -1, -2)


def correlations_from_sums(sums: RegionSums, kind: str = "partial", min_n: float = 2.0) -> np.ndarray:
    """Context x expression (semi-)partial correlations of one region from its (noisy) sums.

    For each context ``c`` the (E+1) x (E+1) covariance of ``[expressions, c]`` is formed from the sums
    (``ddof = 0``, as :mod:`cxatlas.stats.moments`), projected to the nearest PSD matrix (:func:`nearest_psd`: noise
    can make it indefinite, and a correlation from an indefinite covariance can leave [-1, 1] or be undefined), and
    the correlations follow as in :func:`cxatlas.stats.partial_correlations` / :func:`semipartial_correlations`:
    with ``P = inv(S_xx)``, ``u = P s_xc`` and ``k = var_c - s_xc' u``, partial ``u_e / sqrt(k P_ee + u_e^2)``,
    semi-partial ``u_e / sqrt(P_ee var_c)``. On exact sums this equals those functions (replicate 0).

    Returns
    -------
    ndarray, shape (K, E); all NaN when the (noisy) count is below ``min_n``.
    """
    if kind not in ("partial", "semipartial"):
        raise ValueError(f"kind must be 'partial' or 'semipartial', got {kind!r}")
    E, K = sums.shape
    n = float(sums.n)
    if not math.isfinite(n) or n < min_n:
        return np.full((K, E), np.nan)
    mx = sums.sx / n
    sxx = sums.sxx / n - np.outer(mx, mx)
    mc = sums.sc / n
    var_c = sums.scc / n - mc * mc
    cov = sums.sxc / n - np.outer(mx, mc)                      # (E, K)
    M = np.empty((K, E + 1, E + 1))
    M[:, :E, :E] = sxx
    M[:, :E, E] = cov.T
    M[:, E, :E] = cov.T
    M[:, E, E] = var_c
    M = nearest_psd(M)
    s_xx, s_xc, v_c = M[:, :E, :E], M[:, :E, E], M[:, E, E]
    P = np.linalg.inv(s_xx)                                    # (K, E, E)
    u = np.einsum("kef,kf->ke", P, s_xc)
    p_diag = np.diagonal(P, axis1=-2, axis2=-1)                # (K, E)
    with np.errstate(invalid="ignore", divide="ignore"):
        if kind == "partial":
            k = np.maximum(v_c - np.einsum("ke,ke->k", s_xc, u), 0.0)
            r = u / np.sqrt(k[:, None] * p_diag + u * u)
        else:
            r = u / np.sqrt(p_diag * v_c[:, None])
    return np.clip(r, -1.0, 1.0)
