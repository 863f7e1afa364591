"""The catalog analysts see: every table by name, plus views that put the wide tables in the shape SQL users want.

Tables are registered by :class:`cxatlas.warehouse.tables.Table` when they are created; :func:`register_catalog` also
(re)registers tables written before the catalog existed and (re)creates the analyst views, which are persisted in the
metastore like the tables, so a new process (``cxatlas sql``, ``cxatlas sql-server``, a notebook) sees them:

* ``expression_scores``: one row per (video, expression model version, expression) with region and geobin, unpivoted
  from ``video_expressions``' ``expr_*`` columns (recreated when a new model adds columns);
* ``context_scores``: one row per (video, context model version, taxonomy, context), exploded from ``contexts``;
* ``regions``: region id -> the paper's display name; and ``<result>_labelled`` views of the result tables with
  display names next to region ids, holding only the rows of complete analyses (those with an ``analyses`` row, the
  commit marker ``cxatlas analyze`` writes last).
"""
from __future__ import annotations

from cxatlas.core.errors import UserError
from cxatlas.core.regions import REGIONS
from cxatlas.core.release_schemas import RELEASE_TABLES
from cxatlas.core.result_schemas import (ANALYSES, CONTEXT_EXPRESSION_CORRELATIONS, REGION_SIMILARITY, REGION_VS_WORLD,
                                         RESULT_TABLES)
from cxatlas.core.run_schemas import RUN_TABLES
from cxatlas.core.schemas import CORE_TABLES, EXPR_PREFIX, VIDEO_CONTEXTS, VIDEO_EXPRESSIONS, TableSpec
from cxatlas.warehouse.tables import TableStore

ALL_TABLES: tuple[TableSpec, ...] = (*CORE_TABLES, *RESULT_TABLES, *RUN_TABLES, *RELEASE_TABLES)
VIEWS = ("expression_scores", "context_scores", "regions", "context_expression_correlations_labelled",
         "region_similarity_labelled", "region_vs_world_labelled")


def table_spec(name: str) -> TableSpec:
    for spec in ALL_TABLES:
        if spec.name == name:
            return spec
    raise UserError(f"unknown table {name!r}; tables: {', '.join(s.name for s in ALL_TABLES)}")


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def expression_view_sql(db: str, expr_columns: list[str]) -> str:
    """Unpivot ``expr_*`` columns into (expression, score) rows; null scores (another model's labels) are dropped."""
    pairs = ", ".join(f"named_struct('expression', {_quote(c[len(EXPR_PREFIX):])}, 'score', `{c}`)"
                      for c in expr_columns)
    return (f"CREATE OR REPLACE VIEW {db}.expression_scores COMMENT 'one row per (video, expression model version, "
            f"expression), unpivoted from video_expressions' AS SELECT e.video_id, e.region, e.lat_bin, e.lon_bin, "
            f"e.model_name, e.model_version, x.expression, x.score FROM {db}.video_expressions e "
            f"LATERAL VIEW explode(array({pairs})) t AS x WHERE x.score IS NOT NULL")


#: (Spark application, statement) of the views this process created. ``CREATE OR REPLACE VIEW`` with the same text
#: in the same session changes nothing, so each job's call (annotate, import) skips the metastore round trips (issue
#: #25: 12 s per run); a new column or table gives a new statement, which runs.
_CREATED_VIEWS: set[tuple[str, str]] = set()


def _create_view(spark, statement: str) -> None:
    key = (spark.sparkContext.applicationId, statement)
    if key not in _CREATED_VIEWS:
        spark.sql(statement)
        _CREATED_VIEWS.add(key)


def register_catalog(store: TableStore) -> list[str]:
    """Register every existing table and (re)create the analyst views whose tables exist; returns what the
    database now holds (tables and views)."""
    spark, db = store.spark, store.database
    names = store.register_all(ALL_TABLES)
    present = {n.split(".", 1)[1] for n in names}
    region_rows = ", ".join(f"({_quote(r.id)}, {_quote(r.display_name)})" for r in REGIONS)
    _create_view(spark, f"CREATE OR REPLACE VIEW {db}.regions (region, region_name) COMMENT 'region id -> the paper''s "
              f"display name' AS SELECT * FROM VALUES {region_rows}".replace("paper''s", "paper\\'s"))
    views = [f"{db}.regions"]
    if VIDEO_EXPRESSIONS.name in present:
        columns = [c for c in store.table(VIDEO_EXPRESSIONS).read().columns if c.startswith(EXPR_PREFIX)]
        if columns:
            _create_view(spark, expression_view_sql(db, columns))
            views.append(f"{db}.expression_scores")
    if VIDEO_CONTEXTS.name in present:
        _create_view(spark, f"CREATE OR REPLACE VIEW {db}.context_scores COMMENT 'one row per (video, context model version, "
                  f"taxonomy, context), exploded from video_contexts' AS SELECT v.video_id, v.region, v.lat_bin, "
                  f"v.lon_bin, v.model_name, v.model_version, v.taxonomy, c.label AS context, c.score "
                  f"FROM {db}.video_contexts v LATERAL VIEW inline(v.contexts) c")
        views.append(f"{db}.context_scores")
    for spec, joins in ((CONTEXT_EXPRESSION_CORRELATIONS, (("region", "region_name"),)),
                        (REGION_VS_WORLD, (("region", "region_name"), ("best_match_region", "best_match_name"))),
                        (REGION_SIMILARITY, (("region_a", "region_a_name"), ("region_b", "region_b_name")))):
        if spec.name not in present or ANALYSES.name not in present:
            continue
        selects = ", ".join(f"r{i}.region_name AS {alias}" for i, (_, alias) in enumerate(joins))
        froms = " ".join(f"LEFT JOIN {db}.regions r{i} ON t.{col} = r{i}.region" for i, (col, _) in enumerate(joins))
        _create_view(spark, f"CREATE OR REPLACE VIEW {db}.{spec.name}_labelled COMMENT '{spec.name} with the paper''s region "
                  f"names' AS SELECT t.*, {selects} FROM {db}.{spec.name} t {froms} "
                  f"WHERE t.analysis_id IN (SELECT analysis_id FROM {db}.{ANALYSES.name})"
                  .replace("paper''s", "paper\\'s"))
        views.append(f"{db}.{spec.name}_labelled")
    return [*names, *views]
