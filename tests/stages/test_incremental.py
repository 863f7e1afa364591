"""Incremental statistics equal a full recomputation (issue #13), on real Spark, real Delta tables and the change feed.

A random sequence of 20 steps (new uploads, withdrawals, re-annotations, uploads moving region) is applied to the
three input tables; after each step the stored sums are brought up to date (:func:`current_sums`) and compared with a
full pass over the tables as they are now: the sums to 1e-9 and every result table computed from them to 1e-9.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd
import pytest

from cxatlas.core.regions import REGION_IDS
from cxatlas.core.run_schemas import STAT_SUMS
from cxatlas.core.schemas import UPLOADS, VIDEO_CONTEXTS, VIDEO_EXPRESSIONS, PAPER_EXPRESSIONS, label_to_column
from cxatlas.core.schemas import spark_schema
from cxatlas.stages.analyze import Inputs, compute_results, compute_sums, prepare_input
from cxatlas.stages.analyze.incremental import current_sums, load_state, read_state, selection, sums_key
from cxatlas.stages.ingest import apply_withdrawals
from cxatlas.warehouse.tables import TableStore
from tests.conftest import make_config

LABELS = [f"ctx{i:02d}" for i in range(24)]
EXPR = [label_to_column(x) for x in PAPER_EXPRESSIONS]
REGIONS = [REGION_IDS[0], REGION_IDS[1], "us_canada"]
VERSION, TAXONOMY = "m1", "tax24"


def _frames(rng, ids, version=VERSION, region=None):
    """Rows of the three tables for ``ids``: random region, geobin, expression scores and sparse contexts."""
    n = len(ids)
    regions = region if region is not None else rng.choice(REGIONS, n)
    lat = rng.uniform(-10, 10, n)
    lon = rng.uniform(-10, 10, n)
    base = dict(video_id=ids, region=regions, lat_bin=np.floor(lat / 0.5).astype("int32"),
                lon_bin=np.floor(lon / 0.5).astype("int32"))
    now = pd.Timestamp.now(tz="UTC").floor("us")
    up = pd.DataFrame(dict(base, uri=[f"/v/{i}.mp4" for i in ids], country="XX", lat=lat, lon=lon,
                           upload_time=now, title="t", description="d", text_flags=[[] for _ in ids],
                           source="test", ingest_time=now, withdrawn=False))
    ex = pd.DataFrame(dict(base, model_name="test", model_version=version, annotate_time=now, run_id="r",
                           n_windows=np.int32(3), n_faces=np.int32(1),
                           **{c: rng.uniform(0, 1, n).astype("float32") for c in EXPR}))
    contexts = []
    for _ in ids:
        k = rng.integers(2, 7)
        picks = rng.choice(len(LABELS), k, replace=False)
        contexts.append([{"label": LABELS[j], "score": float(np.float32(rng.uniform(0.2, 1.0)))} for j in picks])
    cx = pd.DataFrame(dict(base, model_name="test", model_version=version, annotate_time=now, run_id="r",
                           taxonomy=TAXONOMY, contexts=contexts))
    return up, ex, cx


def _write(spark, store, frames, how="upsert"):
    for spec, pdf in zip((UPLOADS, VIDEO_EXPRESSIONS, VIDEO_CONTEXTS), frames):
        if pdf is None:
            continue
        df = spark.createDataFrame(pdf[spec.schema.names], schema=spark_schema(spec.schema))
        getattr(store.table(spec), how)(df)


def _close(a, b, what):
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert a.shape == b.shape, what
    scale = max(1.0, float(np.nanmax(np.abs(b))) if b.size and np.isfinite(b).any() else 1.0)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-9 * scale, equal_nan=True, err_msg=what)


def _same_frames(fa, fb):
    for name in ("correlations", "similarity", "world", "cca_heldout", "cca_tests", "geobins"):
        a, b = getattr(fa, name), getattr(fb, name)
        assert list(a.columns) == list(b.columns) and len(a) == len(b), name
        for col in a.columns:
            if pd.api.types.is_numeric_dtype(b[col]):
                _close(a[col].to_numpy(float), b[col].to_numpy(float), f"{name}.{col}")
            else:
                assert a[col].tolist() == b[col].tolist(), f"{name}.{col}"


def test_incremental_sums_equal_full_recomputation_over_random_steps(spark, tmp_path):
    cfg = make_config(tmp_path / "data", "analyze.replicates=4", "analyze.min_occurrences=20", "analyze.partitions=1",
                      "analyze.cca.per_region=10", "analyze.cca.ridge=0.1", "incremental.candidate_margin=0.5",
                      "incremental.max_changed_fraction=0.5", "analyze.figures.enabled=false")
    store = TableStore.from_config(spark, cfg)
    settings = cfg.settings.analyze
    inc = cfg.settings.incremental
    rng = np.random.default_rng(5)
    for spec in (UPLOADS, VIDEO_EXPRESSIONS, VIDEO_CONTEXTS):
        store.table(spec).create_if_missing()
    next_id = 0

    def new_ids(n):
        nonlocal next_id
        out = [f"v{next_id + i:05d}" for i in range(n)]
        next_id += n
        return out

    _write(spark, store, _frames(rng, new_ids(450)), "append")
    sel = selection(VERSION, VERSION, TAXONOMY, EXPR, LABELS)
    modes, kinds = [], []
    timings = []
    for step in range(20):
        t0 = time.time()
        if step:  # step 0 builds the stored sums from scratch
            live = [r[0] for r in store.table(UPLOADS).read().filter("NOT withdrawn").select("video_id").collect()]
            kind = ["add", "withdraw", "reannotate", "move", "add"][step % 5]
            kinds.append(kind)
            if kind == "add":
                _write(spark, store, _frames(rng, new_ids(int(rng.integers(3, 12)))), "append")
            elif kind == "withdraw":
                gone = list(rng.choice(live, int(rng.integers(2, 6)), replace=False))
                tomb = _frames(rng, gone)[0].assign(withdrawn=True)
                _write(spark, store, (tomb, None, None))
                apply_withdrawals(store)
            elif kind == "reannotate":
                again = list(rng.choice(live, int(rng.integers(2, 8)), replace=False))
                up, ex, cx = _frames(rng, again)
                _write(spark, store, (None, ex, cx))
            else:  # an upload corrected to another region and place: its annotation rows stay
                moved = list(rng.choice(live, 3, replace=False))
                _write(spark, store, (_frames(rng, moved)[0], None, None))
        t1 = time.time()
        inputs = Inputs.read(store)
        m, cm, geo, info = current_sums(store, inputs, sel, settings, inc, f"run{step}")
        modes.append(info["mode"])
        t2 = time.time()
        prepared = prepare_input(inputs, VERSION, VERSION, TAXONOMY, EXPR, settings.cca.sample_seed)
        mf, cmf, geof = compute_sums(prepared, EXPR, LABELS, settings)
        for f in dataclasses.fields(mf):
            _close(getattr(m, f.name), getattr(mf, f.name), f"step {step} moments.{f.name}")
        for f in dataclasses.fields(cmf):
            _close(getattr(cm, f.name), getattr(cmf, f.name), f"step {step} cca.{f.name}")
        assert geo.key.tolist() == geof.key.tolist(), f"step {step} geobin keys"
        for f in dataclasses.fields(geof):
            _close(getattr(geo, f.name), getattr(geof, f.name), f"step {step} geobins.{f.name}")
        _same_frames(compute_results(m, cm, geo, EXPR, LABELS, settings),
                     compute_results(mf, cmf, geof, EXPR, LABELS, settings))
        timings.append((round(t1 - t0, 1), round(t2 - t1, 1), round(time.time() - t2, 1)))
    print("write / incremental / full seconds per step:", timings)
    assert modes[0] == "full"
    # The point: updates, not rebuilds. (A step may rebuild when withdrawals empty a region's sample candidates.)
    assert modes[1:].count("incremental") >= 15, list(zip(kinds, modes[1:]))
    # withdrawn videos are out of the sums
    live_n = store.table(UPLOADS).read().filter("NOT withdrawn").count()
    assert int(round(m.n[:, 0].sum())) == live_n
    state = store.table(STAT_SUMS).read().select("input_versions").distinct().collect()
    assert len(state) == 1  # one state per configuration, replaced in place


def test_no_change_means_no_pass_and_no_commit(spark, tmp_path):
    cfg = make_config(tmp_path / "data", "analyze.replicates=2", "analyze.min_occurrences=1", "analyze.partitions=1",
                      "analyze.cca.per_region=5")
    store = TableStore.from_config(spark, cfg)
    rng = np.random.default_rng(1)
    for spec in (UPLOADS, VIDEO_EXPRESSIONS, VIDEO_CONTEXTS):
        store.table(spec).create_if_missing()
    _write(spark, store, _frames(rng, [f"w{i}" for i in range(30)]), "append")
    sel = selection(VERSION, VERSION, TAXONOMY, EXPR, LABELS)
    first = current_sums(store, Inputs.read(store), sel, cfg.settings.analyze, cfg.settings.incremental, "a")
    version = store.table(STAT_SUMS).version()
    second = current_sums(store, Inputs.read(store), sel, cfg.settings.analyze, cfg.settings.incremental, "b")
    assert first[3]["mode"] == "full" and second[3]["mode"] == "current"
    assert store.table(STAT_SUMS).version() == version
    np.testing.assert_array_equal(first[0].sxc, second[0].sxc)


def _same_state(a, b):
    assert a.versions == b.versions and a.cuts == b.cuts
    for got, want in ((a.moments, b.moments), (a.cca, b.cca), (a.geobins, b.geobins)):
        for f in dataclasses.fields(want):
            np.testing.assert_array_equal(getattr(got, f.name), getattr(want, f.name), err_msg=f.name)
    assert [None if c is None else c.hash.tolist() for c in a.candidates] == \
        [None if c is None else c.hash.tolist() for c in b.candidates]


def test_the_state_this_process_saved_is_reused_only_while_stat_sums_is_unchanged(spark, tmp_path, caplog):
    """The stored sums a process saved come back from its own copy (issue #25: no 90 MB read through Spark per
    update) while ``stat_sums`` is at that commit's version. The copy equals what the table stores, a caller changing
    what it got does not change the next load, and any commit to ``stat_sums`` since (here another writer deleting
    the rows with Delta's own API) means the table is read."""
    import logging

    from delta.tables import DeltaTable

    caplog.set_level(logging.DEBUG, logger="cxatlas.stages.analyze.incremental")
    cfg = make_config(tmp_path / "data", "analyze.replicates=2", "analyze.min_occurrences=1", "analyze.partitions=1",
                      "analyze.cca.per_region=5")
    settings = cfg.settings.analyze
    store = TableStore.from_config(spark, cfg)
    for spec in (UPLOADS, VIDEO_EXPRESSIONS, VIDEO_CONTEXTS):
        store.table(spec).create_if_missing()
    _write(spark, store, _frames(np.random.default_rng(2), [f"s{i}" for i in range(30)]), "append")
    sel = selection(VERSION, VERSION, TAXONOMY, EXPR, LABELS)
    current_sums(store, Inputs.read(store), sel, settings, cfg.settings.incremental, "a")
    key = sums_key(sel, settings)

    copy = load_state(store, key, sel, settings)
    assert "taken from this process's save" in caplog.text
    _same_state(copy, read_state(store, key, sel, settings))  # the copy is what the table stores
    copy.moments.sxc[:] = 0
    copy.candidates[0] = None
    _same_state(load_state(store, key, sel, settings), read_state(store, key, sel, settings))

    DeltaTable.forPath(spark, store.table(STAT_SUMS).path).delete(f"sums_key = '{key}'")
    caplog.clear()
    assert load_state(store, key, sel, settings) is None  # read from the table, which no longer has them
    assert "taken from this process's save" not in caplog.text

    # The table deleted and written again by another writer up to the same version number: not our commit (its tag
    # differs), so the table is read.
    import shutil

    current_sums(store, Inputs.read(store), sel, settings, cfg.settings.incremental, "b")  # saved again
    table = store.table(STAT_SUMS)
    saved_version = table.version()
    shutil.rmtree(table.path)
    other = pd.DataFrame(dict(sums_key="another-configuration", kind="meta", key=0, payload=[b"{}"],
                              input_versions="{}", n_videos=0, run_id="x", updated=pd.Timestamp.now(tz="UTC")))
    for _ in range(saved_version + 1):
        spark.createDataFrame(other, schema=spark_schema(STAT_SUMS.schema)).write.format("delta").mode(
            "append").save(table.path)
    assert table.version() == saved_version
    caplog.clear()
    assert load_state(store, key, sel, settings) is None
    assert "taken from this process's save" not in caplog.text


def test_a_version_written_with_the_change_feed_off_means_one_full_pass_saying_why(spark, tmp_path):
    """The stored sums cannot be brought forward over a version the change feed did not record: the update says so
    (the reason names the table), falls back to one full pass equal to a fresh one, and the next change is again an
    incremental update (the feed was switched back on)."""
    cfg = make_config(tmp_path / "data", "analyze.replicates=2", "analyze.min_occurrences=1", "analyze.partitions=1",
                      "analyze.cca.per_region=5")
    store = TableStore.from_config(spark, cfg)
    settings, inc = cfg.settings.analyze, cfg.settings.incremental
    rng = np.random.default_rng(2)
    for spec in (UPLOADS, VIDEO_EXPRESSIONS, VIDEO_CONTEXTS):
        store.table(spec).create_if_missing()
    _write(spark, store, _frames(rng, [f"w{i}" for i in range(40)]), "append")
    sel = selection(VERSION, VERSION, TAXONOMY, EXPR, LABELS)
    assert current_sums(store, Inputs.read(store), sel, settings, inc, "a")[3]["mode"] == "full"

    expressions = store.table(VIDEO_EXPRESSIONS)
    spark.sql(f"ALTER TABLE delta.`{expressions.path}` SET TBLPROPERTIES ('delta.enableChangeDataFeed' = 'false')")
    _write(spark, store, _frames(rng, [f"x{i}" for i in range(4)]), "append")
    spark.sql(f"ALTER TABLE delta.`{expressions.path}` SET TBLPROPERTIES ('delta.enableChangeDataFeed' = 'true')")
    inputs = Inputs.read(store)
    m, cm, geo, info = current_sums(store, inputs, sel, settings, inc, "b")
    assert info["mode"] == "full" and "video_expressions" in info["reason"], info
    mf, _, _ = compute_sums(prepare_input(inputs, VERSION, VERSION, TAXONOMY, EXPR, settings.cca.sample_seed), EXPR,
                            LABELS, settings)
    _close(m.sxc, mf.sxc, "sums after the full pass")
    assert int(m.n[:, 0].sum()) == 44

    _write(spark, store, _frames(rng, [f"y{i}" for i in range(3)]), "append")
    assert current_sums(store, Inputs.read(store), sel, settings, inc, "c")[3]["mode"] == "incremental"
