"""Inagaki et al. (2022): repeated-run statistics and AU tuning (cxatlas.stages.inagaki), against scipy / numpy
references and a generated AU series with a planted profile. Pure pandas/numpy: no Spark, no torch."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from cxatlas.core.errors import UserError
from cxatlas.stages import inagaki as I

EXPR = ["neutral", "happy", "sad"]


def test_balanced_correct_rate_is_mean_of_per_class_rates():
    conf = np.array([[8, 2, 0], [1, 1, 0], [0, 0, 0]])
    rates, mean = I.balanced_correct_rates(conf)
    np.testing.assert_allclose(rates[:2], [0.8, 0.5])
    assert np.isnan(rates[2]) and mean == pytest.approx(0.65)
    assert mean != pytest.approx(np.trace(conf) / conf.sum())  # not trace / total (0.75)


def _runs(n_runs=8, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for run in range(n_runs):
        for train in ("A", "B"):
            for test in ("A", "B"):
                cond = "matched" if train == test else "swapped"
                for k, e in enumerate(EXPR):
                    rate = (0.8 if cond == "matched" else 0.5) + 0.05 * k + rng.normal(0, 0.03)
                    rows.append({"run": run, "train": train, "test": test, "condition": cond, "expression": e,
                                 "correct_rate": rate})
    return pd.DataFrame(rows)


def test_summary_and_paired_t_tests_match_scipy():
    runs = _runs()
    summary = I.summarise_runs(runs)
    part = runs[(runs.train == "A") & (runs.test == "B") & (runs.expression == "sad")].correct_rate
    row = summary[(summary.train == "A") & (summary.test == "B") & (summary.expression == "sad")].iloc[0]
    assert row["mean"] == pytest.approx(part.mean()) and row["sd"] == pytest.approx(part.std(ddof=1))
    assert row["runs"] == 8
    tests = I.paired_tests(runs).set_index("train")
    for train in ("A", "B"):
        bal = runs[runs.train == train].groupby(["run", "condition"]).correct_rate.mean().unstack()
        ref = scipy.stats.ttest_rel(bal["matched"], bal["swapped"])
        assert tests.loc[train, "t"] == pytest.approx(ref.statistic)
        assert tests.loc[train, "p"] == pytest.approx(ref.pvalue, rel=1e-6)
    assert (tests["p"] < 1e-6).all()


def test_two_way_anova_matches_balanced_sums_of_squares():
    runs = _runs(n_runs=6, seed=1)
    data = runs[runs.train == "A"]
    table = I.two_way_anova(data, "condition").set_index("source")
    y = data.correct_rate.to_numpy()
    grand = y.mean()
    ma = data.groupby("condition").correct_rate.transform("mean").to_numpy()
    mb = data.groupby("expression").correct_rate.transform("mean").to_numpy()
    mab = data.groupby(["condition", "expression"]).correct_rate.transform("mean").to_numpy()
    ss = {"condition": ((ma - grand) ** 2).sum(), "expression": ((mb - grand) ** 2).sum(),
          "condition:expression": ((mab - ma - mb + grand) ** 2).sum(), "Residual": ((y - mab) ** 2).sum()}
    for source, value in ss.items():
        assert table.loc[source, "sum_sq"] == pytest.approx(value, rel=1e-9)
    df_res = len(y) - 2 * 3
    f = ss["condition"] / 1 / (ss["Residual"] / df_res)
    assert table.loc["condition", "p"] == pytest.approx(scipy.stats.f.sf(f, 1, df_res), rel=1e-6)


def test_synthetic_au_series_planted_profile_is_recovered(tmp_path):
    series = I.synthetic_au_series(tmp_path / "au", differ=("angry",), noise=0.01)
    manifest = I.read_au_manifest(series.manifest)
    assert len(manifest) == len(series.aus) * len(series.levels)
    pa, pb = I.au_profiles(series.responses_a), I.au_profiles(series.responses_b)
    assert pa.shape == (len(series.aus), len(series.levels) - 1, len(series.units))
    # the peak/trough of each AU is at full intensity: the planted slope
    np.testing.assert_allclose(I.peak_trough(pa), series.planted_peaks_a, atol=0.06)
    np.testing.assert_allclose(I.peak_trough(pb), series.planted_peaks_b, atol=0.06)
    sim = I.profile_spearman_matrix(pa, pb)
    assert sim.shape == (4, 4)
    ref = scipy.stats.spearmanr(pa[..., 1].ravel(), pb[..., 2].ravel()).statistic
    assert sim[1, 2] == pytest.approx(ref)
    angry = series.units.index("angry")
    shared = [i for i in range(4) if i != angry]
    assert (np.diag(sim)[shared] > 0.9).all() and sim[angry, angry] < -0.9
    # a confusion that follows the similarity correlates with it
    rho, p = I.matrix_vs_confusion(sim, (sim + 1) / 2)
    assert rho == pytest.approx(1.0)
    scores, explained = I.peak_trough_pca(np.hstack([I.peak_trough(pa), I.peak_trough(pb)]))
    assert scores.shape == (8, 3) and explained.sum() <= 1 + 1e-12 and explained[0] >= explained[1]
    # the same PCA by eigendecomposition of the covariance of the 8 unit profiles
    x = np.hstack([I.peak_trough(pa), I.peak_trough(pb)]).T
    vals = np.linalg.eigvalsh(np.cov(x, rowvar=False))[::-1]
    np.testing.assert_allclose(explained, vals[:3] / vals.sum(), rtol=1e-9)


def test_au_manifest_refuses_missing_level_or_image(tmp_path):
    series = I.synthetic_au_series(tmp_path / "au")
    df = pd.read_csv(series.manifest)
    bad = tmp_path / "au" / "missing_level.csv"
    df[~((df.au == "AU12") & (df.level == df.level.max()))].to_csv(bad, index=False)
    with pytest.raises(I.AuManifestError, match="au AU12 lacks level"):
        I.read_au_manifest(bad)
    gone = tmp_path / "au" / "missing_image.csv"
    df.assign(image=df.image.where(df.index != 3, "nope.png")).to_csv(gone, index=False)
    with pytest.raises(UserError, match="do not exist, first .*nope.png"):
        I.read_au_manifest(gone)
