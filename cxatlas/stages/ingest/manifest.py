"""Reading a manifest: its format, its bytes (a video or an image is refused before Spark reads it), its header.

Every column is read as a string (validation, not the reader, decides what is bad), and whole-input mistakes
raise :class:`ManifestError` with one line before any row is read."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from cxatlas.core.errors import UserError

REQUIRED_COLUMNS = ("video_id", "uri", "lat", "lon", "country", "upload_time", "title", "description")
OPTIONAL_COLUMNS = ("source", "withdrawn")
# A withdrawal (an uploader deleted the video) needs only these; a manifest of withdrawals may hold nothing else.
WITHDRAWAL_COLUMNS = ("video_id", "upload_time", "withdrawn")
FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".ndjson": "json", ".parquet": "parquet",
           ".pq": "parquet"}
CORRUPT = "_corrupt_record"
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
