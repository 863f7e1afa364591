"""``cxatlas import-annotations``: bring per-video annotations made by any other system into cxatlas.

The import format
-----------------
One Parquet file, or a folder of Parquet files, one row per video:

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

Folders (local paths and ``file:`` URIs)
----------------------------------------
Every data file is read, whatever its name: a file is Parquet by its content (``PAR1`` at its start and end), so
Hadoop's ``part-00001`` counts as much as ``part-00001.parquet``. Entries whose name starts with ``_`` or ``.``
(``_SUCCESS``, ``_population``, ``.crc`` files) are ignored, as Spark ignores them. Anything else (a CSV, a README, a
sub-folder, a ``.parquet`` file that is not Parquet) makes the import refuse the folder, naming it, unless
``skip_non_parquet`` (CLI ``--skip-non-parquet``) skips it with a warning naming it: a file left out silently is
data lost silently.

The files' schemas are compared before anything is written; the import reads their union:

* every file must carry the same ``video_id``/``region`` and ``expr_`` columns (a missing expression column is never
  filled in: the file says nothing about that expression);
* a ``ctx_`` column missing from some files is refused, naming the files and columns, unless
  ``missing_contexts_as_zero`` (CLI ``--missing-contexts-as-zero``): then the context reads as absent (score 0) in
  the files without it;
* ``lat``/``lon`` and ignored extra columns may be missing from some files (null there).

Types may differ between files only where Arrow's own promotion merges them (``pyarrow.unify_schemas``,
permissive) and widening loses nothing that matters: ``expr_``/``ctx_`` scores and
``lat``/``lon`` that are integers, floats or decimals of any width are read as double; other integer columns as 64-bit
integers; ``string``/``large_string`` as string; an all-null column takes the others' type; ignored extra columns
are read as string. Anything else (a string in one file and a double in another, in one column) is refused, naming
the column, the files and their types. Every refusal happens before any table is created or touched.

Non-local URIs (``s3a://``, ``abfss://``, ``hdfs://``) are listed by Spark (which also ignores ``_``/``.`` entries
and fails on a file that is not Parquet) and read with Spark's ``mergeSchema``: a column missing from some files
reads as null there, so those rows are quarantined (``invalid_context_score``, ``invalid_expression_score``), never
dropped; types Spark cannot merge are refused.

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
  ``unknown_region``, ``invalid_coordinates`` (not numbers, outside +-90/+-180, or only one of the two),
  ``coordinates_outside_region`` (see below), ``invalid_expression_score`` (null, NaN or infinite),
  ``invalid_context_score`` (null, NaN or outside [0, 1]), ``duplicate_video_id`` (every copy: the file does not
  say which is right), ``region_conflict``.

Coordinates are checked against the stated region with the rules ``ingest`` applies to a stated country
(:func:`cxatlas.core.geo.coordinate_problems` with every ``geo.*`` limit it takes: ``geo.max_distance_km``,
``geo.border_tolerance_km``, ...; countries mapped to regions by ``regions.file``). A point is in its region when it
fits the country of its nearest populated place and that country belongs to the region, or else fits some country
of the region (a border town whose nearest place lies across the border fits within ``geo.border_tolerance_km``).
Otherwise the row is quarantined as ``coordinates_outside_region`` -- also a point at sea or far from any populated
place (valid numbers, but no place of the region: we keep ``invalid_coordinates`` for values that are not
coordinates at all); the detail names the nearest place's country and distance and the limit that decided. Rows
without coordinates are not checked. A row that also has a duplicate ``video_id`` or a ``region_conflict`` is
reported under that reason instead (the root cause).

Rows in = imported + unchanged + quarantined, always. Annotations are immutable per model version: a video that
already has rows for this ``model_version`` (and taxonomy) is ``unchanged``, so re-importing a file commits nothing;
import corrected annotations under a new ``model_version``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from cxatlas.core.config import Config
from cxatlas.core.errors import UserError
from cxatlas.core.regions import REGIONS, load_country_regions
from cxatlas.core.runs import RunReport, utc_timestamp
from cxatlas.core.schemas import (CTX_PREFIX, EXPR_PREFIX, UPLOADS, VIDEO_CONTEXTS, VIDEO_EXPRESSIONS, label_to_column,
                             spark_schema)
from cxatlas.warehouse.catalog import register_catalog
from cxatlas.warehouse.quarantine import to_quarantine_rows, write_quarantine
from cxatlas.warehouse.tables import TableStore

log = logging.getLogger(__name__)

STAGE = "import"
REQUIRED = ("video_id", "region")
OPTIONAL = ("lat", "lon")
KEEP_NULLS = {"ignoreNullFields": "false"}
REASONS = ("missing_video_id", "unknown_region", "invalid_coordinates", "coordinates_outside_region",
           "invalid_expression_score", "invalid_context_score", "duplicate_video_id", "region_conflict")
PARQUET_MAGIC = b"PAR1"


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


def _names(items, limit: int = 10) -> str:
    """A short list for an error message: the first ``limit`` items, then how many more."""
    items = list(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return "[" + ", ".join(f"'{i}'" for i in items[:limit]) + "]" + more


def _local_path(path: str) -> Path | None:
    """The local path behind ``path`` (a plain path or a ``file:`` URI); None for any other URI, which Spark lists."""
    if path.startswith("file:"):
        return Path(unquote(urlparse(path).path))
    return None if "://" in path else Path(path)


def _is_hidden(name: str) -> bool:
    """Spark and Hadoop ignore ``_``/``.``-prefixed entries (``_SUCCESS``, ``_population``, ``.crc``); so do we."""
    return name.startswith(("_", "."))


def is_parquet_file(path: Path) -> bool:
    """A Parquet file by its content (``PAR1`` at start and end), not its name: Hadoop names parts ``part-00001``."""
    try:
        if not path.is_file() or path.stat().st_size < 2 * len(PARQUET_MAGIC) + 4:
            return False
        with path.open("rb") as handle:
            head = handle.read(len(PARQUET_MAGIC))
            handle.seek(-len(PARQUET_MAGIC), os.SEEK_END)
            return head == PARQUET_MAGIC and handle.read(len(PARQUET_MAGIC)) == PARQUET_MAGIC
    except OSError:
        return False


def list_parquet_files(folder: Path, skip_non_parquet: bool = False) -> list[Path]:
    """Every Parquet file directly in ``folder``; anything else that is not hidden is refused (or skipped with a
    warning naming it when ``skip_non_parquet``), because a file left out silently is data lost silently."""
    entries = sorted(p for p in folder.iterdir() if not _is_hidden(p.name))
    is_parquet = {p: is_parquet_file(p) for p in entries}
    files = [p for p in entries if is_parquet[p]]
    others = [p.name + ("/" if p.is_dir() else "") for p in entries if not is_parquet[p]]
    if others and not skip_non_parquet:
        raise ImportFormatError(
            f"cannot import {folder}: {len(others)} entr{'y is' if len(others) == 1 else 'ies are'} not Parquet "
            f"file(s): {_names(others)} (a folder to import holds only Parquet files; entries starting with '_' or '.' "
            "are ignored). Remove them, or pass --skip-non-parquet (skip_non_parquet=True) to skip them")
    if others:
        log.warning("import %s: skipping %d entries that are not Parquet files: %s", folder, len(others),
                    _names(others, limit=50))
    if not files:
        raise ImportFormatError(f"cannot import {folder}: the folder holds no Parquet file")
    return files


def _file_schemas(files: list[Path], root: Path) -> dict:
    """Each file's Arrow schema (footer only), keyed by its path relative to the input for error messages."""
    import pyarrow.parquet as pq

    schemas = {}
    for f in files:
        name = f.name if f != root else str(f)
        try:
            schemas[name] = pq.read_schema(f)
        except Exception as exc:  # noqa: BLE001 - any unreadable footer is the user's file to fix
            raise ImportFormatError(f"cannot read {f} as Parquet: {str(exc).splitlines()[0]}") from None
    return schemas


def _is_score_or_coordinate(column: str) -> bool:
    return column.startswith((EXPR_PREFIX, CTX_PREFIX)) or column in OPTIONAL


def _kind(arrow_type) -> str:
    """A type's family for widening: ``int``, ``float``, ``decimal``, ``string``, ``null``, or the type itself."""
    import pyarrow.types as pat

    if pat.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    for kind, test in (("null", pat.is_null), ("int", pat.is_integer), ("float", pat.is_floating),
                       ("decimal", pat.is_decimal), ("string", lambda t: pat.is_string(t) or pat.is_large_string(t)
                                                     or str(t) == "string_view")):
        if test(arrow_type):
            return kind
    return str(arrow_type)


def _arrow_common_type(types: list):
    """Arrow's own promotion of one column's types across files (:func:`pyarrow.unify_schemas`, ``permissive``: null
    takes the other type, integers widen to a wider integer or to a float, ``string`` to ``large_string``, a float
    and a decimal to a float); None where Arrow cannot merge them (a string and a double). Dictionary-encoded columns
    are compared by their values' type, as Spark reads them."""
    import pyarrow as pa
    import pyarrow.types as pat

    plain = [t.value_type if pat.is_dictionary(t) else t for t in types]
    try:
        unified = pa.unify_schemas([pa.schema([pa.field("c", t)]) for t in plain], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    return unified.field("c").type


_SPARK_TYPE = {"int": "bigint", "float": "double", "string": "string"}


def _widened_type(column: str, types: list) -> str | None:
    """The Spark type every file's ``column`` is cast to when the files' Arrow ``types`` differ; None when they cannot
    be combined without loss. Arrow decides whether they combine at all (:func:`_arrow_common_type`); the stricter
    rules of the module docstring go on top: scores and coordinates are read as double; elsewhere a column keeps one
    family (Arrow would read an integer in one file and a float in another as double, and widen decimals), except
    the extra columns, which are only kept for the quarantine's source rows and are read as string."""
    kinds = {_kind(t) for t in types} - {"null"}
    score = _is_score_or_coordinate(column)
    if not kinds:
        return None if score else "string"  # all null: Spark's union widens it
    extra = column not in REQUIRED and not score
    common = _arrow_common_type(types)
    if common is None:
        return "string" if extra else None
    if score:
        return "double" if _kind(common) in ("int", "float", "decimal") else None
    if len(kinds) == 1 and _kind(common) in _SPARK_TYPE:
        return _SPARK_TYPE[_kind(common)]
    return "string" if extra else None


@dataclass(frozen=True)
class InputLayout:
    """How the files of one input combine: the union of their columns (first-seen order), the Spark type a column is
    cast to where files differ (``casts``), and the value a file without a column reads (``fills``)."""

    columns: list[str]
    casts: dict[str, str]
    fills: dict[str, float | None]


def _missing_columns_problems(schemas: dict, columns: list[str], missing_contexts_as_zero: bool
                              ) -> tuple[list[str], dict[str, float | None]]:
    """Columns missing from some files: refuse the required and ``expr_`` ones (and ``ctx_`` ones unless the user
    opted in), fill the others; grouped by the set of files missing them so the message stays short."""
    problems: dict[tuple[str, ...], list[str]] = {}
    fills: dict[str, float | None] = {}
    ctx_missing = False
    for column in columns:
        missing = tuple(name for name, schema in schemas.items() if column not in schema.names)
        if not missing:
            continue
        if column.startswith(CTX_PREFIX) and missing_contexts_as_zero:
            fills[column] = 0.0
        elif column in REQUIRED or column.startswith((EXPR_PREFIX, CTX_PREFIX)):
            problems.setdefault(missing, []).append(column)
            ctx_missing = ctx_missing or column.startswith(CTX_PREFIX)
        else:
            fills[column] = None
    lines = [f"column(s) {_names(cols)} missing from file(s) {_names(files)}" for files, cols in problems.items()]
    if lines:
        lines.append("every file must carry the same video_id, region and expr_ columns (a missing expression is "
                     "never filled in)" + ("; pass --missing-contexts-as-zero (missing_contexts_as_zero=True) to read "
                                           "a ctx_ column missing from a file as absent (score 0)" if ctx_missing
                                           else ""))
    return lines, fills


def plan_layout(schemas: dict, missing_contexts_as_zero: bool = False) -> InputLayout:
    """Compare the files' schemas (name -> Arrow schema) and decide how to read their union, or refuse -- before
    any table is touched -- naming the columns and files that cannot be combined (module docstring: the rules)."""
    columns = list(dict.fromkeys(name for schema in schemas.values() for name in schema.names))
    problems, fills = _missing_columns_problems(schemas, columns, missing_contexts_as_zero)
    casts: dict[str, str] = {}
    for column in columns:
        types: dict[str, list[str]] = {}
        for name, schema in schemas.items():
            if column in schema.names:
                types.setdefault(str(schema.field(column).type), []).append(name)
        if len(types) == 1 and column not in fills:
            continue
        arrow_types = [schemas[files[0]].field(column).type for files in types.values()]
        target = _widened_type(column, arrow_types)
        if target is None and {_kind(t) for t in arrow_types} - {"null"}:
            problems.append(f"column '{column}' has types that cannot be combined: " +
                            ", ".join(f"{t} in {_names(files, limit=5)}" for t, files in types.items()))
        elif target is not None:
            casts[column] = target
    if problems:
        raise ImportFormatError("cannot import: the files disagree: " + "; ".join(problems))
    return InputLayout(columns, casts, fills)


def _read_local(spark, files: list[Path], schemas: dict, layout: InputLayout, uri: bool):
    """Read the files group by group (files with one schema together, so Spark never merges schemas), each group
    cast and filled to the layout, then union them by name."""
    from pyspark.sql import functions as F

    groups: dict[str, list[str]] = {}
    for f, schema in zip(files, schemas.values()):
        groups.setdefault(schema.to_string(show_schema_metadata=False), []).append(
            "file://" + str(f.resolve()) if uri else str(f))
    frames = []
    for paths in groups.values():
        df = spark.read.parquet(*paths)
        present = set(df.columns)

        def column(name: str):
            value = _c(name) if name in present else F.lit(layout.fills.get(name))
            return (value.cast(layout.casts[name]) if name in layout.casts else value).alias(name)

        frames.append(df.select(*[column(name) for name in layout.columns]))
    return reduce(lambda a, b: a.unionByName(b), frames)


def read_input(spark, path: str, *, missing_contexts_as_zero: bool = False, skip_non_parquet: bool = False):
    """The file or folder as one DataFrame holding every row of every Parquet file (module docstring: the folder
    and widening rules). Local inputs are checked file by file with pyarrow first, so an input that cannot be
    imported whole is refused here, before any table exists; non-local URIs are listed and merged by Spark."""
    local = _local_path(path)
    if local is None:
        return _read_with_spark(spark, path)
    if not local.exists():
        raise ImportFormatError(f"input not found: {path}")
    if local.is_dir():
        files = list_parquet_files(local, skip_non_parquet)
    elif is_parquet_file(local):
        files = [local]
    else:
        raise ImportFormatError(f"cannot import {path}: not a Parquet file (it does not start and end with PAR1)")
    schemas = _file_schemas(files, local)
    layout = plan_layout(schemas, missing_contexts_as_zero)
    log.info("import %s: %d Parquet file(s), %d column(s)%s", path, len(files), len(layout.columns),
             f", widened {sorted(layout.casts)}" if layout.casts else "")
    try:
        return _read_local(spark, files, schemas, layout, uri=path.startswith("file:"))
    except Exception as exc:  # noqa: BLE001 - re-raised with the path
        raise ImportFormatError(f"cannot read {path} as Parquet: {str(exc).splitlines()[0]}") from exc


def _read_with_spark(spark, path: str):
    """A non-local URI: Spark lists it (ignoring ``_``/``.`` entries) and merges the files' schemas, so a column
    missing from some files reads as null there (those rows are quarantined) instead of vanishing."""
    try:
        return spark.read.option("mergeSchema", "true").parquet(path)
    except Exception as exc:  # noqa: BLE001 - re-raised with the path
        text = str(exc)
        if "PATH_NOT_FOUND" in text or "does not exist" in text:
            raise ImportFormatError(f"input not found: {path}") from None
        raise ImportFormatError(f"cannot read {path} as Parquet: {text.splitlines()[0]}") from exc


def geo_limits(geo) -> dict:
    """The ``geo`` settings that :func:`cxatlas.core.geo.coordinate_problems` takes as keywords (the settings carry
    its parameter names): the import applies exactly the limits ``ingest`` applies, whichever limits ``geo`` has,
    with no second list to keep in sync."""
    import dataclasses
    import inspect

    from cxatlas.core.geo import coordinate_problems

    accepted = inspect.signature(coordinate_problems).parameters
    return {k: v for k, v in dataclasses.asdict(geo).items() if k in accepted}


def outside_region_details(lat, lon, region, country_regions: Mapping[str, str | None], limits: Mapping
                           ) -> np.ndarray:
    """Per row, why the point is not in its stated region, or None (also where coordinates or region are missing or
    invalid: other reasons cover those).

    The file states a region, :func:`~cxatlas.core.geo.coordinate_problems` judges a stated *country*. So each point
    claims the country of its nearest populated place when that country belongs to the region (the ingest rules then
    decide: distance, and whatever else ``limits`` switch on); otherwise it claims every country of the region in
    turn, so a border town whose nearest place lies across the border still fits within ``border_tolerance_km``.
    The point is in the region when any claim fits.
    """
    from cxatlas.core.geo import COORDINATES_SWAPPED, coordinate_problems, nearest_country

    members: dict[str, list[str]] = {}
    for code, reg in sorted(country_regions.items()):
        if reg:
            members.setdefault(reg, []).append(code)
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    region = np.asarray(region, dtype=object)
    out = np.full(lat.size, None, dtype=object)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180)
    rows = np.flatnonzero(ok & np.fromiter((r in members for r in region), dtype=bool, count=region.size))
    if rows.size == 0:
        return out
    codes, km = nearest_country(lat[rows], lon[rows])
    claim_row, claim_code = [], []
    for i, (code, reg) in enumerate(zip(codes, region[rows])):
        claims = [code] if country_regions.get(code) == reg else members[reg]
        claim_row += [i] * len(claims)
        claim_code += claims
    claim_row = np.asarray(claim_row)
    reasons = coordinate_problems(lat[rows][claim_row], lon[rows][claim_row], np.asarray(claim_code, dtype=object),
                                  country_regions, **limits)
    fits = np.zeros(rows.size, dtype=bool)
    np.logical_or.at(fits, claim_row, np.fromiter((r is None for r in reasons), dtype=bool, count=reasons.size))
    swapped = np.zeros(rows.size, dtype=bool)
    np.logical_or.at(swapped, claim_row, reasons == COORDINATES_SWAPPED)
    for i in np.flatnonzero(~fits):
        out[rows[i]] = _outside_detail(region[rows[i]], codes[i], country_regions.get(codes[i]), float(km[i]),
                                       bool(swapped[i]), limits)
    return out


def _outside_detail(region: str, country: str, country_region: str | None, km: float, swapped: bool,
                    limits: Mapping) -> str:
    """Why a point is not in ``region``, in the words of the settings that decided it."""
    where = f"the nearest populated place is in {country} (region {country_region or 'none'}), {km:.0f} km away"
    if swapped:
        return f"{where}; the point fits region {region} only with lat and lon swapped"
    if country_region == region or km > limits.get("max_distance_km", float("inf")):
        bounds = ", ".join(f"geo.{k} = {limits[k]:g}" for k in ("max_distance_km", "max_offshore_km")
                           if limits.get(k) is not None)
        return f"{where}: the point is at sea or too remote for region {region} ({bounds})"
    return (f"{where}: no place of region {region} lies within geo.border_tolerance_km = "
            f"{limits.get('border_tolerance_km')} km more")


def outside_region_udf(country_regions: Mapping[str, str | None], limits: Mapping):
    """:func:`outside_region_details` as a pandas UDF (lat, lon, region id) -> string, run on the executors like
    ingest's geography check."""
    from pyspark.sql.functions import pandas_udf

    regions, limits = dict(country_regions), dict(limits)

    @pandas_udf("string")
    def outside_region(lat: pd.Series, lon: pd.Series, region: pd.Series) -> pd.Series:
        return pd.Series(outside_region_details(lat, lon, region, regions, limits), index=lat.index, dtype=object)

    return outside_region


def validate(raw, cols: ImportColumns, bin_deg: float, outside_region=None):
    """Parse and validate rows: adds ``_vid``, ``_region``, ``_lat``, ``_lon``, ``_lat_bin``, ``_lon_bin``, the
    ``_e<i>`` expression doubles, ``_scores`` (context scores as an array in file order), ``_outside`` (why the point
    is outside its region, from ``outside_region``, a :func:`outside_region_udf`; null when not checked) and
    ``_reason`` (null when valid). Spark expressions only (array higher-order functions over the context scores),
    except the geography, which needs the populated places."""
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
    check_geo = outside_region is not None and ("lat" in has or "lon" in has)
    df = df.withColumn("_outside", outside_region(F.col("_lat"), F.col("_lon"), F.col("_region")) if check_geo
                       else F.lit(None).cast("string"))

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
              .when(F.col("_outside").isNotNull(), "coordinates_outside_region")
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
            .when(r == "coordinates_outside_region", F.col("_outside"))
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
               allow_extra_columns: bool = False, missing_contexts_as_zero: bool = False,
               skip_non_parquet: bool = False) -> ImportReport:
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
    missing_contexts_as_zero : in a folder whose files carry different ``ctx_`` columns, read a context missing from
        a file as absent (score 0) instead of refusing the folder (CLI ``--missing-contexts-as-zero``). Missing
        ``expr_`` columns are refused regardless.
    skip_non_parquet : skip (with a warning naming them) entries of a local folder that are not Parquet files
        instead of refusing the folder (CLI ``--skip-non-parquet``).

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
    # Everything that can refuse the input as a whole runs before the first create_if_missing, so a refused import
    # leaves no table behind.
    raw = read_input(spark, input_path, missing_contexts_as_zero=missing_contexts_as_zero,
                     skip_non_parquet=skip_non_parquet)
    cols = check_columns(raw.columns, allow_extra_columns, _taxonomy_labels(taxonomy))
    outside_region = outside_region_udf(load_country_regions(cfg.path("regions.file")), geo_limits(cfg.settings.geo))
    report.expressions, report.n_contexts = list(cols.expr.values()), len(cols.ctx)
    bin_deg = cfg.settings.geo.bin_deg
    log.info("import %s: %d expression and %d context columns", input_path, len(cols.expr), len(cols.ctx))

    uploads = store.table(UPLOADS).create_if_missing()
    expressions = store.table(VIDEO_EXPRESSIONS).create_if_missing()
    contexts = store.table(VIDEO_CONTEXTS).create_if_missing()
    # What the tables already hold for these videos, as one frame keyed by video_id (small on a first import, so
    # the joins below become broadcasts and the wide input rows are never shuffled).
    stored = uploads.read_unique().select(F.col("video_id").alias("_vid"), F.col("region").alias("_stored_region"))
    done_expr = (expressions.read_unique().filter(F.col("model_version") == model_version)
                 .select(F.col("video_id").alias("_vid"), F.lit(True).alias("_has_expr")))
    done_ctx = (contexts.read_unique().filter((F.col("model_version") == ctx_version) & (F.col("taxonomy") == taxonomy))
                .select(F.col("video_id").alias("_vid"), F.lit(True).alias("_has_ctx")))
    existing = stored.join(done_expr, "_vid", "full").join(done_ctx, "_vid", "full")

    checked = validate(raw, cols, bin_deg, outside_region)
    dup_ids = (checked.filter(F.col("_vid").isNotNull()).groupBy("_vid").count().filter(F.col("count") > 1)
               .select("_vid", F.lit(True).alias("_dup")))
    # A row whose region disagrees with uploads is a region_conflict even when its coordinates are also outside the
    # region it states: the stated region itself is in dispute, and that detail names the stored one.
    outside = F.col("_reason") == "coordinates_outside_region"
    checked = (checked.join(dup_ids, "_vid", "left").join(existing, "_vid", "left")
               .withColumn("_reason", F.coalesce(
                   F.when(~outside, F.col("_reason")),
                   F.when(F.col("_dup"), F.lit("duplicate_video_id")),
                   F.when(F.col("_stored_region").isNotNull() & (F.col("_stored_region") != F.col("_region")),
                          F.lit("region_conflict")),
                   F.col("_reason")))
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
    report.commits[UPLOADS.name] = uploads.insert_new(shape_to_schema(new_uploads, UPLOADS.schema, up_values))

    # video_expressions: the table's columns, plus any label column new to it (schema evolution, same commit).
    from pyspark.sql.types import FloatType, StructField, StructType

    current = expressions.read().schema
    new_cols = [dst for dst in cols.expr.values() if dst not in current.fieldNames()]
    target = StructType([f for f in current.fields] + [StructField(c, FloatType(), True) for c in new_cols])
    expr_values = {**lineage, "model_version": F.lit(model_version), "n_windows": F.lit(None),
                   "n_faces": F.lit(None)}
    expr_values.update({dst: F.col(f"_e{i}") for i, dst in enumerate(cols.expr.values())})
    expr_rows = shape_to_schema(valid.filter(~F.col("_has_expr")), target, expr_values)
    report.commits[VIDEO_EXPRESSIONS.name] = expressions.insert_new(expr_rows, evolve_schema=bool(new_cols))

    # video_contexts: non-zero scores, sparse, highest first.
    labels = F.array(*[F.lit(label) for label in cols.ctx.values()])
    pairs = F.transform("_scores", lambda s, i: F.struct(labels[i].alias("label"), s.cast("float").alias("score")))
    sparse = F.array_sort(F.filter(pairs, lambda x: x.score > 0),
                          lambda a, b: F.when(a.score > b.score, -1).when(a.score < b.score, 1).otherwise(0))
    ctx_values = {**lineage, "model_version": F.lit(ctx_version), "taxonomy": F.lit(taxonomy), "contexts": sparse}
    ctx_rows = shape_to_schema(valid.filter(~F.col("_has_ctx")), VIDEO_CONTEXTS.schema, ctx_values)
    report.commits[VIDEO_CONTEXTS.name] = contexts.insert_new(ctx_rows)

    rejects = checked.filter(F.col("_reason").isNotNull()).withColumn("_source", F.lit(input_path))
    report.commits["quarantine"] = write_quarantine(store, to_quarantine_rows(
        rejects, stage=STAGE, reason_col="_reason", detail_col="_detail", source_row_col="_source_row",
        source_col="_source", run_id=run_id, video_id_col="_vid"))
    checked.unpersist()
    register_catalog(store)  # the expression_scores view follows the columns this import added
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
