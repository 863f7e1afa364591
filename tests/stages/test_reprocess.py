"""``cxatlas reprocess`` (issue #13) on the embedded default: real videos, real models, Delta tables, the metastore.

* Scheduled runs over a growing manifest folder, with a withdrawal and a model-version change among them: every
  upload annotated exactly once per model version, one ``runs`` row per run, the analysis never mixing versions and
  switching once the new version covers every upload, and statistics equal to a full recomputation.
* Overlapping runs: a second run while the lease is held exits cleanly (status skipped) and changes nothing.
* SIGKILL at several points of a real run (separate processes), then a restart: no duplicate, no loss.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxatlas.core.result_schemas import ANALYSES
from cxatlas.core.run_schemas import PROCESSED_MANIFESTS, RUNS
from cxatlas.core.schemas import QUARANTINE, UPLOADS, VIDEO_CONTEXTS, VIDEO_EXPRESSIONS
from cxatlas.stages.analyze import Inputs, compute_sums, prepare_input
from cxatlas.stages.analyze.incremental import _occupied, read_state, selection, sums_key
from cxatlas.stages.analyze.sums import resolve_inputs, taxonomy_labels, video_filter_labels
from cxatlas.stages.reprocess import run_reprocess
from cxatlas.warehouse.lease import Lease
from cxatlas.warehouse.tables import TableStore
from tests.conftest import cli_args, make_config

REPO = Path(__file__).resolve().parents[2]
# Fewer windows per video: the same code path at a third of the cost.
FAST = ("annotate.video.max_windows=3", "analyze.min_occurrences=1", "analyze.replicates=5",
        "analyze.cca.per_region=6", "analyze.cca.ridge=0.1", "analyze.figures.enabled=false",
        "reprocess.lease_ttl_seconds=600")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Real demo videos and the rows of their manifest (bad rows included), built once for the module."""
    from cxatlas.cli.commands import sample_corpus

    out = tmp_path_factory.mktemp("corpus")
    cfg = make_config(out / "unused")
    info = sample_corpus(cfg, str(out), 5)
    rows = pd.read_csv(info.manifest, dtype=str, keep_default_na=False, encoding_errors="surrogateescape")
    return info, rows


def _write_manifest(folder: Path, name: str, rows: pd.DataFrame) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    rows.to_csv(path, index=False, encoding="utf-8", errors="surrogateescape")
    return path


def _good(rows: pd.DataFrame) -> pd.DataFrame:
    """The manifest rows of real, decodable videos (the sample corpus also lists a corrupt file)."""
    real = rows["video_id"].str.startswith("demo-") & rows["uri"].str.contains("/videos/")
    return rows[real].drop_duplicates("video_id")


def _annotation_counts(store: TableStore) -> pd.DataFrame:
    ex = store.table(VIDEO_EXPRESSIONS).read().groupBy("video_id", "model_version").count().toPandas()
    return ex


def test_scheduled_runs_withdrawal_and_model_version_change(spark, tmp_path, corpus):
    info, rows = corpus
    good = _good(rows)
    first, second = good.iloc[:3], good.iloc[3:]
    assert len(second) >= 2
    mdir = tmp_path / "manifests"
    cfg = make_config(tmp_path / "data", *FAST)
    store = TableStore.from_config(spark, cfg)

    # Run 1: the first manifest (3 videos + the deliberately bad rows of the sample corpus).
    bad = rows[~rows.index.isin(good.index)]
    _write_manifest(mdir, "2026-01-01.csv", pd.concat([first, bad]))
    r1 = run_reprocess(spark, cfg, store, str(mdir))
    assert r1.status == "succeeded" and r1.manifests == 1 and r1.remaining == 0
    assert r1.rows_in == len(first) + len(bad)
    assert r1.annotated == len(first) + 2  # the two flagged rows are real videos too; the corrupt one is quarantined

    # Run 2: a second manifest with new uploads and a withdrawal of a video of the first; the first is unchanged.
    gone = first["video_id"].iloc[0]
    withdrawal = pd.DataFrame([{"video_id": gone, "upload_time": "2026-02-01T00:00:00+00:00", "withdrawn": "true"}])
    _write_manifest(mdir, "2026-01-02.csv", second)
    _write_manifest(mdir, "2026-01-03-withdrawals.csv", withdrawal)
    r2 = run_reprocess(spark, cfg, store, str(mdir))
    assert r2.status == "succeeded" and r2.manifests == 2 and r2.withdrawn == 1
    assert r2.annotated == len(second)
    ex = store.table(VIDEO_EXPRESSIONS).read().toPandas()
    assert gone not in set(ex["video_id"])  # its annotations were deleted ...
    old = store.table(VIDEO_EXPRESSIONS).read(r1.versions["video_expressions"]).toPandas()
    assert gone in set(old["video_id"])  # ... as a Delta deletion: time travel still shows them
    v1 = ex["model_version"].iloc[0]

    # Run 3: a new expression model version (a changed face setting is part of it), bounded to 2 videos per run.
    cfg3 = make_config(tmp_path / "data", *FAST, "annotate.faces.min_prob=0.95")
    r3 = run_reprocess(spark, cfg3, store, str(mdir), max_videos=2)
    uploads = store.table(UPLOADS).read().toPandas()
    corrupt = set(rows.loc[rows["uri"] == str(info.corrupt_video), "video_id"])
    live_ids = set(uploads.loc[~uploads["withdrawn"], "video_id"]) - corrupt
    assert gone not in live_ids and len(live_ids) >= 5
    assert r3.manifests == 0 and r3.annotated + r3.quarantined == 2
    assert r3.remaining == len(live_ids) + len(corrupt) - 2
    a3 = store.table(ANALYSES)
    last = a3.read().filter(f"analysis_id = '{r3.analysis_id}'").collect()[0]
    assert last["expression_model_version"] == v1  # the complete old version, not a mix

    # Run 4: the new version completes and the statistics switch to it.
    r4 = run_reprocess(spark, cfg3, store, str(mdir), max_videos=10)
    assert r4.remaining == 0
    last = a3.read().filter(f"analysis_id = '{r4.analysis_id}'").collect()[0]
    v2 = last["expression_model_version"]
    assert v2 != v1

    # Run 5: nothing new. The latest analysis already covers these settings and table versions: none is written.
    analyses_before = a3.read().count()
    r5 = run_reprocess(spark, cfg3, store, str(mdir))
    assert r5.status == "succeeded" and r5.manifests == 0 and r5.annotated == 0
    assert r5.analysis_id == r4.analysis_id and a3.read().count() == analyses_before
    assert "current: analysis" in r5.statistics

    # Each upload annotated exactly once per model version; the withdrawn one not at all any more.
    counts = _annotation_counts(store)
    assert counts["count"].max() == 1
    per_version = counts.groupby("model_version")["video_id"].apply(set).to_dict()
    assert per_version[v2] == live_ids and per_version[v1] == live_ids

    # A runs row per run, with the counts the reports gave.
    runs = store.table(RUNS).read().toPandas().set_index("run_id")
    assert set(runs.index) == {r.run_id for r in (r1, r2, r3, r4, r5)}
    assert runs.loc[r5.run_id, "analysis_id"] == r4.analysis_id
    assert (runs["status"] == "succeeded").all()
    assert runs.loc[r2.run_id, "withdrawn"] == 1 and runs.loc[r3.run_id, "remaining"] == r3.remaining > 0
    assert json.loads(runs.loc[r4.run_id, "input_versions"])["video_expressions"] >= 0
    steps = json.loads(runs.loc[r1.run_id, "stage_seconds"])  # where each run's time went (issue #25)
    assert set(steps) == {"list manifests", "ingest", "withdrawals", "annotate", "statistics"}
    assert all(v >= 0 for v in steps.values()) and steps["annotate"] > 0
    assert set(json.loads(runs.loc[r5.run_id, "stage_seconds"])) == {"list manifests", "withdrawals", "annotate",
                                                                     "statistics"}
    manifests = store.table(PROCESSED_MANIFESTS).read().count()
    assert manifests == 3

    # Statistics equal a full recomputation: the stored sums of run 4's analysis against a fresh pass.
    settings = dataclasses.replace(cfg3.settings.analyze, expression_model_version=v2,
                                   context_model_version=last["context_model_version"], taxonomy=last["taxonomy"])
    inputs = Inputs.read(store)
    ev, cv, tax, columns, _ = resolve_inputs(inputs, settings)
    labels = taxonomy_labels(inputs, cv, tax)
    exclude = video_filter_labels(tax, settings, cfg3.settings.annotate.context)
    sel = selection(ev, cv, tax, columns, labels, exclude)
    state = read_state(store, sums_key(sel, settings), sel, settings)  # as stored, not this process's copy
    m, cm, geo = state.sums(settings.cca.per_region, settings.prediction_per_region)
    mf, cmf, geof = compute_sums(prepare_input(inputs, ev, cv, tax, columns, exclude_labels=exclude,
                                               occur_threshold=settings.occur_threshold), columns, labels, settings)
    for a, b in ((m, mf), (cm, cmf)):
        for f in dataclasses.fields(b):
            np.testing.assert_allclose(getattr(a, f.name), getattr(b, f.name), rtol=1e-9, atol=1e-9)
    assert geo.key.tolist() == _occupied(geof).key.tolist()
    ex = store.table(VIDEO_EXPRESSIONS).read().filter(f"model_version = '{v2}' AND n_windows > 0").toPandas()
    assert int(m.n[:, 0].sum()) == len(set(ex["video_id"]) & live_ids) > 0  # videos without a face have no scores


def _cli(cfg, *args: str) -> list[str]:
    return [sys.executable, "-m", "cxatlas.cli", *cli_args(cfg), *[x for s in FAST for x in ("--set", s)], *args]


def test_a_first_run_on_an_empty_manifest_folder_succeeds_with_nothing_to_analyse(spark, tmp_path):
    """A schedule set up before the first manifest arrives: the run did what was asked (nothing), so it succeeds
    (exit 0 for cron and Airflow) and says why no analysis was written; it used to fail in the statistics step."""
    (tmp_path / "manifests").mkdir()
    cfg = make_config(tmp_path / "data", *FAST)
    store = TableStore.from_config(spark, cfg)
    report = run_reprocess(spark, cfg, store, str(tmp_path / "manifests"))
    assert report.status == "succeeded", report.message
    assert report.manifests == 0 and report.annotated == 0 and report.analysis_id in (None, "")
    assert report.statistics.startswith("not updated: no upload is annotated by ")
    runs = store.table(RUNS).read().toPandas()
    assert runs["status"].tolist() == ["succeeded"]
    assert not store.table(ANALYSES).exists() or store.table(ANALYSES).read().count() == 0


def test_overlapping_run_exits_cleanly_and_changes_nothing(spark, tmp_path, corpus):
    info, rows = corpus
    mdir = tmp_path / "manifests"
    _write_manifest(mdir, "m.csv", _good(rows).iloc[:2])
    cfg = make_config(tmp_path / "data", *FAST)
    store = TableStore.from_config(spark, cfg)
    holder = Lease(store, "reprocess", "a-long-run", ttl_seconds=600)
    assert holder.acquire()  # another run (this process, alive) holds the lease
    out = subprocess.run(_cli(cfg, "reprocess", "--manifest-dir", str(mdir)), capture_output=True, text=True,
                         timeout=300, env=os.environ)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "skipped" in out.stdout and "a-long-run" in out.stdout
    assert not store.table(UPLOADS).exists()  # nothing ingested
    runs = store.table(RUNS).read().toPandas()
    assert runs["status"].tolist() == ["skipped"] and "a-long-run" in runs["error"].iloc[0]
    # Two runs racing for a free lease: exactly one wins (Delta's optimistic concurrency decides).
    holder.release()
    a = Lease(store, "reprocess", "run-a", 600)
    b = Lease(store, "reprocess", "run-b", 600)
    assert a.acquire() and not b.acquire()
    a.release()
    assert b.acquire()


def test_sigkill_at_several_points_then_restart_no_duplicate_no_loss(spark, tmp_path, corpus):
    """SIGKILL (the whole process group) the run when its output shows it reached a point: after the first
    manifest's ingest, in the middle of annotation, after annotation (statistics); each restart goes further, the
    last one finishes. Then every upload is stored and annotated exactly once and the runs table tells the story."""
    info, rows = corpus
    mdir = tmp_path / "manifests"
    good = _good(rows).iloc[:4]
    _write_manifest(mdir, "m1.csv", good.iloc[:2])
    _write_manifest(mdir, "m2.csv", good.iloc[2:])
    cfg = make_config(tmp_path / "data", *FAST)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for marker in ("ingest ", "[annotate]", "annotate (run"):
        proc = subprocess.Popen(_cli(cfg, "reprocess", "--manifest-dir", str(mdir)), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env)
        seen = []
        deadline = time.time() + 400
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(marker) or time.time() > deadline:
                break
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert seen and seen[-1].startswith(marker), "".join(seen[-30:])
    again = subprocess.run(_cli(cfg, "reprocess", "--manifest-dir", str(mdir)), capture_output=True, text=True,
                           timeout=600, env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    store = TableStore.from_config(spark, cfg)
    ids = set(good["video_id"])
    uploads = store.table(UPLOADS).read().toPandas()
    assert sorted(uploads["video_id"]) == sorted(ids)  # no loss, no duplicate
    for spec in (VIDEO_EXPRESSIONS, VIDEO_CONTEXTS):
        assert sorted(store.table(spec).read().toPandas()["video_id"]) == sorted(ids), spec.name
    assert store.table(PROCESSED_MANIFESTS).read().count() == 2
    runs = store.table(RUNS).read().toPandas().sort_values("started")
    assert runs["status"].tolist() == ["failed", "failed", "failed", "succeeded"]
    assert runs["error"].iloc[:3].str.contains("died holding the lease").all()
    assert runs["analysis_id"].iloc[3] is not None
    assert not store.table(QUARANTINE).exists() or store.table(QUARANTINE).read().count() == 0
