"""Schemas of the tables that make scheduled operation safe and auditable (issue #13).

* ``runs``: one row per run of a scheduled command (``cxatlas reprocess``), written at its start (status
  ``running``) and completed at its end, so a run killed mid-way is visible and later marked ``failed``.
* ``leases``: at most one holder per lease name; Delta's optimistic concurrency decides between two runs that try
  to take it at once (see :mod:`cxatlas.warehouse.lease`).
* ``processed_manifests``: which manifest files were ingested, with their checksum: a changed file is processed
  again, an unchanged one never (the record lives with the tables, not in a local file).
* ``stat_sums``: the additive sufficient sums of the statistics per analysis configuration, valid at recorded input
  table versions; new uploads add to them and withdrawn or re-annotated videos are subtracted
  (:mod:`cxatlas.stages.analyze.incremental`).
"""
from __future__ import annotations

import pyarrow as pa

from cxatlas.core.schemas import TS, TableSpec, _f

RUN_STATUSES = ("running", "succeeded", "failed", "skipped")

RUNS = TableSpec(
    name="runs",
    schema=pa.schema([
        _f("run_id", pa.string(), "the run (UTC timestamp + random suffix)", nullable=False),
        _f("command", pa.string(), "what ran, e.g. reprocess --manifest-dir /data/manifests"),
        _f("started", TS, "when the run started"),
        _f("finished", TS, "when it ended (null while running, or if it was killed)"),
        _f("status", pa.string(), "running | succeeded | failed | skipped (lease held by another run)"),
        _f("error", pa.string(), "why it failed or was skipped"),
        _f("host", pa.string(), "host the driver ran on"),
        _f("pid", pa.int64(), "driver process id"),
        _f("manifests", pa.int32(), "manifest files ingested"),
        _f("rows_in", pa.int64(), "manifest rows read"),
        _f("new", pa.int64(), "uploads added"),
        _f("updated", pa.int64(), "uploads replaced by a later upload"),
        _f("withdrawn", pa.int64(), "videos withdrawn (tombstones written)"),
        _f("annotated", pa.int64(), "videos annotated"),
        _f("quarantined", pa.int64(), "rows and videos quarantined"),
        _f("remaining", pa.int64(), "videos still waiting for annotation (bounded work per run)"),
        _f("analysis_id", pa.string(), "the analysis this run wrote, or found current (null: statistics not updated)"),
        _f("input_versions", pa.string(), "JSON: Delta versions of the input tables at the end of the run"),
        _f("output_versions", pa.string(), "JSON: Delta versions the run committed, per table"),
        _f("config_hash", pa.string(), "sha256 of the resolved configuration"),
        _f("stage_seconds", pa.string(), "JSON {step: seconds}: where the run time went (ingest, annotate, "
                                         "statistics, ...)"),
    ]),
    partition_by=(),
    key=("run_id",),
    comment="One row per scheduled run: what it did, how it ended, and the table versions it read and wrote.",
)

LEASES = TableSpec(
    name="leases",
    schema=pa.schema([
        _f("name", pa.string(), "what the lease protects, e.g. reprocess", nullable=False),
        _f("holder", pa.string(), "run_id of the holder"),
        _f("host", pa.string(), "host of the holder"),
        _f("pid", pa.int64(), "process id of the holder (a dead pid on the same host frees the lease at once)"),
        _f("acquired", TS, "when the holder took it"),
        _f("expires", TS, "the lease is free after this unless renewed"),
    ]),
    partition_by=(),
    key=("name",),
    comment="Run leases: one holder per name at a time, decided by Delta's optimistic concurrency.",
)

PROCESSED_MANIFESTS = TableSpec(
    name="processed_manifests",
    schema=pa.schema([
        _f("path", pa.string(), "the manifest file", nullable=False),
        _f("checksum", pa.string(), "sha256 of its bytes", nullable=False),
        _f("size", pa.int64(), "bytes"),
        _f("rows_in", pa.int64(), "rows read"),
        _f("run_id", pa.string(), "the run that ingested it"),
        _f("ingest_run_id", pa.string(), "the ingest run inside it (quarantine rows carry this id)"),
        _f("processed", TS, "when"),
        _f("error", pa.string(), "null: ingested; else why the file was refused (not a manifest, wrong columns, ...): "
                                 "later runs skip it until its content changes"),
    ]),
    partition_by=(),
    key=("path", "checksum"),
    comment="Manifest files already ingested or refused, by content: a changed file is read again.",
)

STAT_SUMS = TableSpec(
    name="stat_sums",
    schema=pa.schema([
        _f("sums_key", pa.string(), "hash of what the sums depend on: model versions, taxonomy, labels, expression "
                                    "columns and the analysis settings of the heavy pass", nullable=False),
        _f("kind", pa.string(), "moments | cca | cca_candidates | geobin | meta", nullable=False),
        _f("key", pa.int32(), "region code (moments, cca, cca_candidates) or shard (geobin)", nullable=False),
        _f("payload", pa.binary(), "the additive sums, serialised (cxatlas.stats / cxatlas.udfs.moments)"),
        _f("input_versions", pa.string(), "JSON: the input table versions these sums are exact for"),
        _f("n_videos", pa.int64(), "videos the sums hold (kind meta)"),
        _f("run_id", pa.string(), "the run that wrote them"),
        _f("updated", TS, "when"),
    ]),
    partition_by=(),
    key=("sums_key", "kind", "key"),
    comment="Sufficient sums of the statistics, kept current incrementally (new uploads add, withdrawals subtract).",
)

RUN_TABLES: tuple[TableSpec, ...] = (RUNS, LEASES, PROCESSED_MANIFESTS, STAT_SUMS)
