"""Schemas of every cxatlas table, with column comments (they travel into the Delta schema and show in SQL).

Arrow schemas are the single source of truth: the Spark schemas are derived from them (``spark_schema``), and the
independent Delta reader in the tests (``deltalake``) checks the written tables against them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa

# The 16 facial-expression annotations of Cowen et al. (2021), in the paper's order.
PAPER_EXPRESSIONS: tuple[str, ...] = (
    "Amusement", "Anger", "Awe", "Concentration", "Confusion", "Contempt", "Contentment", "Desire",
    "Disappointment", "Doubt", "Elation", "Interest", "Pain", "Sadness", "Surprise", "Triumph",
)
EXPR_PREFIX = "expr_"
CTX_PREFIX = "ctx_"


def label_to_column(label: str, prefix: str = EXPR_PREFIX) -> str:
    """Column name for a label: ``prefix`` + lower snake_case (``"Amusement"`` -> ``"expr_amusement"``,
    ``"Surprise (negative)"`` -> ``expr_surprise_negative``, ``"United States:Joy"`` -> ``expr_united_states_joy``).

    camelCase boundaries become underscores too, so labels from other taxonomies map predictably. The one
    definition used by tables, models and imports alike.
    """
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", label)
    snake = re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")
    if not snake:
        raise ValueError(f"label {label!r} has no letters or digits to build a column name from")
    return prefix + snake


def _f(name: str, typ: pa.DataType, comment: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, typ, nullable=nullable, metadata={"comment": comment})


TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class TableSpec:
    """A table's name, schema, partition columns, key (one row per key) and the columns ``optimize`` Z-orders by."""

    name: str
    schema: pa.Schema
    partition_by: tuple[str, ...]
    key: tuple[str, ...]
    comment: str
    zorder_by: tuple[str, ...] = ()
    # Delta's change data feed: incremental statistics read which videos changed between two versions from it.
    change_feed: bool = False

    @property
    def data_schema(self) -> pa.Schema:
        """The columns stored inside data files (Delta keeps partition values in the log, not in the files)."""
        return pa.schema([f for f in self.schema if f.name not in self.partition_by])


GEO_FIELDS = [
    _f("region", pa.string(), "world region id (cxatlas.core.regions); null when the country has no region"),
    _f("lat_bin", pa.int32(), "floor(lat / geo.bin_deg): the geobin row"),
    _f("lon_bin", pa.int32(), "floor(lon / geo.bin_deg): the geobin column"),
]

UPLOADS = TableSpec(
    name="uploads",
    schema=pa.schema([
        _f("video_id", pa.string(), "manifest key of the video; one row per video", nullable=False),
        _f("uri", pa.string(), "where the video file lives (local path or fsspec/Hadoop URI)"),
        _f("country", pa.string(), "uploader country, ISO 3166-1 alpha-2, upper case"),
        GEO_FIELDS[0],
        _f("lat", pa.float64(), "upload latitude, degrees"),
        _f("lon", pa.float64(), "upload longitude, degrees"),
        GEO_FIELDS[1],
        GEO_FIELDS[2],
        _f("upload_time", TS, "when the video was uploaded (UTC); the latest upload of a video_id wins"),
        _f("title", pa.string(), "title, truncated to ingest.max_title_chars"),
        _f("description", pa.string(), "description, truncated to ingest.max_description_chars"),
        _f("text_flags", pa.list_(pa.string()),
           "repairs made to the text: title_truncated, description_truncated, title_invalid_utf8, ..."),
        _f("source", pa.string(), "the manifest this row came from"),
        _f("ingest_time", TS, "when cxatlas ingested this row"),
        _f("withdrawn", pa.bool_(), "true: a tombstone; the uploader withdrew the video at upload_time, its annotations "
                                    "were deleted and it counts in no statistic (a later upload brings it back)"),
    ]),
    partition_by=("region",),
    key=("video_id",),
    comment="One row per validated video upload (withdrawn videos stay as tombstones).",
    change_feed=True,
)

QUARANTINE = TableSpec(
    name="quarantine",
    schema=pa.schema([
        _f("stage", pa.string(), "which job rejected the row: ingest, annotate, import, ..."),
        _f("reason", pa.string(), "machine-readable reason, e.g. coordinates_outside_country"),
        _f("detail", pa.string(), "human-readable detail"),
        _f("video_id", pa.string(), "the row's video_id when it had one"),
        _f("source", pa.string(), "the manifest or table the row came from"),
        _f("source_row", pa.string(), "the rejected row as JSON, so nothing is lost"),
        _f("row_hash", pa.string(), "sha256 of stage|reason|source_row: makes re-runs idempotent"),
        _f("run_id", pa.string(), "the run that quarantined it"),
        _f("quarantine_time", TS, "when"),
    ]),
    partition_by=("stage",),
    key=("row_hash",),
    comment="Rows and videos a job could not accept, with the reason. Input = accepted + quarantined.",
)

_ANNOTATION_LINEAGE = [
    _f("video_id", pa.string(), "uploads.video_id", nullable=False),
    *GEO_FIELDS,
    _f("model_name", pa.string(), "registry name of the model that produced the row"),
    _f("model_version", pa.string(), "exact model/weights version (checkpoint hash)"),
    _f("annotate_time", TS, "when the row was produced"),
    _f("run_id", pa.string(), "the annotate run that produced the row"),
]

VIDEO_EXPRESSIONS = TableSpec(
    name="video_expressions",
    schema=pa.schema([
        *_ANNOTATION_LINEAGE,
        _f("n_windows", pa.int32(), "face windows scored (0: no face found; scores are then null)"),
        _f("n_faces", pa.int32(), "face tracks found over all windows"),
        *[_f(label_to_column(label), pa.float32(), f"mean score of '{label}' over the video's face windows")
          for label in PAPER_EXPRESSIONS],
    ]),
    partition_by=("region",),
    key=("video_id", "model_version"),
    zorder_by=("lat_bin", "lon_bin"),
    change_feed=True,
    comment=("One row per (video, expression model version): per-window scores averaged per video (the paper's unit). "
             "Models with other label sets add their expr_<label> columns on first write."),
)

CONTEXT_SCORE = pa.struct([pa.field("label", pa.string()), pa.field("score", pa.float32())])

VIDEO_CONTEXTS = TableSpec(
    name="video_contexts",
    schema=pa.schema([
        *_ANNOTATION_LINEAGE,
        _f("taxonomy", pa.string(), "context taxonomy name, e.g. nature2021_exp1"),
        _f("contexts", pa.list_(CONTEXT_SCORE),
           "sparse context scores in [0,1]: labels above the threshold (or top-k), highest first"),
    ]),
    partition_by=("region",),
    key=("video_id", "model_version", "taxonomy"),
    zorder_by=("lat_bin", "lon_bin"),
    change_feed=True,
    comment="One row per (video, context model version, taxonomy), scores stored sparsely.",
)

CORE_TABLES: tuple[TableSpec, ...] = (UPLOADS, QUARANTINE, VIDEO_EXPRESSIONS, VIDEO_CONTEXTS)


def live_uploads(uploads_df):
    """The uploads that count: tombstones of withdrawn videos left out (tables written before the ``withdrawn``
    column existed have none)."""
    from pyspark.sql import functions as F

    if "withdrawn" not in uploads_df.columns:
        return uploads_df
    return uploads_df.filter(~F.coalesce(F.col("withdrawn"), F.lit(False)))


def spark_schema(schema: pa.Schema):
    """The Spark StructType for an Arrow schema, keeping column comments."""
    from pyspark.sql.pandas.types import from_arrow_type
    from pyspark.sql.types import StructField, StructType

    fields = []
    for f in schema:
        meta = {k.decode(): v.decode() for k, v in (f.metadata or {}).items()}
        fields.append(StructField(f.name, from_arrow_type(f.type), f.nullable, meta))
    return StructType(fields)
