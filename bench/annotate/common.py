"""What the annotation benchmarks share: load and CPU reporting, tables, the config, the phase clock, child processes.

* **Load and CPU.** The machine is shared, so every timing is printed next to the load average (:func:`load_label`);
  CPU seconds of the JVM behind a local session (:func:`jvm_process`, :func:`cpu_seconds`) let a ratio be read in
  CPU time too, which other tenants' load moves much less than wall time.
* **Tables** are printed by ``tabulate`` (:func:`bench.tables.print_table`, shared with the other benches): the cells
  are the strings the measures format, never re-parsed as numbers.
* **The phase clock** (:class:`PhaseClock`, :func:`instrument`) times the building blocks of
  ``AnnotateBatches.annotate`` by wrapping the calls the UDF makes, the same way in a Spark worker, a bare process
  and the memory child.
* **Child processes** (:func:`run_child`) run ``python -m bench.bench_annotate`` with a hidden child command, so
  that every measure starts from a fresh interpreter (a fresh JVM, a fresh peak RSS).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[2]
#: The building blocks ``AnnotateBatches.annotate`` calls, timed by :func:`instrument` (same wrappers on both sides).
PHASES = ("decode", "faces", "expression", "context")
PHASE_NAMES = {
    "decode": "decode: cxatlas.media.video.sample_windows",
    "faces": "faces: MTCNN detection + tracking + crops (detector.face_windows)",
    "expression": "expression model: predict_windows",
    "context": "context model: context.score (+ context frames)",
}


# ------------------------------------------------------------------------------------------------ load and CPU time
def load_label() -> str:
    """``os.getloadavg`` as text: the machine is shared, so every timing is printed next to the load it ran under."""
    one, five, fifteen = os.getloadavg()
    return f"load avg {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores"


def jvm_process(spark: Any) -> Any:
    """The JVM behind this local session (the gateway's launcher execs into java), for CPU accounting."""
    import psutil

    proc = psutil.Process(spark.sparkContext._gateway.proc.pid)
    javas = [p for p in [proc, *proc.children(recursive=True)] if "java" in p.name()]
    return javas[0] if javas else proc


def cpu_seconds(proc: Any) -> float:
    """User + system CPU seconds of a ``psutil.Process`` so far."""
    times = proc.cpu_times()
    return times.user + times.system


def verdict(ratio: float, target: float) -> str:
    return f"{'MEETS' if ratio >= target else 'MISSES'} target >= {target:g}"


# ----------------------------------------------------------------------------------------------------------- config
def load_cfg(args: argparse.Namespace, extra: Sequence[str] = (), data_root: str | None = None):
    """The config ``cxatlas`` would use with these ``--conf`` / ``--set`` options (plus ``extra`` overrides)."""
    from cxatlas.core.config import load_config

    return load_config(args.conf, data_root=data_root, overrides=[*args.set, *extra])


def annotate_settings(args: argparse.Namespace):
    """The executors' settings (:class:`cxatlas.core.settings.AnnotateSettings`), as ``run_annotate`` reads them."""
    return load_cfg(args).settings.annotate


# ------------------------------------------------------------------------------------------- phase instrumentation
class PhaseClock:
    """Seconds spent in each building block of ``AnnotateBatches.annotate``, accumulated in this process.

    Wrapping the calls (not copying the UDF's code) keeps the measured work exactly the job's: the UDF still makes
    every call itself, in its own order; each wrapper only adds two ``perf_counter`` reads. ``after`` (optional) is
    called as ``after(phase, result)`` after each call (the memory part samples peak RSS there).
    """

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.crops = 0  # face crops (frames) given to the expression model
        self.after: Callable[[str, Any], None] | None = None

    def timed(self, phase: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - started
            if phase == "expression" and args:
                self.crops += sum(len(w) for w in args[0])
            if self.after is not None:
                self.after(phase, result)
            return result

        return wrapper

    def snapshot(self) -> dict[str, float]:
        return {**self.seconds, "crops": float(self.crops)}

    def since(self, before: dict[str, float]) -> dict[str, float]:
        now = self.snapshot()
        return {k: now[k] - before[k] for k in now}


_CLOCK: PhaseClock | None = None


def instrument(models: Any) -> PhaseClock:
    """Time the UDF's building blocks in this process (idempotent): ``cxatlas.media.video.sample_windows`` (looked up
    by the UDF at call time), ``udfs.annotate._context_frames``, and the methods of this ``AnnotationModels``."""
    global _CLOCK
    import cxatlas.media.video as video
    import cxatlas.udfs.annotate as udf_module

    if _CLOCK is None:
        _CLOCK = PhaseClock()
        video.sample_windows = _CLOCK.timed("decode", video.sample_windows)
        udf_module._context_frames = _CLOCK.timed("context", udf_module._context_frames)
    if not getattr(models, "_bench_timed", False):
        models.detector.face_windows = _CLOCK.timed("faces", models.detector.face_windows)
        models.expression.predict_windows = _CLOCK.timed("expression", models.expression.predict_windows)
        models.context.score = _CLOCK.timed("context", models.context.score)
        models._bench_timed = True
    return _CLOCK


# -------------------------------------------------------------------------------------------------- child processes
def child_env() -> dict[str, str]:
    """Children, their Spark Python workers and their spawned processes must import ``bench`` by its real name."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    return env


def common_child_args(args: argparse.Namespace) -> list[str]:
    """The ``--conf`` / ``--set`` options again, for a child."""
    out = []
    if args.conf:
        out += ["--conf", str(args.conf)]
    for item in args.set:
        out += ["--set", item]
    return out


def run_child(argv: list[str], timeout: float, stream: bool = False) -> dict:
    """Run ``python -m bench.bench_annotate <argv>``; return the JSON after its ``RESULT`` line.

    ``stream``: the child prints its own report straight to this terminal; nothing is returned.
    """
    cmd = [sys.executable, "-m", "bench.bench_annotate", *argv]
    if stream:
        sys.stdout.flush()
        proc = subprocess.run(cmd, cwd=REPO, env=child_env(), timeout=timeout)
        if proc.returncode:
            raise RuntimeError(f"child {argv[0]} failed (rc {proc.returncode})")
        return {}
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"child {argv[0]} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
