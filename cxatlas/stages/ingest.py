"""Manifest ingest: read, validate every row, upsert valid uploads, quarantine the rest. Counts always reconcile.

Data flow (all distributed; only counts and file metadata reach the driver)::

    manifest (CSV / JSON lines / Parquet, any Hadoop or fsspec URI)
      -> columns checked (missing or unexpected columns: ManifestError naming them)
      -> coordinates, countries and uris checked where the rows are read (one pandas UDF per Arrow batch over
         cxatlas.core.geo's KD-tree and cxatlas.core.uris: :func:`prepare`)
      -> sharded by a stable hash of video_id (``ingest.partitions``), then on every core:
         parsed + validated (Spark expressions), duplicates resolved within the manifest and against ``uploads``
         (the latest upload_time wins), kept in memory and counted (one job)
      -> uris held by several video_ids found (one job)
      -> ``uploads`` upsert (one MERGE, one commit) and ``quarantine`` append (one commit, none when nothing was
         rejected); the catalog entries are made in a thread beside the pass over the rows

Where a run's time went: ``IngestReport.stage_seconds``.

Rows in = new + updated + unchanged + quarantined. Re-ingesting a manifest changes nothing: its rows are
``unchanged`` and its bad rows are already quarantined (by row hash).
"""
from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping

import pandas as pd

from cxatlas.core.config import Config
from cxatlas.core.errors import UserError
from cxatlas.core.regions import load_country_regions
from cxatlas.core.runs import RunReport, StageClock, utc_timestamp
from cxatlas.core.schemas import QUARANTINE, UPLOADS, spark_schema
from cxatlas.core.settings import GeoSettings
from cxatlas.core.uris import REASONS as URI_REASONS
from cxatlas.core.uris import UriPolicy
from cxatlas.warehouse.quarantine import to_quarantine_rows, write_quarantine
from cxatlas.warehouse.spark import scoped_conf
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
    #: wall seconds per step of the run (:func:`run_ingest` names them), as ``AnalyzeReport.stage_seconds``
    stage_seconds: dict[str, float] = field(default_factory=dict)

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


def row_checks(lat: pd.Series, lon: pd.Series, country: pd.Series, uri: pd.Series, *,
               country_regions: Mapping[str, str | None], geo: GeoSettings, policy: UriPolicy) -> pd.DataFrame:
    """The checks ingest runs in Python on one batch of rows: (geo_reason, region, uri_reason, uri_detail) per row.

    The coordinate check of :func:`cxatlas.core.geo.coordinate_problems` (its KD-tree of GeoNames places on the
    unit sphere is built once per Python worker and cached there), the country's region (the same exact-key lookup
    as a map of ``country_regions``, once per distinct code of the batch) and :meth:`UriPolicy.refusals`.
    """
    import numpy as np

    from cxatlas.core.geo import coordinate_problems

    n = len(lat)
    inverse, codes = pd.factorize(country.to_numpy(dtype=object))  # nulls -> -1 -> None
    region = np.array([country_regions.get(c) for c in codes] + [None], dtype=object)[inverse]
    uri_reason, uri_detail = np.full(n, None, dtype=object), np.full(n, None, dtype=object)
    for i, refused in enumerate(policy.refusals(uri.to_numpy(dtype=object))):
        if refused is not None:
            uri_reason[i], uri_detail[i] = refused
    reasons = coordinate_problems(lat, lon, country, country_regions, max_distance_km=geo.max_distance_km,
                                  border_tolerance_km=geo.border_tolerance_km, max_offshore_km=geo.max_offshore_km,
                                  offshore_neighbours=geo.offshore_neighbours)
    return pd.DataFrame({"geo_reason": reasons, "region": region, "uri_reason": uri_reason,
                         "uri_detail": uri_detail}, index=lat.index)


def row_checks_udf(country_regions: Mapping[str, str | None], geo: GeoSettings, policy: UriPolicy):
    """:func:`row_checks` as a pandas UDF (lat, lon, country, uri) -> struct, one Arrow batch at a time on the
    executors. One UDF, so each row crosses to Python once."""
    from pyspark.sql.functions import pandas_udf

    regions = dict(country_regions)

    @pandas_udf("geo_reason string, region string, uri_reason string, uri_detail string")
    def checks(lat: pd.Series, lon: pd.Series, country: pd.Series, uri: pd.Series) -> pd.DataFrame:
        return row_checks(lat, lon, country, uri, country_regions=regions, geo=geo, policy=policy)

    return checks


def video_key(video_id):
    """The video_id a row is keyed and sharded by: trimmed, blank -> null."""
    from pyspark.sql import functions as F

    vid = F.trim(video_id)
    return F.when(vid == "", None).otherwise(vid)


#: Columns ingest adds to the manifest's own before :func:`validate` (:func:`prepare` and the run's ``_order``).
_ADDED = (CORRUPT, "_order", "_vid", "_lat", "_lon", "_country", "_checks")


def ascii_case(text, *, upper: bool):
    """``upper(text)`` (or ``lower``), with ASCII text mapped by ``translate``: the same result, but Spark's upper and
    lower go through ICU, whose case tables take seconds to build in a fresh JVM (6 s measured, C1 JIT), a fixed
    cost of every ingest for two-letter country codes. Text with a non-ASCII character still goes through ICU."""
    import string

    from pyspark.sql import functions as F

    lower, upper_ = string.ascii_lowercase, string.ascii_uppercase
    ascii_only = F.octet_length(text) == F.length(text)  # one byte per character: ASCII
    mapped = F.translate(text, lower, upper_) if upper else F.translate(text, upper_, lower)
    return F.when(ascii_only, mapped).otherwise(F.upper(text) if upper else F.lower(text))


def source_columns(raw) -> list[str]:
    """The manifest's own columns (what a quarantined row keeps as its ``source_row``), in file order."""
    return [c for c in raw.columns if c not in _ADDED]


def prepare(raw, *, country_regions: Mapping[str, str | None], cfg: Config):
    """The manifest rows with their key (``_vid``), parsed coordinates and country (``_lat``, ``_lon``,
    ``_country``) and the Python checks' results (``_checks``, :func:`row_checks_udf`): the part of :func:`validate`
    that runs where the rows are read.

    Why separate: Spark forgets how rows are sharded once they pass through a Python UDF, so the checks run before
    the rows are sharded by video_id (pipelined with the reader: the JVM parses while the Python worker checks), and
    everything after the shard (validation, ranking, the join with ``uploads``) keeps its partitioning.
    """
    from pyspark.sql import functions as F

    def text(name: str):
        return F.col(name) if name in raw.columns else F.lit(None).cast("string")

    df = raw if "_vid" in raw.columns else raw.withColumn("_vid", video_key(text("video_id")))
    df = df.select("*", F.trim(text("lat")).try_cast("double").alias("_lat"),
                   F.trim(text("lon")).try_cast("double").alias("_lon"),
                   ascii_case(F.trim(text("country")), upper=True).alias("_country"))
    checks = row_checks_udf(country_regions, cfg.settings.geo, UriPolicy.from_settings(cfg.settings.ingest))
    return df.withColumn("_checks", checks(F.col("_lat"), F.col("_lon"), F.col("_country"), text("uri")))


def validate(raw, *, source: str, country_regions: Mapping[str, str | None], cfg: Config):
    """Parse and validate manifest rows: the uploads columns, ``_reason`` (null: valid), the manifest's own columns
    as ``_src0``, ``_src1``, ... (:func:`source_columns` order), ``_corrupt_record`` and ``_uri_detail``. ``raw``
    may have been through :func:`prepare` already (ingest does that before sharding); if not, it is here.

    Pure transformation of a DataFrame (no I/O), so it can be tested on its own. What only a rejected row needs (its
    ``_detail`` and ``_source_row``: :func:`reject_columns`) is not built here: Spark builds it for the rows that
    reach the quarantine, not for every row.
    """
    from pyspark.sql import functions as F

    ing, geo = cfg.settings.ingest, cfg.settings.geo
    bin_deg = geo.bin_deg
    max_title, max_desc = ing.max_title_chars, ing.max_description_chars
    original = source_columns(raw)
    df = raw if "_checks" in raw.columns else prepare(raw, country_regions=country_regions, cfg=cfg)
    if CORRUPT not in df.columns:
        df = df.withColumn(CORRUPT, F.lit(None).cast("string"))
    for column in (*REQUIRED_COLUMNS, "withdrawn"):  # a manifest of withdrawals lacks the content columns
        if column not in df.columns:
            df = df.withColumn(column, F.lit(None).cast("string"))
    if "source" not in df.columns:
        df = df.withColumn("source", F.lit(source))

    lat_raw, lon_raw = F.trim(F.col("lat")), F.trim(F.col("lon"))
    df = df.select(
        "*",
        F.try_to_timestamp(F.trim(F.col("upload_time"))).alias("_time"),
        ascii_case(F.trim(F.col("withdrawn").cast("string")), upper=False).alias("_withdrawn_text"),
    )
    withdrawn = F.coalesce(F.col("_withdrawn_text").isin(list(_TRUE)), F.lit(False))
    unparseable = ((lat_raw.isNotNull() & (lat_raw != "") & F.col("_lat").isNull()) |
                   (lon_raw.isNotNull() & (lon_raw != "") & F.col("_lon").isNull()))
    reason = (F.when(F.col(CORRUPT).isNotNull(), "malformed_record")
              .when(F.col("_vid").isNull(), "missing_video_id")
              .when(F.col("upload_time").isNull() | (F.trim(F.col("upload_time")) == ""), "missing_upload_time")
              .when(F.col("_time").isNull(), "malformed_upload_time")
              .when(F.col("_withdrawn_text").isNotNull() & ~F.col("_withdrawn_text").isin(list(_TRUE + _FALSE)),
                    "invalid_withdrawn")
              .when(withdrawn, F.lit(None).cast("string"))  # a tombstone needs only video_id and upload_time
              .when(F.col("_checks.uri_reason").isNotNull(), F.col("_checks.uri_reason"))  # never read: README Security
              .when(F.col("_lat").isNull() | F.col("_lon").isNull(),
                    F.when(unparseable, "invalid_coordinates").otherwise("missing_coordinates"))
              .otherwise(F.col("_checks.geo_reason")))

    title, desc = F.coalesce(F.col("title"), F.lit("")), F.coalesce(F.col("description"), F.lit(""))
    none = F.array().cast("array<string>")

    def flag(condition, name: str):
        return F.when(condition, F.array(F.lit(name))).otherwise(none)

    # The flags that apply, in this order: a concatenation of one-element arrays (compiled code; array_compact over
    # an array of nullable flags is evaluated row by row by the interpreter).
    flags = F.concat(flag(F.length(title) > max_title, "title_truncated"),
                     flag(F.length(desc) > max_desc, "description_truncated"),
                     flag(F.instr(title, "\ufffd") > 0, "title_invalid_utf8"),
                     flag(F.instr(desc, "\ufffd") > 0, "description_invalid_utf8")).cast("array<string>")
    lat_bin = F.floor(F.col("_lat") / F.lit(bin_deg)).cast("int")
    lon_bin = F.floor(F.col("_lon") / F.lit(bin_deg)).cast("int")

    def live(column, name: str):
        """A tombstone keeps only video_id, upload_time and source: it carries no content to analyse."""
        return F.when(withdrawn, None).otherwise(column).alias(name)

    return df.select(
        F.col("_vid").alias("video_id"),
        live(F.col("uri"), "uri"),
        live(F.col("_country"), "country"),
        live(F.col("_checks.region"), "region"),
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
        F.col("_checks.uri_detail").alias("_uri_detail"),
        F.col(CORRUPT),
        *[F.col(_quoted(c)).alias(f"_src{i}") for i, c in enumerate(original)],
        *([F.col("_order")] if "_order" in df.columns else []),
    )


def _validation_detail(original: list[str]):
    """Why validation rejected a row, in words (from ``_reason`` and the row's text as the manifest gave it)."""
    from pyspark.sql import functions as F

    def text(name: str):
        return F.col(f"_src{original.index(name)}") if name in original else F.lit(None).cast("string")

    reason = F.col("_reason")
    lat, lon, country = text("lat"), text("lon"), text("country")
    return (F.when(reason == "malformed_record", F.lit("the reader could not parse this line"))
            .when(reason.isin(list(URI_REASONS)), F.col("_uri_detail"))
            .when(reason == "malformed_upload_time",
                  F.concat(F.lit("upload_time '"), text("upload_time"), F.lit("' is not an ISO-8601 timestamp")))
            .when(reason == "invalid_withdrawn",
                  F.concat(F.lit("withdrawn '"), text("withdrawn").cast("string"),
                           F.lit("' is not true/false (also accepted: 1/0, yes/no)")))
            .when(reason == "invalid_coordinates",
                  F.concat(F.lit("lat/lon '"), F.coalesce(lat, F.lit("")), F.lit("', '"),
                           F.coalesce(lon, F.lit("")), F.lit("' are not numbers")))
            .when(reason == "unknown_country",
                  F.concat(F.lit("country '"), F.coalesce(country, F.lit("")),
                           F.lit("' is not an ISO 3166-1 alpha-2 code in conf/regions.csv")))
            .when(reason == "coordinates_swapped",
                  F.concat(F.lit("lat="), lat, F.lit(" lon="), lon, F.lit(" look swapped: read the "
                           "other way round (lat="), lon, F.lit(", lon="), lat,
                           F.lit(") they make a plausible point in country "), country))
            .when(reason == "coordinates_outside_country",
                  F.concat(F.lit("lat="), lat, F.lit(" lon="), lon, F.lit(" are not in country "),
                           country, F.lit(": no place of it is within geo.border_tolerance_km of the "
                           "point's nearest place, or the point is at sea (geo.max_offshore_km) or too remote "
                           "(geo.max_distance_km)")))
            .when(reason.isNotNull(),
                  F.concat(reason, F.lit(": lat="), F.coalesce(lat, F.lit("null")), F.lit(" lon="),
                           F.coalesce(lon, F.lit("null")), F.lit(" country="),
                           F.coalesce(country, F.lit("null")))))


def reject_columns(classified, original: list[str], shared_uri: str):
    """What a quarantined row keeps, built before the rows are kept in memory so that the manifest's own columns
    (``_src0``, ...) need not be: ``_detail`` (why, in words) and ``_source_row`` (the row as the manifest gave it,
    JSON; the reader's raw line for a malformed one), on the rows :func:`classify` quarantined, and (``shared_uri``
    quarantine) ``_source_row`` also on every live new or updated row, which :func:`mark_shared_uris` may yet turn
    into a ``shared_uri`` reject. The columns only these needed are dropped."""
    from pyspark.sql import functions as F

    quarantined = F.col("_status") == "quarantined"
    keep_source = quarantined
    if shared_uri == "quarantine":
        live = F.col("uri").isNotNull() & ~F.coalesce(F.col("withdrawn"), F.lit(False))
        keep_source = quarantined | (F.col("_status").isin("new", "updated") & live)
    source_row = F.to_json(F.struct(*[F.col(f"_src{i}").alias(c) for i, c in enumerate(original)]), KEEP_NULLS)
    duplicate = F.when(F.col("_rank") > 1, _in_manifest_detail()).otherwise(
        F.concat(F.lit("uploads already holds a later upload of this video_id ("),
                 F.col("_stored_time").cast("string"), F.lit(")")))
    detail = F.when(~F.col("_valid"), _validation_detail(original)).otherwise(duplicate)
    return (classified.withColumn("_detail", F.when(quarantined, detail))
            .withColumn("_source_row", F.when(keep_source, F.coalesce(source_row, F.col(CORRUPT))))
            .drop(*[f"_src{i}" for i in range(len(original))], "_uri_detail", CORRUPT, "_rank", "_winner_time",
                  "_stored_time"))


_CONTENT = ("uri", "country", "lat", "lon", "upload_time", "title", "description", "withdrawn")


def _content_hash():
    from pyspark.sql import functions as F

    return F.sha2(F.to_json(F.struct(*[F.coalesce(F.col(c), F.lit(False)) if c == "withdrawn" else F.col(c)
                                       for c in _CONTENT])), 256)


def classify(checked, existing):
    """Resolve duplicates over every row of :func:`validate`: adds ``_valid`` and ``_status`` (new | updated |
    unchanged | quarantined); a rejected row keeps its validation ``_reason``, a beaten duplicate gets ``duplicate``.

    Within the manifest, the valid row with the latest upload_time wins (ties: the later row in the manifest);
    against ``uploads``, an incoming row replaces the stored one unless the stored one is newer. Identical content is
    ``unchanged`` so a re-ingest commits nothing (the content hash of an incoming row is computed only where
    ``uploads`` holds its video_id). A quarantined duplicate's detail (:func:`reject_columns`) says which rule beat
    it, so a tie is never reported as "a later upload". Rows that failed validation take part in nothing: they rank
    after every valid row of their video_id, no winner's time is theirs, and they match no stored row (one window
    by video_id alone, so the shard by video_id serves the ranking and the join).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if "withdrawn" not in existing.columns:  # a table written before withdrawals existed
        existing = existing.withColumn("withdrawn", F.lit(False))
    # One window (one sort, one pass): valid rows first, latest first; the first row's upload_time is the winner's
    # (a quarantined duplicate is valid, so its video_id has a valid first row).
    by_video = Window.partitionBy("video_id").orderBy(F.col("_valid").desc(), F.col("upload_time").desc(),
                                                      F.col("_order").desc())
    ranked = (checked.withColumn("_valid", F.col("_reason").isNull())
              .withColumn("_rank", F.row_number().over(by_video))
              .withColumn("_winner_time", F.first("upload_time").over(by_video)))
    stored = existing.select(F.col("video_id").alias("_stored_vid"), F.col("upload_time").alias("_stored_time"),
                             _content_hash().alias("_stored_hash"))
    joined = ranked.join(stored, (F.col("video_id") == F.col("_stored_vid")) & F.col("_valid"), "left")
    status = (F.when(~F.col("_valid") | (F.col("_rank") > 1), "quarantined")
              .when(F.col("_stored_hash").isNull(), "new")  # no stored row (a stored row may lack a time: import)
              .when(F.col("_stored_hash") == _content_hash(), "unchanged")
              .when(F.col("_stored_time") > F.col("upload_time"), "quarantined")
              .otherwise("updated"))
    return (joined.withColumn("_status", status)
            .withColumn("_reason", F.when(~F.col("_valid"), F.col("_reason"))
                        .when(F.col("_status") == "quarantined", F.lit("duplicate")))
            .drop("_stored_vid", "_stored_hash"))


def shared_uri_holders(classified, existing):
    """The new or updated uploads whose uri another video_id holds first: ``video_id``, ``_status`` and
    ``_shared_with``, the video_id that holds the uri first (a live stored upload, else the earliest upload_time,
    then the smallest id). Small (usually empty), so the caller keeps it and joins it back by video_id."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    live = F.col("uri").isNotNull() & ~F.coalesce(F.col("withdrawn"), F.lit(False))
    incoming = classified.filter(F.col("_status").isin("new", "updated") & live)
    stored = existing if "withdrawn" in existing.columns else existing.withColumn("withdrawn", F.lit(False))
    holders = (stored.filter(live).join(incoming.select("video_id"), "video_id", "left_anti")
               .select("uri", "video_id", F.lit(0).alias("_tier"), "upload_time", F.lit(None).cast("string")
                       .alias("_status")))
    both = holders.unionByName(incoming.select("uri", "video_id", F.lit(1).alias("_tier"), "upload_time",
                                               "_status"))
    by_uri = Window.partitionBy("uri").orderBy("_tier", "upload_time", "video_id")
    return (both.withColumn("_shared_with", F.first("video_id").over(
                by_uri.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)))
            .filter((F.col("_tier") == 1) & (F.col("_shared_with") != F.col("video_id")))
            .select("video_id", "_status", "_shared_with"))


def mark_shared_uris(classified, holders, mode: str, any_shared: bool = True):
    """Adds ``_shared_with`` (:func:`shared_uri_holders`) to every new or updated row whose uri another video_id
    holds first (the study counts videos as independent). ``mode`` quarantine turns those rows into ``shared_uri``
    rejects; warn leaves them (the run's report counts them). ``any_shared`` False (no holder was counted, or mode
    warn, where a mark changes nothing written) spares the join: ``_shared_with`` is null."""
    from pyspark.sql import functions as F

    if not any_shared:
        return classified.withColumn("_shared_with", F.lit(None).cast("string"))
    live = F.col("uri").isNotNull() & ~F.coalesce(F.col("withdrawn"), F.lit(False))
    marked = classified.join(holders.select("video_id", "_shared_with"), "video_id", "left").withColumn(
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
    """Ingest one manifest into ``uploads`` and ``quarantine``; returns the reconciled counts.

    Where the work goes (``IngestReport.stage_seconds``): ``read`` (the manifest's header), ``tables`` (``uploads``
    ready, its version), ``validate`` (the one pass over every row: parse, check, rank duplicates against
    ``uploads``, kept in memory, counted), ``shared uris``, ``write uploads`` (one MERGE), ``write quarantine`` and
    ``withdrawals``. Spark jobs only where a number is needed: one for the counts, one for the shared uris, then the
    commits.
    """
    from pyspark.sql import functions as F

    report = IngestReport(manifest=manifest)
    stages = StageClock()
    stages.enter("read")
    ing = cfg.settings.ingest
    raw = read_manifest(spark, manifest, fmt, csv_multiline=ing.csv_multiline)
    if raw is None or not raw.columns:
        log.warning("manifest %s is empty: nothing to ingest", manifest)
        return _finish(report, stages)
    if raw.columns == [CORRUPT]:  # lines, but not one JSON object among them: not "empty", the wrong format
        raise ManifestError(f"no line of manifest {manifest} is a JSON object: a JSON manifest holds one object per "
                            "line (for a CSV, name it .csv or pass --format csv)")
    check_columns(raw.columns, ing.allow_extra_columns)
    country_regions = load_country_regions(cfg.path("regions.file"))

    stages.enter("tables")
    uploads = store.table(UPLOADS)
    if uploads.exists():
        stored = uploads.read(uploads.version())  # this version throughout, whatever other writers commit meanwhile
    else:  # the first ingest into this data root: nothing is stored yet (an empty relation built in the JVM: a
        # DataFrame made from a Python list would start Python workers to produce no rows)
        stored = spark.range(0).select(*[F.lit(None).cast(f.dataType).alias(f.name)
                                         for f in spark_schema(UPLOADS.schema).fields])
    # The catalog entries (the metastore server's first round trips in a process take seconds) are made in a thread
    # while the pass over the rows runs, which needs only the table's files; the first commit waits for them.
    with ThreadPoolExecutor(1, thread_name_prefix="ingest-catalog") as pool:
        catalog = []
        marked, kept, counts = _classify_rows(spark, cfg, raw, stored, manifest, country_regions, report, stages,
                                              on_pass=lambda: catalog.append(pool.submit(_catalog_ready, store)))
        stages.enter("tables")
        for ready in catalog or [pool.submit(_catalog_ready, store)]:
            ready.result()
    try:
        _write(spark, store, report, stages, stored, marked, counts)
    finally:
        for df in kept:
            df.unpersist()
    return _finish(report, stages)


def _catalog_ready(store: TableStore) -> None:
    """``uploads`` and ``quarantine`` exist and are named in the catalog."""
    store.table(UPLOADS).create_if_missing()
    store.table(QUARANTINE).create_if_missing()


def _finish(report: IngestReport, stages: StageClock) -> IngestReport:
    stages.enter(None)
    report.stage_seconds = {step: round(seconds, 3) for step, seconds in stages.seconds.items()}
    report.finish()
    log.info("ingest run %s finished in %.1fs (%s)", report.run_id, report.seconds,
             ", ".join(f"{k} {v:.1f}s" for k, v in report.stage_seconds.items()))
    return report


@dataclass
class _Counts:
    """What the counting pass found beyond the report's counts: the tombstones among the new and updated rows."""

    tombstones: int = 0


def _classify_rows(spark, cfg: Config, raw, stored, manifest: str, country_regions, report: IngestReport,
                   stages: StageClock, on_pass=None):
    """The one pass over every row (validate, rank, compare with ``uploads``), kept in memory, counted into
    ``report``; then the shared uris. Returns (the rows marked, the DataFrames kept in memory, :class:`_Counts`).

    ``on_pass`` is called once every DataFrame of the pass is built, just before its job runs: the catalog work
    started then runs beside the job, where starting it earlier would stall building the DataFrames (resolving a
    function waits for the session catalog the metastore's first round trips hold).
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    ing = cfg.settings.ingest
    stages.enter("validate")
    original = source_columns(raw)
    # Manifest order breaks upload_time ties (the later row wins); the Python checks run where the rows are read
    # (:func:`prepare`); then shard by a stable hash of video_id, and validate, rank and join on every core.
    raw = raw.withColumn("_order", F.monotonically_increasing_id())
    raw = prepare(raw, country_regions=country_regions, cfg=cfg).repartition(ing.partitions, "_vid")
    checked = validate(raw, source=manifest, country_regions=country_regions, cfg=cfg)
    # Kept in memory for the counts, the MERGE and the quarantine: the columns a row of uploads needs and what a
    # rejected row keeps (nothing of the manifest's own columns), uncompressed (the rows live for one run; gathering
    # compression statistics cost more than the memory it saves).
    with scoped_conf(spark, {"spark.sql.inMemoryColumnarStorage.compressed": False}):
        classified = reject_columns(classify(checked, stored), original, ing.shared_uri).persist(
            StorageLevel.MEMORY_AND_DISK)

    counts = _Counts()
    status_counts, rejected = Counter(), Counter()
    by_status = classified.groupBy("_status", "withdrawn", "_reason").count()
    if on_pass is not None:
        on_pass()
    for r in by_status.collect():
        status_counts[r["_status"]] += r["count"]
        counts.tombstones += r["count"] if r["withdrawn"] and r["_status"] in ("new", "updated") else 0
        rejected[r["_reason"]] += r["count"] if r["_status"] == "quarantined" else 0

    stages.enter("shared uris")
    holders = shared_uri_holders(classified, stored).persist(StorageLevel.MEMORY_AND_DISK)
    shared = {r["_status"]: r["count"] for r in holders.groupBy("_status").count().collect()}
    if ing.shared_uri == "quarantine":
        for status, n in shared.items():
            status_counts[status] -= n
            status_counts["quarantined"] += n
            rejected["shared_uri"] += n
    else:
        report.shared_uri_rows = sum(shared.values())
    marked = mark_shared_uris(classified, holders, ing.shared_uri,
                              any_shared=bool(shared) and ing.shared_uri == "quarantine")

    report.rows_in = sum(status_counts.values())
    report.new, report.updated = status_counts["new"], status_counts["updated"]
    report.unchanged = status_counts["unchanged"]
    report.quarantined = status_counts["quarantined"]
    report.reasons = {reason: n for reason, n in rejected.items() if n}
    if report.shared_uri_rows:
        log.warning("%d new or updated uploads name a uri another video_id already names (ingest.shared_uri: warn)",
                    report.shared_uri_rows)
    return marked, [classified, holders], counts


def _write(spark, store: TableStore, report: IngestReport, stages: StageClock, stored, marked, counts: _Counts):
    """The commits: ``uploads`` (one MERGE), ``quarantine`` (rejected rows and the stored rows that updated rows
    replaced; no commit when there are none), then the withdrawals."""
    from pyspark.sql import functions as F

    uploads = store.table(UPLOADS)
    stages.enter("write uploads")
    ingest_time = F.lit(utc_timestamp(report.started)).cast("timestamp")
    accepted = (marked.filter(F.col("_status").isin("new", "updated"))
                .withColumn("ingest_time", ingest_time).select(*UPLOADS.schema.names))
    updated = report.updated
    report.replaced_rows_quarantined = updated
    if report.new or report.updated:
        # One MERGE: new keys inserted, later uploads replace older ones. Never a blind append: if another ingest
        # commits the same keys first, Delta makes this commit conflict and retry, and the retry's own counts (what
        # it inserted and replaced) are the ones reported; rows the other writer already stored count as unchanged.
        # The source is the rows kept in memory: Delta need not copy it again before the MERGE reads it twice (its
        # materializeSource guards sources that could change between the two reads; these cannot).
        with scoped_conf(spark, {"spark.databricks.delta.merge.materializeSource": "none"}):
            commit = uploads.upsert(accepted, update_when="t.upload_time IS NULL OR s.upload_time >= t.upload_time",
                                    evolve_schema=True, keys_unique=True)  # _rank 1 of its video_id: one row each
        planned = report.new + report.updated
        report.new, report.updated = commit.rows_inserted, commit.rows_updated
        report.unchanged += planned - report.new - report.updated
        report.commits["uploads"] = commit
    else:
        report.commits["uploads"] = CommitResult(UPLOADS.name, None)

    stages.enter("write quarantine")
    if report.quarantined or updated:
        common = dict(stage="ingest", reason_col="_reason", detail_col="_detail", source_row_col="_source_row",
                      run_id=report.run_id)
        quarantine_rows = to_quarantine_rows(marked.filter(F.col("_status") == "quarantined"), source_col="source",
                                             **common)
        if updated:
            quarantine_rows = quarantine_rows.unionByName(to_quarantine_rows(
                _replaced_rows(stored, marked).withColumn("_from", F.lit("uploads")), source_col="_from", **common))
        report.commits["quarantine"] = write_quarantine(store, quarantine_rows)
    else:  # nothing rejected, nothing replaced: no rows to look for and no commit
        report.commits["quarantine"] = CommitResult(QUARANTINE.name, None)

    stages.enter("withdrawals")
    if counts.tombstones and report.commits["uploads"].version is not None:
        # What the commit wrote, not what was planned: a concurrent ingest may have stored a later upload first.
        report.withdrawn = (uploads.read(report.commits["uploads"].version)
                            .filter(F.col("withdrawn") & (F.col("ingest_time") == ingest_time)).count())
    if report.withdrawn:
        report.annotations_deleted = apply_withdrawals(store, report.commits)


def _replaced_rows(stored, marked):
    """The stored rows that updated rows replace, shaped as rejects: what ``uploads`` held before (its row, JSON),
    reason ``withdrawn`` (the uploader withdrew the video) or ``duplicate`` (a later upload replaced it)."""
    from pyspark.sql import functions as F

    incoming = marked.filter(F.col("_status") == "updated").select(
        "video_id", F.col("upload_time").alias("_new_time"), F.col("withdrawn").alias("_new_withdrawn"))
    return (stored.join(incoming, "video_id")
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
