"""CLI subcommands and demo stages of the pipeline after ingest: annotate, import-annotations, simulate, analyze.

Kept apart from :mod:`cxatlas.cli` so the base CLI stays small; ``cli`` registers these at start-up.
"""
from __future__ import annotations

from typing import Callable

from cxatlas.config import Config


def register(add: Callable) -> None:
    from cxatlas import analysis_cli

    add("annotate", cmd_annotate, "Annotate every upload not yet annotated for the configured models: expression "
                                  "scores per video (faces found and tracked in real video) and context scores.")
    analysis_cli.register(add)


def cmd_annotate(args, cfg: Config) -> int:
    from cxatlas.annotate import run_annotate
    from cxatlas.cli import _spark_and_store

    spark, store = _spark_and_store(cfg, "annotate")
    report = run_annotate(spark, cfg, store)
    print(report.summary())
    return 0 if report.reconciles else 1


def demo_stages(spark, store, cfg: Config) -> bool:
    """The demo's stages after ingest; returns False if any count fails to reconcile."""
    from cxatlas.annotate import run_annotate

    print("[demo] 3. annotate (real faces, fer7 expressions, MiniLM contexts)", flush=True)
    report = run_annotate(spark, cfg, store)
    print(report.summary())
    from cxatlas import analysis_cli

    return analysis_cli.demo_stages(spark, store, cfg) and report.reconciles


DEMO_QUERIES = (
    "SELECT u.region, count(*) AS videos, round(avg(e.expr_happy), 3) AS happy, round(avg(e.expr_neutral), 3) "
    "AS neutral, sum(CASE WHEN e.n_windows = 0 THEN 1 ELSE 0 END) AS no_face FROM uploads u JOIN video_expressions e "
    "USING (video_id) GROUP BY u.region ORDER BY u.region",
    "SELECT c.label, count(*) AS videos FROM video_contexts LATERAL VIEW inline(contexts) c GROUP BY c.label "
    "ORDER BY videos DESC LIMIT 10",
)


def demo_queries(cfg: Config, run: Callable[[str], None]) -> None:
    for query in DEMO_QUERIES:
        run(query)
    from cxatlas import analysis_cli

    analysis_cli.demo_queries(cfg, run)
