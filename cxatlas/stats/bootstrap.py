"""Deterministic Poisson bootstrap weights and bootstrap summaries.

Cowen et al. (2021), Nature 589:251, Methods, attach standard errors to their statistics by resampling videos. With
millions of videos spread over Spark executors an ordinary bootstrap (draw n videos with replacement) would need a
global shuffle per replicate. The *Poisson bootstrap* replaces the multinomial draw by an independent Poisson(1)
count per video and replicate, which is asymptotically equivalent and needs no coordination: every executor can
weight its own videos and the per-replicate sums simply add up (see :mod:`cxatlas.stats.moments`).

To make results independent of partitioning, executor count and task retries, the count is not drawn from a
stateful random generator but *derived* from ``(video_hash, replicate, seed)`` by a counter-based hash
(splitmix64), mapped to a uniform number and pushed through the Poisson(1) inverse CDF.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from typing import Sequence

import numpy as np

__all__ = ["poisson_weights", "stable_hash", "bootstrap_summary", "splitmix64", "POISSON1_CDF"]

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
# Distinguishes the replicate-key stream from the video-hash premix, so the two never coincide.
_REPLICATE_SALT = np.uint64(0xD1B54A32D192ED03)


def _poisson1_cdf(max_count: int = 20) -> np.ndarray:
    """P(N <= k) for N ~ Poisson(1), k = 0..max_count.

    ``1 - P(N <= 20)`` is about 4e-20, far below the 2**-53 resolution of the uniforms, so the table is exhaustive.
    """
    pmf = np.array([math.exp(-1.0) / math.factorial(k) for k in range(max_count + 1)])
    return np.cumsum(pmf)


POISSON1_CDF: np.ndarray = _poisson1_cdf()


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (Steele, Lea & Flood 2014), vectorised over a uint64 array.

    A bijective, well-avalanched mix: nearby inputs (consecutive replicate numbers, similar hashes) give unrelated
    outputs. Arithmetic wraps modulo 2**64, as the algorithm requires.

    Parameters
    ----------
    x : ndarray of uint64, any shape

    Returns
    -------
    ndarray of uint64, same shape
    """
    z = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _as_uint64(values: np.ndarray | Sequence[int]) -> np.ndarray:
    """Reinterpret signed 64-bit hashes (Spark's ``xxhash64`` is a signed long) as uint64, two's complement."""
    arr = np.asarray(values)
    if arr.dtype == np.uint64:
        return arr
    if arr.dtype.kind == "i":
        return arr.astype(np.int64).view(np.uint64)
    if arr.dtype.kind == "u":
        return arr.astype(np.uint64)
    if arr.dtype == object:  # Python ints beyond int64 range
        return np.array([int(v) & _MASK64 for v in arr.ravel()], dtype=np.uint64).reshape(arr.shape)
    raise TypeError(f"video_hash must hold integers, got dtype {arr.dtype}")


def poisson_weights(video_hash: np.ndarray, n_replicates: int, seed: int = 0) -> np.ndarray:
    """Poisson(1) bootstrap weights derived deterministically from each video's hash.

    Column 0 is all ones (replicate 0 = the data as observed); column ``b >= 1`` holds
    ``F^-1(u)`` with ``F`` the Poisson(1) CDF and ``u = splitmix64(splitmix64(hash) ^ key(b, seed)) / 2**64``
    (top 53 bits). The same video therefore gets the same weight in replicate ``b`` whichever partition, batch,
    executor or retry processes it, which keeps the Spark aggregation reproducible.

    Parameters
    ----------
    video_hash : ndarray, shape (n,)
        64-bit hash of each video id. Spark callers pass ``xxhash64(video_id)`` (a signed long; negative values are
        reinterpreted as uint64). Non-Spark callers may use :func:`stable_hash`. Mixing the two hash functions in
        one analysis would give the same video different weights.
    n_replicates : int
        Number of bootstrap replicates ``B`` (>= 0).
    seed : int
        Bootstrap seed; change it to draw an independent set of replicates.

    Returns
    -------
    ndarray of float64, shape (n, 1 + n_replicates)
        Non-negative integer-valued weights (mean 1, variance 1 for columns >= 1).
    """
    if n_replicates < 0:
        raise ValueError(f"n_replicates must be >= 0, got {n_replicates}")
    h = _as_uint64(video_hash).ravel()
    out = np.ones((h.size, 1 + n_replicates), dtype=np.float64)
    if n_replicates == 0 or h.size == 0:
        return out
    seed_u = np.uint64(int(seed) & _MASK64)
    reps = np.arange(1, n_replicates + 1, dtype=np.uint64)
    # key(b, seed): two mixing rounds so that (seed, b) and (seed', b') never share a key by simple arithmetic.
    keys = splitmix64(splitmix64(reps ^ _REPLICATE_SALT) ^ seed_u)
    mixed = splitmix64(splitmix64(h)[:, None] ^ keys[None, :])
    u = (mixed >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)  # [0, 1) with 53-bit resolution
    counts = np.searchsorted(POISSON1_CDF, u, side="right")
    np.minimum(counts, POISSON1_CDF.size - 1, out=counts)
    out[:, 1:] = counts
    return out


def stable_hash(video_ids: Sequence[str]) -> np.ndarray:
    """A stable 64-bit hash of each id (BLAKE2b, 8-byte digest, little-endian), for callers without Spark.

    Python's built-in ``hash`` is salted per process and so unusable here. Spark jobs pass ``xxhash64(video_id)``
    to :func:`poisson_weights` instead; the two hashes differ, so do not mix them within one analysis.

    Parameters
    ----------
    video_ids : sequence of str, length n

    Returns
    -------
    ndarray of uint64, shape (n,)
    """
    out = np.empty(len(video_ids), dtype=np.uint64)
    for i, vid in enumerate(video_ids):
        out[i] = int.from_bytes(hashlib.blake2b(str(vid).encode("utf-8"), digest_size=8).digest(), "little")
    return out


def bootstrap_summary(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Point estimate and bootstrap standard error from a stack of replicate statistics.

    Parameters
    ----------
    values : ndarray, shape (B1, ...)
        The statistic computed on replicate 0 (the observed data) and on replicates 1..B.

    Returns
    -------
    point : ndarray, shape (...)
        ``values[0]``: the estimate on the observed data, not the replicate mean (which carries extra noise).
    se : ndarray, shape (...)
        Standard deviation (ddof=1) over replicates 1..B, ignoring NaN replicates (e.g. a context absent from one
        resample); NaN where fewer than two replicates are finite, and NaN where ``point`` is NaN (an undefined
        estimate has no standard error, even if some resamples happen to define the statistic).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 0 or values.shape[0] < 1:
        raise ValueError("values needs a leading replicate axis with replicate 0 first")
    point = values[0].copy()
    reps = values[1:]
    finite = np.isfinite(reps).sum(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        se = np.nanstd(reps, axis=0, ddof=1) if reps.shape[0] else np.full(point.shape, np.nan)
    se = np.where((finite >= 2) & np.isfinite(point), se, np.nan)
    return point, se
