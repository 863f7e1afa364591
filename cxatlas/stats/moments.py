"""Additive sufficient statistics ("moments") for the paper's context-expression statistics.

Every statistic of Cowen et al. (2021), Nature 589:251, Methods -- the per-region correlations between each context
and each expression controlling for the other expressions, context prevalence, and the canonical correlation
analysis between expressions and contexts -- depends on the data only through weighted sums of the scores, their
squares and their cross-products, per world region. Those sums add across any partition of the videos, so Spark
executors call :func:`accumulate` / :func:`accumulate_cca` on their batches and the driver adds the partial results
(``+`` / ``+=``) and runs the small algebra in :mod:`cxatlas.stats.correlation` and :mod:`cxatlas.stats.cca`.

Notation: E expressions (16), K contexts (653 or 1,953), R regions (12), B1 = 1 + number of bootstrap replicates
(replicate 0 = the unweighted data; see :mod:`cxatlas.stats.bootstrap`).

Covariance convention: all helpers here divide by the total weight minus ``ddof``; the statistics built on them
(correlations, partial correlations, canonical correlations) are invariant to that scale, and they use ``ddof=0``
(the weighted maximum-likelihood covariance, which is what frequency weights such as Poisson bootstrap counts imply).
Tests that need a sample size (Bartlett) take ``n`` explicitly.

Covariances are formed from raw sums (``sxy / n - mean_x mean_y``). Scores live in [0, 1], so the cancellation
error is of order ``eps * (mean / sd)**2`` and negligible unless a column is nearly constant far from zero; such a
column is treated as constant by the ``rtol`` checks in the consumers.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Iterable, TypeVar

import numpy as np
import scipy.sparse as sp

__all__ = [
    "Moments", "CcaMoments", "CovarianceParts", "accumulate", "accumulate_cca", "covariance_parts",
    "covariance_from_sums", "variance_from_sums", "mean_from_sums", "as_csr", "PREDICTION_FOLDS", "prediction_folds",
]

_S = TypeVar("_S", bound="_AdditiveSums")


class _AdditiveSums:
    """Shared behaviour of sum containers: every field is a float64 array whose first axis is the region."""

    _format: ClassVar[str]

    def _arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    def _check_compatible(self, other: Any) -> None:
        if type(other) is not type(self):
            raise TypeError(f"cannot add {type(other).__name__} to {type(self).__name__}")
        for name, arr in self._arrays().items():
            if getattr(other, name).shape != arr.shape:
                raise ValueError(f"{type(self).__name__}.{name}: shape {arr.shape} vs {getattr(other, name).shape}")

    def __add__(self: _S, other: _S) -> _S:
        self._check_compatible(other)
        return type(self)(**{k: v + getattr(other, k) for k, v in self._arrays().items()})

    def __iadd__(self: _S, other: _S) -> _S:
        self._check_compatible(other)
        for k, v in self._arrays().items():
            v += getattr(other, k)
        return self

    def __neg__(self: _S) -> _S:
        """The sums with every field negated: subtracting a set of videos (incremental statistics) is adding this."""
        return type(self)(**{k: -v for k, v in self._arrays().items()})

    def __sub__(self: _S, other: _S) -> _S:
        return self + (-other)

    def copy(self: _S) -> _S:
        return type(self)(**{k: v.copy() for k, v in self._arrays().items()})

    @classmethod
    def total(cls: type[_S], parts: Iterable[_S]) -> _S:
        """Sum of many partial results (what the Spark driver does after ``collect``), copying only once."""
        it = iter(parts)
        try:
            acc = next(it).copy()
        except StopIteration:
            raise ValueError(f"{cls.__name__}.total needs at least one part") from None
        for part in it:
            acc += part
        return acc

    @property
    def n_regions(self) -> int:
        return int(next(iter(self._arrays().values())).shape[0])

    def to_bytes(self, compress: bool = False) -> bytes:
        """Serialise with ``np.savez`` for transport as a binary column.

        Only regions with a non-zero sum are stored (``_regions``: those of any field), without the CPU cost of
        compression: an executor's batch usually covers few regions. A field that fewer regions fill keeps only its
        own (``_regions_<field>``): the CCA's all-video and full-covariance sums (3.4 MB per region at 653 contexts)
        cost nothing for a region that has none, as in the stored state of incremental statistics, where only the
        regions whose every video is needed have them. ``compress=True`` additionally deflates.
        """
        arrays = self._arrays()
        filled = {k: v.reshape(v.shape[0], -1).any(axis=1) for k, v in arrays.items()}
        present = np.logical_or.reduce(list(filled.values()))
        payload = {"_regions": np.flatnonzero(present).astype(np.int64)}
        for name, arr in arrays.items():
            own = filled[name] if (filled[name] != present).any() else present
            payload[name] = np.ascontiguousarray(arr[own])
            if own is not present:
                payload[f"_regions_{name}"] = np.flatnonzero(own).astype(np.int64)
        payload["_n_regions"] = np.array(self.n_regions, dtype=np.int64)
        payload["_format"] = np.array(self._format)
        buf = io.BytesIO()
        (np.savez_compressed if compress else np.savez)(buf, **payload)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls: type[_S], data: bytes) -> _S:
        """Inverse of :meth:`to_bytes`."""
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            fmt = str(z["_format"])
            if fmt != cls._format:
                raise ValueError(f"payload holds {fmt!r}, expected {cls._format!r}")
            n_regions = int(z["_n_regions"])
            shared = z["_regions"]
            out = {}
            for f in fields(cls):  # type: ignore[arg-type]
                part = z[f.name]
                full = np.zeros((n_regions,) + part.shape[1:], dtype=np.float64)
                own = f"_regions_{f.name}"
                full[z[own] if own in z.files else shared] = part
                out[f.name] = full
        return cls(**out)


@dataclass(eq=False)
class Moments(_AdditiveSums):
    """Weighted per-region, per-replicate sums behind the context-expression correlations.

    Attributes
    ----------
    n : ndarray, shape (R, B1)
        Sum of weights (number of videos for replicate 0).
    sx : ndarray, shape (R, B1, E)
        Sum of weighted expression scores.
    sxx : ndarray, shape (R, B1, E, E)
        Sum of weighted expression cross-products.
    sc : ndarray, shape (R, B1, K)
        Sum of weighted context scores.
    scc : ndarray, shape (R, B1, K)
        Sum of weighted squared context scores (only the diagonal: a partial correlation of one context needs only
        its own variance).
    sxc : ndarray, shape (R, B1, E, K)
        Sum of weighted expression x context products.
    occurred : ndarray, shape (R, K)
        Unweighted count of videos whose context score reached the occurrence threshold (for the paper's minimum
        occurrence filter, which must not fluctuate with bootstrap weights).
    so : ndarray, shape (R, B1, K)
        Weighted count of the same occurrences per replicate (``so[:, 0] == occurred``): the numerator of the
        paper's prevalence, "the proportion of times that the context occurred in each region", so the prevalence
        weights use the same definition of occurrence as the filter and get bootstrap SEs.
    """

    n: np.ndarray
    sx: np.ndarray
    sxx: np.ndarray
    sc: np.ndarray
    scc: np.ndarray
    sxc: np.ndarray
    occurred: np.ndarray
    so: np.ndarray

    _format: ClassVar[str] = "cxatlas.stats.Moments/2"

    @classmethod
    def zeros(cls, n_regions: int, n_boot1: int, n_expr: int, n_ctx: int) -> "Moments":
        """All-zero sums for ``R = n_regions``, ``B1 = n_boot1``, ``E = n_expr``, ``K = n_ctx``."""
        R, B1, E, K = n_regions, n_boot1, n_expr, n_ctx
        return cls(
            n=np.zeros((R, B1)), sx=np.zeros((R, B1, E)), sxx=np.zeros((R, B1, E, E)), sc=np.zeros((R, B1, K)),
            scc=np.zeros((R, B1, K)), sxc=np.zeros((R, B1, E, K)), occurred=np.zeros((R, K)),
            so=np.zeros((R, B1, K)),
        )

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(R, B1, E, K)``."""
        R, B1, E, K = self.sxc.shape
        return R, B1, E, K


@dataclass(eq=False)
class CcaMoments(_AdditiveSums):
    """Per-region sums for the canonical correlation analysis (replicate 0 only, full context covariance).

    The CCA needs the full K x K context covariance, too large to carry per bootstrap replicate; the Spark job feeds
    :func:`accumulate_cca` a balanced subsample (by default 25,000 videos per region, chosen by hash), as the paper
    did for its leave-one-region-out CCA (Cowen et al. 2021, Methods and Extended Data Fig. 3). The paper's
    USA/Canada-trained CCA is fitted on *every* US/Canada video (333,226) instead: regions whose every video is
    needed get their sums in the ``*_all`` fields too (:func:`accumulate_cca` with ``all_videos=True``); they stay
    zero for the others.

    Attributes
    ----------
    n : ndarray, shape (R,)
    sx : ndarray, shape (R, E)
    sc : ndarray, shape (R, K)
    sxx : ndarray, shape (R, E, E)
    sxc : ndarray, shape (R, E, K)
    scc_full : ndarray, shape (R, K, K)
    n_all, sx_all, sc_all, sxx_all, sxc_all, scc_all : the same sums over all videos of the region (or zeros).
    fold_n, fold_sx, fold_sc, fold_sxx, fold_sxc, fold_scc : shapes (R, F), (R, F, E), (R, F, K), (R, F, E, E),
        (R, F, E, K), (R, F, K): the same sums per cross-validation fold over the first videos of the balanced sample
        (``fold_scc`` holds only the diagonal), for Extended Data Fig. 7's tenfold prediction of the context
        annotations from the expressions (:func:`cxatlas.stats.prediction.tenfold_prediction_r`). F is
        :data:`PREDICTION_FOLDS`; zeros when no prediction sample was formed.
    """

    n: np.ndarray
    sx: np.ndarray
    sc: np.ndarray
    sxx: np.ndarray
    sxc: np.ndarray
    scc_full: np.ndarray
    n_all: np.ndarray
    sx_all: np.ndarray
    sc_all: np.ndarray
    sxx_all: np.ndarray
    sxc_all: np.ndarray
    scc_all: np.ndarray

    fold_n: np.ndarray
    fold_sx: np.ndarray
    fold_sc: np.ndarray
    fold_sxx: np.ndarray
    fold_sxc: np.ndarray
    fold_scc: np.ndarray

    _format: ClassVar[str] = "cxatlas.stats.CcaMoments/3"
    _SAMPLE_FIELDS: ClassVar[tuple[str, ...]] = ("n", "sx", "sc", "sxx", "sxc", "scc_full")
    _ALL_FIELDS: ClassVar[tuple[str, ...]] = ("n_all", "sx_all", "sc_all", "sxx_all", "sxc_all", "scc_all")
    _FOLD_FIELDS: ClassVar[tuple[str, ...]] = ("fold_n", "fold_sx", "fold_sc", "fold_sxx", "fold_sxc", "fold_scc")

    @classmethod
    def zeros(cls, n_regions: int, n_expr: int, n_ctx: int) -> "CcaMoments":
        R, E, K = n_regions, n_expr, n_ctx
        one = dict(n=np.zeros(R), sx=np.zeros((R, E)), sc=np.zeros((R, K)), sxx=np.zeros((R, E, E)),
                   sxc=np.zeros((R, E, K)), scc_full=np.zeros((R, K, K)))
        return cls(**one, **{a: np.zeros_like(one[s]) for s, a in zip(cls._SAMPLE_FIELDS, cls._ALL_FIELDS)},
                   **_zero_folds(R, E, K))

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(R, E, K)``."""
        R, E, K = self.sxc.shape
        return R, E, K

    def all_videos(self) -> "CcaMoments":
        """A view whose sample sums are the ``*_all`` sums (for fits that use every video of a region)."""
        arrays = {a: getattr(self, a) for a in self._ALL_FIELDS}
        return CcaMoments(**{s: arrays[a] for s, a in zip(self._SAMPLE_FIELDS, self._ALL_FIELDS)}, **arrays,
                          **{f: getattr(self, f) for f in self._FOLD_FIELDS})

    def select_contexts(self, keep: np.ndarray) -> "CcaMoments":
        """The sums restricted to the contexts ``keep`` (a boolean mask of length K or an index array)."""
        out = {}
        for group in (self._SAMPLE_FIELDS, self._ALL_FIELDS):
            n, sx, sc, sxx, sxc, scc = (getattr(self, f) for f in group)
            out.update(zip(group, (n, sx, sc[:, keep], sxx, sxc[:, :, keep], scc[:, keep][:, :, keep])))
        out.update(fold_n=self.fold_n, fold_sx=self.fold_sx, fold_sc=self.fold_sc[:, :, keep], fold_sxx=self.fold_sxx,
                   fold_sxc=self.fold_sxc[:, :, :, keep], fold_scc=self.fold_scc[:, :, keep])
        return CcaMoments(**out)


#: Extended Data Fig. 7: "tenfold ordinary least squares linear regression".
PREDICTION_FOLDS = 10


def _zero_folds(R: int, E: int, K: int) -> dict[str, np.ndarray]:
    F = PREDICTION_FOLDS
    return dict(fold_n=np.zeros((R, F)), fold_sx=np.zeros((R, F, E)), fold_sc=np.zeros((R, F, K)),
                fold_sxx=np.zeros((R, F, E, E)), fold_sxc=np.zeros((R, F, E, K)), fold_scc=np.zeros((R, F, K)))


def prediction_folds(n_rows: int, per_region: int) -> np.ndarray:
    """Fold of each row of a region's balanced sample (rows in sample-key order): the first ``per_region`` rows are
    dealt round-robin into :data:`PREDICTION_FOLDS` folds, the rest get -1 (not in the prediction sample)."""
    idx = np.arange(n_rows)
    return np.where(idx < per_region, idx % PREDICTION_FOLDS, -1)


def _accumulate_folds(out: CcaMoments, X: np.ndarray, C: sp.csr_matrix, region: np.ndarray, folds: np.ndarray,
                      w: np.ndarray) -> None:
    """Add the rows with a fold (>= 0) to ``out``'s per-fold sums of their region."""
    if folds.shape != (X.shape[0],):
        raise ValueError(f"folds must be ({X.shape[0]},), got {folds.shape}")
    for r, f in {(int(a), int(b)) for a, b in zip(region[folds >= 0], folds[folds >= 0])}:
        rows = np.flatnonzero((region == r) & (folds == f))
        Xr, wr, Cr = X[rows], w[rows], C[rows]
        out.fold_n[r, f] += wr.sum()
        out.fold_sx[r, f] += wr @ Xr
        out.fold_sc[r, f] += Cr.T @ wr
        out.fold_sxx[r, f] += (Xr * wr[:, None]).T @ Xr
        out.fold_sxc[r, f] += (Cr.T @ (Xr * wr[:, None])).T
        out.fold_scc[r, f] += np.asarray(Cr.multiply(Cr).T @ wr).ravel()


def as_csr(C: Any, n_rows: int | None = None) -> sp.csr_matrix:
    """Context scores as a float64 CSR matrix (accepts any scipy sparse matrix or a dense array)."""
    out = sp.csr_matrix(C, dtype=np.float64)
    if n_rows is not None and out.shape[0] != n_rows:
        raise ValueError(f"C has {out.shape[0]} rows, expected {n_rows}")
    if out.nnz and not np.all(np.isfinite(out.data)):
        raise ValueError("context scores must be finite")
    out.sum_duplicates()
    return out


def _check_inputs(X: np.ndarray, region: np.ndarray, n_regions: int) -> tuple[np.ndarray, np.ndarray]:
    X = np.ascontiguousarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be (n, E), got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("expression scores must be finite (drop or impute missing rows before accumulating)")
    region = np.asarray(region)
    if region.shape != (X.shape[0],):
        raise ValueError(f"region must be ({X.shape[0]},), got {region.shape}")
    if region.dtype.kind not in "iu":
        raise TypeError(f"region must hold integer codes, got {region.dtype}")
    region = region.astype(np.int64)
    if region.size and (region.min() < 0 or region.max() >= n_regions):
        raise ValueError(f"region codes must lie in [0, {n_regions})")
    return X, region


def _region_blocks(region: np.ndarray, n_regions: int) -> tuple[np.ndarray, np.ndarray]:
    """A stable order grouping rows by region and the block boundaries (``bounds[r]:bounds[r+1]``)."""
    order = np.argsort(region, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(region, minlength=n_regions))])
    return order, bounds


def _occurrence_counts(C: sp.csr_matrix, threshold: float) -> np.ndarray:
    """Per-column count of rows with value >= threshold, counting implicit zeros when ``threshold <= 0``."""
    return _weighted_occurrences(C, threshold, np.ones((C.shape[0], 1)))[0]


def _weighted_occurrences(C: sp.csr_matrix, threshold: float, W: np.ndarray) -> np.ndarray:
    """``(B1, K)``: per replicate, the summed weight of the rows whose value in the column is >= ``threshold``.

    Implicit zeros occur too when ``threshold <= 0``; then the count is every row's weight minus the weight of the
    stored values below the threshold.
    """
    below = threshold <= 0
    hit = (C.data < threshold) if below else (C.data >= threshold)
    ind = sp.csr_matrix((hit.astype(np.float64), C.indices, C.indptr), shape=C.shape)
    out = np.asarray((ind.T @ W).T)
    if below:
        out = W.sum(axis=0)[:, None] - out
    return out


def accumulate(X: np.ndarray, C: Any, region: np.ndarray, weights: np.ndarray | None, n_regions: int,
               occur_threshold: float = 0.5, chunk_rows: int = 4096) -> Moments:
    """Per-region, per-replicate weighted sums of one batch of videos.

    Parameters
    ----------
    X : ndarray, shape (n, E)
        Expression scores of each video.
    C : scipy.sparse matrix (CSR preferred) or ndarray, shape (n, K)
        Context scores; most are zero, so the products below are sparse-dense and cost O(nnz * B1 * E).
    region : ndarray of int, shape (n,)
        Region code of each video, in ``[0, n_regions)``.
    weights : ndarray, shape (n, B1), or None
        Bootstrap weights with column 0 all ones (:func:`cxatlas.stats.bootstrap.poisson_weights`); ``None`` means
        replicate 0 only (``B1 = 1``).
    n_regions : int
        ``R``.
    occur_threshold : float
        A context "occurred" in a video when its score is ``>= occur_threshold`` (counted unweighted in
        ``occurred``, weighted per replicate in ``so``).
    chunk_rows : int
        Rows per sparse-dense product; bounds the ``chunk_rows x B1 x E`` temporary (27 MB at 4,096 x 51 x 16).

    Returns
    -------
    Moments
        Sums with shapes ``(R, B1, ...)``; add the results of several batches with ``+``.
    """
    X, region = _check_inputs(X, region, n_regions)
    n, E = X.shape
    C = as_csr(C, n)
    K = C.shape[1]
    W = np.ones((n, 1)) if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] != n:
        raise ValueError(f"weights must be (n={n}, B1), got {W.shape}")
    B1 = W.shape[1]
    out = Moments.zeros(n_regions, B1, E, K)
    if n == 0:
        return out
    order, bounds = _region_blocks(region, n_regions)
    X, W, C = X[order], W[order], C[order]
    C2 = sp.csr_matrix((C.data * C.data, C.indices, C.indptr), shape=C.shape)
    XX = (X[:, :, None] * X[:, None, :]).reshape(n, E * E)
    sxc_kbe = np.zeros((K, B1 * E))  # per region, in the layout the sparse product yields
    for r in range(n_regions):
        lo, hi = int(bounds[r]), int(bounds[r + 1])
        if lo == hi:
            continue
        Wr = W[lo:hi]
        out.n[r] = Wr.sum(axis=0)
        out.sx[r] = Wr.T @ X[lo:hi]
        out.sxx[r] = (Wr.T @ XX[lo:hi]).reshape(B1, E, E)
        Cr = C[lo:hi]
        out.sc[r] = (Cr.T @ Wr).T
        out.scc[r] = (C2[lo:hi].T @ Wr).T
        out.so[r] = _weighted_occurrences(Cr, occur_threshold, Wr)
        out.occurred[r] = _occurrence_counts(Cr, occur_threshold)
        sxc_kbe[:] = 0.0
        for a in range(lo, hi, chunk_rows):
            b = min(a + chunk_rows, hi)
            WX = (W[a:b, :, None] * X[a:b, None, :]).reshape(b - a, B1 * E)
            sxc_kbe += C[a:b].T @ WX
        out.sxc[r] = sxc_kbe.reshape(K, B1, E).transpose(1, 2, 0)
    return out


def accumulate_cca(X: np.ndarray, C: Any, region: np.ndarray, n_regions: int,
                   weight: np.ndarray | None = None, all_videos: bool = False,
                   folds: np.ndarray | None = None) -> CcaMoments:
    """Per-region sums, including the full context cross-product matrix, for the CCA.

    Parameters
    ----------
    X : ndarray, shape (n, E)
    C : scipy.sparse matrix or ndarray, shape (n, K)
    region : ndarray of int, shape (n,)
    n_regions : int
    weight : ndarray, shape (n,), optional
        Per-video weight (e.g. to re-balance regions); default 1.
    all_videos : bool
        False: fill the (balanced-sample) sums ``n, sx, ...``. True: fill the ``*_all`` sums instead (the rows are
        all videos of their region; see :class:`CcaMoments`).
    folds : ndarray of int, shape (n,), optional
        Cross-validation fold of each row (:func:`prediction_folds`; -1: none): fills the ``fold_*`` sums.

    Returns
    -------
    CcaMoments
    """
    X, region = _check_inputs(X, region, n_regions)
    n, E = X.shape
    C = as_csr(C, n)
    K = C.shape[1]
    w = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weight must be ({n},), got {w.shape}")
    out = CcaMoments.zeros(n_regions, E, K)
    if n == 0:
        return out
    o_n, o_sx, o_sc, o_sxx, o_sxc, o_scc = (getattr(out, f) for f in (
        CcaMoments._ALL_FIELDS if all_videos else CcaMoments._SAMPLE_FIELDS))
    if folds is not None:
        _accumulate_folds(out, X, C, region, np.asarray(folds, dtype=np.int64), w)
    order, bounds = _region_blocks(region, n_regions)
    X, w, C = X[order], w[order], C[order]
    for r in range(n_regions):
        lo, hi = int(bounds[r]), int(bounds[r + 1])
        if lo == hi:
            continue
        Xr, wr, Cr = X[lo:hi], w[lo:hi], C[lo:hi]
        WXr = Xr * wr[:, None]
        o_n[r] = wr.sum()
        o_sx[r] = wr @ Xr
        o_sc[r] = Cr.T @ wr
        o_sxx[r] = WXr.T @ Xr
        o_sxc[r] = (Cr.T @ WXr).T
        o_scc[r] = (Cr.T @ sp.diags(wr) @ Cr).toarray()
    return out


# ----------------------------------------------------------------------------------------------------------------
# From sums to means and covariances
# ----------------------------------------------------------------------------------------------------------------

def mean_from_sums(n: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``s / n`` broadcast over the trailing axis of ``s``; NaN where ``n == 0``.

    Parameters
    ----------
    n : ndarray, shape (...)
    s : ndarray, shape (..., P)
    """
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n[..., None] > 0, s / n[..., None], np.nan)


def covariance_from_sums(n: np.ndarray, sx: np.ndarray, sy: np.ndarray, sxy: np.ndarray,
                         ddof: float = 0.0) -> np.ndarray:
    """Weighted covariance ``(sxy - sx sy^T / n) / (n - ddof)`` from sums.

    Parameters
    ----------
    n : ndarray, shape (...)
        Total weight.
    sx : ndarray, shape (..., P)
    sy : ndarray, shape (..., Q)
    sxy : ndarray, shape (..., P, Q)
    ddof : float
        0 (default) gives the weighted maximum-likelihood covariance; 1 the unbiased one for frequency weights.

    Returns
    -------
    ndarray, shape (..., P, Q); NaN where ``n - ddof <= 0``.
    """
    n = np.asarray(n, dtype=np.float64)[..., None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = (sxy - sx[..., :, None] * sy[..., None, :] / n) / (n - ddof)
    return np.where((n - ddof > 0) & (n > 0), cov, np.nan)


def variance_from_sums(n: np.ndarray, s: np.ndarray, ss: np.ndarray, ddof: float = 0.0) -> np.ndarray:
    """Elementwise weighted variance ``(ss - s**2 / n) / (n - ddof)``, clipped at 0 (rounding can go negative).

    Parameters
    ----------
    n : ndarray, shape (...)
    s, ss : ndarray, shape (..., P)
        Sums of values and of squared values.

    Returns
    -------
    ndarray, shape (..., P); NaN where ``n - ddof <= 0``.
    """
    n = np.asarray(n, dtype=np.float64)[..., None]
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.maximum((ss - s * s / n) / (n - ddof), 0.0)
    return np.where((n - ddof > 0) & (n > 0), var, np.nan)


@dataclass(eq=False)
class CovarianceParts:
    """Means and (co)variances derived from :class:`Moments`, per region and replicate.

    Attributes
    ----------
    n : (R, B1)
    mean_x : (R, B1, E)
    mean_c : (R, B1, K)
    cov_xx : (R, B1, E, E)
    var_c : (R, B1, K)
    cov_xc : (R, B1, E, K)
    ddof : float
    """

    n: np.ndarray
    mean_x: np.ndarray
    mean_c: np.ndarray
    cov_xx: np.ndarray
    var_c: np.ndarray
    cov_xc: np.ndarray
    ddof: float


def covariance_parts(m: Moments, ddof: float = 0.0) -> CovarianceParts:
    """Turn :class:`Moments` sums into means and covariances (dividing by total weight minus ``ddof``).

    Parameters
    ----------
    m : Moments
    ddof : float
        See :func:`covariance_from_sums`. Correlation-type statistics do not depend on it.

    Returns
    -------
    CovarianceParts
    """
    return CovarianceParts(
        n=m.n,
        mean_x=mean_from_sums(m.n, m.sx),
        mean_c=mean_from_sums(m.n, m.sc),
        cov_xx=covariance_from_sums(m.n, m.sx, m.sx, m.sxx, ddof),
        var_c=variance_from_sums(m.n, m.sc, m.scc, ddof),
        cov_xc=covariance_from_sums(m.n, m.sx, m.sc, m.sxc, ddof),
        ddof=ddof,
    )
