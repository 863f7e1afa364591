"""A class-data-sharing archive of the driver JVM's classes: every cxatlas process starts its JVM faster (issue #25).

Why: every command (and every scheduled run, notebook kernel and test subprocess) starts a Spark driver JVM that
reads, parses and verifies some 20,000 classes of Spark, Delta Lake and the Hive metastore client before its first
commit. The JDK's application class-data sharing (JEP 350, dynamic archives, JDK 13+) maps them pre-parsed and
pre-verified from a file instead. Measured here (2 cores; `cxatlas reprocess` of an empty manifest folder, the fixed
cost of a scheduled run): 42.6 s and 42.1 s wall (49 and 47 CPU-s, every process) without the archive, 37.9 s and
36.4 s (44 and 42 CPU-s) with it.

How: ``make install`` runs ``python -m cxatlas.warehouse.class_archive_build``, which starts a driver exactly as every
command does, plus ``-XX:ArchiveClassesAtExit``, runs a small warm-up
(:func:`cxatlas.warehouse.class_archive_build.warm_up`: Delta create, MERGE, DELETE, history, a read, a Python UDF
over Arrow, the catalog), and keeps what the JVM dumps when it exits.
:func:`java_option` then adds ``-XX:SharedArchiveFile`` to the driver's options (:func:`cxatlas.warehouse.spark.
session_conf`), only when ``spark.class_archive`` is on and an archive made for THIS classpath and JVM exists: the
file name carries a fingerprint of both (:func:`fingerprint`), so a new jar, a moved checkout or another JDK finds no
archive and starts as before (never a wrong archive; the JVM would also refuse one whose classpath differs).
A class the warm-up did not load is loaded from its jar as usual: the archive only speeds things up.
"""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
from pathlib import Path

SUBDIR = "class-archive"


def local_jars(jars_dir: str | None) -> list[str]:
    """The jars of ``spark.jars_dir`` (Delta's, Derby's network client, the SQL guard): on the driver's classpath."""
    return sorted(glob.glob(os.path.join(jars_dir, "*.jar"))) if jars_dir else []


def java_binary() -> str | None:
    """The ``java`` that pyspark's launcher runs: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    return os.path.join(home, "bin", "java") if home else shutil.which("java")


def spark_jars() -> list[Path]:
    """The jars of the Spark the driver runs (``$SPARK_HOME/jars``, by default pip's pyspark)."""
    from pyspark.find_spark_home import _find_spark_home

    return sorted(Path(_find_spark_home(), "jars").glob("*.jar"))


def fingerprint(jars_dir: str | None) -> str | None:
    """What an archive is valid for: the JVM (its binary and libjvm, by path, size and time) and the driver's
    classpath (every jar, by path and size). None when there is no ``java``."""
    java = java_binary()
    if not java:
        return None
    real = Path(os.path.realpath(java))
    parts = [str(real)]
    for lib in (real.parent.parent / "lib" / "server" / "libjvm.so", real):
        if lib.exists():
            st = lib.stat()
            parts.append(f"{lib}:{st.st_size}:{int(st.st_mtime)}")
    for jar in [*map(Path, local_jars(jars_dir)), *spark_jars()]:
        parts.append(f"{jar.resolve()}:{jar.stat().st_size}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def archive_path(jars_dir: str | None) -> Path | None:
    """Where the archive for this classpath and JVM lives (``<jars_dir>/class-archive/driver-<fingerprint>.jsa``),
    or None without a local jars folder or a ``java``."""
    if not jars_dir:
        return None
    fp = fingerprint(jars_dir)
    return Path(jars_dir, SUBDIR, f"driver-{fp}.jsa") if fp else None


def java_option(jars_dir: str | None) -> str:
    """``-XX:SharedArchiveFile=...`` when the archive for this classpath and JVM exists, else ``""``."""
    path = archive_path(jars_dir)
    return f"-XX:SharedArchiveFile={path}" if path is not None and path.is_file() else ""
