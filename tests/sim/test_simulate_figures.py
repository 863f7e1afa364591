"""The world simulator (cxatlas.sim.simulate) and the figures (cxatlas.stages.analyze.figures), without Spark.

The simulator's whole value is that its population statistics are *exact*; so the central test draws a large sample
from one region and checks the analytic partial correlations, prevalences and expression correlations against
brute-force numpy estimates from that sample, within sampling error. The others check the import format, that
coordinates fall in the row's region, that the data do not depend on chunking, and that each figure is a real PNG of
the requested size.
"""
from __future__ import annotations

import struct
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cxatlas.stages.analyze import figures

from cxatlas.core import geo

from cxatlas.sim import simulate
from cxatlas.core.config import packaged_conf_dir
from cxatlas.core.regions import REGION_IDS, load_country_regions
from cxatlas.core.taxonomies import EXPRESSIONS_2021, load_taxonomy

REGIONS_CSV = packaged_conf_dir() / "regions.csv"


@pytest.fixture(scope="module")
def small_world() -> simulate.SimulatedWorld:
    return simulate.simulate_world(4_000, 1, n_contexts=30, seed=5, chunk_rows=1_500)


# --------------------------------------------------------------------------------------------------------------------
# import format
# --------------------------------------------------------------------------------------------------------------------
def test_import_format_columns_types_and_regions(small_world):
    table = small_world.table
    schema = table.schema
    labels = load_taxonomy("nature2021_exp1").labels[:30]
    expected = (["video_id", "region", "lat", "lon"] + [f"expr_{e.lower()}" for e in EXPRESSIONS_2021]
                + [f"ctx_{c}" for c in labels])
    assert schema.names == expected
    assert schema.field("video_id").type == pa.string() and schema.field("region").type == pa.string()
    assert schema.field("lat").type == pa.float64() and schema.field("lon").type == pa.float64()
    assert all(schema.field(n).type == pa.float32() for n in expected[4:])
    df = table.to_pandas()
    assert len(df) == 4_000
    assert df["video_id"].tolist()[:2] == ["sim5-00000000", "sim5-00000001"] and df["video_id"].is_unique
    assert set(df["region"]) == set(REGION_IDS)  # 4,000 videos over 12 equally weighted regions: all present
    ctx = df[[f"ctx_{c}" for c in labels]].to_numpy()
    assert set(np.unique(ctx)) == {0.0, 1.0}
    assert 0.001 < ctx.mean() < 0.2  # inside the prevalence range on average
    assert np.isfinite(df[[c for c in expected if c.startswith("expr_")]].to_numpy()).all()


def test_full_taxonomy_labels_keep_duplicates_and_punctuation():
    params = simulate.make_world_params(1, seed=0)
    assert len(params.contexts) == 653 and len(set(params.context_columns)) == 653
    assert "ctx_Football (2)" in params.context_columns and "ctx_Do it yourself" in params.context_columns
    assert params.contexts == load_taxonomy("nature2021_exp1").labels
    assert 0 < params.shrink.min() <= params.shrink.max() <= 1.0


def test_coordinates_lie_in_a_country_of_the_rows_region(small_world):
    df = small_world.to_pandas()
    codes, _ = geo.nearest_country(df["lat"].to_numpy(), df["lon"].to_numpy())
    mapping = load_country_regions(REGIONS_CSV)
    assert [mapping.get(c) for c in codes] == df["region"].tolist()


# --------------------------------------------------------------------------------------------------------------------
# exact population values
# --------------------------------------------------------------------------------------------------------------------
def _sample_partial_correlations(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Brute force: for each context, invert the sample covariance of [x, c] and read off the partial correlations."""
    n_expr = x.shape[1]
    out = np.empty((c.shape[1], n_expr))
    for k in range(c.shape[1]):
        prec = np.linalg.pinv(np.cov(np.column_stack([x, c[:, k]]), rowvar=False))
        out[k] = -prec[:n_expr, n_expr] / np.sqrt(np.diag(prec)[:n_expr] * prec[n_expr, n_expr])
    return out


def test_analytic_population_matches_a_large_sample_of_one_region():
    region = "east_asia"
    params = simulate.make_world_params(
        1, seed=2, n_contexts=6, effect_scale=4.0, prevalence_range=(0.03, 0.2),
        region_weights={region: 1.0}, block_rows=65_536,
    )
    pop = simulate.population_truth(params)
    n = 200_000
    chunks = list(simulate.iter_sparse_chunks(params, n, chunk_rows=n))
    assert len(chunks) == 1
    chunk = chunks[0]
    r = params.region_ids.index(region)
    assert (chunk.region == r).all()
    x = chunk.X.astype(np.float64)
    c = chunk.C.toarray().astype(np.float64)

    # Prevalences: binomial sampling error.
    p = pop.prevalence[r]
    assert np.all(np.abs(c.mean(axis=0) - p) < 4.5 * np.sqrt(p * (1 - p) / n))
    # Expression correlations: Sigma_r is what x is drawn from.
    assert np.abs(np.corrcoef(x, rowvar=False) - params.sigma[r]).max() < 4.5 / np.sqrt(n)
    # Partial correlations: SE ~ (1 - rho^2) / sqrt(n - E - 1).
    truth = pop.pcorr[r]
    est = _sample_partial_correlations(x, c)
    se = (1 - truth**2) / np.sqrt(n - x.shape[1] - 1)
    assert np.abs(truth).max() > 10 * se.max()  # the check below is not vacuous: real, sizeable effects
    assert np.all(np.abs(est - truth) < 4.5 * se), np.abs((est - truth) / se).max()
    assert np.corrcoef(est.ravel(), truth.ravel())[0, 1] > 0.95


def test_closed_form_solution_reproduces_the_targets_and_the_regional_share():
    params = simulate.make_world_params(1, seed=1, n_contexts=120)
    pop = simulate.population_truth(params)
    np.testing.assert_allclose(pop.pcorr, params.target_pcorr, atol=1e-12)
    np.testing.assert_allclose(pop.prevalence, params.target_prevalence, atol=1e-12)
    assert ((pop.prevalence >= 0.002 - 1e-12) & (pop.prevalence <= 0.15 + 1e-12)).all()

    universal = simulate.population_truth(simulate.make_world_params(1, seed=1, n_contexts=120, regional_share=0.0))
    np.testing.assert_allclose(universal.pcorr, np.broadcast_to(universal.pcorr[:1], universal.pcorr.shape),
                               atol=1e-12)  # one pattern everywhere
    np.testing.assert_allclose(universal.region_similarity, 1.0, atol=1e-9)
    np.testing.assert_allclose(universal.world_r2, 1.0, atol=1e-9)

    only_regional = simulate.population_truth(
        simulate.make_world_params(1, seed=1, n_contexts=120, regional_share=1.0))
    assert only_regional.meta["realized_regional_share"] == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(only_regional.pcorr.mean(axis=0), 0.0, atol=1e-12)  # no universal pattern left

    # More regional variation -> regions less alike, and the world predicts each region less well.
    regional = simulate.population_truth(simulate.make_world_params(1, seed=1, n_contexts=120, regional_share=0.7))
    off = ~np.eye(len(REGION_IDS), dtype=bool)
    assert regional.region_similarity[off].mean() < pop.region_similarity[off].mean() < 1.0
    assert regional.world_r2.mean() < pop.world_r2.mean() < 1.0


def test_population_statistics_and_save_load_roundtrip(small_world, tmp_path):
    pop = small_world.population
    n_reg = len(REGION_IDS)
    assert pop.pcorr.shape == (n_reg, 30, 16) and pop.prevalence.shape == (n_reg, 30)
    np.testing.assert_allclose(pop.region_similarity, pop.region_similarity.T)
    np.testing.assert_allclose(np.diag(pop.region_similarity), 1.0)
    assert (pop.best_match != np.arange(n_reg)).all() and (pop.best_match >= 0).all()
    assert ((pop.world_r2 > 0) & (pop.world_r2 <= 1)).all()

    folder = simulate.save_population(small_world, tmp_path / "pop")
    back = simulate.load_population(folder)
    assert (back.region_ids, back.contexts, back.expressions) == (pop.region_ids, pop.contexts, pop.expressions)
    for name in ("pcorr", "prevalence", "region_similarity", "world_r2", "best_match", "best_match_r2"):
        np.testing.assert_array_equal(getattr(back, name), getattr(pop, name))
    assert back.meta == pop.meta
    frame = back.correlation_frame()
    assert len(frame) == n_reg * 30 * 16
    row = frame.iloc[16 * 30 + 16 + 2]  # region 1, context 1, expression 2
    assert (row.region, row.context, row.expression) == (pop.region_ids[1], pop.contexts[1], pop.expressions[2])
    assert row.r == pop.pcorr[1, 1, 2] and row.prevalence == pop.prevalence[1, 1]


# --------------------------------------------------------------------------------------------------------------------
# chunking
# --------------------------------------------------------------------------------------------------------------------

    assert simulate.load_expected_at_size(folder) is None  # no size given: only the asymptotic values
    expected = simulate.expected_at_size(pop, small_world.params.region_weights, 12_000)
    sized = simulate.save_population(small_world, tmp_path / "pop-sized", expected)
    back_n = simulate.load_expected_at_size(sized)
    assert back_n.n_videos == 12_000
    np.testing.assert_array_equal(back_n.region_similarity, expected.region_similarity)
    # Finite samples dilute: every off-diagonal similarity and every r2 shrinks, more for fewer videos.
    off = ~np.eye(n_reg, dtype=bool)
    assert (np.abs(expected.region_similarity[off]) <= np.abs(pop.region_similarity[off]) + 1e-12).all()
    assert ((expected.reliability > 0) & (expected.reliability < 1)).all()
    bigger = simulate.expected_at_size(pop, small_world.params.region_weights, 1_200_000)
    assert (bigger.reliability > expected.reliability).all() and (bigger.world_r2 > expected.world_r2).all()


def _read_parts(folder: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in sorted(folder.glob("part-*.parquet"))])


def test_chunked_writing_equals_one_shot(tmp_path):
    params = simulate.make_world_params(1, seed=9, n_contexts=25, block_rows=1_024)
    n = 5_000
    one = simulate.write_import_dataset(params, n, tmp_path / "one", chunk_rows=n)
    many = simulate.write_import_dataset(params, n, tmp_path / "many", chunk_rows=700)
    assert len(list(one.glob("part-*.parquet"))) == 1 and len(list(many.glob("part-*.parquet"))) == 8
    a, b = _read_parts(one), _read_parts(many)
    assert a.num_rows == n and a.equals(b)

    # Any row range can be generated on its own and matches the same rows of the whole.
    part = next(simulate.iter_sparse_chunks(params, n, chunk_rows=10_000, start=1_500, stop=3_300))
    whole = next(simulate.iter_sparse_chunks(params, n, chunk_rows=n))
    assert list(part.video_id) == list(whole.video_id[1_500:3_300])
    np.testing.assert_array_equal(part.X, whole.X[1_500:3_300])
    assert (part.C != whole.C[1_500:3_300]).nnz == 0
    np.testing.assert_array_equal(part.lat, whole.lat[1_500:3_300])
    # The wide ctx columns are the sparse labels.
    ctx = a.select(params.context_columns).to_pandas().to_numpy()
    np.testing.assert_array_equal(ctx, whole.C.toarray())

    other = next(simulate.iter_sparse_chunks(simulate.make_world_params(1, seed=10, n_contexts=25), 200, 200))
    assert not np.array_equal(other.X, whole.X[:200])
    assert other.video_id[0] == "sim10-00000000"


# --------------------------------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------------------------------
def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def _check_png(path: Path, figsize: tuple[float, float], dpi: int) -> None:
    assert path.exists() and path.stat().st_size > 5_000
    assert _png_size(path) == (round(figsize[0] * dpi), round(figsize[1] * dpi))
    pixels = matplotlib.image.imread(path)[..., :3]
    assert pixels.std() > 0.05  # something is drawn, not a blank canvas


@pytest.fixture(scope="module")
def result_frames(small_world):
    pop = small_world.population
    rid = list(pop.region_ids)
    corr = pop.correlation_frame().assign(se=0.01, n_videos=1_000)
    sim = pd.DataFrame([(a, b, pop.region_similarity[i, j], 0.02) for i, a in enumerate(rid)
                        for j, b in enumerate(rid) if i < j], columns=["region_a", "region_b", "r", "se"])
    world = pd.DataFrame({"region": rid, "r2": pop.world_r2, "se": 0.03,
                          "best_match_region": [rid[i] for i in pop.best_match], "best_match_r2": pop.best_match_r2})
    rng = np.random.default_rng(0)
    cca = pd.DataFrame([(v, d, r, 0.8 - 0.07 * d + rng.normal(0, 0.04)) for v in ("exp1", "exp2")
                        for d in range(1, 7) for r in rid], columns=["variant", "dimension", "heldout_region", "r"])
    df = small_world.to_pandas()
    lat_bin, lon_bin = geo.geobin(df["lat"], df["lon"], 0.5)
    geo_df = (pd.DataFrame({"lat_bin": lat_bin, "lon_bin": lon_bin, "a": df["expr_amusement"],
                            "b": df["expr_sadness"], "c": df["expr_awe"]})
              .groupby(["lat_bin", "lon_bin"])
              .agg(n_videos=("a", "size"), variate_1=("a", "mean"), variate_2=("b", "mean"), variate_3=("c", "mean"))
              .reset_index())
    return dict(corr=corr, sim=sim, world=world, cca=cca, geo=geo_df, contexts=list(pop.contexts[:7]))


def test_figures_write_pngs_of_the_requested_size(result_frames, tmp_path):
    f = result_frames
    size, dpi = (9.0, 5.0), 60
    _check_png(figures.heatmap_contexts(f["corr"], f["contexts"], tmp_path / "a" / "fig2.png", figsize=size,
                                        dpi=dpi), size, dpi)
    _check_png(figures.region_similarity_matrix(f["sim"], tmp_path / "fig3a.png", figsize=size, dpi=dpi), size, dpi)
    _check_png(figures.region_vs_world_bars(f["world"], tmp_path / "fig3b.png", figsize=size, dpi=dpi), size, dpi)
    _check_png(figures.heldout_canonical_correlations(f["cca"], tmp_path / "fig3c.png", figsize=size, dpi=dpi),
               size, dpi)
    _check_png(figures.geobin_map(f["geo"], tmp_path / "fig4.png", 0.5, figsize=size, dpi=dpi), size, dpi)
    # Default sizes at the default dpi (150): the heatmap sizes itself to its rows.
    path = figures.heatmap_contexts(f["corr"], f["contexts"][:3], tmp_path / "small.png")
    width, height = _png_size(path)
    assert width > 1_000 and height == round(4.5 * 150)


def test_figures_refuse_tables_that_lack_columns_or_contexts(result_frames, tmp_path):
    with pytest.raises(ValueError, match="missing column"):
        figures.region_vs_world_bars(result_frames["world"].drop(columns="r2"), tmp_path / "x.png")
    with pytest.raises(ValueError, match="not in the table"):
        figures.heatmap_contexts(result_frames["corr"], ["No such context"], tmp_path / "y.png")
    with pytest.raises(ValueError, match="three variates"):
        figures.geobin_map(result_frames["geo"], tmp_path / "z.png", variates=("variate_1", "variate_2"))
