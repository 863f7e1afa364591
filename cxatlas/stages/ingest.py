"""Manifest ingest: read, validate every row, upsert valid uploads, quarantine the rest. Counts always reconcile.

Data flow (all distributed; only counts and file metadata reach the driver)::

    manifest (CSV / JSON lines / Parquet, any Hadoop or fsspec URI)
      -> columns checked (missing or unexpected columns: ManifestError naming them)
      -> parsed + validated (Spark expressions; coordinates and countries in a pandas UDF over cxatlas.core.geo)
      -> sharded by a stable hash of video_id (``ingest.partitions``)
      -> duplicates resolved: within the manifest and against ``uploads``, the latest upload_time wins
      -> ``uploads`` upsert (one commit) and ``quarantine`` append (one commit)

Rows in = new + updated + unchanged + quarantined. Re-ingesting a manifest changes nothing: its rows are
``unchanged`` and its bad rows are already quarantined (by row hash).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

import pandas as pd

from cxatlas.core.config import Config
from cxatlas.core.errors import UserError
from cxatlas.core.runs import RunReport, utc_timestamp
from cxatlas.core.quarantine import to_quarantine_rows, write_quarantine
from cxatlas.core.regions import load_country_regions
from cxatlas.core.schemas import UPLOADS
from cxatlas.core.tables import CommitResult, TableStore

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("video_id", "uri", "lat", "lon", "country", "upload_time", "title", "description")
OPTIONAL_COLUMNS = ("source",)
FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".ndjson": "json", ".parquet": "parquet",
           ".pq": "parquet"}
CORRUPT = "_corrupt_record"
STATUSES = ("new", "updated", "unchanged", "quarantined")
KEEP_NULLS = {"ignoreNullFields": "false"}  # a quarantined row keeps every column, nulls included


class ManifestError(UserError, ValueError):
    """The manifest as a whole cannot be ingested (unreadable, or its columns are wrong)."""


@dataclass
class IngestReport(RunReport):
    """Counts of one ingest run; ``rows_in == new + updated + unchanged + quarantined`` always."""

    manifest: str = ""
    rows_in: int = 0
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0
    replaced_rows_quarantined: int = 0

    def headline(self) -> str:
        return f"ingest {self.manifest} (run {self.run_id})"

    def balance(self):
        return ("rows in", self.rows_in), [("new", self.new), ("updated", self.updated),
                                           ("unchanged", self.unchanged), ("quarantined", self.quarantined)]

    def details(self) -> list[str]:
        if not self.replaced_rows_quarantined:
            return []
        return [f"  older uploads replaced and moved to quarantine: {self.replaced_rows_quarantined}"]


def detect_format(path: str, fmt: str | None = None) -> str:
    if fmt:
        if fmt not in set(FORMATS.values()):
            raise ManifestError(f"unknown manifest format {fmt!r}; use one of {sorted(set(FORMATS.values()))}")
        return fmt
    lowered = path.lower().rstrip("/")
    for suffix, kind in FORMATS.items():
        if lowered.endswith(suffix):
            return kind
    raise ManifestError(f"cannot tell the format of manifest {path!r} from its name; pass --format csv|json|parquet")


def read_manifest(spark, path: str, fmt: str | None = None, *, csv_multiline: bool = True):
    """Read a manifest with every column as a string (validation, not the reader, decides what is bad).

    CSV and JSON keep malformed lines in ``_corrupt_record`` instead of failing; Spark decodes text as UTF-8 and
    replaces invalid bytes with U+FFFD, which validation flags. Hadoop URIs are read by Spark directly; other fsspec
    URIs (http://, memory://, ...) are fetched through fsspec.
    """
    from pyspark.sql import functions as F

    kind = detect_format(path, fmt)
    try:
        if kind == "csv":
            df = (spark.read.option("header", True).option("inferSchema", False).option("multiLine", csv_multiline)
                  .option("escape", '"').option("mode", "PERMISSIVE").option("encoding", "UTF-8").csv(path))
        elif kind == "json":
            df = (spark.read.option("primitivesAsString", True).option("mode", "PERMISSIVE")
                  .option("columnNameOfCorruptRecord", CORRUPT).json(path))
        else:
            df = spark.read.parquet(path)
    except Exception as exc:  # noqa: BLE001 - re-raised with the path, or retried through fsspec
        text = str(exc)
        if ("No FileSystem for scheme" in text or "UnsupportedFileSystemException" in text
                or "PARQUET_TYPE_ILLEGAL" in text):
            # A scheme Hadoop does not know, or Parquet types Spark cannot read (pandas' nanosecond timestamps).
            df = _read_via_fsspec(spark, path, kind)
        elif "PATH_NOT_FOUND" in text or "does not exist" in text:
            raise ManifestError(f"manifest not found: {path}") from None
        elif "UNABLE_TO_INFER_SCHEMA" in text:
            return None  # an empty file: no header, no rows
        else:
            raise ManifestError(f"cannot read manifest {path} as {kind}: {text.splitlines()[0]}") from exc
    return df.select(*[F.col(c).cast("string").alias(c) for c in df.columns])


def _read_via_fsspec(spark, path: str, kind: str):
    import fsspec
    import pandas as pd

    with fsspec.open(path, "rb") as handle:
        if kind == "csv":
            frame = pd.read_csv(handle, dtype=str, keep_default_na=False, na_values=[""], encoding_errors="replace")
        elif kind == "json":
            frame = pd.read_json(handle, lines=True, dtype=False)
        else:
            frame = pd.read_parquet(handle)
    return spark.createDataFrame(frame.astype("string").astype(object).where(frame.notna(), None))


def check_columns(columns: list[str], allow_extra: bool) -> None:
    """Refuse a manifest whose columns are wrong, naming every missing (and, unless allowed, unexpected) column."""
    present = [c for c in columns if c != CORRUPT]
    missing = [c for c in REQUIRED_COLUMNS if c not in present]
    extra = [c for c in present if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    problems = []
    if missing:
        problems.append(f"missing required column(s): {', '.join(missing)}")
    if extra and not allow_extra:
        problems.append(f"unexpected column(s): {', '.join(extra)} (set ingest.allow_extra_columns=true to ignore)")
    if problems:
        raise ManifestError("manifest has the wrong columns: " + "; ".join(problems) +
                            f". Expected: {', '.join(REQUIRED_COLUMNS)} (optional: {', '.join(OPTIONAL_COLUMNS)})")


def geo_reason_udf(country_regions: Mapping[str, str | None], max_distance_km: float, border_tolerance_km: float):
    """A pandas UDF (lat, lon, country) -> reason or null, evaluated on executors over cxatlas.core.geo."""
    from pyspark.sql.functions import pandas_udf

    regions = dict(country_regions)

    @pandas_udf("string")
    def geo_reason(lat: pd.Series, lon: pd.Series, country: pd.Series) -> pd.Series:
        from cxatlas.core.geo import coordinate_problems

        reasons = coordinate_problems(lat, lon, country, regions, max_distance_km=max_distance_km,
                                      border_tolerance_km=border_tolerance_km)
        return pd.Series(reasons, index=lat.index, dtype=object)

    return geo_reason


def validate(raw, *, source: str, country_regions: Mapping[str, str | None], cfg: Config):
    """Parse and validate manifest rows: adds the uploads columns plus ``_reason``/``_detail``/``_source_row``.

    Pure transformation of a DataFrame (no I/O), so it can be tested on its own.
    """
    from pyspark.sql import functions as F

    ing, geo = cfg.settings.ingest, cfg.settings.geo
    bin_deg = geo.bin_deg
    max_title, max_desc = ing.max_title_chars, ing.max_description_chars
    original = [c for c in raw.columns if c not in (CORRUPT, "_order")]
    df = raw if CORRUPT in raw.columns else raw.withColumn(CORRUPT, F.lit(None).cast("string"))
    if "source" not in df.columns:
        df = df.withColumn("source", F.lit(source))
    df = df.withColumn("_source_row", F.to_json(F.struct(*[F.col(c) for c in original]), KEEP_NULLS)) \
        .withColumn("_source_row", F.coalesce("_source_row", F.col(CORRUPT)))

    region_map = F.create_map(*[x for code, region in sorted(country_regions.items())
                                for x in (F.lit(code), F.lit(region).cast("string"))])
    vid = F.trim(F.col("video_id"))
    lat_raw, lon_raw = F.trim(F.col("lat")), F.trim(F.col("lon"))
    df = df.select(
        "*",
        F.when(vid == "", None).otherwise(vid).alias("_vid"),
        lat_raw.try_cast("double").alias("_lat"),
        lon_raw.try_cast("double").alias("_lon"),
        F.upper(F.trim(F.col("country"))).alias("_country"),
        F.try_to_timestamp(F.trim(F.col("upload_time"))).alias("_time"),
    )
    unparseable = ((lat_raw.isNotNull() & (lat_raw != "") & F.col("_lat").isNull()) |
                   (lon_raw.isNotNull() & (lon_raw != "") & F.col("_lon").isNull()))
    geo_reason = geo_reason_udf(country_regions, geo.max_distance_km, geo.border_tolerance_km)(F.col("_lat"), F.col("_lon"),
                                                                         F.col("_country"))
    reason = (F.when(F.col(CORRUPT).isNotNull(), "malformed_record")
              .when(F.col("_vid").isNull(), "missing_video_id")
              .when(F.col("upload_time").isNull() | (F.trim(F.col("upload_time")) == ""), "missing_upload_time")
              .when(F.col("_time").isNull(), "malformed_upload_time")
              .when(F.col("_lat").isNull() | F.col("_lon").isNull(),
                    F.when(unparseable, "invalid_coordinates").otherwise("missing_coordinates"))
              .otherwise(geo_reason))
    detail = (F.when(reason == "malformed_record", F.lit("the reader could not parse this line"))
              .when(reason == "malformed_upload_time",
                    F.concat(F.lit("upload_time '"), F.col("upload_time"), F.lit("' is not an ISO-8601 timestamp")))
              .when(reason == "invalid_coordinates",
                    F.concat(F.lit("lat/lon '"), F.coalesce(F.col("lat"), F.lit("")), F.lit("', '"),
                             F.coalesce(F.col("lon"), F.lit("")), F.lit("' are not numbers")))
              .when(reason == "unknown_country",
                    F.concat(F.lit("country '"), F.coalesce(F.col("country"), F.lit("")),
                             F.lit("' is not an ISO 3166-1 alpha-2 code in conf/regions.csv")))
              .when(reason.isNotNull(),
                    F.concat(reason, F.lit(": lat="), F.coalesce(F.col("lat"), F.lit("null")), F.lit(" lon="),
                             F.coalesce(F.col("lon"), F.lit("null")), F.lit(" country="),
                             F.coalesce(F.col("country"), F.lit("null")))))

    title, desc = F.coalesce(F.col("title"), F.lit("")), F.coalesce(F.col("description"), F.lit(""))
    flags = F.array_compact(F.array(
        F.when(F.length(title) > max_title, F.lit("title_truncated")),
        F.when(F.length(desc) > max_desc, F.lit("description_truncated")),
        F.when(F.instr(title, "\ufffd") > 0, F.lit("title_invalid_utf8")),
        F.when(F.instr(desc, "\ufffd") > 0, F.lit("description_invalid_utf8")),
    ))
    lat_bin = F.floor(F.col("_lat") / F.lit(bin_deg)).cast("int")
    lon_bin = F.floor(F.col("_lon") / F.lit(bin_deg)).cast("int")
    return df.select(
        F.col("_vid").alias("video_id"),
        F.col("uri"),
        F.col("_country").alias("country"),
        region_map[F.col("_country")].alias("region"),
        F.col("_lat").alias("lat"),
        F.col("_lon").alias("lon"),
        lat_bin.alias("lat_bin"),
        lon_bin.alias("lon_bin"),
        F.col("_time").alias("upload_time"),
        F.substring(F.col("title"), 1, max_title).alias("title"),
        F.substring(F.col("description"), 1, max_desc).alias("description"),
        flags.alias("text_flags"),
        F.col("source"),
        reason.alias("_reason"),
        detail.alias("_detail"),
        F.col("_source_row"),
        *([F.col("_order")] if "_order" in df.columns else []),
    )


_CONTENT = ("uri", "country", "lat", "lon", "upload_time", "title", "description")


def classify(valid, existing):
    """Resolve duplicates: adds ``_status`` (new | updated | unchanged | quarantined) with reasons for the rejects.

    Within the manifest, the row with the latest upload_time wins (ties: the later row in the manifest); against
    ``uploads``, an incoming row replaces the stored one unless the stored one is newer. Identical content is
    ``unchanged`` so a re-ingest commits nothing.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    content_hash = F.sha2(F.to_json(F.struct(*[F.col(c) for c in _CONTENT])), 256)
    w = Window.partitionBy("video_id").orderBy(F.col("upload_time").desc(), F.col("_order").desc())
    ranked = valid.withColumn("_rank", F.row_number().over(w)).withColumn("_hash", content_hash)
    stored = existing.select(F.col("video_id"), F.col("upload_time").alias("_stored_time"),
                             content_hash.alias("_stored_hash"))
    joined = ranked.join(stored, "video_id", "left")
    status = (F.when(F.col("_rank") > 1, "quarantined")
              .when(F.col("_stored_time").isNull(), "new")
              .when(F.col("_stored_hash") == F.col("_hash"), "unchanged")
              .when(F.col("_stored_time") > F.col("upload_time"), "quarantined")
              .otherwise("updated"))
    reason_detail = (F.when(F.col("_rank") > 1, F.lit("a later upload of this video_id is in the same manifest"))
                     .otherwise(F.concat(F.lit("uploads already holds a later upload of this video_id ("),
                                         F.col("_stored_time").cast("string"), F.lit(")"))))
    return (joined.withColumn("_status", status)
            .withColumn("_reason", F.when(F.col("_status") == "quarantined", F.lit("duplicate")))
            .withColumn("_detail", F.when(F.col("_status") == "quarantined", reason_detail)))


def run_ingest(spark, cfg: Config, store: TableStore, manifest: str, fmt: str | None = None) -> IngestReport:
    """Ingest one manifest into ``uploads`` and ``quarantine``; returns the reconciled counts."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    report = IngestReport(manifest=manifest)
    run_id = report.run_id
    ing = cfg.settings.ingest
    raw = read_manifest(spark, manifest, fmt, csv_multiline=ing.csv_multiline)
    if raw is None or not [c for c in raw.columns if c != CORRUPT]:
        log.warning("manifest %s is empty: nothing to ingest", manifest)
        return report.finish()
    check_columns(raw.columns, ing.allow_extra_columns)
    country_regions = load_country_regions(cfg.path("regions.file"))
    uploads = store.table(UPLOADS).create_if_missing()
    read_version = uploads.version()

    n_parts = ing.partitions
    # Manifest order breaks upload_time ties (the later row wins); then shard by a stable hash of video_id.
    raw = raw.withColumn("_order", F.monotonically_increasing_id())
    checked = validate(raw, source=manifest, country_regions=country_regions, cfg=cfg)
    checked = checked.repartition(n_parts, "video_id").persist(StorageLevel.MEMORY_AND_DISK)
    valid = checked.filter(F.col("_reason").isNull())
    classified = classify(valid, uploads.read(read_version)).persist(StorageLevel.MEMORY_AND_DISK)

    invalid_counts = {r["_reason"]: r["count"] for r in
                      checked.filter(F.col("_reason").isNotNull()).groupBy("_reason").count().collect()}
    status_counts = {r["_status"]: r["count"] for r in classified.groupBy("_status").count().collect()}
    duplicates = status_counts.get("quarantined", 0)
    report.rows_in = sum(invalid_counts.values()) + sum(status_counts.values())
    report.new, report.updated = status_counts.get("new", 0), status_counts.get("updated", 0)
    report.unchanged = status_counts.get("unchanged", 0)
    report.quarantined = sum(invalid_counts.values()) + duplicates
    report.reasons = dict(invalid_counts, **({"duplicate": duplicates} if duplicates else {}))

    ingest_time = F.lit(utc_timestamp(report.started)).cast("timestamp")
    accepted = (classified.filter(F.col("_status").isin("new", "updated"))
                .withColumn("ingest_time", ingest_time).select(*UPLOADS.schema.names))
    replaced = (uploads.read(read_version).join(
        classified.filter(F.col("_status") == "updated").select("video_id"), "video_id", "left_semi")
        .withColumn("_source_row", F.to_json(F.struct(*UPLOADS.schema.names), KEEP_NULLS))
        .withColumn("_reason", F.lit("duplicate"))
        .withColumn("_detail", F.lit("replaced in uploads by a later upload of this video_id")))
    report.replaced_rows_quarantined = report.updated
    rejects = (checked.filter(F.col("_reason").isNotNull())
               .unionByName(classified.filter(F.col("_status") == "quarantined").select(*checked.columns)))
    common = dict(stage="ingest", reason_col="_reason", detail_col="_detail", source_row_col="_source_row",
                  run_id=run_id)
    quarantine_rows = to_quarantine_rows(rejects, source_col="source", **common).unionByName(
        to_quarantine_rows(replaced.withColumn("_from", F.lit("uploads")), source_col="_from", **common))

    if report.updated:
        report.commits["uploads"] = uploads.upsert(accepted)
    else:  # only new keys: a blind append, no file needs rewriting
        report.commits["uploads"] = uploads.append(accepted) if report.new else CommitResult(UPLOADS.name, None)
    report.commits["quarantine"] = write_quarantine(store, quarantine_rows)
    checked.unpersist()
    classified.unpersist()
    report.finish()
    log.info("ingest run %s finished in %.1fs", run_id, report.seconds)
    return report
