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
   turn the bootstrap distribution into one-sided p-values and the paper's SNR (correlation / bootstrap sd).
5. The selection rule (:func:`rule_for`): for PPCA the paper's BH over the first 48 dimensions (:func:`bh_first`)
   AND :func:`forward_stop` AND SNR >= 3 (:func:`keep_components`); for G-PPCA the country-pair partial Pearson
   tests (:func:`pair_tests`) and the significance-graph rule (:func:`graph_passes`). Other rules are selectable.
6. :func:`varimax` (statsmodels ``rotate_factors``, as the paper) rotates the kept loadings; the paper's loading
   test refits and rotates per resample (:func:`resample_rotated_loadings`), then :func:`top_n_loading_pvalues` and
   :func:`significant_loadings` (ForwardStop); :func:`loading_preservation` gives the "63% preserved (r = .80)"
   figure. :func:`bootstrap_loadings` keeps cxatlas' earlier per-loading Procrustes test.

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
    "RULES", "bh_first", "rule_for", "describe_rule", "PairTests", "pair_partial_pearson", "pair_tests",
    "graph_passes", "gppca_graph_keep", "resample_rotated_loadings", "top_n_loading_pvalues", "significant_loadings",
    "loading_preservation", "UNIVERSALITY_CLASSES", "universality_classes",
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


StopRule = Literal["brooks", "bh_forwardstop_snr", "gppca_graph", "forwardstop", "bh", "none"]
#: Every selectable rule, in the order ``--rule`` lists them.
RULES: tuple[str, ...] = ("brooks", "bh_forwardstop_snr", "gppca_graph", "forwardstop", "bh", "none")
GppcaBh = Literal["within_pair", "within_dimension"]


def bh_first(p_values: np.ndarray, n_first: int | None = 48) -> np.ndarray:
    """Benjamini-Hochberg q-values over the first ``n_first`` entries only; NaN after them.

    Brooks et al. (2024), STAR Methods: "we used Benjamini-Hochberg FDR correction across the first 48 PPCA
    dimensions (as we were interested in variations of 48 potentially distinct emotion concepts and their
    translations across countries) at an alpha of .05." A dimension beyond the first ``n_first`` gets no q-value
    and therefore cannot pass the BH criterion. ``None`` corrects over all entries.
    """
    p = np.asarray(p_values, dtype=np.float64).ravel()
    n = p.size if n_first is None else min(int(n_first), p.size)
    q = np.full(p.size, np.nan)
    q[:n] = bh_qvalues(p[:n])
    return q


def rule_for(rule: str, n_datasets: int) -> str:
    """The concrete rule ``rule`` stands for with ``n_datasets`` datasets (``"brooks"`` resolves by the count).

    Brooks et al. (2024) use two rules: PPCA of two datasets (DNN outputs vs judgments, "Extracting significant DNN
    output dimensions") keeps a dimension when BH, ForwardStop and SNR > 3 all agree; G-PPCA of the six countries
    ("Significance testing") keeps a dimension when its country-pair significance graph is "unipartite". So
    ``"brooks"`` is ``"bh_forwardstop_snr"`` for two datasets and ``"gppca_graph"`` for three or more.

    Raises
    ------
    ValueError
        An unknown rule, or ``"gppca_graph"`` with fewer than three datasets (every country needs two partners).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}; got {rule!r}")
    if rule == "brooks":
        return "bh_forwardstop_snr" if n_datasets == 2 else "gppca_graph"
    if rule == "gppca_graph" and n_datasets < 3:
        raise ValueError(f"rule 'gppca_graph' needs at least 3 datasets (each must link to two others), got "
                         f"{n_datasets}")
    return rule


def describe_rule(rule: str, *, alpha: float = 0.05, snr_threshold: float | None = 3.0, bh_dimensions: int | None = 48,
                  gppca_bh: str = "within_pair") -> str:
    """One line saying what a concrete rule (see :func:`rule_for`) kept; written into every PPCA output."""
    bh = f"BH q<={alpha:g} over the first {bh_dimensions} dimensions" if bh_dimensions else f"BH q<={alpha:g}"
    snr = f"SNR (cv r / bootstrap sd) >= {snr_threshold:g}" if snr_threshold is not None else None
    text = {
        "bh_forwardstop_snr": " AND ".join(x for x in (bh, f"ForwardStop alpha={alpha:g}", snr) if x),
        "gppca_graph": (f"G-PPCA pair graph: per country pair partial Pearson r of held-out scores, BH "
                        f"{'within each pair over the first ' + str(bh_dimensions) + ' dimensions' if gppca_bh == 'within_pair' else 'within each dimension over its pairs'}"
                        f", edge = q<{alpha:g} and r>0; kept when every country has >=2 edges and the graph is "
                        f"connected"),
        "forwardstop": " AND ".join(x for x in (f"ForwardStop alpha={alpha:g}", snr) if x),
        "bh": " AND ".join(x for x in (bh, snr) if x),
        "none": " AND ".join(x for x in ("no test", snr) if x),
    }
    return f"{rule}: {text[rule]}"


def keep_components(p_values: np.ndarray, q_values: np.ndarray, snr: np.ndarray, *,
                    rule: StopRule = "bh_forwardstop_snr", alpha: float = 0.05,
                    snr_threshold: float | None = 3.0) -> np.ndarray:
    """Which components are kept by a (non-graph) rule: its test(s) AND ``snr >= snr_threshold``.

    ``"bh_forwardstop_snr"`` is the rule of Brooks et al. (2024) for PPCA (STAR Methods, "Extracting significant DNN
    output dimensions"): "we used Benjamini-Hochberg FDR correction across the first 48 PPCA dimensions ... at an
    alpha of .05. We also separately performed a ForwardStop sequential FDR correction procedure. Finally, we
    determined the signal-to-noise ratio (SNR) ... and applied a threshold of 3 to the SNR to extract more stable
    dimensions. We only kept dimensions that met all three of these criteria." ``q_values`` must be the BH values
    over the first 48 dimensions (:func:`bh_first`); a NaN q (a dimension beyond them) fails BH. Reading taken:
    "meets" BH = ``q <= alpha``; SNR "threshold of 3" = ``snr >= 3``.

    The other rules are kept selectable: ``"forwardstop"`` (the first :func:`forward_stop` components), ``"bh"``
    (``q <= alpha``), ``"none"`` (all), each AND the SNR threshold (``None`` disables it). Why ForwardStop alone can
    be useful: trailing noise components have nearly equal eigenvalues, and for such a pair the held-out stimulus
    orients the pair in its own fold, giving the lower member a spuriously positive cross-validated correlation
    with a tiny bootstrap p-value; BH, treating components as exchangeable, can keep it, while ForwardStop's
    ordered prefix ends at the upper member's p-value of 1. The paper's rule contains ForwardStop, so it is
    protected the same way. The masks combine element-wise, so a component inside the ForwardStop prefix with a
    weak SNR is dropped without dropping the ones after it.

    Returns
    -------
    ndarray of bool, (k,)
    """
    p = np.asarray(p_values, dtype=np.float64)
    q = np.nan_to_num(np.asarray(q_values, dtype=np.float64), nan=np.inf)
    prefix = np.arange(p.size) < forward_stop(p, alpha)
    if rule == "bh_forwardstop_snr":
        mask = prefix & (q <= alpha)
    elif rule == "forwardstop":
        mask = prefix
    elif rule == "bh":
        mask = q <= alpha
    elif rule == "none":
        mask = np.ones(p.size, dtype=bool)
    else:
        raise ValueError(f"keep_components takes 'bh_forwardstop_snr', 'forwardstop', 'bh' or 'none'; got {rule!r} "
                         "(the G-PPCA graph rule is gppca_graph_keep)")
    if snr_threshold is not None:
        mask &= np.nan_to_num(np.asarray(snr, dtype=np.float64), nan=-np.inf) >= snr_threshold
    return mask


# ----------------------------------------------------------------------------------------------------------------
# G-PPCA: country-pair partial Pearson correlations and the significance graph
# ----------------------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class PairTests:
    """Per dimension and dataset pair: partial Pearson r of the held-out scores, its p, BH q, significant edge.

    ``pairs[i] = (a, b)`` dataset indices; ``r``, ``p``, ``q``, ``significant`` are (pairs, k); ``df`` is (k,).
    """

    pairs: list[tuple[int, int]]
    r: np.ndarray
    p: np.ndarray
    q: np.ndarray
    significant: np.ndarray
    df: np.ndarray


def pair_partial_pearson(scores: np.ndarray) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray, np.ndarray]:
    """Partial Pearson correlations of held-out component scores for every pair of datasets, and their p-values.

    Brooks et al. (2024), "Significance testing": "we calculated the partial Pearson correlation between
    corresponding component scores for each country pair, iteratively partialling out each previous component, and
    calculating statistical significance separately for each dimension." Reading taken: for dimension ``c`` and pair
    ``(a, b)``, ``corr(s_a[:, c], s_b[:, c] | s_a[:, <c], s_b[:, <c])`` -- both countries' earlier held-out scores
    are partialled out (as in :func:`cv_correlations`, but on the scores, not their ranks). p is the usual two-sided
    t-test of a partial correlation, ``t = r sqrt(df / (1 - r^2))`` with ``df = n - 2 - 2c`` (the controls), as in
    pingouin's ``partial_corr``. The direction ("significantly positively correlated") is applied by the caller.

    Parameters
    ----------
    scores : ndarray, (m, n, k)
        Held-out scores from :func:`loo_scores`.

    Returns
    -------
    pairs : list of (a, b)
    r, p : ndarray, (pairs, k); NaN where undefined
    df : ndarray, (k,)
    """
    scores = np.asarray(scores, dtype=np.float64)
    m, n, k = scores.shape
    pairs, idx = _pair_columns(m, k)
    flat = scores.transpose(1, 0, 2).reshape(n, m * k)
    centred = flat - flat.mean(axis=0)
    r = _sequential_partials(centred.T @ centred, idx, float(n))
    df = n - 2.0 - 2.0 * np.arange(k)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = r * np.sqrt(np.where(df > 0, df, np.nan) / np.clip(1.0 - r * r, 1e-300, None))
        p = 2.0 * scipy.stats.t.sf(np.abs(t), np.where(df > 0, df, np.nan))
    return pairs, r, np.where(np.isfinite(r), p, np.nan), df


def pair_tests(scores: np.ndarray, *, alpha: float = 0.05, bh_dimensions: int | None = 48,
               gppca_bh: GppcaBh = "within_pair") -> PairTests:
    """:func:`pair_partial_pearson`, BH-corrected, and the significant positive edges.

    BH: the paper says "Within country pairs, p-values for the 48 dimensions were FDR-corrected using the
    Benjamini-Hochberg procedure." Two readings exist, both selectable:

    * ``"within_pair"`` (default, the sentence's literal reading): for each country pair, BH over its p-values of the
      first ``bh_dimensions`` dimensions (dimensions after them get no q and no edge).
    * ``"within_dimension"``: for each dimension, BH over its country pairs (issue #22's reading).

    Edge: "binary statistical significance (p < .05, FDR-corrected) as edges" and "significantly positively
    correlated", so an edge is ``q < alpha`` AND ``r > 0``.
    """
    pairs, r, p, df = pair_partial_pearson(scores)
    k = r.shape[1]
    if gppca_bh == "within_pair":
        q = np.stack([bh_first(row, bh_dimensions) for row in p]) if len(pairs) else np.empty((0, k))
    elif gppca_bh == "within_dimension":
        q = np.column_stack([bh_qvalues(p[:, c]) for c in range(k)]) if len(pairs) else np.empty((0, k))
    else:
        raise ValueError(f"gppca_bh must be 'within_pair' or 'within_dimension', got {gppca_bh!r}")
    sig = (np.nan_to_num(q, nan=np.inf) < alpha) & (np.nan_to_num(r, nan=-np.inf) > 0)
    return PairTests(pairs=pairs, r=r, p=p, q=q, significant=sig, df=df)


def graph_passes(n_nodes: int, edges: Sequence[tuple[int, int]], *, min_degree: int = 2) -> bool:
    """Is the significance graph "unipartite" in Brooks et al.'s sense?

    The paper: "We then retained dimensions whose statistical significance graph was unipartite (that is, could not
    be partitioned - in this case meaning that for any given dimension the component scores for any given country
    were significantly positively correlated with the corresponding component scores for at least two other
    countries)." Reading taken: both conditions -- every node has at least ``min_degree`` edges AND the graph is
    connected ("could not be partitioned"). (Degree >= 2 alone would accept two disjoint triangles over six
    countries, which can be partitioned.)
    """
    if n_nodes < 2:
        return False
    adj = np.zeros((n_nodes, n_nodes), dtype=bool)
    for a, b in edges:
        adj[a, b] = adj[b, a] = True
    if (adj.sum(axis=1) < min_degree).any():
        return False
    seen = np.zeros(n_nodes, dtype=bool)
    seen[0] = True
    frontier = [0]
    while frontier:
        nxt = np.flatnonzero(adj[frontier].any(axis=0) & ~seen)
        seen[nxt] = True
        frontier = list(nxt)
    return bool(seen.all())


def gppca_graph_keep(tests: PairTests, n_datasets: int, *, min_degree: int = 2) -> np.ndarray:
    """Per dimension: does its significance graph (:func:`pair_tests` edges) pass :func:`graph_passes`?"""
    k = tests.r.shape[1]
    return np.array([graph_passes(n_datasets, [pr for pr, s in zip(tests.pairs, tests.significant[:, c]) if s],
                                  min_degree=min_degree) for c in range(k)], dtype=bool)


# ----------------------------------------------------------------------------------------------------------------
# varimax and loading significance
# ----------------------------------------------------------------------------------------------------------------
def varimax(loadings: np.ndarray, *, normalize: bool = False, **algorithm_kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Varimax rotation by statsmodels' ``rotate_factors(L, 'varimax')``, optionally Kaiser-normalised.

    Brooks et al. (2024), "Factor rotation": "We employed an implementation of Varimax available in Python's
    statsmodels package (https://www.statsmodels.org/stable/generated/statsmodels.multivariate.factor_rotation.
    rotate_factors.html)." So the rotation is that function with its defaults, which does *not* Kaiser-normalise.
    Why it matters: at the paper's size (288 x 28) a Kaiser-normalised varimax and statsmodels' disagree column by
    column down to matched cosines of .39 (science-fidelity audit, B11).

    Parameters
    ----------
    loadings : ndarray, (p, k)
    normalize : bool
        Kaiser normalisation (an option, not the paper's): rotate the rows scaled to unit length (communality), then
        scale back, as R's ``varimax`` and factor_analyzer do by default.
    **algorithm_kwargs
        Passed to ``rotate_factors`` (``algorithm``, ``tol``, ``max_tries``); default: statsmodels' own defaults.

    Returns
    -------
    rotated : ndarray, (p, k)
        ``loadings @ rotation``: statsmodels' rotated loadings with each column's sign flipped, where needed, so its
        largest-|loading| entry is positive (a display convention: a factor's sign is arbitrary). Column order is
        statsmodels'.
    rotation : ndarray, (k, k)
        Orthogonal matrix (sign flips included).
    """
    from statsmodels.multivariate.factor_rotation import rotate_factors

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
        a_n = a / np.where(h > 0, h, 1.0)[:, None]
    else:
        a_n = a
    _, rot = rotate_factors(a_n, "varimax", **algorithm_kwargs)
    rot = np.asarray(rot, dtype=np.float64)
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


def resample_rotated_loadings(datasets: Sequence[np.ndarray], n_kept: int, counts: np.ndarray, *,
                              kaiser: bool = False) -> np.ndarray:
    """Per bootstrap resample: refit, take the main fit's number of kept dimensions, varimax-rotate them.

    Brooks et al. (2024): "we performed the entire PPCA analysis repeatedly after resampling the seed images with
    replacement, extracting the significant dimensions and performing factor analysis each time." Reading taken
    (issue #22): a resample keeps the *main fit's number* of dimensions (its first ``n_kept`` components), rather than
    rerunning the leave-one-out significance test inside every resample, which would cost ``resamples x n``
    eigendecompositions and let duplicated stimuli leak into their own folds.

    Returns
    -------
    ndarray, (resamples, p, n_kept)
    """
    arrays = validate_datasets(datasets)
    n, p = arrays[0].shape
    counts = np.asarray(counts, dtype=np.float64)
    out = np.empty((counts.shape[0], p, n_kept))
    if n_kept == 0:
        return out
    for b, w in enumerate(counts):
        centred = [x - (w @ x) / n for x in arrays]
        _, vecs = _eigh_desc(_pair_sum(centred, w), n_kept)
        out[b] = varimax(vecs, normalize=kaiser)[0]
    return out


def top_n_loading_pvalues(rotated: np.ndarray, resampled: np.ndarray) -> np.ndarray:
    """The paper's top-N sign test of the loadings of each rotated dimension.

    Brooks et al. (2024): "For each dimension, we then tested the significance of the top N loadings, with N varying
    from 1 to 288, by determining how often, across resampling the iterations, there existed a dimension with all of
    these top N loadings pointing in the same direction. ... We took one minus this proportion as the p-value."
    Readings taken: the top N are the N largest |loadings| of the main fit's rotated dimension; "pointing in the
    same direction" means the resample dimension's loadings on those N attributes have the main fit's signs (or all
    the opposite signs: a dimension's sign is arbitrary); "there existed a dimension" means any of the resample's
    rotated dimensions, not only a matched one. No +1 correction (the paper's "one minus this proportion").

    Parameters
    ----------
    rotated : ndarray, (p, k)
        The main fit's rotated kept loadings.
    resampled : ndarray, (resamples, p, k)
        From :func:`resample_rotated_loadings`.

    Returns
    -------
    ndarray, (p, k)
        ``out[i, d]``: the p-value of the top ``i + 1`` loadings of dimension ``d`` (non-decreasing in ``i``).
    """
    rotated = np.asarray(rotated, dtype=np.float64)
    p, k = rotated.shape
    boot = np.asarray(resampled, dtype=np.float64)
    out = np.empty((p, k))
    for d in range(k):
        order = np.argsort(-np.abs(rotated[:, d]), kind="stable")
        signs = np.sign(rotated[order, d])
        sb = np.sign(boot[:, order, :])  # (B, p, k_b)
        best = np.zeros(boot.shape[0], dtype=np.int64)
        for orient in (1.0, -1.0):
            agree = sb == (orient * signs)[None, :, None]
            # length of the leading run of agreement, per resample and resample dimension
            run = np.where(agree.all(axis=1), p, np.argmin(agree, axis=1))
            best = np.maximum(best, run.max(axis=1))
        n = np.arange(1, p + 1)
        out[:, d] = 1.0 - (best[None, :] >= n[:, None]).mean(axis=1)
    return out


def significant_loadings(top_n_p: np.ndarray, rotated: np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """How many loadings of each dimension are significant, and which: ForwardStop over the top-N p-values.

    Brooks et al. (2024): "For each dimension, we applied a ForwardStop FDR-correction procedure at an alpha of .05
    to determine the number of significant loadings." The significant loadings are the top ``n`` by |loading|.

    Returns
    -------
    n_significant : ndarray of int, (k,)
    mask : ndarray of bool, (p, k)
    """
    rotated = np.asarray(rotated, dtype=np.float64)
    p, k = rotated.shape
    n_sig = np.array([forward_stop(top_n_p[:, d], alpha) for d in range(k)], dtype=np.int64)
    mask = np.zeros((p, k), dtype=bool)
    for d in range(k):
        mask[np.argsort(-np.abs(rotated[:, d]), kind="stable")[: n_sig[d]], d] = True
    return n_sig, mask


def loading_preservation(rotated: np.ndarray, groups: Sequence[str], labels: Sequence[str]) -> tuple[float, int]:
    """How much of the countrywise loadings the average loading explains: Pearson r over all dimensions.

    Brooks et al. (2024): "the 28 dimensions of facial expression ... were 63% preserved in both meaning and
    translation across the 6 countries (r = 0.80, r^2 = 0.63, countrywise dimension loadings explained by the average
    loading)." Reading taken: attributes are ``group:label`` (the 288 = 6 countries x 48 concepts); for each
    dimension the country's loading on each label is paired with the mean loading of that label over the countries;
    r is the Pearson correlation of all such pairs pooled over dimensions, countries and labels (labels missing in
    a country are skipped). r^2 is the "% preserved".

    Returns
    -------
    r : float (NaN when undefined)
    pairs : int, how many (country loading, average loading) pairs entered r
    """
    rotated = np.asarray(rotated, dtype=np.float64)
    groups, labels = list(groups), list(labels)
    gs, ls = sorted(set(groups)), sorted(set(labels))
    xs, ys = [], []
    for d in range(rotated.shape[1]):
        grid = np.full((len(gs), len(ls)), np.nan)
        for i, (g, lab) in enumerate(zip(groups, labels)):
            grid[gs.index(g), ls.index(lab)] = rotated[i, d]
        mean = np.nanmean(np.where(np.isnan(grid).all(axis=0), 0.0, grid), axis=0) if len(gs) else np.empty(0)
        ok = ~np.isnan(grid)
        xs.append(grid[ok])
        ys.append(np.broadcast_to(mean, grid.shape)[ok])
    x = np.concatenate(xs) if xs else np.empty(0)
    y = np.concatenate(ys) if ys else np.empty(0)
    if x.size < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan"), int(x.size)
    return float(np.corrcoef(x, y)[0, 1]), int(x.size)


#: The classes of :func:`universality_classes`, in the paper's order; the first three count as universal.
UNIVERSALITY_CLASSES = ("same_concept", "close_concept", "consistent_not_significant", "culture_specific")


def universality_classes(rotated: np.ndarray, significant: np.ndarray, groups: Sequence[str],
                         labels: Sequence[str], *, close_top: int = 2, max_nonsignificant: int = 1) -> list[dict]:
    """Classify each rotated dimension as universal in meaning (three ways) or culture-specific: the paper's 21 of 28.

    Brooks et al. (2024): "the facial expressions corresponding to 12 different emotion concepts in English ... were
    categorized with what we had previously determined were their most direct translations across all six countries
    and four languages. In four other cases, the correspondence was not exact, but very close: expressions that were
    associated with "contemplation" in some countries were associated with "doubt" in others ... For another five
    dimensions ... loadings were consistent in all six countries but not statistically significant in Ethiopia. Thus,
    a total of 21 dimensions of facial expression showed a high degree of cultural universality in meaning across the
    6 countries."

    Readings taken (the paper judged translations by hand; this is the closest mechanical rule):

    - A country's concept on a dimension is its attribute (``country:label``) with the highest loading, the dimension
      oriented so its largest-|loading| entry is positive; the country is *significant* on it when that attribute's
      loading is among the dimension's significant loadings (top-N sign test + ForwardStop).
    - ``same_concept``: every country's concept is the same label and every country is significant (the 12).
    - ``close_concept``: the countries' concepts differ, but each is among the ``close_top`` labels with the highest
      mean loading over countries (contemplation/doubt, love/romance: the 4), every country significant.
    - ``consistent_not_significant``: same or close concepts, but up to ``max_nonsignificant`` countries are not
      significant ("not statistically significant in Ethiopia": the 5).
    - ``culture_specific``: anything else (the remaining 7).

    Parameters
    ----------
    rotated : ndarray, (p, k)
    significant : ndarray of bool, (p, k)
    groups, labels : the country and the label of each attribute (``"US:joy"`` -> ``"US"``, ``"joy"``).

    Returns
    -------
    list of dict, one per dimension: rotated (1-based), class, universal, countries, countries_significant,
    not_significant (countries, ``;``-separated), concepts (``country:label`` per country), average_top (the
    ``close_top`` labels of the mean loading).
    """
    rotated = np.asarray(rotated, dtype=np.float64)
    significant = np.asarray(significant, dtype=bool)
    groups, labels = list(groups), list(labels)
    countries = sorted(set(groups))
    label_set = sorted(set(labels))
    out = []
    for d in range(rotated.shape[1]):
        col = rotated[:, d]
        sign = 1.0 if col.size == 0 or col[np.argmax(np.abs(col))] >= 0 else -1.0
        col = sign * col
        concept, is_sig = {}, {}
        for g in countries:
            rows = [i for i, gg in enumerate(groups) if gg == g]
            top = rows[int(np.argmax(col[rows]))]
            concept[g], is_sig[g] = labels[top], bool(significant[top, d]) and col[top] > 0
        mean = {lab: float(np.mean([col[i] for i, ll in enumerate(labels) if ll == lab])) for lab in label_set}
        average_top = sorted(label_set, key=lambda lab: (-mean[lab], lab))[:max(1, int(close_top))]
        distinct = set(concept.values())
        same = len(distinct) == 1
        close = not same and distinct <= set(average_top)
        missing = [g for g in countries if not is_sig[g]]
        if (same or close) and not missing:
            kind = "same_concept" if same else "close_concept"
        elif (same or close) and len(missing) <= max_nonsignificant:
            kind = "consistent_not_significant"
        else:
            kind = "culture_specific"
        out.append({"rotated": d + 1, "class": kind, "universal": kind != "culture_specific",
                    "countries": len(countries), "countries_significant": len(countries) - len(missing),
                    "not_significant": ";".join(missing), "concepts": ";".join(f"{g}:{concept[g]}" for g in countries),
                    "average_top": ";".join(average_top)})
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
        One-sided bootstrap p-values of ``cv_correlations > 0``; their Benjamini-Hochberg q-values over the first
        ``bh_dimensions`` components (NaN after them); the paper's SNR, ``cv_correlations / bootstrap sd``.
    bootstrap_sd : ndarray, (K,)
    bh_pass, forwardstop_pass, snr_pass : ndarray of bool, (K,)
        Each criterion of the paper's PPCA rule on its own.
    pair_tests : PairTests
        Per dataset pair and dimension: partial Pearson r of held-out scores, p, q, edge (G-PPCA's test).
    graph_pass : ndarray of bool, (K,)
        The G-PPCA graph rule on its own (all False with two datasets: a country cannot have two partners).
    kept : ndarray of bool, (K,)
        Components passing ``rule``.
    rotated_loadings : ndarray, (p, k_kept)
        Varimax-rotated kept loadings (statsmodels ``rotate_factors``; the kept loadings themselves when
        ``rotate=False``).
    rotation : ndarray, (k_kept, k_kept)
        ``rotated_loadings = loadings[:, kept] @ rotation``.
    loading_p_values, loading_snr : ndarray, (p, k_kept)
        Two-sided bootstrap p-values and bootstrap ratios (mean / sd) of ``rotated_loadings`` after Procrustes
        alignment (cxatlas' per-loading test, kept for continuity).
    top_n_p_values : ndarray, (p, k_kept)
        The paper's top-N sign test (:func:`top_n_loading_pvalues`), ``[i, d]`` for the top ``i + 1`` loadings.
    n_significant_loadings : ndarray of int, (k_kept,); significant_loadings : ndarray of bool, (p, k_kept)
        ForwardStop over ``top_n_p_values`` (:func:`significant_loadings`).
    heldout_scores : ndarray, (m, n, K)
        Leave-one-out projections (:func:`loo_scores`).
    cv_bootstrap : ndarray, (resamples, K)
        Bootstrap distribution of ``cv_correlations``.
    n_stimuli, n_datasets, resamples, loading_resamples, seed, rule, rule_requested, rule_text, alpha,
    snr_threshold, bh_dimensions, gppca_bh, kaiser : the settings and sizes.
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
    bootstrap_sd: np.ndarray = None
    bh_pass: np.ndarray = None
    forwardstop_pass: np.ndarray = None
    snr_pass: np.ndarray = None
    pair_tests: PairTests | None = None
    graph_pass: np.ndarray = None
    top_n_p_values: np.ndarray = None
    n_significant_loadings: np.ndarray = None
    significant_loadings: np.ndarray = None
    loading_resamples: int = 0
    rule_requested: str = ""
    rule_text: str = ""
    bh_dimensions: int | None = 48
    gppca_bh: str = "within_pair"
    kaiser: bool = False

    @property
    def n_kept(self) -> int:
        return int(self.kept.sum())

    @property
    def generalized(self) -> bool:
        """True for G-PPCA (three or more datasets)."""
        return self.n_datasets > 2


def ppca(datasets: Sequence[np.ndarray], *, n_components: int | None = None, resamples: int = 1000,
         seed: int | np.random.Generator | None = 0, rule: StopRule = "brooks", alpha: float = 0.05,
         snr_threshold: float | None = 3.0, rotate: bool = True, bh_dimensions: int | None = 48,
         gppca_bh: GppcaBh = "within_pair", kaiser: bool = False, loading_resamples: int | None = None
         ) -> PpcaResult:
    """PPCA (two datasets) or G-PPCA (three or more) with cross-validation, the paper's tests, rotation.

    Default rule ``"brooks"`` (see :func:`rule_for`): with two datasets, BH over the first ``bh_dimensions`` AND
    ForwardStop AND SNR >= ``snr_threshold`` ("We only kept dimensions that met all three of these criteria"); with
    three or more, the G-PPCA country-pair graph rule. Every criterion is also returned on its own.

    Parameters
    ----------
    datasets : sequence of ndarray, each (n, p)
        Stimuli x attributes, rows matched by stimulus, same attributes.
    n_components : int, optional
        Components fitted and tested (default: all p). Later components cost more in the partial correlations.
    resamples : int
        Bootstrap resamples of stimuli for the component test (the paper: 1000) and the Procrustes loading test.
    seed : int or numpy Generator or None
        Seeds ``numpy.random.default_rng`` (a Generator is used as is).
    rule : one of :data:`RULES`
    alpha : float
    snr_threshold : float or None
        None disables the SNR requirement.
    rotate : bool
        Varimax-rotate the kept loadings (default True).
    bh_dimensions : int or None
        BH runs over the first this many components (the paper: 48); None: all.
    gppca_bh : {"within_pair", "within_dimension"}
        How G-PPCA's BH groups the pair p-values (see :func:`pair_tests`).
    kaiser : bool
        Kaiser-normalised varimax (not the paper's; see :func:`varimax`).
    loading_resamples : int, optional
        Resamples of the paper's loading test (refit + rotate per resample; default ``resamples``). 0 skips it.

    Returns
    -------
    PpcaResult
    """
    arrays = validate_datasets(datasets)
    if int(resamples) < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    concrete = rule_for(rule, len(arrays))
    n, p = arrays[0].shape
    loadings, covs = fit_components(arrays, n_components)
    k = loadings.shape[1]
    scores = loo_scores(arrays, k, reference=loadings)
    cv = cv_correlations(scores)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    counts = _resample_counts(n, int(resamples), rng)
    boot = bootstrap_cv_correlations(scores, counts)
    pv = bootstrap_pvalues(boot)
    qv = bh_first(pv, bh_dimensions)
    sd = np.nanstd(boot, axis=0, ddof=1) if boot.shape[0] > 1 else np.full(k, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        # "the signal-to-noise ratio (SNR) of the correlations ... (the correlation divided by the standard deviation
        # computed using bootstrapping)"
        snr = np.where(sd > 0, cv / np.where(sd > 0, sd, 1.0), np.sign(cv) * np.inf)
    bh_pass = np.nan_to_num(qv, nan=np.inf) <= alpha
    fs_pass = np.arange(k) < forward_stop(pv, alpha)
    snr_pass = (np.nan_to_num(snr, nan=-np.inf) >= snr_threshold) if snr_threshold is not None else np.ones(k, bool)
    tests = pair_tests(scores, alpha=alpha, bh_dimensions=bh_dimensions, gppca_bh=gppca_bh)
    graph = gppca_graph_keep(tests, len(arrays)) if len(arrays) >= 3 else np.zeros(k, dtype=bool)
    if concrete == "gppca_graph":
        kept = graph.copy()
    else:
        kept = keep_components(pv, qv, snr, rule=concrete, alpha=alpha, snr_threshold=snr_threshold)
    base = loadings[:, kept]
    if rotate:
        rotated, rotation = varimax(base, normalize=kaiser)
    else:
        rotated, rotation = base.copy(), np.eye(base.shape[1])
    lboot = bootstrap_loadings(arrays, loadings, kept, rotated, counts)
    n_loading = int(resamples) if loading_resamples is None else int(loading_resamples)
    k_kept = int(kept.sum())
    if n_loading > 0 and k_kept:
        lcounts = counts[:n_loading] if n_loading <= counts.shape[0] else _resample_counts(n, n_loading, rng)
        resampled = resample_rotated_loadings(arrays, k_kept, lcounts, kaiser=kaiser) if rotate else None
        if resampled is None:  # unrotated: the resample's leading components, as they are
            resampled = np.stack([_eigh_desc(_pair_sum([x - (w @ x) / n for x in arrays], w), k_kept)[1]
                                  for w in lcounts])
        top_p = top_n_loading_pvalues(rotated, resampled)
    else:
        top_p = np.full((p, k_kept), np.nan)
    n_sig, sig_mask = significant_loadings(np.nan_to_num(top_p, nan=1.0), rotated, alpha)
    return PpcaResult(
        loadings=loadings, covariances=covs, cv_correlations=cv, p_values=pv, q_values=qv, snr=snr, kept=kept,
        rotated_loadings=rotated, rotation=rotation, loading_p_values=_loading_pvalues(lboot),
        loading_snr=snr_ratio(lboot.reshape(lboot.shape[0], -1)).reshape(p, -1) if lboot.size else np.empty((p, 0)),
        heldout_scores=scores, cv_bootstrap=boot, n_stimuli=n, n_datasets=len(arrays), resamples=int(resamples),
        seed=seed if isinstance(seed, (int, np.integer)) or seed is None else None, rule=concrete, alpha=float(alpha),
        snr_threshold=snr_threshold, bootstrap_sd=sd, bh_pass=bh_pass, forwardstop_pass=fs_pass, snr_pass=snr_pass,
        pair_tests=tests, graph_pass=graph, top_n_p_values=top_p, n_significant_loadings=n_sig,
        significant_loadings=sig_mask, loading_resamples=n_loading if k_kept else 0, rule_requested=rule,
        rule_text=describe_rule(concrete, alpha=alpha, snr_threshold=snr_threshold, bh_dimensions=bh_dimensions,
                                gppca_bh=gppca_bh),
        bh_dimensions=bh_dimensions, gppca_bh=gppca_bh, kaiser=kaiser,
    )
