"""Principal preserved components (PPCA) and generalized PPCA (G-PPCA), as pure numpy/scipy.

Brooks et al. (2024), iScience (STAR Methods), ask which dimensions of meaning attributed to facial expressions are
*shared* between cultures, not merely which dimensions vary within one culture. PCA of one dataset finds the
directions of largest variance, which may be idiosyncratic noise of that dataset; PPCA instead finds the linear
combinations of attributes whose projections *covary* most across two datasets rated on the same stimuli, so a
component can only score high if both datasets express it. G-PPCA extends this to three or more datasets by
maximising the sum of pairwise covariances.

The pipeline implemented here, in the order :func:`ppca` runs it:

1. :func:`fit_components` -- the eigenvectors of the symmetrised (summed pairwise) cross-covariance, unit norm, sign
   fixed so the largest-|loading| entry is positive, ordered by eigenvalue (= covariance of the projections).
2. :func:`loo_scores` -- leave-one-stimulus-out: fit on n - 1 stimuli, project the held-out stimulus. All n folds
   are rank-one downdates of one scatter matrix, solved by batched ``eigh`` on p x p matrices.
3. :func:`cv_correlations` -- per component the partial Spearman correlation of the held-out scores of two
   datasets, controlling for the earlier components' held-out scores (mean over pairs for G-PPCA).
4. :func:`bootstrap_cv_correlations` -- resample stimuli with replacement, recompute the statistic of step 3, and
   turn the bootstrap distribution into one-sided p-values and a signal-to-noise ratio (mean / sd).
5. :func:`bh_qvalues`, :func:`forward_stop` and the SNR threshold decide which components are kept.
6. :func:`varimax` rotates the kept loadings towards simple structure for interpretation, and
   :func:`bootstrap_loadings` gives per-attribute p-values and SNRs of the rotated loadings.

Nothing here imports pyspark or torch; the datasets are small (stimuli x attributes) in-memory arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Literal, Sequence

import numpy as np
import scipy.optimize
import scipy.stats

from .tests import bh_qvalues

__all__ = [
    "PpcaResult", "ppca", "validate_datasets", "cross_covariance", "fit_components", "loo_scores",
    "partial_spearman", "cv_correlations", "bootstrap_cv_correlations", "bootstrap_pvalues", "snr_ratio",
    "bh_qvalues", "forward_stop", "keep_components", "varimax", "bootstrap_loadings",
]

_JITTER = 1e-9  # added to the diagonal of rank-correlation matrices so collinear controls stay factorable


# ----------------------------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------------------------
def validate_datasets(datasets: Sequence[np.ndarray], *, min_datasets: int = 2) -> list[np.ndarray]:
    """Check and convert the datasets to float64 arrays of one common shape.

    Why: every later step assumes rows are the *same* stimuli in the same order and columns are the *same*
    attributes; a silent broadcast or a NaN would give plausible-looking but meaningless components.

    Parameters
    ----------
    datasets : sequence of array_like, each shape (n, p)
        Stimuli x attributes, rows matched by stimulus.
    min_datasets : int
        Fewest datasets accepted (2 for PPCA).

    Returns
    -------
    list of ndarray, each (n, p), float64

    Raises
    ------
    ValueError
        Fewer than ``min_datasets`` datasets, a dataset that is not 2-D, shapes that differ, fewer than 3 stimuli,
        no attributes, or non-finite values.
    """
    if isinstance(datasets, np.ndarray) and datasets.ndim == 2:
        raise ValueError("datasets must be a sequence of 2-D arrays (one per dataset), not a single 2-D array")
    arrays = [np.asarray(d, dtype=np.float64) for d in datasets]
    if len(arrays) < min_datasets:
        raise ValueError(f"PPCA needs at least {min_datasets} datasets, got {len(arrays)}")
    for i, a in enumerate(arrays):
        if a.ndim != 2:
            raise ValueError(f"dataset {i} must be 2-D (stimuli x attributes), got shape {a.shape}")
    shape = arrays[0].shape
    for i, a in enumerate(arrays[1:], start=1):
        if a.shape != shape:
            raise ValueError(f"dataset {i} has shape {a.shape} but dataset 0 has shape {shape}: all datasets need "
                             "the same stimuli (rows, matched by stimulus) and the same attributes (columns)")
    n, p = shape
    if n < 3:
        raise ValueError(f"PPCA needs at least 3 stimuli (rows) for leave-one-out cross-validation, got {n}")
    if p < 1:
        raise ValueError("datasets have no attributes (columns)")
    for i, a in enumerate(arrays):
        bad = ~np.isfinite(a)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise ValueError(f"dataset {i} has {int(bad.sum())} non-finite values (first at row {r}, column {c}); "
                             "drop or impute them before PPCA")
    return arrays


# ----------------------------------------------------------------------------------------------------------------
# components
# ----------------------------------------------------------------------------------------------------------------
def _pair_sum(centered: Sequence[np.ndarray], weights: np.ndarray | None = None) -> np.ndarray:
    """``sum_{i<j} (D_i' W D_j + D_j' W D_i) / 2`` for centred datasets, symmetric p x p (no normalisation)."""
    m = len(centered)
    wd = centered if weights is None else [d * weights[:, None] for d in centered]
    if m * (m - 1) // 2 <= m + 1:  # 2 or 3 datasets: the pairs directly
        s = sum(centered[i].T @ wd[j] for i, j in combinations(range(m), 2))
    else:  # sum_{i<j} D_i'WD_j + D_j'WD_i = T'WT - sum_i D_i'WD_i, T = sum_i D_i: m + 1 products, not m(m-1)/2
        s = 0.5 * (sum(centered).T @ sum(wd) - sum(d.T @ w for d, w in zip(centered, wd)))
    return 0.5 * (s + s.T)


def cross_covariance(datasets: Sequence[np.ndarray]) -> np.ndarray:
    """Symmetrised cross-covariance, summed over pairs of datasets.

    For two datasets ``S = (X'Y + Y'X) / (2 (n - 1))`` of the column-demeaned data; for more, the sum of this over
    all pairs ``i < j``. Why symmetrised: ``u'X'Yu = u'Y'Xu``, so the covariance of the two projections onto ``u``
    is the quadratic form of the symmetric part, whose eigenvectors are therefore the stationary points of the
    preserved covariance on the unit sphere.

    Parameters
    ----------
    datasets : sequence of ndarray, each (n, p)

    Returns
    -------
    ndarray, (p, p), symmetric
    """
    arrays = validate_datasets(datasets)
    n = arrays[0].shape[0]
    centered = [a - a.mean(axis=0) for a in arrays]
    return _pair_sum(centered) / (n - 1)


def _sign_fix(vecs: np.ndarray) -> np.ndarray:
    """Flip each column so its largest-|loading| entry is positive (first such entry on exact ties)."""
    if vecs.size == 0:
        return vecs
    idx = np.argmax(np.abs(vecs), axis=0)
    signs = np.sign(vecs[idx, np.arange(vecs.shape[1])])
    signs[signs == 0] = 1.0
    return vecs * signs


def _eigh_desc(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` eigenpairs of a symmetric matrix (or a stack), eigenvalues descending."""
    vals, vecs = np.linalg.eigh(s)
    return vals[..., ::-1][..., :k], vecs[..., :, ::-1][..., :k]


def fit_components(datasets: Sequence[np.ndarray], n_components: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Principal preserved components: eigenvectors of :func:`cross_covariance`.

    With two datasets these are the PPCs of Brooks et al. (2024); with three or more they are the G-PPCs, which
    maximise the sum of pairwise covariances of the projections. With identical datasets they reduce to PCA.

    Parameters
    ----------
    datasets : sequence of ndarray, each (n, p)
    n_components : int, optional
        How many components to return (default: all p).

    Returns
    -------
    loadings : ndarray, (p, k)
        Unit-norm columns, ordered by eigenvalue descending, sign fixed so each column's largest-|loading| entry is
        positive (a convention: an eigenvector's sign is arbitrary).
    covariances : ndarray, (k,)
        Eigenvalues: the covariance of two datasets' projections on each component (for G-PPCA, the sum over pairs).
        Can be negative for the trailing components (anti-preserved directions).
    """
    s = cross_covariance(datasets)
    k = s.shape[0] if n_components is None else _check_k(n_components, s.shape[0])
    vals, vecs = _eigh_desc(s, k)
    return _sign_fix(vecs), vals


def _check_k(k: int, p: int) -> int:
    if not 1 <= int(k) <= p:
        raise ValueError(f"n_components must be between 1 and the number of attributes ({p}), got {k}")
    return int(k)


def _align_signs(vecs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Flip columns of ``vecs`` (..., p, k) so each has a non-negative dot product with the reference (p, k)."""
    dots = np.einsum("...pk,pk->...k", vecs, reference)
    signs = np.where(dots < 0, -1.0, 1.0)
    return vecs * signs[..., None, :]


def loo_scores(datasets: Sequence[np.ndarray], n_components: int | None = None, *,
               reference: np.ndarray | None = None, chunk: int | None = None) -> np.ndarray:
    """Leave-one-stimulus-out held-out projections.

    For each stimulus ``s`` the components are refitted on the other ``n - 1`` stimuli (their own means), and the
    held-out row of every dataset, centred by the training means, is projected on them. Why: in-sample covariance of
    the top components is positive even for independent datasets (the eigen-decomposition fits the noise), so
    whether a component is *preserved* must be judged on stimuli that did not shape it.

    Efficiency: removing stimulus ``s`` from the centred scatter ``C_ij = D_i'D_j`` gives
    ``C_ij - n/(n-1) d_is d_js'`` (``d_is`` the row of ``D_i``), so all folds are downdates of one p x p matrix and
    are solved with batched ``eigh``; the held-out row centred by the training mean is ``n/(n-1) d_is``.

    Parameters
    ----------
    datasets : sequence of ndarray, each (n, p)
    n_components : int, optional
        Components to keep per fold (default: all p).
    reference : ndarray (p, >= k), optional
        Full-data loadings the fold components are sign-aligned to (default: :func:`fit_components`). Fold
        components are taken in eigenvalue order; only their sign is aligned (by the sign of the dot product with
        the reference), because a flipped sign in one fold would scramble the ranks of the held-out scores.
    chunk : int, optional
        Folds per batched ``eigh`` (default: about 4 million matrix entries per batch).

    Returns
    -------
    ndarray, (m, n, k)
        ``scores[i, s, c]``: held-out projection of stimulus ``s`` of dataset ``i`` on fold-``s`` component ``c``.
    """
    arrays = validate_datasets(datasets)
    n, p = arrays[0].shape
    k = p if n_components is None else _check_k(n_components, p)
    if reference is None:
        reference = fit_components(arrays, k)[0]
    reference = np.asarray(reference, dtype=np.float64)[:, :k]
    centered = [a - a.mean(axis=0) for a in arrays]
    full = _pair_sum(centered)
    d = np.stack(centered)  # (m, n, p)
    m = d.shape[0]
    factor = n / (n - 1)
    chunk = chunk or max(1, 4_000_000 // max(1, p * p))
    out = np.empty((m, n, k))
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        rows = d[:, sl, :]  # (m, b, p)
        if m == 2:
            down = np.einsum("bp,bq->bpq", rows[0], rows[1])
        else:  # sum_{i<j} d_i d_j' = (t t' - sum_i d_i d_i') / 2
            t = rows.sum(axis=0)
            down = 0.5 * (np.einsum("bp,bq->bpq", t, t) - np.einsum("mbp,mbq->bpq", rows, rows))
        down = 0.5 * (down + np.swapaxes(down, 1, 2))
        _, vecs = _eigh_desc(full[None] - factor * down, k)  # (b, p, k)
        vecs = _align_signs(vecs, reference)
        out[:, sl, :] = factor * np.einsum("mbp,bpk->mbk", rows, vecs)
    return out


# ----------------------------------------------------------------------------------------------------------------
# partial Spearman correlations (weighted, so a bootstrap resample is a vector of counts)
# ----------------------------------------------------------------------------------------------------------------
class _Ranker:
    """Average ranks of the columns of a fixed matrix under integer resampling weights.

    Why: a bootstrap resample repeats stimuli, and copies of one stimulus tie with each other. The average rank of
    original row ``r`` in the resample is ``(weight of rows with smaller values) + (weight of rows with equal
    values + 1) / 2``, a cumulative sum over the once-sorted column: O(n) per column and resample instead of a sort.
    With unit weights this is ``scipy.stats.rankdata(method="average")``.
    """

    def __init__(self, values: np.ndarray):
        n, c = values.shape
        self.order = np.argsort(values, axis=0, kind="stable")
        self.inverse = np.empty_like(self.order)
        np.put_along_axis(self.inverse, self.order, np.arange(n)[:, None].repeat(c, axis=1), axis=0)
        srt = np.take_along_axis(values, self.order, axis=0)
        new_group = np.ones((n, c), dtype=bool)
        new_group[1:] = srt[1:] != srt[:-1]
        pos = np.arange(n)[:, None]
        # first and one-past-last sorted position of each entry's tie group
        self.first = np.maximum.accumulate(np.where(new_group, pos, 0), axis=0)
        ends = np.where(np.vstack([new_group[1:], np.ones((1, c), dtype=bool)]), pos + 1, n)
        self.end = np.minimum.accumulate(ends[::-1], axis=0)[::-1]
        self.ties = bool((~new_group[1:]).any())

    def ranks(self, weights: np.ndarray) -> np.ndarray:
        ws = weights[self.order]  # (n, c) weights in sorted order
        cum = np.zeros((ws.shape[0] + 1, ws.shape[1]))
        np.cumsum(ws, axis=0, out=cum[1:])
        if self.ties:
            before = np.take_along_axis(cum, self.first, axis=0)
            group = np.take_along_axis(cum, self.end, axis=0) - before
        else:
            before, group = cum[:-1], ws
        return np.take_along_axis(before + (group + 1.0) / 2.0, self.inverse, axis=0)


def _pair_columns(m: int, k: int) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Pairs ``i < j`` and, per pair, the interleaved column indices ``[i0, j0, i1, j1, ...]`` into (n, m*k)."""
    pairs = list(combinations(range(m), 2))
    idx = np.array([[a * k + c if t == 0 else b * k + c for c in range(k) for t in (0, 1)] for a, b in pairs])
    return pairs, idx


def _sequential_partials(gram: np.ndarray, idx: np.ndarray, n_eff: float) -> np.ndarray:
    """Partial correlations of interleaved pairs given all earlier pairs, from one weighted Gram matrix.

    For variables ordered ``a_0, b_0, a_1, b_1, ...`` the Schur complement of the first ``2c`` variables in the
    first ``2c + 2`` is the 2 x 2 lower-right block ``L_c L_c'`` of the Cholesky factor, so every component's
    partial correlation ``corr(a_c, b_c | a_<c, b_<c)`` is ``l10 / sqrt(l10^2 + l11^2)`` from one factorisation.

    Returns
    -------
    ndarray, (pairs, k)
    """
    n_pairs, two_k = idx.shape
    k = two_k // 2
    d = np.diag(gram)
    ok = d > 1e-12 * max(float(d.max()), 1e-300)
    inv_sd = np.where(ok, 1.0 / np.sqrt(np.where(ok, d, 1.0)), 0.0)
    corr = gram * inv_sd[:, None] * inv_sd[None, :]
    np.fill_diagonal(corr, 1.0)  # a constant control is uncorrelated with everything: controlling for it is a no-op
    sub = corr[idx[:, :, None], idx[:, None, :]] + _JITTER * np.eye(two_k)
    try:
        chol = np.linalg.cholesky(sub)
    except np.linalg.LinAlgError:  # only with non-finite input
        return np.full((n_pairs, k), np.nan)
    c = np.arange(k)
    l10 = chol[:, 2 * c + 1, 2 * c]
    l11 = chol[:, 2 * c + 1, 2 * c + 1]
    out = l10 / np.sqrt(l10 * l10 + l11 * l11)
    bad = ~(ok[idx[:, 0::2]] & ok[idx[:, 1::2]])
    out[bad] = np.nan
    # a partial correlation given 2c controls has n - 2 - 2c residual degrees of freedom
    out[:, n_eff - 2 - 2 * c < 1] = np.nan
    return np.clip(out, -1.0, 1.0)


def _weighted_gram(ranks: np.ndarray, weights: np.ndarray) -> np.ndarray:
    total = weights.sum()
    centred = ranks - (weights @ ranks) / total
    return (centred * weights[:, None]).T @ centred


def partial_spearman(a: np.ndarray, b: np.ndarray, controls: np.ndarray | None = None) -> float:
    """Spearman correlation of ``a`` and ``b`` with the ranked ``controls`` partialled out of both.

    Rank-transform every variable (average ranks), regress ``a`` and ``b`` on the ranked controls (with an
    intercept) and correlate the residuals. Why ranks: held-out scores are heavy-tailed for skewed rating data and a
    few extreme stimuli should not decide whether a dimension is preserved.

    Parameters
    ----------
    a, b : ndarray, (n,)
    controls : ndarray, (n,) or (n, c), optional

    Returns
    -------
    float
        NaN when ``a`` or ``b`` is constant or there are fewer than one residual degree of freedom.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    z = np.empty((a.size, 0)) if controls is None else np.asarray(controls, dtype=np.float64).reshape(a.size, -1)
    if b.size != a.size:
        raise ValueError(f"a and b must have the same length, got {a.size} and {b.size}")
    if a.size - 2 - z.shape[1] < 1:
        return float("nan")
    design = np.column_stack([np.ones(a.size), scipy.stats.rankdata(z, axis=0)]) if z.shape[1] else np.ones((a.size, 1))
    ra = scipy.stats.rankdata(a)
    rb = scipy.stats.rankdata(b)
    res = [r - design @ np.linalg.lstsq(design, r, rcond=None)[0] for r in (ra, rb)]
    den = np.sqrt((res[0] @ res[0]) * (res[1] @ res[1]))
    return float(res[0] @ res[1] / den) if den > 1e-12 * a.size ** 3 else float("nan")


def _cv_stat(ranker: _Ranker, idx: np.ndarray, weights: np.ndarray) -> np.ndarray:
    ranks = ranker.ranks(weights)
    gram = _weighted_gram(ranks, weights)
    return _sequential_partials(gram, idx, float(weights.sum())).mean(axis=0)


def cv_correlations(scores: np.ndarray) -> np.ndarray:
    """Cross-validated preserved-component correlations from held-out scores.

    Per component ``c`` and pair of datasets ``(i, j)``: the partial Spearman correlation across stimuli of the
    held-out scores ``scores[i, :, c]`` and ``scores[j, :, c]``, controlling for both datasets' held-out scores on
    components ``< c``; for G-PPCA the mean over pairs. Why partial: held-out projections on different components are
    not exactly uncorrelated, and without the control a strong first component would lend its agreement to the next.

    Parameters
    ----------
    scores : ndarray, (m, n, k)
        From :func:`loo_scores`.

    Returns
    -------
    ndarray, (k,)
        NaN where undefined (a constant score, or ``n - 2 - 2c < 1``).
    """
    scores = np.asarray(scores, dtype=np.float64)
    m, n, k = scores.shape
    _, idx = _pair_columns(m, k)
    ranker = _Ranker(scores.transpose(1, 0, 2).reshape(n, m * k))
    return _cv_stat(ranker, idx, np.ones(n))


# ----------------------------------------------------------------------------------------------------------------
# bootstrap, p-values, stopping rules
# ----------------------------------------------------------------------------------------------------------------
def _resample_counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Counts of each stimulus in ``resamples`` draws of n stimuli with replacement, shape (resamples, n)."""
    draws = rng.integers(0, n, size=(resamples, n))
    counts = np.zeros((resamples, n), dtype=np.float64)
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1.0)
    return counts


def bootstrap_cv_correlations(scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Bootstrap distribution of :func:`cv_correlations`: stimuli resampled with replacement.

    The statistic is recomputed on each resample of the *held-out* scores (the resample's copies of a stimulus tie
    in the ranks). Choice, and why: the cross-validated correlation is what says a component generalises; resampling
    the held-out scores captures its sampling variability over stimuli. Refitting all n folds per resample would cost
    ``resamples * n`` eigendecompositions and, worse, duplicated stimuli would leak a held-out stimulus into its own
    training fold; the in-sample covariance is no alternative because it is positive even for independent data.
    The price: the variability of the fold fits themselves is not in the bootstrap distribution, which matters for
    near-degenerate noise components (see :func:`keep_components`).

    Parameters
    ----------
    scores : ndarray, (m, n, k)
    counts : ndarray, (resamples, n)
        Multiplicity of each stimulus in each resample (rows sum to n).

    Returns
    -------
    ndarray, (resamples, k)
    """
    scores = np.asarray(scores, dtype=np.float64)
    m, n, k = scores.shape
    _, idx = _pair_columns(m, k)
    ranker = _Ranker(scores.transpose(1, 0, 2).reshape(n, m * k))
    return np.stack([_cv_stat(ranker, idx, w) for w in np.asarray(counts, dtype=np.float64)])


def bootstrap_pvalues(boot: np.ndarray) -> np.ndarray:
    """One-sided bootstrap p-values that the statistic exceeds zero: ``(1 + #{b <= 0}) / (1 + B)`` per column.

    The +1 correction keeps p > 0 (a finite bootstrap cannot prove p = 0). NaN resamples count as ``<= 0``.
    """
    boot = np.asarray(boot, dtype=np.float64)
    fails = ~(boot > 0)
    return (1.0 + fails.sum(axis=0)) / (1.0 + boot.shape[0])


def snr_ratio(boot: np.ndarray) -> np.ndarray:
    """Signal-to-noise ratio per column of a bootstrap distribution: ``mean / sd`` (NaN-aware, ddof 1).

    A zero sd gives ``+-inf`` (or NaN for a zero mean): a statistic that never varies is as reliable as it gets.
    """
    boot = np.asarray(boot, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nanmean(boot, axis=0)
        sd = np.nanstd(boot, axis=0, ddof=1)
        return np.where(sd > 0, mean / np.where(sd > 0, sd, 1.0), np.sign(mean) * np.inf)


def forward_stop(p_values: np.ndarray, alpha: float = 0.05) -> int:
    """Number of leading hypotheses rejected by ForwardStop (G'Sell, Wager, Chouldechova & Tibshirani 2016).

    ``k_hat = max{k : -(1/k) sum_{i <= k} log(1 - p_i) <= alpha}`` (0 if no k qualifies). Why: components are
    ordered, and ForwardStop controls the FDR of an ordered sequence while allowing a few later components to pass
    after an unlucky early one. NaN p-values count as 1.

    Parameters
    ----------
    p_values : ndarray, (k,), in component order
    alpha : float

    Returns
    -------
    int
    """
    p = np.asarray(p_values, dtype=np.float64).ravel()
    if p.size == 0:
        return 0
    p = np.where(np.isfinite(p), p, 1.0)
    if np.any((p < 0) | (p > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    with np.errstate(divide="ignore"):
        stat = np.cumsum(-np.log1p(-p)) / np.arange(1, p.size + 1)
    ok = np.flatnonzero(stat <= alpha)
    return int(ok[-1] + 1) if ok.size else 0


StopRule = Literal["forwardstop", "bh", "none"]


def keep_components(p_values: np.ndarray, q_values: np.ndarray, snr: np.ndarray, *, rule: StopRule = "forwardstop",
                    alpha: float = 0.05, snr_threshold: float | None = 3.0) -> np.ndarray:
    """Which components are kept: the stopping rule AND ``snr >= snr_threshold`` (each part optional).

    ``rule="forwardstop"`` keeps the first :func:`forward_stop` components, ``"bh"`` those with ``q <= alpha``,
    ``"none"`` all. Why both a test and an SNR: the test controls false discoveries along the ordered components, but
    a bootstrap p-value cannot go below ``1 / (resamples + 1)`` and ForwardStop lets a mediocre component ride on
    strong neighbours; the SNR (mean / sd of the bootstrap distribution, a bootstrap ratio) asks in addition that
    each kept component sits at least ``snr_threshold`` bootstrap standard deviations above zero, a stricter
    per-component requirement than one-sided p < 0.05 (about 1.6 sd). The two masks are combined element-wise, so a
    component inside the ForwardStop prefix with a weak SNR is dropped without dropping the ones after it.

    Why ForwardStop rather than BH by default: trailing noise components have nearly equal eigenvalues, and for such
    a pair the held-out stimulus itself orients the pair in its own fold (removing it rotates the near-degenerate
    plane), which makes its held-out product positive on the lower member and negative on the upper one. The lower
    member then gets a spuriously large positive cross-validated correlation with a tiny bootstrap p-value (the
    bootstrap resamples the held-out scores, not the fold fits), which BH, treating components as exchangeable,
    would keep. ForwardStop respects the order: the upper members' p-values of 1 end every prefix that reaches them.
    In simulations of independent datasets (n 60-300, p 6-50, 200 resamples) the default rule kept a component in
    1-5% of data sets.

    Returns
    -------
    ndarray of bool, (k,)
    """
    p = np.asarray(p_values, dtype=np.float64)
    if rule == "forwardstop":
        mask = np.arange(p.size) < forward_stop(p, alpha)
    elif rule == "bh":
        mask = np.asarray(q_values) <= alpha
    elif rule == "none":
        mask = np.ones(p.size, dtype=bool)
    else:
        raise ValueError(f"rule must be 'forwardstop', 'bh' or 'none', got {rule!r}")
    if snr_threshold is not None:
        mask &= np.nan_to_num(np.asarray(snr, dtype=np.float64), nan=-np.inf) >= snr_threshold
    return mask


# ----------------------------------------------------------------------------------------------------------------
# varimax and loading significance
# ----------------------------------------------------------------------------------------------------------------
def varimax(loadings: np.ndarray, *, normalize: bool = True, gamma: float = 1.0, max_iter: int = 5000,
            tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Varimax rotation (Kaiser 1958) by the standard SVD iteration, as in R's ``varimax`` and factor_analyzer.

    Why: preserved components are defined up to rotation within the kept subspace as far as interpretation goes; the
    varimax rotation concentrates each component's loadings on few attributes so it can be named.

    Each step sets ``R = U V'`` from the SVD of ``A' (L^3 - (gamma/p) L diag(L'L))`` with ``L = A R``, until no
    entry of ``R`` changes by more than ``tol``. (R and factor_analyzer stop when the criterion, the sum of singular
    values, grows by less than 1e-5 relatively; near the optimum the criterion is flat, so that leaves the rotation
    accurate to only about the square root of it. Testing the rotation itself costs a few more cheap k x k iterations.)

    Parameters
    ----------
    loadings : ndarray, (p, k)
    normalize : bool
        Kaiser normalisation: rotate the rows scaled to unit length (communality), then scale back, so attributes
        with small communality weigh as much as the others (default in R and factor_analyzer).
    gamma : float
        1 for varimax (0 gives quartimax).
    max_iter, tol : convergence controls.

    Returns
    -------
    rotated : ndarray, (p, k)
        ``loadings @ rotation``; each column sign-fixed so its largest-|loading| entry is positive.
    rotation : ndarray, (k, k)
        Orthogonal matrix (sign flips included).
    """
    a = np.asarray(loadings, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"loadings must be 2-D, got shape {a.shape}")
    p, k = a.shape
    if k < 2:  # nothing to rotate; only the sign convention applies
        rot = np.eye(k)
        if k == 1:
            rot[0, 0] = -1.0 if a[np.argmax(np.abs(a[:, 0])), 0] < 0 else 1.0
        return a @ rot, rot
    if normalize:
        h = np.sqrt((a * a).sum(axis=1))
        scale = np.where(h > 0, h, 1.0)
        a_n = a / scale[:, None]
    else:
        a_n = a
    rot = np.eye(k)
    for _ in range(max_iter):
        lam = a_n @ rot
        u, _, vt = np.linalg.svd(a_n.T @ (lam ** 3 - (gamma / p) * lam * (lam * lam).sum(axis=0)))
        new = u @ vt
        done = np.abs(new - rot).max() < tol
        rot = new
        if done:
            break
    rotated = a @ rot
    idx = np.argmax(np.abs(rotated), axis=0)
    signs = np.sign(rotated[idx, np.arange(k)])
    signs[signs == 0] = 1.0
    rot = rot * signs
    return a @ rot, rot


def bootstrap_loadings(datasets: Sequence[np.ndarray], loadings: np.ndarray, kept: np.ndarray, target: np.ndarray,
                       counts: np.ndarray) -> np.ndarray:
    """Bootstrap distribution of the (rotated) loadings of the kept components, aligned to ``target``.

    Per resample: refit the components on the resampled stimuli; match a bootstrap component to each kept full-data
    component (Hungarian assignment on |cosine|, so an order swap of close eigenvalues does not mix components up);
    then rotate the matched set onto ``target`` by orthogonal Procrustes. Why Procrustes: it removes the sign
    ambiguity, residual order swaps and the varimax rotation in one step (with one kept component it is exactly a
    sign alignment), so each bootstrap loading is comparable with the reported one.

    Parameters
    ----------
    datasets : sequence of ndarray, each (n, p)
    loadings : ndarray, (p, K)
        Full-data loadings of all fitted components.
    kept : ndarray of bool, (K,)
    target : ndarray, (p, k_kept)
        What the bootstrap loadings are aligned to (rotated kept loadings, or the kept loadings themselves).
    counts : ndarray, (resamples, n)

    Returns
    -------
    ndarray, (resamples, p, k_kept)
    """
    arrays = validate_datasets(datasets)
    n, p = arrays[0].shape
    ref = np.asarray(loadings)[:, np.asarray(kept, dtype=bool)]
    k = ref.shape[1]
    counts = np.asarray(counts, dtype=np.float64)
    out = np.empty((counts.shape[0], p, k))
    if k == 0:
        return out
    for b, w in enumerate(counts):
        centred = [x - (w @ x) / n for x in arrays]
        _, vecs = _eigh_desc(_pair_sum(centred, w), p)
        rows, cols = scipy.optimize.linear_sum_assignment(-np.abs(ref.T @ vecs))
        matched = vecs[:, cols[np.argsort(rows)]]
        u, _, vt = np.linalg.svd(matched.T @ target)
        out[b] = matched @ (u @ vt)
    return out


def _loading_pvalues(boot: np.ndarray) -> np.ndarray:
    """Two-sided bootstrap p-values that a loading differs from zero, with the +1 correction."""
    r = boot.shape[0]
    le = (1.0 + (boot <= 0).sum(axis=0)) / (1.0 + r)
    ge = (1.0 + (boot >= 0).sum(axis=0)) / (1.0 + r)
    return np.minimum(1.0, 2.0 * np.minimum(le, ge))


# ----------------------------------------------------------------------------------------------------------------
# the whole analysis
# ----------------------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class PpcaResult:
    """Everything one PPCA / G-PPCA run produces.

    Attributes
    ----------
    loadings : ndarray, (p, K)
        Unit-norm components, eigenvalue order, largest-|loading| entry positive.
    covariances : ndarray, (K,)
        Eigenvalues: in-sample covariance of the projections (sum over pairs for G-PPCA).
    cv_correlations : ndarray, (K,)
        Leave-one-stimulus-out partial Spearman correlations (mean over pairs for G-PPCA).
    p_values, q_values, snr : ndarray, (K,)
        One-sided bootstrap p-values of ``cv_correlations > 0``, their Benjamini-Hochberg q-values, and the
        bootstrap mean / sd.
    kept : ndarray of bool, (K,)
        Components passing the rule (see :func:`keep_components`).
    rotated_loadings : ndarray, (p, k_kept)
        Varimax-rotated kept loadings (the kept loadings themselves when ``rotate=False``).
    rotation : ndarray, (k_kept, k_kept)
        ``rotated_loadings = loadings[:, kept] @ rotation``.
    loading_p_values, loading_snr : ndarray, (p, k_kept)
        Two-sided bootstrap p-values and bootstrap ratios (mean / sd) of ``rotated_loadings``.
    heldout_scores : ndarray, (m, n, K)
        Leave-one-out projections (:func:`loo_scores`).
    cv_bootstrap : ndarray, (resamples, K)
        Bootstrap distribution of ``cv_correlations``.
    n_stimuli, n_datasets, resamples, seed, rule, alpha, snr_threshold : the settings and sizes.
    """

    loadings: np.ndarray
    covariances: np.ndarray
    cv_correlations: np.ndarray
    p_values: np.ndarray
    q_values: np.ndarray
    snr: np.ndarray
    kept: np.ndarray
    rotated_loadings: np.ndarray
    rotation: np.ndarray
    loading_p_values: np.ndarray
    loading_snr: np.ndarray
    heldout_scores: np.ndarray
    cv_bootstrap: np.ndarray
    n_stimuli: int
    n_datasets: int
    resamples: int
    seed: int | None
    rule: str
    alpha: float
    snr_threshold: float | None

    @property
    def n_kept(self) -> int:
        return int(self.kept.sum())

    @property
    def generalized(self) -> bool:
        """True for G-PPCA (three or more datasets)."""
        return self.n_datasets > 2


def ppca(datasets: Sequence[np.ndarray], *, n_components: int | None = None, resamples: int = 1000,
         seed: int | np.random.Generator | None = 0, rule: StopRule = "forwardstop", alpha: float = 0.05,
         snr_threshold: float | None = 3.0, rotate: bool = True) -> PpcaResult:
    """PPCA (two datasets) or G-PPCA (three or more) with cross-validation, bootstrap tests, rotation.

    Default rule: ForwardStop at ``alpha`` on the one-sided bootstrap p-values of the cross-validated correlations,
    AND a bootstrap SNR of at least 3 -- the test controls the false discovery rate along the ordered components,
    the SNR demands that the kept ones are stably estimated (see :func:`keep_components`).

    Parameters
    ----------
    datasets : sequence of ndarray, each (n, p)
        Stimuli x attributes, rows matched by stimulus, same attributes.
    n_components : int, optional
        Components fitted and tested (default: all p). Later components cost more in the partial correlations.
    resamples : int
        Bootstrap resamples of stimuli (default 1000), shared by the component and loading tests.
    seed : int or numpy Generator or None
        Seeds ``numpy.random.default_rng`` (a Generator is used as is).
    rule : {"forwardstop", "bh", "none"}
    alpha : float
    snr_threshold : float or None
        None disables the SNR requirement.
    rotate : bool
        Varimax-rotate the kept loadings (default True).

    Returns
    -------
    PpcaResult
    """
    arrays = validate_datasets(datasets)
    if int(resamples) < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    n, p = arrays[0].shape
    loadings, covs = fit_components(arrays, n_components)
    k = loadings.shape[1]
    scores = loo_scores(arrays, k, reference=loadings)
    cv = cv_correlations(scores)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    counts = _resample_counts(n, int(resamples), rng)
    boot = bootstrap_cv_correlations(scores, counts)
    pv = bootstrap_pvalues(boot)
    qv = bh_qvalues(pv)
    snr = snr_ratio(boot)
    kept = keep_components(pv, qv, snr, rule=rule, alpha=alpha, snr_threshold=snr_threshold)
    base = loadings[:, kept]
    if rotate:
        rotated, rotation = varimax(base)
    else:
        rotated, rotation = base.copy(), np.eye(base.shape[1])
    lboot = bootstrap_loadings(arrays, loadings, kept, rotated, counts)
    return PpcaResult(
        loadings=loadings, covariances=covs, cv_correlations=cv, p_values=pv, q_values=qv, snr=snr, kept=kept,
        rotated_loadings=rotated, rotation=rotation, loading_p_values=_loading_pvalues(lboot),
        loading_snr=snr_ratio(lboot.reshape(lboot.shape[0], -1)).reshape(p, -1) if lboot.size else np.empty((p, 0)),
        heldout_scores=scores, cv_bootstrap=boot, n_stimuli=n, n_datasets=len(arrays), resamples=int(resamples),
        seed=seed if isinstance(seed, (int, np.integer)) or seed is None else None, rule=rule, alpha=float(alpha),
        snr_threshold=snr_threshold,
    )
