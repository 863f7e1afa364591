"""The command line's error policy, through the real console entry point: a user's mistake is one line on stderr
and exit 2, with none of Spark's start-up chatter; queries Spark rejects are user errors too."""
from __future__ import annotations

import subprocess
import sys

import pytest

from cxatlas.cli import main
from cxatlas.cli.commands import run_sql
from cxatlas.cli.quiet import is_startup_note
from cxatlas.core.errors import UserError
from tests.conftest import cli_args


def cxatlas(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxatlas.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_sql_syntax_error_is_one_line_without_spark_chatter(tmp_path):
    done = cxatlas("--data", str(tmp_path / "data"), "sql", "SELEC region FROM uploads")
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if " INFO " not in line]
    assert errors == [errors[-1]] and errors[-1].startswith("cxatlas sql: error: query failed: [PARSE_SYNTAX_ERROR]")
    assert "Traceback" not in done.stderr and "log4j" not in done.stderr and "WARN" not in done.stderr


def test_queries_spark_rejects_are_user_errors(spark, cfg, store):
    with pytest.raises(UserError, match=r"TABLE_OR_VIEW_NOT_FOUND.*no_such_table"):
        run_sql(cfg, "SELECT * FROM no_such_table", spark_store=(spark, store))
    with pytest.raises(UserError, match=r"UNRESOLVED_COLUMN"):
        run_sql(cfg, "SELECT no_such_column FROM range(3)", spark_store=(spark, store))


def test_sql_file_with_several_statements_and_csv_output(spark, cfg, store, tmp_path, capsys):
    script = tmp_path / "q.sql"
    script.write_text("-- two statements\nSELECT 1 AS a, 'x;y' AS b;\nSELECT id FROM range(3) ORDER BY id;\n")
    done = main([*cli_args(cfg), "sql", "-f", str(script), "--format", "csv"])
    assert done == 0
    assert capsys.readouterr().out.splitlines() == ["a,b", "1,x;y", "id", "0", "1", "2"]
    assert main([*cli_args(cfg), "sql", "SELECT 1 AS a", "--format", "json"]) == 0
    assert capsys.readouterr().out.strip() == '{"a":1}'


# Only the JVM's own module notice is filtered in Python; log4j's lines are silenced by conf/log4j2.properties
# (tests/warehouse/test_logging.py runs a real command), so a log4j line that reaches the pipe is passed on.
@pytest.mark.parametrize("line, hidden", [
    ("WARNING: Using incubator modules: jdk.incubator.vector", True),
    ("Using Spark's default log4j profile: org/apache/spark/log4j2-defaults.properties", False),
    ("26/12/01 14:02:43 WARN Utils: Your hostname, vm, resolves to a loopback address: 127.0.0.1", False),
    ("26/12/01 14:29:18 WARN HiveExternalCatalog: Couldn't find corresponding Hive SerDe for data source provider "
     "delta. Persisting data source table", False),
    ("26/12/01 14:02:49 WARN TaskSetManager: Lost task 0.0 in stage 3.0", False),
    ("26/12/01 14:02:49 WARN HiveExternalCatalog: something else", False),
    ("cxatlas ingest: error: manifest not found", False),
    ("Traceback (most recent call last):", False),
])
def test_only_known_startup_notes_are_hidden(line, hidden):
    assert is_startup_note(line) is hidden
