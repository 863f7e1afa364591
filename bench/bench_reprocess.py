"""Benchmark of incremental statistics (issue #13): an update after 1% new uploads and 0.1% withdrawals, against a
full analysis of the same tables.

Target: on 1,000,000 simulated videos, the update costs at most 5% of a full analysis run.

1. Builds ``uploads``, ``video_expressions`` and ``video_contexts`` from the world simulator
   (:func:`cxatlas.sim.world.import_simulated`, rows ``[0, N)`` of an ``N + 1%`` world), reused when present.
2. Times a full analysis (:func:`run_analyze`, every video read and summed) -- the reference.
3. Stores the sums (an untimed incremental analysis with no state yet: one more full pass).
4. Adds the world's next 1% of videos (three commits, as an import would) and withdraws 0.1% of the videos through
   ``cxatlas ingest`` of a withdrawal manifest (tombstones, annotations deleted): timed separately.
5. Times the incremental analysis (:func:`run_analyze` with ``incremental=True``): change feed -> passes over the
   changed videos only -> stored sums updated -> statistics and result tables.
6. Prints where both analyses spent their time (each report's ``stage_seconds``, the JSON their ``analyses`` rows
   hold) as a table, then the ratios.

Run small: ``python -m bench.bench_reprocess --videos 100000 --contexts 200 --replicates 20``.
Full size: ``python -m bench.bench_reprocess`` (defaults are the target).
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxatlas.core.config import load_config  # noqa: E402
from cxatlas.core.result_schemas import RESULT_TABLES  # noqa: E402
from cxatlas.core.run_schemas import RUN_TABLES  # noqa: E402
from cxatlas.core.schemas import CORE_TABLES, UPLOADS  # noqa: E402
from cxatlas.sim.world import import_simulated, world_params_from_config  # noqa: E402
from cxatlas.stages.analyze import run_analyze  # noqa: E402
from cxatlas.stages.ingest import run_ingest  # noqa: E402
from cxatlas.warehouse.spark import build_spark  # noqa: E402
from cxatlas.warehouse.tables import TableStore  # noqa: E402

from bench.catalog import forget_tables  # noqa: E402
from bench.tables import print_table, stage_names  # noqa: E402

log = logging.getLogger("bench")
MODEL = "sim-bench"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=1_000_000)
    ap.add_argument("--contexts", type=int, default=653)
    ap.add_argument("--replicates", type=int, default=50)
    ap.add_argument("--add", type=float, default=0.01, help="share of new uploads (default 1%%)")
    ap.add_argument("--withdraw", type=float, default=0.001, help="share withdrawn (default 0.1%%)")
    ap.add_argument("--data", default="bench/out/reprocess", help="data root (tables reused across runs)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the tables even if present")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("py4j", "matplotlib", "PIL"):
        logging.getLogger(name).setLevel(logging.WARNING)

    data = Path(args.data).resolve() / f"{args.videos}x{args.contexts}"
    if args.rebuild and data.exists():
        shutil.rmtree(data)
    cfg = load_config(data_root=str(data), overrides=[
        f"simulate.n_contexts={args.contexts}", f"analyze.replicates={args.replicates}",
        f"analyze.expression_model_version={MODEL}", f"analyze.context_model_version={MODEL}",
        f"analyze.taxonomy={MODEL}", "analyze.figures.enabled=false", "catalog.metastore=embedded",
        "catalog.database=bench_reprocess"])
    spark = build_spark(cfg, "-bench-reprocess")
    store = TableStore.from_config(spark, cfg)
    if args.rebuild:  # where the metastore outlives the data root (catalog.metastore_root), forget the old tables
        forget_tables(store, [*CORE_TABLES, *RESULT_TABLES, *RUN_TABLES])
    params = world_params_from_config(cfg)
    n_add = int(round(args.videos * args.add))
    n_total = args.videos + n_add
    if not store.table(UPLOADS).exists():
        t = time.time()
        import_simulated(spark, cfg, store, params, n_total, model_version=MODEL, taxonomy=MODEL,
                         row_range=(0, args.videos))
        log.info("built %d videos in %.0fs", args.videos, time.time() - t)
    elif store.table(UPLOADS).read().count() != args.videos:
        raise SystemExit(f"{data} holds another state of the world; rerun with --rebuild")

    t = time.time()
    full = run_analyze(spark, cfg, store)
    t_full = time.time() - t
    log.info("full analysis: %.1fs (%s)", t_full, full.stage_seconds)
    t = time.time()
    first = run_analyze(spark, cfg, store, incremental=True)
    log.info("stored sums built (untimed reference: %.1fs, mode %s)", time.time() - t, first.sums.get("mode"))

    t = time.time()
    import_simulated(spark, cfg, store, params, n_total, model_version=MODEL, taxonomy=MODEL,
                     row_range=(args.videos, n_total))
    t_add = time.time() - t
    n_withdraw = int(round(args.videos * args.withdraw))
    ids = [r[0] for r in store.table(UPLOADS).read().select("video_id").orderBy("video_id").limit(n_withdraw)
           .collect()]
    manifest = Path(tempfile.mkdtemp()) / "withdrawals.csv"
    manifest.write_text("video_id,upload_time,withdrawn\n" + "".join(f"{i},2030-01-01T00:00:00Z,true\n" for i in ids))
    t = time.time()
    ingested = run_ingest(spark, cfg, store, str(manifest))
    t_withdraw = time.time() - t
    log.info("added %d videos (%.1fs), withdrew %d (%.1fs): %s", n_add, t_add, ingested.withdrawn, t_withdraw,
             ingested.annotations_deleted)

    t = time.time()
    inc = run_analyze(spark, cfg, store, incremental=True)
    t_inc = time.time() - t
    print()
    print(f"world: {args.videos} videos x {args.contexts} contexts, {args.replicates} replicates; "
          f"+{n_add} new uploads, {ingested.withdrawn} withdrawn")
    print_stage_seconds(t_full, full.stage_seconds, t_inc, inc.stage_seconds)
    print(f"  incremental analysis: sums {inc.sums.get('mode')} ({inc.sums.get('reason')})")
    print(f"withdrawal ingest (tombstones + deletes) {t_withdraw:6.1f} s")
    print(f"ratio incremental / full:                {t_inc / t_full:6.3f}   (target <= 0.05)")
    print(f"ratio (incremental + withdrawal ingest) / full: {(t_inc + t_withdraw) / t_full:6.3f}")
    return 0


def print_stage_seconds(t_full: float, full: dict[str, float], t_inc: float, inc: dict[str, float]) -> None:
    """Where the full and the incremental analysis spent their wall time: each report's ``stage_seconds`` (the JSON
    its ``analyses`` row holds in ``stage_seconds``), what no stage covers, and incremental / full per stage."""
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.3f}" if b > 0 else "-"

    rows = [[name, f"{full.get(name, 0.0):.1f}", f"{inc.get(name, 0.0):.1f}",
             ratio(inc.get(name, 0.0), full.get(name, 0.0))] for name in stage_names(full, inc)]
    other_full, other_inc = t_full - sum(full.values()), t_inc - sum(inc.values())
    rows.append(["other (wall - stages)", f"{other_full:.1f}", f"{other_inc:.1f}", ratio(other_inc, other_full)])
    rows.append(["= wall", f"{t_full:.1f}", f"{t_inc:.1f}", ratio(t_inc, t_full)])
    print("where the time goes (seconds of the full analysis and of the incremental one after the changes: each "
          "AnalyzeReport.stage_seconds, as in its analyses row's stage_seconds column):")
    print_table(["stage", "full_s", "incremental_s", "incremental / full"], rows)


if __name__ == "__main__":
    sys.exit(main())
