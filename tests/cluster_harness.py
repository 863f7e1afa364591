"""A real Spark standalone cluster on loopback, started from the pip-installed pyspark, for tests.

Why: local mode runs the driver and the tasks in one JVM and one machine's view of the world, which hides whole classes
of bugs (state kept on the driver, closures that cannot be pickled, files only the driver can see, Python packages
missing on executors). A standalone cluster with one master and two workers -- each its own JVM process with its own
working directory, each launching its own executor JVM and Python workers -- exposes them, and needs nothing but the
``bin/spark-class`` launcher that ships inside the pyspark wheel.

``standalone_cluster()`` is a context manager: it picks free ports at run time, starts the master and the workers as
separate sessions, waits until every worker is registered (polling the master's ``/json``), yields a
:class:`StandaloneCluster`, and ALWAYS stops what it started -- by session, workers before the master, first
with SIGTERM (so a worker's shutdown hook stops and reaps its executors) then with SIGKILL for anything left -- even
when the body raised. Jobs are run with :func:`spark_submit` (also usable with ``--master local[N]``), each in its own
session with a wall-clock limit, and leave a plain-JSON event log that :func:`read_event_log` turns into "which
executor ran how many tasks"; :meth:`StandaloneCluster.executors_by_worker` maps executors to workers through the
workers' ``work-dir/<app-id>/<executor-id>/`` folders.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import pyspark

REPO = Path(__file__).resolve().parents[1]
SPARK_HOME = Path(pyspark.__file__).resolve().parent
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
# Variables of an enclosing pyspark session that must not leak into a child launcher (it would attach to that JVM).
_SCRUB_ENV = ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "PYSPARK_SUBMIT_ARGS", "SPARK_CONF_DIR",
              "SPARK_LOCAL_DIRS", "SPARK_WORKER_DIR", "_PYSPARK_DRIVER_CONN_INFO_PATH")


class ClusterError(RuntimeError):
    """The cluster did not start, a process misbehaved, or processes were left running after stop."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the OS picks it), so parallel runs never fight over fixed ports."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def spark_env(python: str = sys.executable, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Spark launchers: this SPARK_HOME, loopback, and ``python`` for drivers AND executors.

    Why ``python`` everywhere: executors start Python workers with ``PYSPARK_PYTHON``; if it fell back to a system
    ``python3`` without the project's packages, tasks would fail only on the cluster -- the very bug class to catch.
    """
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB_ENV}
    env.update(SPARK_HOME=str(SPARK_HOME), SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=python,
               PYSPARK_DRIVER_PYTHON=python, PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


# --------------------------------------------------------------------------------------------------------------------
# Process sessions: every daemon and driver starts as the leader of its own session; whatever it spawns (executor
# JVMs, PySpark's daemon -- which moves itself into a process group of its own -- and its Python workers) stays in that
# session, so the session id finds them all.
# --------------------------------------------------------------------------------------------------------------------
def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, session id) of a pid from /proc, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text.rsplit(")", 1)[1].split()  # state ppid pgrp session ...
    return fields[0], int(fields[3])


def live_session_members(sid: int) -> list[int]:
    """Pids of live processes in session ``sid`` (started with ``start_new_session=True``: sid = leader's pid).

    Zombies are not counted: they run nothing and hold no port or memory, and in containers whose PID 1 does not reap
    orphans, an executor that outlived its worker by milliseconds stays a zombie forever.
    """
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None and stat[1] == sid and stat[0] not in ("Z", "X"):
                members.append(int(entry))
    return members


def kill_session(sid: int, timeout_s: float = 10.0) -> list[int]:
    """SIGKILL every live process of session ``sid``; returns the pids signalled. Waits until none is left."""
    signalled: list[int] = []
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        members = live_session_members(sid)
        if not members:
            break
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
                signalled.append(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    return sorted(set(signalled))


def stop_session(popen: subprocess.Popen, grace_s: float = 15.0) -> list[int]:
    """Stop a process started with ``start_new_session=True`` and everything in its session; return survivors' pids.

    SIGTERM goes to the leader first so JVM shutdown hooks run (a Worker's hook kills and reaps its executors); after
    ``grace_s`` whatever is left of the session gets SIGKILL.
    """
    if popen.poll() is None:
        try:
            popen.send_signal(signal.SIGTERM)
            popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    kill_session(popen.pid)
    try:
        popen.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    return live_session_members(popen.pid)


@dataclass
class ClusterProcess:
    """One daemon of the cluster (master or a worker): its session, working directory and log."""

    role: str
    popen: subprocess.Popen
    directory: Path
    log: Path
    rpc_port: int
    webui_port: int

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "<no log>"


def _start_daemon(role: str, argv: Sequence[str], directory: Path, env: Mapping[str, str], rpc_port: int,
                  webui_port: int) -> ClusterProcess:
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / f"{role}.log"
    with open(log, "wb") as handle:
        popen = subprocess.Popen(list(argv), cwd=directory, env=dict(env), stdout=handle, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    return ClusterProcess(role, popen, directory, log, rpc_port, webui_port)


# --------------------------------------------------------------------------------------------------------------------
# spark-submit
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class SubmitResult:
    """What one spark-submit run did. ``event_log_dir`` holds its uncompressed event log."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    event_log_dir: Path

    def check(self) -> "SubmitResult":
        """Raise with the tail of the driver's output unless the job exited 0."""
        if self.returncode != 0:
            raise ClusterError(f"spark-submit exited {self.returncode} after {self.seconds:.0f}s: "
                               f"{' '.join(self.argv)}\n--- stdout ---\n{self.stdout[-4000:]}\n"
                               f"--- stderr ---\n{self.stderr[-6000:]}")
        return self

    def events(self) -> "AppEvents":
        return read_event_log(self.event_log_dir)


class RunningSubmit:
    """A spark-submit running in its own session; ``wait`` collects it (killing the session on timeout)."""

    def __init__(self, argv: list[str], env: Mapping[str, str], workdir: Path, event_log_dir: Path):
        self.argv, self.workdir, self.event_log_dir = argv, workdir, event_log_dir
        workdir.mkdir(parents=True, exist_ok=True)
        self._out = open(workdir / "driver.stdout", "wb")
        self._err = open(workdir / "driver.stderr", "wb")
        self.started = time.time()
        self.popen = subprocess.Popen(argv, cwd=workdir, env=dict(env), stdout=self._out, stderr=self._err,
                                      stdin=subprocess.DEVNULL, start_new_session=True)

    def wait(self, timeout_s: float) -> SubmitResult:
        try:
            self.popen.wait(timeout=timeout_s)
            rc = self.popen.returncode
        except subprocess.TimeoutExpired:
            stop_session(self.popen, grace_s=5)
            rc = -9
        finally:
            stop_session(self.popen, grace_s=5)  # the driver's Python and JVM children, if any linger
            self._out.close()
            self._err.close()
        out = (self.workdir / "driver.stdout").read_text(errors="replace")
        err = (self.workdir / "driver.stderr").read_text(errors="replace")
        if rc == -9:
            err += f"\n[cluster_harness] killed after the {timeout_s:.0f}s limit"
        return SubmitResult(self.argv, rc, out, err, time.time() - self.started, self.event_log_dir)


def submit_argv(script: str | Path, args: Sequence[str], master: str, conf: Mapping[str, str], *,
                event_log_dir: Path, python: str = sys.executable, py_files: Sequence[str] = ()) -> list[str]:
    """The spark-submit command line: ``master`` and ``conf`` from the caller, plus an uncompressed event log.

    The event log is what proves where tasks ran (executor id per finished task), independent of log levels.
    """
    # Delta Lake's jars (and Derby's client driver for the metastore), the way a cluster user passes them: on the
    # spark-submit command line, so the driver JVM starts with them and the executors fetch them (`make jars`).
    jars = sorted(str(p) for p in (REPO / ".jars").glob("*.jar"))
    base = {
        "spark.jars": ",".join(jars),
        "spark.driver.extraClassPath": ":".join(jars),
        "spark.pyspark.python": python,
        "spark.pyspark.driver.python": python,
        "spark.executorEnv.PYSPARK_PYTHON": python,
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": event_log_dir.resolve().as_uri(),
        "spark.eventLog.compress": "false",
        "spark.eventLog.rolling.enabled": "false",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
    }
    base.update(conf)
    argv = [str(SPARK_HOME / "bin" / "spark-submit"), "--master", master]
    for key, value in base.items():
        argv += ["--conf", f"{key}={value}"]
    if py_files:
        argv += ["--py-files", ",".join(py_files)]
    return argv + [str(script), *args]


def spark_submit(script: str | Path, args: Sequence[str], master: str, workdir: Path, *,
                 conf: Mapping[str, str] | None = None, timeout_s: float = 300, python: str = sys.executable,
                 env: Mapping[str, str] | None = None, wait: bool = True, py_files: Sequence[str] = ()
                 ) -> SubmitResult | RunningSubmit:
    """Run ``spark-submit`` as a subprocess in ``workdir`` (its stdout/stderr are kept there as files).

    ``wait=False`` returns a :class:`RunningSubmit` (to act on the cluster while the job runs, e.g. kill a worker).
    The driver's local scratch space is kept inside ``workdir`` so nothing lands in /tmp or the repository.
    """
    workdir = Path(workdir)
    event_log_dir = workdir / "eventlog"
    event_log_dir.mkdir(parents=True, exist_ok=True)
    (workdir / "local").mkdir(parents=True, exist_ok=True)
    full_conf = {"spark.local.dir": str((workdir / "local").resolve()), **(conf or {})}
    argv = submit_argv(script, args, master, full_conf, event_log_dir=event_log_dir, python=python,
                       py_files=py_files)
    running = RunningSubmit(argv, spark_env(python, env), workdir, event_log_dir)
    return running.wait(timeout_s) if wait else running


# --------------------------------------------------------------------------------------------------------------------
# Event logs
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class AppEvents:
    """The facts a test needs from one application's event log."""

    app_id: str
    executors: dict[str, str] = field(default_factory=dict)  # executor id -> host
    tasks_ok: Counter = field(default_factory=Counter)  # executor id -> successful tasks
    tasks_failed: Counter = field(default_factory=Counter)  # executor id -> failed or killed task attempts
    executors_removed: dict[str, str] = field(default_factory=dict)  # executor id -> removal reason
    jobs_failed: int = 0
    jobs_ok: int = 0
    spark_properties: dict[str, str] = field(default_factory=dict)  # the settings the application really ran with


def read_event_log(event_log_dir: Path) -> AppEvents:
    """Parse the single (uncompressed, non-rolling) event log Spark wrote into ``event_log_dir``."""
    files = [p for p in Path(event_log_dir).rglob("*") if p.is_file() and not p.name.endswith(".inprogress")
             and not p.name.startswith(".")]
    if len(files) != 1:
        raise ClusterError(f"expected one finished event log in {event_log_dir}, found {[p.name for p in files]}")
    events = AppEvents(app_id="")
    with open(files[0], encoding="utf-8") as handle:
        for line in handle:
            event = json.loads(line)
            kind = event.get("Event")
            if kind == "SparkListenerApplicationStart":
                events.app_id = event.get("App ID", "")
            elif kind == "SparkListenerExecutorAdded":
                events.executors[str(event["Executor ID"])] = event["Executor Info"]["Host"]
            elif kind == "SparkListenerExecutorRemoved":
                events.executors_removed[str(event["Executor ID"])] = event.get("Removed Reason", "")
            elif kind == "SparkListenerTaskEnd":
                info = event["Task Info"]
                executor = str(info["Executor ID"])
                if info.get("Failed") or info.get("Killed"):
                    events.tasks_failed[executor] += 1
                else:
                    events.tasks_ok[executor] += 1
            elif kind == "SparkListenerEnvironmentUpdate":
                events.spark_properties = dict(event.get("Spark Properties") or {})
            elif kind == "SparkListenerJobEnd":
                ok = event.get("Job Result", {}).get("Result") == "JobSucceeded"
                events.jobs_ok += ok
                events.jobs_failed += not ok
    return events


# --------------------------------------------------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class StandaloneCluster:
    """A running master and its workers. Use :func:`standalone_cluster`; do not construct directly."""

    root: Path
    master: ClusterProcess
    workers: list[ClusterProcess]
    env: dict[str, str]
    worker_cores: int = 1
    worker_memory: str = "2g"
    python: str = sys.executable
    leftovers: dict[str, list[int]] = field(default_factory=dict)

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.master.rpc_port}"

    @property
    def webui_url(self) -> str:
        return f"http://127.0.0.1:{self.master.webui_port}"

    def master_json(self, timeout_s: float = 5.0) -> dict:
        """The master's state (workers, applications) from its web UI's JSON endpoint."""
        with urllib.request.urlopen(f"{self.webui_url}/json/", timeout=timeout_s) as response:
            return json.loads(response.read().decode("utf-8"))

    def alive_workers(self) -> list[dict]:
        return [w for w in self.master_json().get("workers", []) if w.get("state") == "ALIVE"]

    def _start_worker(self, index: int) -> ClusterProcess:
        """Start worker ``index`` in its own folder (``worker-<i>/``: log, ``work/``, ``local/``) on fresh ports."""
        wdir = self.root / f"worker-{index}"
        (wdir / "work").mkdir(parents=True, exist_ok=True)
        (wdir / "local").mkdir(parents=True, exist_ok=True)
        port, ui = free_port(), free_port()
        argv = [str(SPARK_HOME / "bin" / "spark-class"), WORKER_CLASS, self.master_url, "--host", "127.0.0.1",
                "--port", str(port), "--webui-port", str(ui), "--work-dir", str(wdir / "work"),
                "--cores", str(self.worker_cores), "--memory", self.worker_memory]
        return _start_daemon(f"worker-{index}", argv, wdir, dict(self.env, SPARK_LOCAL_DIRS=str(wdir / "local")),
                             port, ui)

    def wait_until_registered(self, timeout_s: float) -> None:
        """Poll the master's JSON until every worker of ours is ALIVE there; fail early if a daemon died."""
        deadline = time.time() + timeout_s
        last_error = "no answer yet"
        while time.time() < deadline:
            for proc in self.all_processes():
                if not proc.alive():
                    raise ClusterError(f"{proc.role} exited with code {proc.popen.returncode} while the cluster "
                                       f"started; its log ends:\n{proc.log_tail()}")
            try:
                state = self.master_json(timeout_s=2)
                if state.get("url") not in (None, self.master_url):
                    raise ClusterError(f"master answers as {state.get('url')}, expected {self.master_url}")
                ports = {w.get("port") for w in state.get("workers", []) if w.get("state") == "ALIVE"}
                if {w.rpc_port for w in self.workers} <= ports:
                    return
                last_error = f"{len(ports & {w.rpc_port for w in self.workers})} of {len(self.workers)} workers ALIVE"
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError) as exc:
                last_error = repr(exc)
            time.sleep(0.5)
        tails = "\n".join(f"--- {p.role} ---\n{p.log_tail(1500)}" for p in self.all_processes())
        raise ClusterError(f"cluster not ready after {timeout_s:.0f}s ({last_error})\n{tails}")

    def executors_by_worker(self, app_id: str) -> dict[str, list[str]]:
        """Worker role -> ids of the executors it launched for ``app_id`` (from ``<work-dir>/<app-id>/<exec-id>/``)."""
        out = {}
        for worker in self.workers:
            app_dir = worker.directory / "work" / app_id
            out[worker.role] = sorted(p.name for p in app_dir.iterdir() if p.is_dir()) if app_dir.is_dir() else []
        return out

    def executor_logs(self, worker: int, app_id: str) -> str:
        """The stderr logs of the executors worker ``worker`` ran for ``app_id``, as the worker kept them."""
        app_dir = self.workers[worker].directory / "work" / app_id
        return "".join(p.read_text(errors="replace") for p in sorted(app_dir.glob("*/stderr")))

    def tasks_by_worker(self, events: AppEvents) -> dict[str, int]:
        """Successful tasks per worker: the event log's tasks per executor, mapped to workers via their work dirs."""
        by_worker = self.executors_by_worker(events.app_id)
        return {role: sum(events.tasks_ok.get(e, 0) for e in executors) for role, executors in by_worker.items()}

    def kill_worker(self, index: int) -> list[int]:
        """SIGKILL everything of a worker at once -- the worker JVM, its executor JVM, PySpark's daemon and Python
        workers -- as a machine loss would. Returns the pids that were killed."""
        worker = self.workers[index]
        pids = kill_session(worker.pid)
        worker.popen.wait(timeout=10)
        return pids

    def restart_worker(self, index: int, timeout_s: float = 120) -> ClusterProcess:
        """Replace worker ``index`` (stopping what is left of it) by a fresh process, and wait until it registers."""
        stop_session(self.workers[index].popen)
        self.workers[index] = self._start_worker(index)
        self.wait_until_registered(timeout_s)
        return self.workers[index]

    def submit(self, script: str | Path, args: Sequence[str], workdir: Path, **kwargs) -> SubmitResult | RunningSubmit:
        """:func:`spark_submit` against this cluster's master."""
        return spark_submit(script, args, self.master_url, workdir, python=self.python, **kwargs)

    def all_processes(self) -> list[ClusterProcess]:
        return [*self.workers, self.master]

    def stop(self) -> dict[str, list[int]]:
        """Stop workers then the master, by session; returns {role: surviving pids} (empty when clean)."""
        self.leftovers = {}
        for proc in self.all_processes():
            survivors = stop_session(proc.popen)
            if survivors:
                self.leftovers[proc.role] = survivors
        return self.leftovers


@contextmanager
def standalone_cluster(root: str | Path, *, workers: int = 2, cores: int = 1, memory: str = "2g",
                       start_timeout_s: float = 120, python: str = sys.executable,
                       daemon_memory: str = "512m") -> Iterator[StandaloneCluster]:
    """Start a master and ``workers`` workers under ``root``, yield the running cluster, always stop it.

    Parameters
    ----------
    root
        Folder for the daemons' own directories (``master/``, ``worker-0/``, ...: logs, ``work/`` with the executors'
        stdout/stderr, ``local/`` scratch). Each worker gets its own, as separate machines would.
    workers, cores, memory
        Workers to start and what each offers to applications (``--cores``, ``--memory``).
    start_timeout_s
        How long to wait for every worker to register with the master.
    python
        Interpreter for Python workers on the executors (and drivers submitted through :meth:`StandaloneCluster.submit`).
    daemon_memory
        Heap of the master and worker daemons themselves (``SPARK_DAEMON_MEMORY``); they only coordinate.

    On exit -- normal or by exception -- every session started here is stopped; if processes survive that,
    :class:`ClusterError` is raised (unless the body already raised, whose error is then kept).
    """
    root = Path(root).resolve()
    master_dir = root / "master"
    # The daemons only coordinate: the JVM's quick compiler (C1) is enough, and C2's compile threads would take CPU
    # from the executors on a 2-core machine.
    env = spark_env(python, {"SPARK_DAEMON_MEMORY": daemon_memory,
                             "SPARK_DAEMON_JAVA_OPTS": "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=256m"})
    master_port, master_ui = free_port(), free_port()
    master = _start_daemon("master", [str(SPARK_HOME / "bin" / "spark-class"), MASTER_CLASS, "--host", "127.0.0.1",
                                      "--port", str(master_port), "--webui-port", str(master_ui)],
                           master_dir, dict(env, SPARK_LOCAL_DIRS=str(master_dir / "local")), master_port, master_ui)
    cluster = StandaloneCluster(root, master, [], env, cores, memory, python)
    body_failed = True
    try:
        for i in range(workers):
            cluster.workers.append(cluster._start_worker(i))
        cluster.wait_until_registered(start_timeout_s)
        yield cluster
        body_failed = False
    finally:
        leftovers = cluster.stop()
        if leftovers and not body_failed:
            raise ClusterError(f"processes survived stopping the cluster: {leftovers}")
