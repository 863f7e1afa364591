"""Delta Lake on Spark with a persistent catalog, in real processes: the SQL endpoint (beeline over JDBC) while a job
writes, a catalog that survives a restart, two concurrent writers, and a writer killed with SIGKILL."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import deltalake
import pytest

from cxatlas.sim.world import run_simulate
from cxatlas.stages.analyze import run_analyze
from cxatlas.stages.import_annotations import run_import
from cxatlas.stages.ingest import run_ingest
from cxatlas.warehouse.metastore import is_listening, pyspark_jars_dir
from tests.conftest import database_for, make_config
from tests.stages.test_ingest import PARIS, SAO_PAULO, SYDNEY, write_csv

SUMMARY = re.compile(r"rows in (\d+) = new (\d+) \+ updated (\d+) \+ unchanged (\d+) \+ quarantined (\d+)\s+"
                     r"\[(reconciles|DOES NOT RECONCILE)\]")
SMALL_ANALYSIS = ("simulate.n_contexts=12", "analyze.replicates=3", "analyze.min_occurrences=5",
                  "analyze.figures.enabled=false", "analyze.cca.per_region=200")


def cxatlas(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxatlas.cli", *args], capture_output=True, text=True,
                          timeout=600, **kw)


def beeline(port: int, sql: str) -> str:
    done = subprocess.run([str(pyspark_jars_dir().parent / "bin" / "beeline"), "-u", f"jdbc:hive2://127.0.0.1:{port}/cxatlas",
                           "--silent=true", "--outputformat=csv2", "-e", sql], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return "\n".join(line for line in done.stdout.splitlines() if not re.match(r"^\d+: jdbc:", line))


def manifest_rows(prefix: str, n: int, template=PARIS) -> list[dict]:
    return [dict(template, video_id=f"{prefix}{i}") for i in range(n)]


def own(data: Path) -> list[str]:
    """``--data`` and a catalog database of its own: the test run's processes share one metastore, whose database
    'cxatlas' the SQL-endpoint test's data root holds."""
    return ["--data", str(data), "--set", f"catalog.database={database_for(data)}"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sql_server_answers_beeline_while_a_job_writes_and_the_catalog_survives_a_restart(spark, tmp_path):
    data = tmp_path / "data"
    cfg = make_config(data, *SMALL_ANALYSIS)
    from cxatlas.warehouse.tables import TableStore

    store = TableStore.from_config(spark, cfg)
    run_ingest(spark, cfg, store, write_csv(tmp_path / "m1.csv", manifest_rows("p", 3) + [dict(SYDNEY, video_id="y")]))
    sim = run_simulate(cfg, 3_000, str(tmp_path / "sim"))
    run_import(spark, cfg, store, sim.out, model_version="sim", taxonomy="sim")
    run_analyze(spark, cfg, store, analysis_id="a1")

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "cxatlas.cli", "--data", str(data), "sql-server", "--port",
                               str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        deadline = time.time() + 240
        while not is_listening("127.0.0.1", port):
            assert server.poll() is None and time.time() < deadline, server.stdout.read()[-3000:]
            time.sleep(1)
        out = beeline(port, "SELECT count(*) AS n FROM cxatlas.uploads; "
                            "SELECT count(DISTINCT expression) AS e FROM cxatlas.expression_scores; "
                            "SELECT count(*) > 0 AS c FROM cxatlas.context_scores WHERE taxonomy = 'sim'; "
                            "SELECT region_name FROM cxatlas.region_vs_world_labelled WHERE region = 'us_canada'; "
                            "SELECT count(*) AS n FROM uploads;")
        lines = out.split()
        assert lines[:2] == ["n", "3004"] and lines[2:4] == ["e", "16"] and lines[4:6] == ["c", "true"]
        assert lines[6:8] == ["region_name", "USCanada"] and lines[8:10] == ["n", "3004"]  # bare names resolve too

        # A job writes while the server is up (both use the metastore through Derby's network server).
        job = cxatlas("--data", str(data), "ingest", "--manifest",
                      write_csv(tmp_path / "m2.csv", manifest_rows("q", 5, SAO_PAULO)))
        assert job.returncode == 0, job.stderr[-3000:]
        assert beeline(port, "SELECT count(*) AS n FROM cxatlas.uploads").split()[-1] == "3009"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            rest, _ = server.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            raise
    assert server.returncode == 0 and "cxatlas sql-server: stopped" in rest, rest[-3000:]
    assert not is_listening("127.0.0.1", port)

    # A new process that registers nothing finds the tables and views in the catalog by name.
    code = ("from cxatlas.core.config import load_config; from cxatlas.warehouse.spark import build_spark; "
            f"s = build_spark(load_config(data_root={str(data)!r})); "
            "print('ROWS', s.sql('SELECT count(*) FROM cxatlas.uploads').first()[0], "
            "s.sql('SELECT count(*) FROM cxatlas.region_similarity_labelled').first()[0])")
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "ROWS 3009 144" in fresh.stdout, fresh.stderr[-3000:]


def test_two_concurrent_ingests_neither_lose_nor_duplicate(tmp_path):
    data = tmp_path / "data"
    first = write_csv(tmp_path / "a.csv", manifest_rows("v", 60))                                 # v0..v59
    second = write_csv(tmp_path / "b.csv", manifest_rows("v", 90)[30:] + manifest_rows("w", 10))  # v30..v89, w*
    init = cxatlas(*own(data), "ingest", "--manifest",
                   write_csv(tmp_path / "seed.csv", [dict(SYDNEY, video_id="seed")]))
    assert init.returncode == 0, init.stderr[-3000:]
    jobs = [subprocess.Popen([sys.executable, "-m", "cxatlas.cli", *own(data), "ingest", "--manifest", m],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for m in (first, second)]
    outputs = [job.communicate(timeout=600) for job in jobs]
    assert all(job.returncode == 0 for job in jobs), [err[-3000:] for _, err in outputs]
    counts = [tuple(int(x) for x in SUMMARY.search(out).groups()[:5]) for out, _ in outputs]
    assert all(SUMMARY.search(out).group(6) == "reconciles" for out, _ in outputs)
    ids = deltalake.DeltaTable(str(data / "tables" / "uploads")).to_pandas()["video_id"]
    assert ids.is_unique and len(ids) == 1 + 90 + 10
    assert sum(new for _, new, *_ in counts) == 100  # each id counted new exactly once across the two runs


def test_writer_killed_mid_write_leaves_tables_readable_and_a_rerun_completes(tmp_path):
    data = tmp_path / "data"
    seed = cxatlas(*own(data), "ingest", "--manifest",
                   write_csv(tmp_path / "seed.csv", manifest_rows("s", 3)))
    assert seed.returncode == 0, seed.stderr[-3000:]
    table = data / "tables" / "uploads"
    version = deltalake.DeltaTable(str(table)).version()
    files_before = set(table.rglob("*.parquet"))
    big = write_csv(tmp_path / "big.csv", manifest_rows("k", 10_000) + manifest_rows("b", 10_000, SAO_PAULO))
    job = subprocess.Popen([sys.executable, "-m", "cxatlas.cli", *own(data), "--set", "ingest.partitions=8",
                            "ingest", "--manifest", big], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    deadline = time.time() + 400
    while not (set(table.rglob("*.parquet")) - files_before):  # its data files are being written ...
        assert job.poll() is None and time.time() < deadline, "the job ended before it wrote a data file"
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)  # ... and it dies before (or while) committing them
    job.wait(timeout=60)
    orphans = set(table.rglob("*.parquet")) - files_before
    after = deltalake.DeltaTable(str(table))
    if after.version() != version:
        pytest.skip("the commit won the race against SIGKILL: nothing to check for a torn write this time")
    assert sorted(after.to_pandas()["video_id"]) == ["s0", "s1", "s2"]  # readable, at its previous version

    rerun = cxatlas(*own(data), "ingest", "--manifest", big)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    new = int(SUMMARY.search(rerun.stdout).group(2))
    ids = deltalake.DeltaTable(str(table)).to_pandas()["video_id"]
    assert new == 20_000 and ids.is_unique and len(ids) == 20_003
    vacuum = cxatlas(*own(data), "vacuum", "uploads", "--retention-hours", "0")
    assert vacuum.returncode == 0, vacuum.stderr[-3000:]
    assert not any(p.exists() for p in orphans)  # the dead job's files are gone, the table still reads
    assert len(deltalake.DeltaTable(str(table)).to_pandas()) == 20_003
