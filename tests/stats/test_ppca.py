"""Principal preserved components (cxatlas.stats.ppca) and their front end (cxatlas.stages.ppca).

Every check compares with something computed independently: numpy SVD, a direct numerical maximisation on the unit
sphere, a textbook varimax, hand-computed BH / ForwardStop values, a naive leave-one-out loop, an explicit
regression-on-ranks partial correlation and an explicitly materialised bootstrap resample.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
import pytest
import scipy.optimize
import scipy.stats

from cxatlas.core.errors import UserError
from cxatlas.stats import ppca as P
from cxatlas.stages.ppca import PpcaInputError, run_ppca


def planted(n: int, p: int, m: int = 2, *, strength: float = 2.0, seed: int = 0):
    """m datasets sharing one latent factor with loadings ``w`` plus independent unit noise."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=p)
    w /= np.linalg.norm(w)
    z = rng.normal(size=n)
    return [strength * np.outer(z, w) + rng.normal(size=(n, p)) for _ in range(m)], w


def same_up_to_sign(a: np.ndarray, b: np.ndarray, atol: float = 1e-8) -> bool:
    return np.allclose(a, b, atol=atol) or np.allclose(a, -b, atol=atol)


# ----------------------------------------------------------------------------------------------------------------
# components
# ----------------------------------------------------------------------------------------------------------------
def test_identical_datasets_give_pca():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 5)) @ rng.normal(size=(5, 5)) + 3.0
    loadings, covs = P.fit_components([x, x])
    _, s, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    np.testing.assert_allclose(covs, s ** 2 / (len(x) - 1), rtol=1e-10)
    np.testing.assert_allclose(covs, np.var((x - x.mean(0)) @ loadings, axis=0, ddof=1), rtol=1e-10)
    for c in range(5):
        assert same_up_to_sign(loadings[:, c], vt[c])
        assert loadings[np.argmax(np.abs(loadings[:, c])), c] > 0  # sign convention
    np.testing.assert_allclose(loadings.T @ loadings, np.eye(5), atol=1e-12)


def test_eigenvalue_is_covariance_of_projections():
    (x, y), _ = planted(80, 6, seed=3)
    loadings, covs = P.fit_components([x, y])
    for c in range(6):
        a, b = x @ loadings[:, c], y @ loadings[:, c]
        assert covs[c] == pytest.approx(np.cov(a, b)[0, 1], rel=1e-10, abs=1e-12)
    assert np.all(np.diff(covs) <= 1e-12)


def _max_on_sphere(objective, p: int, starts: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    best = -np.inf
    for _ in range(starts):
        res = scipy.optimize.minimize(lambda u: -objective(u / np.linalg.norm(u)), rng.normal(size=p), method="BFGS",
                                      options={"gtol": 1e-10})
        best = max(best, -res.fun)
    return best


def test_top_component_matches_direct_maximisation_two_datasets():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 4))
    y = 0.5 * x @ rng.normal(size=(4, 4)) + rng.normal(size=(40, 4))  # non-symmetric cross-covariance
    loadings, covs = P.fit_components([x, y])

    def cov(u):
        return np.cov(x @ u, y @ u)[0, 1]

    best = _max_on_sphere(cov, 4, starts=8, seed=0)
    assert covs[0] == pytest.approx(best, rel=1e-7)
    assert cov(loadings[:, 0]) == pytest.approx(best, rel=1e-7)
    # the minimum over the sphere is the last eigenvalue
    assert covs[-1] == pytest.approx(-_max_on_sphere(lambda u: -cov(u), 4, starts=8, seed=1), rel=1e-7)


def test_gppca_matches_direct_maximisation_three_datasets():
    data, _ = planted(50, 5, m=3, strength=1.0, seed=7)
    loadings, covs = P.fit_components(data)

    def pair_sum(u):
        return sum(np.cov(data[i] @ u, data[j] @ u)[0, 1] for i, j in combinations(range(3), 2))

    best = _max_on_sphere(pair_sum, 5, starts=8, seed=2)
    assert covs[0] == pytest.approx(best, rel=1e-7)
    assert pair_sum(loadings[:, 0]) == pytest.approx(best, rel=1e-7)
    # the many-dataset shortcut (T'T - sum D_i'D_i) / 2 agrees with the explicit pair sum
    five, _ = planted(30, 4, m=5, seed=8)
    explicit = sum(np.cov(five[i], five[j], rowvar=False)[:4, 4:] for i, j in combinations(range(5), 2))
    np.testing.assert_allclose(P.cross_covariance(five), 0.5 * (explicit + explicit.T), atol=1e-12)
    # ... also with bootstrap weights: counts equal the materialised resample
    draw = np.random.default_rng(0).integers(0, 30, size=30)
    counts = np.bincount(draw, minlength=30).astype(float)
    weighted = P._pair_sum([d - counts @ d / 30 for d in five], counts)
    np.testing.assert_allclose(weighted, P.cross_covariance([d[draw] for d in five]) * 29, atol=1e-10)


# ----------------------------------------------------------------------------------------------------------------
# leave-one-out, partial Spearman, bootstrap
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m", [2, 4])
def test_loo_scores_equal_naive_loop(m):
    data, _ = planted(12, 4, m=m, seed=11)
    ref, _ = P.fit_components(data)
    fast = P.loo_scores(data, reference=ref, chunk=5)
    naive = np.empty_like(fast)
    for s in range(12):
        train = [np.delete(d, s, axis=0) for d in data]
        u, _ = P.fit_components(train)
        u = u * np.where(np.sum(u * ref, axis=0) < 0, -1.0, 1.0)
        for i, d in enumerate(data):
            naive[i, s] = (d[s] - train[i].mean(axis=0)) @ u
    np.testing.assert_allclose(fast, naive, atol=1e-10)


def _partial_spearman_by_regression(a, b, z):
    ra, rb = scipy.stats.rankdata(a), scipy.stats.rankdata(b)
    design = np.column_stack([np.ones(len(a))] + [scipy.stats.rankdata(c) for c in z.T])
    res = [r - design @ np.linalg.lstsq(design, r, rcond=None)[0] for r in (ra, rb)]
    return np.corrcoef(res[0], res[1])[0, 1]


def test_cv_correlations_are_partial_spearman_given_earlier_components():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(3, 40, 4))
    scores[1] += 0.7 * scores[0]
    scores[2, :, 2] = np.round(scores[2, :, 2])  # ties
    cv = P.cv_correlations(scores)
    for c in range(4):
        per_pair = []
        for i, j in combinations(range(3), 2):
            z = np.column_stack([scores[i, :, :c], scores[j, :, :c]])
            expected = _partial_spearman_by_regression(scores[i, :, c], scores[j, :, c], z)
            assert P.partial_spearman(scores[i, :, c], scores[j, :, c], z) == pytest.approx(expected, abs=1e-10)
            per_pair.append(expected)
        assert cv[c] == pytest.approx(np.mean(per_pair), abs=1e-7)
    # a partial correlation given 2c controls needs n - 2 - 2c >= 1 residual degrees of freedom
    few = P.cv_correlations(scores[:2, :6, :])
    assert np.isfinite(few[:2]).all() and np.isnan(few[2:]).all()
    assert np.isnan(P.partial_spearman(scores[0, :6, 2], scores[1, :6, 2], scores[0, :6, :4]))
    assert P.cv_correlations(scores[:, :, :1])[0] == pytest.approx(
        np.mean([scipy.stats.spearmanr(scores[i, :, 0], scores[j, :, 0])[0] for i, j in combinations(range(3), 2)]),
        abs=1e-7)


def test_bootstrap_counts_equal_materialised_resample():
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(2, 30, 3))
    scores[1] += scores[0]
    draws = rng.integers(0, 30, size=(3, 30))
    counts = np.stack([np.bincount(d, minlength=30) for d in draws]).astype(float)
    boot = P.bootstrap_cv_correlations(scores, counts)
    for b, d in enumerate(draws):
        np.testing.assert_allclose(boot[b], P.cv_correlations(scores[:, d, :]), atol=1e-7)


def test_bootstrap_pvalues_and_snr():
    boot = np.array([[0.5, -0.1], [0.2, 0.0], [0.3, 0.2], [np.nan, 0.1]])
    np.testing.assert_allclose(P.bootstrap_pvalues(boot), [(1 + 1) / 5, (1 + 2) / 5])  # NaN counts as <= 0
    np.testing.assert_allclose(P.snr_ratio(boot[:3, :1]), [np.mean([0.5, 0.2, 0.3]) / np.std([0.5, 0.2, 0.3], ddof=1)])


# ----------------------------------------------------------------------------------------------------------------
# multiple testing
# ----------------------------------------------------------------------------------------------------------------
def test_bh_qvalues_hand_computed():
    # sorted 0.01, 0.03, 0.04, 0.20 -> p*m/rank = 0.04, 0.06, 0.0533, 0.20 -> running min from the top
    np.testing.assert_allclose(P.bh_qvalues(np.array([0.01, 0.04, 0.03, 0.20])), [0.04, 0.16 / 3, 0.16 / 3, 0.20])
    np.testing.assert_allclose(P.bh_qvalues(np.array([0.5, 0.9])), [0.9, 0.9])


def test_forward_stop_hand_computed():
    # -log(1 - p): 0.01005, 0.02020, 0.03046, 0.69315; running means 0.0101, 0.0151, 0.0202, 0.1885
    assert P.forward_stop([0.01, 0.02, 0.03, 0.5], 0.05) == 3
    # running means 0.0408, 0.0675 (> alpha), 0.0454, 0.0343: the LARGEST qualifying k, past the early failure
    assert P.forward_stop([0.04, 0.09, 0.001, 0.001], 0.05) == 4
    # running means 0.2231, 0.1121, 0.0751, 0.0566: none qualifies at 0.05, all at 0.06
    assert P.forward_stop([0.2, 0.001, 0.001, 0.001], 0.05) == 0
    assert P.forward_stop([0.2, 0.001, 0.001, 0.001], 0.06) == 4
    assert P.forward_stop([1.0, 0.0], 0.05) == 0 and P.forward_stop([], 0.05) == 0
    kept = P.keep_components(np.array([0.01, 0.02, 0.03, 0.5]), np.zeros(4), np.array([5.0, 2.0, 4.0, 9.0]))
    assert kept.tolist() == [True, False, True, False]


# ----------------------------------------------------------------------------------------------------------------
# varimax
# ----------------------------------------------------------------------------------------------------------------
def _textbook_varimax(phi, gamma=1.0, q=20000, tol=1e-15):
    p, k = phi.shape
    r = np.eye(k)
    d = 0.0
    for _ in range(q):
        d_old = d
        lam = phi @ r
        u, s, vh = np.linalg.svd(phi.T @ (lam ** 3 - (gamma / p) * lam @ np.diag(np.diag(lam.T @ lam))))
        r = u @ vh
        d = s.sum()
        if d_old != 0 and d / d_old < 1 + tol:
            break
    return phi @ r


def _match_columns(a, b):
    """Max |difference| between columns of a and b after the best signed permutation."""
    k = a.shape[1]
    cost = np.array([[min(np.abs(a[:, i] - b[:, j]).max(), np.abs(a[:, i] + b[:, j]).max()) for j in range(k)]
                     for i in range(k)])
    r, c = scipy.optimize.linear_sum_assignment(cost)
    return cost[r, c].max()


def test_varimax_recovers_rotated_simple_structure():
    simple = np.zeros((9, 3))
    simple[0:3, 0] = [0.9, 0.8, 0.7]
    simple[3:6, 1] = [0.6, 0.85, 0.75]
    simple[6:9, 2] = [0.8, 0.5, 0.9]
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    for normalize in (True, False):
        rotated, rotation = P.varimax(simple @ q, normalize=normalize)
        assert _match_columns(rotated, simple) < 1e-5  # statsmodels' default stop: gradient norm < 1e-5
        np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-10)
        np.testing.assert_allclose(simple @ q @ rotation, rotated, atol=1e-12)
        assert np.all(rotated[np.argmax(np.abs(rotated), axis=0), range(3)] > 0)


def test_varimax_matches_textbook_iteration():
    a = np.random.default_rng(3).normal(size=(12, 3))
    assert _match_columns(P.varimax(a, normalize=False)[0], _textbook_varimax(a)) < 1e-4
    h = np.sqrt((a * a).sum(axis=1, keepdims=True))  # Kaiser normalisation: rotate unit rows, scale back
    assert _match_columns(P.varimax(a, normalize=True)[0], _textbook_varimax(a / h) * h) < 1e-4
    # with a tight statsmodels tolerance both agree with the textbook iteration to 1e-7: their stopping points differ
    # by 1.9e-8 on an AMD EPYC host (under 1e-8 on the earlier hosts), whatever statsmodels' tol below 1e-10, so the
    # last digits are the CPU's BLAS kernels, not the rotation
    assert _match_columns(P.varimax(a, tol=1e-10, max_tries=2000)[0], _textbook_varimax(a)) < 1e-7
    one = P.varimax(np.array([[0.2], [-0.9]]))[0]
    np.testing.assert_allclose(one, [[-0.2], [0.9]])


# ----------------------------------------------------------------------------------------------------------------
# the whole analysis
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_independent_datasets_have_no_preserved_component(seed):
    rng = np.random.default_rng(100 + seed)
    x = rng.normal(size=(150, 6)) @ rng.normal(size=(6, 6))
    y = rng.normal(size=(150, 6)) @ rng.normal(size=(6, 6))
    res = P.ppca([x, y], resamples=200, seed=seed)
    assert res.n_kept == 0
    assert res.rotated_loadings.shape == (6, 0) and res.loading_p_values.shape == (6, 0)


@pytest.mark.parametrize("m", [2, 3])
def test_planted_shared_component_is_found(m):
    data, w = planted(150, 8, m=m, strength=1.5, seed=21)
    res = P.ppca(data, resamples=200, seed=0)
    assert abs(res.loadings[:, 0] @ w) > 0.95
    assert res.kept[0] and res.p_values[0] == pytest.approx(1 / 201) and res.snr[0] >= 3
    assert res.cv_correlations[0] > 0.4
    assert res.n_kept == 1 and res.generalized == (m > 2)
    # the rotated loading of one component is the component itself; its big loadings are significant
    np.testing.assert_allclose(res.rotated_loadings[:, 0], res.loadings[:, 0])
    big = np.abs(w) > 0.3
    assert np.all(res.loading_p_values[big, 0] < 0.05) and np.all(np.abs(res.loading_snr[big, 0]) > 3)
    assert np.all(np.sign(res.loading_snr[big, 0]) == np.sign(res.rotated_loadings[big, 0]))


def test_two_planted_components_rotated_and_loading_bootstrap_aligned():
    rng = np.random.default_rng(9)
    n, p = 200, 6
    w = np.zeros((p, 2))
    w[:3, 0] = 1 / np.sqrt(3)
    w[3:, 1] = 1 / np.sqrt(3)
    z = rng.normal(size=(n, 2)) * [2.0, 1.5]
    data = [z @ w.T + rng.normal(size=(n, p)) for _ in range(2)]
    res = P.ppca(data, resamples=200, seed=1)
    assert res.kept[:2].all() and res.n_kept == 2
    assert _match_columns(res.rotated_loadings, w) < 0.1  # varimax finds the two attribute blocks
    assert np.all(res.loading_p_values[np.abs(res.rotated_loadings) > 0.4] < 0.05)


def test_seeded_and_reproducible():
    data, _ = planted(60, 4, seed=2)
    a = P.ppca(data, resamples=50, seed=7)
    b = P.ppca(data, resamples=50, seed=7)
    np.testing.assert_array_equal(a.cv_bootstrap, b.cv_bootstrap)
    assert not np.array_equal(a.cv_bootstrap, P.ppca(data, resamples=50, seed=8).cv_bootstrap)


def test_input_validation():
    x = np.zeros((10, 3))
    with pytest.raises(ValueError, match="at least 2 datasets"):
        P.ppca([x])
    with pytest.raises(ValueError, match="dataset 1 has shape"):
        P.fit_components([x, np.zeros((10, 4))])
    with pytest.raises(ValueError, match="at least 3 stimuli"):
        P.fit_components([x[:2], x[:2]])
    bad = x.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite values .* row 4, column 1"):
        P.ppca([x, bad])
    with pytest.raises(ValueError, match="2-D"):
        P.fit_components([np.zeros(10), np.zeros(10)])


# ----------------------------------------------------------------------------------------------------------------
# front end
# ----------------------------------------------------------------------------------------------------------------
def _write_inputs(tmp_path, n=80, p=5):
    (x, y), _ = planted(n, p, seed=4)
    attrs = [f"attr_{j}" for j in range(p)]
    ids = [f"s{i:03d}" for i in range(n)]
    a = pd.DataFrame(x, columns=attrs).assign(stimulus=ids, note="x")
    b = pd.DataFrame(y, columns=attrs).assign(stimulus=ids)
    b = b.iloc[::-1][["stimulus"] + attrs[::-1]]  # other row and column order: must be aligned by name
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    return attrs, x, y


def test_run_ppca_writes_tables_and_heatmap(tmp_path):
    attrs, x, y = _write_inputs(tmp_path)
    out = tmp_path / "out"
    report = run_ppca([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")], "stimulus", str(out), resamples=100)
    comp = pd.read_csv(out / "components.csv")
    assert list(comp.columns) == ["attribute"] + [f"component_{j}" for j in range(1, 6)]
    assert comp["attribute"].tolist() == attrs
    loadings = comp.drop(columns="attribute").to_numpy()
    np.testing.assert_allclose(loadings, P.fit_components([x, y])[0], atol=1e-9)  # rows matched by id
    np.testing.assert_allclose(np.linalg.norm(loadings, axis=0), 1.0)
    sig = pd.read_csv(out / "significance.csv")
    assert list(sig.columns[:7]) == ["component", "covariance", "cv_correlation", "p_value", "q_value", "snr", "kept"]
    assert {"bh_pass", "forwardstop_pass", "snr_pass", "graph_pass", "bootstrap_sd", "rule"} <= set(sig.columns)
    assert sig["rule"].str.startswith("bh_forwardstop_snr: BH q<=0.05 over the first 48 dimensions AND ").all()
    assert sig["component"].tolist() == [1, 2, 3, 4, 5] and sig["kept"].iloc[0]
    rot = pd.read_csv(out / "rotated_loadings.csv")
    k = int(sig["kept"].sum())
    assert list(rot.columns[: k + 1]) == ["attribute"] + [f"rotated_{j}" for j in range(1, k + 1)]
    assert "rotated_1_p_value" in rot.columns and "rotated_1_snr" in rot.columns
    png = (out / "loadings_heatmap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    text = report.summary()
    assert "PPCA of 2 datasets" in text and "80 stimuli x 5 attributes" in text and "note" in text


def test_run_ppca_reads_parquet_by_magic_bytes(tmp_path):
    attrs, x, y = _write_inputs(tmp_path, n=30, p=3)
    pd.read_csv(tmp_path / "b.csv").to_parquet(tmp_path / "b.data")  # no Parquet suffix
    report = run_ppca([str(tmp_path / "a.csv"), str(tmp_path / "b.data")], "stimulus", str(tmp_path / "o"),
                      resamples=20)
    np.testing.assert_allclose(report.result.loadings, P.fit_components([x, y])[0], atol=1e-9)


def test_run_ppca_mismatched_columns_name_file_and_column(tmp_path):
    _write_inputs(tmp_path, n=20, p=3)
    b = pd.read_csv(tmp_path / "b.csv").rename(columns={"attr_1": "attr_9"})
    b.to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(PpcaInputError) as err:
        run_ppca([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")], "stimulus", str(tmp_path / "o"), resamples=10)
    msg = str(err.value)
    assert "b.csv" in msg and "'attr_1'" in msg and "'attr_9'" in msg and "a.csv" in msg
    assert isinstance(err.value, UserError)


def test_run_ppca_id_errors_name_ids(tmp_path):
    _write_inputs(tmp_path, n=20, p=3)
    b = pd.read_csv(tmp_path / "b.csv")
    b.iloc[:-2].to_csv(tmp_path / "b.csv", index=False)  # drops the last two rows = the first ids s000, s001
    with pytest.raises(PpcaInputError, match=r"b\.csv lacks 2 \('s000', 's001'\)"):
        run_ppca([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")], "stimulus", str(tmp_path / "o"))
    pd.concat([b, b.iloc[:1]]).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(PpcaInputError, match=r"b\.csv has 1 duplicated id.*'s019'"):
        run_ppca([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")], "stimulus", str(tmp_path / "o"))
    with pytest.raises(PpcaInputError, match="no id column 'video'"):
        run_ppca([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")], "video", str(tmp_path / "o"))


# ----------------------------------------------------------------------------------------------------------------
# Brooks et al. (2024): the selection rules, G-PPCA's pair graph, statsmodels' varimax, the loading test
# ----------------------------------------------------------------------------------------------------------------
def test_paper_rule_needs_all_three_criteria():
    p = np.array([0.001, 0.002, 0.003, 0.004, 0.5])
    snr = np.array([5.0, 5.0, 2.0, 5.0, 5.0])
    q = P.bh_first(p, 48)
    np.testing.assert_allclose(q, P.bh_qvalues(p))
    kept = P.keep_components(p, q, snr, rule="bh_forwardstop_snr")
    assert kept.tolist() == [True, True, False, True, False]  # SNR drops 3, BH/ForwardStop drop 5
    # BH over the first 2 only: dimensions 3.. have no q and cannot pass, however small their p
    q2 = P.bh_first(p, 2)
    assert np.isnan(q2[2:]).all() and q2[:2] == pytest.approx([0.002, 0.002])
    assert P.keep_components(p, q2, snr, rule="bh_forwardstop_snr").tolist() == [True, True, False, False, False]
    # ForwardStop alone would keep dimension 4 past dimension 3's weak SNR; BH alone keeps what ForwardStop refuses
    fs_fail = np.array([0.2, 0.001, 0.001, 0.001])
    assert P.keep_components(fs_fail, P.bh_first(fs_fail), np.full(4, 9.0), rule="bh").tolist() == [False] + [True] * 3
    assert not P.keep_components(fs_fail, P.bh_first(fs_fail), np.full(4, 9.0), rule="bh_forwardstop_snr").any()
    assert P.rule_for("brooks", 2) == "bh_forwardstop_snr" and P.rule_for("brooks", 6) == "gppca_graph"
    with pytest.raises(ValueError, match="at least 3 datasets"):
        P.rule_for("gppca_graph", 2)


def test_snr_is_correlation_over_bootstrap_sd():
    (x, y), _ = planted(80, 4, seed=12)
    res = P.ppca([x, y], resamples=100, seed=0)
    sd = np.std(res.cv_bootstrap, axis=0, ddof=1)
    np.testing.assert_allclose(res.snr, res.cv_correlations / sd)
    assert res.rule == "bh_forwardstop_snr" and res.rule_requested == "brooks"
    np.testing.assert_array_equal(res.kept, res.bh_pass & res.forwardstop_pass & res.snr_pass)


def test_pair_partial_pearson_matches_pingouin():
    pg = pytest.importorskip("pingouin")
    rng = np.random.default_rng(31)
    scores = rng.normal(size=(3, 50, 3))
    scores[1] += 0.5 * scores[0]
    pairs, r, p, df = P.pair_partial_pearson(scores)
    assert pairs == [(0, 1), (0, 2), (1, 2)]
    for i, (a, b) in enumerate(pairs):
        for c in range(3):
            frame = pd.DataFrame({"x": scores[a, :, c], "y": scores[b, :, c]})
            covar = []
            for j in range(c):
                frame[f"a{j}"], frame[f"b{j}"] = scores[a, :, j], scores[b, :, j]
                covar += [f"a{j}", f"b{j}"]
            ref = pg.partial_corr(frame, x="x", y="y", covar=covar or None, method="pearson")
            assert r[i, c] == pytest.approx(float(ref["r"].iloc[0]), abs=1e-7)
            assert p[i, c] == pytest.approx(float(ref["p_val"].iloc[0] if "p_val" in ref else ref["p-val"].iloc[0]),
                                            rel=1e-5, abs=1e-12)
    np.testing.assert_array_equal(df, [48, 46, 44])


def test_bh_within_pair_or_within_dimension():
    rng = np.random.default_rng(32)
    scores = rng.normal(size=(3, 40, 4))
    _, _, p, _ = P.pair_partial_pearson(scores)
    within_pair = P.pair_tests(scores, gppca_bh="within_pair", bh_dimensions=3)
    for i in range(3):
        np.testing.assert_allclose(within_pair.q[i, :3], P.bh_qvalues(p[i, :3]))
        assert np.isnan(within_pair.q[i, 3])
    within_dim = P.pair_tests(scores, gppca_bh="within_dimension")
    for c in range(4):
        np.testing.assert_allclose(within_dim.q[:, c], P.bh_qvalues(p[:, c]))


def test_graph_rule_needs_two_links_each_and_connected():
    triangle = [(0, 1), (0, 2), (1, 2)]
    assert P.graph_passes(3, triangle)
    assert not P.graph_passes(3, [(0, 1), (1, 2)])  # country 0 and 2 have one link each
    two_triangles = triangle + [(3, 4), (3, 5), (4, 5)]
    assert not P.graph_passes(6, two_triangles)  # every degree is 2, but the graph splits in two
    assert P.graph_passes(6, two_triangles + [(2, 3)])
    ring = [(i, (i + 1) % 6) for i in range(6)]
    assert P.graph_passes(6, ring)
    assert not P.graph_passes(6, triangle)  # three countries without any link


def _six_countries(n=200, seed=40):
    """Six countries: component A preserved in all six, component B only in countries 0-2, the rest noise."""
    rng = np.random.default_rng(seed)
    p = 8
    wa = np.zeros(p)
    wa[:4] = 0.5
    wb = np.zeros(p)
    wb[4:] = 0.5
    za, zb = rng.normal(size=n) * 2.0, rng.normal(size=n) * 2.0
    data = []
    for c in range(6):
        x = np.outer(za, wa) + rng.normal(size=(n, p))
        x += np.outer(zb if c < 3 else rng.normal(size=n) * 2.0, wb)  # B is a country-specific factor in 3-5
        data.append(x)
    return data, wa, wb


def test_gppca_keeps_component_preserved_in_all_six_and_rejects_one_in_three():
    data, wa, wb = _six_countries()
    res = P.ppca(data, resamples=50, seed=0, loading_resamples=0)
    assert res.rule == "gppca_graph" and res.generalized
    a = int(np.argmax(np.abs(res.loadings.T @ wa)))
    b = int(np.argmax(np.abs(res.loadings.T @ wb)))
    assert abs(res.loadings[:, a] @ wa) > 0.95 and abs(res.loadings[:, b] @ wb) > 0.9 and a != b
    assert res.kept[a] and res.graph_pass[a]
    assert not res.kept[b]
    t = res.pair_tests
    edges_b = {pr for pr, s in zip(t.pairs, t.significant[:, b]) if s}
    assert {(0, 1), (0, 2), (1, 2)} <= edges_b  # preserved among the three ...
    assert not any(max(pr) >= 3 and min(pr) < 3 for pr in edges_b)  # ... and not between them and the others
    assert t.significant[:, a].all()
    assert res.n_kept == 1
    # the old two-set rule on the mean over pairs keeps the three-country component: the reason for the graph rule
    old = P.ppca(data, resamples=50, seed=0, rule="forwardstop", loading_resamples=0)
    assert old.kept[b]


def test_ppca_two_sets_keeps_each_shared_component():
    rng = np.random.default_rng(41)
    n, p = 250, 9
    w = np.zeros((p, 3))
    w[0:3, 0] = w[3:6, 1] = w[6:9, 2] = 1 / np.sqrt(3)
    z = rng.normal(size=(n, 3)) * [2.5, 2.0, 1.6]
    data = [z @ w.T + rng.normal(size=(n, p)) for _ in range(2)]
    res = P.ppca(data, resamples=200, seed=0, loading_resamples=50)
    assert res.rule == "bh_forwardstop_snr"
    assert res.kept[:3].all() and res.n_kept == 3
    assert _match_columns(res.rotated_loadings, w) < 0.1
    # every kept component's big loadings are significant by the paper's top-N test; the near-zero ones are not
    assert (res.n_significant_loadings >= 3).all()
    for d in range(3):
        assert res.significant_loadings[np.abs(res.rotated_loadings[:, d]) > 0.4, d].all()


def test_rotated_loadings_equal_statsmodels_varimax():
    from statsmodels.multivariate.factor_rotation import rotate_factors

    rng = np.random.default_rng(42)
    n, p = 200, 10
    w = np.linalg.qr(rng.normal(size=(p, 4)))[0]
    data = [rng.normal(size=(n, 4)) * [3, 2.5, 2, 1.7] @ w.T for _ in range(1)]
    data = [data[0] + rng.normal(size=(n, p)) * 0.7, data[0] + rng.normal(size=(n, p)) * 0.7]
    res = P.ppca(data, resamples=100, seed=0, loading_resamples=0)
    assert res.n_kept == 4
    ref, _ = rotate_factors(res.loadings[:, res.kept], "varimax")
    signs = np.sign((ref * res.rotated_loadings).sum(axis=0))
    np.testing.assert_allclose(res.rotated_loadings, ref * signs, atol=1e-12)
    np.testing.assert_allclose(res.loadings[:, res.kept] @ res.rotation, res.rotated_loadings, atol=1e-12)
    # Kaiser normalisation is an option, and a different rotation
    kaiser = P.ppca(data, resamples=100, seed=0, loading_resamples=0, kaiser=True)
    h = np.sqrt((res.loadings[:, res.kept] ** 2).sum(axis=1))
    ref_k = rotate_factors(res.loadings[:, res.kept] / h[:, None], "varimax")[0] * h[:, None]
    np.testing.assert_allclose(np.abs(kaiser.rotated_loadings), np.abs(ref_k), atol=1e-12)


def test_top_n_sign_test_hand_computed():
    rotated = np.array([[0.9], [-0.6], [0.3], [0.05]])  # order by |loading|: 0, 1, 2, 3
    boot = np.array([
        [[0.8, 0.1], [-0.5, 0.2], [0.2, 0.0], [-0.1, 0.3]],   # dim 0 agrees on the top 3
        [[-0.7, 0.0], [0.6, 0.0], [-0.1, 0.0], [-0.2, 0.0]],  # dim 0 flipped: agrees on all 4 (sign arbitrary)
        [[0.1, 0.9], [0.2, -0.4], [0.0, -0.2], [0.0, 0.0]],   # dim 1 agrees on the top 2; dim 0 on the top 1
        [[-0.3, 0.0], [-0.3, 0.0], [0.3, 0.0], [0.1, 0.0]],   # nobody agrees beyond the top 1
    ])
    pv = P.top_n_loading_pvalues(rotated, boot)
    np.testing.assert_allclose(pv[:, 0], [0.0, 1 - 3 / 4, 1 - 2 / 4, 1 - 1 / 4])
    n_sig, mask = P.significant_loadings(pv, rotated, 0.05)
    assert n_sig.tolist() == [1] and mask[:, 0].tolist() == [True, False, False, False]


def test_loading_preservation_reading():
    groups = ["US", "US", "US", "IN", "IN", "IN"]
    labels = ["a", "b", "c", "a", "b", "c"]
    same = np.array([[0.5], [0.2], [-0.1], [0.5], [0.2], [-0.1]])
    assert P.loading_preservation(same, groups, labels)[0] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 2))
    r, n = P.loading_preservation(x, groups, labels)
    mean = [(x[:3, d] + x[3:, d]) / 2 for d in range(2)]
    ref = np.corrcoef(np.concatenate([x[:3, 0], x[3:, 0], x[:3, 1], x[3:, 1]]),
                      np.concatenate([mean[0], mean[0], mean[1], mean[1]]))[0, 1]
    assert r == pytest.approx(ref) and n == 12


def _write_countries(tmp_path, data, p):
    attrs = [f"attr_{j}" for j in range(p)]
    paths = []
    for c, x in enumerate(data):
        path = tmp_path / f"country{c}.csv"
        pd.DataFrame(x, columns=attrs).assign(stimulus=[f"s{i}" for i in range(len(x))]).to_csv(path, index=False)
        paths.append(str(path))
    return paths


def test_run_gppca_writes_pairs_and_states_the_rule(tmp_path):
    import json

    data, _, _ = _six_countries(n=120)
    paths = _write_countries(tmp_path, data, 8)
    out = tmp_path / "out"
    report = run_ppca(paths, "stimulus", str(out), resamples=30, loading_resamples=10,
                      names=["CN", "ET", "IN", "SA", "US", "VE"])
    pairs = pd.read_csv(out / "pairs.csv")
    assert list(pairs.columns[:7]) == ["dimension", "country_a", "country_b", "r", "p", "q", "significant"]
    assert len(pairs) == 8 * 15 and set(pairs.country_a) | set(pairs.country_b) == {"CN", "ET", "IN", "SA", "US", "VE"}
    sig = pd.read_csv(out / "significance.csv")
    assert sig["rule"].str.startswith("gppca_graph: ").all()
    np.testing.assert_array_equal(sig["kept"], sig["graph_pass"])
    run = json.loads((out / "ppca_run.json").read_text())
    assert run["rule"] == "gppca_graph" and run["rule_requested"] == "brooks" and run["n_kept"] == report.result.n_kept
    assert "gppca_graph" in report.summary()


def test_cli_ppca_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys):
    from cxatlas.cli.main import main

    (x, y), _ = planted(30, 3, seed=1)
    paths = _write_countries(tmp_path, [x, y], 3)
    out = tmp_path / "out"
    assert main(["--data", str(tmp_path / "d"), "ppca", "--input", paths[0], "--id", "stimulus",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at least 2 input files" in err[0]
    assert main(["--data", str(tmp_path / "d"), "ppca", "--input", paths[0], "--input", paths[1], "--id",
                 "stimulus", "--out", str(out), "--rule", "gppca_graph"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs at least 3 datasets" in err[0]
    assert not out.exists()
    assert main(["--data", str(tmp_path / "d"), "--set", "ppca.resamples=20", "ppca", "--input", paths[0],
                 "--input", paths[1], "--id", "stimulus", "--out", str(out), "--rule", "forwardstop"]) == 0
    assert pd.read_csv(out / "significance.csv")["rule"].str.startswith("forwardstop: ").all()
