"""Ingest throughput on Delta Lake: rows/s of ``cxatlas ingest`` against plain Spark doing the least possible work.

The Delta Lake issue's budget: ingesting a manifest of 1,000,000 rows runs at no less than half the speed of plain
Spark reading the same CSV and writing it as Parquet on the same cores (ratio >= 0.5). ``ingest`` does much more
per row (validation, geography checks against GeoNames in a pandas UDF, geobins, deduplication by upload_time, a
MERGE into ``uploads``, quarantine), so this shows what that costs. Prints; asserts nothing.

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
    (spark.read.option("header", True).option("multiLine", True).option("escape", '"').csv(str(manifest))
     .write.mode("overwrite").parquet(str(work / "plain.parquet")))
    plain = time.perf_counter() - t

    t = time.perf_counter()
    report = run_ingest(spark, cfg, TableStore.from_config(spark, cfg), str(manifest))
    ingest = time.perf_counter() - t
    assert report.reconciles and report.new == args.rows, report.summary()
    ratio = plain / ingest
    print(f"  plain Spark CSV -> Parquet: {plain:7.1f} s  {args.rows / plain:10,.0f} rows/s")
    print(f"  cxatlas ingest (Delta):     {ingest:7.1f} s  {args.rows / ingest:10,.0f} rows/s")
    print(f"  ratio ingest / plain: {ratio:.2f}  ({'MEETS' if ratio >= 0.5 else 'MISSES'} target >= 0.5); "
          f"load avg {os.getloadavg()[0]:.2f}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
