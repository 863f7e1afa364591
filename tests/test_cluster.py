"""The jobs on a REAL Spark standalone cluster (one master, two workers, each its own process and work dir), submitted
with ``spark-submit --master spark://127.0.0.1:PORT jobs/<job>.py`` exactly as users run them, against a table root
both workers reach. Checked: the tables (counts reconcile, one commit per table), the same job in local mode gives
the same tables (floats to 1e-10), tasks ran on BOTH workers (event log + the workers' own executor logs), and a worker
killed while annotate runs costs neither completeness nor uniqueness. The cluster is always stopped by the process
sessions the harness started (tests/cluster_harness.py).

The submitted config is ``conf/cluster.yaml`` -- the documented worked example -- with only the overrides a loopback
cluster without object storage, Maven access or GPUs needs, and a test-sized workload (:data:`LOOPBACK_OVERRIDES`).
Local-mode references run the same job functions in the test session's local Spark (``spark`` fixture) with the
same config, so no second driver JVM is started for them.

Analyze is written and skipped until ``jobs/analyze.py`` exists.
"""
from __future__ import annotations

import csv
from contextlib import nullcontext
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import deltalake
import numpy as np
import pyarrow as pa
import pytest

from cxatlas.core.config import load_config
from tests.conftest import database_for

from tests.cluster_harness import (RunningSubmit, StandaloneCluster, SubmitResult, live_session_members,
                                   standalone_cluster)

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[1]
# The test run's own metastore server (conftest's overlay): its port, and the folder that records it, so a job
# spark-submitted with --conf cluster.yaml (which replaces the overlay) reuses that server instead of starting its own.
TEST_DERBY_PORT = load_config().settings.catalog.derby_port
TEST_METASTORE_ROOT = load_config().settings.catalog.metastore_root
JOBS = REPO / "jobs"
CLUSTER_CONF = REPO / "conf" / "cluster.yaml"
CORPUS_VIDEOS = 3  # few real videos: ingest does not open them, annotate decodes every one on 1-core executors
SUBMIT_TIMEOUT_S = 300
ATOL = 1e-10  # cluster vs local mode, for every float column

# What each executor gets: one core and 1g, so each 1-core/2g worker runs exactly one executor. Given twice, as a user
# sizing their copy of cluster.yaml would: in the config (--set) and on spark-submit (--conf).
EXECUTOR_SIZING = {
    "spark.executor.memory": "1g",
    "spark.executor.cores": "1",
    "spark.executor.memoryOverhead": "512m",
    "spark.executor.instances": "2",
    "spark.cores.max": "2",
}
EXECUTOR_CONF = {**EXECUTOR_SIZING, "spark.driver.memory": "1g"}
# conf/cluster.yaml unchanged except what this machine cannot have ...
PLATFORM_OVERRIDES = (
    # Delta Lake's jars from the folder `make install` filled, shipped to the executors with spark.jars (instead of
    # resolving --packages at submit time), and the test run's Derby metastore server instead of a site metastore.
    f"spark.jars_dir={REPO / '.jars'}",
    "spark.conf.spark.jars.packages=null",
    "catalog.metastore=derby-server",
    f"catalog.derby_port={TEST_DERBY_PORT}",
    f"catalog.metastore_root={TEST_METASTORE_ROOT}",
    "spark.log_level=INFO",  # executor logs keep their task lines: the tests read where tasks ran and were killed
    "spark.conf.spark.executor.resource.gpu.amount=null",  # no GPUs on the test machine
    "spark.conf.spark.task.resource.gpu.amount=null",
    "spark.conf.spark.executor.resource.gpu.discoveryScript=null",
)
# ... a workload sized for two 1-core executors and a test budget ...
SCALE_OVERRIDES = (
    "spark.conf.spark.sql.shuffle.partitions=8",
    "ingest.partitions=8",
    "annotate.partitions=6",
    "annotate.video.max_windows=2",  # two 1-s windows per video: every stage runs, at a quarter of the frames
    # Minutes-long jobs on 2 cores: C2's compiling costs more CPU than it saves (conf/local.yaml's default too),
    # with the larger code cache C1 needs to keep compiling past the first minute (local.yaml says why).
    "spark.conf.spark.driver.extraJavaOptions=-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=256m",
    "spark.conf.spark.executor.extraJavaOptions=-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=256m",
)
# ... and its sizes.
LOOPBACK_OVERRIDES = (*PLATFORM_OVERRIDES, *SCALE_OVERRIDES,
                      *(f"spark.conf.{key}={value}" for key, value in EXECUTOR_SIZING.items()))
# Columns that record when/which run wrote a row: they differ between any two runs by design.
RUN_COLUMNS = frozenset({"ingest_time", "quarantine_time", "annotate_time", "run_id"})
INGEST_SUMMARY = re.compile(r"rows in (\d+) = new (\d+) \+ updated (\d+) \+ unchanged (\d+) \+ quarantined (\d+)\s+"
                            r"\[(reconciles|DOES NOT RECONCILE)\]")
ANNOTATE_SUMMARY = re.compile(r"uploads considered (\d+) = annotated (\d+) \(of which no face: (\d+)\) \+ "
                              r"quarantined (\d+)\s+\[(reconciles|DOES NOT RECONCILE)\]")
ANNOTATION_TABLES = {"video_expressions": ["video_id", "model_version"],
                     "video_contexts": ["video_id", "model_version", "taxonomy"]}


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------
def say(pytestconfig, text: str) -> None:
    """Write to the terminal even under output capture, so CI logs show where tasks ran."""
    capman = pytestconfig.pluginmanager.getplugin("capturemanager")
    reporter = pytestconfig.pluginmanager.getplugin("terminalreporter")
    if reporter is None:
        return
    with capman.global_and_fixture_disabled() if capman else nullcontext():
        reporter.write_line(f"[cluster] {text}")


def job_args(data_root: Path, *args: str, overrides: Sequence[str] = (), sized: bool = True) -> list[str]:
    """A job's own arguments: cluster.yaml, a data root with a catalog database of its own (the test run's metastore
    serves every data root), the loopback overrides, then job-specific arguments."""
    out = ["--conf", str(CLUSTER_CONF), "--data", str(data_root), "--set", f"catalog.database={database_for(data_root)}"]
    for item in (*(LOOPBACK_OVERRIDES if sized else (*PLATFORM_OVERRIDES, *SCALE_OVERRIDES)), *overrides):
        out += ["--set", item]
    return out + list(args)


def local_config(data_root: Path, overrides: Sequence[str] = ()):
    """The same configuration a job gets from :func:`job_args`, for a local-mode run in the test session (whose one
    metastore holds every test's tables: each data root gets a database of its own)."""
    from cxatlas.core.config import load_config

    return load_config(CLUSTER_CONF, data_root=str(data_root),
                       overrides=[*LOOPBACK_OVERRIDES, f"catalog.database={database_for(data_root)}", *overrides])


def read_table(data_root: Path, name: str) -> pa.Table:
    """An independent Delta reader (delta-rs), not the code under test."""
    return deltalake.DeltaTable(str(data_root / "tables" / name)).to_pyarrow_table()


def commits(data_root: Path, name: str) -> list[str]:
    """Operations in the table's Delta log, oldest first."""
    return [h["operation"] for h in reversed(deltalake.DeltaTable(str(data_root / "tables" / name)).history())]


def _close(a, b, atol: float) -> bool:
    """Equality of nested Python values, floats within ``atol`` (NaN == NaN)."""
    if isinstance(a, float) and isinstance(b, float):
        return bool((np.isnan(a) and np.isnan(b)) or abs(a - b) <= atol)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y, atol) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], atol) for k in a)
    return a == b


def assert_unique(data_root: Path, name: str, key: Sequence[str]) -> int:
    """Keys unique; returns the row count."""
    table = read_table(data_root, name)
    keys = list(zip(*(table[k].to_pylist() for k in key)))
    assert len(keys) == len(set(keys)), f"{name}: {len(keys) - len(set(keys))} duplicate keys"
    return len(keys)


def assert_tables_match(root_a: Path, root_b: Path, name: str, key: Sequence[str], atol: float = ATOL,
                        ignore: frozenset[str] = RUN_COLUMNS) -> int:
    """Same rows (by unique ``key``), same values in every column but the run stamps; floats within ``atol``.
    Returns the row count."""
    a, b = read_table(root_a, name), read_table(root_b, name)
    assert a.schema.names == b.schema.names, f"{name}: schemas differ"
    assert assert_unique(root_a, name, key) == assert_unique(root_b, name, key), f"{name}: row counts differ"
    order = [(k, "ascending") for k in key]
    a, b = a.sort_by(order), b.sort_by(order)
    keys = list(zip(*(a[k].to_pylist() for k in key)))
    assert keys == list(zip(*(b[k].to_pylist() for k in key))), f"{name}: different keys"
    for col in a.schema.names:
        if col in ignore:
            continue
        if pa.types.is_floating(a.schema.field(col).type):
            np.testing.assert_allclose(a[col].to_numpy(zero_copy_only=False).astype(float),
                                       b[col].to_numpy(zero_copy_only=False).astype(float),
                                       rtol=0, atol=atol, equal_nan=True, err_msg=f"{name}.{col}")
        else:
            va, vb = a[col].to_pylist(), b[col].to_pylist()
            bad = [i for i, (x, y) in enumerate(zip(va, vb)) if not _close(x, y, atol)]
            assert not bad, (f"{name}.{col} differs in {len(bad)} rows, e.g. key {keys[bad[0]]}: {va[bad[0]]!r} vs "
                             f"{vb[bad[0]]!r}")
    return a.num_rows


def parse(pattern: re.Pattern, stdout: str) -> tuple:
    match = pattern.search(stdout)
    assert match, f"no summary line in the driver output:\n{stdout[-2000:]}"
    *numbers, verdict = match.groups()
    return (*map(int, numbers), verdict == "reconciles")


def assert_ran_on_both_workers(cluster: StandaloneCluster, result: SubmitResult, pytestconfig,
                               label: str) -> dict[str, int]:
    """Tasks finished on every worker: the event log's tasks per executor, mapped to workers through the workers'
    own ``work/<app>/<executor>/`` folders; and each worker's executor log (kept by the worker) shows them."""
    events = result.events()
    assert events.app_id.startswith("app-"), f"{label} did not run on the standalone cluster: {events.app_id}"
    per_worker = cluster.tasks_by_worker(events)
    say(pytestconfig, f"{label}: app {events.app_id} in {result.seconds:.0f}s, successful tasks per worker "
                      f"{per_worker}, executors per worker {cluster.executors_by_worker(events.app_id)}")
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker.values()), f"{label}: {per_worker}"
    for i, worker in enumerate(cluster.workers):
        assert "Finished task" in cluster.executor_logs(i, events.app_id), f"{label}: {worker.role} log shows no task"
    return per_worker


def data_root_of(result: SubmitResult) -> Path:
    return Path(result.argv[result.argv.index("--data") + 1])


@dataclass
class Corpus:
    manifest: Path
    rows: int  # manifest rows
    good_rows: int
    bad_rows: dict[str, int]
    corrupt_uploads: int  # good manifest rows whose video file is the corrupt one


# --------------------------------------------------------------------------------------------------------------------
# Fixtures: one cluster, one corpus; cluster runs as spark-submit, local references in the session's local Spark
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    from cxatlas.core.config import load_config
    from cxatlas.sim.corpus import build_sample_corpus

    cfg = load_config(CLUSTER_CONF)
    info = build_sample_corpus(tmp_path_factory.mktemp("cluster-corpus"), CORPUS_VIDEOS, cfg.settings.regions.file,
                               seed=cfg.settings.corpus.seed, taxonomy=cfg.settings.corpus.taxonomy)
    with open(info.manifest, newline="", encoding="utf-8", errors="replace") as handle:
        rows = list(csv.DictReader(handle))
    # Deliberately bad rows (ids "" and "bad-*", and an older duplicate of a real video) never reach annotate.
    corrupt = sum(1 for r in rows if r["uri"] == str(info.corrupt_video) and r["video_id"]
                  and not r["video_id"].startswith("bad-"))
    return Corpus(info.manifest, len(rows), info.good_rows, info.bad_rows, corrupt)


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory) -> Path:
    """Table roots and driver folders: this machine's disk, which both workers reach (as object storage would)."""
    return tmp_path_factory.mktemp("cluster-shared")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> StandaloneCluster:
    with standalone_cluster(tmp_path_factory.mktemp("cluster-daemons"), workers=2, cores=1, memory="2g") as running:
        yield running


@pytest.fixture(scope="module")
def cluster_ingest(cluster, corpus, shared_root) -> SubmitResult:
    return cluster.submit(JOBS / "ingest.py", job_args(shared_root / "cluster-data", "--manifest",
                                                       str(corpus.manifest)),
                          shared_root / "driver-ingest-cluster", conf=EXECUTOR_CONF,
                          timeout_s=SUBMIT_TIMEOUT_S).check()


@pytest.fixture(scope="module")
def local_ingest(spark, corpus, shared_root):
    """(data root, report): the same ingest in local mode (the session's local[2] Spark), same config and input."""
    from cxatlas.stages.ingest import run_ingest
    from cxatlas.warehouse.tables import TableStore

    data = shared_root / "local-data"
    cfg = local_config(data)
    report = run_ingest(spark, cfg, TableStore.from_config(spark, cfg), str(corpus.manifest))
    return data, report


@pytest.fixture(scope="module")
def local_annotate(spark, local_ingest, shared_root):
    """(data root, report): annotate in local mode on a COPY of the local ingest's tables (the original stays
    un-annotated for the fault test)."""
    from cxatlas.stages.annotate import run_annotate
    from cxatlas.warehouse.tables import TableStore

    data = shared_root / "local-annotated"
    shutil.copytree(local_ingest[0], data)
    cfg = local_config(data)
    return data, run_annotate(spark, cfg, TableStore.from_config(spark, cfg))


# --------------------------------------------------------------------------------------------------------------------
# Ingest
# --------------------------------------------------------------------------------------------------------------------
def test_ingest_on_cluster_reconciles_in_one_commit_per_table(cluster_ingest, corpus):
    rows_in, new, updated, unchanged, quarantined, reconciles = parse(INGEST_SUMMARY, cluster_ingest.stdout)
    assert reconciles and rows_in == corpus.rows
    assert (new, updated, unchanged, quarantined) == (corpus.good_rows, 0, 0, sum(corpus.bad_rows.values()))

    data = data_root_of(cluster_ingest)
    quarantine = read_table(data, "quarantine")
    assert assert_unique(data, "uploads", ["video_id"]) + quarantine.num_rows == corpus.rows
    reasons: dict[str, int] = {}
    for reason in quarantine["reason"].to_pylist():
        reasons[reason] = reasons.get(reason, 0) + 1
    assert reasons == corpus.bad_rows
    # One commit per table per job, whatever the number of executors that wrote files.
    assert commits(data, "uploads") == ["CREATE TABLE", "MERGE"]
    assert commits(data, "quarantine") == ["CREATE TABLE", "MERGE"]
    # The corpus assigns regions round-robin over its videos plus the corrupt one.
    regions = {r for r in read_table(data, "uploads")["region"].to_pylist() if r}
    assert len(regions) == min(CORPUS_VIDEOS + 1, 12)


def test_ingest_tasks_ran_on_both_workers(cluster, cluster_ingest, pytestconfig):
    assert_ran_on_both_workers(cluster, cluster_ingest, pytestconfig, "ingest")


def test_ingest_on_cluster_equals_local_mode(cluster_ingest, local_ingest):
    local_data, report = local_ingest
    assert parse(INGEST_SUMMARY, cluster_ingest.stdout) == (report.rows_in, report.new, report.updated,
                                                           report.unchanged, report.quarantined, report.reconciles)
    cluster_data = data_root_of(cluster_ingest)
    assert assert_tables_match(cluster_data, local_data, "uploads", ["video_id"]) == report.new
    assert assert_tables_match(cluster_data, local_data, "quarantine", ["row_hash"]) == report.quarantined


def test_spark_submit_settings_win_over_the_config(cluster, shared_root):
    """A user's spark-submit --master/--conf must beat the config file (cxatlas.warehouse.spark.build_spark): the config
    here says local[*] and cluster.yaml's 16g/4-core executors, spark-submit says this cluster and 1g/1-core executors.
    Otherwise a cluster run silently becomes a local one, or asks for executors no worker can host."""
    args = job_args(shared_root / "precedence-data", "tables", overrides=["spark.master=local[*]"], sized=False)
    result = cluster.submit(REPO / "cxatlas" / "cli" / "__main__.py", args, shared_root / "driver-precedence",
                            conf=EXECUTOR_CONF, timeout_s=120).check()
    events = result.events()
    assert events.app_id.startswith("app-"), f"spark-submit --master was overridden: app {events.app_id}"
    assert {k: events.spark_properties.get(k) for k in EXECUTOR_SIZING} == EXECUTOR_SIZING, \
        "the config overrode spark-submit --conf"


# --------------------------------------------------------------------------------------------------------------------
# Annotate: a few real videos
# --------------------------------------------------------------------------------------------------------------------
ANNOTATE_JOB = JOBS / "annotate.py"


def check_annotated(stdout: str, data: Path, corpus: Corpus) -> int:
    """Every upload annotated or quarantined (the corrupt video), exactly once, one commit per table; returns the
    number annotated."""
    considered, annotated, _, quarantined, reconciles = parse(ANNOTATE_SUMMARY, stdout)
    assert reconciles and considered == corpus.good_rows and quarantined == corpus.corrupt_uploads
    for name, key in ANNOTATION_TABLES.items():
        assert assert_unique(data, name, key) == annotated
        assert commits(data, name) == ["CREATE TABLE", "MERGE"]  # created by ingest, ONE commit by annotate
    reasons = [r["reason"] for r in read_table(data, "quarantine").to_pylist() if r["stage"] == "annotate"]
    assert reasons == ["corrupt_video"] * corpus.corrupt_uploads
    return annotated


def test_annotate_on_cluster_equals_local_mode(cluster, cluster_ingest, local_annotate, shared_root, corpus,
                                               pytestconfig):
    cluster_data = data_root_of(cluster_ingest)
    result = cluster.submit(ANNOTATE_JOB, job_args(cluster_data), shared_root / "driver-annotate-cluster",
                            conf=EXECUTOR_CONF, timeout_s=SUBMIT_TIMEOUT_S).check()
    annotated = check_annotated(result.stdout, cluster_data, corpus)
    assert annotated == corpus.good_rows - corpus.corrupt_uploads > 0
    assert_ran_on_both_workers(cluster, result, pytestconfig, "annotate")
    local_data, report = local_annotate
    assert (report.annotated, report.quarantined) == (annotated, corpus.corrupt_uploads)
    for name, key in ANNOTATION_TABLES.items():
        assert assert_tables_match(cluster_data, local_data, name, key) == annotated
    assert assert_tables_match(cluster_data, local_data, "quarantine", ["row_hash"]) > 0


def _app_id(running: RunningSubmit) -> str | None:
    """The running application's id, from the name of its in-progress event log."""
    logs = list(running.event_log_dir.glob("app-*.inprogress"))
    return logs[0].name.removesuffix(".inprogress") if logs else None


def kill_worker_mid_task(cluster: StandaloneCluster, running: RunningSubmit, victim: int, *,
                         min_running_s: float = 1.0, timeout_s: float = SUBMIT_TIMEOUT_S) -> list[int]:
    """SIGKILL everything of worker ``victim`` while its executor is in the middle of a task.

    Waits until every worker's executor has finished a task of this application (the job really is spread over
    both) and the victim has had a task running for ``min_running_s`` (a long task -- decoding and scoring a video --
    not a millisecond scan), then kills. Fails if the job ends first.
    """
    deadline = time.time() + timeout_s
    busy_since = None
    while True:
        assert running.popen.poll() is None, "the job finished before a worker could be killed mid-task"
        assert time.time() < deadline, "never saw both workers run tasks and the victim busy with a long task"
        app = _app_id(running)
        if app is not None:
            logs = [cluster.executor_logs(i, app) for i in range(len(cluster.workers))]
            spread = all("Finished task" in log for log in logs)
            busy = logs[victim].count("Running task") > logs[victim].count("Finished task")
            busy_since = (busy_since or time.time()) if busy else None
            if spread and busy_since is not None and time.time() - busy_since >= min_running_s:
                break
        time.sleep(0.05)
    killed = cluster.kill_worker(victim)
    # The worker JVM and its executor JVM (and the Python side, when the running task is a Python one: with Delta on
    # Spark many of the job's tasks are JVM-only table reads and MERGE stages) all die together.
    assert len(killed) >= 2 and not live_session_members(cluster.workers[victim].pid)
    return killed


def test_worker_killed_mid_annotate_job_still_completes_without_duplicates(cluster, local_ingest, local_annotate,
                                                                           corpus, tmp_path, pytestconfig):
    data = tmp_path / "data"
    shutil.copytree(local_ingest[0], data)  # ingested, not yet annotated
    victim, survivor = 1, 0
    try:
        running = cluster.submit(ANNOTATE_JOB, job_args(data), tmp_path / "driver", conf=EXECUTOR_CONF,
                                 timeout_s=SUBMIT_TIMEOUT_S, wait=False)
        killed = kill_worker_mid_task(cluster, running, victim)
        result = running.wait(SUBMIT_TIMEOUT_S).check()
        events = result.events()
        lost = cluster.executors_by_worker(events.app_id)[cluster.workers[victim].role]
        say(pytestconfig, f"annotate with {cluster.workers[victim].role} killed mid-task (pids {killed}): exit 0 "
                          f"after {result.seconds:.0f}s; executors removed {events.executors_removed}; failed task "
                          f"attempts per executor {dict(events.tasks_failed)}; successful tasks per worker "
                          f"{cluster.tasks_by_worker(events)}")
        assert lost and all(e in events.executors_removed for e in lost), "the victim's executor was never lost"
        assert sum(events.tasks_failed.get(e, 0) for e in lost) >= 1, "no in-flight task was lost with the worker"
        assert cluster.workers[survivor].alive() and cluster.tasks_by_worker(events)[cluster.workers[survivor].role]
        assert events.jobs_failed == 0
    finally:
        cluster.restart_worker(victim)  # later tests get two workers again
    annotated = check_annotated(result.stdout, data, corpus)  # complete, duplicate-free, one commit per table
    for name, key in ANNOTATION_TABLES.items():
        assert assert_tables_match(data, local_annotate[0], name, key) == annotated


# --------------------------------------------------------------------------------------------------------------------
# Analyze: a simulated world (cxatlas.sim.world.run_simulate, pure numpy) is imported (jobs/import_annotations.py) and
# analysed (jobs/analyze.py) on the cluster, and the same in local mode; every statistic must agree to 1e-10.
# --------------------------------------------------------------------------------------------------------------------
ANALYZE_JOB = JOBS / "analyze.py"
SIMULATED_VIDEOS = 20_000
# The comparison needs tasks on both workers, not statistical power: the first 100 contexts, 10 replicates.
WORLD_OVERRIDES = ("simulate.n_contexts=100",)
ANALYZE_OVERRIDES = ("analyze.partitions=6", "analyze.replicates=10", "analyze.figures.enabled=false")


def result_tables() -> dict[str, list[str]]:
    """Statistics tables written by analyze, with their keys minus ``analysis_id`` (new for every run). The
    ``analyses`` table (one row of run metadata) is compared separately."""
    from cxatlas.core.result_schemas import RESULT_TABLES

    keyed = {spec.name: [k for k in spec.key if k != "analysis_id"] for spec in RESULT_TABLES}
    return {name: key for name, key in keyed.items() if key}


def test_analyze_simulated_world_on_cluster_equals_local_mode(cluster, spark, shared_root, pytestconfig):
    from cxatlas.sim.world import run_simulate
    from cxatlas.stages.analyze import run_analyze
    from cxatlas.stages.import_annotations import run_import
    from cxatlas.warehouse.tables import TableStore

    world = shared_root / "simulated-world"
    cluster_data, local_data = shared_root / "sim-cluster", shared_root / "sim-local"
    run_simulate(local_config(local_data, WORLD_OVERRIDES), SIMULATED_VIDEOS, str(world))
    cluster.submit(JOBS / "import_annotations.py", job_args(cluster_data, "--input", str(world)),
                   shared_root / "driver-import-cluster", conf=EXECUTOR_CONF, timeout_s=SUBMIT_TIMEOUT_S).check()
    result = cluster.submit(ANALYZE_JOB, job_args(cluster_data, overrides=ANALYZE_OVERRIDES),
                            shared_root / "driver-analyze-cluster", conf=EXECUTOR_CONF,
                            timeout_s=SUBMIT_TIMEOUT_S).check()
    cfg = local_config(local_data, ANALYZE_OVERRIDES)
    store = TableStore.from_config(spark, cfg)
    run_import(spark, cfg, store, str(world))
    run_analyze(spark, cfg, store)
    assert_ran_on_both_workers(cluster, result, pytestconfig, "analyze")
    for name, key in result_tables().items():
        assert assert_tables_match(cluster_data, local_data, name, key, ignore=RUN_COLUMNS | {"analysis_id"}) > 0
    counts = [{k: v for k, v in read_table(root, "analyses").to_pylist()[0].items() if k.startswith("n_")}
              for root in (cluster_data, local_data)]
    assert counts[0] == counts[1] and counts[0]["n_videos"] > 0


# --------------------------------------------------------------------------------------------------------------------
# The harness itself
# --------------------------------------------------------------------------------------------------------------------
def test_harness_stops_every_process_even_when_the_test_fails(tmp_path):
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with standalone_cluster(tmp_path / "daemons", workers=1) as doomed:
            sessions = [p.pid for p in doomed.all_processes()]
            assert all(live_session_members(s) for s in sessions) and len(doomed.alive_workers()) == 1
            raise Boom()
    assert not any(live_session_members(s) for s in sessions), "cluster processes survived a failing test"
    assert doomed.leftovers == {}


if __name__ == "__main__":  # pragma: no cover - convenience: python tests/test_cluster.py
    sys.exit(pytest.main([__file__, "-v"]))
