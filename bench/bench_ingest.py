"""Ingest throughput on Delta Lake: rows/s of ``cxatlas ingest`` against plain Spark doing the least possible work.

The Delta Lake issue's budget: ingesting a manifest of 1,000,000 rows runs at no less than half the speed of plain
Spark reading the same CSV and writing it as Parquet on the same cores (ratio >= 0.5). ``ingest`` does much more
per row (validation, geography checks against GeoNames in a pandas UDF, geobins, deduplication by upload_time, a
MERGE into ``uploads``, quarantine), so this shows what that costs. Prints; asserts nothing.

Beside the ratio it prints where ingest's time went (``IngestReport.stage_seconds``: reading the manifest's header,
the tables, validating and classifying every row, the ``uploads`` MERGE, the quarantine), and, for both sides, the CPU
seconds and the peak resident memory of the whole process tree (driver, JVM, Python workers), sampled by a thread
every 0.2 s: CPU time is what a busy machine distorts least, so compare runs by it when the load average differs.

    .venv/bin/python -m bench.bench_ingest --rows 1000000
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CITIES = [("48.8566", "2.3522", "FR"), ("-23.55", "-46.63", "BR"), ("35.68", "139.69", "JP"),
          ("40.71", "-74.01", "US"), ("19.08", "72.88", "IN"), ("6.52", "3.37", "NG"), ("52.52", "13.40", "DE")]
COLUMNS = ["video_id", "uri", "lat", "lon", "country", "upload_time", "title", "description"]


def write_manifest(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for i in range(rows):
            lat, lon, country = CITIES[i % len(CITIES)]
            writer.writerow([f"v{i:08d}", f"/videos/{i}.mp4", f"{float(lat) + rng.uniform(-0.05, 0.05):.5f}",
                             f"{float(lon) + rng.uniform(-0.05, 0.05):.5f}", country, "2021-06-01T12:00:00Z",
                             "Wedding party", "the bride and groom"])


class TreeSampler:
    """CPU seconds (user + system) and peak summed RSS of this process and all its descendants (the JVM, Python
    workers), sampled every ``interval`` seconds in a thread; a process's CPU is its last value seen."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self.proc, self.interval = psutil.Process(), interval
        self.peak_rss = 0
        self.peak_parts: dict[str, int] = {}
        self._start: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _procs(self):
        """This process and its descendants, less a JVM's processes caught while it spawns a command (Hadoop's
        local file system runs chmod and stat): until the exec they share the JVM's memory and show its command line,
        and counting them would count the JVM twice."""
        import psutil

        procs = [self.proc]
        for p in self.proc.children(recursive=True):
            try:
                cmd, parent = p.cmdline(), p.parent()
                if any("jspawnhelper" in part for part in cmd) or (parent is not None and "java" in parent.name()
                                                                   and cmd == parent.cmdline()):
                    continue
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            procs.append(p)
        return procs

    def _sample(self, into: dict[int, float]) -> None:
        import psutil

        parts: dict[str, int] = {}
        for p in self._procs():
            try:
                t = p.cpu_times()
                into[p.pid] = t.user + t.system
                kind = ("driver" if p.pid == self.proc.pid else "metastore server" if "NetworkServerControl" in
                        " ".join(p.cmdline()) else "jvm" if "java" in p.name() else "python workers")
                parts[kind] = parts.get(kind, 0) + p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        if sum(parts.values()) > self.peak_rss:
            self.peak_rss, self.peak_parts = sum(parts.values()), parts

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample(self._last)

    @property
    def cpu_seconds(self) -> float:
        return sum(v - self._start.get(pid, 0.0) for pid, v in self._last.items())

    def __enter__(self) -> "TreeSampler":
        self._sample(self._start)
        self.peak_rss, self.peak_parts = 0, {}
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample(self._last)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workdir", help="keep the manifest and tables here (default: a temporary folder)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)

    from cxatlas.core.config import load_config
    from cxatlas.stages.ingest import run_ingest
    from cxatlas.warehouse.spark import build_spark
    from cxatlas.warehouse.tables import TableStore

    work = Path(args.workdir or tempfile.mkdtemp(prefix="cxatlas-bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    manifest = work / f"manifest-{args.rows}.csv"
    if not manifest.exists():
        write_manifest(manifest, args.rows)
    shutil.rmtree(work / "data", ignore_errors=True)
    cfg = load_config(data_root=str(work / "data"), overrides=args.overrides)
    spark = build_spark(cfg, "-bench-ingest")
    cores = spark.sparkContext.defaultParallelism
    print(f"bench_ingest: {args.rows:,} rows, {cores} cores, load avg {os.getloadavg()[0]:.2f}", flush=True)

    spark.read.option("header", True).csv(str(manifest)).limit(10).collect()  # warm the JVM paths for both sides
    t = time.perf_counter()
    with TreeSampler() as plain_tree:
        (spark.read.option("header", True).option("multiLine", True).option("escape", '"').csv(str(manifest))
         .write.mode("overwrite").parquet(str(work / "plain.parquet")))
    plain = time.perf_counter() - t

    t = time.perf_counter()
    with TreeSampler() as ingest_tree:
        report = run_ingest(spark, cfg, TableStore.from_config(spark, cfg), str(manifest))
    ingest = time.perf_counter() - t
    assert report.reconciles and report.new == args.rows, report.summary()
    ratio = plain / ingest
    print(f"  plain Spark CSV -> Parquet: {plain:7.1f} s  {args.rows / plain:10,.0f} rows/s")
    print(f"  cxatlas ingest (Delta):     {ingest:7.1f} s  {args.rows / ingest:10,.0f} rows/s")
    print(f"  ratio ingest / plain: {ratio:.2f}  ({'MEETS' if ratio >= 0.5 else 'MISSES'} target >= 0.5); "
          f"load avg {os.getloadavg()[0]:.2f}")
    stages = getattr(report, "stage_seconds", None) or {}
    if stages:
        rest = ingest - sum(stages.values())
        print("  ingest stages (IngestReport.stage_seconds): " + ", ".join(
            f"{name} {seconds:.1f} s" for name, seconds in stages.items()) + f"; outside them {rest:.1f} s")
    cpu_plain, cpu_ingest = plain_tree.cpu_seconds, ingest_tree.cpu_seconds
    print(f"  CPU seconds (process tree: driver, JVM, Python workers): plain {cpu_plain:.1f}, ingest {cpu_ingest:.1f}; "
          f"ingest / plain in CPU time {cpu_plain / max(cpu_ingest, 1e-9):.2f}")
    parts = ", ".join(f"{kind} {rss / 2**30:.2f}" for kind, rss in sorted(ingest_tree.peak_parts.items()))
    print(f"  peak RSS of the process tree: plain {plain_tree.peak_rss / 2**30:.2f} GiB, "
          f"ingest {ingest_tree.peak_rss / 2**30:.2f} GiB ({parts}; budget: 4 GiB)", flush=True)
    spark.stop()
    if not args.workdir:  # the data root's metastore server goes with its folder (else it outlives the bench)
        from cxatlas.warehouse.metastore import stop_server

        stop_server(cfg.data_root, cfg.settings.catalog, cfg.settings.spark.jars_dir)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
