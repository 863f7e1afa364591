"""Manifest ingest: read, validate every row, upsert valid uploads, quarantine the rest. Counts always reconcile.

Modules: :mod:`.manifest` (format, bytes, header), :mod:`.validation` (the Python checks and the Spark expressions
that give a row its reason), :mod:`.duplicates` (the latest upload wins; shared uris; what a quarantined row keeps),
:mod:`.run` (:func:`run_ingest`, the commits, the withdrawals).

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

from cxatlas.stages.ingest.duplicates import STATUSES, classify, mark_shared_uris, shared_uri_holders
from cxatlas.stages.ingest.manifest import (CORRUPT, OPTIONAL_COLUMNS, REQUIRED_COLUMNS, WITHDRAWAL_COLUMNS,
                                            ManifestError, check_columns, detect_format, header_names, read_manifest)
from cxatlas.stages.ingest.run import IngestReport, apply_withdrawals, run_ingest
from cxatlas.stages.ingest.validation import prepare, row_checks, row_checks_udf, validate, video_key

__all__ = ["CORRUPT", "OPTIONAL_COLUMNS", "REQUIRED_COLUMNS", "STATUSES", "WITHDRAWAL_COLUMNS", "IngestReport",
           "ManifestError", "apply_withdrawals", "check_columns", "classify", "detect_format", "header_names",
           "mark_shared_uris", "prepare", "read_manifest", "row_checks", "row_checks_udf", "run_ingest",
           "shared_uri_holders", "validate", "video_key"]
