"""Rejected rows go to the ``quarantine`` table with their reason, so nothing is lost and counts reconcile.

Every job builds its rejects with :func:`to_quarantine_rows` and writes them with :func:`write_quarantine`. The row
hash (stage | reason | source row) makes a rerun idempotent: the same bad row is never quarantined twice.
"""
from __future__ import annotations

from cxatlas.core.schemas import QUARANTINE
from cxatlas.warehouse.tables import CommitResult, TableStore


def to_quarantine_rows(df, *, stage: str, reason_col: str, detail_col: str | None, source_row_col: str,
                       source_col: str | None, run_id: str, video_id_col: str | None = "video_id"):
    """Shape a DataFrame of rejects into the quarantine schema (Spark expressions only, no collect)."""
    from pyspark.sql import functions as F

    def col_or_null(name):
        return F.col(name).cast("string") if name else F.lit(None).cast("string")

    out = df.select(
        F.lit(stage).alias("stage"),
        F.col(reason_col).alias("reason"),
        col_or_null(detail_col).alias("detail"),
        col_or_null(video_id_col).alias("video_id"),
        col_or_null(source_col).alias("source"),
        F.col(source_row_col).alias("source_row"),
    )
    return out.withColumn(
        "row_hash", F.sha2(F.concat_ws("|", "stage", "reason", F.coalesce("source_row", F.lit(""))), 256)
    ).withColumn("run_id", F.lit(run_id)).withColumn("quarantine_time", F.current_timestamp())


def write_quarantine(store: TableStore, rejects) -> CommitResult:
    """Append rejects not already quarantined (by row hash), in one commit."""
    table = store.table(QUARANTINE).create_if_missing()
    return table.insert_new(rejects.dropDuplicates(["row_hash"]).select(*QUARANTINE.schema.names),
                            keys_unique=True)  # deduplicated on the key just above
