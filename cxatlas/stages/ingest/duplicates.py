"""Duplicates within a manifest and against ``uploads`` (the latest upload wins), uris shared by several video_ids,
and what a quarantined row keeps."""
from __future__ import annotations

from cxatlas.stages.ingest.manifest import CORRUPT
from cxatlas.stages.ingest.validation import _validation_detail

KEEP_NULLS = {"ignoreNullFields": "false"}  # a quarantined row keeps every column, nulls included
STATUSES = ("new", "updated", "unchanged", "quarantined")  # what classify makes of a row


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
