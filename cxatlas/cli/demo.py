"""``cxatlas demo``: the whole pipeline on the embedded default, printing what a newcomer should look at.

sample corpus (real videos from installed packages) -> ingest -> annotate -> analyze -> tables, figures, SQL.
"""
from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor

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


def simulated_world_config(cfg: Config) -> Config:
    """The demo's simulated world lives in tables of its own (``<tables.dir>_simulated``, catalog database
    ``<catalog.database>_simulated``) so it never mixes with the real videos; all 653 contexts of experiment 1, with the
    regional share calibrated to the paper's mean region similarity (``demo.simulated_regional_share``)."""
    out = cfg.copy()
    out.set("tables.dir", f"{cfg.settings.tables.dir}_simulated")
    out.set("catalog.database", f"{cfg.settings.catalog.database}_simulated")
    out.set("simulate.n_contexts", None)
    out.set("simulate.regional_share", cfg.settings.demo.simulated_regional_share)
    out.set("analyze.replicates", cfg.settings.demo.simulated_replicates)
    return out


def analyse_simulated_world(spark, cfg: Config) -> str | None:
    """Write (once per data root) and analyse the simulated world, write its report; print the headline numbers
    next to the paper's. Returns the report's path (None when ``demo.simulated_videos`` is 0)."""
    from cxatlas.core.schemas import UPLOADS
    from cxatlas.sim.world import import_simulated, world_params_from_config
    from cxatlas.stages.analyze import run_analyze
    from cxatlas.stages.report import write_report
    from cxatlas.warehouse.tables import TableStore

    n = cfg.settings.demo.simulated_videos
    if n <= 0:
        return None
    sim_cfg = simulated_world_config(cfg)
    store = TableStore.from_config(spark, sim_cfg)
    uploads = store.table(UPLOADS)
    if not uploads.exists() or uploads.read().limit(1).count() == 0:
        import_simulated(spark, sim_cfg, store, world_params_from_config(sim_cfg), n, model_version="simulated",
                         taxonomy="simulated_exp1")
    report = run_analyze(spark, sim_cfg, store)
    print(report.summary())
    page = write_report(spark, sim_cfg, store, report.analysis_id)
    cols = ["name", "value", "se", "paper_value", "paper_se"]
    print(page.headline[cols].to_string(index=False, float_format="%.4g"))
    print(f"       report: {page.path}")
    return page.path


def cmd_demo(args: argparse.Namespace, cfg: Config) -> int:
    from cxatlas.stages.analyze import run_analyze
    from cxatlas.stages.annotate import run_annotate
    from cxatlas.stages.ingest import run_ingest
    from cxatlas.stages.report import write_report

    corpus_dir = join_uri(cfg.data_root, "corpus")
    print(f"[demo] 1. sample corpus -> {corpus_dir}", flush=True)
    # The corpus (decoding and encoding video in this process) is built while Spark and the metastore start.
    with ThreadPoolExecutor(1, thread_name_prefix="cxatlas-corpus") as pool:
        corpus = pool.submit(sample_corpus, cfg, corpus_dir, args.videos)
        spark, store = open_store(cfg, "demo")
        info = corpus.result()
    print(f"       {info.videos} real videos, manifest {info.manifest}")
    print("[demo] 2. ingest", flush=True)
    ingested = run_ingest(spark, cfg, store, str(info.manifest))
    print(ingested.summary())
    print("[demo] 3. annotate (real faces, fer7 expressions, MiniLM contexts)", flush=True)
    annotated = run_annotate(spark, cfg, store)
    print(annotated.summary())
    print("[demo] 4. analyze (partial correlations, region similarity, bootstrap SEs, CCA, geobins, figures)",
          flush=True)
    analysis = run_analyze(spark, demo_config(cfg), store)
    print(analysis.summary())
    print(f"       report: {write_report(spark, cfg, store, analysis.analysis_id).path}")
    if cfg.settings.demo.simulated_videos > 0:
        print(f"[demo] 5. a simulated world of {cfg.settings.demo.simulated_videos} videos over 653 contexts "
              "(known ground truth, cxatlas.sim): import, analyze, report", flush=True)
        analyse_simulated_world(spark, cfg)
    print(f"[demo] tables are under {cfg.table_root} (query them with: cxatlas --data {cfg.data_root} sql \"...\")")
    for query in DEMO_QUERIES:
        print(f"cxatlas sql \"{query}\"")
        run_sql(cfg, query, spark_store=(spark, store))
    return 0 if ingested.reconciles and annotated.reconciles else 1
