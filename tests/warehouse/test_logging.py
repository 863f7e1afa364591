"""Logging: the packaged conf/log4j2.properties silences the JVM at the default level (no Python filter does it),
and -v / -q mean the same for every command. Real commands through the console entry point, real Spark."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from cxatlas.core.config import load_config
from cxatlas.warehouse.class_archive import java_option as class_archive_option
from cxatlas.warehouse.spark import java_log_options, log4j_config_path, session_conf

#: A line log4j wrote (our pattern and Spark's default one alike), or Spark's start-up banner.
LOG4J_LINE = re.compile(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d (TRACE|DEBUG|INFO|WARN|ERROR|FATAL) |log4j|"
                        r"Setting default log level|sc\.setLogLevel")


def cxatlas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxatlas.cli", *args], capture_output=True, text=True, timeout=600)


def test_packaged_config_reaches_driver_and_executors(tmp_path):
    cfg = load_config(None, data_root=str(tmp_path), overrides=[
        "spark.conf.spark.executor.extraJavaOptions=-Dmine=1"])
    assert Path(log4j_config_path()).is_file()
    conf = session_conf(cfg)
    # the packaged default's own driver option (local.yaml: C1 only) comes after the log options and the driver's
    # class archive (cxatlas.warehouse.class_archive) too
    archive = class_archive_option(cfg.settings.spark.jars_dir)
    assert conf["spark.driver.extraJavaOptions"] == " ".join(filter(None, [
        java_log_options(cfg), archive, "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=256m"]))
    assert conf["spark.executor.extraJavaOptions"] == java_log_options(cfg) + " -Dmine=1"  # the user's come last
    assert f"-Dlog4j2.configurationFile=file:{log4j_config_path()}" in java_log_options(cfg)


def test_default_level_prints_no_log4j_line_and_verbose_shows_the_jvm(tmp_path):
    data = str(tmp_path / "data")
    done = cxatlas("--data", data, "sql", "SELECT 41 + 1 AS answer", "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["answer", "42"]
    jvm = [line for line in done.stderr.splitlines() if LOG4J_LINE.search(line)]
    assert not jvm, f"log4j lines at the default level: {jvm}"
    loud = cxatlas("-v", "--data", data, "sql", "SELECT 1 AS one", "--format", "csv")
    assert loud.returncode == 0, loud.stderr
    assert re.search(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d INFO SparkContext: ", loud.stderr, re.M), loud.stderr[-2000:]
