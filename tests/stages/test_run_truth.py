"""Issue #23, "A run tells the truth": a test per class.

* settings checked at load, completely, before any Spark session (each bad value of each enumerated / ranged
  setting refused in one line naming key, value and what is allowed; `config show` names each value's source);
* one exit contract: 0 did what was asked, 1 failed (one line: why, what was committed, the trace file), 2 refused
  before touching any table;
* reprocess with a failing step exits 1 with a `failed` runs row naming the step, a poison manifest does not block
  the good one, and the next run completes the work;
* one metastore server per data root: stopping B's never affects A's job.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import typing
from pathlib import Path

import pandas as pd
import pytest

from cxatlas.cli.main import main
from cxatlas.core import settings as schema
from cxatlas.core.config import ConfigError, load_config
from tests.conftest import cli_args, make_config

# (setting, bad value, what the one line must say is allowed)
BAD_VALUES = [
    ("annotate.video.placement", "evenly", "'even' or 'start'"),
    ("annotate.video.fps", "0", "greater than 0"),
    ("annotate.video.fps", "nan", "finite number"),
    ("annotate.video.max_windows", "-1", "greater than or equal to 1"),
    ("annotate.video.min_decoded_fraction", "1.5", "less than or equal to 1"),
    ("annotate.video.min_frames", "40", "exceeds the frames of one window"),
    ("annotate.faces.min_prob", "2", "less than or equal to 1"),
    ("annotate.faces.mtcnn_thresholds", "[0.6, 0.7]", "too few items"),
    ("annotate.faces.mtcnn_factor", "1.2", "less than 1"),
    ("annotate.expression.model", "fer8", "'fer7', 'cowen16' or 'brooks288'"),
    ("annotate.expression.checkpoint", "/no/such/weights.pt", "existing file"),
    ("annotate.context.mode", "experiment3", "'text_only' or 'experiment1'"),
    ("annotate.context.mode", "experiment1", "needs visual_checkpoint and gate_checkpoint"),
    ("annotate.context.store_threshold", "-0.1", "greater than or equal to 0"),
    ("annotate.device", "gpu", "auto|cpu|cuda"),
    ("analyze.replicates", "-1", "greater than or equal to 0"),
    ("analyze.correlation", "pearson", "'partial' or 'semipartial'"),
    ("analyze.cca.balance", "oversample", "'subsample' or 'reweight'"),
    ("analyze.cca.bartlett", "wilks", "'bartlett' or 'lawley'"),
    ("analyze.cca.fit_region", "mars", "'us_canada'"),
    ("analyze.cca.fit_region_sample", "some", "'all' or 'per_region'"),
    ("analyze.occur_threshold", "1.5", "less than or equal to 1"),
    ("analyze.partitions", "0", "greater than or equal to 1"),
    ("catalog.metastore", "derby", "'derby-server', 'embedded' or 'external'"),
    ("catalog.derby_port", "70000", "less than or equal to 65535"),
    ("catalog.database", "my-db", "pattern"),
    ("spark.log_level", "LOUD", "'WARN'"),
    ("simulate.experiment", "3", "1 or 2"),
    ("simulate.prevalence_range", "[0.5, 0.1]", "low < high"),
    ("train.heldout_fraction", "1", "less than 1"),
    ("train.device", "tpu", "auto|cpu|cuda"),
    ("reprocess.max_videos", "0", "greater than or equal to 1"),
    ("failures.systemic_share", "1.5", "less than 1"),
    ("failures.unfinished_results_hours", "-1", "greater than or equal to 0"),
    ("ingest.partitions", "many", "valid integer"),
]


@pytest.mark.parametrize("key, value, allowed", BAD_VALUES)
def test_each_bad_value_is_refused_at_load_naming_key_value_and_allowed(key, value, allowed):
    started = time.time()
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=[f"{key}={value}"])
    message = str(caught.value)
    assert key in message and allowed in message and f"--set {key}={value}" in message, message
    assert "\n" not in message and time.time() - started < 5


def test_a_bad_value_in_an_overlay_names_the_file(tmp_path):
    overlay = tmp_path / "site.yaml"
    overlay.write_text("annotate:\n  video:\n    placement: evenly\n")
    with pytest.raises(ConfigError, match=r"annotate.video.placement='evenly' \(--conf .*site.yaml\): must be "
                                          r"'even' or 'start'"):
        load_config(overlay)


def test_enumerations_agree_with_the_code_that_uses_them():
    """The Literals in core are the single check at load; they must list exactly what the lower layers accept."""
    from cxatlas.core.regions import REGION_IDS
    from cxatlas.media.video import PLACEMENTS
    from cxatlas.models.context import CONTEXT_MODES
    from cxatlas.models.registry import REGISTRY
    from cxatlas.stages.analyze.settings import BARTLETT_VARIANTS, CCA_BALANCE, CCA_FIT_REGION_SAMPLE
    from cxatlas.stats import CORRELATION_KINDS

    def allowed(cls, name):
        return set(typing.get_args(typing.get_type_hints(cls)[name]))

    assert allowed(schema.VideoSettings, "placement") == set(PLACEMENTS)
    assert allowed(schema.ContextSettings, "mode") == set(CONTEXT_MODES)
    assert allowed(schema.ExpressionSettings, "model") == set(REGISTRY)
    assert allowed(schema.CcaSettings, "balance") == set(CCA_BALANCE)
    assert allowed(schema.CcaSettings, "fit_region_sample") == set(CCA_FIT_REGION_SAMPLE)
    assert allowed(schema.CcaSettings, "bartlett") == set(BARTLETT_VARIANTS)
    assert allowed(schema.CcaSettings, "fit_region") == set(REGION_IDS)
    assert allowed(schema.AnalyzeSettings, "correlation") == set(CORRELATION_KINDS)


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxatlas.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_refuses_a_bad_value_before_any_session_or_table(tmp_path):
    data = tmp_path / "data"
    started = time.time()
    done = _cli("--data", str(data), "--set", "annotate.video.placement=evenly", "annotate")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "cxatlas annotate: error: invalid setting annotate.video.placement='evenly' (--set "
        "annotate.video.placement=evenly): must be 'even' or 'start'"]
    assert time.time() - started < 60 and not data.exists()  # no Spark session, no table, no metastore
    # A model that needs a checkpoint (a rule of a higher layer) is refused right after loading, before Spark too.
    done = _cli("--data", str(data), "--set", "annotate.expression.model=cowen16", "reprocess", "--manifest-dir",
                str(tmp_path))
    assert done.returncode == 2 and "model cowen16 needs a checkpoint" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not data.exists()


def test_config_show_names_the_source_of_each_value(tmp_path, capsys):
    overlay = tmp_path / "site.yaml"
    overlay.write_text("analyze:\n  seed: 3\n")
    assert main(["--conf", str(overlay), "--data", str(tmp_path / "d"), "--set", "analyze.replicates=7",
                 "config", "show", "analyze"]) == 0
    shown = dict(line.split(" = ", 1) for line in capsys.readouterr().out.splitlines())
    shown = {k.strip(): v for k, v in shown.items()}
    assert shown["analyze.replicates"] == "7  # --set analyze.replicates=7"
    assert shown["analyze.seed"] == f"3  # --conf {overlay}"
    assert shown["analyze.cca.per_region"].startswith("25000  # default (") and "local.yaml" in shown[
        "analyze.cca.per_region"]
    assert main(["--data", str(tmp_path / "d"), "config", "show", "data_root"]) == 0
    assert capsys.readouterr().out.strip().endswith("# --data")
    assert main(["config", "show", "analyze.replicatez"]) == 2
    assert "did you mean 'analyze.replicates'" in capsys.readouterr().err


# -- the exit contract -------------------------------------------------------------------------------------------------
def _manifest(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _row(i: int, lat: float = 40.7, lon: float = -74.0) -> dict:
    return dict(video_id=f"v{i}", uri=f"/nowhere/v{i}.mp4", country="US", lat=lat, lon=lon,
                upload_time="2020-05-01T12:00:00Z", title="t", description="d")


def test_exit_codes_success_failure_refusal(spark, cfg, store, tmp_path, capsys):
    from cxatlas.core.schemas import UPLOADS

    args = cli_args(cfg)
    # Refused before touching any table: 2, and no table exists.
    assert main([*args, "ingest", "--manifest", str(tmp_path / "missing.csv")]) == 2
    assert main([*args, "analyze"]) == 2
    assert main([*args, "report"]) == 2
    assert not store.table(UPLOADS).exists()
    # Did what was asked (a quarantined row is data): 0.
    good = _manifest(tmp_path / "good.csv", [_row(1), _row(2), _row(3, lat=95.0)])
    assert main([*args, "ingest", "--manifest", str(good)]) == 0
    # A systemic share of the inputs failed for one reason (here 5 of 6 rows out of range): 1, what it committed
    # is kept and the one line says why.
    capsys.readouterr()
    bad = _manifest(tmp_path / "bad.csv", [_row(10)] + [_row(i, lat=95.0) for i in range(11, 16)])
    assert main([*args, "ingest", "--manifest", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "5 of its 6 inputs failed for one reason (coordinates_" in err
    assert store.table(UPLOADS).read().filter("video_id = 'v10'").count() == 1
    # ... which is a setting.
    assert main([*args, "--set", "failures.systemic_share=0.9", "ingest", "--manifest", str(bad)]) == 0


def test_a_fault_is_one_line_naming_what_was_committed_and_the_trace_file(spark, cfg, store, tmp_path, capsys):
    from cxatlas.core.schemas import UPLOADS

    assert main([*cli_args(cfg), "ingest", "--manifest", str(_manifest(tmp_path / "m.csv", [_row(1)]))]) == 0
    log_dir = Path(cfg.data_root) / cfg.settings.failures.log_dir
    # Break the table's Delta log: reading its history is now a fault of the environment, not the user's input.
    for entry in (Path(store.table(UPLOADS).path.replace("file:", "")) / "_delta_log").glob("*.json"):
        entry.write_text("{not json")
    for entry in (Path(store.table(UPLOADS).path.replace("file:", "")) / "_delta_log").glob("*.crc"):
        entry.unlink()
    capsys.readouterr()
    assert main([*cli_args(cfg), "history", "uploads"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("cxatlas history: failed: "), err
    assert "nothing was committed" in err[0] and "Traceback" not in err[0]
    trace = Path(err[0].rsplit("full trace: ", 1)[1])
    assert trace.parent == log_dir and "Traceback (most recent call last)" in trace.read_text()


# -- reprocess: a failing step, a poison manifest, and the next run -------------------------------------------------
FAST = ("annotate.video.max_windows=3", "analyze.min_occurrences=1", "analyze.replicates=3",
        "analyze.cca.per_region=6", "analyze.cca.ridge=0.1", "analyze.figures.enabled=false",
        "failures.systemic_min_inputs=2")


def test_reprocess_failing_step_poison_manifest_and_the_next_run_completes(spark, tmp_path, capsys):
    from cxatlas.cli.commands import sample_corpus
    from cxatlas.core.run_schemas import PROCESSED_MANIFESTS, RUNS
    from cxatlas.core.schemas import VIDEO_EXPRESSIONS
    from cxatlas.warehouse.tables import TableStore

    cfg = make_config(tmp_path / "data", *FAST)
    store = TableStore.from_config(spark, cfg)
    info = sample_corpus(cfg, str(tmp_path / "corpus"), 5)
    rows = pd.read_csv(info.manifest, dtype=str, keep_default_na=False, encoding_errors="surrogateescape")
    good = rows[rows["video_id"].str.startswith("demo-") & rows["uri"].str.contains("/videos/")]
    good = good.drop_duplicates("video_id").iloc[:3].copy()
    assert len(good) == 3
    # The videos are "not there yet": their files sit elsewhere, so annotate quarantines every one as missing_file.
    moved = tmp_path / "moved"
    good["uri"] = [str(moved / Path(u).name) for u in good["uri"]]
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    (mdir / "a-poison.csv").write_bytes(b"\x00\x01PK\x03\x04 not a manifest \xff" * 40)
    good.to_csv(mdir / "b-good.csv", index=False)
    args = [*cli_args(cfg), *[x for kv in FAST for x in ("--set", kv)], "reprocess", "--manifest-dir", str(mdir)]

    assert main(args) == 1
    err = capsys.readouterr().err
    assert "step annotate" in err and "missing_file" in err, err
    runs = store.table(RUNS).read().toPandas()
    assert runs["status"].tolist() == ["failed"] and "step annotate" in runs["error"].iloc[0]
    processed = store.table(PROCESSED_MANIFESTS).read().toPandas().set_index("path")
    poison, ok = str(mdir / "a-poison.csv"), str(mdir / "b-good.csv")
    assert processed.loc[poison, "error"] and pd.isna(processed.loc[ok, "error"])  # the good one was ingested

    # The files arrive; the next run skips the unchanged poison file (saying so), annotates, analyses: exit 0.
    moved.mkdir()
    for uri in rows.loc[rows["video_id"].isin(good["video_id"]), "uri"].drop_duplicates():
        shutil.copy(uri, moved / Path(uri).name)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "manifest skipped, refused earlier and unchanged" in out and "a-poison.csv" in out
    runs = store.table(RUNS).read().orderBy("started").toPandas()
    assert runs["status"].tolist() == ["failed", "succeeded"] and runs["analysis_id"].iloc[-1]
    assert store.table(VIDEO_EXPRESSIONS).read().select("video_id").distinct().count() == 3

    # A poison manifest met for the first time: every other manifest is ingested, then the run exits 1 naming it.
    (mdir / "c-poison.json").write_text("{ broken")
    good.iloc[:1].assign(video_id="late-1").to_csv(mdir / "d-late.csv", index=False)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "c-poison.json" in err and "step ingest" in err
    processed = store.table(PROCESSED_MANIFESTS).read().toPandas().set_index("path")
    assert pd.isna(processed.loc[str(mdir / "d-late.csv"), "error"])


# -- one metastore per data root -------------------------------------------------------------------------------------
@pytest.fixture
def own_metastores(tmp_path):
    """Data roots A and B with metastore servers of their own (not the test run's shared one); both stopped after."""
    from cxatlas.warehouse.metastore import stop_server

    roots = {name: load_config(data_root=str(tmp_path / name), overrides=["catalog.metastore_root=null",
                                                                          "catalog.derby_port=0"])
             for name in ("A", "B")}
    yield roots
    for cfg in roots.values():
        stop_server(cfg.data_root, cfg.settings.catalog, cfg.settings.spark.jars_dir)


def test_stopping_b_metastore_never_affects_a_job(own_metastores, tmp_path):
    from cxatlas.cli.commands import explain_failure
    from cxatlas.warehouse.metastore import ensure_server, server_of

    a, b = own_metastores["A"], own_metastores["B"]
    server_a = ensure_server(a.data_root, a.settings.catalog, a.settings.spark.jars_dir)
    server_b = ensure_server(b.data_root, b.settings.catalog, b.settings.spark.jars_dir)
    assert server_a.port != server_b.port and server_a.started_now and server_b.started_now
    record = Path(a.data_root) / "metastore" / "server.json"
    assert json.loads(record.read_text())["port"] == server_a.port and (record.stat().st_mode & 0o077) == 0

    own = ["--set", "catalog.metastore_root=null", "--set", "catalog.derby_port=0"]
    manifest = _manifest(tmp_path / "m.csv", [_row(i) for i in range(3)])
    job = subprocess.Popen([sys.executable, "-m", "cxatlas.cli", "--data", a.data_root, *own, "ingest",
                            "--manifest", str(manifest)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped = _cli("--data", b.data_root, *own, "metastore", "stop")
    assert stopped.returncode == 0 and f"stopped ({server_b.host}:{server_b.port}" in stopped.stdout, stopped.stdout
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err[-3000:]
    assert "rows in 3 = " in out and server_a.alive() and not server_b.listening()
    assert server_of(a.data_root, a.settings.catalog).port == server_a.port  # A's job used A's own server

    # A job whose metastore went away says so in one line naming it.
    assert explain_failure(a, RuntimeError("Connection refused")) is None  # A's server is alive: not the cause
    done = _cli("--data", a.data_root, *own, "metastore", "stop")
    assert done.returncode == 0
    message = explain_failure(a, RuntimeError("Connection refused"))
    assert message and a.data_root in message and "was stopped during the run" in message


# -- atomic results: the analyses row is the commit marker -----------------------------------------------------------
def test_a_killed_analysis_leaves_no_visible_rows_and_its_rerun_no_duplicates(spark, tmp_path, capsys):
    import os
    import signal

    from cxatlas.core.result_schemas import ANALYSES, CONTEXT_EXPRESSION_CORRELATIONS, RESULT_TABLES
    from cxatlas.sim.world import run_simulate
    from cxatlas.stages.import_annotations import run_import
    from cxatlas.warehouse.catalog import register_catalog
    from cxatlas.warehouse.tables import TableStore

    small = ("simulate.n_contexts=12", "analyze.replicates=3", "analyze.min_occurrences=5",
             "analyze.figures.enabled=false", "analyze.cca.per_region=200")
    cfg = make_config(tmp_path / "data", *small)
    store = TableStore.from_config(spark, cfg)
    run_import(spark, cfg, store, run_simulate(cfg, 2_000, str(tmp_path / "sim")).out, model_version="sim",
               taxonomy="sim")
    args = [*cli_args(cfg), *[x for kv in small for x in ("--set", kv)]]
    first = Path(store.table(CONTEXT_EXPRESSION_CORRELATIONS).path.removeprefix("file:")) / "_delta_log" / \
        f"{1:020d}.json"  # version 0 is the table's creation, 1 the first result rows
    job = subprocess.Popen([sys.executable, "-m", "cxatlas.cli", *args, "analyze", "--analysis-id", "X"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 400
    while not first.exists():
        assert job.poll() is None and time.time() < deadline, job.stderr.read()[-3000:]
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)  # its first result table is committed, the analyses row is not
    assert job.wait(timeout=60) == -signal.SIGKILL

    def rows_of_x(spec):
        return store.table(spec).read().filter("analysis_id = 'X'") if store.table(spec).exists() else None

    assert rows_of_x(ANALYSES) is None or rows_of_x(ANALYSES).count() == 0
    assert rows_of_x(CONTEXT_EXPRESSION_CORRELATIONS).count() > 0  # the torn state this test is about
    register_catalog(store)
    views = [f"{store.database}.{v}" for v in ("context_expression_correlations_labelled",
                                                "region_similarity_labelled", "region_vs_world_labelled")]
    views = [v for v in views if spark.catalog.tableExists(v)]  # those whose table the killed run had created
    assert views and views[0].endswith("context_expression_correlations_labelled")
    for view in views:
        assert spark.sql(f"SELECT count(*) FROM {view} WHERE analysis_id = 'X'").first()[0] == 0
    assert main([*args, "report", "X"]) == 2  # readers start from the analyses row: no analysis X

    # Another unfinished analysis, Z, killed long ago (here: any age, failures.unfinished_results_hours=0).
    from pyspark.sql import functions as F
    store.table(CONTEXT_EXPRESSION_CORRELATIONS).append(
        rows_of_x(CONTEXT_EXPRESSION_CORRELATIONS).withColumn("analysis_id", F.lit("Z")))

    # The rerun of X replaces its invisible rows: exit 0, no key twice, and every row visible through the views;
    # Z's rows are deleted by it.
    assert main([*args, "--set", "failures.unfinished_results_hours=0", "analyze", "--analysis-id", "X"]) == 0
    assert store.table(CONTEXT_EXPRESSION_CORRELATIONS).read().filter("analysis_id = 'Z'").count() == 0
    for spec in RESULT_TABLES:
        rows = rows_of_x(spec)
        assert rows.count() == rows.dropDuplicates(list(spec.key)).count(), spec.name
    ours = rows_of_x(CONTEXT_EXPRESSION_CORRELATIONS).count()
    assert ours > 0 and spark.sql(f"SELECT count(*) FROM {store.database}.context_expression_correlations_labelled "
                                  "WHERE analysis_id = 'X'").first()[0] == ours
    capsys.readouterr()
    assert main([*args, "analyze", "--analysis-id", "X"]) == 2  # a complete analysis is never rewritten
    assert "already exists" in capsys.readouterr().err


# -- missing values, failing videos, one-line errors -----------------------------------------------------------------
def _faces(tmp_path: Path, n: int) -> list[str]:
    from cxatlas.sim.media_corpus import feat_data_dir

    photos = sorted(p for p in feat_data_dir().glob("*-ph.jpg"))[:n]
    assert len(photos) == n
    return [str(shutil.copy(p, tmp_path / p.name)) for p in photos]


def test_non_finite_ratings_are_quarantined_and_a_label_without_ratings_refused(spark, tmp_path, capsys):
    import numpy as np

    from cxatlas.core.schemas import QUARANTINE
    from cxatlas.core.train_schemas import TRAINING_EXAMPLES
    from cxatlas.stages.train import prepare_training_set
    from cxatlas.warehouse.tables import TableStore

    cfg = make_config(tmp_path / "data", "train.partitions=1", "train.windows_per_clip=1", "train.crops_per_window=1",
                      "train.heldout_fraction=0.3")
    store = TableStore.from_config(spark, cfg)
    uris = _faces(tmp_path, 3)
    rows = [dict(uri=u, country=c, joy=float(j), anger=float(a))
            for u, j, a in zip(uris, (1, 4, 7), (6, 3, 1)) for c in ("US", "IN")]
    ratings = tmp_path / "ratings.csv"  # Spark reads the literals NaN and Inf of a CSV as those doubles
    pd.DataFrame(rows + [dict(uri=uris[0], country="US", joy="NaN", anger=2.0),  # one literal NaN among the ratings
                         dict(uri=uris[1], country="IN", joy=3.0, anger="Inf")]).to_csv(ratings, index=False)

    # A label nobody rated (every value missing or NaN) is refused before any table is touched: exit 2, one line.
    empty = tmp_path / "empty.parquet"
    pd.DataFrame(rows).assign(fear=[None, float("nan")] * (len(rows) // 2)).to_parquet(empty, index=False)
    assert main(["train", "--model", "fer7", "--ratings", str(empty), *cli_args(cfg)]) == 2
    err = capsys.readouterr().err
    assert "['fear'] have no rating" in err and err.count("\n") == 1, err
    assert not store.table(TRAINING_EXAMPLES).exists() and not store.table(QUARANTINE).exists()

    prepared = prepare_training_set(spark, cfg, store, str(ratings), "nan-test")
    assert prepared.rows_quarantined == {"non_finite_rating": 2}
    assert "rating rows quarantined: 2 non_finite_rating" in "\n".join(prepared.lines())
    q = store.table(QUARANTINE).read().filter("stage = 'train'").toPandas().sort_values("detail")
    assert q["reason"].tolist() == ["non_finite_rating"] * 2
    assert q["detail"].tolist() == ["not a finite number: anger", "not a finite number: joy"]
    # Every stimulus rated by both countries keeps a finite target for every label (a NaN no longer poisons the
    # country's min-max scaling of that label, which made it NaN for every stimulus).
    targets = np.array(store.table(TRAINING_EXAMPLES).read().select("targets").toPandas()["targets"].tolist())
    assert prepared.stimuli_with_crops >= 2 and targets.shape[1] == 4 and np.isfinite(targets).all(), targets


def test_one_failing_video_in_context_scoring_is_quarantined_and_its_batch_goes_on(tmp_path, inject_faults):
    from cxatlas.core.config import load_config
    from cxatlas.sim.media_corpus import source_paths
    from cxatlas.udfs.annotate import ANNOTATED, QUARANTINED, load_models

    batches = inject_faults("context:bad")
    settings = load_config(overrides=["annotate.video.max_windows=1"]).settings.annotate
    clip = str(source_paths()["single_face"])
    batch = pd.DataFrame([dict(video_id=v, uri=clip, title="Wedding party", description="bride and groom")
                          for v in ("a", "bad", "b")])
    out = batches(settings).annotate(batch, load_models(settings, "cpu")).set_index("video_id")
    assert out.loc["bad", "status"] == QUARANTINED and out.loc["bad", "reason"] == "context_model_error"
    assert "fault injected" in out.loc["bad", "detail"] and out.loc["bad", "scores"] is None
    for ok in ("a", "b"):
        assert out.loc[ok, "status"] == ANNOTATED and out.loc[ok, "scores"] is not None
        assert "Wedding" in [c["label"] for c in out.loc[ok, "contexts"]][:3]


def test_sql_on_a_missing_table_is_one_line(tmp_path):
    done = _cli("--data", str(tmp_path / "data"), "sql", "SELECT * FROM no_such_table")
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if " INFO " not in line]
    # pyspark's own JSON record of the error (10 kB: the whole JVM stack) is not printed besides the one line.
    assert len(errors) == 1 and errors[0].startswith("cxatlas sql: error: query failed: [TABLE_OR_VIEW_NOT_FOUND]"), \
        done.stderr[:3000]
    assert len(done.stderr) < 1000 and "stacktrace" not in done.stderr
