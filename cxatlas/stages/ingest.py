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
import re
from collections import Counter
from dataclasses import dataclass
from typing import Mapping

import pandas as pd

from cxatlas.core.config import Config
from cxatlas.core.errors import UserError
from cxatlas.core.regions import load_country_regions
from cxatlas.core.runs import RunReport, utc_timestamp
from cxatlas.core.schemas import UPLOADS
from cxatlas.core.settings import GeoSettings
from cxatlas.core.uris import REASONS as URI_REASONS
from cxatlas.core.uris import UriPolicy
from cxatlas.warehouse.quarantine import to_quarantine_rows, write_quarantine
from cxatlas.warehouse.tables import CommitResult, TableStore

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("video_id", "uri", "lat", "lon", "country", "upload_time", "title", "description")
OPTIONAL_COLUMNS = ("source", "withdrawn")
# A withdrawal (an uploader deleted the video) needs only these; a manifest of withdrawals may hold nothing else.
WITHDRAWAL_COLUMNS = ("video_id", "upload_time", "withdrawn")
_TRUE, _FALSE = ("true", "1", "yes", "y", "t"), ("false", "0", "no", "n", "f", "")
FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".ndjson": "json", ".parquet": "parquet",
           ".pq": "parquet"}
CORRUPT = "_corrupt_record"
STATUSES = ("new", "updated", "unchanged", "quarantined")
KEEP_NULLS = {"ignoreNullFields": "false"}  # a quarantined row keeps every column, nulls included
# Compressed text Spark (Hadoop codecs) decompresses by name: its raw bytes are binary by design, so not sniffed.
COMPRESSED = (".gz", ".bz2", ".deflate", ".lz4", ".snappy", ".zst", ".xz")
SNIFF_BYTES = 8192
# (magic bytes, offset, what a file starting with them is): named in the error so the user sees what they gave.
MAGIC = ((b"PAR1", 0, "a Parquet file (name it .parquet or pass --format parquet)"),
         (b"\x89PNG", 0, "a PNG image"), (b"\xff\xd8\xff", 0, "a JPEG image"), (b"GIF8", 0, "a GIF image"),
         (b"ftyp", 4, "an MP4/MOV video"), (b"\x1aE\xdf\xa3", 0, "a Matroska/WebM video"),
         (b"RIFF", 0, "a RIFF (AVI/WAV/WebP) file"), (b"%PDF", 0, "a PDF document"),
         (b"PK\x03\x04", 0, "a ZIP archive (unzip it first)"),
         (b"\x1f\x8b", 0, "a gzip file (name it .csv.gz and pass --format csv)"),
         (b"\xff\xfe", 0, "UTF-16 text (save the manifest as UTF-8)"),
         (b"\xfe\xff", 0, "UTF-16 text (save the manifest as UTF-8)"))
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f]")


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
    withdrawn: int = 0
    annotations_deleted: int = 0
    shared_uri_rows: int = 0

    def headline(self) -> str:
        return f"ingest {self.manifest} (run {self.run_id})"

    def balance(self):
        return ("rows in", self.rows_in), [("new", self.new), ("updated", self.updated),
                                           ("unchanged", self.unchanged), ("quarantined", self.quarantined)]

    def details(self) -> list[str]:
        lines = []
        if self.withdrawn or self.annotations_deleted:
            lines.append(f"  withdrawals (tombstones among new + updated): {self.withdrawn}; annotation rows deleted: "
                         f"{self.annotations_deleted}")
        if self.shared_uri_rows:
            lines.append(f"  warning: shared uri: {self.shared_uri_rows} new or updated uploads name a uri another "
                         f"video_id names first (ingest.shared_uri=quarantine quarantines them)")
        if self.replaced_rows_quarantined:
            lines.append(f"  older uploads replaced and moved to quarantine: {self.replaced_rows_quarantined}")
        return lines


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
    URIs (http://, memory://, ...) are fetched through fsspec. Whole-input mistakes (no such file, a scheme nothing
    can read, a video or image given as the manifest) raise :class:`ManifestError` *before* Spark reads, so the user
    gets one line instead of a Java stack trace.
    """
    from pyspark.sql import functions as F

    kind = detect_format(path, fmt)
    where = _locate(spark, path)
    if where.hadoop and where.local_file and kind != "parquet":
        _refuse_binary_file(where.local_file, path, kind)
    df = _spark_read(spark, path, kind, csv_multiline) if where.hadoop else _read_via_fsspec(spark, path, kind)
    if df is None:
        return None
    _refuse_binary_header(df.columns, path, kind)
    return df.select(*[F.col(_quoted(c)).cast("string").alias(c) for c in df.columns])


@dataclass(frozen=True)
class _Location:
    """Where a manifest is, as Hadoop sees it: ``hadoop`` False when Hadoop has no filesystem for its scheme;
    ``local_file`` the local path when it is one regular file on the local filesystem (which we can sniff)."""

    hadoop: bool
    local_file: str | None = None


def _locate(spark, path: str) -> _Location:
    """Ask Hadoop whether the manifest exists before Spark reads it.

    Spark answers a missing path or an unknown scheme by logging a Java stack trace before it raises; a glob over
    Hadoop's FileSystem API answers the same question quietly. Spark Connect has no JVM here: Spark's own errors
    are then parsed in :func:`_spark_read` instead.
    """
    from py4j.protocol import Py4JJavaError

    try:
        jvm, conf = spark.sparkContext._jvm, spark.sparkContext._jsc.hadoopConfiguration()
    except Exception:  # noqa: BLE001 - Spark Connect (no local JVM): skip the pre-check
        return _Location(hadoop=True)
    try:
        hpath = jvm.org.apache.hadoop.fs.Path(path)
        fs = hpath.getFileSystem(conf)
        matches = fs.globStatus(hpath)
    except Py4JJavaError as exc:
        text = str(exc.java_exception)
        if "UnsupportedFileSystemException" in text or "No FileSystem for scheme" in text:
            return _Location(hadoop=False)
        raise ManifestError(f"cannot open manifest {path}: {_one_line(text)}") from None
    if not matches:
        raise ManifestError(f"manifest not found: {path}")
    if fs.getUri().getScheme() == "file" and len(matches) == 1 and matches[0].isFile():
        return _Location(hadoop=True, local_file=str(matches[0].getPath().toUri().getPath()))
    return _Location(hadoop=True)


def _spark_read(spark, path: str, kind: str, csv_multiline: bool):
    """Spark's reader for ``kind``; None for an empty file. Unreadable input becomes a one-line ManifestError."""
    try:
        if kind == "csv":
            return (spark.read.option("header", True).option("inferSchema", False).option("multiLine", csv_multiline)
                    .option("escape", '"').option("mode", "PERMISSIVE").option("encoding", "UTF-8").csv(path))
        if kind == "json":
            return (spark.read.option("primitivesAsString", True).option("mode", "PERMISSIVE")
                    .option("columnNameOfCorruptRecord", CORRUPT).json(path))
        return spark.read.parquet(path)
    except Exception as exc:  # noqa: BLE001 - re-raised with the path, or retried through fsspec
        text = str(exc)
        if ("No FileSystem for scheme" in text or "UnsupportedFileSystemException" in text
                or "PARQUET_TYPE_ILLEGAL" in text):
            # A scheme Hadoop does not know, or Parquet types Spark cannot read (pandas' nanosecond timestamps).
            return _read_via_fsspec(spark, path, kind)
        if "PATH_NOT_FOUND" in text or "does not exist" in text:
            raise ManifestError(f"manifest not found: {path}") from None
        if "UNABLE_TO_INFER_SCHEMA" in text:
            return None  # an empty file: no header, no rows
        raise ManifestError(f"cannot read manifest {path} as {kind}: {_one_line(text)}") from exc


def _one_line(text: str) -> str:
    """First line of an (often multi-line, Java) error message: a UserError prints one line."""
    return (text.strip().splitlines() or [""])[0][:300]


def _quoted(column: str) -> str:
    """Backtick-quote a column name so dots, spaces or odd bytes in a header are taken literally by ``F.col``."""
    return "`" + column.replace("`", "``") + "`"


def _refuse_binary_file(local_file: str, path: str, kind: str) -> None:
    """Refuse a local manifest whose first bytes are not text (a video, an image, an archive renamed .csv).

    Spark would read such a file "successfully" as one garbage header, and the user would see a list of missing
    columns or a syntax error about an attribute name made of bytes. NUL or other control bytes never occur in a
    CSV or JSON text (invalid UTF-8 does, in real manifests, and is flagged per row instead, so it is allowed).
    """
    if local_file.lower().endswith(COMPRESSED):
        return
    with open(local_file, "rb") as handle:
        head = handle.read(SNIFF_BYTES)
    what = next((name for magic, offset, name in MAGIC if head[offset:offset + len(magic)] == magic), None)
    if what is None and _CONTROL.search(head.decode("latin-1")):
        what = "binary data (it holds control bytes no text file has)"
    if what is not None:
        raise ManifestError(f"manifest {path} is not a {kind.upper()} text file: it looks like {what}")


def _refuse_binary_header(columns: list[str], path: str, kind: str) -> None:
    """The same refusal for manifests we could not sniff (remote URIs): control bytes in a header name."""
    if any(_CONTROL.search(c) for c in columns):
        raise ManifestError(f"manifest {path} is not a {kind.upper()} text file: its header holds binary data")


def _read_via_fsspec(spark, path: str, kind: str):
    """Read a URI Hadoop cannot through fsspec (pandas on the driver); an unknown scheme is a ManifestError."""
    import fsspec
    import pandas as pd

    protocol = path.split("://", 1)[0] if "://" in path else "file"
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise ManifestError(f"unsupported URI scheme '{protocol}://' in manifest {path}: neither Hadoop nor fsspec "
                            "can read it; use a local path, a Hadoop URI whose connector is installed (hdfs://, "
                            "s3a://, abfss://, gs://) or an fsspec URI (http://, memory://, ...)") from None
    except ImportError as exc:
        raise ManifestError(f"manifest {path}: reading {protocol}:// needs a package that is not installed: "
                            f"{_one_line(str(exc))}") from None
    try:
        with fsspec.open(path, "rb") as handle:
            if kind == "csv":
                frame = pd.read_csv(handle, dtype=str, keep_default_na=False, na_values=[""],
                                    encoding_errors="replace")
            elif kind == "json":
                frame = pd.read_json(handle, lines=True, dtype=False)
            else:
                frame = pd.read_parquet(handle)
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {path}") from None
    except pd.errors.EmptyDataError:
        return None
    return spark.createDataFrame(frame.astype("string").astype(object).where(frame.notna(), None))


def header_names(columns: list[str]) -> list[str]:
    """The header as the file wrote it, undoing the readers' renaming of repeated and empty names.

    Spark's CSV reader renames every repeated header name to name + position (``title`` at positions 6 and 7
    becomes ``title6``, ``title7``; case-insensitively) and an empty one to ``_c`` + position; pandas (the fsspec
    path) keeps the first and renames the others ``title.1``, ``title.2``. Without undoing this, a duplicated
    ``title`` is reported as "missing title, unexpected title6, title7". Empty names come back as ``""``.
    """
    names = list(columns)
    suffixed = {}
    for i, name in enumerate(columns):
        if name == f"_c{i}":
            names[i] = ""
        elif name.endswith(str(i)) and len(name) > len(str(i)):
            suffixed[i] = name[: -len(str(i))]
    groups = Counter(base.lower() for base in suffixed.values())
    present = {c.lower() for c in columns}
    for i, base in suffixed.items():
        if groups[base.lower()] > 1 and base.lower() not in present:
            names[i] = base
    for i, name in enumerate(columns):
        match = re.fullmatch(r"(.+)\.([1-9][0-9]*)", name)
        if match and match.group(1) in columns[:i]:
            names[i] = match.group(1)
    return names


def check_columns(columns: list[str], allow_extra: bool) -> None:
    """Refuse a manifest whose columns are wrong, naming every repeated, unnamed, missing (and, unless allowed,
    unexpected) column. ``columns`` are the reader's; :func:`header_names` recovers what the header said."""
    header = header_names([c for c in columns if c != CORRUPT])
    counts = Counter(name.lower() for name in header)
    known = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
    repeated: dict[str, str] = {}  # lower-case name -> its first spelling, in header order
    for name in header:
        if name and counts[name.lower()] > 1:
            repeated.setdefault(name.lower(), name)
    problems = [f"column '{name}' appears {counts[key]} times in the header" for key, name in repeated.items()
                if name in known or not allow_extra]
    unnamed = [str(i + 1) for i, name in enumerate(header) if not name]
    if unnamed and not allow_extra:
        problems.append(f"column(s) {', '.join(unnamed)} of the header have no name")
    present = [c for c in header if c]
    required = WITHDRAWAL_COLUMNS[:2] if "withdrawn" in present else REQUIRED_COLUMNS
    missing = [c for c in required if c not in present]
    extra = [c for c in dict.fromkeys(present) if c not in known and counts[c.lower()] == 1]
    if missing:
        problems.append(f"missing required column(s): {', '.join(missing)}")
    if extra and not allow_extra:
        problems.append(f"unexpected column(s): {', '.join(extra)} (set ingest.allow_extra_columns=true to ignore)")
    if problems:
        raise ManifestError("manifest has the wrong columns: " + "; ".join(problems) +
                            f". Expected: {', '.join(REQUIRED_COLUMNS)} (optional: {', '.join(OPTIONAL_COLUMNS)})")


def geo_reason_udf(country_regions: Mapping[str, str | None], geo: GeoSettings):
    """A pandas UDF (lat, lon, country) -> reason or null, evaluated on executors over cxatlas.core.geo."""
    from pyspark.sql.functions import pandas_udf

    regions = dict(country_regions)
    limits = dict(max_distance_km=geo.max_distance_km, border_tolerance_km=geo.border_tolerance_km,
                  max_offshore_km=geo.max_offshore_km, offshore_neighbours=geo.offshore_neighbours)

    @pandas_udf("string")
    def geo_reason(lat: pd.Series, lon: pd.Series, country: pd.Series) -> pd.Series:
        from cxatlas.core.geo import coordinate_problems

        reasons = coordinate_problems(lat, lon, country, regions, **limits)
        return pd.Series(reasons, index=lat.index, dtype=object)

    return geo_reason


def uri_refusal_udf(policy: UriPolicy):
    """A pandas UDF uri -> struct(reason, detail) of :meth:`UriPolicy.refusal` (nulls when the uri may be read)."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("reason string, detail string")
    def uri_refusal(uri: pd.Series) -> pd.DataFrame:
        found = [policy.refusal(None if pd.isna(u) else u) or (None, None) for u in uri]
        return pd.DataFrame(found, columns=["reason", "detail"], index=uri.index, dtype=object)

    return uri_refusal


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
    for column in (*REQUIRED_COLUMNS, "withdrawn"):  # a manifest of withdrawals lacks the content columns
        if column not in df.columns:
            df = df.withColumn(column, F.lit(None).cast("string"))
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
        F.lower(F.trim(F.col("withdrawn").cast("string"))).alias("_withdrawn_text"),
    )
    withdrawn = F.coalesce(F.col("_withdrawn_text").isin(list(_TRUE)), F.lit(False))
    unparseable = ((lat_raw.isNotNull() & (lat_raw != "") & F.col("_lat").isNull()) |
                   (lon_raw.isNotNull() & (lon_raw != "") & F.col("_lon").isNull()))
    geo_reason = geo_reason_udf(country_regions, geo)(F.col("_lat"), F.col("_lon"), F.col("_country"))
    df = df.withColumn("_uri_check", uri_refusal_udf(UriPolicy.from_settings(ing))(F.col("uri")))
    reason = (F.when(F.col(CORRUPT).isNotNull(), "malformed_record")
              .when(F.col("_vid").isNull(), "missing_video_id")
              .when(F.col("upload_time").isNull() | (F.trim(F.col("upload_time")) == ""), "missing_upload_time")
              .when(F.col("_time").isNull(), "malformed_upload_time")
              .when(F.col("_withdrawn_text").isNotNull() & ~F.col("_withdrawn_text").isin(list(_TRUE + _FALSE)),
                    "invalid_withdrawn")
              .when(withdrawn, F.lit(None).cast("string"))  # a tombstone needs only video_id and upload_time
              .when(F.col("_uri_check.reason").isNotNull(), F.col("_uri_check.reason"))  # never read: README Security
              .when(F.col("_lat").isNull() | F.col("_lon").isNull(),
                    F.when(unparseable, "invalid_coordinates").otherwise("missing_coordinates"))
              .otherwise(geo_reason))
    detail = (F.when(reason == "malformed_record", F.lit("the reader could not parse this line"))
              .when(reason.isin(list(URI_REASONS)), F.col("_uri_check.detail"))
              .when(reason == "malformed_upload_time",
                    F.concat(F.lit("upload_time '"), F.col("upload_time"), F.lit("' is not an ISO-8601 timestamp")))
              .when(reason == "invalid_withdrawn",
                    F.concat(F.lit("withdrawn '"), F.col("withdrawn").cast("string"),
                             F.lit("' is not true/false (also accepted: 1/0, yes/no)")))
              .when(reason == "invalid_coordinates",
                    F.concat(F.lit("lat/lon '"), F.coalesce(F.col("lat"), F.lit("")), F.lit("', '"),
                             F.coalesce(F.col("lon"), F.lit("")), F.lit("' are not numbers")))
              .when(reason == "unknown_country",
                    F.concat(F.lit("country '"), F.coalesce(F.col("country"), F.lit("")),
                             F.lit("' is not an ISO 3166-1 alpha-2 code in conf/regions.csv")))
              .when(reason == "coordinates_swapped",
                    F.concat(F.lit("lat="), F.col("lat"), F.lit(" lon="), F.col("lon"), F.lit(" look swapped: read the "
                             "other way round (lat="), F.col("lon"), F.lit(", lon="), F.col("lat"),
                             F.lit(") they make a plausible point in country "), F.col("country")))
              .when(reason == "coordinates_outside_country",
                    F.concat(F.lit("lat="), F.col("lat"), F.lit(" lon="), F.col("lon"), F.lit(" are not in country "),
                             F.col("country"), F.lit(": no place of it is within geo.border_tolerance_km of the "
                             "point's nearest place, or the point is at sea (geo.max_offshore_km) or too remote "
                             "(geo.max_distance_km)")))
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

    def live(column, name: str):
        """A tombstone keeps only video_id, upload_time and source: it carries no content to analyse."""
        return F.when(withdrawn, None).otherwise(column).alias(name)

    return df.select(
        F.col("_vid").alias("video_id"),
        live(F.col("uri"), "uri"),
        live(F.col("_country"), "country"),
        live(region_map[F.col("_country")], "region"),
        live(F.col("_lat"), "lat"),
        live(F.col("_lon"), "lon"),
        live(lat_bin, "lat_bin"),
        live(lon_bin, "lon_bin"),
        F.col("_time").alias("upload_time"),
        live(F.substring(F.col("title"), 1, max_title), "title"),
        live(F.substring(F.col("description"), 1, max_desc), "description"),
        live(flags, "text_flags"),
        F.col("source"),
        withdrawn.alias("withdrawn"),
        reason.alias("_reason"),
        detail.alias("_detail"),
        F.col("_source_row"),
        *([F.col("_order")] if "_order" in df.columns else []),
    )


_CONTENT = ("uri", "country", "lat", "lon", "upload_time", "title", "description", "withdrawn")


def classify(valid, existing):
    """Resolve duplicates: adds ``_status`` (new | updated | unchanged | quarantined) with reasons for the rejects.

    Within the manifest, the row with the latest upload_time wins (ties: the later row in the manifest); against
    ``uploads``, an incoming row replaces the stored one unless the stored one is newer. Identical content is
    ``unchanged`` so a re-ingest commits nothing. A quarantined duplicate's detail says which rule beat it, so a
    tie is never reported as "a later upload".
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if "withdrawn" not in existing.columns:  # a table written before withdrawals existed
        existing = existing.withColumn("withdrawn", F.lit(False))
    content_hash = F.sha2(F.to_json(F.struct(*[F.coalesce(F.col(c), F.lit(False)) if c == "withdrawn" else F.col(c)
                                               for c in _CONTENT])), 256)
    w = Window.partitionBy("video_id").orderBy(F.col("upload_time").desc(), F.col("_order").desc())
    ranked = (valid.withColumn("_rank", F.row_number().over(w)).withColumn("_hash", content_hash)
              .withColumn("_winner_time", F.max("upload_time").over(Window.partitionBy("video_id"))))
    stored = existing.select(F.col("video_id"), F.col("upload_time").alias("_stored_time"),
                             content_hash.alias("_stored_hash"))
    joined = ranked.join(stored, "video_id", "left")
    status = (F.when(F.col("_rank") > 1, "quarantined")
              .when(F.col("_stored_hash").isNull(), "new")  # no stored row (a stored row may lack a time: import)
              .when(F.col("_stored_hash") == F.col("_hash"), "unchanged")
              .when(F.col("_stored_time") > F.col("upload_time"), "quarantined")
              .otherwise("updated"))
    reason_detail = F.when(F.col("_rank") > 1, _in_manifest_detail()).otherwise(
        F.concat(F.lit("uploads already holds a later upload of this video_id ("),
                 F.col("_stored_time").cast("string"), F.lit(")")))
    return (joined.withColumn("_status", status)
            .withColumn("_reason", F.when(F.col("_status") == "quarantined", F.lit("duplicate")))
            .withColumn("_detail", F.when(F.col("_status") == "quarantined", reason_detail))
            .drop("_winner_time"))


def mark_shared_uris(classified, existing, mode: str):
    """Find uris held by several video_ids (the study counts videos as independent): adds ``_shared_with``, the
    video_id that holds the uri first (a live stored upload, else the earliest upload_time, then the smallest id),
    on every new or updated row whose uri another video_id holds first. ``mode`` quarantine turns those rows into
    ``shared_uri`` rejects; warn leaves them (the run's report counts them)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    live = F.col("uri").isNotNull() & ~F.coalesce(F.col("withdrawn"), F.lit(False))
    incoming = classified.filter(F.col("_status").isin("new", "updated") & live)
    stored = existing if "withdrawn" in existing.columns else existing.withColumn("withdrawn", F.lit(False))
    holders = (stored.filter(live).join(incoming.select("video_id"), "video_id", "left_anti")
               .select("uri", "video_id", F.lit(0).alias("_tier"), "upload_time"))
    both = holders.unionByName(incoming.select("uri", "video_id", F.lit(1).alias("_tier"), "upload_time"))
    by_uri = Window.partitionBy("uri").orderBy("_tier", "upload_time", "video_id")
    firsts = (both.withColumn("_shared_with", F.first("video_id").over(
                  by_uri.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)))
              .filter((F.col("_tier") == 1) & (F.col("_shared_with") != F.col("video_id")))
              .select("video_id", "_shared_with"))
    marked = classified.join(firsts, "video_id", "left").withColumn(
        "_shared_with", F.when(F.col("_status").isin("new", "updated") & live, F.col("_shared_with")))
    if mode != "quarantine":
        return marked
    shared = F.col("_shared_with").isNotNull()
    return (marked.withColumn("_reason", F.when(shared, F.lit("shared_uri")).otherwise(F.col("_reason")))
            .withColumn("_detail", F.when(shared, F.concat(
                F.lit("uri "), F.col("uri"), F.lit(" is already the uri of video_id "), F.col("_shared_with"),
                F.lit(" (ingest.shared_uri: quarantine; the study counts videos as independent)")))
                .otherwise(F.col("_detail")))
            .withColumn("_status", F.when(shared, F.lit("quarantined")).otherwise(F.col("_status"))))


def _in_manifest_detail():
    """Why a row lost to another row of its video_id in the same manifest: a later upload_time, or a tie that
    manifest order broke (saying "a later upload" for a tie sends the user looking for a timestamp that is not
    there)."""
    from pyspark.sql import functions as F

    winner_time = F.col("_winner_time").cast("string")
    return (F.when(F.col("upload_time") == F.col("_winner_time"),
                   F.concat(F.lit("another row of this video_id in the same manifest has the same upload_time ("),
                            winner_time, F.lit("); the tie is broken by manifest order: the later row wins")))
            .otherwise(F.concat(F.lit("a later upload of this video_id ("), winner_time,
                                F.lit(") is in the same manifest"))))


def apply_withdrawals(store: TableStore, commits: dict | None = None) -> int:
    """Delete the annotation rows of every withdrawn video (Delta deletions: time travel still shows them).

    Idempotent and cheap when there is nothing to do (no commit), so a scheduled run calls it every time: a run
    killed between writing a tombstone and deleting the annotations is completed by the next run. Returns the
    number of annotation rows deleted.
    """
    from pyspark.sql import functions as F

    from cxatlas.core.schemas import VIDEO_CONTEXTS, VIDEO_EXPRESSIONS

    uploads = store.table(UPLOADS)
    if not uploads.exists() or "withdrawn" not in uploads.read().columns:
        return 0
    gone = uploads.read().filter(F.col("withdrawn")).select("video_id")
    deleted = 0
    for spec in (VIDEO_EXPRESSIONS, VIDEO_CONTEXTS):
        table = store.table(spec)
        if table.exists():
            commit = table.delete_matching(gone, ["video_id"])
            deleted += commit.rows_deleted
            if commits is not None and commit.version is not None:
                commits[spec.name] = commit
    return deleted


def run_ingest(spark, cfg: Config, store: TableStore, manifest: str, fmt: str | None = None) -> IngestReport:
    """Ingest one manifest into ``uploads`` and ``quarantine``; returns the reconciled counts."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    report = IngestReport(manifest=manifest)
    run_id = report.run_id
    ing = cfg.settings.ingest
    raw = read_manifest(spark, manifest, fmt, csv_multiline=ing.csv_multiline)
    if raw is None or not raw.columns:
        log.warning("manifest %s is empty: nothing to ingest", manifest)
        return report.finish()
    if raw.columns == [CORRUPT]:  # lines, but not one JSON object among them: not "empty", the wrong format
        raise ManifestError(f"no line of manifest {manifest} is a JSON object: a JSON manifest holds one object per "
                            "line (for a CSV, name it .csv or pass --format csv)")
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
    classified = mark_shared_uris(classify(valid, uploads.read(read_version)), uploads.read(read_version),
                                  ing.shared_uri).persist(StorageLevel.MEMORY_AND_DISK)

    invalid_counts = {r["_reason"]: r["count"] for r in
                      checked.filter(F.col("_reason").isNotNull()).groupBy("_reason").count().collect()}
    status_counts, tombstones, rejected = {}, 0, Counter()
    for r in (classified.groupBy("_status", "withdrawn", "_reason", F.col("_shared_with").isNotNull().alias("_shared"))
              .count().collect()):
        status_counts[r["_status"]] = status_counts.get(r["_status"], 0) + r["count"]
        tombstones += r["count"] if r["withdrawn"] and r["_status"] in ("new", "updated") else 0
        rejected[r["_reason"]] += r["count"] if r["_status"] == "quarantined" else 0
        report.shared_uri_rows += r["count"] if r["_shared"] and r["_status"] in ("new", "updated") else 0
    duplicates = status_counts.get("quarantined", 0)
    report.rows_in = sum(invalid_counts.values()) + sum(status_counts.values())
    report.new, report.updated = status_counts.get("new", 0), status_counts.get("updated", 0)
    report.unchanged = status_counts.get("unchanged", 0)
    report.quarantined = sum(invalid_counts.values()) + duplicates
    report.reasons = dict(invalid_counts, **{reason: n for reason, n in rejected.items() if n})
    if report.shared_uri_rows:
        log.warning("%d new or updated uploads name a uri another video_id already names (ingest.shared_uri: warn)",
                    report.shared_uri_rows)

    ingest_time = F.lit(utc_timestamp(report.started)).cast("timestamp")
    accepted = (classified.filter(F.col("_status").isin("new", "updated"))
                .withColumn("ingest_time", ingest_time).select(*UPLOADS.schema.names))
    incoming = classified.filter(F.col("_status") == "updated").select(
        "video_id", F.col("upload_time").alias("_new_time"), F.col("withdrawn").alias("_new_withdrawn"))
    stored = uploads.read(read_version)
    replaced = (stored.join(incoming, "video_id")
                .withColumn("_source_row", F.to_json(F.struct(*[c for c in UPLOADS.schema.names
                                                                if c in stored.columns]), KEEP_NULLS))
                .withColumn("_reason", F.when(F.col("_new_withdrawn"), F.lit("withdrawn"))
                            .otherwise(F.lit("duplicate")))
                .withColumn("_detail", F.when(F.col("_new_withdrawn"), F.concat(F.lit(
                    "the uploader withdrew this video at "), F.col("_new_time").cast("string"), F.lit(
                    "; this was its row in uploads"))).when(F.col("_new_time") == F.col("upload_time"), F.lit(
                    "replaced in uploads by a new row of this video_id with the same upload_time (ties: the newer "
                    "ingest wins)")).otherwise(F.lit("replaced in uploads by a later upload of this video_id")))
                .drop("_new_time", "_new_withdrawn"))
    report.replaced_rows_quarantined = report.updated
    rejects = (checked.filter(F.col("_reason").isNotNull())
               .unionByName(classified.filter(F.col("_status") == "quarantined").select(*checked.columns)))
    common = dict(stage="ingest", reason_col="_reason", detail_col="_detail", source_row_col="_source_row",
                  run_id=run_id)
    quarantine_rows = to_quarantine_rows(rejects, source_col="source", **common).unionByName(
        to_quarantine_rows(replaced.withColumn("_from", F.lit("uploads")), source_col="_from", **common))

    if report.new or report.updated:
        # One MERGE: new keys inserted, later uploads replace older ones. Never a blind append: if another ingest
        # commits the same keys first, Delta makes this commit conflict and retry, and the retry's own counts (what
        # it inserted and replaced) are the ones reported; rows the other writer already stored count as unchanged.
        commit = uploads.upsert(accepted, update_when="t.upload_time IS NULL OR s.upload_time >= t.upload_time",
                                evolve_schema=True)
        planned = report.new + report.updated
        report.new, report.updated = commit.rows_inserted, commit.rows_updated
        report.unchanged += planned - report.new - report.updated
        report.commits["uploads"] = commit
    else:
        report.commits["uploads"] = CommitResult(UPLOADS.name, None)
    report.commits["quarantine"] = write_quarantine(store, quarantine_rows)
    if tombstones and report.commits["uploads"].version is not None:
        # What the commit wrote, not what was planned: a concurrent ingest may have stored a later upload first.
        report.withdrawn = (uploads.read(report.commits["uploads"].version)
                            .filter(F.col("withdrawn") & (F.col("ingest_time") == ingest_time)).count())
    if report.withdrawn:
        report.annotations_deleted = apply_withdrawals(store, report.commits)
    checked.unpersist()
    classified.unpersist()
    report.finish()
    log.info("ingest run %s finished in %.1fs", run_id, report.seconds)
    return report
