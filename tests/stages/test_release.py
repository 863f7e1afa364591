"""``cxatlas release``: differentially private per-region correlations, on real Spark, real Delta and real OpenDP.

One small simulated world (4 regions hold all 20,000 videos, 12 contexts; expression scores squashed into [0, 1] so
clipping changes nothing) is analysed once (module fixture). The tests check that

* the noise-free algebra of :mod:`cxatlas.stats.dp` equals the analysis' partial / semi-partial correlations and that
  the packed vector has L2 sensitivity 1 on real neighbouring data sets (one video added);
* with a very large epsilon the released correlations equal the analysis' within 0.01, in the published layout;
* with epsilon 1 they differ, two releases differ from each other, and the noise scale in ``releases`` explains the
  difference (the spread of the noisy counts between two releases);
* bad input (epsilon <= 0, delta outside (0, 1/n), an unknown analysis, a budget that would be exceeded) prints one
  line and exits 2, with nothing released and nothing charged;
* two releases racing for the last of the budget: exactly one is charged, the other is refused naming what was spent.
"""
from __future__ import annotations

import json
import math
import threading

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cxatlas.cli.main import main
from cxatlas.core.regions import REGION_IDS, region_by_id
from cxatlas.core.release_schemas import PRIVACY_LEDGER, RELEASED_CORRELATIONS, RELEASES
from cxatlas.core.result_schemas import ANALYSES, CONTEXT_EXPRESSION_CORRELATIONS
from cxatlas.core.schemas import VIDEO_EXPRESSIONS
from cxatlas.sim.world import import_simulated, world_params_from_config
from cxatlas.stages.analyze import run_analyze
from cxatlas.stages.release import csv_name, run_release
from cxatlas.stages.release.ledger import BudgetExceeded, charge, spent
from cxatlas.stats import accumulate, partial_correlations, semipartial_correlations
from cxatlas.stats.dp import (RegionSums, budget_shares, correlations_from_sums, nearest_psd, pack,
                              sensitivities)
from cxatlas.warehouse.tables import TableStore
from tests.conftest import cli_args, make_config

N_VIDEOS = 20_000
N_CONTEXTS = 12
TAXONOMY = "simdp"
REGIONS = ("us_canada", "africa", "brazil", "east_asia")
SETTINGS = [
    f"simulate.n_contexts={N_CONTEXTS}", "simulate.seed=5", "simulate.effect_scale=4.0",
    "simulate.prevalence_range=[0.05, 0.3]", "simulate.chunk_rows=20000", "simulate.slice_rows=20000",
    "simulate.region_weights={" + ", ".join(f"{r}: 1" for r in REGIONS) + "}",
    "analyze.replicates=2", "analyze.cca.per_region=500", "analyze.partitions=2", "analyze.figures.enabled=false",
    "release.total_epsilon=100000", "release.total_delta=0.001",
]
HUGE_EPSILON = 5000.0  # about the largest OpenDP's zCDP -> (epsilon, delta) conversion calibrates without overflow


def _rows(store, spec) -> int:
    t = store.table(spec)
    return t.read().count() if t.exists() else 0


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    """The world in the tables, its expression scores squashed into [0, 1] (a logistic), analysed once."""
    from pyspark.sql import functions as F

    root = tmp_path_factory.mktemp("release-world")
    cfg = make_config(root / "data", *SETTINGS)
    store = TableStore.from_config(spark, cfg)
    params = world_params_from_config(cfg)
    import_simulated(spark, cfg, store, params, N_VIDEOS, model_version="sim-v1", taxonomy=TAXONOMY)
    ex = store.table(VIDEO_EXPRESSIONS)
    squashed = ex.read().select(*[(1.0 / (1.0 + F.exp(-F.col(c)))).cast("float").alias(c)
                                  if c.startswith("expr_") and c in params.expression_columns else F.col(c)
                                  for c in ex.read().columns])
    ex.replace_where(squashed.localCheckpoint(), "true")
    report = run_analyze(spark, cfg, store, analysis_id="dp-world")
    exact = store.table(CONTEXT_EXPRESSION_CORRELATIONS).read().toPandas()
    huge = run_release(spark, cfg, store, HUGE_EPSILON, 1e-6, str(root / "huge"), analysis_id="dp-world")
    return dict(cfg=cfg, store=store, report=report, exact=exact, huge=huge, root=root)


# --------------------------------------------------------------------------------------------------------------------
# The algebra (no Spark)
# --------------------------------------------------------------------------------------------------------------------
def _data(rng, n, E=4, K=6, L=3):
    X = rng.uniform(size=(n, E))
    C = np.zeros((n, K))
    for i in range(n):
        ks = rng.choice(K, size=rng.integers(0, L + 1), replace=False)
        C[i, ks] = np.clip(rng.uniform(size=ks.size) + 0.3 * X[i, 0], 0, 1)
    return X, C


def _sums(X, C, thr=0.5) -> RegionSums:
    return RegionSums(float(len(X)), X.sum(0), X.T @ X, C.sum(0), (C * C).sum(0), X.T @ C,
                      (C >= thr).sum(0).astype(float))


def test_noise_free_correlations_equal_the_analysis_algebra():
    rng = np.random.default_rng(1)
    X, C = _data(rng, 4000)
    m = accumulate(X, sp.csr_matrix(C), np.zeros(len(X), dtype=np.int64), None, 1, 0.5)
    s = _sums(X, C)
    np.testing.assert_allclose(correlations_from_sums(s, "partial"), partial_correlations(m)[0, 0], atol=1e-12)
    np.testing.assert_allclose(correlations_from_sums(s, "semipartial"), semipartial_correlations(m)[0, 0],
                               atol=1e-12)


def test_packed_statistics_have_l2_sensitivity_at_most_one_for_neighbouring_data():
    """Adding any one clipped video (scores in [0, 1], at most L non-zero contexts) moves the packed vector by <= 1,
    and the worst case (every score 1) reaches it for the parts that can: the bound is tight, not loose."""
    rng = np.random.default_rng(2)
    E, K, L = 4, 6, 3
    sens = sensitivities(E, L)
    shares = budget_shares(sens, 0.1)
    X, C = _data(rng, 300, E, K, L)
    base = pack(_sums(X, C), sens, shares)
    worst = 0.0
    for trial in range(200):
        x = np.ones(E) if trial == 0 else rng.uniform(size=E)
        c = np.zeros(K)
        ks = rng.choice(K, size=L, replace=False)
        c[ks] = 1.0 if trial == 0 else rng.uniform(size=L)
        moved = np.linalg.norm(pack(_sums(np.vstack([X, x]), np.vstack([C, c])), sens, shares) - base)
        worst = max(worst, moved)
    assert worst <= 1.0 + 1e-9
    assert worst > 0.95  # the all-ones video with L contexts over the threshold is (nearly) the worst case


def test_nearest_psd_repairs_an_indefinite_matrix_and_keeps_a_psd_one():
    A = np.array([[1.0, 0.9, 0.9], [0.9, 1.0, -0.9], [0.9, -0.9, 1.0]])  # indefinite
    assert np.linalg.eigvalsh(A).min() < 0
    P = nearest_psd(A)
    assert np.linalg.eigvalsh(P).min() >= 0
    B = np.cov(np.random.default_rng(3).normal(size=(3, 50)))
    np.testing.assert_allclose(nearest_psd(B), B, atol=1e-12)


# --------------------------------------------------------------------------------------------------------------------
# Releases on the world
# --------------------------------------------------------------------------------------------------------------------
def test_huge_epsilon_releases_the_exact_correlations_in_the_published_layout(world):
    store, huge, exact = world["store"], world["huge"], world["exact"]
    rel = store.table(RELEASED_CORRELATIONS).read().filter(f"release_id = '{huge.release_id}'").toPandas()
    assert len(rel) == len(REGION_IDS) * N_CONTEXTS * 16
    both = rel.merge(exact[exact["analysis_id"] == "dp-world"], on=["region", "context", "expression"],
                     suffixes=("_released", "_exact"))
    both = both[~both["suppressed"] & np.isfinite(both["r_exact"])]
    assert set(both["region"]) == set(REGIONS) and len(both) > 500
    diff = (both["r_released"] - both["r_exact"]).abs()
    assert diff.max() < 0.01, diff.max()
    # Regions without videos are released too (noise only) and fully suppressed: the layout does not reveal them.
    empty = rel[~rel["region"].isin(REGIONS)]
    assert empty["suppressed"].all() and empty["r"].isna().all()

    files = sorted(p.name for p in (world["root"] / "huge").glob("*.csv"))
    assert files == sorted(csv_name(TAXONOMY, r) for r in REGION_IDS)
    text = (world["root"] / "huge" / csv_name(TAXONOMY, "us_canada")).read_text()
    assert not text.endswith("\n")
    lines = text.split("\n")
    assert lines[0] == ",Amusement,Anger,Awe,Concentration,Confusion,Contempt,Contentment,Desire,Disappointment," \
                       "Doubt,Elation,Interest,Pain,Sadness,Surprise,Triumph"
    assert len(lines) == 1 + N_CONTEXTS
    table = pd.read_csv(world["root"] / "huge" / csv_name(TAXONOMY, "us_canada"), index_col=0)
    us = rel[rel["region"] == "us_canada"].pivot(index="context", columns="expression", values="r")
    assert np.allclose(table.to_numpy(), us.loc[table.index].to_numpy(), atol=1e-4, equal_nan=True)
    assert csv_name("nature2021_exp1", "southeast_asia_mainland") == "Exp1_SoutheastAsia(Mainland).csv"
    assert region_by_id("us_canada").display_name == "USCanada"


def test_epsilon_one_releases_differ_and_the_releases_row_states_the_noise(world, tmp_path, capsys):
    store, cfg = world["store"], world["cfg"]
    ids = []
    for name in ("a", "b"):
        assert main([*cli_args(cfg), *[x for s in SETTINGS[-2:] for x in ("--set", s)], "release", "--epsilon",
                     "1", "--delta", "1e-6", "--analysis", "dp-world", "--out", str(tmp_path / name)]) == 0
        out = capsys.readouterr().out
        ids.append(out.split()[1])
        assert "(1, 1e-06)-differentially private partial correlations" in out
    rel = store.table(RELEASED_CORRELATIONS).read().toPandas()
    a, b = (rel[rel["release_id"] == i].set_index(["region", "context", "expression"]).sort_index() for i in ids)
    huge = rel[rel["release_id"] == world["huge"].release_id].set_index(["region", "context", "expression"])
    huge = huge.sort_index()
    # The noisy counts of two releases differ by noise alone (same data): their spread is the stated noise scale.
    rows = store.table(RELEASES).read().toPandas().set_index("release_id")
    scale = json.loads(rows.loc[ids[0], "noise_scale"])
    assert json.loads(rows.loc[ids[1], "noise_scale"]) == scale
    assert scale["sxc"] > 100 * json.loads(rows.loc[world["huge"].release_id, "noise_scale"])["sxc"]
    per_cell = a.groupby(level=["region", "context"])["noisy_occurrences"].first() \
        - b.groupby(level=["region", "context"])["noisy_occurrences"].first()
    ratio = per_cell.std() / (math.sqrt(2) * scale["occurrences"])
    assert 0.7 < ratio < 1.4, ratio
    # ... and the correlations differ from each other and from the exact ones.
    shown = a["r"].notna() & b["r"].notna()
    assert shown.sum() > 0 and (a.loc[shown, "r"] - b.loc[shown, "r"]).abs().mean() > 0.01
    shown_h = a["r"].notna() & huge["r"].notna()
    assert (a.loc[shown_h, "r"] - huge.loc[shown_h, "r"]).abs().mean() > 0.01
    row = rows.loc[ids[0]]
    assert row["epsilon"] == 1.0 and row["delta"] == 1e-6 and row["library"] == "opendp"
    assert row["library_version"].startswith("0.16") and "Gaussian" in row["mechanism"]
    assert json.loads(row["sensitivity"])["sxc"] == pytest.approx(math.sqrt(16 * 20))
    assert "one video" in row["privacy_unit"]
    assert set(json.loads(row["suppressed"])) == set(REGION_IDS)
    # The ledger holds every release, summed.
    ledger = store.table(PRIVACY_LEDGER).read().toPandas().sort_values("seq")
    assert set(ids) <= set(ledger["release_id"])
    assert ledger["spent_epsilon"].iloc[-1] == pytest.approx(ledger["epsilon"].sum())


@pytest.mark.parametrize("argv, says", [
    (["--epsilon", "0", "--delta", "1e-6"], "--epsilon must be"),
    (["--epsilon", "-1", "--delta", "1e-6"], "--epsilon must be"),
    (["--epsilon", "1", "--delta", "0"], "--delta must lie in (0, 1/n)"),
    (["--epsilon", "1", "--delta", "0.0005"], "videos of this release"),  # >= 1/n, known only after the pass
    (["--epsilon", "1", "--delta", "1e-6", "--analysis", "no-such-analysis"], "does not exist"),
    (["--epsilon", "1", "--delta", "1e-6", "--set", "release.total_epsilon=5000.5"], "spent epsilon"),
])
def test_bad_input_exits_2_with_one_line_and_nothing_released_or_charged(world, tmp_path, capsys, argv, says):
    store, cfg = world["store"], world["cfg"]
    before = {spec.name: _rows(store, spec) for spec in (RELEASES, RELEASED_CORRELATIONS, PRIVACY_LEDGER)}
    out = tmp_path / "out"
    base = [x for s in SETTINGS[-2:] for x in ("--set", s)]
    assert main([*cli_args(cfg), *base, "release", *argv, "--analysis", "dp-world", "--out", str(out)]
                if "--analysis" not in argv else [*cli_args(cfg), *base, "release", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cxatlas release: error: ") and says in err[0], err
    assert {spec.name: _rows(store, spec) for spec in (RELEASES, RELEASED_CORRELATIONS, PRIVACY_LEDGER)} == before
    assert not out.exists() or not any(out.iterdir())


def test_two_releases_racing_for_the_last_budget_one_is_charged_the_other_refused(spark, tmp_path):
    store = TableStore.from_config(spark, make_config(tmp_path / "data"))
    charge(store, "first", "a", 1.0, 1e-7, 2.5, 1e-5)
    results: dict[str, object] = {}
    gate = threading.Barrier(2)

    def attempt(name: str) -> None:
        gate.wait()
        try:
            results[name] = charge(store, name, "a", 1.0, 1e-7, 2.5, 1e-5)
        except BudgetExceeded as exc:
            results[name] = exc

    threads = [threading.Thread(target=attempt, args=(n,)) for n in ("left", "right")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = [v for v in results.values() if isinstance(v, BudgetExceeded)]
    assert len(refused) == 1, results
    assert "spent epsilon 2 and delta 2e-07 in 2 release(s)" in str(refused[0])
    ledger = store.table(PRIVACY_LEDGER).read().toPandas().sort_values("seq")
    assert list(ledger["seq"]) == [1, 2] and ledger["release_id"].iloc[0] == "first"
    assert ledger["release_id"].iloc[1] in ("left", "right")
    now = spent(store)
    assert now.epsilon == pytest.approx(2.0) and now.next_seq == 3


def test_report_shows_released_vs_exact_per_epsilon(spark, world, tmp_path):
    from cxatlas.stages.release.utility import report_sections
    from cxatlas.stages.report import write_report

    store = world["store"]
    row = store.table(ANALYSES).read().filter("analysis_id = 'dp-world'").collect()[0].asDict()
    (section,) = report_sections(spark, world["cfg"], store, row)
    table = section.tables[0].frame.set_index("release_id")
    assert table.loc[world["huge"].release_id, "mae"] < 0.002
    assert (table["cells_compared"] > 500).all()
    noisy = table[table["epsilon"] == 1.0]
    if not noisy.empty:  # the epsilon-1 releases of the test above, when it ran first
        assert (noisy["mae"] > 10 * table.loc[world["huge"].release_id, "mae"]).all()
    page = write_report(spark, world["cfg"], store, "dp-world", str(tmp_path / "report.html"))
    text = open(page.path, encoding="utf-8").read()
    assert "privacy-utility" in text and "Released vs exact correlations" in text
