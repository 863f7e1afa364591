"""The ``cxatlas`` command line: one parser for every stage. Each job is also ``spark-submit jobs/<job>.py``.

Common options (before or after the subcommand): ``--conf FILE`` (an overlay over the packaged defaults; default
``$CXATLAS_CONF``), ``--data DIR`` (data root; default ``$CXATLAS_DATA`` or ``./data``), ``--set key.path=value``
(repeatable; any setting), ``-v``/``--verbose`` and ``-q``/``--quiet`` (the same for every command; see
:func:`setup_logging`).

The exit contract (every command; README "Exit codes"): 0 = did what was asked (quarantined rows are data,
reported); 1 = failed: one line on stderr says why, what this process committed, and names the log file under the
data root holding the full trace; 2 = refused before touching any table (bad input or settings: one line). A
:class:`~cxatlas.core.errors.UserError` raised after a commit is a failure (1), not a refusal.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
import traceback
from typing import Sequence

from cxatlas.cli import commands as c
from cxatlas.cli.demo import cmd_demo
from cxatlas.cli.quiet import quiet_spark_startup
from cxatlas.core.config import Config, load_config
from cxatlas.core.errors import EXIT_FAILED, EXIT_USAGE, UserError
from cxatlas.warehouse.spark import LOG_LEVEL_ENV

log = logging.getLogger("cxatlas")
QUIET_LOGGERS = ("py4j", "matplotlib", "PIL", "urllib3", "filelock", "sentence_transformers")


def _common(overrides_dest: str = "overrides") -> argparse.ArgumentParser:
    """The options every command takes, before or after the subcommand. ``--set`` before it is stored under another
    name (argparse lets the subcommand's namespace overwrite the top level's), and both lists are applied."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--conf", default=argparse.SUPPRESS, help="config overlay YAML, holding only what differs "
                        "from the packaged conf/local.yaml (default: $CXATLAS_CONF)")
    common.add_argument("--data", default=argparse.SUPPRESS, help="data root for tables and outputs "
                                                                  "(default: $CXATLAS_DATA or data_root in the config)")
    common.add_argument("--set", dest=overrides_dest, action="append", default=argparse.SUPPRESS, metavar="KEY=VALUE",
                        help="override any setting, e.g. --set ingest.partitions=64 (repeatable)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="more: Python debug logging, the JVM's INFO lines, and a failure's trace on stderr")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="less: only warnings and errors (Python), errors (JVM); summaries still print")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="cxatlas", parents=[_common("overrides_before_command")],
        description="cxatlas: which facial expressions occur in which contexts, across 12 world regions "
                    "(Cowen et al., Nature 2021), on Spark + Delta + PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: c.Command, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    # The pipeline, in data-flow order.
    p = add("ingest", c.cmd_ingest, "Validate a manifest and upsert its videos into the uploads table "
                                    "(bad rows go to quarantine with their reason).")
    p.add_argument("--manifest", required=True, help="CSV, JSON lines or Parquet; local path or Hadoop/fsspec URI")
    p.add_argument("--format", choices=["csv", "json", "parquet"], help="manifest format (default: from the name)")

    add("annotate", c.cmd_annotate, "Annotate every upload not yet annotated for the configured models: expression "
                                    "scores per video (faces found and tracked in real video) and context scores.")

    p = add("import-annotations", c.cmd_import,
            "Import per-video annotations made elsewhere (wide Parquet: video_id, region, lat, lon, expr_<label>..., "
            "ctx_<label>...; see README) into uploads and the annotation tables, quarantining bad rows.")
    p.add_argument("--input", required=True, help="Parquet file or folder in the import format")
    p.add_argument("--model-version", default="imported", help="expression model_version to record")
    p.add_argument("--taxonomy", default="imported", help="taxonomy name to record for the contexts")
    p.add_argument("--allow-extra-columns", action="store_true", help="ignore columns the format does not know")
    p.add_argument("--missing-contexts-as-zero", action="store_true",
                   help="in a folder whose files carry different ctx_ columns, read a missing context as absent (0) "
                        "instead of refusing the folder")
    p.add_argument("--skip-non-parquet", action="store_true",
                   help="skip (with a warning naming them) folder entries that are not Parquet files instead of "
                        "refusing the folder")

    p = add("analyze", c.cmd_analyze, "Run the paper's statistics on the annotation tables: partial correlations, "
                                      "region similarity, region vs world, bootstrap SEs, CCA, geobin maps, figures.")
    p.add_argument("--analysis-id", help="id of this analysis (default: UTC timestamp + random suffix)")
    p.add_argument("--incremental", action="store_true",
                   help="update the stored sums of this configuration from the tables' change feed instead of one "
                        "full pass (the stat_sums table; a full pass when there are none yet)")

    p = add("report", c.cmd_report, "One self-contained HTML page for an analysis: settings, counts, every headline "
                                    "number next to the paper's value with its SE, the tables and figures.")
    p.add_argument("analysis_id", nargs="?", help="the analysis (default: the latest)")
    p.add_argument("--out", help="HTML file (default <data>/<analyze.report_dir>/<analysis_id>.html)")

    p = add("release", c.cmd_release,
            "Publish an analysis' per-region context x expression correlations with differential privacy (OpenDP "
            "Gaussian noise on the per-region sums; privacy unit one video): one CSV per region in the published "
            "data's layout, the released_correlations and releases tables, charged to the data root's budget.")
    p.add_argument("--epsilon", type=float, required=True, help="epsilon of this release (> 0; charged to "
                   "release.total_epsilon)")
    p.add_argument("--delta", type=float, required=True, help="delta of this release, in (0, 1/n) for n videos "
                   "(charged to release.total_delta)")
    p.add_argument("--analysis", help="the analysis to release (default: the latest)")
    p.add_argument("--out", required=True, help="folder for the per-region CSV files and release.json")
    p.add_argument("--correlation", choices=["partial", "semipartial"],
                   help="default: release.correlation (partial)")

    p = add("compare-experiments", c.cmd_compare,
            "Analyse the same annotations against the paper's two context taxonomies (experiment 1: video content; "
            "experiment 2: titles and descriptions) and write their headline numbers side by side "
            "(experiment_comparison).")
    p.add_argument("--taxonomy-1", default="nature2021_exp1", help="taxonomy of experiment 1")
    p.add_argument("--taxonomy-2", default="nature2021_exp2", help="taxonomy of experiment 2")
    p.add_argument("--comparison-id", help="id of the comparison (default: UTC timestamp + random suffix)")

    p = add("ppca", c.cmd_ppca, "Principal preserved components (Brooks et al., iScience 2024): the dimensions two "
                                "(PPCA) or more (G-PPCA) datasets rating the same stimuli share, with cross-validated "
                                "significance, varimax rotation and a loadings heatmap.")
    p.add_argument("--input", action="append", required=True, help="Parquet or CSV file: an id column and the "
                   "same numeric attribute columns in every file (repeat: two or more)")
    p.add_argument("--id", required=True, help="the stimulus id column")
    p.add_argument("--out", required=True, help="folder for components.csv, significance.csv, rotated_loadings.csv "
                                                "and loadings_heatmap.png")
    p.add_argument("--rule", choices=["brooks", "bh_forwardstop_snr", "gppca_graph", "forwardstop", "bh", "none"],
                   help="which components are kept (default ppca.rule = brooks: the paper's rule, BH over the first "
                        "48 AND ForwardStop AND SNR>=3 for two inputs, the country-pair graph rule for three or more)")
    p.add_argument("--name", action="append", help="a name per --input, in order (the country; default: file stems)")
    # resamples, seed, alpha, SNR threshold, BH dimensions, Kaiser: ppca.* settings (--set ppca.resamples=200)

    p = add("train", c.cmd_train, "Train an expression model on rated faces: ratings averaged per stimulus and "
                                  "country, faces cropped with MTCNN on the executors into a Delta training table, "
                                  "fed to PyTorch with petastorm; a checkpoint per epoch that cxatlas annotate loads.")
    p.add_argument("--model", required=True, choices=["brooks288", "cowen16", "fer7"])
    p.add_argument("--ratings", required=True, help="Parquet, CSV or Delta: uri, country, one numeric column per "
                                                    "label (one row per rating)")
    p.add_argument("--out", help="checkpoint file (default <data>/models/<model>-<training set>.pt)")
    p.add_argument("--epochs", type=int, help="default: train.epochs")
    p.add_argument("--batch-size", type=int, help="default: train.batch_size")
    p.add_argument("--resume", action="store_true", help="continue --out from its last saved epoch")
    p.add_argument("--group-by", help="split by this ratings column (the person, e.g. the poser id) instead of by "
                                      "stimulus; a split that leaks a group is refused")
    # recipe, split, crops, device, trunk weights: train.* settings (--set train.lr=1e-3)

    p = add("transfer", c.cmd_transfer, "Cross-dataset transfer: train the same head on two datasets (two ratings "
                                        "tables, or two countries of one), test each on both; per-label "
                                        "correlations, confusion matrices, Spearman similarity; CSV + PNG.")
    p.add_argument("--ratings-a", help="ratings of dataset A (with --ratings-b)")
    p.add_argument("--ratings-b", help="ratings of dataset B")
    p.add_argument("--ratings", help="one ratings table, with --country-a and --country-b")
    p.add_argument("--country-a", help="rater country of dataset A in --ratings")
    p.add_argument("--country-b", help="rater country of dataset B in --ratings")
    p.add_argument("--model", default="fer7", choices=["brooks288", "fer7"], help="which head to train (default fer7)")
    p.add_argument("--group-by", help="split by this ratings column (the person, e.g. the poser id; Inagaki et al. "
                                      "split by individual) instead of by stimulus; a leaking split is refused")
    p.add_argument("--runs", type=int, help="repeat with seeds train.seed + 0..N-1: runs.csv, mean/SD, paired "
                                            "t-tests and the two-way ANOVA (Inagaki et al.: 40 runs)")
    p.add_argument("--out", required=True, help="folder for the tables, figures and the two checkpoints")
    p.add_argument("--epochs", type=int, help="default: train.epochs")
    p.add_argument("--batch-size", type=int, help="default: train.batch_size")

    p = add("au-tuning", c.cmd_au_tuning, "Inagaki et al.'s AU tuning: run two trained models on an action-unit "
                                          "image series (manifest au, level, image), subtract the null-image "
                                          "baseline, the units x units Spearman matrix vs the swapped confusion "
                                          "matrices, the peak/trough PCA; CSV + PNG.")
    p.add_argument("--manifest", required=True, help="CSV with columns au, level, image (relative paths: from the "
                                                     "manifest's folder); the lowest level is the null image")
    p.add_argument("--transfer", help="a `cxatlas transfer` --out folder: its two models and confusion.csv")
    p.add_argument("--checkpoint-a", help="instead of --transfer: model A's checkpoint")
    p.add_argument("--checkpoint-b", help="... and model B's")
    p.add_argument("--name", action="append", help="with --checkpoint-a/-b: the two models' names (twice)")
    p.add_argument("--confusion", help="a transfer confusion.csv to correlate with (default: --transfer's)")
    p.add_argument("--out", required=True, help="folder for au_*.csv, au_similarity.png and au_run.json")

    p = add("pool-mimics", c.cmd_pool_mimics, "Brooks et al.'s targets: per seed and rater country, the mean rating "
                                              "of all the seed's mimics, assigned to each mimic; a ratings table "
                                              "for `cxatlas train --group-by <seed column>`.")
    p.add_argument("--ratings", required=True, help="one row per rating: uri (mimic image), country, the seed "
                                                    "column, numeric concept columns (Parquet or CSV)")
    p.add_argument("--seed-column", default="seed_id", help="the seed each mimic imitates (default seed_id)")
    p.add_argument("--out", required=True, help="pooled ratings (Parquet)")
    p.add_argument("--judgments", help="also write the seed judgments for `cxatlas ppca` (CSV, country:concept)")

    p = add("predict-images", c.cmd_predict_images, "A trained expression model's outputs on still images (MTCNN "
                                                    "face crop, as in training), one row per image: an input of "
                                                    "`cxatlas ppca`.")
    p.add_argument("--images", required=True, help="CSV with the id column and image (paths relative to the CSV)")
    p.add_argument("--model", default="brooks288", choices=["brooks288", "fer7", "cowen16"],
                   help="registered model (default brooks288)")
    p.add_argument("--checkpoint", help="its weights (e.g. what `cxatlas train` wrote)")
    p.add_argument("--id", default="stimulus_id", help="id column of --images, kept in the output (default "
                                                       "stimulus_id)")
    p.add_argument("--whole-image", action="store_true", help="score each image whole (already a face crop)")
    p.add_argument("--out", required=True, help="output CSV (and <stem>_no_face.csv beside it)")

    p = add("au-series", c.cmd_au_series, "Write the small synthetic AU image series (generated, not downloaded; "
                                          "a stand-in for FaceGen renders) for tests and the demo.")
    p.add_argument("--out", required=True, help="folder for the PNG images and manifest.csv")

    # Data to try it on.
    p = add("sample-corpus", c.cmd_sample_corpus, "Build the demo corpus: a manifest over real videos shipped in "
                                                  "installed packages, spread over the 12 regions.")
    p.add_argument("--out", required=True, help="folder for videos and manifest.csv")
    p.add_argument("--videos", type=int, help="number of videos (default: corpus.videos)")
    p.add_argument("--seed", type=int, help="random seed (default: corpus.seed)")

    p = add("simulate", c.cmd_simulate, "Write a simulated world with known ground truth (import format) and its "
                                        "population statistics.")
    p.add_argument("--videos", type=int, required=True, help="number of videos")
    p.add_argument("--out", required=True, help="output folder (Parquet parts + _population)")

    # Scheduled operation.
    p = add("reprocess", c.cmd_reprocess,
            "The scheduled entry point: ingest new or changed manifests of a folder, apply withdrawals, annotate "
            "uploads lacking the configured model versions (bounded), and bring the statistics up to date from "
            "stored sums. Under a lease: an overlapping run exits (or waits with --wait). Every run is a row in runs.")
    p.add_argument("--manifest-dir", required=True, help="folder of manifests (CSV, JSON lines, Parquet; any URI); "
                                                         "files already processed with the same checksum are skipped")
    p.add_argument("--max-videos", type=int, help="annotate at most this many videos in this run (default: "
                                                  "reprocess.max_videos; the run says how many are left)")
    p.add_argument("--wait", action="store_true", help="wait for the lease instead of exiting when another run "
                                                       "holds it (reprocess.max_wait_seconds bounds the wait)")
    p = add("runs", c.cmd_runs, "List recent runs from the runs table (newest first).")
    p.add_argument("--limit", type=int, default=20, help="how many runs (default 20)")
    p.add_argument("--format", choices=c.FORMATS, default="table", help="how results print (default table)")

    p = add("demo", cmd_demo, "Run the whole pipeline on the embedded default: sample corpus, ingest, annotate, "
                              "analyze, then print where the tables are and a few SQL results.")
    p.add_argument("--videos", type=int, help="demo corpus size (default: corpus.videos)")

    # Tables.
    p = add("sql", c.cmd_sql, "Run SQL over the catalog: tables as cxatlas.<table> (or by bare name) and the "
                              "analyst views (expression_scores, context_scores, *_labelled).")
    p.add_argument("query", nargs="?", help='e.g. "SELECT region, count(*) FROM cxatlas.uploads GROUP BY region"')
    p.add_argument("-f", "--file", help="a .sql file of statements separated by ';' (instead of a query)")
    p.add_argument("--format", choices=c.FORMATS, default="table", help="how results print (default table)")
    p.add_argument("--limit", type=int, default=50, help="rows to print per statement (default 50)")

    p = add("sql-server", c.cmd_sql_server, "Serve the catalog over JDBC/ODBC (Spark's Thrift server) for beeline, "
                                            "DBeaver, Superset or any Hive client; stops on SIGTERM or Ctrl-C.")
    p.add_argument("--host", help="address to listen on (default sql_server.host, loopback; any other address "
                                  "requires the data root's password, README Security)")
    p.add_argument("--port", type=int, help="port (default sql_server.port)")
    p.add_argument("--allow-writes", action="store_true", default=None,
                   help="also INSERT/UPDATE/DELETE/MERGE into existing cxatlas tables (default: read-only)")

    p = add("metastore", c.cmd_metastore, "The Derby network server that holds the catalog's metastore "
                                          "(catalog.metastore: derby-server): status, start or stop it.")
    p.add_argument("action", choices=["status", "start", "stop"])

    add("tables", c.cmd_tables, "List the tables with their version and row count.")

    p = add("config", c.cmd_config, "Show the effective settings and where each value came from (the packaged "
                                     "default, an overlay file, --data or --set); nothing is started.")
    p.add_argument("action", choices=["show"])
    p.add_argument("key", nargs="?", help="one setting or a section, e.g. annotate.video (default: all)")

    p = add("reasons", c.cmd_reasons, "The quarantine reason catalogue: every reason ingest, import, annotate and "
                                      "train write to the quarantine table, what it means and what you do.")
    p.add_argument("--stage", choices=["ingest", "import", "annotate", "train"], help="one stage only")
    p.add_argument("--format", choices=[*c.FORMATS, "markdown"], default="table", help="how it prints (default "
                                                                                       "table)")
    p.add_argument("--update-readme", metavar="FILE", help="rewrite the generated reason tables of FILE (the "
                                                           "README) between their markers instead of printing")

    p = add("history", c.cmd_history, "Show a table's Delta commit history.")
    p.add_argument("table")

    p = add("vacuum", c.cmd_vacuum, "Remove data files no longer referenced by a table (older than the retention).")
    p.add_argument("table")
    p.add_argument("--retention-hours", type=float, help="default: tables.vacuum_retention_hours")

    p = add("optimize", c.cmd_optimize, "Compact a table's small files.")
    p.add_argument("table")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "conf", None), data_root=getattr(args, "data", None),
                       overrides=[*(getattr(args, "overrides_before_command", None) or ()),
                                  *(getattr(args, "overrides", None) or ())])


def setup_logging(verbose: bool, quiet: bool = False) -> None:
    """The one place logging is configured, the same for every command: Python's root logger (DEBUG with ``-v``,
    WARNING with ``-q``, else INFO) and the JVM's level, which ``cxatlas.warehouse.spark`` reads from
    ``$CXATLAS_LOG_LEVEL`` (:func:`main` sets INFO for ``-v``, ERROR for ``-q``; else ``spark.log_level``) for the
    packaged log4j2.properties."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger().setLevel(level)
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:
        quiet_query_context_loggers()


def quiet_query_context_loggers() -> None:
    """pyspark logs every SQL/DataFrame analysis error it raises as a JSON record with the whole JVM stack (10 kB for
    a misspelt table name) on stderr, before the caller can handle it. The command line reports each error itself
    in one line (and the trace file), so those records are dropped; ``-v`` keeps them. The loggers must be pyspark's
    own class (it passes extra keyword arguments), hence created through ``PySparkLogger.getLogger``."""
    try:
        from pyspark.logger import PySparkLogger
    except ImportError:  # a pyspark without structured logging
        return
    for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        PySparkLogger.getLogger(name).setLevel(logging.CRITICAL)


@contextlib.contextmanager
def _restore_env(name: str, value: str | None):
    try:
        yield
    finally:
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def one_line(exc: BaseException) -> str:
    """The informative first line of an error: for a JVM error (py4j) the innermost Java exception, not
    "An error occurred while calling o123.save"."""
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    java = [line for line in lines if line.startswith("Caused by: ")]
    if java:
        line = java[-1][len("Caused by: "):]
    elif lines and lines[0].startswith("An error occurred while calling") and len(lines) > 1:
        line = lines[1].lstrip(": ")
    else:
        line = lines[0] if lines else ""
    line = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return line if len(line) <= 400 else line[:397] + "..."


def describe_commits(commits) -> str:
    if not commits:
        return "nothing was committed"
    return "committed before it stopped: " + ", ".join(f"{c.table} v{c.version}" for c in commits)


def write_trace(cfg: Config | None, command: str, exc: BaseException) -> str:
    """Write the full trace to ``<data_root>/<failures.log_dir>/<command>-<UTC>-<pid>.log`` (a temp folder when the
    data root is remote or unknown); returns the file's path."""
    import tempfile

    root = cfg.data_root if cfg is not None and "://" not in cfg.data_root else None
    folder = os.path.join(root, cfg.settings.failures.log_dir) if root else os.path.join(tempfile.gettempdir(),
                                                                                       "cxatlas-logs")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for where in (folder, os.path.join(tempfile.gettempdir(), "cxatlas-logs")):
        try:
            os.makedirs(where, exist_ok=True)
            path = os.path.join(where, f"{command}-{stamp}-{os.getpid()}.log")
            with open(path, "w", encoding="utf-8") as out:
                out.write(f"cxatlas {command} (argv {sys.argv!r})\n")
                out.write("".join(traceback.format_exception(exc)))
            return path
        except OSError:
            continue
    return "(no log file could be written)"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, load the config, run the command. Returns the exit code (see the module docstring)."""
    from cxatlas.warehouse.tables import commits_made

    args = build_parser().parse_args(argv)
    verbose, quiet = getattr(args, "verbose", False), getattr(args, "quiet", False)
    setup_logging(verbose, quiet)
    jvm_level = "INFO" if verbose else "ERROR" if quiet else None
    saved_level = os.environ.get(LOG_LEVEL_ENV)
    if jvm_level:  # for this command only: main() also runs in-process (tests, notebooks)
        os.environ[LOG_LEVEL_ENV] = jvm_level
    mark = len(commits_made())
    cfg = None
    with quiet_spark_startup(enabled=not verbose), _restore_env(LOG_LEVEL_ENV, saved_level):
        try:
            cfg = config_from_args(args)
            c.check_settings(args.command, cfg)
            return int(args.func(args, cfg) or 0)
        except UserError as exc:
            done = commits_made(mark)
            if not done:
                print(f"cxatlas {args.command}: error: {exc}", file=sys.stderr)
                return EXIT_USAGE
            print(f"cxatlas {args.command}: failed: {exc} ({describe_commits(done)})", file=sys.stderr)
            return EXIT_FAILED
        except Exception as exc:  # noqa: BLE001 - the one place a fault becomes one line and a log file
            trace = write_trace(cfg, args.command, exc)
            cause = c.explain_failure(cfg, exc) if cfg is not None else None
            print(f"cxatlas {args.command}: failed: {cause or one_line(exc)} ({describe_commits(commits_made(mark))}"
                  f"); full trace: {trace}", file=sys.stderr)
            if verbose:
                traceback.print_exception(exc)
            return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
