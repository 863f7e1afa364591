"""The paper's Methods read literally, and its summary numbers, against direct computations (no Spark).

One small world of 12 regions with CONTINUOUS context scores (a classifier's probabilities, not 0/1) goes through
the executor pass exactly as Spark runs it (:class:`cxatlas.udfs.moments.MomentsPass` on Arrow batches in two
"tasks", :func:`combine_partials` per ``(kind, key)``, :func:`assemble`) and through :func:`compute_results`; each
result is then recomputed here from the per-video rows or from the per-region matrices with plain numpy:

* prevalence = share of videos where the context occurred (score >= occur_threshold), per bootstrap replicate, the
  same event as the minimum-occurrence filter, and the weight of the region similarity;
* the USA/Canada-trained CCA uses every US/Canada video (``analyze.cca.fit_region_sample=all``), evaluated on the
  other regions' balanced samples;
* the sequential Bartlett test (and Lawley's variant), BH on it only when asked, semi-partial correlations;
* contexts positive everywhere (Fig. 2), the region-similarity and region-vs-world numbers each against a
  from-scratch computation where the plausible wrong reading differs, the paper values paired by experiment and
  withheld with fewer than 12 regions, best match with SE, dimensions positive everywhere, CCA loadings, the geobin
  context side and the share of expression variance between geobins.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sp
from statsmodels.multivariate.cancorr import CanCorr
from statsmodels.stats.multitest import multipletests

import cxatlas.stats as cs
from cxatlas.core.regions import REGION_IDS
from cxatlas.core.taxonomies import load_taxonomy
from cxatlas.stages.analyze.results import compute_results
from cxatlas.stages.analyze.settings import check_settings
from cxatlas.udfs.moments import MomentsPass, assemble, combine_partials
from tests.conftest import make_config

R, E, K, PER_REGION, SAMPLE, B = len(REGION_IDS), 4, 9, 260, 150, 30
PREDICTION = 100  # videos per region of Extended Data Fig. 7's tenfold prediction (the paper: 5,000)
THR, MIN_OCC = 0.5, 100
US = REGION_IDS.index("us_canada")
TOL = 1e-8


def _world(seed: int = 3):
    """Expressions and sparse continuous context scores that depend on them; the US has 3x the videos."""
    rng = np.random.default_rng(seed)
    sizes = np.full(R, PER_REGION)
    sizes[US] = 3 * PER_REGION
    region = np.repeat(np.arange(R), sizes)
    n = region.size
    X = rng.normal(size=(n, E)) + 0.3 * rng.normal(size=(n, 1))
    beta = rng.normal(size=(E, K)) + 0.4 * rng.normal(size=(R, E, K))[region].mean(axis=0)
    z = np.einsum("ne,nek->nk", X, beta[None] + 0.3 * rng.normal(size=(R, E, K))[region]) + rng.normal(size=(n, K))
    offset = np.linspace(0.5, 3.0, K)
    offset[-1] = 4.2  # a rare context: filtered out by MIN_OCC
    score = 1 / (1 + np.exp(-(z - offset)))
    score[score < 0.15] = 0.0  # sparse, continuous where present
    C = sp.csr_matrix(score)
    h = rng.integers(-2**63, 2**63 - 1, size=n, dtype=np.int64)
    key = rng.integers(-2**63, 2**63 - 1, size=n, dtype=np.int64)
    lat_bin = rng.integers(0, 6, n) + 10 * region
    lon_bin = rng.integers(-3, 3, n)
    return dict(X=X, C=C, region=region, h=h, key=key, lat_bin=lat_bin, lon_bin=lon_bin,
                labels=list(load_taxonomy("nature2021_exp1").labels[:K]), expr=[f"expr_e{e}" for e in range(E)])


def _batches(w: dict, rows: np.ndarray, size: int = 300):
    """Arrow batches in the layout of ``prepare_input`` (contexts as list<struct<label, score>>)."""
    labels = pa.array(w["labels"], pa.string())
    for a in range(0, rows.size, size):
        idx = rows[a:a + size]
        C = w["C"][idx]
        structs = pa.StructArray.from_arrays([labels.take(pa.array(C.indices.astype(np.int32))),
                                              pa.array(C.data.astype(np.float64))], names=["label", "score"])
        cols = {"_region": pa.array(w["region"][idx].astype(np.int32)), "_hash": pa.array(w["h"][idx]),
                "_key": pa.array(w["key"][idx]), "lat_bin": pa.array(w["lat_bin"][idx].astype(np.int32)),
                "lon_bin": pa.array(w["lon_bin"][idx].astype(np.int32)),
                **{c: pa.array(w["X"][idx, j]) for j, c in enumerate(w["expr"])},
                "contexts": pa.ListArray.from_arrays(pa.array(C.indptr.astype(np.int32)), structs)}
        yield pa.RecordBatch.from_arrays(list(cols.values()), names=list(cols))


def _sums(w: dict, settings, all_regions=(US,)):
    """The executor pass in two tasks, the combine step per (kind, key), and the driver's assembly."""
    task = MomentsPass(expr_columns=w["expr"], labels=w["labels"], n_regions=R, n_replicates=settings.replicates,
                       seed=settings.seed, cca_per_region=SAMPLE, cca_all_regions=list(all_regions),
                       occur_threshold=settings.occur_threshold, batch_rows=500, chunk_rows=256, geobin_shards=2)
    order = np.random.default_rng(0).permutation(w["region"].size)
    parts = [b for half in np.array_split(order, 2) for b in task(_batches(w, half))]
    pdf = pa.Table.from_batches(parts).to_pandas()
    combined = pd.concat([combine_partials(g, settings.prediction_per_region) for _, g in pdf.groupby(["kind", "key"])])
    return assemble(combined.itertuples(index=False), R, settings.replicates + 1, E, K)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = _world()
    cfg = make_config(tmp_path_factory.mktemp("repl"), f"analyze.replicates={B}", f"analyze.occur_threshold={THR}",
                      f"analyze.min_occurrences={MIN_OCC}", f"analyze.cca.per_region={SAMPLE}",
                      f"analyze.prediction_per_region={PREDICTION}")
    settings = check_settings(cfg.settings.analyze)
    m, cm, bins = _sums(w, settings)
    frames = compute_results(m, cm, bins, w["expr"], w["labels"], settings)
    W = cs.poisson_weights(w["h"], B, settings.seed)
    occ = (w["C"].toarray() >= THR)
    keep = occ.sum(axis=0) >= MIN_OCC
    # the balanced sample: per region the SAMPLE videos with the smallest key
    sample = np.zeros(w["region"].size, dtype=bool)
    for r in range(R):
        rows = np.flatnonzero(w["region"] == r)
        sample[rows[np.argsort(w["key"][rows])[:SAMPLE]]] = True
    return dict(w=w, settings=settings, m=m, cm=cm, bins=bins, frames=frames, W=W, occ=occ, keep=keep, sample=sample)


def _matrices(frames, column: str = "r") -> np.ndarray:
    """(R, Ka, E) from the long correlations table, regions in REGION_IDS order, contexts in label order."""
    c = frames.correlations
    ctx = list(dict.fromkeys(c["context"]))
    return np.stack([c[c["region"] == r].pivot(index="context", columns="expression", values=column)
                     .loc[ctx].to_numpy() for r in REGION_IDS])


# ------------------------------------------------------------------------------------------------------------------
# 1. Prevalence: one definition of occurrence
# ------------------------------------------------------------------------------------------------------------------
def test_prevalence_is_the_share_of_videos_where_the_context_occurred(world):
    w, f, W, occ, keep = world["w"], world["frames"], world["W"], world["occ"], world["keep"]
    assert 0 < keep.sum() < K  # the filter bites: the rare context is out
    np.testing.assert_array_equal(f.analysed, keep)
    scores = w["C"].toarray()
    assert np.mean((scores > 0) & (scores < 1)) > 0.2  # the scores really are continuous
    prev = np.empty((B + 1, R, K))
    for r in range(R):
        rows = w["region"] == r
        prev[:, r] = (W[rows].T @ occ[rows]) / W[rows].sum(axis=0)[:, None]
    point, se = prev[0], prev[1:].std(axis=0, ddof=1)
    got = f.correlations.drop_duplicates(["region", "context"])
    ri = [REGION_IDS.index(r) for r in got["region"]]
    ki = [w["labels"].index(c) for c in got["context"]]
    np.testing.assert_allclose(got["prevalence"], point[ri, ki], rtol=0, atol=TOL)
    np.testing.assert_allclose(got["prevalence_se"], se[ri, ki], rtol=0, atol=TOL)
    mean_score = np.stack([scores[w["region"] == r].mean(axis=0) for r in range(R)])
    assert np.abs(point - mean_score).max() > 0.05  # the old definition would differ materially

    # ... and that p weights the region similarity: sqrt(p_a(1-p_a) p_b(1-p_b)) per context
    mats = _matrices(f)
    sd = np.sqrt(point * (1 - point))[:, keep]
    sim = f.similarity.pivot(index="region_a", columns="region_b", values="r").loc[REGION_IDS, REGION_IDS]
    for a, b in [(0, 1), (US, 3), (5, 11)]:
        wt = np.repeat(sd[a] * sd[b], E)
        x, y = mats[a].ravel(), mats[b].ravel()
        xm, ym = x - np.average(x, weights=wt), y - np.average(y, weights=wt)
        want = np.sum(wt * xm * ym) / np.sqrt(np.sum(wt * xm ** 2) * np.sum(wt * ym ** 2))
        assert sim.iloc[a, b] == pytest.approx(want, abs=TOL)


# ------------------------------------------------------------------------------------------------------------------
# 2. The USA/Canada-trained CCA uses every US/Canada video
# ------------------------------------------------------------------------------------------------------------------
def _corr_on(Xs, Cs, A, Bw) -> np.ndarray:
    U, V = Xs @ A, Cs @ Bw
    return np.array([np.corrcoef(U[:, j], V[:, j])[0, 1] for j in range(A.shape[1])])


def test_us_canada_fit_uses_every_us_canada_video(world):
    w, cm, f, sample, keep = world["w"], world["cm"], world["frames"], world["sample"], world["keep"]
    us = w["region"] == US
    assert cm.n_all[US] == us.sum() == 3 * PER_REGION and cm.n[US] == SAMPLE
    assert np.all(np.delete(cm.n_all, US) == 0) and np.all(cm.n == SAMPLE)
    head = f.headline.set_index("name")
    assert head.loc["fit_on_us_canada_n_videos", "value"] == us.sum()
    Cd = w["C"].toarray()[:, keep]
    ref = CanCorr(Cd[us], w["X"][us])  # statsmodels, on every US/Canada row
    got = f.cca_heldout[f.cca_heldout["variant"] == "fit_on_us_canada"]
    assert set(got["heldout_region"]) == set(REGION_IDS) - {"us_canada"}
    for r in (0, 4, 11):
        rows = sample & (w["region"] == r)  # evaluated on the other regions' balanced samples
        want = _corr_on(w["X"][rows], Cd[rows], ref.x_cancoef, ref.y_cancoef)
        g = got[got["heldout_region"] == REGION_IDS[r]].sort_values("dimension")["r"].to_numpy()
        np.testing.assert_allclose(g, want, atol=TOL)
    # analyze.cca.fit_region_sample=per_region: the fit uses the balanced sample, as leave-one-region-out does
    s = world["settings"]
    per = dataclasses.replace(s, cca=dataclasses.replace(s.cca, fit_region_sample="per_region"))
    m2, cm2, bins2 = _sums(w, per, all_regions=())
    assert cm2.n_all.sum() == 0
    f2 = compute_results(m2, cm2, bins2, w["expr"], w["labels"], per)
    assert f2.headline.set_index("name").loc["fit_on_us_canada_n_videos", "value"] == SAMPLE
    ref2 = CanCorr(Cd[us & sample], w["X"][us & sample])
    rows = sample & (w["region"] == 0)
    g2 = f2.cca_heldout.query("variant == 'fit_on_us_canada' and heldout_region == @REGION_IDS[0]")
    np.testing.assert_allclose(g2.sort_values("dimension")["r"], _corr_on(w["X"][rows], Cd[rows], ref2.x_cancoef,
                                                                          ref2.y_cancoef), atol=TOL)


# ------------------------------------------------------------------------------------------------------------------
# 3. Bartlett / Lawley, BH only when asked; partial vs semi-partial
# ------------------------------------------------------------------------------------------------------------------
def test_sequential_bartlett_lawley_and_bh_only_when_asked(world):
    f, s, Ka = world["frames"], world["settings"], int(world["keep"].sum())
    t = f.cca_tests[f.cca_tests["variant"] == "balanced_fit"].sort_values("dimension")
    assert set(t["test"]) == {"bartlett_chi2"} and t["q"].isna().all()  # no BH unless asked
    rho, n, D = t["rho"].to_numpy(), R * SAMPLE, min(E, Ka)
    k = np.arange(D)
    lam = np.array([np.prod(1 - rho[j:] ** 2) for j in range(D)])
    np.testing.assert_allclose(t["statistic"], -(n - 1 - (E + Ka + 1) / 2) * np.log(lam), rtol=1e-10)
    np.testing.assert_array_equal(t["df"], (E - k) * (Ka - k))  # the last: (E - (E-1)) (K - (E-1))
    head = f.headline.set_index("name")
    assert head.loc["bartlett_chi2_last", "value"] == pytest.approx(t["statistic"].iloc[-1])

    law = dataclasses.replace(s, cca=dataclasses.replace(s.cca, bartlett="lawley", bartlett_fdr=True))
    f2 = compute_results(world["m"], world["cm"], world["bins"], world["w"]["expr"], world["w"]["labels"], law)
    t2 = f2.cca_tests[f2.cca_tests["variant"] == "balanced_fit"].sort_values("dimension")
    assert set(t2["test"]) == {"lawley_chi2"}
    factor = np.array([n - 1 - j - (E + Ka + 1) / 2 + np.sum(1 / rho[:j] ** 2) for j in range(D)])
    np.testing.assert_allclose(t2["statistic"], -factor * np.log(lam), rtol=1e-10)
    np.testing.assert_allclose(t2["q"], multipletests(t2["p"], method="fdr_bh")[1], rtol=1e-12)

    semi = dataclasses.replace(s, correlation="semipartial")
    f3 = compute_results(world["m"], world["cm"], world["bins"], world["w"]["expr"], world["w"]["labels"], semi)
    want = np.moveaxis(cs.semipartial_correlations(world["m"])[:, 0][:, world["keep"]], 0, 0)
    np.testing.assert_allclose(_matrices(f3), want, atol=1e-12)
    assert np.abs(_matrices(f3) - _matrices(f)).max() > 1e-3


# ------------------------------------------------------------------------------------------------------------------
# 4. Summary tables against the per-region matrices
# ------------------------------------------------------------------------------------------------------------------
def _replicate_matrices(world) -> tuple[np.ndarray, np.ndarray]:
    keep = world["keep"]
    pc = np.moveaxis(cs.partial_correlations(world["m"])[:, :, keep], 1, 0)   # (B1, R, Ka, E)
    prev = np.moveaxis(cs.prevalence(world["m"])[:, :, keep], 1, 0)
    return pc, prev


def _wpearson(a, b, w):
    """Weighted Pearson r, written out here (the Methods' frequency-weighted correlation between regions)."""
    ok = np.isfinite(a) & np.isfinite(b)
    a, b, w = a[ok], b[ok], w[ok]
    ma, mb = (w * a).sum() / w.sum(), (w * b).sum() / w.sum()
    return (w * (a - ma) * (b - mb)).sum() / np.sqrt((w * (a - ma) ** 2).sum() * (w * (b - mb) ** 2).sum())


def _independent_similarity(pc: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """(R, R) second-order correlations, weights sqrt(p1 (1 - p1) p2 (1 - p2)) per context (Methods), from scratch."""
    n = pc.shape[0]
    sd = np.sqrt(prev * (1 - prev))
    out = np.eye(n)
    for i in range(n):
        for j in range(n):
            if i != j:
                out[i, j] = _wpearson(pc[i].ravel(), pc[j].ravel(), np.repeat(sd[i] * sd[j], pc.shape[2]))
    return out


def _independent_world_r2(pc: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """(R,) r2 of each region with the Fisher average of the remaining regions, weights averaged over them."""
    n = pc.shape[0]
    sd = np.sqrt(prev * (1 - prev))
    out = np.empty(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        avg = np.tanh(np.arctanh(pc[others]).mean(axis=0))
        out[i] = _wpearson(pc[i].ravel(), avg.ravel(), np.repeat(sd[i] * sd[others].mean(axis=0), pc.shape[2])) ** 2
    return out


@pytest.fixture(scope="module")
def replicated(world):
    """Per replicate, from scratch: the correlations, the 66 pair similarities and the region-vs-world r2."""
    pc, prev = _replicate_matrices(world)
    sims = np.stack([_independent_similarity(pc[b], prev[b]) for b in range(B + 1)])
    r2 = np.stack([_independent_world_r2(pc[b], prev[b]) for b in range(B + 1)])
    return pc, prev, sims, r2


def _se(values: np.ndarray) -> float:
    return float(np.std(values[1:], ddof=1))


def test_contexts_positive_everywhere_counts_contexts_not_cells(world, replicated):
    """Fig. 2a: the share of CONTEXTS with some expression positive in all 12 regions, not of cells of either sign."""
    f = world["frames"]
    pc = replicated[0]
    np.testing.assert_allclose(pc[0], _matrices(f), atol=1e-12)
    pos = np.all(pc > 0, axis=1)                                   # (B1, Ka, E)
    paper = pos.any(axis=2).mean(axis=1)                           # contexts with any expression positive everywhere
    cells = (np.all(pc > 0, axis=1) | np.all(pc < 0, axis=1)).mean(axis=(1, 2))
    head = f.headline.set_index("name")
    assert head.loc["contexts_positive_everywhere", "value"] == pytest.approx(paper[0], abs=TOL)
    assert head.loc["contexts_positive_everywhere", "se"] == pytest.approx(_se(paper), abs=TOL)
    assert head.loc["cells_same_sign_everywhere", "value"] == pytest.approx(cells[0], abs=TOL)
    assert abs(paper[0] - cells[0]) > 0.05  # the wrong definition gives another answer on this world
    sa = f.sign_agreement.set_index("expression")
    assert sa.loc["all", "share"] == pytest.approx(paper[0], abs=TOL)
    for e, col in enumerate(world["w"]["expr"]):
        assert sa.loc[col, "share"] == pytest.approx(pos[0, :, e].mean(), abs=TOL)
        assert sa.loc[col, "se"] == pytest.approx(_se(pos[:, :, e].mean(axis=1)), abs=TOL)
        assert sa.loc[col, "n_contexts"] == pc.shape[2]
    assert "same_sign_share" not in head.index and "universality" not in head.index


def test_contexts_positive_everywhere_on_a_hand_built_matrix():
    """Two regions, three contexts, two expressions: context 0 has expression 1 positive in both regions, context 1
    only mixed signs, context 2 both expressions negative in both (same sign everywhere, but never positive)."""
    pc = np.array([[[[0.1, 0.2], [0.3, -0.1], [-0.2, -0.3]],
                    [[-0.1, 0.4], [-0.2, 0.2], [-0.1, -0.5]]]])     # (1, 2, 3, 2)
    overall, per_expr, counted = cs.contexts_positive_everywhere(pc)
    assert overall[0] == pytest.approx(1 / 3) and counted[0] == 3
    np.testing.assert_allclose(per_expr[0], [0.0, 1 / 3])
    cells, _, _ = cs.cells_same_sign_everywhere(pc)
    assert cells[0] == pytest.approx(3 / 6)  # (0,1) +, (2,0) -, (2,1) -


def test_region_similarity_rows_are_the_papers_quantities(world, replicated):
    """min r (the "70%"), its square root (the "0.84"), max r, the arithmetic mean over 66 pairs and the Fisher mean,
    each against a from-scratch computation; the SE of min and max is that of the named pair."""
    f = world["frames"]
    _, _, sims, _ = replicated
    sim0 = f.similarity.pivot(index="region_a", columns="region_b", values="r").loc[REGION_IDS, REGION_IDS]
    np.testing.assert_allclose(sim0.to_numpy(), sims[0], atol=TOL)
    iu = np.triu_indices(R, 1)
    pairs = sims[:, iu[0], iu[1]]                                  # (B1, 66)
    assert pairs.shape[1] == 66
    lo, hi = int(np.argmin(pairs[0])), int(np.argmax(pairs[0]))
    head = f.headline.set_index("name")
    expect = {
        "min_region_similarity": pairs[:, lo],
        "sqrt_min_region_similarity": np.sqrt(pairs[:, lo]),
        "max_region_similarity": pairs[:, hi],
        "mean_region_similarity": pairs.mean(axis=1),
        "mean_region_similarity_fisher": np.tanh(np.arctanh(pairs).mean(axis=1)),
    }
    for name, values in expect.items():
        assert head.loc[name, "value"] == pytest.approx(values[0], abs=1e-9), name
        assert head.loc[name, "se"] == pytest.approx(_se(values), abs=1e-9), name
    # the plausible wrong readings give other numbers here
    assert abs(head.loc["min_region_similarity", "value"] - np.sqrt(pairs[0, lo])) > 0.01
    assert abs(head.loc["mean_region_similarity", "value"] - expect["mean_region_similarity_fisher"][0]) > 1e-4
    for name, p in (("min_region_similarity", lo), ("max_region_similarity", hi)):
        assert f"{REGION_IDS[iu[0][p]]} / {REGION_IDS[iu[1][p]]}" in head.loc[name, "detail"]
    ex = [k for k in range(66) if "indian_subcontinent" not in (REGION_IDS[iu[0][k]], REGION_IDS[iu[1][k]])]
    k = ex[int(np.argmin(pairs[0, ex]))]
    assert head.loc["min_region_similarity_without_indian_subcontinent", "value"] == pytest.approx(pairs[0, k], abs=1e-9)
    assert head.loc["min_region_similarity_without_indian_subcontinent", "se"] == pytest.approx(_se(pairs[:, k]),
                                                                                                 abs=1e-9)


def test_region_vs_world_rows_and_named_regions(world, replicated):
    """Fig. 3b's minimum and mean r2 with the world average, the mean best-match r2, the region closest to the
    world, and the pairs and regions the paper names (r2 = squared similarity), from scratch."""
    f = world["frames"]
    _, _, sims, r2 = replicated
    head = f.headline.set_index("name")
    world_t = f.world.set_index("region")
    np.testing.assert_allclose(world_t.loc[list(REGION_IDS), "r2"].to_numpy(), r2[0], atol=1e-9)
    lo, hi = int(np.argmin(r2[0])), int(np.argmax(r2[0]))
    s2 = np.where(np.eye(R, dtype=bool)[None], -np.inf, sims ** 2)
    best = s2.max(axis=2)                                          # (B1, R)
    checks = {"min_region_vs_world_r2": r2[:, lo], "mean_region_vs_world_r2": r2.mean(axis=1),
              "mean_best_match_r2": best.mean(axis=1), "world_average_closest_region": r2[:, hi]}
    for name, values in checks.items():
        assert head.loc[name, "value"] == pytest.approx(values[0], abs=1e-9), name
        assert head.loc[name, "se"] == pytest.approx(_se(values), abs=1e-9), name
    assert head.loc["min_region_vs_world_r2", "detail"].startswith(REGION_IDS[lo])
    assert head.loc["world_average_closest_region", "detail"].startswith(REGION_IDS[hi])
    idx = {r: i for i, r in enumerate(REGION_IDS)}
    for a, b in (("africa", "middle_east"), ("middle_east", "indian_subcontinent"), ("africa", "indian_subcontinent"),
                 ("middle_east", "us_canada"), ("indian_subcontinent", "us_canada")):
        v = sims[:, idx[a], idx[b]] ** 2
        assert head.loc[f"pair_r2_{a}_{b}", "value"] == pytest.approx(v[0], abs=1e-9)
        assert head.loc[f"pair_r2_{a}_{b}", "se"] == pytest.approx(_se(v), abs=1e-9)
        assert abs(v[0] - sims[0, idx[a], idx[b]]) > 0.01  # r2, not r
    for region in ("africa", "indian_subcontinent"):
        assert head.loc[f"world_r2_{region}", "value"] == pytest.approx(r2[0, idx[region]], abs=1e-9)
        assert head.loc[f"world_r2_{region}", "se"] == pytest.approx(_se(r2[:, idx[region]]), abs=1e-9)
    for r in range(R):
        row = world_t.loc[REGION_IDS[r]]
        j = int(np.argmax(s2[0, r]))
        assert row["best_match_region"] == REGION_IDS[j]
        assert row["best_match_se"] == pytest.approx((sims[1:, r, j] ** 2).std(ddof=1), abs=1e-9)
        best_b = [int(np.argmax(s2[bb, r])) for bb in range(1, B + 1)]
        assert row["best_match_agreement"] == pytest.approx(np.mean(np.array(best_b) == j))


# The paper's numbers, typed here from the paper's text (not read from cxatlas): experiment 1 / experiment 2.
PAPER_EXP1 = {"n_videos": (3_029_812, None), "contexts_positive_everywhere": (0.496, None),
              "min_region_similarity": (0.703, 0.008), "sqrt_min_region_similarity": (0.84, None),
              "max_region_similarity": (0.971, 0.005), "mean_region_similarity": (0.838, None),
              "min_region_vs_world_r2": (0.701, 0.006), "mean_region_vs_world_r2": (0.825, None),
              "mean_best_match_r2": (0.848, None), "pair_r2_africa_middle_east": (0.798, 0.016),
              "pair_r2_africa_indian_subcontinent": (0.673, 0.021), "pair_r2_middle_east_us_canada": (0.639, 0.012),
              "pair_r2_indian_subcontinent_us_canada": (0.538, 0.009), "world_r2_africa": (0.821, 0.013),
              "world_r2_indian_subcontinent": (0.701, 0.008), "cells_same_sign_everywhere": (None, None),
              "mean_region_similarity_fisher": (None, None)}
PAPER_EXP2 = {"n_videos": (3_056_861, None), "contexts_positive_everywhere": (0.335, None),
              "mean_region_similarity": (0.596, None), "min_region_similarity": (0.159, 0.009),
              "min_region_similarity_without_indian_subcontinent": (0.490, 0.014), "max_region_similarity": (None, None),
              "sqrt_min_region_similarity": (None, None)}


def _check_pairing(head: pd.DataFrame, expected: dict, experiment: int) -> None:
    head = head.set_index("name")
    for name, (value, se) in expected.items():
        got_v, got_se = head.loc[name, "paper_value"], head.loc[name, "paper_se"]
        if value is None:
            assert pd.isna(got_v), name
        else:
            assert got_v == pytest.approx(value), name
            assert f"experiment {experiment}" in head.loc[name, "paper_source"]
        assert pd.isna(got_se) if se is None else got_se == pytest.approx(se), name


def test_paper_values_pair_with_the_same_quantity_in_each_experiment(world):
    """The world's labels are experiment 1's, so experiment 1's values stand beside its rows; the same sums over
    experiment 2's labels get experiment 2's values."""
    from cxatlas.core.taxonomies import load_taxonomy

    f = world["frames"]
    assert f.experiment.experiment == 1
    _check_pairing(f.headline, PAPER_EXP1, 1)
    exp2_labels = list(load_taxonomy("nature2021_exp2").labels[:K])
    f2 = compute_results(world["m"], world["cm"], world["bins"], world["w"]["expr"], exp2_labels, world["settings"])
    assert f2.experiment.experiment == 2
    _check_pairing(f2.headline, PAPER_EXP2, 2)
    f3 = compute_results(world["m"], world["cm"], world["bins"], world["w"]["expr"], [f"c{k}" for k in range(K)],
                         world["settings"])
    assert f3.experiment.experiment is None and f3.headline["paper_value"].isna().all()


def test_fewer_than_twelve_regions_computes_over_those_present_and_pairs_no_paper_value(world):
    """Africa and the Middle East without videos: the analysis completes, rows naming them are null with the reason,
    the rest are computed over the 10 present regions (45 pairs), and no paper value is paired."""
    m, cm = world["m"].copy(), world["cm"].copy()
    for r in (REGION_IDS.index("africa"), REGION_IDS.index("middle_east")):
        for obj in (m, cm):
            for fld in dataclasses.fields(obj):
                getattr(obj, fld.name)[r] = 0
    f = compute_results(m, cm, world["bins"], world["w"]["expr"], world["w"]["labels"], world["settings"])
    head = f.headline.set_index("name")
    assert head["paper_value"].isna().all()
    assert head.loc["n_regions", "value"] == 10
    for name in ("pair_r2_africa_middle_east", "pair_r2_middle_east_indian_subcontinent", "world_r2_africa"):
        assert pd.isna(head.loc[name, "value"]) and "not in this analysis" in head.loc[name, "detail"]
    assert np.isfinite(head.loc["world_r2_indian_subcontinent", "value"])
    assert "over 45 region pairs" in head.loc["mean_region_similarity", "detail"]
    present = [r for r in range(R) if REGION_IDS[r] not in ("africa", "middle_east")]
    keep = world["keep"]
    pc = cs.partial_correlations(m)[present][:, 0][:, keep]
    prev = cs.prevalence(m)[present][:, 0][:, keep]
    sims = _independent_similarity(pc, prev)
    iu = np.triu_indices(len(present), 1)
    assert head.loc["mean_region_similarity", "value"] == pytest.approx(sims[iu].mean(), abs=1e-9)
    assert "absent" in head.loc["n_videos", "paper_source"]


def test_dimensions_positive_everywhere_and_cca_loadings(world):
    f, w, keep, sample = world["frames"], world["w"], world["keep"], world["sample"]
    head = f.headline.set_index("name")
    for variant in ("leave_one_region_out", "fit_on_us_canada"):
        h = f.cca_heldout[f.cca_heldout["variant"] == variant].pivot(index="heldout_region", columns="dimension",
                                                                     values="r")
        assert head.loc[f"{variant}_dims_positive_everywhere", "value"] == int((h > 0).all(axis=0).sum())
    # loadings of the balanced fit: the weights make unit-variance variates on the pooled sample, correlating rho_d;
    # 'correlation' is the correlation of each feature with its side's variate, computed here on the rows
    Cd = w["C"].toarray()[:, keep][sample]
    Xs = w["X"][sample]
    ld = f.cca_loadings[f.cca_loadings["variant"] == "balanced_fit"]
    D = min(E, int(keep.sum()))
    A = ld[ld["side"] == "expression"].pivot(index="feature", columns="dimension", values="weight").loc[w["expr"]]
    ctx = [c for c, k in zip(w["labels"], keep) if k]
    Bw = ld[ld["side"] == "context"].pivot(index="feature", columns="dimension", values="weight").loc[ctx]
    U, V = (Xs - Xs.mean(0)) @ A.to_numpy(), (Cd - Cd.mean(0)) @ Bw.to_numpy()
    np.testing.assert_allclose(U.var(axis=0), 1.0, atol=1e-9)
    rho = f.cca_tests.query("variant == 'balanced_fit'").sort_values("dimension")["rho"].to_numpy()
    np.testing.assert_allclose([np.corrcoef(U[:, d], V[:, d])[0, 1] for d in range(D)], rho, atol=TOL)
    for side, Z, V_ in (("expression", Xs, U), ("context", Cd, V)):
        got = ld[ld["side"] == side].pivot(index="feature", columns="dimension", values="correlation")
        got = got.loc[w["expr"] if side == "expression" else ctx].to_numpy()
        want = np.array([[np.corrcoef(Z[:, i], V_[:, d])[0, 1] for d in range(D)] for i in range(Z.shape[1])])
        np.testing.assert_allclose(got, want, atol=TOL)
    assert set(f.cca_loadings["variant"]) == {"balanced_fit", "fit_on_us_canada"}


# ------------------------------------------------------------------------------------------------------------------
# 5. Geobin maps: the context side and the share of expression variance between bins
# ------------------------------------------------------------------------------------------------------------------
def test_geobin_context_side_and_variance_share(world):
    f, w, keep, sample = world["frames"], world["w"], world["keep"], world["sample"]
    Cd = w["C"].toarray()[:, keep]
    ld = f.cca_loadings[f.cca_loadings["variant"] == "balanced_fit"]
    ctx = [c for c, k in zip(w["labels"], keep) if k]
    Bw = ld[ld["side"] == "context"].pivot(index="feature", columns="dimension", values="weight").loc[ctx]
    A = ld[ld["side"] == "expression"].pivot(index="feature", columns="dimension", values="weight").loc[w["expr"]]
    # each video's variates, centred on the fit sample's means, averaged per bin
    cv = (Cd - Cd[sample].mean(0)) @ Bw.to_numpy()[:, :3]
    ev = (w["X"] - w["X"][sample].mean(0)) @ A.to_numpy()[:, :3]
    df = pd.DataFrame({"lat_bin": w["lat_bin"], "lon_bin": w["lon_bin"],
                       **{f"context_variate_{d + 1}": cv[:, d] for d in range(3)},
                       **{f"variate_{d + 1}": ev[:, d] for d in range(3)}})
    want = df.groupby(["lat_bin", "lon_bin"]).agg(["mean", "size"])
    got = f.geobins.set_index(["lat_bin", "lon_bin"]).loc[want.index]
    assert len(got) == len(want) == len(f.geobins)
    np.testing.assert_array_equal(got["n_videos"], want[("variate_1", "size")])
    for col in ("variate_1", "variate_3", "context_variate_1", "context_variate_2", "context_variate_3"):
        np.testing.assert_allclose(got[col], want[(col, "mean")], atol=1e-9)
    # share of the expressions' total variance that lies between bins (one-way ANOVA over bins)
    bins = pd.Series(list(zip(w["lat_bin"], w["lon_bin"])))
    Xd = pd.DataFrame(w["X"])
    between = (Xd.groupby(bins.values).transform("mean") - Xd.mean()).pow(2).sum().sum()
    total = (Xd - Xd.mean()).pow(2).sum().sum()
    head = f.headline.set_index("name")
    assert head.loc["geobin_expression_variance_share", "value"] == pytest.approx(between / total, abs=TOL)
    G, N = len(want), len(bins)
    eps2 = (between - (G - 1) * (total - between) / (N - G)) / total
    assert head.loc["geobin_expression_variance_share_adjusted", "value"] == pytest.approx(eps2, abs=TOL)


def test_every_frame_fits_its_result_table_schema(world):
    """What run_analyze appends must convert to the Delta schema as it is (plain floats, no 0-d arrays)."""
    from cxatlas.core.result_schemas import (CCA_HELDOUT, CCA_LOADINGS, CCA_TESTS, CONTEXT_EXPRESSION_CORRELATIONS,
                                             GEOBIN_VARIATES, HEADLINE_NUMBERS, REGION_SIMILARITY, REGION_VS_WORLD,
                                             SIGN_AGREEMENT)

    f = world["frames"]
    for spec, pdf in ((CONTEXT_EXPRESSION_CORRELATIONS, f.correlations), (REGION_SIMILARITY, f.similarity),
                      (REGION_VS_WORLD, f.world), (CCA_HELDOUT, f.cca_heldout), (CCA_TESTS, f.cca_tests),
                      (GEOBIN_VARIATES, f.geobins), (SIGN_AGREEMENT, f.sign_agreement),
                      (CCA_LOADINGS, f.cca_loadings), (HEADLINE_NUMBERS, f.headline)):
        pdf = pdf.assign(analysis_id="a")
        table = pa.Table.from_pandas(pdf[spec.schema.names], schema=spec.schema, preserve_index=False)
        assert table.num_rows == len(pdf) > 0, spec.name


# ------------------------------------------------------------------------------------------------------------------
# 6. Fig. 2 z-scored within rows, and the replication report
# ------------------------------------------------------------------------------------------------------------------
def test_fig2_zscores_within_each_context_row():
    from cxatlas.stages.analyze.figures import _zscore_rows

    rng = np.random.default_rng(1)
    image = rng.normal(size=(6, 8)) + np.repeat([[0.0], [5.0]], 3, axis=0)
    image[1, 2] = np.nan
    z = _zscore_rows(image, 3)
    for a in (0, 3):
        block = image[a:a + 3]
        ok = np.isfinite(block)
        np.testing.assert_allclose(z[a:a + 3][ok], (block[ok] - block[ok].mean()) / block[ok].std(), atol=1e-12)
    assert np.isnan(z[1, 2])


def test_report_shows_every_headline_row_beside_its_paper_value_and_the_tables(world, tmp_path):
    """Read back from the page: every headline row with its value, SE, paper value and paper SE as stored; the 66
    region pairs with SE; the held-out CCA correlations; loadings; both Fig. 4 maps; a paragraph per figure."""
    import base64
    import json
    import re

    from cxatlas.stages.analyze.results import write_figures
    from cxatlas.stages.report import FIGURE_NOTES, SECTIONS, render_html
    from tests.html_tables import number, report_tables

    f = world["frames"]
    figs = write_figures(f, str(tmp_path / "fig"), 0.5, 40)
    assert {"fig2_context_expression_heatmap", "fig2_zscored_with_marginal_means", "fig4_geobin_variates",
            "fig4_geobin_context_variates"} <= set(figs)
    row = dict(analysis_id="a-1", taxonomy="nature2021_exp1", n_videos=int(world["m"].n[:, 0].sum()), n_contexts=K,
               n_contexts_analysed=int(world["keep"].sum()), n_expressions=E, n_replicates=B,
               parameters=json.dumps({"correlation": "partial"}))
    page = render_html(row, {"headline_numbers": f.headline, "sign_agreement": f.sign_agreement,
                             "region_similarity": f.similarity, "region_vs_world": f.world,
                             "cca_tests": f.cca_tests, "cca_heldout": f.cca_heldout, "cca_loadings": f.cca_loadings},
                       figs)
    for section in SECTIONS:
        assert f'<section id="{section}">' in page, section
    imgs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(imgs) == len(figs) and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in imgs)
    for name in figs:
        assert FIGURE_NOTES[name][:40] in page.replace("&#34;", '"').replace("&quot;", '"'), name
    tables = report_tables(page)
    shown = tables["headline_numbers"].set_index("name")
    head = f.headline.set_index("name")
    assert set(shown.index) == set(head.index)
    for name, r in head.iterrows():
        for col in ("value", "se", "paper_value", "paper_se"):
            want, got = r[col], number(shown.loc[name, col])
            assert (np.isnan(got) if pd.isna(want) else got == pytest.approx(want, rel=5e-4, abs=1e-12)), (name, col)
    assert number(shown.loc["min_region_similarity", "paper_value"]) == 0.703
    assert number(shown.loc["min_region_similarity", "paper_se"]) == 0.008
    pairs = tables["region pairs (region_similarity, each pair once, r2 = shared variance)"]
    assert len(pairs) == 66 and pairs["se"].map(number).notna().all()
    held = tables["held-out canonical correlations (cca_heldout)"]
    assert len(held) == f.cca_heldout.groupby(["variant", "heldout_region"]).ngroups
    assert not tables[next(k for k in tables if k.startswith("loadings"))].empty
    import html as html_lib

    assert '"correlation": "partial"' in html_lib.unescape(page)  # the settings


def test_fig2_red_rectangles_on_cells_positive_in_every_region(tmp_path):
    """The red rectangles mark exactly the cells positive in all regions: drawn on a table with one such cell, and
    absent from the same table with that cell negative in one region."""
    from matplotlib.image import imread

    from cxatlas.stages.analyze.figures import heatmap_contexts, positive_everywhere_cells

    rng = np.random.default_rng(2)
    rows = [dict(region=r, context=c, expression=e, r=float(rng.uniform(-0.3, 0.3)))
            for r in REGION_IDS for c in ("a", "b") for e in ("expr_x", "expr_y")]
    df = pd.DataFrame(rows)
    df.loc[(df["context"] == "a") & (df["expression"] == "expr_y"), "r"] = np.linspace(0.05, 0.3, R)
    df.loc[(df["context"] == "b") & (df["expression"] == "expr_x"), "r"] = np.r_[np.linspace(0.05, 0.3, R - 1), -0.1]
    cells = positive_everywhere_cells(df)
    expected = (df.assign(p=df["r"] > 0).groupby(["context", "expression"])["p"].all())
    assert set(map(tuple, cells.to_numpy())) == set(expected[expected].index) == {("a", "expr_y")}

    def red_pixels(frame, name):
        path = heatmap_contexts(frame, ["a", "b"], tmp_path / name, dpi=60, marginals=True)
        img = imread(path)[..., :3]
        return int(np.sum((img[..., 0] > 0.95) & (img[..., 1] < 0.05) & (img[..., 2] < 0.05)))

    assert red_pixels(df, "with.png") > 20
    none = df.copy()
    none.loc[(none["context"] == "a") & (none["expression"] == "expr_y") & (none["region"] == "brazil"), "r"] = -0.2
    assert red_pixels(none, "without.png") == 0


def test_context_prediction_r_is_tenfold_out_of_sample_ols(world):
    """Extended Data Fig. 7's r: the analysed contexts predicted from the expressions by OLS fitted on nine folds and
    applied to the tenth, over the first PREDICTION videos of each region's balanced sample (key order, dealt
    round-robin into folds), predictions and annotations centred per context and pooled; from the rows with
    numpy. The in-sample fit, a plausible wrong reading, gives a different number."""
    w, keep = world["w"], world["keep"]
    rows, folds = [], []
    for r in range(R):
        idx = np.flatnonzero(w["region"] == r)
        order = idx[np.lexsort((w["h"][idx], w["key"][idx]))][:PREDICTION]
        rows.append(order)
        folds.append(np.arange(order.size) % 10)
    rows, folds = np.concatenate(rows), np.concatenate(folds)
    X = np.c_[np.ones(rows.size), w["X"][rows]]
    C = w["C"][rows].toarray()[:, keep]
    pred = np.empty_like(C)
    for f in range(10):
        test = folds == f
        beta = np.linalg.lstsq(X[~test], C[~test], rcond=None)[0]
        pred[test] = X[test] @ beta

    def pooled(P):
        Pc, Cc = P - P.mean(axis=0), C - C.mean(axis=0)
        return (Pc * Cc).sum() / np.sqrt((Pc ** 2).sum() * (Cc ** 2).sum())

    head = world["frames"].headline.set_index("name")
    assert head.loc["context_prediction_r", "value"] == pytest.approx(pooled(pred), abs=1e-9)
    assert f"over {rows.size} videos" in head.loc["context_prediction_r", "detail"]
    in_sample = X @ np.linalg.lstsq(X, C, rcond=None)[0]
    assert abs(pooled(in_sample) - pooled(pred)) > 1e-3
    assert head.loc["context_prediction_r", "paper_value"] == 0.154


# ------------------------------------------------------------------------------------------------------------------
# 7. Experiment 1 vs 2
# ------------------------------------------------------------------------------------------------------------------
def test_compare_headlines_side_by_side_with_ratio_and_se():
    from cxatlas.stages.compare import compare_headlines

    h1 = pd.DataFrame({"name": ["mean_region_similarity", "contexts_positive_everywhere", "only_1"],
                       "value": [0.8, 0.5, 1.0], "se": [0.02, 0.01, np.nan], "detail": ""})
    h2 = pd.DataFrame({"name": ["mean_region_similarity", "contexts_positive_everywhere"], "value": [0.48, 0.3],
                       "se": [0.03, 0.02], "detail": ""})
    t = compare_headlines(h1, h2).set_index("name")
    assert t.loc["mean_region_similarity", "ratio"] == pytest.approx(0.6)
    assert t.loc["mean_region_similarity", "ratio_se"] == pytest.approx(0.6 * np.hypot(0.02 / 0.8, 0.03 / 0.48))
    assert t.loc["contexts_positive_everywhere", "paper_exp1"] == 0.496
    assert t.loc["contexts_positive_everywhere", "paper_exp2"] == 0.335
    assert t.loc["mean_region_similarity", "paper_exp1"] == 0.838 and t.loc["mean_region_similarity", "paper_exp2"] == 0.596
    assert np.isnan(t.loc["only_1", "exp2_value"]) and np.isnan(t.loc["only_1", "ratio"])
