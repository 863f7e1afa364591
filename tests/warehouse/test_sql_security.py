"""The SQL endpoint is secure by default (issue #24): beeline, as any user, can read every cxatlas table and view and
nothing else; the known bypasses are refused on the analysed plan by the SQL guard (sqlguard/); with --allow-writes
the documented row writes work and a password is required where configured."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cxatlas.sim.world import run_simulate
from cxatlas.stages.import_annotations import run_import
from cxatlas.stages.ingest import run_ingest
from cxatlas.warehouse.metastore import is_listening, pyspark_jars_dir
from tests.conftest import cli_args, make_config
from tests.warehouse.test_catalog import free_port, manifest_rows
from tests.stages.test_ingest import SYDNEY, write_csv

BEELINE = str(pyspark_jars_dir().parent / "bin" / "beeline")
REFUSED = "cxatlas sql-server refuses"


def beeline(port: int, db: str, sql: str, *, user: str = "mallory", password: str = "x",
            url_tail: str = "") -> subprocess.CompletedProcess:
    """Run ``sql`` (statements separated by ';', one per line) through beeline, going on after errors."""
    script = Path(tempfile.mkstemp(suffix=".sql")[1])
    script.write_text(sql.rstrip().rstrip(";") + ";\n")
    try:
        return subprocess.run([BEELINE, "-u", f"jdbc:hive2://127.0.0.1:{port}/{db}{url_tail}", "-n", user, "-p",
                               password, "--silent=true", "--outputformat=csv2", "--force=true", "-f", str(script)],
                              capture_output=True, text=True, timeout=900)
    finally:
        script.unlink()


def count_of(stdout: str) -> int:
    """The number under the first ``n`` header of beeline's csv2 output (it prints progress noise around it)."""
    found = re.search(r"(?:^|null)n[ \t]*\n\s*(\d+)[ \t]*$", stdout.replace("\r", "\n"), re.M)
    assert found, stdout[-2000:]
    return int(found.group(1))


def start_server(cfg, port: int, log: Path, *extra: str, settings: tuple[str, ...] = ()) -> subprocess.Popen:
    """The server's output goes to ``log`` (a pipe nobody reads while the tests run would fill up with the refusals'
    stack traces and stall the server)."""
    sets = [x for kv in settings for x in ("--set", kv)]
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "cxatlas.cli", *cli_args(cfg), *sets, "sql-server",
                                   "--port", str(port), *extra], stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    server.log = log
    deadline = time.time() + 240
    while not is_listening("127.0.0.1", port):
        if server.poll() is not None or time.time() > deadline:
            os.killpg(server.pid, signal.SIGKILL)
            pytest.fail(log.read_text()[-3000:])
        time.sleep(1)
    return server


def stop_server(server: subprocess.Popen) -> str:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        raise
    return server.log.read_text()


@pytest.fixture(scope="module")
def catalog(spark, tmp_path_factory):
    from cxatlas.warehouse.tables import TableStore

    root = tmp_path_factory.mktemp("sqlsec")
    cfg = make_config(root / "data", "simulate.n_contexts=12")
    store = TableStore.from_config(spark, cfg)
    run_ingest(spark, cfg, store, write_csv(root / "m.csv", manifest_rows("p", 3) + [dict(SYDNEY, video_id="y")]))
    sim = run_simulate(cfg, 2_000, str(root / "sim"))
    run_import(spark, cfg, store, sim.out, model_version="sim", taxonomy="sim")
    return root, cfg


@pytest.fixture(scope="module")
def read_only(catalog):
    root, cfg = catalog
    port = free_port()
    server = start_server(cfg, port, root / "read-only.log")
    yield port, cfg.settings.catalog.database
    out = stop_server(server)
    assert "read-only" in out and "cxatlas sql-server: stopped" in out, out[-3000:]


def test_every_table_and_view_is_readable(read_only):
    port, db = read_only
    listed = beeline(port, db, f"SHOW TABLES IN {db}")
    names = [line.split(",")[1] for line in listed.stdout.splitlines()
             if line.count(",") >= 2 and line.split(",")[1] != "tableName"]
    assert {"uploads", "video_expressions", "video_contexts", "expression_scores", "context_scores",
            "regions"} <= set(names), listed.stdout + listed.stderr
    reads = ";\n".join(f"SELECT count(*) AS n_{i} FROM {db}.{name}" for i, name in enumerate(names))
    done = beeline(port, db, reads + f";\nDESCRIBE {db}.uploads;\nSHOW DATABASES;\nUSE {db};\nSET -v;\n"
                   "SELECT count(*) FROM uploads u JOIN expression_scores e USING (video_id) "
                   "WHERE u.video_id IN (SELECT video_id FROM uploads)")
    assert done.returncode == 0 and "Error" not in done.stderr, done.stderr[-3000:]
    assert "n_0" in done.stdout and f"n_{len(names) - 1}" in done.stdout
    # The metastore's password (this test run's server requires one) is in no setting a client can read.
    from cxatlas.core.config import load_config
    from cxatlas.warehouse.metastore import PASSWORD_FILE, metastore_home

    run = load_config()
    secret = (metastore_home(run.data_root, run.settings.catalog) / PASSWORD_FILE).read_text().strip()
    shown = beeline(port, db, "SET;\nSET -v;\nSET javax.jdo.option.ConnectionPassword")
    assert secret and secret not in shown.stdout + shown.stderr


HOSTILE = [
    "SELECT TRANSFORM('x') USING 'touch {marker}' AS (y)",
    "SELECT reflect('java.lang.Runtime', 'getRuntime')",
    "SELECT java_method('java.lang.System', 'getProperty', 'user.home')",
    "SELECT try_reflect('java.lang.System', 'getProperty', 'user.home')",
    "SELECT * FROM parquet.`{tables}/uploads`",
    "SELECT * FROM text.`/etc/hostname`",
    "CREATE TEMPORARY VIEW leak USING text OPTIONS (path '/etc/hostname')",
    "CREATE TABLE {db}.leak2 (value STRING) USING text LOCATION '/etc'",
    "INSERT OVERWRITE DIRECTORY '{out}' USING parquet SELECT * FROM {db}.uploads",
    "INSERT OVERWRITE LOCAL DIRECTORY '{out}' SELECT * FROM {db}.uploads",
    "ADD JAR /tmp/nothing.jar",
    "CREATE FUNCTION evil AS 'x.Y' USING JAR '/tmp/nothing.jar'",
    "CREATE TEMPORARY FUNCTION evil2 AS 'org.apache.hadoop.hive.ql.udf.generic.GenericUDFReflect'",
    "INSERT INTO {db}.uploads SELECT * FROM {db}.uploads",
    "DELETE FROM {db}.uploads WHERE true",
    "UPDATE {db}.uploads SET title = 'x'",
    "DROP TABLE {db}.quarantine",
    "DROP VIEW {db}.regions",
    "ALTER TABLE {db}.uploads SET LOCATION '/tmp'",
    "CREATE DATABASE evil",
    "SET spark.sql.runSQLOnFiles=true",
    "SET spark.cxatlas.sqlguard.allowWrites=true",
    "SET spark.hadoop.javax.jdo.option.ConnectionPassword",
    "RESET",
    "CACHE TABLE {db}.uploads",
    "EXPLAIN DELETE FROM {db}.uploads WHERE true",
    "WITH x AS (SELECT * FROM text.`/etc/hostname`) SELECT * FROM x",
    "SELECT * FROM {db}.uploads WHERE video_id IN (SELECT value FROM text.`/etc/hostname`)",
]


def test_known_bypasses_are_refused(read_only, catalog, tmp_path):
    port, db = read_only
    root, cfg = catalog
    marker, out = tmp_path / "transform-ran", tmp_path / "dump"
    statements = [s.format(marker=marker, tables=cfg.table_root, db=db, out=out) for s in HOSTILE]
    before = count_of(beeline(port, db, f"SELECT count(*) AS n FROM {db}.uploads").stdout)
    done = beeline(port, db, ";\n".join(statements))
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == len(statements), done.stdout[-2000:] + done.stderr[-5000:]
    # Path queries are not even parsed as such (spark.sql.runSQLOnFiles=false: "table not found"); the rest is
    # refused by the guard.
    not_refused = [(s, e) for s, e in zip(statements, errors) if REFUSED not in e
                   and not ("`/" in s and "TABLE_OR_VIEW_NOT_FOUND" in e)]
    assert not not_refused, not_refused
    assert "Error" not in done.stdout and not marker.exists() and not out.exists()
    # The guard cannot be switched off from the connection URL either (session settings the client sends).
    sneaky = beeline(port, db, "SELECT * FROM text.`/etc/hostname`",
                     url_tail="?spark.sql.runSQLOnFiles=true;spark.cxatlas.sqlguard.allowWrites=true")
    assert REFUSED in sneaky.stderr, sneaky.stderr[-3000:]
    # Nothing changed: the tables are all there and hold what they held.
    after = beeline(port, db, f"SELECT count(*) AS n FROM {db}.uploads; SHOW TABLES IN {db} LIKE 'quarantine'")
    assert count_of(after.stdout) == before > 0 and "quarantine" in after.stdout, after.stdout + after.stderr


def test_writes_need_allow_writes_and_a_password_where_configured(read_only, catalog, tmp_path):
    root, cfg = catalog
    db = cfg.settings.catalog.database
    port = free_port()
    server = start_server(cfg, port, tmp_path / "writes.log", "--allow-writes", settings=("sql_server.authentication=password",))
    try:
        from cxatlas.warehouse.sql_server import secret_path

        path = secret_path(cfg)
        assert path.stat().st_mode & 0o777 == 0o600
        secret = path.read_text().strip()
        anonymous = beeline(port, db, "SELECT 1")
        assert "Error validating the login" in anonymous.stderr and "1" not in anonymous.stdout, anonymous.stderr
        writes = beeline(port, db, f"INSERT INTO {db}.quarantine (stage, reason, detail, video_id, row_hash) "
                         "VALUES ('analyst', 'checked_by_hand', 'to check', 'y', 'h1');\n"
                         f"UPDATE {db}.quarantine SET detail = 'checked' WHERE row_hash = 'h1';\n"
                         f"DELETE FROM {db}.quarantine WHERE detail = 'checked';\n"
                         f"MERGE INTO {db}.quarantine t USING (SELECT 'h2' AS row_hash) s ON t.row_hash = s.row_hash "
                         "WHEN NOT MATCHED THEN INSERT (row_hash, stage, detail) VALUES (s.row_hash, 'analyst', 'checked');\n"
                         f"DELETE FROM {db}.quarantine WHERE row_hash = 'h2';\n"
                         f"SELECT count(*) AS n FROM {db}.quarantine WHERE detail = 'checked'", password=secret)
        assert writes.returncode == 0 and "Error" not in writes.stderr, writes.stderr[-3000:]
        assert count_of(writes.stdout) == 0, writes.stdout
        still = beeline(port, db, f"DROP TABLE {db}.quarantine;\nSELECT TRANSFORM('x') USING 'id' AS (y)",
                        password=secret)
        refused = [line for line in still.stderr.splitlines() if line.startswith("Error")]
        assert len(refused) == 2 and all(REFUSED in line for line in refused), still.stderr[-3000:]
    finally:
        out = stop_server(server)
    assert "read and write" in out and secret not in out, out[-3000:]
