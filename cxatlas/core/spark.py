"""One place that builds the SparkSession from config, for the CLI, spark-submit jobs and tests alike."""
from __future__ import annotations

import logging
import os
import sys

from cxatlas.core.config import Config

log = logging.getLogger(__name__)


def build_spark(cfg: Config, app_suffix: str = ""):
    """Get or create the session described by ``cfg['spark']``.

    Under spark-submit the master and resources come from the command line and win: ``spark.master`` in the
    config is only applied when nothing set one. Python workers use the driver's interpreter unless
    ``PYSPARK_PYTHON`` says otherwise, so the local default never picks up a different Python by accident.
    """
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    section = cfg.settings.spark
    builder = SparkSession.builder.appName(f"{section.app_name}{app_suffix}")
    if os.environ.get("PYSPARK_GATEWAY_PORT"):
        # Under spark-submit the JVM already holds the command line's settings; start the gateway first so
        # SparkConf() below sees them and the config file never overrides what the user typed.
        SparkContext._ensure_initialized()
    existing = SparkConf()
    master = section.master
    if master and not existing.contains("spark.master"):
        builder = builder.master(str(master))
    for key, value in section.conf.items():
        if value is None or existing.contains(key):
            continue
        builder = builder.config(key, str(value).lower() if isinstance(value, bool) else str(value))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(section.log_level)
    return spark
