"""Shared fixtures: ONE local Spark session for the whole run (starting a JVM costs seconds), real Delta tables in
per-test folders, and the packaged config pointed at them."""
from __future__ import annotations

import os
import sys
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


def make_config(data_root: Path, *overrides: str):
    from cxatlas.core.config import load_config

    return load_config(data_root=str(data_root), overrides=[*TEST_SPARK_CONF, *overrides])


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from cxatlas.core.spark import build_spark

    cfg = make_config(tmp_path_factory.mktemp("spark-data"))
    session = build_spark(cfg, "-tests")
    yield session
    session.stop()


@pytest.fixture
def cfg(tmp_path):
    return make_config(tmp_path / "data")


@pytest.fixture
def store(spark, cfg):
    from cxatlas.core.tables import TableStore

    return TableStore.from_config(spark, cfg)
