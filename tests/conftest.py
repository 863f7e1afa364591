"""Shared fixtures: ONE local Spark session for the whole run (starting a JVM costs seconds), real Delta tables in
per-test folders, and the packaged config pointed at them.

Layout: a test file lives in the folder that mirrors what it tests (``tests/core/``, ``warehouse/``, ``stages/``,
``stats/``, ``media/``, ``sim/``, ``compat/``, ``cli/`` for ``cxatlas/<part>/``; ``tests/models/`` for ``models/``);
a test of the whole project (architecture, packaging, notebooks, schedules, the cluster deployment) stays at the top
of ``tests/``, beside the helpers that are not tests (this file, ``hooks/``, the harnesses, ``durations.json``).
Every test file's basename is unique across the folders: ``durations.json`` is keyed by basename (see below)."""
from __future__ import annotations

import hashlib
import os
import socket
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TEST_SPARK_CONF = [
    "spark.master=local[2]",
    "spark.conf.spark.sql.shuffle.partitions=4",
    "spark.conf.spark.driver.memory=2g",
    "ingest.partitions=4",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Every process of this test run -- this one and every `cxatlas` subprocess a test starts -- shares ONE Derby
# metastore (catalog.metastore_root: a folder of this run, holding its database and its server's record) on a port of
# its own (an overlay config in $CXATLAS_CONF), which the session fixture stops at the end. Tests of the per-data-root
# design set catalog.metastore_root=null and stop what they start.
_OVERLAY = Path(tempfile.mkdtemp(prefix="cxatlas-tests-")) / "tests.yaml"
_OVERLAY.write_text(f"catalog:\n  derby_port: {_free_port()}\n  metastore_root: {_OVERLAY.parent / 'catalog'}\n")
os.environ["CXATLAS_CONF"] = str(_OVERLAY)
os.environ["CXATLAS_DERBY_HOME"] = str(_OVERLAY.parent / "derby")


def database_for(data_root: Path) -> str:
    """One catalog database per test data root: the test session shares ONE Spark session, hence one metastore, while
    every test writes its own tables (in production a data root has its own metastore and the database 'cxatlas')."""
    return "t_" + hashlib.sha1(str(Path(data_root).resolve()).encode()).hexdigest()[:12]


def make_config(data_root: Path, *overrides: str):
    from cxatlas.core.config import load_config

    return load_config(data_root=str(data_root), overrides=[*TEST_SPARK_CONF, f"catalog.database={database_for(data_root)}",
                                                            *overrides])


def cli_args(cfg) -> list[str]:
    """``--data`` and ``--set catalog.database`` for a CLI call over ``cfg``'s tables inside the test process."""
    return ["--data", cfg.data_root, "--set", f"catalog.database={cfg.settings.catalog.database}"]


@pytest.fixture(scope="session", autouse=True)
def metastore_server():
    """The test run's Derby metastore server (its port is this run's own, see above), stopped when the run ends,
    whoever started it: this fixture, a CLI subprocess or a spark-submit driver."""
    from cxatlas.core.config import load_config
    from cxatlas.warehouse.metastore import ensure_server, stop_server

    cfg = load_config()
    ensure_server(cfg.data_root, cfg.settings.catalog, cfg.settings.spark.jars_dir)
    yield
    stop_server(cfg.data_root, cfg.settings.catalog, cfg.settings.spark.jars_dir)


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from cxatlas.warehouse.spark import build_spark

    session = build_spark(make_config(tmp_path_factory.mktemp("spark-data")), "-tests")
    yield session
    session.stop()


@pytest.fixture
def inject_faults(monkeypatch):
    """``inject_faults("video_id", "context:video_id", ...)``: the expression (or context) model call of a batch
    holding one of these videos raises (``tests/faults.py``) in every annotate job this test runs, until it ends;
    returns the faulty ``AnnotateBatches`` class for a test that calls it directly."""
    from tests.faults import faulty_batches

    def inject(*ids: str) -> type:
        batches = faulty_batches(*ids)
        monkeypatch.setattr("cxatlas.stages.annotate.AnnotateBatches", batches)
        return batches

    return inject


@pytest.fixture
def cfg(tmp_path):
    return make_config(tmp_path / "data")


@pytest.fixture
def store(spark, cfg):
    from cxatlas.warehouse.tables import TableStore

    return TableStore.from_config(spark, cfg)


# `make test` runs the suite on two pytest-xdist workers with `--dist loadfile` (a file's module fixtures are built
# once, on one worker). With --no-loadscope-reorder workers take files in collection order, so the files that take
# minutes go first: otherwise (xdist's default puts files with many tests first) one worker ends the run alone on
# the longest files while the other idles. The order comes from measured durations (tests/durations.json: seconds
# per file, setup and teardown included), which a run records when $CXATLAS_RECORD_DURATIONS names a file:
#   CXATLAS_RECORD_DURATIONS=tests/durations.json make test
# A file not in it (a new one) goes first: it is as likely to be long as any, and first is where a long file costs
# nothing.
DURATIONS = Path(__file__).with_name("durations.json")
_measured: dict[str, float] = {}


def file_durations() -> dict[str, float]:
    import json

    return json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}


def pytest_collection_modifyitems(config, items):
    seconds = file_durations()
    longest = max(seconds.values(), default=0.0) + 1.0
    items.sort(key=lambda item: -seconds.get(item.path.name, longest))  # stable: order within a file is kept


def pytest_runtest_logreport(report):
    """Add up each file's setup, call and teardown time (on the xdist controller, which gets every report)."""
    if os.environ.get("CXATLAS_RECORD_DURATIONS"):
        name = report.nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
        _measured[name] = _measured.get(name, 0.0) + report.duration


def pytest_sessionfinish(session, exitstatus):
    out = os.environ.get("CXATLAS_RECORD_DURATIONS")
    if out and _measured and not hasattr(session.config, "workerinput"):  # the controller (or a run without -n)
        import json

        Path(out).write_text(json.dumps({k: round(v, 1) for k, v in sorted(_measured.items(), key=lambda kv: -kv[1])},
                                        indent=1) + "\n")
