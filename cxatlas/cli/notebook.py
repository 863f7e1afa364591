"""What the analyst notebooks (``notebooks/*.ipynb``) call: one session over a data root's tables and catalog, and
the few queries and displays they show.

The notebooks stay thin (a call per cell) so that their logic lives here, with docstrings, type hints and the
package's tests, and a notebook that breaks is a bug in one small module rather than in cell code nobody tests.
Parameters come from the environment, as for the command line: ``CXATLAS_DATA`` (the data root) and
``CXATLAS_CONF`` (a settings overlay, e.g. another catalog database or metastore).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import pandas as pd

from cxatlas.cli.commands import open_store
from cxatlas.cli.quiet import quiet_spark_startup
from cxatlas.core.config import ENV_DATA, Config, load_config
from cxatlas.core.errors import UserError
from cxatlas.warehouse.catalog import VIEWS, register_catalog

# Spark's start-up chatter filter (cxatlas.cli.quiet), entered once and never left: the JVM keeps writing to the
# stderr it was started with for the whole life of the kernel, so the filter must outlive open_session.
_STDERR_FILTER: list = []

__all__ = ["Session", "open_session", "sql", "has_table", "tables_overview", "table_schema", "latest_analysis",
           "region_summary", "similarity_matrix", "figure_paths", "show_figures"]


@dataclass(frozen=True)
class Session:
    """A notebook's handle on one data root: its config, Spark session and table store (catalog database)."""

    cfg: Config
    spark: Any
    store: Any

    @property
    def database(self) -> str:
        """The catalog database the tables are registered in (bare table names resolve to it)."""
        return self.store.database


def open_session(data_root: str | None = None, *, default_data_root: str | None = None,
                 overrides: Sequence[str] = (), quiet: bool = True) -> Session:
    """Open Spark over a data root's tables, register them and the analyst views in the catalog, and print where
    they are.

    The data root is ``data_root``, else ``$CXATLAS_DATA``, else ``default_data_root`` (the notebooks pass
    ``../data``, where ``make demo`` writes, since Jupyter runs a notebook in its own folder). The settings overlay is
    ``$CXATLAS_CONF``; ``overrides`` are ``key=value`` settings like ``--set``. A data root without tables is a
    one-line :class:`UserError` saying how to make some, not a Spark error three cells later. ``quiet`` hides the
    JVM's start-up notes (as the command line does without ``-v``); real warnings and errors still show.
    """
    import fsspec

    root = data_root or os.environ.get(ENV_DATA) or default_data_root
    cfg = load_config(data_root=root, overrides=list(overrides))
    fs, path = fsspec.core.url_to_fs(cfg.table_root)
    if not fs.exists(path):
        raise UserError(f"no cxatlas tables under {cfg.table_root}: run `make demo` (or cxatlas ingest/annotate/"
                        f"analyze), or set {ENV_DATA} to a data root that has them")
    if quiet and not _STDERR_FILTER:
        _STDERR_FILTER.append(quiet_spark_startup())
        _STDERR_FILTER[0].__enter__()
    spark, store = open_store(cfg, "notebook")
    present = {t.name for t in spark.catalog.listTables(store.database)} \
        if spark.catalog.databaseExists(store.database) else set()
    if not set(VIEWS) <= present:
        # Tables register themselves when created, and annotate/import keep expression_scores in step with new
        # models; only views of result tables written since the last registration can be missing. Registering
        # checks every table (seconds each on a fresh JVM), so it runs only then.
        register_catalog(store)
    spark.catalog.setCurrentDatabase(store.database)
    names = spark.catalog.listTables(store.database)
    print(f"data root {cfg.data_root}: {len(names)} tables and views in catalog database {store.database}")
    return Session(cfg, spark, store)


def has_table(session: Session, name: str) -> bool:
    """Whether the catalog database holds a table or view ``name`` (tables appear when a job first writes them)."""
    return bool(session.spark.catalog.tableExists(f"{session.database}.{name}"))


def sql(session: Session, query: str, *, needs: Iterable[str] = (), limit: int | None = None,
        **params: Any) -> pd.DataFrame | None:
    """Run one SQL statement over the catalog (bare table names work) and return its rows as pandas.

    ``params`` fill named markers (``WHERE analysis_id = :analysis_id``), so values are never pasted into SQL text.
    ``needs`` names tables the query reads that a fresh data root may not have yet (``runs`` appears with the first
    ``cxatlas reprocess``): if one is missing the function says so and returns None instead of failing. A query
    Spark rejects is a one-line :class:`UserError`, as in ``cxatlas sql``.
    """
    from pyspark.errors import AnalysisException

    missing = [name for name in needs if not has_table(session, name)]
    if missing:
        print(f"no table {', '.join(missing)} in catalog database {session.database} yet "
              f"({', '.join(missing)} is written by the first run that produces it, e.g. `cxatlas reprocess`)")
        return None
    try:
        df = session.spark.sql(query, args=params or None)
        return (df.limit(limit) if limit else df).toPandas()
    except AnalysisException as exc:  # the same one line `cxatlas sql` prints
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"query failed: {first}") from None


def tables_overview(session: Session) -> pd.DataFrame:
    """Every table and view of the catalog database: kind, comment, and for tables their rows and Delta version
    (the version ``VERSION AS OF`` and ``cxatlas history`` refer to)."""
    entries = sorted(session.spark.catalog.listTables(session.database), key=lambda t: (t.tableType, t.name))
    tables = [t.name for t in entries if t.tableType != "VIEW"]
    # One job counts every table (Delta answers count(*) from its log's statistics) instead of one job per table.
    counts = dict(session.spark.sql(" UNION ALL ".join(
        f"SELECT '{name}' AS name, count(*) AS n FROM {session.database}.`{name}`" for name in tables)).collect()) \
        if tables else {}
    rows = []
    for table in entries:
        qualified = f"{session.database}.`{table.name}`"
        version = session.spark.sql(f"DESCRIBE HISTORY {qualified} LIMIT 1").first()["version"] \
            if table.name in counts else None
        rows.append({"name": table.name, "kind": "view" if table.tableType == "VIEW" else "table",
                     "rows": counts.get(table.name), "version": version, "comment": table.description})
    return pd.DataFrame(rows, columns=["name", "kind", "rows", "version", "comment"]).astype(
        {"rows": "Int64", "version": "Int64"})


def table_schema(session: Session, name: str) -> pd.DataFrame:
    """A table's or view's columns as the catalog holds them: type, partition column or not, and the column comment
    written with the table (``cxatlas/core/schemas.py``)."""
    if not has_table(session, name):
        raise UserError(f"no table or view {name!r} in catalog database {session.database}")
    return pd.DataFrame([{"column": c.name, "type": c.dataType, "partition": c.isPartition, "comment": c.description}
                         for c in session.spark.catalog.listColumns(f"{session.database}.{name}")])


def latest_analysis(session: Session) -> dict[str, Any]:
    """The most recent complete analysis (the ``analyses`` row, written last by ``cxatlas analyze``), as a dict."""
    rows = sql(session, "SELECT * FROM analyses ORDER BY finished DESC LIMIT 1") if has_table(session, "analyses") \
        else None
    if rows is None or rows.empty:
        raise UserError(f"no analysis in catalog database {session.database} yet: run `cxatlas analyze`")
    return rows.iloc[0].to_dict()


def region_summary(session: Session, analysis_id: str) -> pd.DataFrame:
    """One row per region of an analysis: videos, contexts analysed, how much of its context-expression pattern the
    rest of the world explains (r2 with SE, Fig. 3b), the region sharing the most, and its strongest association."""
    return sql(session, """
        WITH rows AS (
          SELECT * FROM context_expression_correlations
          WHERE analysis_id = :analysis_id AND r IS NOT NULL AND NOT isnan(r)
            AND analysis_id IN (SELECT analysis_id FROM analyses)),  -- complete analyses only (the commit marker)
        contexts AS (SELECT region, count(DISTINCT context) AS contexts FROM rows GROUP BY region),
        strongest AS (
          SELECT region, context, expression, r, n_videos,
                 row_number() OVER (PARTITION BY region ORDER BY abs(r) DESC, context, expression) AS rank
          FROM rows)
        SELECT w.region_name AS region, k.n_videos AS videos, c.contexts AS contexts_analysed,
               round(w.r2, 3) AS r2_world, round(w.se, 3) AS r2_se, w.best_match_name AS best_match,
               k.context AS strongest_context, k.expression AS strongest_expression, round(k.r, 3) AS r
        FROM region_vs_world_labelled w
        LEFT JOIN strongest k ON k.region = w.region AND k.rank = 1
        LEFT JOIN contexts c ON c.region = w.region
        WHERE w.analysis_id = :analysis_id ORDER BY w.r2 DESC NULLS LAST""", analysis_id=analysis_id)


def similarity_matrix(session: Session, analysis_id: str) -> pd.DataFrame:
    """Region x region similarity of context-expression associations (Fig. 3a) as a square table by region name."""
    pairs = sql(session, "SELECT region_a_name, region_b_name, r FROM region_similarity_labelled "
                         "WHERE analysis_id = :analysis_id", analysis_id=analysis_id)
    return pairs.pivot(index="region_a_name", columns="region_b_name", values="r").round(3)


def figure_paths(session: Session, analysis_id: str | None = None) -> list[str]:
    """The PNG figures an analysis wrote (``<data_root>/figures/<analysis_id>/``, local or object storage), sorted
    by name (fig2, fig3a, ...); the latest analysis when ``analysis_id`` is None."""
    import fsspec

    analysis = latest_analysis(session) if analysis_id is None else \
        sql(session, "SELECT * FROM analyses WHERE analysis_id = :a", a=analysis_id).iloc[0].to_dict()
    folder = analysis.get("figures_dir")
    if not folder:
        return []
    fs, path = fsspec.core.url_to_fs(folder)
    protocol = folder.split("://", 1)[0] + "://" if "://" in folder else ""
    return [protocol + p for p in sorted(fs.glob(path.rstrip("/") + "/*.png"))]


def show_figures(session: Session, analysis_id: str | None = None) -> list[str]:
    """Display an analysis' figures in the notebook (each under its file name) and return their paths."""
    import fsspec
    from IPython.display import Image, Markdown, display

    paths = figure_paths(session, analysis_id)
    if not paths:
        print("this analysis wrote no figures (analyze.figures.enabled is false)")
    for path in paths:
        display(Markdown(f"**{os.path.basename(path)}**"))
        with fsspec.open(path, "rb") as fh:
            display(Image(data=fh.read(), format="png"))
    return paths
