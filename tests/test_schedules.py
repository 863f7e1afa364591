"""The shipped schedules of ``cxatlas reprocess`` (conf/schedules/): the Airflow DAG loaded by Airflow's own DagBag
in its separate venv (``make airflow-venv``), the cron line run by bash with its real flock, and the Kubernetes
CronJob parsed as YAML. All three must start ``jobs/reprocess.py`` of this checkout with ``conf/cluster.yaml`` and
``--manifest-dir``, at the same daily time, never two at once."""
from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEDULES = ROOT / "conf" / "schedules"
DAG_FILE = SCHEDULES / "airflow_cxatlas_reprocess.py"
CRON_FILE = SCHEDULES / "cxatlas.cron"
K8S_FILE = SCHEDULES / "k8s-cronjob.yaml"
AIRFLOW_PY = ROOT / ".airflow-venv" / "bin" / "python"
CHECKER = ROOT / "tests" / "airflow_dag_check.py"
JOB_ARGS = ["jobs/reprocess.py", "--conf", "conf/cluster.yaml", "--manifest-dir"]


def airflow_pin() -> str:
    """The Airflow version the Makefile installs into .airflow-venv."""
    return re.search(r"^AIRFLOW_PIN\s*:=\s*apache-airflow==(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)


def check_dag(dag_file: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    """Run the DagBag checker in .airflow-venv and return its JSON. A missing venv fails the test, never skips it."""
    if not AIRFLOW_PY.exists():
        pytest.fail(f"{AIRFLOW_PY} is missing: run `make airflow-venv` (make test builds it)")
    done = subprocess.run([str(AIRFLOW_PY), str(CHECKER), str(dag_file), *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})}, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def exec_argv(command: str) -> tuple[str, list[str]]:
    """(the folder the command cd's into, the argv it execs) of the DAG's rendered one-line bash command."""
    match = re.fullmatch(r"set -euo pipefail; cd (.+?) && exec (.+)", command)
    assert match, command
    (home,) = shlex.split(match.group(1))
    return home, shlex.split(match.group(2))


def cron_file() -> tuple[dict[str, str], list[str]]:
    """The cron file's variable assignments and job lines (comments and blank lines dropped)."""
    env, jobs = {}, []
    for line in CRON_FILE.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if re.match(r"^[A-Z_][A-Z0-9_]*=", line):
            key, _, value = line.partition("=")
            env[key] = value
        else:
            jobs.append(line)
    return env, jobs


def k8s_cronjob() -> dict:
    return yaml.safe_load(K8S_FILE.read_text())


@pytest.fixture(scope="module")
def dag_report() -> dict:
    """The DAG as Airflow sees it, rendered for three runs' confs, with this checkout as CXATLAS_HOME (from the
    environment of the parsing process) and no Airflow Variables set."""
    confs = [{"manifest_dir": "/data/new manifests"}, {"manifest_dir": "s3a://b/m", "max_videos": 500},
             {"max_videos": 0}, {}]
    cron_expr = cron_file()[1][0].split()[:5]
    return check_dag(DAG_FILE, *[a for c in confs for a in ("--conf", json.dumps(c))],
                     "--cron", " ".join(cron_expr), "--cron", k8s_cronjob()["spec"]["schedule"],
                     env={"CXATLAS_HOME": str(ROOT), "SPARK_SUBMIT": "/opt/spark/bin/spark-submit"})


def test_dag_loads_in_airflows_dagbag_with_daily_schedule_no_catchup_one_run_and_backoff(dag_report):
    assert dag_report["airflow_version"] == airflow_pin()
    assert dag_report["import_errors"] == {} and dag_report["dag_ids"] == ["cxatlas_reprocess"]
    dag = dag_report["dags"]["cxatlas_reprocess"]
    assert dag["catchup"] is False and dag["max_active_runs"] == 1
    fires = [datetime.fromisoformat(t) for t in dag_report["cron"][dag["schedule"]]]
    assert {b - a for a, b in zip(fires, fires[1:])} == {timedelta(days=1)}  # daily, by Airflow's croniter
    (task,) = dag["tasks"].values()
    assert task["operator"] == "BashOperator" and task["retries"] >= 2 and task["retry_exponential_backoff"] is True
    assert 0 < task["retry_delay_s"] < task["max_retry_delay_s"]
    assert dag["params"]["manifest_dir"] and dag["param_schemas"]["manifest_dir"]["type"] == "string"


def test_dag_command_spark_submits_reprocess_for_the_runs_manifest_folder(dag_report):
    renders = dag_report["dags"]["cxatlas_reprocess"]["tasks"]["reprocess"]["renders"]
    default_dir = dag_report["dags"]["cxatlas_reprocess"]["params"]["manifest_dir"]
    expected = [["/data/new manifests"], ["s3a://b/m", "--max-videos", "500"], None, [default_dir]]
    for render, tail in zip(renders, expected):
        if tail is None:  # max_videos=0 is refused by the param's schema before anything runs
            assert "ParamValidationError" in render["error"] and "max_videos" in render["error"]
            continue
        command = render["command"]
        subprocess.run(["bash", "-n", "-c", command], check=True, timeout=10)  # real bash syntax
        home, argv = exec_argv(command)
        assert home == str(ROOT)
        assert argv == ["/opt/spark/bin/spark-submit", *JOB_ARGS, *tail]
    for path in ("jobs/reprocess.py", "conf/cluster.yaml"):
        assert (ROOT / path).is_file(), f"the DAG runs {path}, which is not in the checkout"


def test_airflow_variables_override_the_environment():
    report = check_dag(DAG_FILE, "--conf", json.dumps({"manifest_dir": "/m"}),
                       "--variable", "cxatlas_home=/srv/cx atlas",
                       "--variable", "cxatlas_spark_submit_args=--master yarn --deploy-mode client",
                       "--variable", "cxatlas_max_videos=70", env={"CXATLAS_HOME": "/not/used"})
    (render,) = report["dags"]["cxatlas_reprocess"]["tasks"]["reprocess"]["renders"]
    home, argv = exec_argv(render["command"])
    assert home == "/srv/cx atlas"
    assert argv == ["spark-submit", "--master", "yarn", "--deploy-mode", "client", *JOB_ARGS, "/m",
                    "--max-videos", "70"]


def test_a_broken_dag_is_an_import_error(tmp_path):
    broken = tmp_path / DAG_FILE.name
    broken.write_text(DAG_FILE.read_text().replace("max_active_runs=1,", "max_active_runs=1, no_such_argument=1,"))
    report = check_dag(broken)
    assert report["dag_ids"] == [] and "no_such_argument" in " ".join(report["import_errors"].values())


def test_cron_line_runs_reprocess_daily_under_flock_and_logs(dag_report, tmp_path):
    env, jobs = cron_file()
    assert len(jobs) == 1
    fields = jobs[0].split(None, 5)
    assert " ".join(fields[:5]) == dag_report["dags"]["cxatlas_reprocess"]["schedule"]  # same daily time
    command = fields[5]
    assert "%" not in command  # cron would turn it into a newline
    assert re.search(r"\bflock -n \S+", command) and re.search(r'>> "\$CXATLAS_LOG" 2>&1$', command)
    assert {"CXATLAS_HOME", "SPARK_SUBMIT", "CXATLAS_MANIFESTS", "CXATLAS_LOG"} <= env.keys()

    # Run the line as cron would (bash, the file's variables), in this checkout, with the lock in tmp_path and a
    # stand-in for spark-submit that prints its arguments and working directory.
    lock = tmp_path / "reprocess.lock"
    line = command.replace("/tmp/cxatlas-reprocess.lock", str(lock))
    assert line != command
    log = tmp_path / "reprocess.log"
    run_env = {**os.environ, **env, "CXATLAS_HOME": str(ROOT), "CXATLAS_LOG": str(log),
               "SPARK_SUBMIT": str(tmp_path / "spark-submit"), "CXATLAS_MANIFESTS": "/data/new manifests"}
    (tmp_path / "spark-submit").write_text('#!/bin/bash\npwd\nprintf "%s\\n" "$@"\n')
    (tmp_path / "spark-submit").chmod(0o755)
    subprocess.run([env.get("SHELL", "/bin/bash"), "-c", line], env=run_env, check=True, timeout=30)
    assert log.read_text().splitlines() == [str(ROOT), *JOB_ARGS, "/data/new manifests"]

    # While a run holds the lock (this process takes it, with the same flock(2) call), the next one does not start:
    # nothing more reaches the log.
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        skipped = subprocess.run([env.get("SHELL", "/bin/bash"), "-c", line], env=run_env, timeout=30)
    assert skipped.returncode != 0
    assert len(log.read_text().splitlines()) == 1 + len(JOB_ARGS) + 1
    for path in ("jobs/reprocess.py", "conf/cluster.yaml"):
        assert (ROOT / path).is_file(), f"the cron line runs {path}, which is not in the checkout"


def test_kubernetes_cronjob_forbids_overlap_and_spark_submits_reprocess(dag_report):
    job = k8s_cronjob()
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "CronJob"
    spec = job["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["schedule"] == dag_report["dags"]["cxatlas_reprocess"]["schedule"]
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    command = container["command"]
    assert command[0] == "spark-submit"
    start = command.index("jobs/reprocess.py")
    assert command[start:start + 5] == [*JOB_ARGS, "$(MANIFEST_DIR)"]
    assert "MANIFEST_DIR" in {e["name"] for e in container["env"]}  # Kubernetes expands $(MANIFEST_DIR) from it
    assert container["workingDir"] == "/opt/cxatlas"  # where the image holds jobs/ and conf/ (docs/cluster.md)
    for path in ("jobs/reprocess.py", "conf/cluster.yaml"):
        assert (ROOT / path).is_file(), f"the CronJob runs {path}, which is not in the checkout"
