"""The ``cxatlas`` command line. Every job is also ``spark-submit jobs/<job>.py`` with the same arguments.

Common options (before or after the subcommand): ``--conf FILE`` (default ``$CXATLAS_CONF`` or the packaged
``conf/local.yaml``), ``--data DIR`` (data root; default ``$CXATLAS_DATA`` or ``./data``), ``--set key.path=value``
(repeatable; any setting), ``-v`` for debug logging.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Callable, Sequence

from cxatlas.config import Config, ConfigError, load_config

log = logging.getLogger("cxatlas")
EXIT_USAGE = 2


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--conf", default=argparse.SUPPRESS, help="config YAML (default: $CXATLAS_CONF or "
                                                                  "the packaged conf/local.yaml)")
    common.add_argument("--data", default=argparse.SUPPRESS, help="data root for tables and outputs "
                                                                  "(default: $CXATLAS_DATA or data_root in the config)")
    common.add_argument("--set", dest="overrides", action="append", default=argparse.SUPPRESS, metavar="KEY=VALUE",
                        help="override any setting, e.g. --set ingest.partitions=64 (repeatable)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="cxatlas", parents=[common],
        description="cxatlas: which facial expressions occur in which contexts, across 12 world regions "
                    "(Cowen et al., Nature 2021), on Spark + Delta + PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = add("ingest", cmd_ingest, "Validate a manifest and upsert its videos into the uploads table "
                                  "(bad rows go to quarantine with their reason).")
    p.add_argument("--manifest", required=True, help="CSV, JSON lines or Parquet; local path or Hadoop/fsspec URI")
    p.add_argument("--format", choices=["csv", "json", "parquet"], help="manifest format (default: from the name)")

    p = add("sample-corpus", cmd_sample_corpus, "Build the demo corpus: a manifest over real videos shipped in "
                                                "installed packages, spread over the 12 regions.")
    p.add_argument("--out", required=True, help="folder for videos and manifest.csv")
    p.add_argument("--videos", type=int, help="number of videos (default: corpus.videos)")
    p.add_argument("--seed", type=int, help="random seed (default: corpus.seed)")

    p = add("sql", cmd_sql, "Run a SQL query over the cxatlas tables (each registered under its name).")
    p.add_argument("query", help='e.g. "SELECT region, count(*) FROM uploads GROUP BY region"')
    p.add_argument("--limit", type=int, default=50, help="rows to print (default 50)")

    p = add("tables", cmd_tables, "List the tables with their version and row count.")

    p = add("history", cmd_history, "Show a table's Delta commit history.")
    p.add_argument("table")

    p = add("vacuum", cmd_vacuum, "Remove data files no longer referenced by a table (older than the retention).")
    p.add_argument("table")
    p.add_argument("--retention-hours", type=float, help="default: tables.vacuum_retention_hours")

    p = add("optimize", cmd_optimize, "Compact a table's small files.")
    p.add_argument("table")

    p = add("demo", cmd_demo, "Run the whole pipeline on the embedded default: sample corpus, ingest, and every "
                              "later stage, then print where the tables are and a few SQL results.")
    p.add_argument("--videos", type=int, help="demo corpus size (default: corpus.videos)")
    _register_extensions(add)
    return parser


def _register_extensions(add: Callable) -> None:
    """Subcommands of the later pipeline stages (annotate, import, simulate, analyze) live in their own module."""
    from cxatlas import pipeline_cli

    pipeline_cli.register(add)


def _config(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "conf", None), data_root=getattr(args, "data", None),
                       overrides=getattr(args, "overrides", None) or ())


def _spark_and_store(cfg: Config, name: str):
    from cxatlas.spark import build_spark
    from cxatlas.tables import TableStore

    spark = build_spark(cfg, f"-{name}")
    return spark, TableStore.from_config(spark, cfg)


def all_table_specs():
    from cxatlas.schemas import CORE_TABLES

    from cxatlas.results import RESULT_TABLES

    return [*CORE_TABLES, *RESULT_TABLES]


def _spec(name: str):
    for spec in all_table_specs():
        if spec.name == name:
            return spec
    raise ConfigError(f"unknown table {name!r}; tables: {', '.join(s.name for s in all_table_specs())}")


def cmd_ingest(args, cfg: Config) -> int:
    from cxatlas.ingest import run_ingest

    spark, store = _spark_and_store(cfg, "ingest")
    report = run_ingest(spark, cfg, store, args.manifest, args.format)
    print(report.summary())
    return 0 if report.reconciles else 1


def cmd_sample_corpus(args, cfg: Config) -> int:
    from cxatlas.corpus import build_sample_corpus

    corpus = cfg.section("corpus")
    info = build_sample_corpus(args.out, args.videos or int(corpus["videos"]), cfg.path("regions.file"),
                               seed=args.seed if args.seed is not None else int(corpus["seed"]),
                               taxonomy=str(corpus["taxonomy"]))
    print(f"wrote {info.videos} videos and {info.good_rows + sum(info.bad_rows.values())} manifest rows "
          f"({sum(info.bad_rows.values())} deliberately bad: {info.bad_rows}) to {info.manifest}")
    return 0


def run_sql(cfg: Config, query: str, limit: int = 50, spark_store=None) -> None:
    spark, store = spark_store or _spark_and_store(cfg, "sql")
    store.register_views(all_table_specs())
    spark.sql(query).show(limit, truncate=60)


def cmd_sql(args, cfg: Config) -> int:
    run_sql(cfg, args.query, args.limit)
    return 0


def cmd_tables(args, cfg: Config) -> int:
    spark, store = _spark_and_store(cfg, "tables")
    print(f"tables under {cfg.table_root} ({store.backend}):")
    for spec in all_table_specs():
        table = store.table(spec)
        if table.exists():
            print(f"  {spec.name:<32} version {table.version():>4}  rows {table.read().count():>10}")
        else:
            print(f"  {spec.name:<32} (not created yet)")
    return 0


def cmd_history(args, cfg: Config) -> int:
    _, store = _spark_and_store(cfg, "history")
    for entry in store.table(_spec(args.table)).history():
        print(f"  v{entry.get('version')}: {entry.get('operation')} "
              f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(int(entry.get('timestamp', 0)) / 1000))} "
              f"{entry.get('operationParameters', '')}")
    return 0


def cmd_vacuum(args, cfg: Config) -> int:
    _, store = _spark_and_store(cfg, "vacuum")
    removed = store.table(_spec(args.table)).vacuum(args.retention_hours)
    print(f"vacuum {args.table}: removed {len(removed)} unreferenced files")
    return 0


def cmd_optimize(args, cfg: Config) -> int:
    _, store = _spark_and_store(cfg, "optimize")
    print(f"optimize {args.table}: {store.table(_spec(args.table)).optimize()}")
    return 0


def cmd_demo(args, cfg: Config) -> int:
    """sample-corpus -> ingest -> annotate -> analyze (tables and figures) -> SQL."""
    from cxatlas.config import join_uri
    from cxatlas.corpus import build_sample_corpus
    from cxatlas.ingest import run_ingest

    corpus_dir = join_uri(cfg.data_root, "corpus")
    corpus = cfg.section("corpus")
    print(f"[demo] 1. sample corpus -> {corpus_dir}", flush=True)
    info = build_sample_corpus(corpus_dir, args.videos or int(corpus["videos"]), cfg.path("regions.file"),
                               seed=int(corpus["seed"]), taxonomy=str(corpus["taxonomy"]))
    print(f"       {info.videos} real videos, manifest {info.manifest}")
    spark, store = _spark_and_store(cfg, "demo")
    print("[demo] 2. ingest", flush=True)
    report = run_ingest(spark, cfg, store, str(info.manifest))
    print(report.summary())
    ok = report.reconciles
    from cxatlas import pipeline_cli

    ok = pipeline_cli.demo_stages(spark, store, cfg) and ok
    print(f"[demo] tables are under {cfg.table_root} (query them with: cxatlas --data {cfg.data_root} sql \"...\")")
    for query in ("SELECT region, count(*) AS videos FROM uploads GROUP BY region ORDER BY region",
                  "SELECT stage, reason, count(*) AS n FROM quarantine GROUP BY stage, reason ORDER BY stage, reason"):
        print(f"cxatlas sql \"{query}\"")
        run_sql(cfg, query, spark_store=(spark, store))
    pipeline_cli.demo_queries(cfg, lambda q: (print(f"cxatlas sql \"{q}\""),
                                              run_sql(cfg, q, spark_store=(spark, store))))
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("py4j", "matplotlib", "PIL", "urllib3", "filelock", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        cfg = _config(args)
        return int(args.func(args, cfg) or 0)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        # Bad input the user can fix: one clear line, no traceback.
        print(f"cxatlas {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
