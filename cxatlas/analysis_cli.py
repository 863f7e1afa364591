"""CLI subcommands and demo stages of the statistics: import-annotations, simulate, analyze."""
from __future__ import annotations

from typing import Callable

from cxatlas.config import Config


def register(add: Callable) -> None:
    p = add("import-annotations", cmd_import,
            "Import per-video annotations made elsewhere (wide Parquet: video_id, region, lat, lon, expr_<label>..., "
            "ctx_<label>...; see README) into uploads and the annotation tables, quarantining bad rows.")
    p.add_argument("--input", required=True, help="Parquet file or folder in the import format")
    p.add_argument("--model-version", default="imported", help="expression model_version to record")
    p.add_argument("--taxonomy", default="imported", help="taxonomy name to record for the contexts")
    p.add_argument("--allow-extra-columns", action="store_true", help="ignore columns the format does not know")

    p = add("simulate", cmd_simulate, "Write a simulated world with known ground truth (import format) and its "
                                      "population statistics.")
    p.add_argument("--videos", type=int, required=True, help="number of videos")
    p.add_argument("--out", required=True, help="output folder (Parquet parts + _population)")

    p = add("analyze", cmd_analyze, "Run the paper's statistics on the annotation tables: partial correlations, "
                                    "region similarity, region vs world, bootstrap SEs, CCA, geobin maps, figures.")
    p.add_argument("--analysis-id", help="id of this analysis (default: timestamp + random suffix)")


def _spark_and_store(cfg: Config, name: str):
    from cxatlas.cli import _spark_and_store as build

    return build(cfg, name)


def cmd_import(args, cfg: Config) -> int:
    from cxatlas.import_annotations import run_import

    spark, store = _spark_and_store(cfg, "import")
    report = run_import(spark, cfg, store, args.input, model_version=args.model_version, taxonomy=args.taxonomy,
                        allow_extra_columns=args.allow_extra_columns)
    print(report.summary())
    return 0 if report.reconciles else 1


def cmd_simulate(args, cfg: Config) -> int:
    from cxatlas.analyze import run_simulate

    print(run_simulate(cfg, args.videos, args.out).summary())
    return 0


def cmd_analyze(args, cfg: Config) -> int:
    from cxatlas.analyze import run_analyze

    spark, store = _spark_and_store(cfg, "analyze")
    print(run_analyze(spark, cfg, store, analysis_id=args.analysis_id).summary())
    return 0


def demo_stages(spark, store, cfg: Config) -> bool:
    """Analyze the demo's own annotations. The demo corpus is small, so contexts need only occur a few times."""
    from cxatlas.analyze import run_analyze

    print("[demo] 4. analyze (partial correlations, region similarity, bootstrap SEs, CCA, geobins, figures)",
          flush=True)
    demo_cfg = cfg.copy()
    for key, value in (cfg.section("demo").get("analyze_overrides") or {}).items():
        demo_cfg.set(f"analyze.{key}", value)
    report = run_analyze(spark, demo_cfg, store)
    print(report.summary())
    return True


DEMO_QUERIES = (
    "SELECT region_a, region_b, round(r, 3) AS r, round(se, 3) AS se FROM region_similarity "
    "WHERE region_a < region_b ORDER BY r DESC LIMIT 5",
    "SELECT region, round(r2, 3) AS r2, round(se, 3) AS se, best_match_region FROM region_vs_world ORDER BY region",
)


def demo_queries(cfg: Config, run: Callable[[str], None]) -> None:
    for query in DEMO_QUERIES:
        run(query)
