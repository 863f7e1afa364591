"""One place that builds the SparkSession from config, for the CLI, spark-submit jobs and tests alike.

Every session has Delta Lake (its jars from ``spark.jars_dir``, which ``make install`` fills from Maven Central, or
from ``spark-submit --packages`` on a cluster) and a persistent Hive catalog (``catalog.*``: by default a Derby
metastore under the data root, served by Derby's network server so several processes can use it at once).
"""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from cxatlas.core.config import Config, join_uri, packaged_conf_dir
from cxatlas.core.errors import UserError
from cxatlas.warehouse.class_archive import java_option as class_archive_option, local_jars
from cxatlas.warehouse.metastore import MetastoreServer, ensure_server, metastore_conf, server_of

log = logging.getLogger(__name__)
DELTA_CLASS = "io.delta.tables.DeltaTable"
#: Rows per Arrow batch handed to ``mapInPandas``: the jobs whose UDF batches a few heavy rows (videos, stimuli) set it
#: around their own write with :func:`scoped_conf`.
ARROW_BATCH = "spark.sql.execution.arrow.maxRecordsPerBatch"


#: Environment variable the command line sets from ``-v``/``-q`` (INFO/ERROR); when unset, ``spark.log_level``.
LOG_LEVEL_ENV = "CXATLAS_LOG_LEVEL"


def log4j_config_path() -> str:
    """The packaged log4j2 configuration (``cxatlas/conf/log4j2.properties``)."""
    return str(packaged_conf_dir() / "log4j2.properties")


def jvm_log_level(cfg: Config) -> str:
    """The JVM's root log level: ``$CXATLAS_LOG_LEVEL`` (the command line's ``-v``/``-q``) or ``spark.log_level``."""
    return (os.environ.get(LOG_LEVEL_ENV) or cfg.settings.spark.log_level).upper()


def java_log_options(cfg: Config) -> str:
    """The JVM options that make the driver and the executors log with the packaged log4j2.properties."""
    return f"-Dlog4j2.configurationFile=file:{log4j_config_path()} -Dcxatlas.log.level={jvm_log_level(cfg).lower()}"


def session_conf(cfg: Config, server: MetastoreServer | None = None) -> dict[str, str]:
    """Everything the session is built with: ``spark.conf``, the local jars, the catalog settings (``server``:
    the data root's metastore server; default: the one recorded under the data root), the log4j2 configuration and
    the driver's class archive (:mod:`cxatlas.warehouse.class_archive`), before any ``extraJavaOptions`` of
    ``spark.conf``, so the user's own options come last and win."""
    s = cfg.settings
    conf = {key: (str(value).lower() if isinstance(value, bool) else str(value))
            for key, value in s.spark.conf.items() if value is not None}
    archive = class_archive_option(s.spark.jars_dir) if s.spark.class_archive else ""
    for key, first in (("spark.driver.extraJavaOptions", archive), ("spark.executor.extraJavaOptions", "")):
        conf[key] = " ".join(filter(None, [java_log_options(cfg), first, conf.get(key, "")]))
    jars = local_jars(s.spark.jars_dir)
    if jars:
        conf["spark.jars"] = ",".join([*jars, *filter(None, conf.get("spark.jars", "").split(","))])
        # The metastore's JDBC driver must be visible to the driver's own class loader, not only to Spark's.
        conf["spark.driver.extraClassPath"] = os.pathsep.join(
            [*jars, *filter(None, conf.get("spark.driver.extraClassPath", "").split(os.pathsep))])
    if server is None and s.catalog.metastore == "derby-server":
        server = server_of(cfg.data_root, s.catalog)
    conf.update(metastore_conf(cfg.data_root, s.catalog, join_uri(cfg.data_root, s.catalog.warehouse_dir), server))
    return conf


def build_spark(cfg: Config, app_suffix: str = ""):
    """Get or create the session described by ``cfg``.

    Under spark-submit the master and resources come from the command line and win: ``spark.master`` in the
    config is only applied when nothing set one. Python workers use the driver's interpreter unless
    ``PYSPARK_PYTHON`` says otherwise, so the local default never picks up a different Python by accident.
    """
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    s = cfg.settings.spark
    server = None
    if cfg.settings.catalog.metastore == "derby-server":
        server = ensure_server(cfg.data_root, cfg.settings.catalog, s.jars_dir)
    builder = SparkSession.builder.appName(f"{s.app_name}{app_suffix}")
    if os.environ.get("PYSPARK_GATEWAY_PORT"):
        # Under spark-submit the JVM already holds the command line's settings; start the gateway first so
        # SparkConf() below sees them and the config file never overrides what the user typed.
        SparkContext._ensure_initialized()
    existing = SparkConf()
    if s.master and not existing.contains("spark.master"):
        builder = builder.master(str(s.master))
    for key, value in session_conf(cfg, server).items():
        if not existing.contains(key):
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(jvm_log_level(cfg))
    require_delta(spark, s.jars_dir)
    return spark


def require_delta(spark, jars_dir: str | None) -> None:
    """Refuse to go on without Delta Lake's classes, saying how to get them."""
    try:
        spark.sparkContext._jvm.java.lang.Class.forName(DELTA_CLASS)
    except Exception:  # noqa: BLE001 - py4j wraps ClassNotFoundException in its own error types
        raise UserError(f"Delta Lake's jars are not on Spark's classpath (looked in spark.jars_dir={jars_dir}): run "
                        f"`make jars`, or pass spark-submit --packages io.delta:delta-spark_2.13:<version> "
                        f"(conf/jars.txt)") from None


@contextmanager
def scoped_conf(spark, settings: Mapping[str, Any]) -> Iterator[None]:
    """Set session conf keys for the ``with`` block only; afterwards each key is as it was (its previous value, or
    unset when it was not set), whatever the block raised.

    Why: the session outlives every job (the CLI runs several commands in one, tests share one, a notebook keeps
    its own), so a job that left e.g. ``spark.sql.execution.arrow.maxRecordsPerBatch`` at its own value would
    override the user's for whatever runs next.
    """
    previous = {key: spark.conf.get(key, None) for key in settings}  # None: not set in this session
    try:
        for key, value in settings.items():
            spark.conf.set(key, str(value).lower() if isinstance(value, bool) else str(value))
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def remove_path(spark, uri: str) -> None:
    """Delete a folder (local path or any Hadoop URI) through Spark's Hadoop file system, if it exists."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if fs.exists(path):
        fs.delete(path, True)
