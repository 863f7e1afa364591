"""Benchmark of ``cxatlas analyze`` at the issue's scale target, with its two reference points.

Target (issue 4): 1,000,000 videos x 653 contexts x 16 expressions x 12 regions x 50 bootstrap replicates, from
Delta tables to result tables, on this 2-core machine: < 10 minutes, < 8 GiB peak memory; report the ratio to numpy
alone forming the same sums from the same data in memory (aim <= 3x) and to a naive pandas baseline that resamples
the videos 50 times (aim >= 20x faster).

What it does:

1. Builds ``uploads``, ``video_expressions`` and ``video_contexts`` as Delta tables from the world simulator's sparse
   chunks (:func:`cxatlas.sim.simulate.iter_sparse_chunks`), generated inside Spark tasks (each task makes its own row
   range; the rows do not depend on the slicing) and written through :mod:`cxatlas.warehouse.tables`
   (:func:`cxatlas.sim.world.import_simulated`) -- never via the wide import format. Reused on the next run
   when the same size is already there (``--rebuild`` forces it).
2. Times :func:`cxatlas.stages.analyze.run_analyze` (Delta -> result tables; figures off unless ``--figures``) while a thread
   samples the resident memory of the whole process tree (driver Python + JVM + Python workers) every 0.2 s. Where
   each run's time went is printed from its report's ``stage_seconds`` (inputs, heavy_pass, statistics, write_tables,
   figures: the JSON its ``analyses`` row holds), as a table beside the ratio lines.
3. numpy alone: the same rows in memory (X, sparse C, region, the same ``xxhash64`` hashes), timed while forming the
   same sums (Poisson weights, :func:`cxatlas.stats.accumulate` in the same batches, the CCA sample sums and the
   geobin sums) in one process; also checks they equal the Spark sums.
4. Naive pandas: on a subsample of ``--naive-videos`` videos, a dense videos x (E + K) DataFrame is resampled with
   replacement and, per region, ``DataFrame.cov()`` plus one (E+1) x (E+1) inversion per context give the partial
   correlations. The covariance part is linear in the number of videos and is scaled linearly to the full size; the
   per-context inversions do not depend on it and are counted once per replicate; both are timed over
   ``--naive-replicates`` replicates and scaled to 1 + replicates. The output says so.

Run small: ``python bench/bench_analyze.py --videos 50000 --contexts 100 --replicates 10``.
Full size: ``python bench/bench_analyze.py`` (defaults are the target).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxatlas.core.config import load_config  # noqa: E402
from cxatlas.core.regions import REGION_IDS  # noqa: E402
from cxatlas.core.schemas import UPLOADS  # noqa: E402
from cxatlas.core.settings import AnalyzeSettings  # noqa: E402
from cxatlas.sim import simulate  # noqa: E402
from cxatlas.sim.world import import_simulated, world_params_from_config  # noqa: E402
from cxatlas.stages.analyze import run_analyze  # noqa: E402
from cxatlas.stats import accumulate, accumulate_cca, poisson_weights  # noqa: E402
from cxatlas.stats.moments import Moments  # noqa: E402

from bench.tables import print_table, stage_names  # noqa: E402

log = logging.getLogger("bench")
MODEL = "sim-bench"
TAXONOMY = "nature2021_exp1"


# --------------------------------------------------------------------------------------------------------------------
# Memory sampling
# --------------------------------------------------------------------------------------------------------------------
class PeakMemory:
    """Samples the summed RSS of this process and all its descendants (JVM, Python workers) in a thread, and their
    CPU seconds (user + system, per process the last value seen), so a ratio can also be read in CPU time, which a
    busy machine distorts less than wall time."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self.proc, self.interval = psutil.Process(), interval
        self.peak = 0
        self.peak_parts: dict[str, int] = {}
        self._cpu_start: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._kind: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _procs(self):
        return [self.proc, *self.proc.children(recursive=True)]

    def _sample(self) -> None:
        import psutil

        parts: dict[str, int] = {}
        for p in self._procs():
            try:
                name = "jvm" if "java" in p.name() else ("driver" if p.pid == self.proc.pid else "python workers")
                parts[name] = parts.get(name, 0) + p.memory_info().rss
                t = p.cpu_times()
                self._cpu_last[p.pid] = t.user + t.system
                self._kind[p.pid] = name
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        total = sum(parts.values())
        if total > self.peak:
            self.peak, self.peak_parts = total, parts

    @property
    def cpu_seconds(self) -> float:
        return sum(v - self._cpu_start.get(pid, 0.0) for pid, v in self._cpu_last.items())

    @property
    def cpu_parts(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, v in self._cpu_last.items():
            kind = self._kind.get(pid, "?")
            out[kind] = out.get(kind, 0.0) + v - self._cpu_start.get(pid, 0.0)
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        import psutil

        self.peak, self.peak_parts, self._cpu_last = 0, {}, {}
        self._cpu_start = {}
        for p in self._procs():
            try:
                t = p.cpu_times()
                self._cpu_start[p.pid] = t.user + t.system
            except psutil.NoSuchProcess:
                continue
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()


def load_average() -> str:
    return open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?"


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


# --------------------------------------------------------------------------------------------------------------------
# 3. numpy alone
# --------------------------------------------------------------------------------------------------------------------
def load_in_memory(spark, store, params, n_videos: int):
    """The same rows as numpy arrays, plus the same xxhash64 hashes Spark uses (computed by Spark, not timed)."""
    import scipy.sparse as sp
    from pyspark.sql import functions as F

    chunks = list(simulate.iter_sparse_chunks(params, n_videos, chunk_rows=100_000))
    video_id = np.concatenate([c.video_id for c in chunks])
    X = np.concatenate([c.X for c in chunks]).astype(np.float64)
    C = sp.vstack([c.C for c in chunks], format="csr").astype(np.float64)
    # Columns in the analysis' order: the taxonomy's labels (the simulator may use only its first contexts).
    from cxatlas.core.taxonomies import load_taxonomy

    taxonomy = list(load_taxonomy(TAXONOMY).labels)
    col = np.array([taxonomy.index(c) for c in params.contexts])
    C = sp.csr_matrix((C.data, col[C.indices], C.indptr), shape=(C.shape[0], len(taxonomy)))
    region = np.concatenate([c.region for c in chunks]).astype(np.int64)
    lat = np.concatenate([c.lat for c in chunks])
    lon = np.concatenate([c.lon for c in chunks])
    hashes = (store.table(UPLOADS).read().select(
        "video_id", F.xxhash64("video_id").alias("h"),
        F.xxhash64(F.lit("cxatlas-cca-sample-0"), F.col("video_id")).alias("k")).toPandas().set_index("video_id"))
    hashes = hashes.loc[video_id]
    # Region codes of the simulator follow params.region_ids; the analysis uses REGION_IDS: map them.
    code = np.array([REGION_IDS.index(r) for r in params.region_ids])[region]
    return X, C, code, hashes["h"].to_numpy(), hashes["k"].to_numpy(), lat, lon


def numpy_sums(X, C, region, h, key, lat, lon, settings: AnalyzeSettings, thresholds, bin_deg: float):
    """Form the analysis' sums in one process, batch by batch as the executors do. Returns (Moments, seconds)."""
    from cxatlas.udfs.moments import GeobinSums

    R = len(REGION_IDS)
    t = time.time()
    total = None
    for a in range(0, X.shape[0], settings.batch_rows):
        b = min(a + settings.batch_rows, X.shape[0])
        W = poisson_weights(h[a:b], settings.replicates, settings.seed)
        part = accumulate(X[a:b], C[a:b], region[a:b], W, R, settings.occur_threshold, settings.chunk_rows)
        total = part if total is None else total + part
    mask = key <= np.asarray(thresholds, dtype=np.int64)[region]
    cca = accumulate_cca(X[mask], C[mask], region[mask], R)
    if settings.cca.fit_region_sample == "all":  # the one-region CCA uses every video of its region
        fit = region == REGION_IDS.index(settings.cca.fit_region)
        cca += accumulate_cca(X[fit], C[fit], region[fit], R, all_videos=True)
    bins = GeobinSums.from_rows(np.floor(lat / bin_deg).astype(np.int64), np.floor(lon / bin_deg).astype(np.int64), X,
                                C)
    seconds = time.time() - t
    del cca, bins
    return total, seconds


# --------------------------------------------------------------------------------------------------------------------
# 4. naive pandas
# --------------------------------------------------------------------------------------------------------------------
def naive_pandas(X, C, region, n_sub: int, n_reps: int, seed: int = 0) -> tuple[float, float]:
    """Seconds per replicate of (covariance part, per-context inversion part) on ``n_sub`` videos."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    idx = rng.choice(X.shape[0], size=min(n_sub, X.shape[0]), replace=False)
    E = X.shape[1]
    df = pd.DataFrame(np.hstack([X[idx], C[idx].toarray()]))
    df["region"] = region[idx]
    t_cov = t_inv = 0.0
    for b in range(n_reps):
        sample = df.sample(n=len(df), replace=True, random_state=b)
        t0 = time.time()
        covs = {r: g.drop(columns="region").cov().to_numpy() for r, g in sample.groupby("region")}
        t1 = time.time()
        for cov in covs.values():
            for k in range(E, cov.shape[0]):
                sub = cov[np.ix_(list(range(E)) + [k], list(range(E)) + [k])]
                try:
                    inv = np.linalg.inv(sub)
                except np.linalg.LinAlgError:
                    continue
                with np.errstate(all="ignore"):
                    _ = -inv[:E, E] / np.sqrt(np.diag(inv)[:E] * inv[E, E])
        t_inv += time.time() - t1
        t_cov += t1 - t0
    return t_cov / n_reps, t_inv / n_reps


# --------------------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=1_000_000)
    ap.add_argument("--contexts", type=int, default=None, help="first n contexts of experiment 1 (default: all 653)")
    ap.add_argument("--replicates", type=int, default=50)
    ap.add_argument("--data", default="bench/out/analyze",
                    help="data root for the bench tables (default: bench/out/analyze, git-ignored)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the input tables even if present")
    ap.add_argument("--figures", action="store_true", help="also draw the figures inside the timed run")
    ap.add_argument("--runs", type=int, default=2, help="timed analyses (the first pays the JVM warm-up)")
    ap.add_argument("--naive-videos", type=int, default=20_000)
    ap.add_argument("--naive-replicates", type=int, default=3)
    ap.add_argument("--skip-numpy", action="store_true")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("py4j").setLevel(logging.WARNING)

    from cxatlas.core.result_schemas import RESULT_TABLES
    from cxatlas.core.run_schemas import RUN_TABLES
    from cxatlas.core.schemas import CORE_TABLES
    from cxatlas.warehouse.spark import build_spark
    from cxatlas.warehouse.tables import TableStore

    from bench.catalog import forget_tables

    overrides = [f"simulate.n_contexts={'null' if args.contexts is None else args.contexts}",
                 f"analyze.replicates={args.replicates}", f"analyze.figures.enabled={str(args.figures).lower()}",
                 f"analyze.expression_model_version={MODEL}", f"analyze.context_model_version={MODEL}",
                 f"analyze.taxonomy={TAXONOMY}", *args.overrides]  # simulate.slice_rows: rows per Spark task
    cfg = load_config(data_root=args.data, overrides=overrides)
    params = world_params_from_config(cfg)
    K, E = len(params.contexts), len(params.expressions)
    print(f"bench: {args.videos:,} videos x {K} contexts x {E} expressions x {len(params.region_ids)} regions x "
          f"{args.replicates} replicates; data root {cfg.data_root}", flush=True)
    spark = build_spark(cfg, "-bench")
    store = TableStore.from_config(spark, cfg)
    marker = Path(cfg.table_root) / "bench.json"
    want = {"videos": args.videos, "contexts": K, "seed": params.seed}
    if args.rebuild or not marker.is_file() or json.loads(marker.read_text()) != want:
        forget_tables(store, [*CORE_TABLES, *RESULT_TABLES, *RUN_TABLES])  # no catalog entry left pointing at nothing
        shutil.rmtree(cfg.table_root, ignore_errors=True)
        t = time.time()
        import_simulated(spark, cfg, store, params, args.videos, model_version=MODEL, taxonomy=TAXONOMY,
                         model_name=MODEL)
        Path(cfg.table_root).mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(want))
        print(f"built input tables in {time.time() - t:.1f}s (not part of the timings)", flush=True)
    else:
        forget_tables(store, RESULT_TABLES)  # the previous run's results: out of the catalog, then off the disk
        for spec in RESULT_TABLES:
            shutil.rmtree(Path(cfg.table_root) / spec.name, ignore_errors=True)
        print("reusing the input tables", flush=True)

    settings = cfg.settings.analyze
    runs = []
    stages: list[dict[str, float]] = []  # each run's AnalyzeReport.stage_seconds
    for run in range(1, args.runs + 1):
        load_before = load_average()
        with PeakMemory() as mem:
            t = time.time()
            report = run_analyze(spark, cfg, store, settings=settings)
            wall = time.time() - t
        runs.append((wall, mem.cpu_seconds))
        stages.append(dict(report.stage_seconds))
        if run == 1:
            print(report.summary())
        label = "fresh session: JVM warm-up included" if run == 1 else "same session, JVM warm"
        print(f"\nANALYZE run {run} ({label}; Delta -> result tables{', figures' if args.figures else ''}): "
              f"{wall:.1f}s wall ({', '.join(f'{k} {v:.1f}s' for k, v in report.stage_seconds.items())}), "
              f"{mem.cpu_seconds:.0f} CPU-s ({', '.join(f'{k} {v:.0f}' for k, v in sorted(mem.cpu_parts.items()))}), "
              f"peak memory {gib(mem.peak)} "
              f"({', '.join(f'{k} {gib(v)}' for k, v in sorted(mem.peak_parts.items()))}); load average "
              f"{load_before} before, {load_average()} after (other processes share the {os.cpu_count()} cores)",
              flush=True)
    heavy = report.stage_seconds.get("heavy_pass", float("nan"))

    X = C = region = None
    if not (args.skip_numpy and args.skip_naive):
        X, C, region, h, key, lat, lon = load_in_memory(spark, store, params, args.videos)
    if not args.skip_numpy:
        thresholds = _thresholds_numpy(key, region, settings.cca.per_region)
        with PeakMemory() as mem_np:
            m_np, t_np = numpy_sums(X, C, region, h, key, lat, lon, settings, thresholds,
                                    cfg.settings.geo.bin_deg)
        err = _max_rel_diff(report.moments, m_np)
        print(f"NUMPY ALONE (same sums, same rows, in memory, one process): {t_np:.1f}s wall, "
              f"{mem_np.cpu_seconds:.0f} CPU-s; Spark sums agree to {err:.1e} (max relative difference); load "
              f"average {load_average()}")
        for i, (w, c) in enumerate(runs, 1):
            print(f"  ratio analyze run {i} / numpy alone = {w / t_np:.2f}x wall, "
                  f"{c / max(mem_np.cpu_seconds, 1e-9):.2f}x CPU time")
        print(f"  (heavy pass of the last run alone: {heavy / t_np:.2f}x wall)")
    print_stage_seconds(runs, stages, None if args.skip_numpy else t_np)
    if not args.skip_naive:
        t_cov, t_inv = naive_pandas(X, C, region, args.naive_videos, args.naive_replicates)
        scale = args.videos / min(args.naive_videos, args.videos)
        naive = (t_cov * scale + t_inv) * (args.replicates + 1)
        print(f"NAIVE PANDAS (resample + DataFrame.cov + per-context inverse), timed on {args.naive_videos:,} videos x "
              f"{args.naive_replicates} replicates: {t_cov:.2f}s covariance + {t_inv:.2f}s inversions per replicate; "
              f"scaled linearly in videos (covariance part only) to {args.videos:,} videos x {args.replicates + 1} "
              f"replicates: {naive:.0f}s (estimate)")
        print("  ratio naive pandas / analyze = " + ", ".join(f"{naive / w:.1f}x (run {i})"
                                                          for i, (w, _) in enumerate(runs, 1)))
    spark.stop()
    return 0


def print_stage_seconds(runs: list[tuple[float, float]], stages: list[dict[str, float]], t_np: float | None) -> None:
    """Where each timed analysis' wall time went: its ``AnalyzeReport.stage_seconds`` (the same JSON its ``analyses``
    row holds in ``stage_seconds``), the share of the run's wall time, and, when numpy alone was timed, the stage's
    seconds / numpy alone's seconds: that column sums to the ``ratio analyze run i / numpy alone`` wall ratio."""
    names = stage_names(*stages)
    headers = ["stage"]
    for i in range(1, len(runs) + 1):
        headers += [f"run {i} s", f"run {i} share"] + ([f"run {i} / numpy"] if t_np else [])

    def cells(seconds: list[float]) -> list[str]:
        out = []
        for s, (wall, _) in zip(seconds, runs):
            out += [f"{s:.1f}", f"{100 * s / wall:.1f}%"] + ([f"{s / t_np:.2f}x"] if t_np else [])
        return out

    rows = [[name, *cells([st.get(name, 0.0) for st in stages])] for name in names]
    rows.append(["other (wall - stages)", *cells([wall - sum(st.values()) for (wall, _), st in zip(runs, stages)])])
    rows.append(["= wall", *cells([wall for wall, _ in runs])])
    print("WHERE THE TIME GOES (AnalyzeReport.stage_seconds of each timed analysis, as in its analyses row's "
          "stage_seconds column)" + ("; 'run i / numpy' = stage seconds / numpy alone's seconds, summing to the "
                                     "wall ratio above:" if t_np else ":"))
    print_table(headers, rows)


def _thresholds_numpy(key: np.ndarray, region: np.ndarray, per_region: int) -> list[int]:
    out = []
    for r in range(len(REGION_IDS)):
        ks = np.sort(key[region == r])
        out.append(int(ks[per_region - 1]) if ks.size >= per_region else int(np.iinfo(np.int64).max))
    return out


def _max_rel_diff(a: Moments, b: Moments) -> float:
    worst = 0.0
    for name in ("n", "sx", "sxx", "sc", "scc", "sxc", "occurred", "so"):
        x, y = getattr(a, name), getattr(b, name)
        scale = max(np.abs(y).max(), 1e-300)
        worst = max(worst, float(np.abs(x - y).max() / scale))
    return worst


if __name__ == "__main__":
    sys.exit(main())
