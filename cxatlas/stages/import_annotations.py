"""``cxatlas import-annotations``: bring per-video annotations made by any other system into cxatlas.

The import format
-----------------
One Parquet file, or a folder of Parquet files (every ``*.parquet`` in it is read; ``_``/``.``-prefixed entries are
skipped), one row per video:

==================  ===============  ==========================================================================
column              type             meaning
==================  ===============  ==========================================================================
``video_id``        string           required, unique in the file; the key shared with ``uploads``
``region``          string           required: one of the 12 region ids (``us_canada``, ...; the paper's display
                                     names such as ``USCanada`` are accepted too)
``lat``, ``lon``    double, nullable upload coordinates in degrees (both or neither); they place the video in a
                                     0.5-degree geobin (``geo.bin_deg``) for the maps
``expr_<label>``    float            one column per expression: the video's score (any finite number: a
                                     probability, a logit, a z-score; at least one column)
``ctx_<label>``     float            one column per context: its score in [0, 1] (binary 0/1 is the common case;
                                     at least one column)
==================  ===============  ==========================================================================

Labels may contain spaces and punctuation (``ctx_Football (2)``, ``expr_Surprise (negative)``). Expression labels
are normalised to the table's ``expr_<snake_case>`` columns (:func:`cxatlas.core.schemas.label_to_column`; two labels that
normalise alike are refused); context labels are kept verbatim. When ``taxonomy`` names a built-in taxonomy (or a
label file), every ``ctx_`` label must belong to it; any other taxonomy name takes the file's labels as they are.
Any other column is refused (naming it) unless ``allow_extra_columns``.

What the import writes (one commit per table)
---------------------------------------------
* ``uploads``: a row per new ``video_id`` with ``region``, ``lat``/``lon`` and their geobin, ``source`` = the input
  path. ``country`` stays null: the file states the region, and a country guessed from coordinates could contradict
  it near borders. A video already in ``uploads`` keeps its row; if its stored region differs the import row is
  quarantined (``region_conflict``).
* ``video_expressions``: ``model_name`` / ``model_version`` as given, ``n_windows``/``n_faces`` null (unknown),
  the ``expr_`` scores (new label columns are added to the table schema).
* ``video_contexts``: ``model_version`` and ``taxonomy`` as given; ``contexts`` holds the non-zero scores as a sparse
  ``array<struct<label, score>>``, highest first (zeros are implicit, exactly as the analysis reads them).
* ``quarantine`` (stage ``import``): every rejected row as JSON with its reason: ``missing_video_id``,
  ``unknown_region``, ``invalid_coordinates``, ``invalid_expression_score`` (null, NaN or infinite),
  ``invalid_context_score`` (null, NaN or outside [0, 1]), ``duplicate_video_id`` (every copy: the file does not
  say which is right), ``region_conflict``.

Rows in = imported + unchanged + quarantined, always. Annotations are immutable per model version: a video that
already has rows for this ``model_version`` (and taxonomy) is ``unchanged``, so re-importing a file commits nothing;
import corrected annotations under a new ``model_version``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from cxatlas.core.config import Config
from cxatlas.core.errors import UserError
from cxatlas.core.quarantine import to_quarantine_rows, write_quarantine
from cxatlas.core.runs import RunReport, utc_timestamp
from cxatlas.core.regions import REGIONS
from cxatlas.core.schemas import (CTX_PREFIX, EXPR_PREFIX, UPLOADS, VIDEO_CONTEXTS, VIDEO_EXPRESSIONS, label_to_column,
                             spark_schema)
from cxatlas.core.tables import TableStore

log = logging.getLogger(__name__)

STAGE = "import"
REQUIRED = ("video_id", "region")
OPTIONAL = ("lat", "lon")
KEEP_NULLS = {"ignoreNullFields": "false"}
REASONS = ("missing_video_id", "unknown_region", "invalid_coordinates", "invalid_expression_score",
           "invalid_context_score", "duplicate_video_id", "region_conflict")


class ImportFormatError(UserError, ValueError):
    """The input as a whole cannot be imported (unreadable, wrong columns, labels outside the taxonomy)."""


@dataclass
class ImportReport(RunReport):
    """Counts of one import; ``rows_in == imported + unchanged + quarantined`` always."""

    input: str = ""
    model_version: str = ""
    taxonomy: str = ""
    expressions: list[str] = field(default_factory=list)
    n_contexts: int = 0
    rows_in: int = 0
    imported: int = 0
    unchanged: int = 0
    quarantined: int = 0
    new_uploads: int = 0

    def headline(self) -> str:
        return (f"import {self.input} (run {self.run_id}): model_version {self.model_version}, taxonomy "
                f"{self.taxonomy}, {len(self.expressions)} expressions, {self.n_contexts} contexts")

    def balance(self):
        return ("rows in", self.rows_in), [("imported", self.imported), ("unchanged", self.unchanged),
                                           ("quarantined", self.quarantined)]

    def details(self) -> list[str]:
        return [f"  new uploads: {self.new_uploads}"]


def _c(name: str):
    """A column by its exact name, whatever punctuation it holds (dots, spaces, backticks)."""
    from pyspark.sql import functions as F

    return F.col("`" + name.replace("`", "``") + "`")


@dataclass(frozen=True)
class ImportColumns:
    """How the file's columns map onto the tables: ``expr`` file column -> table column, ``ctx`` file column ->
    context label (both in file order)."""

    expr: dict[str, str]
    ctx: dict[str, str]


def check_columns(columns: list[str], allow_extra: bool = False, taxonomy_labels: set[str] | None = None
                  ) -> ImportColumns:
    """Refuse an input whose columns are wrong, naming every problem at once."""
    problems = [f"missing required column '{c}'" for c in REQUIRED if c not in columns]
    expr = {c: label_to_column(c[len(EXPR_PREFIX):]) for c in columns
            if c.startswith(EXPR_PREFIX) and c[len(EXPR_PREFIX):].strip()}
    ctx = {c: c[len(CTX_PREFIX):] for c in columns if c.startswith(CTX_PREFIX) and c[len(CTX_PREFIX):].strip()}
    if not expr:
        problems.append("no expression column (expr_<label>)")
    if not ctx:
        problems.append("no context column (ctx_<label>)")
    seen: dict[str, str] = {}
    for src, dst in expr.items():
        if dst in seen:
            problems.append(f"expression columns '{seen[dst]}' and '{src}' both become '{dst}'")
        seen[dst] = src
    extra = [c for c in columns if c not in REQUIRED + OPTIONAL and c not in expr and c not in ctx]
    if extra and not allow_extra:
        problems.append(f"unexpected column(s) {extra} (pass allow_extra_columns=True to ignore them)")
    if taxonomy_labels is not None:
        unknown = [label for label in ctx.values() if label not in taxonomy_labels]
        if unknown:
            problems.append(f"{len(unknown)} context label(s) not in the taxonomy, e.g. {unknown[:10]}")
    if problems:
        raise ImportFormatError("cannot import: " + "; ".join(problems) + ". Expected columns: video_id, region, "
                                "optional lat, lon, then expr_<label>... and ctx_<label>... (see "
                                "cxatlas.stages.import_annotations)")
    return ImportColumns(expr, ctx)


def read_input(spark, path: str):
    """The file or folder as a DataFrame (every ``*.parquet``; ``_``-prefixed entries such as a simulator's
    ``_population`` are skipped by Spark)."""
    try:
        return spark.read.option("pathGlobFilter", "*.parquet").parquet(path)
    except Exception as exc:  # noqa: BLE001 - re-raised with the path
        text = str(exc)
        if "PATH_NOT_FOUND" in text or "does not exist" in text:
            raise ImportFormatError(f"input not found: {path}") from None
        raise ImportFormatError(f"cannot read {path} as Parquet: {text.splitlines()[0]}") from exc


def validate(raw, cols: ImportColumns, bin_deg: float):
    """Parse and validate rows: adds ``_vid``, ``_region``, ``_lat``, ``_lon``, ``_lat_bin``, ``_lon_bin``, the
    ``_e<i>`` expression doubles, ``_scores`` (context scores as an array in file order) and ``_reason`` (null when
    valid). Spark expressions only (array higher-order functions over the context scores, no Python per row)."""
    from pyspark.sql import functions as F

    display = {r.display_name: r.id for r in REGIONS}
    ids = {r.id: r.id for r in REGIONS}
    region_map = F.create_map(*[x for k, v in sorted({**display, **ids}.items()) for x in (F.lit(k), F.lit(v))])
    vid = F.trim(F.col("video_id").cast("string"))
    has = set(raw.columns)
    lat = F.col("lat").try_cast("double") if "lat" in has else F.lit(None).cast("double")
    lon = F.col("lon").try_cast("double") if "lon" in has else F.lit(None).cast("double")
    raw_lat = F.col("lat") if "lat" in has else F.lit(None)
    raw_lon = F.col("lon") if "lon" in has else F.lit(None)
    df = raw.select(
        "*",
        F.when(vid == "", None).otherwise(vid).alias("_vid"),
        region_map[F.trim(F.col("region").cast("string"))].alias("_region"),
        lat.alias("_lat"), lon.alias("_lon"),
        *[_c(src).try_cast("double").alias(f"_e{i}") for i, src in enumerate(cols.expr)],
        F.array(*[_c(src).try_cast("double") for src in cols.ctx]).alias("_scores"),
    )

    def bad_number(x):
        return x.isNull() | F.isnan(x) | (F.abs(x) == float("inf"))

    coords_bad = ((raw_lat.isNotNull() & bad_number(F.col("_lat"))) | (raw_lon.isNotNull() & bad_number(F.col("_lon")))
                  | (F.col("_lat").isNull() != F.col("_lon").isNull())
                  | (F.abs(F.col("_lat")) > 90) | (F.abs(F.col("_lon")) > 180))
    expr_bad = F.lit(False)
    for i in range(len(cols.expr)):
        expr_bad = expr_bad | bad_number(F.col(f"_e{i}"))
    ctx_bad = F.exists("_scores", lambda s: bad_number(s) | (s < 0) | (s > 1))
    reason = (F.when(F.col("_vid").isNull(), "missing_video_id")
              .when(F.col("_region").isNull(), "unknown_region")
              .when(F.coalesce(coords_bad, F.lit(False)), "invalid_coordinates")
              .when(expr_bad, "invalid_expression_score")
              .when(ctx_bad, "invalid_context_score"))
    return df.withColumn("_reason", reason) \
        .withColumn("_lat_bin", F.floor(F.col("_lat") / F.lit(bin_deg)).cast("int")) \
        .withColumn("_lon_bin", F.floor(F.col("_lon") / F.lit(bin_deg)).cast("int"))


def _detail(cols: ImportColumns):
    """Human-readable detail of a rejected row (computed on rejects only: it scans every score)."""
    from pyspark.sql import functions as F

    expr_names = list(cols.expr)
    labels = F.array(*[F.lit(label) for label in cols.ctx.values()])
    first_bad_ctx = F.filter(F.transform("_scores", lambda s, i: F.struct(labels[i].alias("l"), s.alias("s"))),
                             lambda x: x.s.isNull() | F.isnan(x.s) | (x.s < 0) | (x.s > 1))[0]
    first_bad_expr = F.coalesce(*[F.when(F.col(f"_e{i}").isNull() | F.isnan(F.col(f"_e{i}")) |
                                         (F.abs(F.col(f"_e{i}")) == float("inf")), F.lit(name))
                                  for i, name in enumerate(expr_names)])
    r = F.col("_reason")
    return (F.when(r == "missing_video_id", F.lit("video_id is null or blank"))
            .when(r == "unknown_region", F.concat(F.lit("region '"), F.coalesce(F.col("region").cast("string"),
                                                                               F.lit("null")),
                                                  F.lit("' is not one of the 12 region ids")))
            .when(r == "invalid_coordinates", F.lit("lat/lon must both be null or both finite within +-90/+-180"))
            .when(r == "invalid_expression_score", F.concat(F.lit("expression score "), first_bad_expr,
                                                            F.lit(" is null, NaN or infinite")))
            .when(r == "invalid_context_score",
                  F.concat(F.lit("context '"), first_bad_ctx["l"], F.lit("' has score "),
                           F.coalesce(first_bad_ctx["s"].cast("string"), F.lit("null")),
                           F.lit(" (must lie in [0, 1])")))
            .when(r == "duplicate_video_id", F.lit("this video_id occurs more than once in the input"))
            .when(r == "region_conflict", F.concat(F.lit("uploads holds this video in region "),
                                                   F.col("_stored_region"))))


def _taxonomy_labels(taxonomy: str) -> set[str] | None:
    from cxatlas.core.taxonomies import load_taxonomy

    try:
        return set(load_taxonomy(taxonomy).labels)
    except (FileNotFoundError, ValueError):
        return None


def run_import(spark, cfg: Config, store: TableStore, input_path: str, model_version: str = "imported",
               taxonomy: str = "imported", model_name: str = "imported", context_model_version: str | None = None,
               allow_extra_columns: bool = False) -> ImportReport:
    """Import a wide annotation file (format: module docstring) into uploads, the annotation tables and quarantine.

    Parameters
    ----------
    input_path : Parquet file or folder (local path or Hadoop URI).
    model_version : ``video_expressions.model_version`` (and, unless ``context_model_version`` is given,
        ``video_contexts.model_version``) of the imported rows; ``cxatlas analyze`` selects annotations by it.
    taxonomy : ``video_contexts.taxonomy``. A built-in taxonomy name (or label file) makes the import check every
        context label against it.
    model_name : ``video_expressions.model_name`` / ``video_contexts.model_name``.
    allow_extra_columns : ignore columns outside the format instead of refusing the file.

    Returns
    -------
    ImportReport
        ``rows_in == imported + unchanged + quarantined``.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    ctx_version = context_model_version or model_version
    report = ImportReport(input=input_path, model_version=model_version, taxonomy=taxonomy)
    run_id = report.run_id
    raw = read_input(spark, input_path)
    cols = check_columns(raw.columns, allow_extra_columns, _taxonomy_labels(taxonomy))
    report.expressions, report.n_contexts = list(cols.expr.values()), len(cols.ctx)
    bin_deg = cfg.settings.geo.bin_deg
    log.info("import %s: %d expression and %d context columns", input_path, len(cols.expr), len(cols.ctx))

    uploads = store.table(UPLOADS).create_if_missing()
    expressions = store.table(VIDEO_EXPRESSIONS).create_if_missing()
    contexts = store.table(VIDEO_CONTEXTS).create_if_missing()
    # What the tables already hold for these videos, as one frame keyed by video_id (small on a first import, so
    # the joins below become broadcasts and the wide input rows are never shuffled).
    stored = uploads.read().select(F.col("video_id").alias("_vid"), F.col("region").alias("_stored_region"))
    done_expr = (expressions.read().filter(F.col("model_version") == model_version)
                 .select(F.col("video_id").alias("_vid"), F.lit(True).alias("_has_expr")))
    done_ctx = (contexts.read().filter((F.col("model_version") == ctx_version) & (F.col("taxonomy") == taxonomy))
                .select(F.col("video_id").alias("_vid"), F.lit(True).alias("_has_ctx")))
    existing = stored.join(done_expr, "_vid", "full").join(done_ctx, "_vid", "full")

    checked = validate(raw, cols, bin_deg)
    dup_ids = (checked.filter(F.col("_vid").isNotNull()).groupBy("_vid").count().filter(F.col("count") > 1)
               .select("_vid", F.lit(True).alias("_dup")))
    checked = (checked.join(dup_ids, "_vid", "left").join(existing, "_vid", "left")
               .withColumn("_reason", F.coalesce(
                   F.col("_reason"),
                   F.when(F.col("_dup"), F.lit("duplicate_video_id")),
                   F.when(F.col("_stored_region").isNotNull() & (F.col("_stored_region") != F.col("_region")),
                          F.lit("region_conflict"))))
               .withColumn("_has_expr", F.coalesce("_has_expr", F.lit(False)))
               .withColumn("_has_ctx", F.coalesce("_has_ctx", F.lit(False))))
    # Rejects keep their whole input row (JSON) and a detail; then the raw columns go, so only the parsed values are
    # cached (an input with hundreds of context columns would otherwise be held twice).
    rejected = F.col("_reason").isNotNull()
    checked = (checked.withColumn("_detail", F.when(rejected, _detail(cols)))
               .withColumn("_source_row", F.when(rejected, F.to_json(F.struct(*[_c(c) for c in raw.columns]),
                                                                    KEEP_NULLS)))
               .select(*[c for c in checked.columns if c.startswith("_")], "_detail", "_source_row")
               .persist(StorageLevel.MEMORY_AND_DISK))
    valid = checked.filter(F.col("_reason").isNull())

    counts = checked.groupBy("_reason").agg(
        F.count(F.lit(1)).alias("n"),
        F.sum(F.when(F.col("_has_expr") & F.col("_has_ctx"), 1).otherwise(0)).alias("unchanged"),
        F.sum(F.when(F.col("_stored_region").isNull(), 1).otherwise(0)).alias("new_uploads")).collect()
    report.reasons = {r["_reason"]: int(r["n"]) for r in counts if r["_reason"] is not None}
    ok = [r for r in counts if r["_reason"] is None]
    report.quarantined = int(sum(report.reasons.values()))
    report.unchanged = int(ok[0]["unchanged"]) if ok else 0
    report.imported = (int(ok[0]["n"]) if ok else 0) - report.unchanged
    report.new_uploads = int(ok[0]["new_uploads"]) if ok else 0
    report.rows_in = report.imported + report.unchanged + report.quarantined

    now = F.lit(utc_timestamp(report.started)).cast("timestamp")
    lineage = {"video_id": F.col("_vid"), "region": F.col("_region"), "lat_bin": F.col("_lat_bin"),
               "lon_bin": F.col("_lon_bin"), "model_name": F.lit(model_name), "annotate_time": now,
               "run_id": F.lit(run_id)}

    # uploads: only videos it does not hold yet.
    up_values = {**lineage, "uri": F.lit(None), "country": F.lit(None), "lat": F.col("_lat"), "lon": F.col("_lon"),
                 "upload_time": F.lit(None), "title": F.lit(None), "description": F.lit(None),
                 "text_flags": F.lit(None), "source": F.lit(input_path), "ingest_time": now}
    new_uploads = valid.filter(F.col("_stored_region").isNull())
    report.commits[UPLOADS.name] = uploads.append(shape_to_schema(new_uploads, UPLOADS.schema, up_values))

    # video_expressions: the table's columns, plus any label column new to it (schema evolution, same commit).
    from pyspark.sql.types import FloatType, StructField, StructType

    current = expressions.read().schema
    new_cols = [dst for dst in cols.expr.values() if dst not in current.fieldNames()]
    target = StructType([f for f in current.fields] + [StructField(c, FloatType(), True) for c in new_cols])
    expr_values = {**lineage, "model_version": F.lit(model_version), "n_windows": F.lit(None),
                   "n_faces": F.lit(None)}
    expr_values.update({dst: F.col(f"_e{i}") for i, dst in enumerate(cols.expr.values())})
    expr_rows = shape_to_schema(valid.filter(~F.col("_has_expr")), target, expr_values)
    report.commits[VIDEO_EXPRESSIONS.name] = expressions.append(expr_rows, evolve_schema=bool(new_cols))

    # video_contexts: non-zero scores, sparse, highest first.
    labels = F.array(*[F.lit(label) for label in cols.ctx.values()])
    pairs = F.transform("_scores", lambda s, i: F.struct(labels[i].alias("label"), s.cast("float").alias("score")))
    sparse = F.array_sort(F.filter(pairs, lambda x: x.score > 0),
                          lambda a, b: F.when(a.score > b.score, -1).when(a.score < b.score, 1).otherwise(0))
    ctx_values = {**lineage, "model_version": F.lit(ctx_version), "taxonomy": F.lit(taxonomy), "contexts": sparse}
    ctx_rows = shape_to_schema(valid.filter(~F.col("_has_ctx")), VIDEO_CONTEXTS.schema, ctx_values)
    report.commits[VIDEO_CONTEXTS.name] = contexts.append(ctx_rows)

    rejects = checked.filter(F.col("_reason").isNotNull()).withColumn("_source", F.lit(input_path))
    report.commits["quarantine"] = write_quarantine(store, to_quarantine_rows(
        rejects, stage=STAGE, reason_col="_reason", detail_col="_detail", source_row_col="_source_row",
        source_col="_source", run_id=run_id, video_id_col="_vid"))
    checked.unpersist()
    report.finish()
    log.info("import %s finished in %.1fs: %d imported, %d unchanged, %d quarantined", input_path, report.seconds,
             report.imported, report.unchanged, report.quarantined)
    return report


def shape_to_schema(df, schema, values: dict):
    """Select ``schema``'s columns from ``values`` (null of the column type where a column has no value)."""
    import pyarrow as pa

    from pyspark.sql import functions as F

    spark_type = spark_schema(schema) if isinstance(schema, pa.Schema) else schema
    return df.select(*[(values[f.name] if f.name in values else F.lit(None)).cast(f.dataType).alias(f.name)
                       for f in spark_type.fields])
