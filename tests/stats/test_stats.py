"""cxatlas.stats against independent references (pingouin, statsmodels, scipy, brute-force numpy).

Small seeded random data; every check could fail if the algebra were wrong. No Spark needed.
"""
from __future__ import annotations

import ast
import dataclasses
import io
import hashlib
import pathlib

import numpy as np
import pandas as pd
import pingouin
import pytest
import scipy.sparse as sp
import scipy.stats
from statsmodels.multivariate.cancorr import CanCorr
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import DescrStatsW

import cxatlas.stats as cs
from cxatlas.stats import bootstrap, cca, correlation, moments
from cxatlas.stats import tests as stat_tests

TOL = 1e-8


# ---------------------------------------------------------------------------------------------------------------
# data helpers
# ---------------------------------------------------------------------------------------------------------------

def make_videos(rng: np.random.Generator, n: int, E: int, K: int, R: int, density: float = 0.3):
    """Expressions that depend on contexts, sparse context scores in [0, 1] (some exact 1s), region codes."""
    C = sp.random(n, K, density=density, format="csr", random_state=np.random.RandomState(rng.integers(2**31)),
                  data_rvs=lambda k: np.where(rng.random(k) < 0.5, 1.0, rng.random(k)))
    loading = rng.normal(size=(K, E))
    X = np.asarray(C @ loading) * 0.1 + rng.random((n, E))
    region = rng.integers(0, R, n)
    return X, C, region


def dense_moments(X, C, region, W, R, thr):
    """Brute force: explicit loops over regions and replicates with dense arrays."""
    Cd = C.toarray() if sp.issparse(C) else np.asarray(C)
    n, E = X.shape
    K = Cd.shape[1]
    B1 = W.shape[1]
    out = {k: np.zeros(s) for k, s in dict(n=(R, B1), sx=(R, B1, E), sxx=(R, B1, E, E), sc=(R, B1, K),
                                            scc=(R, B1, K), sxc=(R, B1, E, K), occurred=(R, K),
                                            so=(R, B1, K)).items()}
    for r in range(R):
        rows = region == r
        Xr, Cr = X[rows], Cd[rows]
        out["occurred"][r] = (Cr >= thr).sum(axis=0)
        for b in range(B1):
            w = W[rows, b]
            out["n"][r, b] = w.sum()
            out["sx"][r, b] = (w[:, None] * Xr).sum(0)
            out["sxx"][r, b] = np.einsum("i,ie,if->ef", w, Xr, Xr)
            out["sc"][r, b] = (w[:, None] * Cr).sum(0)
            out["scc"][r, b] = (w[:, None] * Cr ** 2).sum(0)
            out["sxc"][r, b] = np.einsum("i,ie,ik->ek", w, Xr, Cr)
            out["so"][r, b] = w @ (Cr >= thr)
    return out


def assert_moments_close(m: cs.Moments, ref: dict, rtol: float = 1e-10) -> None:
    for name, arr in ref.items():
        got = getattr(m, name)
        assert got.shape == arr.shape, name
        np.testing.assert_allclose(got, arr, rtol=rtol, atol=rtol * max(1.0, np.abs(arr).max()), err_msg=name)


# ---------------------------------------------------------------------------------------------------------------
# bootstrap
# ---------------------------------------------------------------------------------------------------------------

def test_stable_hash_is_blake2b_and_pinned():
    ids = ["abc", "video_0001", "ünïcode"]
    h = cs.stable_hash(ids)
    assert h.dtype == np.uint64
    for vid, v in zip(ids, h):
        assert int(v) == int.from_bytes(hashlib.blake2b(vid.encode(), digest_size=8).digest(), "little")
    # Pinned so a refactor cannot silently change every bootstrap replicate of past runs.
    assert int(h[0]) == 6455300059550759896 and int(h[1]) == 10229912150861770696


def test_poisson_weights_deterministic_and_partition_free():
    rng = np.random.default_rng(1)
    hashes = rng.integers(-2**63, 2**63 - 1, size=20_000, dtype=np.int64)  # Spark's xxhash64 is signed
    W = cs.poisson_weights(hashes, 50, seed=7)
    assert W.shape == (20_000, 51) and W.dtype == np.float64
    assert np.all(W[:, 0] == 1.0)
    assert np.all(W == np.round(W)) and W.min() >= 0
    # identical under re-computation, permutation, chunking and the uint64 reinterpretation
    np.testing.assert_array_equal(W, cs.poisson_weights(hashes, 50, seed=7))
    perm = rng.permutation(hashes.size)
    np.testing.assert_array_equal(W[perm], cs.poisson_weights(hashes[perm], 50, seed=7))
    chunks = [cs.poisson_weights(c, 50, seed=7) for c in np.array_split(hashes, [3, 5000, 12_345])]
    np.testing.assert_array_equal(W, np.vstack(chunks))
    np.testing.assert_array_equal(W, cs.poisson_weights(hashes.view(np.uint64), 50, seed=7))
    # fewer replicates = a prefix of the columns (replicate b does not depend on B)
    np.testing.assert_array_equal(W[:, :11], cs.poisson_weights(hashes, 10, seed=7))
    # Poisson(1): mean 1, variance 1, P(0) = P(1) = 1/e, replicates uncorrelated, seed matters
    reps = W[:, 1:]
    assert abs(reps.mean() - 1.0) < 0.005
    assert abs(reps.var() - 1.0) < 0.01
    assert abs((reps == 0).mean() - np.exp(-1)) < 0.003
    assert abs((reps == 2).mean() - np.exp(-1) / 2) < 0.003
    cc = np.corrcoef(reps.T)[np.triu_indices(50, 1)]
    assert np.abs(cc).max() < 0.04
    other = cs.poisson_weights(hashes, 50, seed=8)
    assert (other[:, 1:] != reps).mean() > 0.5
    # regression pin of the counter-based hash
    pinned = cs.poisson_weights(np.array([0, 1, -1, 1234567890123]), 8, 42)
    np.testing.assert_array_equal(pinned[:, 1:], [[0, 1, 1, 2, 1, 1, 1, 1], [1, 1, 0, 0, 2, 1, 3, 0],
                                                  [1, 1, 2, 1, 1, 0, 0, 2], [1, 1, 0, 0, 0, 0, 0, 0]])


def test_bootstrap_summary_nan_aware():
    rng = np.random.default_rng(2)
    vals = rng.normal(size=(21, 3, 4))
    vals[5, 0, 0] = np.nan
    vals[1:, 2, 3] = np.nan
    vals[2:, 1, 1] = np.nan  # one finite replicate only
    vals[0, 2, 0] = np.nan  # undefined on the observed data, defined in every resample
    point, se = cs.bootstrap_summary(vals)
    np.testing.assert_array_equal(point, vals[0])
    x = vals[1:, 0, 0]
    x = x[np.isfinite(x)]
    assert se[0, 0] == pytest.approx(np.sqrt(((x - x.mean()) ** 2).sum() / (x.size - 1)), rel=1e-12)
    assert se[1, 2] == pytest.approx(np.std(vals[1:, 1, 2], ddof=1), rel=1e-12)
    assert np.isnan(se[2, 3]) and np.isnan(se[1, 1])
    assert np.isnan(point[2, 0]) and np.isnan(se[2, 0])


# ---------------------------------------------------------------------------------------------------------------
# moments
# ---------------------------------------------------------------------------------------------------------------

def test_accumulate_matches_dense_bruteforce():
    rng = np.random.default_rng(3)
    X, C, region = make_videos(rng, n=301, E=4, K=7, R=4)
    region[region == 2] = 1  # region 2 left empty on purpose
    W = cs.poisson_weights(cs.stable_hash([f"v{i}" for i in range(301)]), 5, seed=3)
    ref = dense_moments(X, C, region, W, 4, thr=0.5)
    for chunk_rows in (7, 4096):  # chunked and single-chunk sparse products
        m = cs.accumulate(X, C, region, W, n_regions=4, occur_threshold=0.5, chunk_rows=chunk_rows)
        assert m.shape == (4, 6, 4, 7)
        assert_moments_close(m, ref)
    assert np.all(m.n[2] == 0) and np.all(m.sxc[2] == 0)
    # dense input, and threshold 0 counts implicit zeros as occurrences
    m0 = cs.accumulate(X, C.toarray(), region, W, n_regions=4, occur_threshold=0.0)
    assert_moments_close(m0, dense_moments(X, C, region, W, 4, thr=0.0))
    # weights=None is replicate 0
    m1 = cs.accumulate(X, C, region, None, n_regions=4)
    np.testing.assert_allclose(m1.sxc[:, 0], m.sxc[:, 0], rtol=1e-12)
    with pytest.raises(ValueError):
        cs.accumulate(X, C, region + 1, W, n_regions=4)


def test_moments_additive_and_serialisable():
    rng = np.random.default_rng(4)
    X, C, region = make_videos(rng, n=500, E=5, K=9, R=3)
    W = cs.poisson_weights(rng.integers(0, 2**62, 500), 4, seed=1)
    whole = cs.accumulate(X, C, region, W, 3)
    cut = [0, 37, 200, 500]
    parts = [cs.accumulate(X[a:b], C[a:b], region[a:b], W[a:b], 3) for a, b in zip(cut[:-1], cut[1:])]
    summed = parts[0] + parts[1] + parts[2]
    total = cs.Moments.total(parts)
    for name in ("n", "sx", "sxx", "sc", "scc", "sxc", "occurred"):
        np.testing.assert_allclose(getattr(summed, name), getattr(whole, name), rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(getattr(total, name), getattr(summed, name))
    acc = parts[0].copy()
    acc += parts[1]
    acc += parts[2]
    np.testing.assert_array_equal(acc.sxc, summed.sxc)
    assert np.all(parts[0].n == cs.accumulate(X[:37], C[:37], region[:37], W[:37], 3).n)  # += did not alias
    # bytes round trip, including a partial that covers one region only (stored compactly)
    one = cs.accumulate(X[region == 1], C[region == 1], region[region == 1], W[region == 1], 3)
    for obj in (whole, one):
        for compress in (False, True):
            back = cs.Moments.from_bytes(obj.to_bytes(compress=compress))
            for name in ("n", "sx", "sxx", "sc", "scc", "sxc", "occurred"):
                np.testing.assert_array_equal(getattr(back, name), getattr(obj, name))
    assert len(one.to_bytes()) < 0.5 * len(whole.to_bytes())
    with pytest.raises(ValueError):
        cs.CcaMoments.from_bytes(whole.to_bytes())
    with pytest.raises(ValueError):
        whole + cs.Moments.zeros(3, 5, 5, 10)


def test_accumulate_cca_matches_dense_and_adds():
    rng = np.random.default_rng(5)
    X, C, region = make_videos(rng, n=240, E=3, K=6, R=2)
    w = rng.random(240) + 0.5
    cm = cs.accumulate_cca(X, C, region, 2, weight=w)
    Cd = C.toarray()
    for r in range(2):
        rows = region == r
        Xr, Cr, wr = X[rows], Cd[rows], w[rows]
        np.testing.assert_allclose(cm.n[r], wr.sum(), rtol=1e-12)
        np.testing.assert_allclose(cm.sx[r], wr @ Xr, rtol=1e-12)
        np.testing.assert_allclose(cm.sc[r], wr @ Cr, rtol=1e-12)
        np.testing.assert_allclose(cm.sxx[r], (Xr * wr[:, None]).T @ Xr, rtol=1e-12)
        np.testing.assert_allclose(cm.sxc[r], (Xr * wr[:, None]).T @ Cr, rtol=1e-12)
        np.testing.assert_allclose(cm.scc_full[r], (Cr * wr[:, None]).T @ Cr, rtol=1e-12, atol=1e-14)
    halves = cs.accumulate_cca(X[:100], C[:100], region[:100], 2, w[:100]) + \
        cs.accumulate_cca(X[100:], C[100:], region[100:], 2, w[100:])
    np.testing.assert_allclose(halves.scc_full, cm.scc_full, rtol=1e-10, atol=1e-12)
    back = cs.CcaMoments.from_bytes(cm.to_bytes())
    np.testing.assert_array_equal(back.scc_full, cm.scc_full)
    # A field filled for fewer regions than the others (the all-video sums of one region) is stored for those regions
    # only, and comes back whole; so does a payload in the layout written before per-field regions (one region list).
    us = region == 1
    mixed = cm + cs.accumulate_cca(X[us], C[us], region[us], 2, all_videos=True)
    assert mixed.scc_all[0].any() == False and mixed.scc_all[1].any()  # noqa: E712
    data = mixed.to_bytes()
    back = cs.CcaMoments.from_bytes(data)
    for f in dataclasses.fields(mixed):
        np.testing.assert_array_equal(getattr(back, f.name), getattr(mixed, f.name))
    with np.load(io.BytesIO(data)) as z:
        assert z["_regions_scc_all"].tolist() == [1] and z["scc_all"].shape == (1, 6, 6)
        old = {k: z[k] for k in z.files if not k.startswith("_regions_")}
    old.update({f.name: getattr(mixed, f.name) for f in dataclasses.fields(mixed)}, _regions=np.arange(2))
    buf = io.BytesIO()
    np.savez(buf, **old)
    back = cs.CcaMoments.from_bytes(buf.getvalue())
    np.testing.assert_array_equal(back.scc_all, mixed.scc_all)


def test_covariance_parts_match_numpy():
    rng = np.random.default_rng(6)
    X, C, region = make_videos(rng, n=200, E=3, K=5, R=2)
    W = cs.poisson_weights(rng.integers(0, 2**62, 200), 2, seed=0)
    parts = cs.covariance_parts(cs.accumulate(X, C, region, W, 2), ddof=1)
    Cd = C.toarray()
    for r in range(2):
        for b in range(3):
            rows = region == r
            fw = W[rows, b].astype(int)
            Z = np.hstack([X[rows], Cd[rows]])
            full = np.cov(Z, rowvar=False, fweights=fw, ddof=1)
            np.testing.assert_allclose(parts.cov_xx[r, b], full[:3, :3], rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(parts.cov_xc[r, b], full[:3, 3:], rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(parts.var_c[r, b], np.diag(full)[3:], rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(parts.mean_x[r, b], np.average(X[rows], axis=0, weights=fw), rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# correlations
# ---------------------------------------------------------------------------------------------------------------

def test_partial_correlations_match_pingouin_including_bootstrap_weights():
    rng = np.random.default_rng(7)
    E, K = 4, 3
    X, C, region = make_videos(rng, n=400, E=E, K=K + 1, R=2, density=0.4)
    Cd = C.toarray()
    Cd[region == 1, K] = 0.0  # context K never occurs in region 1 -> NaN there
    W = cs.poisson_weights(rng.integers(0, 2**62, 400), 2, seed=5)
    m = cs.accumulate(X, sp.csr_matrix(Cd), region, W, 2)
    pc = cs.partial_correlations(m)
    assert pc.shape == (2, 3, K + 1, E)
    assert np.all(np.isnan(pc[1, :, K])) and np.all(np.isfinite(pc[0, :, K]))
    ecols = [f"e{i}" for i in range(E)]
    checked = 0
    for r in range(2):
        for b in (0, 2):  # replicate 2: Poisson weights are integers = duplicated rows
            rows = np.repeat(np.flatnonzero(region == r), W[region == r, b].astype(int))
            df = pd.DataFrame(np.hstack([X[rows], Cd[rows]]), columns=ecols + [f"c{k}" for k in range(K + 1)])
            for k in range(K):
                for e in range(E):
                    others = [c for c in ecols if c != ecols[e]]
                    ref = pingouin.partial_corr(df, x=f"c{k}", y=ecols[e], covar=others)["r"].iloc[0]
                    assert pc[r, b, k, e] == pytest.approx(ref, abs=TOL)
                    checked += 1
    assert checked == 2 * 2 * K * E


def test_semipartial_correlations_match_pingouin():
    rng = np.random.default_rng(8)
    E, K = 3, 2
    X, C, region = make_videos(rng, n=300, E=E, K=K, R=1, density=0.5)
    sr = cs.semipartial_correlations(cs.accumulate(X, C, region, None, 1))
    df = pd.DataFrame(np.hstack([X, C.toarray()]), columns=["e0", "e1", "e2", "c0", "c1"])
    for k in range(K):
        for e in range(E):
            others = [f"e{j}" for j in range(E) if j != e]
            ref = pingouin.partial_corr(df, x=f"e{e}", y=f"c{k}", x_covar=others)["r"].iloc[0]
            assert sr[0, 0, k, e] == pytest.approx(ref, abs=TOL)


def test_prevalence_and_analysed_contexts():
    rng = np.random.default_rng(9)
    X, C, region = make_videos(rng, n=300, E=2, K=5, R=3)
    m = cs.accumulate(X, C, region, cs.poisson_weights(np.arange(300), 3, 0), 3, occur_threshold=0.5)
    Cd = C.toarray()
    W = cs.poisson_weights(np.arange(300), 3, 0)
    for r in range(3):
        # "the proportion of times that the context occurred": the occurrence event of the filter, per replicate
        for b in range(4):
            w = W[region == r, b]
            np.testing.assert_allclose(cs.prevalence(m)[r, b], w @ (Cd[region == r] >= 0.5) / w.sum(), rtol=1e-12)
        np.testing.assert_allclose(cs.mean_context_score(m)[r, 0], Cd[region == r].mean(axis=0), rtol=1e-12)
    assert not np.allclose(cs.prevalence(m)[:, 0], cs.mean_context_score(m)[:, 0])  # continuous scores: they differ
    counts = (Cd >= 0.5).sum(axis=0)
    thr = int(np.median(counts))
    np.testing.assert_array_equal(cs.analysed_contexts(m, min_occurrences=thr), counts >= thr)
    per_region = np.stack([(Cd[region == r] >= 0.5).sum(axis=0) for r in range(3)])
    np.testing.assert_array_equal(cs.analysed_contexts(m, thr // 3, per_region=True),
                                  np.all(per_region >= thr // 3, axis=0))


def test_weighted_pearson_matches_descrstatsw_and_drops_nan():
    rng = np.random.default_rng(10)
    a = rng.normal(size=200)
    b = 0.4 * a + rng.normal(size=200)
    w = rng.random(200)
    ref = DescrStatsW(np.c_[a, b], weights=w).corrcoef[0, 1]
    assert cs.weighted_pearson(a, b, w) == pytest.approx(ref, abs=TOL)
    a2, b2 = a.copy(), b.copy()
    a2[[3, 50]] = np.nan
    b2[7] = np.nan
    keep = np.isfinite(a2) & np.isfinite(b2)
    ref2 = DescrStatsW(np.c_[a[keep], b[keep]], weights=w[keep]).corrcoef[0, 1]
    assert cs.weighted_pearson(a2, b2, w) == pytest.approx(ref2, abs=TOL)
    assert np.isnan(cs.weighted_pearson(np.ones(5), np.arange(5.0), np.ones(5)))


def test_fisher_mean_direct_formula():
    rng = np.random.default_rng(11)
    r = np.tanh(rng.normal(size=(6, 5)))
    r[2, 1] = np.nan
    got = cs.fisher_mean(r, axis=0)
    for j in range(5):
        col = r[:, j][np.isfinite(r[:, j])]
        assert got[j] == pytest.approx(np.tanh(np.mean(np.arctanh(col))), abs=1e-12)
    assert np.isfinite(cs.fisher_mean(np.array([1.0, 1.0, -0.5])))  # clipped, not inf
    assert cs.fisher_mean(np.array([0.5, -0.5])) == pytest.approx(0.0, abs=1e-15)


def test_region_similarity_by_hand():
    # K = 4 contexts, E = 1. Context weights p(1-p) = (.25, .25, .125, .25) -> cell weights (2, 2, 1, 2) / 8.
    p3 = (1 - np.sqrt(0.5)) / 2
    prev = np.array([[0.5, 0.5, p3, 0.5]] * 3)
    a = np.array([0.1, 0.3, 0.2, np.nan])   # context 4 is NaN in region 0: left out of every pair with it
    b = np.array([0.2, 0.1, 0.4, 0.9])
    c = 2.0 * a + 0.05                       # affine copy of region 0
    sim = cs.region_similarity(np.stack([a, b, c])[:, :, None], prev)
    # By hand on the three shared cells, weights (2, 2, 1): means 0.2, 0.2; deviations (-.1, .1, 0), (0, -.1, .2);
    # cov = -0.02/5, var_a = 0.04/5, var_b = 0.06/5  ->  r = -0.02 / sqrt(0.0024) = -1/sqrt(6).
    assert sim[0, 1] == pytest.approx(-1 / np.sqrt(6), abs=1e-12)
    assert sim[1, 2] == pytest.approx(-1 / np.sqrt(6), abs=1e-12)
    assert sim[0, 2] == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_array_equal(np.diag(sim), 1.0)
    np.testing.assert_array_equal(sim, sim.T)
    # weights matter: giving context 3 no weight in region 1 changes the 0-1 similarity to an unweighted 2-cell one
    prev2 = prev.copy()
    prev2[1, 2] = 0.0
    assert cs.region_similarity(np.stack([a, b, c])[:, :, None], prev2)[0, 1] == pytest.approx(-1.0, abs=1e-12)


def test_region_vs_world_matches_direct_computation():
    rng = np.random.default_rng(12)
    R, K, E = 5, 30, 3
    shared = rng.normal(size=(K, E)) * 0.3
    pcorr = np.tanh(shared[None] + 0.15 * rng.normal(size=(R, K, E)))
    pcorr[1, 4, :] = np.nan
    pcorr[3, 10, 2] = np.nan
    prev = rng.uniform(0.01, 0.4, size=(R, K))
    r2, best, best_r2 = cs.region_vs_world(pcorr, prev)
    sim = cs.region_similarity(pcorr, prev)
    for r in range(R):
        others = [s for s in range(R) if s != r]
        with np.errstate(invalid="ignore"):
            world = np.tanh(np.nanmean(np.arctanh(pcorr[others]), axis=0))
        wc = np.sqrt(prev[r] * (1 - prev[r])) * np.mean(np.sqrt(prev[others] * (1 - prev[others])), axis=0)
        w = np.repeat(wc, E)
        a, b = pcorr[r].ravel(), world.ravel()
        keep = np.isfinite(a) & np.isfinite(b)
        ref = DescrStatsW(np.c_[a[keep], b[keep]], weights=w[keep]).corrcoef[0, 1] ** 2
        assert r2[r] == pytest.approx(ref, abs=TOL)
        s2 = sim[r, others] ** 2
        assert best[r] == others[int(np.argmax(s2))] and best_r2[r] == pytest.approx(s2.max(), abs=1e-14)
        assert r2[r] > 0.5  # shared structure is detected
    # batched over replicates == per replicate
    pcb, pvb = np.stack([pcorr, pcorr[::-1]]), np.stack([prev, prev[::-1]])
    r2b, bestb, _ = cs.region_vs_world_batched(pcb, pvb)
    np.testing.assert_allclose(r2b[0], r2, rtol=1e-13)
    np.testing.assert_allclose(r2b[1], r2[::-1], rtol=1e-12)
    np.testing.assert_allclose(cs.region_similarity_batched(pcb, pvb)[0], sim, rtol=1e-13)


def test_moments_to_region_statistics_end_to_end():
    """Bootstrap SEs shrink with more data, and the pipeline from sums to similarity runs on real shapes."""
    rng = np.random.default_rng(13)
    R, E, K, n = 3, 4, 12, 3000
    X, C, region = make_videos(rng, n=n, E=E, K=K, R=R, density=0.2)
    W = cs.poisson_weights(cs.stable_hash([f"vid{i}" for i in range(n)]), 30, seed=2)
    m = cs.accumulate(X, C, region, W, R)
    pc = cs.partial_correlations(m)
    prev = cs.prevalence(m)
    sims = cs.region_similarity_batched(np.moveaxis(pc, 1, 0), np.moveaxis(prev, 1, 0))
    point, se = cs.bootstrap_summary(sims)
    assert point.shape == (R, R) and np.all(se[~np.eye(R, dtype=bool)] > 0)
    assert np.all(point[~np.eye(R, dtype=bool)] > 0.5)  # same generative loadings in every region
    _, se_pc = cs.bootstrap_summary(pc)
    small = cs.accumulate(X[:600], C[:600], region[:600], W[:600], R)
    _, se_small = cs.bootstrap_summary(cs.partial_correlations(small))
    assert np.nanmedian(se_small) > 1.5 * np.nanmedian(se_pc)


# ---------------------------------------------------------------------------------------------------------------
# CCA
# ---------------------------------------------------------------------------------------------------------------

def cca_data(rng, n_per_region, R, E=3, K=5):
    latent = rng.normal(size=(n_per_region * R, 2))
    X = latent @ rng.normal(size=(2, E)) + rng.normal(size=(n_per_region * R, E))
    Cd = latent @ rng.normal(size=(2, K)) + rng.normal(size=(n_per_region * R, K))
    region = np.repeat(np.arange(R), n_per_region)
    return X, Cd, region


def test_cca_matches_statsmodels_cancorr_and_tests():
    rng = np.random.default_rng(14)
    X, Cd, region = cca_data(rng, 150, 2, E=4, K=6)
    cm = cs.accumulate_cca(X, sp.csr_matrix(Cd), region, 2)
    blocks = cs.balanced_covariance(cm, [0, 1])
    assert blocks.n == 300
    fit = cs.cca_fit(blocks.cov_xx, blocks.cov_cc, blocks.cov_xc)
    ref = CanCorr(Cd, X)
    np.testing.assert_allclose(fit.rho, ref.cancorr, atol=TOL)
    # variates are unit-variance, mutually uncorrelated, and pair j correlates rho_j (on the raw data)
    U = (X - X.mean(0)) @ fit.A
    V = (Cd - Cd.mean(0)) @ fit.B
    cov = np.cov(np.hstack([U, V]), rowvar=False, bias=True)
    np.testing.assert_allclose(cov[:4, :4], np.eye(4), atol=1e-9)
    np.testing.assert_allclose(cov[:4, 4:], np.diag(fit.rho), atol=1e-9)
    # same directions as statsmodels (up to sign and scale)
    for j in range(4):
        assert abs(np.corrcoef(U[:, j], (X - X.mean(0)) @ ref.x_cancoef[:, j])[0, 1]) == pytest.approx(1, abs=1e-8)
    # Wilks' lambda / Rao's F exactly as statsmodels corr_test (endog = contexts, p = 6)
    st = ref.corr_test().stats
    wilks, F, df1, df2, p_f = cs.rao_f_test(fit.rho, 300, 6, 4)
    np.testing.assert_allclose(wilks, st["Wilks' lambda"].astype(float), rtol=TOL)
    np.testing.assert_allclose(F, st["F Value"].astype(float), rtol=TOL)
    np.testing.assert_allclose(p_f, st["Pr > F"].astype(float), rtol=1e-6, atol=1e-300)
    # Bartlett chi-square from statsmodels' Wilks' lambda
    chi2, df, p_chi = cs.bartlett_test(fit.rho, 300, 4, 6)
    ref_chi2 = -(300 - 1 - (4 + 6 + 1) / 2) * np.log(st["Wilks' lambda"].astype(float).to_numpy())
    np.testing.assert_allclose(chi2, ref_chi2, rtol=TOL)
    np.testing.assert_array_equal(df, [24, 15, 8, 3])
    np.testing.assert_allclose(p_chi, scipy.stats.chi2.sf(ref_chi2, df), rtol=1e-6, atol=1e-300)
    # both approximations agree on which dimensions are real (2 latent factors were planted)
    assert np.array_equal(p_chi < 0.01, p_f < 0.01) and (p_chi < 0.01).sum() == 2


def test_cca_ridge_and_degenerate_contexts():
    rng = np.random.default_rng(15)
    X, Cd, region = cca_data(rng, 200, 1, E=3, K=5)
    Cd = np.hstack([Cd, np.zeros((200, 2))])  # two contexts that never occur
    cm = cs.accumulate_cca(X, sp.csr_matrix(Cd), region, 1)
    b = cs.balanced_covariance(cm, [0])
    plain = cs.cca_fit(b.cov_xx, b.cov_cc, b.cov_xc)
    np.testing.assert_allclose(plain.rho, CanCorr(Cd[:, :5], X).cancorr, atol=TOL)
    assert np.all(plain.B[5:] == 0)
    ridged = cs.cca_fit(b.cov_xx, b.cov_cc, b.cov_xc, ridge=0.5)
    assert np.all(np.isfinite(ridged.rho)) and ridged.rho[0] <= plain.rho[0] + 1e-12
    assert ridged.rho[0] > 0.5 * plain.rho[0]


def heldout_bruteforce(X, Cd, region, train, test):
    """Fit statsmodels CanCorr on the training rows; correlate its variates on the test rows."""
    tr, te = np.isin(region, train), region == test
    ref = CanCorr(Cd[tr], X[tr])
    U = X[te] @ ref.x_cancoef
    V = Cd[te] @ ref.y_cancoef
    return np.array([np.corrcoef(U[:, j], V[:, j])[0, 1] for j in range(U.shape[1])])


def test_leave_one_region_out_and_fit_on_one_region_bruteforce():
    rng = np.random.default_rng(16)
    R = 4
    X, Cd, region = cca_data(rng, 120, R)
    region[region == 3] = 2  # region 3 empty -> NaN row
    cm = cs.accumulate_cca(X, sp.csr_matrix(Cd), region, R)
    loro = cs.leave_one_region_out(cm, ridge=0.0, equal_mass=False)
    assert loro.shape == (R, 3) and np.all(np.isnan(loro[3]))
    for r in range(3):
        ref = heldout_bruteforce(X, Cd, region, [s for s in range(3) if s != r], r)
        np.testing.assert_allclose(loro[r], ref, atol=TOL)
    assert np.all(loro[:3, 0] > 0.3)
    one = cs.fit_on_one_region(cm, 1)
    assert np.all(np.isnan(one[1])) and np.all(np.isnan(one[3]))
    for r in (0, 2):
        np.testing.assert_allclose(one[r], heldout_bruteforce(X, Cd, region, [1], r), atol=TOL)


def test_balanced_covariance_equal_mass():
    rng = np.random.default_rng(17)
    X, Cd, _ = cca_data(rng, 300, 1)
    region = np.r_[np.zeros(100, int), np.ones(200, int)]
    cm = cs.accumulate_cca(X, sp.csr_matrix(Cd), region, 2)
    eq = cs.balanced_covariance(cm, np.array([True, True]), equal_mass=True)
    aw = np.where(region == 0, 1.5, 0.75)  # both regions carry mass 150
    full = np.cov(np.hstack([X, Cd]), rowvar=False, aweights=aw, bias=True)
    np.testing.assert_allclose(eq.cov_xx, full[:3, :3], rtol=1e-10)
    np.testing.assert_allclose(eq.cov_xc, full[:3, 3:], rtol=1e-10)
    np.testing.assert_allclose(eq.cov_cc, full[3:, 3:], rtol=1e-10)
    np.testing.assert_allclose(eq.mean_x, np.average(X, axis=0, weights=aw), rtol=1e-12)
    assert eq.n == 300
    plain = cs.balanced_covariance(cm, [0, 1], equal_mass=False)
    np.testing.assert_allclose(plain.cov_cc, np.cov(Cd, rowvar=False, bias=True), rtol=1e-10)


def test_expression_variates_are_bin_means():
    rng = np.random.default_rng(18)
    X, Cd, region = cca_data(rng, 200, 1)
    cm = cs.accumulate_cca(X, sp.csr_matrix(Cd), region, 1)
    b = cs.balanced_covariance(cm, [0])
    fit = cs.cca_fit(b.cov_xx, b.cov_cc, b.cov_xc)
    bins = rng.integers(0, 7, 200)
    means = np.stack([X[bins == k].mean(0) for k in range(7)])
    scores = (X - b.mean_x) @ fit.A
    ref = np.stack([scores[bins == k].mean(0) for k in range(7)])
    np.testing.assert_allclose(cs.expression_variates(fit, means, b.mean_x), ref, atol=1e-12)
    np.testing.assert_allclose(cs.expression_variates(fit, means, b.mean_x, dims=2), ref[:, :2], atol=1e-12)
    cmeans = np.stack([Cd[bins == k].mean(0) for k in range(7)])
    cref = np.stack([((Cd - b.mean_c) @ fit.B)[bins == k].mean(0) for k in range(7)])
    np.testing.assert_allclose(cs.context_variates(fit, cmeans, b.mean_c), cref, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# hypothesis tests
# ---------------------------------------------------------------------------------------------------------------

def test_signed_rank_tests_match_scipy_and_exact_value():
    rng = np.random.default_rng(19)
    held = rng.normal(0.1, 0.2, size=(12, 5))
    held[:, 0] = np.abs(held[:, 0]) + 0.01  # all 12 positive: exact p = 2**-12, W+ = 78
    held[4, 3] = np.nan
    stat, p = cs.signed_rank_tests(held)
    assert stat[0] == 78 and p[0] == pytest.approx(2.0 ** -12, rel=1e-12)
    for d in range(5):
        x = held[:, d][np.isfinite(held[:, d])]
        ref = scipy.stats.wilcoxon(x, alternative="greater")
        assert stat[d] == ref.statistic and p[d] == pytest.approx(ref.pvalue, rel=1e-12)
    s2, p2 = cs.signed_rank_tests(np.full((12, 2), np.nan))
    assert np.all(np.isnan(s2)) and np.all(np.isnan(p2))


def test_bh_qvalues_match_statsmodels():
    rng = np.random.default_rng(20)
    p = np.concatenate([rng.uniform(0, 0.01, 10), rng.uniform(0, 1, 40)])
    p[[3, 20]] = p[[7, 30]]  # ties
    q = cs.bh_qvalues(p)
    np.testing.assert_allclose(q, multipletests(p, method="fdr_bh")[1], rtol=1e-12)
    assert np.all(q <= 1) and np.all(q >= p)
    order = np.argsort(p)
    assert np.all(np.diff(q[order]) >= 0)
    p2 = p.reshape(5, 10).copy()
    p2[0, 0] = np.nan
    q2 = cs.bh_qvalues(p2)
    keep = np.isfinite(p2)
    assert np.isnan(q2[0, 0]) and q2.shape == (5, 10)
    np.testing.assert_allclose(q2[keep], multipletests(p2[keep], method="fdr_bh")[1], rtol=1e-12)


def test_stats_package_never_imports_pyspark():
    pkg = pathlib.Path(cs.__file__).parent
    for module in (bootstrap, cca, correlation, moments, stat_tests):
        assert pathlib.Path(module.__file__).parent == pkg
    for path in pkg.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(name.split(".")[0] in {"pyspark", "torch", "pandas"} for name in names), (path, names)


def _bh_by_hand(p: np.ndarray) -> np.ndarray:
    """The step-up formula bh_qvalues computed itself before it delegated to scipy (kept here as the reference)."""
    p = np.asarray(p, dtype=np.float64)
    flat, q = p.ravel(), np.full(p.size, np.nan)
    ok = np.flatnonzero(np.isfinite(flat))
    order = ok[np.argsort(flat[ok], kind="stable")]
    scaled = flat[order] * ok.size / np.arange(1, ok.size + 1)
    q[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return q.reshape(p.shape)


def test_bh_qvalues_delegate_to_scipy_with_unchanged_results():
    rng = np.random.default_rng(26)
    for shape in [(1,), (7,), (48,), (12, 16), (3, 5, 40)]:
        p = rng.uniform(0, 1, shape) ** 3
        p.ravel()[:: 5] = np.nan
        p.ravel()[1:: 7] = p.ravel()[2:: 7][: p.ravel()[1:: 7].size]  # ties
        np.testing.assert_allclose(cs.bh_qvalues(p), _bh_by_hand(p), rtol=1e-15, atol=0, equal_nan=True)
    assert np.isnan(cs.bh_qvalues(np.full(3, np.nan))).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cs.bh_qvalues(np.array([0.2, 1.5]))
    import inspect

    assert "false_discovery_control" in inspect.getsource(cs.bh_qvalues)


def test_geobin_sums_round_trip_with_sparse_context_sums():
    """The bins' context sums travel as CSR (a bin holds few videos, each with few contexts): exactly the same sums
    come back, in fewer bytes than dense, and a payload written dense before still loads."""
    from cxatlas.udfs.moments import GeobinSums

    rng = np.random.default_rng(8)
    n, E, K = 400, 4, 60
    X = rng.random((n, E))
    C = sp.random(n, K, density=0.05, random_state=3, format="csr") * 0.9 + 0.0
    geo = GeobinSums.from_rows(rng.integers(-30, 30, n), rng.integers(-30, 30, n), X, C)
    assert 0 < (geo.sc != 0).mean() < 0.2
    data = geo.to_bytes()
    back = GeobinSums.from_bytes(data)
    for f in ("key", "n", "sx", "sxx", "sc"):
        np.testing.assert_array_equal(getattr(back, f), getattr(geo, f))
    dense = io.BytesIO()
    np.savez(dense, key=geo.key, n=geo.n, sx=geo.sx, sxx=geo.sxx, sc=geo.sc)
    assert len(data) < 0.5 * len(dense.getvalue())
    old = GeobinSums.from_bytes(dense.getvalue())
    np.testing.assert_array_equal(old.sc, geo.sc)
