"""The shipped schedules of ``cxatlas reprocess`` (conf/schedules/): the Airflow DAG loaded by Airflow's own DagBag
in its separate venv (``make airflow-venv``: Airflow, apache-airflow-providers-apache-spark and the project's pyspark),
its ``SparkSubmitOperator`` rendered and run by Airflow with a stand-in spark-submit, the cron line run by bash with
its real flock, the systemd service and timer, and the Kubernetes CronJob parsed as YAML. All must start
``jobs/reprocess.py`` of this checkout with ``conf/cluster.yaml`` and ``--manifest-dir``, at the same daily time,
never two at once."""
from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEDULES = ROOT / "conf" / "schedules"
DAG_FILE = SCHEDULES / "airflow_cxatlas_reprocess.py"
CRON_FILE = SCHEDULES / "cxatlas.cron"
K8S_FILE = SCHEDULES / "k8s-cronjob.yaml"
SERVICE_FILE = SCHEDULES / "cxatlas-reprocess.service"
TIMER_FILE = SCHEDULES / "cxatlas-reprocess.timer"
AIRFLOW_PY = ROOT / ".airflow-venv" / "bin" / "python"
CHECKER = ROOT / "tests" / "airflow_dag_check.py"
JOB_ARGS = ["jobs/reprocess.py", "--conf", "conf/cluster.yaml", "--manifest-dir"]
#: The DAG's Airflow connection (type spark): where spark-submit submits to.
CONN_ID = "cxatlas_spark"
#: A standalone master in client mode, as the DAG's checks give the connection (JSON form of AIRFLOW_CONN_*).
CONNECTION = {"AIRFLOW_CONN_CXATLAS_SPARK": json.dumps(
    {"conn_type": "spark", "host": "spark://spark-master", "port": 7077, "extra": {"deploy-mode": "client"}})}


def airflow_pin() -> str:
    """The Airflow version the Makefile installs into .airflow-venv."""
    return re.search(r"^AIRFLOW_PIN\s*:=\s*apache-airflow==(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)


def pins(path: str) -> dict[str, str]:
    """name -> version of a constraints file's ``name==version`` lines."""
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / path).read_text(), re.M))


def readme_job_command() -> list[str]:
    """The command README's "Scheduled reprocessing" says to schedule on a cluster, from ``jobs/reprocess.py`` on:
    ``jobs/reprocess.py --conf conf/cluster.yaml --manifest-dir DIR [--max-videos N]``."""
    text = re.sub(r"\s+", " ", (ROOT / "README.md").read_text().split("### Scheduled reprocessing", 1)[1])
    return re.search(r"`spark-submit (jobs/reprocess\.py [^`]+)`", text).group(1).split()


def reprocess_parser_accepts(args: list[str]):
    """The job's arguments as jobs/reprocess.py reads them: ``cxatlas reprocess``'s own argument parser."""
    from cxatlas.cli.main import build_parser

    parsed = build_parser().parse_args(["reprocess", *args])
    assert parsed.command == "reprocess"
    return parsed


def check_dag(dag_file: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    """Run the DagBag checker in .airflow-venv and return its JSON. A missing venv fails the test, never skips it."""
    if not AIRFLOW_PY.exists():
        pytest.fail(f"{AIRFLOW_PY} is missing: run `make airflow-venv` (make test builds it)")
    done = subprocess.run([str(AIRFLOW_PY), str(CHECKER), str(dag_file), *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})}, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


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


def systemd_unit(path: Path) -> dict[str, dict[str, str]]:
    """A systemd unit file's sections and settings; a key given more than once (Environment=) joins its values with
    newlines, as systemd accumulates them."""
    sections: dict[str, dict[str, str]] = {}
    section = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert section is not None and _, f"{path.name}: {line!r} is not key=value inside a section"
        section[key.strip()] = "\n".join(filter(None, [section.get(key.strip()), value.strip()]))
    return sections


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
                     env={"CXATLAS_HOME": str(ROOT), **CONNECTION})


def test_dag_loads_in_airflows_dagbag_with_daily_schedule_no_catchup_one_run_and_backoff(dag_report):
    assert dag_report["airflow_version"] == airflow_pin()
    assert dag_report["import_errors"] == {} and dag_report["dag_ids"] == ["cxatlas_reprocess"]
    dag = dag_report["dags"]["cxatlas_reprocess"]
    assert dag["catchup"] is False and dag["max_active_runs"] == 1
    fires = [datetime.fromisoformat(t) for t in dag_report["cron"][dag["schedule"]]]
    assert {b - a for a, b in zip(fires, fires[1:])} == {timedelta(days=1)}  # daily, by Airflow's croniter
    (task,) = dag["tasks"].values()
    assert task["retries"] >= 2 and task["retry_exponential_backoff"] is True
    assert 0 < task["retry_delay_s"] < task["max_retry_delay_s"]
    assert dag["params"]["manifest_dir"] and dag["param_schemas"]["manifest_dir"]["type"] == "string"


def test_airflow_venv_has_the_spark_provider_pinned_to_the_projects_pyspark(dag_report):
    """The provider comes from the Makefile's pin, under constraints-airflow.txt, whose pyspark is .venv's own."""
    from importlib.metadata import version

    makefile = (ROOT / "Makefile").read_text()
    provider = re.search(r"^AIRFLOW_SPARK_PIN\s*:=\s*apache-airflow-providers-apache-spark==(\S+)", makefile,
                         re.M).group(1)
    airflow_pins, project_pins = pins("constraints-airflow.txt"), pins("constraints.txt")
    assert airflow_pins["apache-airflow-providers-apache-spark"] == provider
    assert airflow_pins["pyspark"] == project_pins["pyspark"] == version("pyspark")
    assert airflow_pins["py4j"] == project_pins["py4j"]
    installed = dag_report["distributions"]
    assert installed == {"apache-airflow-providers-apache-spark": provider, "pyspark": version("pyspark"),
                         "py4j": version("py4j")}


def test_dag_task_is_a_spark_submit_of_the_reprocess_job(dag_report):
    """The task is the provider's SparkSubmitOperator, on the connection cxatlas_spark, named cxatlas-reprocess;
    application = jobs/reprocess.py under CXATLAS_HOME; --packages = conf/cluster.yaml's spark.jars.packages (Delta
    Lake of conf/jars.txt); the hubs offline on driver and executors, as docs/cluster.md says."""
    task = dag_report["dags"]["cxatlas_reprocess"]["tasks"]["reprocess"]
    assert task["operator"] == "SparkSubmitOperator"
    assert task["operator_module"] == "airflow.providers.apache.spark.operators.spark_submit"
    render = task["renders"][0]
    assert render["conn_id"] == CONN_ID and render["name"] == "cxatlas-reprocess"
    assert render["application"] == str(ROOT / "jobs" / "reprocess.py")
    assert Path(render["application"]).is_file()
    cluster = yaml.safe_load((ROOT / "conf" / "cluster.yaml").read_text())
    assert render["packages"] == cluster["spark"]["conf"]["spark.jars.packages"]
    jars = [line for line in (ROOT / "conf" / "jars.txt").read_text().splitlines() if line.startswith("io.delta:")]
    assert jars[0] in render["packages"].split(",")
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    assert render["env_vars"] == offline
    assert render["conf"] == {f"spark.executorEnv.{k}": v for k, v in offline.items()}
    cluster_doc = (ROOT / "docs" / "cluster.md").read_text()
    assert all(f"--conf {k}={v}" in cluster_doc for k, v in render["conf"].items())
    assert render["py_files"] == "" and render["properties_file"] == ""  # unset: left out of the command line


def test_dag_spark_submits_reprocess_for_the_runs_manifest_folder(dag_report):
    """Rendered for each run's conf, the arguments are README's command (DIR and N filled in) with the paths under
    CXATLAS_HOME, the job's own parser takes them, and the hook's command line has spark-submit's options (master
    and deploy mode from the connection) before the application and the job's after it."""
    renders = dag_report["dags"]["cxatlas_reprocess"]["tasks"]["reprocess"]["renders"]
    default_dir = dag_report["dags"]["cxatlas_reprocess"]["params"]["manifest_dir"]
    readme = readme_job_command()
    assert readme == [*JOB_ARGS, "DIR", "[--max-videos", "N]"]
    expected = [("/data/new manifests", 0), ("s3a://b/m", 500), None, (default_dir, 0)]
    for render, want in zip(renders, expected):
        if want is None:  # max_videos=0 is refused by the param's schema before anything runs
            assert "ParamValidationError" in render["error"] and "max_videos" in render["error"]
            continue
        manifest_dir, max_videos = want
        args = [a.replace("conf/cluster.yaml", str(ROOT / "conf" / "cluster.yaml")) for a in readme[1:5]]
        args[-1] = manifest_dir
        if max_videos:
            args += ["--max-videos", str(max_videos)]
        assert render["application_args"] == args
        parsed = reprocess_parser_accepts(render["application_args"])
        assert parsed.manifest_dir == manifest_dir and parsed.max_videos == (max_videos or None)
        assert parsed.conf == str(ROOT / "conf" / "cluster.yaml") and Path(parsed.conf).is_file()
        argv = render["argv"]
        app = argv.index(render["application"])
        assert argv[app + 1:] == args
        assert argv[:3] == ["spark-submit", "--master", "spark://spark-master:7077"]
        assert argv[app - 2:app] == ["--deploy-mode", "client"]
        options = argv[1:app]
        assert options[options.index("--name") + 1] == "cxatlas-reprocess"
        assert options[options.index("--packages") + 1] == render["packages"]
        assert [options[i + 1] for i, o in enumerate(options) if o == "--conf"] == [
            "spark.executorEnv.HF_HUB_OFFLINE=1", "spark.executorEnv.TRANSFORMERS_OFFLINE=1"]
        assert "" not in argv and render["env"] == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_airflow_variables_override_the_environment():
    """Variables set every path and spark-submit setting; relative paths are under cxatlas_home, URIs kept. Without
    the connection the provider submits to yarn, and the driver's environment becomes YARN application-master env."""
    report = check_dag(DAG_FILE, "--conf", json.dumps({"manifest_dir": "/m"}),
                       "--variable", "cxatlas_home=/srv/cx atlas",
                       "--variable", "cxatlas_conf=site/cluster.yaml",
                       "--variable", "cxatlas_max_videos=70",
                       "--variable", "cxatlas_spark_packages=",
                       "--variable", "cxatlas_py_files=dist/cxatlas-pyfiles.zip",
                       "--variable", "cxatlas_archives=hdfs:///apps/cxatlas-env.tar.gz#environment",
                       "--variable", "cxatlas_pyspark_python=./environment/bin/python",
                       "--variable", "cxatlas_properties_file=/etc/spark/cxatlas.conf",
                       env={"CXATLAS_HOME": "/not/used"})
    (render,) = report["dags"]["cxatlas_reprocess"]["tasks"]["reprocess"]["renders"]
    assert render["application"] == "/srv/cx atlas/jobs/reprocess.py"
    assert render["application_args"] == ["--conf", "/srv/cx atlas/site/cluster.yaml", "--manifest-dir", "/m",
                                          "--max-videos", "70"]
    assert render["master"] == "yarn" and render["deploy_mode"] is None
    argv = render["argv"]
    app = argv.index("/srv/cx atlas/jobs/reprocess.py")
    options = argv[1:app]
    assert "--packages" not in options  # empty: the jars are on the image
    assert options[options.index("--py-files") + 1] == "/srv/cx atlas/dist/cxatlas-pyfiles.zip"
    assert options[options.index("--properties-file") + 1] == "/etc/spark/cxatlas.conf"
    confs = {options[i + 1] for i, o in enumerate(options) if o == "--conf"}
    assert confs == {"spark.archives=hdfs:///apps/cxatlas-env.tar.gz#environment",
                     "spark.pyspark.python=./environment/bin/python",
                     "spark.executorEnv.HF_HUB_OFFLINE=1", "spark.executorEnv.TRANSFORMERS_OFFLINE=1",
                     "spark.yarn.appMasterEnv.HF_HUB_OFFLINE=1", "spark.yarn.appMasterEnv.TRANSFORMERS_OFFLINE=1"}


def test_airflow_runs_the_task_and_spark_submits_with_its_exit_code(tmp_path):
    """Airflow itself runs the DAG (DAG.test: a DagRun, the TaskInstance's own rendering, pre_execute and execute):
    the provider's hook starts the spark-submit on PATH, here a stand-in that records its arguments, working
    directory and environment; a spark-submit that fails fails the task."""
    bin_dir, record = tmp_path / "bin", tmp_path / "argv.json"
    bin_dir.mkdir()
    stub = bin_dir / "spark-submit"
    record_args = ("import json, os, sys; json.dump({'argv': sys.argv[1:], 'cwd': os.getcwd(), "
                   "'offline': os.environ.get('HF_HUB_OFFLINE')}, open(os.environ['RECORD'], 'w'))")
    stub.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -c "{record_args}" "$@"\n')
    stub.chmod(0o755)
    env = {"CXATLAS_HOME": str(ROOT), "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(record),
           "AIRFLOW_HOME": str(tmp_path / "airflow-home"), "HF_HUB_OFFLINE": "0", **CONNECTION}  # the DAG sets 1
    report = check_dag(DAG_FILE, "--run", json.dumps({"manifest_dir": "/data/m", "max_videos": 9}), env=env)
    assert report["runs"] == [{"dag_id": "cxatlas_reprocess", "state": "success", "tasks": {"reprocess": "success"}}]
    seen = json.loads(record.read_text())
    app = seen["argv"].index(str(ROOT / "jobs" / "reprocess.py"))
    assert seen["argv"][app + 1:] == ["--conf", str(ROOT / "conf" / "cluster.yaml"), "--manifest-dir", "/data/m",
                                      "--max-videos", "9"]
    assert seen["argv"][:2] == ["--master", "spark://spark-master:7077"] and seen["offline"] == "1"

    stub.write_text("#!/bin/sh\necho 'lost the cluster' >&2\nexit 3\n")
    report = check_dag(DAG_FILE, "--run", json.dumps({"manifest_dir": "/data/m"}),
                       env={**env, "AIRFLOW_HOME": str(tmp_path / "airflow-home-2")})
    assert report["runs"] == [{"dag_id": "cxatlas_reprocess", "state": "failed", "tasks": {"reprocess": "failed"}}]


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


def test_systemd_timer_starts_the_service_daily_and_the_service_spark_submits_reprocess(dag_report, tmp_path):
    """The timer fires at the DAG's daily time and starts the oneshot service (a oneshot unit still active is not
    started again: no overlap); the service's ExecStart, its ${VARS} expanded as systemd does (one word each), runs
    spark-submit with the job's arguments from the folder holding jobs/ and conf/."""
    timer, service = systemd_unit(TIMER_FILE), systemd_unit(SERVICE_FILE)
    assert timer["Timer"]["OnCalendar"] == "*-*-* 03:00:00 UTC"
    minute, hour = dag_report["dags"]["cxatlas_reprocess"]["schedule"].split()[:2]
    assert (int(hour), int(minute)) == (3, 0) and dag_report["dags"]["cxatlas_reprocess"]["schedule"].endswith("* * *")
    assert timer["Timer"]["Unit"] == SERVICE_FILE.name and timer["Timer"]["Persistent"] == "true"
    assert timer["Install"]["WantedBy"] == "timers.target"
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["WorkingDirectory"] == "/opt/cxatlas"  # as the CronJob's image (docs/cluster.md)
    env = dict(item.split("=", 1) for line in service["Service"]["Environment"].splitlines()
               for item in shlex.split(line))
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"
    words = shlex.split(service["Service"]["ExecStart"])
    assert words[0] == "/usr/bin/env" and Path(words[0]).is_file()
    argv = [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], w) for w in words[1:]]
    assert argv == [env["SPARK_SUBMIT"], *JOB_ARGS, env["CXATLAS_MANIFESTS"]]

    # Run ExecStart as the service would (its environment, the checkout as working directory), with a stand-in
    # spark-submit that prints its working directory and arguments.
    (tmp_path / "spark-submit").write_text('#!/bin/bash\npwd\nprintf "%s\\n" "$@"\n')
    (tmp_path / "spark-submit").chmod(0o755)
    done = subprocess.run([words[0], *argv], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True,
                          env={"PATH": f"{tmp_path}:/usr/bin:/bin", **env})
    assert done.stdout.splitlines() == [str(ROOT), *JOB_ARGS, env["CXATLAS_MANIFESTS"]]
    for path in ("jobs/reprocess.py", "conf/cluster.yaml"):
        assert (ROOT / path).is_file(), f"the service runs {path}, which is not in the checkout"

    # README's copies of the cron line and the units are the shipped files' own lines.
    readme = (ROOT / "README.md").read_text().split("### Scheduled reprocessing", 1)[1]
    shown = re.search(r"```ini\n(.*?)```", readme, re.S).group(1).splitlines()
    unit_lines = set(SERVICE_FILE.read_text().splitlines()) | set(TIMER_FILE.read_text().splitlines())
    assert [line for line in shown if line and not line.startswith("#") and line not in unit_lines] == []
    assert cron_file()[1][0] in readme


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze (package systemd) not here")
def test_systemd_accepts_the_units_and_the_timer_fires_daily_at_three(tmp_path):
    """systemd's own parser: `systemd-analyze verify` reports nothing for the two units, and its calendar gives daily
    starts at 03:00 UTC."""
    done = subprocess.run(["systemd-analyze", "verify", str(TIMER_FILE), str(SERVICE_FILE)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
    broken = tmp_path / SERVICE_FILE.name
    broken.write_text(SERVICE_FILE.read_text().replace("Type=oneshot", "Type=oneshoot"))
    (tmp_path / TIMER_FILE.name).write_text(TIMER_FILE.read_text())
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / TIMER_FILE.name), str(broken)],
                          capture_output=True, text=True, timeout=60)
    assert "oneshoot" in done.stderr  # the check sees a bad setting
    calendar = systemd_unit(TIMER_FILE)["Timer"]["OnCalendar"]
    done = subprocess.run(["systemd-analyze", "calendar", "--iterations=3", calendar], capture_output=True, text=True,
                          timeout=60, check=True, env={**os.environ, "TZ": "UTC"})
    fires = re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\S+ \S+) UTC", done.stdout)
    assert len(fires) == 3 and all(f.endswith(" 03:00:00") for f in fires), done.stdout
    days = [datetime.fromisoformat(f) for f in fires]
    assert {b - a for a, b in zip(days, days[1:])} == {timedelta(days=1)}


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
