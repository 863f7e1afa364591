"""The subcommands of ``cxatlas``: each turns parsed arguments and the config into one stage call and a summary.

Every command is ``cmd_<name>(args, cfg) -> exit code``. They stay thin: the work lives in :mod:`cxatlas.stages`
(and :mod:`cxatlas.sim` for simulated data); here we only open Spark and the table store and print reports.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

from cxatlas.core.config import Config, ConfigError
from cxatlas.core.errors import EXIT_FAILED, UserError
from cxatlas.warehouse.catalog import ALL_TABLES, register_catalog, table_spec


def open_store(cfg: Config, name: str) -> tuple[Any, Any]:
    """The Spark session (app name ``cxatlas-<name>``) and the table store of ``cfg``."""
    from cxatlas.warehouse.spark import build_spark
    from cxatlas.warehouse.tables import TableStore

    spark = build_spark(cfg, f"-{name}")
    return spark, TableStore.from_config(spark, cfg)


def exit_code(report: Any, cfg: Config | None = None) -> int:
    """The exit contract for a stage that raised nothing: 0 when it did what was asked (quarantined rows are data);
    1 when its counts do not reconcile or a systemic share of its inputs failed for one reason (``failures.*``),
    saying so in one line on stderr (what it committed is in its summary above)."""
    if cfg is None:
        why = None if report.reconciles else "its counts do not reconcile"
    else:
        f = cfg.settings.failures
        why = report.systemic_failure(f.systemic_share, f.systemic_min_inputs, f.not_failures)
    if why is None:
        return 0
    print(f"cxatlas: error: the run failed: {why}", file=sys.stderr)
    return EXIT_FAILED


def check_settings(command: str, cfg: Config) -> None:
    """Rules on settings that need a layer above core (which expression models need a checkpoint), checked right
    after loading and before any Spark session, for the commands that use them."""
    if command not in ("annotate", "reprocess", "demo"):
        return
    from cxatlas.models.registry import REGISTRY

    expression = cfg.settings.annotate.expression
    if REGISTRY[expression.model].needs_checkpoint and expression.checkpoint is None:
        raise ConfigError(f"invalid setting annotate.expression.checkpoint=None ({cfg.origin('annotate.expression')}): "
                          f"model {expression.model} needs a checkpoint file (only "
                          f"{', '.join(n for n, m in REGISTRY.items() if not m.needs_checkpoint)} ship their weights)")


def explain_failure(cfg: Config, exc: BaseException) -> str | None:
    """A better one-line cause for a fault whose own message says little: the data root's metastore server went
    away during the run. None: the exception's own first line says it."""
    if cfg.settings.catalog.metastore != "derby-server":
        return None
    from cxatlas.warehouse.metastore import server_of

    server = server_of(cfg.data_root, cfg.settings.catalog)
    if server is None or server.alive():
        return None
    how = "was stopped" if server.stopped is not None else "died"
    return (f"the metastore server of data root {cfg.data_root} ({server.describe()}) {how} during the run; "
            f"nothing after that point was committed (`cxatlas --data {cfg.data_root} metastore start`, then rerun)")


def cmd_config(args: argparse.Namespace, cfg: Config) -> int:
    """``cxatlas config show [KEY]``: the effective settings, each with where its value came from."""
    import difflib

    pairs = cfg.leaves()
    if args.key:
        chosen = [(k, v) for k, v in pairs if k == args.key or k.startswith(args.key + ".")]
        if not chosen:
            near = difflib.get_close_matches(args.key, [k for k, _ in pairs], n=1, cutoff=0.5)
            raise ConfigError(f"unknown setting '{args.key}'" + (f"; did you mean '{near[0]}'?" if near else ""))
        pairs = chosen
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        print(f"{key:<{width}} = {json.dumps(value, default=str)}  # {cfg.origin(key)}")
    return 0


def cmd_reasons(args: argparse.Namespace, cfg: Config) -> int:
    """``cxatlas reasons``: the quarantine reason catalogue (``cxatlas.core.reasons``): code, stage, meaning and what
    the user does; ``--update-readme FILE`` rewrites the README's generated tables from it instead."""
    from cxatlas.core import reasons as r

    if args.update_readme:
        with open(args.update_readme, encoding="utf-8") as f:
            text = f.read()
        try:
            new = r.render_readme(text)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if new != text:
            with open(args.update_readme, "w", encoding="utf-8") as f:
                f.write(new)
        print(f"{args.update_readme}: reason tables {'rewritten' if new != text else 'already current'}")
        return 0
    stages = [args.stage] if args.stage else list(r.STAGES)
    if args.format == "markdown":
        print("\n\n".join(f"{r.STAGE_TITLES[s]}\n\n{r.markdown_table(s)}" for s in stages))
        return 0
    rows = [(x.code, x.stage, x.meaning, x.action) for s in stages for x in r.reasons(s)]
    if args.format == "json":
        print(json.dumps([dict(zip(("code", "stage", "meaning", "action"), row)) for row in rows], indent=1))
    elif args.format == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(("code", "stage", "meaning", "action"))
        writer.writerows(rows)
    else:
        for s in stages:
            print(f"{r.STAGE_TITLES[s]}".replace("`", ""))
            width = max(len(x.code) for x in r.reasons(s))
            for x in r.reasons(s):
                print(f"  {x.code:<{width}}  {x.meaning}\n  {'':<{width}}  -> {x.action}".replace("`", ""))
            print()
    return 0


# -- pipeline stages -------------------------------------------------------------------------------------------------
def cmd_ingest(args: argparse.Namespace, cfg: Config) -> int:
    from cxatlas.stages.ingest import run_ingest

    spark, store = open_store(cfg, "ingest")
    report = run_ingest(spark, cfg, store, args.manifest, args.format)
    print(report.summary())
    return exit_code(report, cfg)


def cmd_annotate(args: argparse.Namespace, cfg: Config) -> int:
    from cxatlas.stages.annotate import run_annotate

    spark, store = open_store(cfg, "annotate")
    report = run_annotate(spark, cfg, store)
    print(report.summary())
    return exit_code(report, cfg)


def cmd_import(args: argparse.Namespace, cfg: Config) -> int:
    from cxatlas.stages.import_annotations import run_import

    spark, store = open_store(cfg, "import")
    report = run_import(spark, cfg, store, args.input, model_version=args.model_version, taxonomy=args.taxonomy,
                        allow_extra_columns=args.allow_extra_columns,
                        missing_contexts_as_zero=args.missing_contexts_as_zero, skip_non_parquet=args.skip_non_parquet)
    print(report.summary())
    return exit_code(report, cfg)


def cmd_analyze(args: argparse.Namespace, cfg: Config) -> int:
    from cxatlas.stages.analyze import run_analyze

    spark, store = open_store(cfg, "analyze")
    report = run_analyze(spark, cfg, store, analysis_id=args.analysis_id, incremental=args.incremental)
    print(report.summary())
    return _committed_analysis(report)


def _committed_analysis(report: Any) -> int:
    """0 when the analysis' ``analyses`` row (its commit marker) was written, else 1 naming what is missing."""
    marker = report.commits.get("analyses")
    if marker is not None and marker.version is not None:
        return 0
    print(f"cxatlas: error: analysis {report.analysis_id} wrote no analyses row: its results are not visible",
          file=sys.stderr)
    return EXIT_FAILED


def cmd_report(args: argparse.Namespace, cfg: Config) -> int:
    from cxatlas.stages.report import write_report

    spark, store = open_store(cfg, "report")
    report = write_report(spark, cfg, store, args.analysis_id, args.out)
    print(report.summary())
    out = getattr(report, "path", None) or getattr(report, "out", None)
    if out is not None and not os.path.isfile(str(out)):
        print(f"cxatlas: error: the report {out} was not written", file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_release(args: argparse.Namespace, cfg: Config) -> int:
    from cxatlas.stages.release import check_request, run_release

    check_request(args.epsilon, args.delta, cfg.settings.release)  # before Spark starts
    spark, store = open_store(cfg, "release")
    print(run_release(spark, cfg, store, args.epsilon, args.delta, args.out, analysis_id=args.analysis,
                      correlation=args.correlation).summary())
    return 0


def cmd_compare(args: argparse.Namespace, cfg: Config) -> int:
    from cxatlas.stages.compare import run_compare

    spark, store = open_store(cfg, "compare")
    report = run_compare(spark, cfg, store, args.taxonomy_1, args.taxonomy_2, args.comparison_id)
    print(report.summary())
    if report.table.empty:
        print(f"cxatlas compare-experiments: error: comparison {report.comparison_id} found no headline numbers to "
              f"compare", file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_ppca(args: argparse.Namespace, cfg: Config) -> int:
    from cxatlas.stages.ppca import run_ppca

    s = cfg.settings.ppca
    print(run_ppca(args.input, args.id, args.out, resamples=s.resamples, seed=s.seed, alpha=s.alpha,
                   snr=s.snr, rule=args.rule or s.rule, bh_dimensions=s.bh_dimensions, gppca_bh=s.gppca_bh,
                   kaiser=s.kaiser, loading_resamples=s.loading_resamples, names=args.name).summary())
    return 0


def cmd_train(args: argparse.Namespace, cfg: Config) -> int:
    from cxatlas.stages.train import run_train

    spark, store = open_store(cfg, "train")
    report = run_train(spark, cfg, store, args.model, args.ratings, out=args.out, epochs=args.epochs,
                       batch_size=args.batch_size, resume=args.resume, group_by=args.group_by)
    print(report.summary())
    return exit_code(report, cfg)


def cmd_transfer(args: argparse.Namespace, cfg: Config) -> int:
    from cxatlas.stages.transfer import run_transfer

    spark, store = open_store(cfg, "transfer")
    report = run_transfer(spark, cfg, store, args.model, args.out, ratings_a=args.ratings_a,
                          ratings_b=args.ratings_b, ratings=args.ratings, country_a=args.country_a,
                          country_b=args.country_b, epochs=args.epochs, batch_size=args.batch_size,
                          group_by=args.group_by, runs=args.runs)
    print(report.summary())
    return exit_code(report, cfg)


def cmd_au_tuning(args: argparse.Namespace, cfg: Config) -> int:
    from cxatlas.stages.au_tuning import run_au_tuning

    print(run_au_tuning(args.manifest, args.out, transfer=args.transfer, checkpoint_a=args.checkpoint_a,
                        checkpoint_b=args.checkpoint_b, names=args.name, confusion=args.confusion,
                        device=cfg.settings.train.device).summary())
    return 0


def cmd_pool_mimics(args: argparse.Namespace, cfg: Config) -> int:
    from cxatlas.stages.pool_mimics import pool_mimics

    print(pool_mimics(args.ratings, args.out, seed_column=args.seed_column, judgments=args.judgments).summary())
    return 0


def cmd_predict_images(args: argparse.Namespace, cfg: Config) -> int:
    from cxatlas.stages.predict_images import run_predict_images

    print(run_predict_images(cfg, args.model, args.images, args.out, checkpoint=args.checkpoint, id_column=args.id,
                             whole_image=args.whole_image).summary())
    return 0


def cmd_au_series(args: argparse.Namespace, cfg: Config) -> int:
    from cxatlas.stages.inagaki import synthetic_au_series

    series = synthetic_au_series(args.out)
    print(f"wrote a synthetic AU series ({len(series.aus)} AUs x {len(series.levels)} levels, shared null image) and "
          f"{series.manifest}")
    return 0


# -- simulated and sample data ---------------------------------------------------------------------------------------
def cmd_simulate(args: argparse.Namespace, cfg: Config) -> int:
    from cxatlas.sim.world import run_simulate

    print(run_simulate(cfg, args.videos, args.out).summary())
    return 0


def sample_corpus(cfg: Config, out: str, videos: int | None, seed: int | None = None):
    """Build the demo corpus (real videos from installed packages, spread over the 12 regions)."""
    from cxatlas.sim.corpus import build_sample_corpus

    corpus = cfg.settings.corpus
    return build_sample_corpus(out, videos or corpus.videos, cfg.settings.regions.file,
                               seed=corpus.seed if seed is None else seed, taxonomy=corpus.taxonomy)


def cmd_sample_corpus(args: argparse.Namespace, cfg: Config) -> int:
    info = sample_corpus(cfg, args.out, args.videos, args.seed)
    print(f"wrote {info.videos} videos and {info.good_rows + sum(info.bad_rows.values())} manifest rows "
          f"({sum(info.bad_rows.values())} deliberately bad: {info.bad_rows}) to {info.manifest}")
    return 0


# -- tables and SQL --------------------------------------------------------------------------------------------------
FORMATS = ("table", "csv", "json")


def split_statements(text: str) -> list[str]:
    """SQL statements of a file, split on ';' outside quotes; empty ones and ``--`` comment lines dropped."""
    statements, current, quote = [], [], None
    for line in text.splitlines():
        if quote is None and line.strip().startswith("--"):
            continue
        for ch in line + "\n":
            if quote:
                quote = None if ch == quote else quote
            elif ch in "'\"`":
                quote = ch
            elif ch == ";":
                statements.append("".join(current).strip())
                current = []
                continue
            current.append(ch)
    statements.append("".join(current).strip())
    return [stmt for stmt in statements if stmt]


def show(df, limit: int, fmt: str) -> None:
    """Print up to ``limit`` rows as Spark's table, CSV (with header) or JSON lines."""
    if fmt == "table":
        df.show(limit, truncate=60)
        return
    rows = df.limit(limit).toPandas()
    print(rows.to_csv(index=False) if fmt == "csv" else rows.to_json(orient="records", lines=True,
                                                                    date_format="iso"), end="")


def run_sql(cfg: Config, query: str, limit: int = 50, spark_store: tuple | None = None, fmt: str = "table") -> None:
    """Run one or more statements over the catalog (tables as ``cxatlas.<table>`` or by bare name) and print up to
    ``limit`` rows of each result.

    A query Spark cannot parse or resolve (a typo, a table that does not exist) is the user's to fix: it becomes a
    one-line :class:`UserError` instead of a JVM stack trace.
    """
    from pyspark.errors import AnalysisException

    spark, store = spark_store or open_store(cfg, "sql")
    register_catalog(store)
    for statement in split_statements(query):
        try:
            show(spark.sql(statement), limit, fmt)
        except AnalysisException as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"query failed: {first}") from None


def cmd_sql(args: argparse.Namespace, cfg: Config) -> int:
    if (args.query is None) == (args.file is None):
        raise UserError("give a query or -f FILE.sql (one of them)")
    if args.file is not None:
        try:
            query = open(args.file, encoding="utf-8").read()
        except OSError as exc:
            raise UserError(f"cannot read {args.file}: {exc.strerror}") from None
    else:
        query = args.query
    run_sql(cfg, query, args.limit, fmt=args.format)
    return 0


def cmd_sql_server(args: argparse.Namespace, cfg: Config) -> int:
    from cxatlas.warehouse.sql_server import serve

    return serve(cfg, args.host, args.port, allow_writes=args.allow_writes)


def cmd_metastore(args: argparse.Namespace, cfg: Config) -> int:
    from cxatlas.warehouse.metastore import ensure_server, server_of, stop_server

    c, jars, root = cfg.settings.catalog, cfg.settings.spark.jars_dir, cfg.data_root
    if c.metastore != "derby-server":
        raise UserError(f"catalog.metastore is {c.metastore}: there is no Derby network server to {args.action}")
    if args.action == "status":
        server = server_of(root, c)
        state = f"running on {server.describe()}" if server is not None and server.alive() else "not running"
    elif args.action == "start":
        server = ensure_server(root, c, jars)
        state = f"{'started' if server.started_now else 'already running'} on {server.describe()}"
    else:
        server = stop_server(root, c, jars)
        state = f"stopped ({server.describe()})" if server is not None else "was not running"
    print(f"Derby metastore server of data root {root}: {state}")
    return 0


def cmd_tables(args: argparse.Namespace, cfg: Config) -> int:
    spark, store = open_store(cfg, "tables")
    print(f"tables under {cfg.table_root}, in catalog database {store.database}:")
    for spec in ALL_TABLES:
        table = store.table(spec)
        if table.exists():
            print(f"  {spec.name:<32} version {table.version():>4}  rows {table.read().count():>10}")
        else:
            print(f"  {spec.name:<32} (not created yet)")
    return 0


def cmd_history(args: argparse.Namespace, cfg: Config) -> int:
    _, store = open_store(cfg, "history")
    for entry in store.table(table_spec(args.table)).history():
        params = entry.get("operationParameters", "")
        if isinstance(params, dict) and "schema" in params:  # the first commit's schema is a page of JSON: name it
            params = {**params, "schema": f"<{len(json.dumps(params['schema']))} characters>"}
        print(f"  v{entry.get('version')}: {entry.get('operation')} "
              f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(int(entry.get('timestamp', 0)) / 1000))} {params}")
    return 0


def cmd_vacuum(args: argparse.Namespace, cfg: Config) -> int:
    _, store = open_store(cfg, "vacuum")
    hours = args.retention_hours if args.retention_hours is not None else cfg.settings.tables.vacuum_retention_hours
    removed = store.table(table_spec(args.table)).vacuum(hours)
    print(f"vacuum {args.table}: removed {len(removed)} unreferenced files older than {hours:g} hours "
          f"(younger unreferenced files are kept, so readers of recent versions and time travel keep working)")
    return 0


def cmd_optimize(args: argparse.Namespace, cfg: Config) -> int:
    _, store = open_store(cfg, "optimize")
    print(f"optimize {args.table}: {store.table(table_spec(args.table)).optimize()}")
    return 0


Command = Callable[[argparse.Namespace, Config], int]


# -- scheduled operation ---------------------------------------------------------------------------------------------
def cmd_reprocess(args: argparse.Namespace, cfg: Config) -> int:
    from cxatlas.stages.reprocess import run_reprocess

    spark, store = open_store(cfg, "reprocess")
    report = run_reprocess(spark, cfg, store, args.manifest_dir, max_videos=args.max_videos, wait=args.wait)
    print(report.summary())
    if report.status in ("succeeded", "skipped"):  # skipped: another run holds the lease and does the work
        return 0
    print(f"cxatlas reprocess: error: run {report.run_id} {report.status}: {report.message}", file=sys.stderr)
    return EXIT_FAILED


def cmd_runs(args: argparse.Namespace, cfg: Config) -> int:
    from cxatlas.warehouse.run_log import recent_runs

    spark, store = open_store(cfg, "runs")
    runs = recent_runs(store, args.limit)
    if runs is None:
        print("no runs recorded yet (the runs table is written by `cxatlas reprocess`)")
        return 0
    show(runs.select("run_id", "status", "started", "finished", "manifests", "new", "updated", "withdrawn",
                     "annotated", "quarantined", "remaining", "analysis_id", "error"), args.limit, args.format)
    return 0
