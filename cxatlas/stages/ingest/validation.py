"""Validating manifest rows: the Python checks (coordinates, country, uri) per Arrow batch where the rows are read,
then the Spark expressions that parse every column and give a row its ``_reason`` (null: valid)."""
from __future__ import annotations

from typing import Mapping

import pandas as pd

from cxatlas.core.config import Config
from cxatlas.core.settings import GeoSettings
from cxatlas.core.uris import REASONS as URI_REASONS
from cxatlas.core.uris import UriPolicy
from cxatlas.stages.ingest.manifest import CORRUPT, REQUIRED_COLUMNS, _quoted

# How a manifest may say a row is (or is not) a withdrawal, case-insensitively.
_TRUE, _FALSE = ("true", "1", "yes", "y", "t"), ("false", "0", "no", "n", "f", "")

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
