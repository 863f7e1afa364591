"""The driver JVM's class-data-sharing archive (issue #25, JVM start): ``make install`` builds it for this classpath
and JDK, every session maps Spark's and Delta's classes from it, and a classpath it was not made for never gets it."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from cxatlas.core.config import load_config
from cxatlas.warehouse import class_archive
from cxatlas.warehouse.spark import session_conf

DRIVER = """
import sys
from cxatlas.core.config import load_config
from cxatlas.warehouse.spark import build_spark
base = load_config(data_root=sys.argv[1])
options = base.settings.spark.conf["spark.driver.extraJavaOptions"]
cfg = load_config(data_root=sys.argv[1], overrides=[
    "catalog.metastore=embedded",
    f"spark.conf.spark.driver.extraJavaOptions={options} -Xshare:on -Xlog:class+load=info:file={sys.argv[2]}"])
spark = build_spark(cfg)  # loads io.delta.tables.DeltaTable (require_delta)
spark.range(3).write.format("delta").save(sys.argv[1] + "/t")
spark.stop()
"""


def test_a_driver_maps_spark_and_delta_classes_from_the_archive_make_install_built(tmp_path):
    jars_dir = load_config().settings.spark.jars_dir
    archive = class_archive.archive_path(jars_dir)
    assert archive is not None and archive.is_file(), f"no class archive at {archive}: `make install` builds it"
    log = tmp_path / "classes.log"
    # -Xshare:on: a JVM that cannot map the archive (another classpath or JDK) refuses to start, failing the driver.
    out = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "data"), str(log)], capture_output=True,
                         text=True, timeout=300, env=os.environ)
    assert out.returncode == 0, out.stderr[-3000:]
    sources = dict(re.findall(r"\] (\S+) source: (.+)$", log.read_text(), re.M))
    top = {name for name, source in sources.items() if source == "shared objects file (top)"}
    assert "io.delta.tables.DeltaTable" in top and "org.apache.spark.sql.delta.DeltaLog" in top
    assert "org.apache.spark.SparkContext" in top
    assert len(top) > 0.5 * len(sources), (len(top), len(sources))  # most classes come pre-parsed from the archive


def test_an_archive_is_used_only_for_the_classpath_and_setting_it_was_made_for(tmp_path):
    cfg = load_config()
    jars_dir = cfg.settings.spark.jars_dir
    option = class_archive.java_option(jars_dir)
    assert option == f"-XX:SharedArchiveFile={class_archive.archive_path(jars_dir)}"
    assert option in session_conf(load_config(overrides=["catalog.metastore=embedded"]))["spark.driver.extraJavaOptions"]
    off = session_conf(load_config(overrides=["catalog.metastore=embedded", "spark.class_archive=false"]))
    assert "SharedArchiveFile" not in off["spark.driver.extraJavaOptions"]
    assert "SharedArchiveFile" not in off["spark.executor.extraJavaOptions"]  # executors have another classpath

    # The same jars in another folder: another classpath, so another archive name; a jar more: another again.
    other = tmp_path / "jars"
    shutil.copytree(jars_dir, other, ignore=shutil.ignore_patterns(class_archive.SUBDIR))
    assert class_archive.java_option(str(other)) == ""
    made = class_archive.archive_path(str(other))
    made.parent.mkdir()
    made.write_bytes(b"")  # as if built for this folder
    assert class_archive.java_option(str(other)) == f"-XX:SharedArchiveFile={made}"
    (other / "extra.jar").write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip
    assert class_archive.java_option(str(other)) == ""
