"""Building the driver JVM's class archive (:mod:`cxatlas.warehouse.class_archive` says why): ``make install`` runs
``python -m cxatlas.warehouse.class_archive_build``, which does nothing when the archive for this classpath and JVM
exists, else starts a driver like every command's plus ``-XX:ArchiveClassesAtExit``, warms it up, and keeps the file
the JVM writes when it exits (renamed into place whole, so a process starting meanwhile sees none or all of it)."""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cxatlas.warehouse.class_archive import archive_path
from cxatlas.warehouse.lease import pid_alive

EXIT_WAIT_S = 180.0  # the JVM writes the archive after its Python driver exits: about 5 s for ~200 MB here


def warm_up(spark, store) -> None:
    """The work every command starts with, so that its classes go into the archive: a Delta table created and
    named in the catalog, MERGEs (insert, update), a DELETE, its history, a read, and a pandas UDF over Arrow."""
    from cxatlas.warehouse.lease import Lease

    lease = Lease(store, "class-archive", "warm-up", ttl_seconds=60)
    lease.acquire()
    lease.renew()
    lease.current()
    lease.release()
    df = spark.range(100).selectExpr("id", "cast(id % 7 as string) AS k")
    doubled = df.mapInPandas(lambda batches: (b.assign(id=b["id"] * 2) for b in batches), df.schema)
    doubled.groupBy("k").count().collect()


def _dump(target: Path) -> None:
    """Run in a child process: a driver JVM started like every command's, which writes ``target`` when it exits."""
    from cxatlas.core.config import load_config
    from cxatlas.warehouse.spark import build_spark
    from cxatlas.warehouse.tables import TableStore

    with tempfile.TemporaryDirectory(prefix="cxatlas-class-archive-") as root:
        base = load_config(data_root=root)
        options = base.settings.spark.conf.get("spark.driver.extraJavaOptions") or ""
        cfg = load_config(data_root=root, overrides=[
            "catalog.metastore=embedded", "spark.class_archive=false",
            f"spark.conf.spark.driver.extraJavaOptions={options} -XX:ArchiveClassesAtExit={target}"])
        spark = build_spark(cfg, "-class-archive")
        print(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid(), flush=True)
        warm_up(spark, TableStore.from_config(spark, cfg))
        spark.stop()


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.time() + timeout
    while pid_alive(pid):
        if time.time() > deadline:
            return False
        time.sleep(0.5)
    return True


def build(jars_dir: str | None) -> Path | None:
    """Make the archive for this classpath and JVM unless it exists (older ones of this folder are removed).
    Returns its path; None when there is nothing to archive for (no local jars folder, no ``java``)."""
    path = archive_path(jars_dir)
    if path is None or path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    out = subprocess.run([sys.executable, "-m", "cxatlas.warehouse.class_archive_build", "--dump", str(partial)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the warm-up driver failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    pid = int(out.stdout.split()[0])
    if not _wait_gone(pid, EXIT_WAIT_S) or not partial.is_file():
        raise RuntimeError(f"the driver JVM (pid {pid}) wrote no class archive at {partial}:\n{out.stderr[-3000:]}")
    for old in path.parent.glob("driver-*.jsa"):
        old.unlink()
    partial.rename(path)  # atomic: a process starting now sees no archive or a whole one
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxatlas.warehouse.class_archive_build", description=(
        "Build the class-data-sharing archive of the driver JVM (spark.class_archive) for this classpath and JVM, "
        "in <spark.jars_dir>/class-archive/, unless it exists. make install runs this."))
    parser.add_argument("--dump", metavar="FILE", help=argparse.SUPPRESS)  # the child process of build()
    args = parser.parse_args(argv)
    if args.dump:
        _dump(Path(args.dump))
        return 0
    from cxatlas.core.config import load_config

    jars_dir = load_config().settings.spark.jars_dir
    started = time.time()
    path = archive_path(jars_dir)
    if path is None:
        print("class archive: none (no spark.jars_dir or no java)")
        return 0
    if path.is_file():
        how = "present"
    else:
        build(jars_dir)
        how = f"built in {time.time() - started:.0f}s"
    print(f"class archive: {path} ({path.stat().st_size / 2**20:.0f} MiB, {how})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
