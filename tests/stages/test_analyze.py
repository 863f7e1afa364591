"""``cxatlas analyze`` and ``cxatlas import-annotations`` on real Spark and real Delta tables.

One simulated world (the simulator's exact population values known) is written into the tables from the simulator's
sparse chunks and analysed once (module fixture); the tests then check that

* the Spark path equals numpy on the same rows (sums and every result table, to 1e-10),
* other partition counts, shuffle partitions and batch sizes give the same numbers (to 1e-10),
* the estimates recover the population partial correlations and prevalences within 3 bootstrap SEs, and the
  Poisson bootstrap SEs agree within 25% with an exact multinomial bootstrap,
* figures and the ``analyses`` row are written,

and that the wide import stores exactly those rows (small world) and quarantines every kind of bad row with its reason
and reconciles (small hand-made file).
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cxatlas.core.regions import REGION_IDS
from cxatlas.core.result_schemas import (ANALYSES, CCA_HELDOUT, CCA_LOADINGS, CCA_TESTS, CONTEXT_EXPRESSION_CORRELATIONS,
                                         GEOBIN_VARIATES, HEADLINE_NUMBERS, REGION_SIMILARITY, REGION_VS_WORLD,
                                         SIGN_AGREEMENT)
from cxatlas.core.schemas import QUARANTINE, UPLOADS, VIDEO_CONTEXTS, VIDEO_EXPRESSIONS
from cxatlas.core.settings import AnalyzeSettings
from cxatlas.sim import simulate
from cxatlas.sim.world import import_simulated, run_simulate, world_params_from_config
from cxatlas.stages.analyze import Inputs, compute_results, compute_sums, prepare_input, run_analyze
from cxatlas.stages.import_annotations import ImportFormatError, run_import
from cxatlas.stats import accumulate, accumulate_cca, bootstrap_summary, partial_correlations, poisson_weights
from cxatlas.stats.moments import prediction_folds
from cxatlas.warehouse.tables import TableStore
from tests.conftest import make_config
from tests.html_tables import number, report_tables
from cxatlas.udfs.moments import GeobinSums

N_VIDEOS = 150_000
N_CONTEXTS = 40
REPLICATES = 50
CCA_PER_REGION = 3_000
TAXONOMY = "sim40"  # not a built-in: the analysis takes the labels from the data
WORLD_SETTINGS = [
    f"simulate.n_contexts={N_CONTEXTS}", "simulate.seed=11", "simulate.effect_scale=4.0",
    "simulate.prevalence_range=[0.01, 0.2]", "simulate.chunk_rows=50000",
    f"analyze.replicates={REPLICATES}", f"analyze.cca.per_region={CCA_PER_REGION}", "analyze.partitions=2",
    "analyze.figures.n_contexts=6", "analyze.figures.dpi=60",
]


# --------------------------------------------------------------------------------------------------------------------
# The shared world
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    """The simulated world written straight into the tables (the wide import of the same rows is checked on a small
    world in :func:`test_wide_import_of_a_simulated_world_equals_writing_it_directly`), analysed once."""
    root = tmp_path_factory.mktemp("world")
    cfg = make_config(root / "data", *WORLD_SETTINGS)
    store = TableStore.from_config(spark, cfg)
    params = world_params_from_config(cfg)
    commits = import_simulated(spark, cfg, store, params, N_VIDEOS, model_version="sim-v1", taxonomy=TAXONOMY)
    report = run_analyze(spark, cfg, store, analysis_id="world-1")
    tables = {spec.name: store.table(spec).read().toPandas() for spec in
              (CONTEXT_EXPRESSION_CORRELATIONS, REGION_SIMILARITY, REGION_VS_WORLD, CCA_HELDOUT, CCA_TESTS,
               GEOBIN_VARIATES, SIGN_AGREEMENT, CCA_LOADINGS, HEADLINE_NUMBERS, ANALYSES)}
    return dict(cfg=cfg, store=store, commits=commits, report=report, tables=tables, params=params,
                population=simulate.population_truth(params))


@pytest.fixture(scope="module")
def in_memory(spark, world):
    """The world's rows as numpy arrays in the analysis' column order, with the hashes Spark derived."""
    import scipy.sparse as sp
    from pyspark.sql import functions as F

    params, report = world["params"], world["report"]
    chunks = list(simulate.iter_sparse_chunks(params, N_VIDEOS, chunk_rows=N_VIDEOS))
    ch = chunks[0]
    labels = sorted(params.contexts)
    col = np.array([labels.index(c) for c in params.contexts])
    C = sp.csr_matrix((ch.C.data.astype(np.float64), col[ch.C.indices], ch.C.indptr), shape=(N_VIDEOS, len(labels)))
    expr_cols = report.expressions
    X = ch.X[:, [params.expression_columns.index(c) for c in expr_cols]].astype(np.float32).astype(np.float64)
    region = np.array([REGION_IDS.index(r) for r in params.region_ids])[ch.region.astype(np.int64)]
    hashes = (world["store"].table(UPLOADS).read()
              .select("video_id", F.xxhash64("video_id").alias("h"),
                      F.xxhash64(F.lit("cxatlas-cca-sample-0"), F.col("video_id")).alias("k"))
              .toPandas().set_index("video_id").loc[ch.video_id])
    lat_bin = np.floor(ch.lat / 0.5).astype(np.int64)
    lon_bin = np.floor(ch.lon / 0.5).astype(np.int64)
    return dict(X=X, C=C, region=region, h=hashes["h"].to_numpy(), k=hashes["k"].to_numpy(), labels=labels,
                lat_bin=lat_bin, lon_bin=lon_bin, expr_cols=expr_cols)


def _numpy_sums(mem, settings: AnalyzeSettings):
    """The analysis' sums formed directly with numpy (one process, one batch)."""
    R = len(REGION_IDS)
    W = poisson_weights(mem["h"], settings.replicates, settings.seed)
    m = accumulate(mem["X"], mem["C"], mem["region"], W, R, settings.occur_threshold)
    thresholds = []
    for r in range(R):
        keys = np.sort(mem["k"][mem["region"] == r])
        thresholds.append(keys[settings.cca.per_region - 1] if keys.size >= settings.cca.per_region
                          else np.iinfo(np.int64).max)
    mask = mem["k"] <= np.array(thresholds)[mem["region"]]
    # Extended Data Fig. 7's folds: each region's sample in sample-key order, its first rows dealt round-robin.
    folds = np.full(len(mask), -1, dtype=np.int64)
    for r in range(R):
        in_sample = np.flatnonzero(mask & (mem["region"] == r))
        ordered = in_sample[np.argsort(mem["k"][in_sample], kind="stable")]
        folds[ordered] = prediction_folds(len(ordered), settings.prediction_per_region)
    cm = accumulate_cca(mem["X"][mask], mem["C"][mask], mem["region"][mask], R, folds=folds[mask])
    if settings.cca.fit_region_sample == "all":  # the one-region CCA's region: every video, in the *_all sums
        fit = mem["region"] == REGION_IDS.index(settings.cca.fit_region)
        cm += accumulate_cca(mem["X"][fit], mem["C"][fit], mem["region"][fit], R, all_videos=True)
    bins = GeobinSums.from_rows(mem["lat_bin"], mem["lon_bin"], mem["X"], mem["C"])
    return m, cm, bins, int(mask.sum())


def _assert_frames_close(got: pd.DataFrame, want: pd.DataFrame, keys: list[str], tol: float = 1e-10) -> None:
    assert len(got) == len(want), (len(got), len(want))
    g = got.sort_values(keys).reset_index(drop=True)
    w = want.sort_values(keys).reset_index(drop=True)
    for c in w.columns:
        if c == "analysis_id":
            continue
        if w[c].dtype.kind in "fi":
            a, b = g[c].to_numpy(float), w[c].to_numpy(float)
            assert np.array_equal(np.isnan(a), np.isnan(b)), c
            ok = ~np.isnan(a)
            assert np.max(np.abs(a[ok] - b[ok]), initial=0.0) <= tol, (c, np.max(np.abs(a[ok] - b[ok])))
        else:
            assert (g[c].astype(str) == w[c].astype(str)).all(), c


def _moments_rel_diff(a, b) -> float:
    """Largest difference over every sum array, relative to that array's largest magnitude."""
    import dataclasses

    worst = 0.0
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        worst = max(worst, float(np.abs(x - y).max() / max(np.abs(y).max(), 1e-300)))
    return worst


# --------------------------------------------------------------------------------------------------------------------
# Spark == numpy, and independence of partitioning
# --------------------------------------------------------------------------------------------------------------------
def test_world_tables_and_analysis_row_are_complete(world):
    assert all(c.rows_written == N_VIDEOS and c.version is not None for c in world["commits"].values())
    report = world["report"]
    assert report.n_videos == N_VIDEOS and len(report.expressions) == 16
    assert report.n_contexts == N_CONTEXTS and report.n_contexts_analysed == N_CONTEXTS
    row = world["tables"][ANALYSES.name].iloc[0]
    assert row["analysis_id"] == "world-1" and row["n_videos"] == N_VIDEOS and row["n_replicates"] == REPLICATES
    assert row["taxonomy"] == TAXONOMY and row["expression_model_version"] == "sim-v1"
    assert json.loads(row["input_versions"]) == report.input_versions
    assert json.loads(row["parameters"])["cca"]["per_region"] == CCA_PER_REGION
    assert json.loads(row["result_versions"])["context_expression_correlations"] >= 1
    stages = json.loads(row["stage_seconds"])  # where the time went, in SQL (issue #25)
    assert set(stages) == {"inputs", "heavy_pass", "statistics", "write_tables", "figures", "housekeeping"}
    assert all(v >= 0 for v in stages.values()) and sum(stages.values()) <= row["run_seconds"]
    assert stages["heavy_pass"] > 0 and stages["write_tables"] > 0
    for name in ("fig2_context_expression_heatmap", "fig3a_region_similarity", "fig3b_region_vs_world",
                 "fig3c_heldout_canonical_correlations", "fig4_geobin_variates"):
        png = Path(report.figures[name])
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
    assert Path(row["figures_dir"]) == png.parent


def test_spark_path_equals_numpy_on_the_same_rows(world, in_memory):
    report = world["report"]
    settings = report.settings
    m, cm, bins, n_sample = _numpy_sums(in_memory, settings)
    assert n_sample == CCA_PER_REGION * len(REGION_IDS)  # every region has more videos than the sample size
    assert _moments_rel_diff(report.moments, m) <= 1e-10
    assert _moments_rel_diff(report.cca_moments, cm) <= 1e-10
    np.testing.assert_array_equal(report.geobins.key, bins.key)
    np.testing.assert_allclose(report.geobins.sx, bins.sx, rtol=0, atol=1e-9)
    np.testing.assert_allclose(report.geobins.sc, bins.sc, rtol=0, atol=1e-9)
    us = REGION_IDS.index("us_canada")
    assert report.cca_moments.n_all[us] == np.sum(in_memory["region"] == us) > CCA_PER_REGION

    frames = compute_results(m, cm, bins, in_memory["expr_cols"], in_memory["labels"], settings)
    t = world["tables"]
    _assert_frames_close(t[CONTEXT_EXPRESSION_CORRELATIONS.name], frames.correlations, ["region", "context",
                                                                                       "expression"])
    _assert_frames_close(t[REGION_SIMILARITY.name], frames.similarity, ["region_a", "region_b"])
    _assert_frames_close(t[REGION_VS_WORLD.name], frames.world, ["region"])
    _assert_frames_close(t[CCA_HELDOUT.name], frames.cca_heldout, ["variant", "dimension", "heldout_region"])
    _assert_frames_close(t[CCA_TESTS.name], frames.cca_tests, ["variant", "dimension"])
    _assert_frames_close(t[GEOBIN_VARIATES.name], frames.geobins, ["lat_bin", "lon_bin"], tol=1e-9)
    _assert_frames_close(t[SIGN_AGREEMENT.name], frames.sign_agreement, ["expression"])
    _assert_frames_close(t[CCA_LOADINGS.name], frames.cca_loadings, ["variant", "dimension", "side", "feature"])
    _assert_frames_close(t[HEADLINE_NUMBERS.name], frames.headline, ["name"])
    assert {"contexts_positive_everywhere", "min_region_similarity", "leave_one_region_out_dims_positive_everywhere",
            "geobin_expression_variance_share", "bartlett_chi2_last"} <= set(t[HEADLINE_NUMBERS.name]["name"])
    # The tables hold what the paper reports: every region, all 12 x 12 pairs, 16 dimensions per variant.
    assert set(t[REGION_VS_WORLD.name]["region"]) == set(REGION_IDS)
    assert len(t[REGION_SIMILARITY.name]) == 144
    assert set(t[CCA_TESTS.name]["variant"]) == {"leave_one_region_out", "fit_on_us_canada", "balanced_fit"}


def test_same_results_with_other_partitioning_and_batches(spark, world):
    report = world["report"]
    other = dataclasses.replace(report.settings, partitions=3, batch_rows=7_000, chunk_rows=1_000, geobin_shards=3)
    inputs = Inputs.read(world["store"])
    prepared = prepare_input(inputs, report.expression_model_version, report.context_model_version,
                             report.taxonomy, report.expressions)
    previous = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "7")
    try:
        m, cm, bins = compute_sums(prepared.repartition(5), report.expressions, sorted(world["params"].contexts),
                                   other)
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", previous)
    assert _moments_rel_diff(m, report.moments) <= 1e-10
    assert _moments_rel_diff(cm, report.cca_moments) <= 1e-10
    labels = sorted(world["params"].contexts)
    a = compute_results(m, cm, bins, report.expressions, labels, other)
    b = compute_results(report.moments, report.cca_moments, report.geobins, report.expressions, labels,
                        report.settings)
    _assert_frames_close(a.correlations, b.correlations, ["region", "context", "expression"])
    _assert_frames_close(a.similarity, b.similarity, ["region_a", "region_b"])
    _assert_frames_close(a.world, b.world, ["region"])
    _assert_frames_close(a.cca_heldout, b.cca_heldout, ["variant", "dimension", "heldout_region"])
    _assert_frames_close(a.cca_tests, b.cca_tests, ["variant", "dimension"])
    _assert_frames_close(a.geobins, b.geobins, ["lat_bin", "lon_bin"], tol=1e-9)


def test_reweighted_cca_uses_every_video(world, in_memory):
    """``analyze.cca.balance=reweight``: no subsample; every video enters the CCA sums (regions are given equal mass
    on the driver), and the pass still equals numpy."""
    report = world["report"]
    settings = dataclasses.replace(report.settings, cca=dataclasses.replace(report.settings.cca, balance="reweight"))
    prepared = prepare_input(Inputs.read(world["store"]), report.expression_model_version,
                             report.context_model_version, report.taxonomy, report.expressions, broadcast=True)
    m, cm, _ = compute_sums(prepared, report.expressions, in_memory["labels"], settings)
    want = accumulate_cca(in_memory["X"], in_memory["C"], in_memory["region"], len(REGION_IDS))
    assert cm.n.sum() == N_VIDEOS and _moments_rel_diff(cm, want) <= 1e-10
    assert _moments_rel_diff(m, report.moments) <= 1e-10
    frames = compute_results(m, cm, report.geobins, report.expressions, in_memory["labels"], settings)
    assert set(frames.cca_tests["variant"]) == {"leave_one_region_out", "fit_on_us_canada", "balanced_fit"}
    assert frames.cca_tests.loc[frames.cca_tests["variant"] == "balanced_fit", "p"].iloc[0] < 1e-6


# --------------------------------------------------------------------------------------------------------------------
# Recovery of the population values, and bootstrap calibration
# --------------------------------------------------------------------------------------------------------------------
def test_recovers_population_partial_correlations_and_prevalences(world):
    pop, corr = world["population"], world["tables"][CONTEXT_EXPRESSION_CORRELATIONS.name]
    truth = pop.correlation_frame()
    truth["expression"] = [simulate.expression_column(e) for e in truth["expression"]]
    merged = corr.merge(truth, on=["region", "context", "expression"], suffixes=("", "_true"))
    assert len(merged) == len(corr) == len(REGION_IDS) * N_CONTEXTS * 16
    z = (merged["r"] - merged["r_true"]) / merged["se"]
    assert np.isfinite(z).all()
    # Within 3 bootstrap SEs: a normal estimate leaves 0.27% of cells outside; allow 1% of 7,680.
    assert np.mean(np.abs(z) > 3) <= 0.01, np.mean(np.abs(z) > 3)
    assert 0.8 <= np.mean(z ** 2) <= 1.25, np.mean(z ** 2)  # SEs neither too small nor too large
    cells = merged.drop_duplicates(["region", "context"])
    zp = (cells["prevalence"] - cells["prevalence_true"]) / cells["prevalence_se"]
    assert np.mean(np.abs(zp) > 3) <= 0.02 and 0.7 <= np.mean(zp ** 2) <= 1.4, np.mean(zp ** 2)
    # The signal is real: the estimates track the truth far beyond noise.
    assert np.corrcoef(merged["r"], merged["r_true"])[0, 1] > 0.9


def _reliability(corr: pd.DataFrame) -> dict[str, float]:
    """Per region, the share of the variance of its estimated correlations that is signal rather than sampling noise
    (weighted as the similarity weights contexts): ``1 - mean(se^2) / var(r)``."""
    out = {}
    for region, g in corr.groupby("region"):
        w = (g["prevalence"] * (1 - g["prevalence"])).to_numpy()
        r, se = g["r"].to_numpy(), g["se"].to_numpy()
        total = np.average((r - np.average(r, weights=w)) ** 2, weights=w)
        out[region] = 1.0 - np.average(se ** 2, weights=w) / total
    return out


def test_recovers_region_similarity_and_world_fit(world):
    """A correlation between two noisy matrices is attenuated by their noise (regression dilution, Spearman 1904):
    its expected value is the population value times sqrt(reliability_a * reliability_b). The bias is a few SEs
    here, so the check is against the attenuated population value, with each region's reliability estimated from
    the analysis' own correlations and SEs. Uncorrected, the estimates must still sit below the truth."""
    pop, t = world["population"], world["tables"]
    rel = _reliability(t[CONTEXT_EXPRESSION_CORRELATIONS.name])
    assert all(0.8 < v < 1.0 for v in rel.values()), rel
    sim = t[REGION_SIMILARITY.name]
    idx = {r: i for i, r in enumerate(pop.region_ids)}
    true_sim = np.array([pop.region_similarity[idx[a], idx[b]] for a, b in zip(sim["region_a"], sim["region_b"])])
    attenuation = np.array([math.sqrt(rel[a] * rel[b]) for a, b in zip(sim["region_a"], sim["region_b"])])
    off = (sim["region_a"] != sim["region_b"]).to_numpy()  # the diagonal is 1 by definition, with SE 0
    z = (sim["r"].to_numpy()[off] - true_sim[off] * attenuation[off]) / sim["se"].to_numpy()[off]
    assert np.mean(np.abs(z) <= 3) >= 0.95, np.sort(np.abs(z))[-10:]
    assert 0.6 <= np.mean(z ** 2) <= 1.6, np.mean(z ** 2)
    assert np.mean(sim["r"].to_numpy()[off] < true_sim[off]) > 0.9  # dilution is real, and it goes one way
    assert np.corrcoef(sim["r"].to_numpy()[off], true_sim[off])[0, 1] > 0.95

    world_fit = t[REGION_VS_WORLD.name].set_index("region").loc[list(pop.region_ids)]
    rv = np.array([rel[r] for r in pop.region_ids])
    # The world average of 11 regions carries 1/11 of a region's noise.
    rel_world = np.array([1 - (1 - np.delete(rv, i).mean()) / 11 for i in range(len(rv))])
    zw = (world_fit["r2"].to_numpy() - pop.world_r2 * rv * rel_world) / world_fit["se"].to_numpy()
    assert np.all(np.abs(zw) <= 3), zw
    best = np.array(pop.region_ids)[pop.best_match]
    assert np.mean(world_fit["best_match_region"].to_numpy() == best) >= 10 / 12

    # The values the simulator stores for this size (population x reliability computed from the population alone,
    # no estimate involved) agree with the empirical correction above and with the estimates.
    expected = simulate.expected_at_size(pop, world["params"].region_weights, N_VIDEOS)
    assert np.allclose(expected.reliability, rv, atol=0.03), (expected.reliability, rv)
    exp_sim = np.array([expected.region_similarity[idx[a], idx[b]] for a, b in zip(sim["region_a"], sim["region_b"])])
    z_n = (sim["r"].to_numpy()[off] - exp_sim[off]) / sim["se"].to_numpy()[off]
    assert np.mean(np.abs(z_n) <= 3) >= 0.9, np.sort(np.abs(z_n))[-10:]
    assert np.all(np.abs((world_fit["r2"].to_numpy() - expected.world_r2) / world_fit["se"].to_numpy()) <= 3.5)


def test_recovers_summary_numbers_at_the_simulated_size(world):
    """Contexts positive everywhere and the lowest region similarity against what the simulator's population implies
    at this size.

    A cell is positive in all 12 regions with probability prod_r Phi(rho_r / se_r) (independent regions, normal
    estimates); a context has some such cell with probability 1 - prod_e (1 - that), treating its expressions as
    independent (they are not quite: the tolerance adds 0.02 for that). Sampling noise lowers the share below the
    population's. The lowest region similarity is compared with the lowest of the similarities expected at this
    size."""
    from scipy.stats import norm

    pop, t = world["population"], world["tables"]
    head = t[HEADLINE_NUMBERS.name].set_index("name")
    corr = t[CONTEXT_EXPRESSION_CORRELATIONS.name]
    truth = pop.correlation_frame()
    truth["expression"] = [simulate.expression_column(e) for e in truth["expression"]]
    merged = corr.merge(truth, on=["region", "context", "expression"], suffixes=("", "_true"))
    z = (merged["r_true"] / merged["se"]).to_numpy()
    p_cell = np.exp(merged.assign(pos=norm.logcdf(z)).groupby(["context", "expression"])["pos"].sum())
    expected_share = float((1 - (1 - p_cell).groupby(level="context").prod()).mean())
    share, share_se = head.loc["contexts_positive_everywhere", ["value", "se"]]
    assert abs(share - expected_share) <= 3 * share_se + 0.02, (share, expected_share, share_se)
    pop_share = np.mean(np.any(np.all(pop.pcorr > 0, axis=0), axis=-1))
    assert share <= pop_share  # noise only ever breaks agreement

    expected = simulate.expected_at_size(pop, world["params"].region_weights, N_VIDEOS)
    sim = expected.region_similarity[np.triu_indices(len(REGION_IDS), 1)]
    lo, lo_se = head.loc["min_region_similarity", ["value", "se"]]
    assert abs(lo - sim.min()) <= 3 * lo_se + 0.01, (lo, sim.min(), lo_se)
    assert head.loc["sqrt_min_region_similarity", "value"] == pytest.approx(math.sqrt(lo))
    assert head.loc["leave_one_region_out_dims_positive_everywhere", "value"] >= 1
    assert head.loc["fit_on_us_canada_n_videos", "value"] == world["report"].videos_per_region["us_canada"]


def test_report_command_writes_the_page_for_the_analysis(world, tmp_path):
    from cxatlas.cli.main import main
    from cxatlas.stages.report import SECTIONS
    from tests.conftest import cli_args

    out = tmp_path / "r.html"
    assert main([*cli_args(world["cfg"]), "report", "world-1", "--out", str(out)]) == 0
    page = out.read_text()
    assert all(f'<section id="{s}">' in page for s in SECTIONS)
    assert page.count("data:image/png;base64,") == len(world["report"].figures)
    shown = report_tables(page)["headline_numbers"].set_index("name")
    stored = world["tables"][HEADLINE_NUMBERS.name].set_index("name")
    assert set(shown.index) == set(stored.index)
    for name in ("contexts_positive_everywhere", "min_region_similarity", "n_videos"):
        assert number(shown.loc[name, "value"]) == pytest.approx(stored.loc[name, "value"], rel=5e-4)


def test_poisson_bootstrap_se_matches_exact_multinomial_bootstrap(world, in_memory):
    """On a subsample: SEs from Poisson(1) weights (as the pipeline uses) vs an exact multinomial bootstrap (resample
    n videos with replacement), both with 200 replicates; and the pipeline's own SEs (all videos, 50 replicates)
    vs the exact bootstrap rescaled by sqrt(n_subsample / n_all) per region."""
    n_sub, B = 30_000, 200
    rng = np.random.default_rng(5)
    idx = np.sort(rng.choice(N_VIDEOS, size=n_sub, replace=False))
    X, C, region, h = (in_memory[k][idx] for k in ("X", "C", "region", "h"))
    R = len(REGION_IDS)
    w_multi = np.ones((n_sub, B + 1))
    w_multi[:, 1:] = rng.multinomial(n_sub, np.full(n_sub, 1.0 / n_sub), size=B).T
    se_multi = bootstrap_summary(np.moveaxis(partial_correlations(accumulate(X, C, region, w_multi, R)), 1, 0))[1]
    se_pois = bootstrap_summary(np.moveaxis(partial_correlations(
        accumulate(X, C, region, poisson_weights(h, B), R)), 1, 0))[1]
    ratio = (se_pois / se_multi).ravel()
    ratio = ratio[np.isfinite(ratio)]
    assert ratio.size > 0.95 * R * N_CONTEXTS * 16
    assert 0.95 <= np.median(ratio) <= 1.05, np.median(ratio)
    assert np.mean(np.abs(ratio - 1) <= 0.25) >= 0.99, np.mean(np.abs(ratio - 1) <= 0.25)

    corr = world["tables"][CONTEXT_EXPRESSION_CORRELATIONS.name]
    labels = in_memory["labels"]
    n_all = np.bincount(in_memory["region"], minlength=R)
    n_part = np.bincount(region, minlength=R)
    scaled = se_multi * np.sqrt(n_part / n_all)[:, None, None]
    expected = scaled[[REGION_IDS.index(r) for r in corr["region"]], [labels.index(c) for c in corr["context"]],
                      [in_memory["expr_cols"].index(e) for e in corr["expression"]]]
    pipeline_ratio = corr["se"].to_numpy() / expected
    assert 0.9 <= np.median(pipeline_ratio) <= 1.1, np.median(pipeline_ratio)
    assert np.mean(np.abs(pipeline_ratio - 1) <= 0.25) >= 0.9, np.mean(np.abs(pipeline_ratio - 1) <= 0.25)


def test_wide_import_of_a_simulated_world_equals_writing_it_directly(spark, tmp_path):
    """``run_simulate`` + ``run_import`` (wide Parquet, validated, contexts made sparse by Spark higher-order
    functions) must store exactly what ``import_simulated`` writes from the simulator's sparse chunks."""

    settings = ["simulate.n_contexts=25", "simulate.seed=3", "simulate.chunk_rows=700", "simulate.slice_rows=900"]
    cfg_a, cfg_b = make_config(tmp_path / "a", *settings), make_config(tmp_path / "b", *settings)
    store_a, store_b = TableStore.from_config(spark, cfg_a), TableStore.from_config(spark, cfg_b)
    sim = run_simulate(cfg_a, 2_000, str(tmp_path / "sim"))
    assert (Path(sim.population_dir) / "population.npz").is_file()
    report = run_import(spark, cfg_a, store_a, sim.out, model_version="m", taxonomy="t", model_name="simulator")
    assert report.reconciles and report.imported == 2_000 and report.quarantined == 0
    import_simulated(spark, cfg_b, store_b, world_params_from_config(cfg_b), 2_000, model_version="m", taxonomy="t")

    def frame(store, spec, cols):
        df = store.table(spec).read().toPandas()[cols].sort_values("video_id").reset_index(drop=True)
        if "contexts" in cols:
            df["contexts"] = [sorted((c["label"], float(c["score"])) for c in v) for v in df["contexts"]]
        return df

    up_cols = ["video_id", "region", "lat", "lon", "lat_bin", "lon_bin"]
    pd.testing.assert_frame_equal(frame(store_a, UPLOADS, up_cols), frame(store_b, UPLOADS, up_cols))
    ex_cols = ["video_id", "region", "model_version", *world_params_from_config(cfg_a).expression_columns]
    pd.testing.assert_frame_equal(frame(store_a, VIDEO_EXPRESSIONS, ex_cols),
                                  frame(store_b, VIDEO_EXPRESSIONS, ex_cols))
    cx_cols = ["video_id", "region", "model_version", "taxonomy", "contexts"]
    a, b = frame(store_a, VIDEO_CONTEXTS, cx_cols), frame(store_b, VIDEO_CONTEXTS, cx_cols)
    pd.testing.assert_frame_equal(a, b)
    assert sum(len(v) for v in a["contexts"]) > 500  # contexts really are there, sparsely


# --------------------------------------------------------------------------------------------------------------------
# Import: validation, quarantine, reconciliation
# --------------------------------------------------------------------------------------------------------------------
def _import_file(path: Path, rows: list[dict]) -> str:
    cols = ["video_id", "region", "lat", "lon", "expr_Joy", "expr_Surprise (negative)", "ctx_Football (2)",
            "ctx_Wedding", "ctx_C#"]
    types = [pa.string(), pa.string(), pa.float64(), pa.float64(), pa.float32(), pa.float32(), pa.float32(),
             pa.float32(), pa.float32()]
    table = pa.table({c: pa.array([r.get(c) for r in rows], t) for c, t in zip(cols, types)})
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path / "part-0.parquet")
    return str(path)


GOOD = {"region": "brazil", "lat": -23.55, "lon": -46.63, "expr_Joy": 0.7, "expr_Surprise (negative)": 0.1,
        "ctx_Football (2)": 1.0, "ctx_Wedding": 0.0, "ctx_C#": 0.25}
BAD = [
    ({**GOOD, "video_id": "r1", "region": "atlantis"}, "unknown_region"),
    ({**GOOD, "video_id": "r2", "region": None}, "unknown_region"),
    ({**GOOD, "video_id": "e1", "expr_Joy": math.nan}, "invalid_expression_score"),
    ({**GOOD, "video_id": "e2", "expr_Surprise (negative)": None}, "invalid_expression_score"),
    ({**GOOD, "video_id": "c1", "ctx_Wedding": 1.5}, "invalid_context_score"),
    ({**GOOD, "video_id": "c2", "ctx_C#": -0.1}, "invalid_context_score"),
    ({**GOOD, "video_id": "c3", "ctx_Football (2)": math.nan}, "invalid_context_score"),
    ({**GOOD, "video_id": None}, "missing_video_id"),
    ({**GOOD, "video_id": "  "}, "missing_video_id"),
    ({**GOOD, "video_id": "g1", "lat": 95.0}, "invalid_coordinates"),
    ({**GOOD, "video_id": "g2", "lon": None}, "invalid_coordinates"),
    ({**GOOD, "video_id": "dup"}, "duplicate_video_id"),
    ({**GOOD, "video_id": "dup", "expr_Joy": 0.2}, "duplicate_video_id"),
]


def test_import_quarantines_bad_rows_and_reconciles(spark, store, cfg, tmp_path):
    good = [{**GOOD, "video_id": "ok1"}, {**GOOD, "video_id": "ok2", "region": "USCanada", "lat": None, "lon": None,
                                          "ctx_Football (2)": 0.0, "ctx_C#": 0.0}]
    path = _import_file(tmp_path / "in", good + [row for row, _ in BAD])
    report = run_import(spark, cfg, store, path, model_version="ext-1", taxonomy="ext")
    assert report.reconciles and report.rows_in == len(good) + len(BAD)
    assert report.imported == 2 and report.quarantined == len(BAD) and report.new_uploads == 2
    want = pd.Series([reason for _, reason in BAD]).value_counts().to_dict()
    assert report.reasons == want

    q = store.table(QUARANTINE).read().toPandas()
    assert len(q) == len(BAD) and set(q["stage"]) == {"import"}
    assert sorted(q["reason"]) == sorted(reason for _, reason in BAD)
    detail = q.set_index("video_id")["detail"]
    assert "Wedding" in detail["c1"] and "1.5" in detail["c1"] and "expr_Joy" in detail["e1"]
    assert "atlantis" in detail["r1"]
    rows = [json.loads(s) for s in q["source_row"]]  # the rejected rows, whole, as JSON
    assert all(set(r) >= {"video_id", "region", "expr_Joy", "ctx_Football (2)", "ctx_C#"} for r in rows)

    uploads = store.table(UPLOADS).read().toPandas().set_index("video_id")
    assert sorted(uploads.index) == ["ok1", "ok2"]
    assert uploads.loc["ok2", "region"] == "us_canada" and pd.isna(uploads.loc["ok2", "lat_bin"])
    assert uploads.loc["ok1", "lat_bin"] == math.floor(-23.55 / 0.5) and pd.isna(uploads.loc["ok1", "country"])
    ex = store.table(VIDEO_EXPRESSIONS).read().toPandas().set_index("video_id")
    assert {"expr_joy", "expr_surprise_negative"} <= set(ex.columns)
    assert ex.loc["ok1", "expr_joy"] == pytest.approx(0.7) and ex.loc["ok1", "model_version"] == "ext-1"
    cx = store.table(VIDEO_CONTEXTS).read().toPandas().set_index("video_id")
    assert [(c["label"], c["score"]) for c in cx.loc["ok1", "contexts"]] == [("Football (2)", 1.0), ("C#", 0.25)]
    assert list(cx.loc["ok2", "contexts"]) == [] and cx.loc["ok1", "taxonomy"] == "ext"

    # Re-import: nothing changes, nothing is committed, counts still reconcile.
    versions = {s.name: store.table(s).version() for s in (UPLOADS, VIDEO_EXPRESSIONS, VIDEO_CONTEXTS, QUARANTINE)}
    again = run_import(spark, cfg, store, path, model_version="ext-1", taxonomy="ext")
    assert again.reconciles and again.unchanged == 2 and again.imported == 0
    assert {s: store.table(spec).version() for s, spec in zip(versions, (UPLOADS, VIDEO_EXPRESSIONS, VIDEO_CONTEXTS,
                                                                         QUARANTINE))} == versions

    # A video already in uploads under another region is a conflict, not a silent move.
    moved = _import_file(tmp_path / "moved", [{**GOOD, "video_id": "ok1", "region": "africa"}])
    conflict = run_import(spark, cfg, store, moved, model_version="ext-2", taxonomy="ext")
    assert conflict.reasons == {"region_conflict": 1} and conflict.reconciles


def test_import_refuses_wrong_columns_and_labels_outside_a_builtin_taxonomy(spark, store, cfg, tmp_path):
    path = _import_file(tmp_path / "in", [{**GOOD, "video_id": "a"}])
    with pytest.raises(ImportFormatError, match="not in the taxonomy"):
        run_import(spark, cfg, store, path, taxonomy="nature2021_exp1")  # "C#" is no label of experiment 1
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.table({"video_id": ["a"], "region": ["brazil"], "expr_joy": [0.1], "extra": [1]}),
                   bad / "p.parquet")
    with pytest.raises(ImportFormatError, match=r"no context column.*unexpected column\(s\) \['extra'\]"):
        run_import(spark, cfg, store, str(bad))


def test_compare_experiments_analyses_both_taxonomies_and_writes_the_table(spark, tmp_path):
    """Two taxonomies over the same videos (the second keeps a subset of the labels): one analysis each, and the
    headline numbers side by side in experiment_comparison."""
    from pyspark.sql import functions as F

    from cxatlas.core.result_schemas import EXPERIMENT_COMPARISON
    from cxatlas.stages.compare import run_compare

    cfg = make_config(tmp_path / "data", "simulate.n_contexts=15", "simulate.seed=2", "analyze.replicates=5",
                      "analyze.cca.per_region=100", "analyze.figures.enabled=false", "analyze.min_occurrences=5",
                      "analyze.partitions=2")
    store = TableStore.from_config(spark, cfg)
    import_simulated(spark, cfg, store, world_params_from_config(cfg), 3_000, model_version="m", taxonomy="t1")
    cx = store.table(VIDEO_CONTEXTS).read()
    store.table(VIDEO_CONTEXTS).append(cx.withColumn("taxonomy", F.lit("t2")).withColumn(
        "contexts", F.expr("filter(contexts, c -> length(c.label) % 2 = 0)")))
    rep = run_compare(spark, cfg, store, "t1", "t2", comparison_id="cmp")
    table = store.table(EXPERIMENT_COMPARISON).read().toPandas().set_index("name")
    heads = store.table(HEADLINE_NUMBERS).read().toPandas()
    for i in (1, 2):
        h = heads[heads["analysis_id"] == f"cmp-exp{i}"].set_index("name")
        assert (table[f"exp{i}_analysis_id"] == f"cmp-exp{i}").all()
        np.testing.assert_allclose(table.loc[h.index, f"exp{i}_value"], h["value"], rtol=1e-12)
    assert table.loc["n_contexts", "exp1_value"] == 15 > table.loc["n_contexts", "exp2_value"]
    assert table.loc["n_videos", "ratio"] == 1.0
    assert "contexts_positive_everywhere" in rep.summary()


def test_demo_analyses_a_simulated_world_in_tables_of_its_own(spark, tmp_path, capsys):
    """The demo's step 5 on a small world: its own tables and database, all 653 contexts, an analysis and a report,
    the headline numbers printed next to the paper's."""
    from cxatlas.cli.demo import analyse_simulated_world, simulated_world_config
    from cxatlas.stages.report import SECTIONS

    cfg = make_config(tmp_path / "data", "demo.simulated_videos=2500", "demo.simulated_replicates=3",
                      "analyze.cca.per_region=100", "analyze.figures.enabled=false", "analyze.min_occurrences=5",
                      "analyze.partitions=2")
    path = analyse_simulated_world(spark, cfg)
    page = Path(path).read_text()
    assert all(f'<section id="{s}">' in page for s in SECTIONS)
    sim_cfg = simulated_world_config(cfg)
    assert sim_cfg.settings.catalog.database == cfg.settings.catalog.database + "_simulated"
    sim_store = TableStore.from_config(spark, sim_cfg)
    assert sim_store.table(UPLOADS).read().count() == 2_500
    assert not TableStore.from_config(spark, cfg).table(UPLOADS).exists()  # the real-video tables stay apart
    row = sim_store.table(ANALYSES).read().toPandas().iloc[0]
    assert row["n_contexts"] == 653 and row["n_replicates"] == 3
    out = capsys.readouterr().out
    assert "contexts_positive_everywhere" in out and "0.496" in out and "min_region_similarity" in out
    assert "0.703" in out


def test_video_filter_leaves_out_video_game_videos_and_records_how_many(spark, tmp_path):
    """Experiment 1's filter: in annotations under the filtered taxonomy, videos where 'video game' occurred
    (score >= occur_threshold) are left out, one below the threshold is kept, the count is in the analyses row; an
    analysis of a taxonomy without filter scores says so and leaves nothing out."""
    from pyspark.sql import functions as F

    cfg = make_config(tmp_path / "data", "simulate.n_contexts=20", "simulate.seed=5", "analyze.replicates=2",
                      "analyze.cca.per_region=100", "analyze.figures.enabled=false", "analyze.min_occurrences=5",
                      "analyze.partitions=2", "analyze.context_model_version=m2")
    store = TableStore.from_config(spark, cfg)
    import_simulated(spark, cfg, store, world_params_from_config(cfg), 3_000, model_version="m",
                     taxonomy="nature2021_exp1")
    cx = store.table(VIDEO_CONTEXTS).read(store.table(VIDEO_CONTEXTS).version())  # this version: before the append
    bucket = F.pmod(F.xxhash64("video_id"), F.lit(7))
    kind = cx.schema["contexts"].dataType

    def one(label, score):
        return F.array(F.struct(F.lit(label).alias("label"), F.lit(score).alias("score"))).cast(kind)

    extra = (F.when(bucket == 0, one("video game", 0.9)).when(bucket == 1, one("animation", 0.3))
             .otherwise(F.array().cast(kind)))
    store.table(VIDEO_CONTEXTS).append(cx.withColumn("model_version", F.lit("m2"))
                                       .withColumn("contexts", F.concat("contexts", extra)))
    expected = cx.filter(bucket == 0).count()
    assert 0 < expected < 3_000

    rep = run_analyze(spark, cfg, store, analysis_id="filtered")
    unfiltered = run_analyze(spark, cfg, store, analysis_id="unfiltered",
                             settings=dataclasses.replace(cfg.settings.analyze, video_filter=False))
    assert rep.n_videos_filtered == expected
    assert rep.n_videos == unfiltered.n_videos - expected == 3_000 - expected
    rows = store.table(ANALYSES).read().toPandas().set_index("analysis_id")
    assert rows.loc["filtered", "n_videos_filtered"] == expected
    assert f"left out {expected} videos" in rows.loc["filtered", "video_filter"]
    assert rows.loc["unfiltered", "n_videos_filtered"] == 0
    assert "analyze.video_filter is off" in rows.loc["unfiltered", "video_filter"]

    sim = run_analyze(spark, cfg, store, analysis_id="other-taxonomy", settings=dataclasses.replace(
        cfg.settings.analyze, context_model_version="m", taxonomy="nature2021_exp1"))
    assert sim.n_videos_filtered == 0 and sim.n_videos == 3_000  # m carries no filter scores
