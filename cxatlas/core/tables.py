"""The one module that touches Delta tables.

Two paths behind one interface (``Table``):

* **delta-spark** (``DeltaSparkTable``): JVM ``format("delta")`` and ``io.delta.tables.DeltaTable``; used wherever the
  Delta jars are on the classpath (clusters: ``spark.jars.packages`` in ``conf/cluster.yaml``).
* **delta-rs** (``DeltaRsTable``): the embedded default. Executors write Parquet data files themselves (a
  ``mapInArrow`` task per partition) and send back only small add-action rows; the driver then makes ONE commit to the
  Delta log. A reader never sees half a job, and a job killed mid-write leaves the table at its previous version
  (its orphan files are invisible and removed by ``vacuum``). Nothing is ever collected to the driver but file
  metadata.

``TableStore.from_config`` picks the path (``tables.backend: auto`` = delta-spark when its classes load).
Modelled on delta-io/delta ``python/delta/tables.py``: a facade per table, factories, argument checks at the boundary.
"""
from __future__ import annotations

import json
import logging
import os
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import pyarrow as pa

from cxatlas import __version__
from cxatlas.core.config import Config, ConfigError
from cxatlas.core.errors import UserError
from cxatlas.core.schemas import TableSpec, spark_schema

log = logging.getLogger(__name__)

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
BACKENDS = ("auto", "delta-spark", "delta-rs")
FILE_COLUMN = "_cx_file"
_ACTION_SCHEMA = ("path string, size long, partition_values string, modification_time long, stats string, "
                  "num_records long")


class TableError(RuntimeError):
    """A table operation that cannot proceed; the message says which table and why."""


class ConcurrentCommitError(TableError):
    """Another writer committed files this commit meant to replace; rerun the job."""


class DuplicateKeyError(TableError, UserError):
    """A keyed table holds the same key twice: a job refuses to read it rather than multiply the duplicates."""


@dataclass
class CommitResult:
    """What one commit did. ``version`` is None when there was nothing to commit (the table is unchanged)."""

    table: str
    version: int | None
    files_added: int = 0
    files_removed: int = 0
    rows_written: int = 0

    def describe(self) -> str:
        """One line for a job's summary: what this commit changed in its table."""
        if self.version is None:
            return f"  {self.table}: unchanged (nothing to commit)"
        return (f"  {self.table}: committed version {self.version} (+{self.files_added} files, "
                f"-{self.files_removed} files, {self.rows_written} rows written)")


# --------------------------------------------------------------------------------------------------------------------
# Executor side: write a task's rows into Parquet files, one open writer per partition value.
# --------------------------------------------------------------------------------------------------------------------
def _partition_dir(columns: Sequence[str], values: Sequence[Any]) -> str:
    parts = []
    for col, value in zip(columns, values):
        text = HIVE_NULL if value is None else urllib.parse.quote(str(value), safe="")
        parts.append(f"{col}={text}")
    return "/".join(parts)


def _log_path(relative_disk_path: str) -> str:
    """Delta log paths are URI-encoded relative paths."""
    return urllib.parse.quote(relative_disk_path, safe="/=")


@dataclass
class _FileWriterTask:
    """Picklable ``mapInArrow`` function: writes the task's batches as Parquet files under the table root.

    One file per partition value per task, rolled over every ``target_file_rows`` rows. Yields one add-action row per
    file. ``fail_task`` (testing only) makes that task raise after its files are written.
    """

    root: str
    data_schema: pa.Schema
    partition_by: tuple[str, ...]
    run_id: str
    target_file_rows: int
    fail_task: int | None = None

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.compute as pc
        from pyspark import TaskContext

        ctx = TaskContext.get()
        task = ctx.partitionId() if ctx is not None else 0
        attempt = ctx.attemptNumber() if ctx is not None else 0
        fs, base = _filesystem(self.root)
        writers: dict[tuple, _RollingWriter] = {}
        for batch in batches:
            if batch.num_rows == 0:
                continue
            table = pa.Table.from_batches([batch])
            for values, part in _split_by_partition(table, self.partition_by, pc):
                writer = writers.get(values)
                if writer is None:
                    prefix = f"part-{self.run_id}-{task:05d}-{attempt}"
                    writer = _RollingWriter(fs, base, _partition_dir(self.partition_by, values), prefix,
                                            self.data_schema, self.target_file_rows, values, self.partition_by)
                    writers[values] = writer
                writer.write(part.select(self.data_schema.names).cast(self.data_schema))
        actions = [action for writer in writers.values() for action in writer.close()]
        if self.fail_task is not None and task == self.fail_task:
            raise RuntimeError(f"fault injected by tables.fault_fail_task={task} after writing {len(actions)} files")
        if actions:
            yield pa.RecordBatch.from_pylist(actions)


def _with_columns_of(df, struct, keep_extra: bool = False):
    """``df`` with the columns of the Spark ``struct``, in its order, typed nulls for the ones ``df`` lacks; then,
    if ``keep_extra``, ``df``'s other columns. Both backends' upserts conform their input with it."""
    from pyspark.sql import functions as F

    names = set(struct.fieldNames())
    return df.select(*[F.col(f.name) if f.name in df.columns else F.lit(None).cast(f.dataType).alias(f.name)
                       for f in struct],
                     *[c for c in df.columns if keep_extra and c not in names])


def _split_by_partition(table: pa.Table, columns: tuple[str, ...], pc) -> Iterator[tuple[tuple, pa.Table]]:
    if not columns:
        yield (), table
        return
    combos = table.select(list(columns)).group_by(list(columns)).aggregate([]).to_pylist()
    for combo in combos:
        mask = None
        for col in columns:
            value = combo[col]
            cond = pc.is_null(table[col]) if value is None else pc.equal(table[col], value)
            cond = pc.fill_null(cond, False)
            mask = cond if mask is None else pc.and_(mask, cond)
        yield tuple(combo[col] for col in columns), table.filter(mask)


class _RollingWriter:
    """Writes one partition's rows, starting a new file every ``target_rows`` rows."""

    def __init__(self, fs, base: str, part_dir: str, prefix: str, schema: pa.Schema, target_rows: int,
                 values: tuple, columns: tuple[str, ...]):
        self.fs, self.base, self.part_dir, self.prefix = fs, base, part_dir, prefix
        self.schema, self.target_rows = schema, max(1, int(target_rows))
        self.partition_values = {c: (None if v is None else str(v)) for c, v in zip(columns, values)}
        self.seq, self.rows_in_file, self.writer, self.rel = 0, 0, None, None
        self.actions: list[dict] = []

    def _open(self) -> None:
        import pyarrow.parquet as pq

        name = f"{self.prefix}-{self.seq:04d}.zstd.parquet"
        self.rel = f"{self.part_dir}/{name}" if self.part_dir else name
        full = f"{self.base}/{self.rel}"
        self.fs.create_dir(full.rsplit("/", 1)[0], recursive=True)
        self.writer = pq.ParquetWriter(full, self.schema, filesystem=self.fs, compression="zstd")
        self.seq += 1
        self.rows_in_file = 0

    def write(self, table: pa.Table) -> None:
        offset = 0
        while offset < table.num_rows:
            if self.writer is None:
                self._open()
            take = min(self.target_rows - self.rows_in_file, table.num_rows - offset)
            self.writer.write_table(table.slice(offset, take))
            self.rows_in_file += take
            offset += take
            if self.rows_in_file >= self.target_rows:
                self._finish()

    def _finish(self) -> None:
        from deltalake.writer import DeltaJSONEncoder, get_file_stats_from_metadata

        self.writer.close()
        meta = self.writer.writer.metadata
        stats = get_file_stats_from_metadata(meta, num_indexed_cols=32, columns_to_collect_stats=None)
        size = self.fs.get_file_info(f"{self.base}/{self.rel}").size
        self.actions.append({
            "path": _log_path(self.rel), "size": int(size),
            "partition_values": json.dumps(self.partition_values),
            "modification_time": int(time.time() * 1000),
            "stats": json.dumps(stats, cls=DeltaJSONEncoder), "num_records": int(meta.num_rows),
        })
        self.writer = None

    def close(self) -> list[dict]:
        if self.writer is not None:
            self._finish()
        return self.actions


def _filesystem(root: str):
    """A pyarrow filesystem and base path for a local path or a URI (s3://, gs://, hdfs://, file://)."""
    from pyarrow import fs as pafs

    if "://" in root:
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), str(Path(root).resolve())


# --------------------------------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------------------------------
class Table:
    """One Delta table. Use ``TableStore.table(spec)``; do not construct directly."""

    def __init__(self, store: "TableStore", spec: TableSpec):
        self.store, self.spec = store, spec
        self.path = f"{store.root.rstrip('/')}/{spec.name}"

    @property
    def spark(self):
        return self.store.spark

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.name!r}, {self.path!r})"

    # Every backend implements these.
    def exists(self) -> bool: raise NotImplementedError
    def create_if_missing(self) -> "Table": raise NotImplementedError
    def version(self) -> int: raise NotImplementedError
    def read(self, version: int | None = None, with_file: bool = False): raise NotImplementedError
    def append(self, df, *, evolve_schema: bool = False, operation: str = "WRITE") -> CommitResult:
        raise NotImplementedError
    def upsert(self, df, *, evolve_schema: bool = False) -> CommitResult: raise NotImplementedError
    def history(self) -> list[dict]: raise NotImplementedError
    def vacuum(self, retention_hours: float | None = None) -> list[str]: raise NotImplementedError
    def optimize(self) -> dict: raise NotImplementedError

    def _check_df(self, df, op: str) -> None:
        from pyspark.sql import DataFrame

        if not isinstance(df, DataFrame):
            raise TypeError(f"Type of 'df' in {op} must be DataFrame, got {type(df).__name__}.")
        missing = [c for c in self.spec.schema.names if c not in df.columns]
        if missing:
            raise TableError(f"{op} into '{self.spec.name}': the DataFrame lacks column(s) {missing}")

    def read_unique(self, version: int | None = None, examples: int = 5):
        """:meth:`read`, after checking that no key occurs twice (one aggregation over the key columns).

        Every job reads its keyed inputs through this: a table that somehow holds a key twice (two writers that
        appended the same rows, a hand edit) would otherwise be multiplied silently by every join downstream.
        Raises :class:`DuplicateKeyError` naming the table and a few keys.
        """
        from pyspark.sql import functions as F

        df = self.read(version)
        key = list(self.spec.key)
        dup = df.groupBy(*key).count().filter(F.col("count") > 1).limit(examples).collect()
        if dup:
            shown = "; ".join(", ".join(f"{k}={row[k]!r}" for k in key) + f" ({row['count']} rows)" for row in dup)
            raise DuplicateKeyError(
                f"table '{self.spec.name}' (at {self.path}) holds duplicate keys {key}, e.g. {shown}. Refusing to "
                f"read it: joins would multiply these rows. Restore a clean version (`cxatlas history "
                f"{self.spec.name}`, Delta time travel) or remove the extra rows, then rerun.")
        return df

    def _check_unique_keys(self, df, op: str) -> None:
        from pyspark.sql import functions as F

        key = list(self.spec.key)
        dup = df.groupBy(*key).count().filter(F.col("count") > 1).limit(1).collect()
        if dup:
            raise TableError(f"{op} into '{self.spec.name}': key {key} is not unique in the input, e.g. "
                             f"{dup[0].asDict()}")


class DeltaRsTable(Table):
    """delta-rs path: distributed file writes, one driver commit per operation."""

    def _dt(self, version: int | None = None):
        from deltalake import DeltaTable

        return DeltaTable(self.path, version=version) if version is not None else DeltaTable(self.path)

    def exists(self) -> bool:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            DeltaTable(self.path, without_files=True)
            return True
        except TableNotFoundError:
            return False

    def create_if_missing(self) -> "DeltaRsTable":
        from deltalake import DeltaTable

        if not self.exists():
            DeltaTable.create(self.path, schema=self.spec.schema, partition_by=list(self.spec.partition_by) or None,
                              name=self.spec.name, description=self.spec.comment, mode="ignore")
            log.info("created table %s at %s", self.spec.name, self.path)
        return self

    def version(self) -> int:
        return self._dt().version()

    def arrow_schema(self) -> pa.Schema:
        return self._dt().schema().to_pyarrow()

    def _active_files(self, version: int | None = None) -> list[dict]:
        dt = self._dt(version)
        actions = dt.get_add_actions(flatten=False).to_pylist()
        return [{"path": a["path"], "size": a["size_bytes"],
                 "partition_values": dict(a.get("partition_values") or {})} for a in actions]

    def read(self, version: int | None = None, with_file: bool = False):
        """The table (current or at ``version``) as a Spark DataFrame read by the executors from its files."""
        from pyspark.sql import functions as F

        if not self.exists():
            raise TableError(f"table '{self.spec.name}' does not exist at {self.path}; run the job that creates it")
        schema = self._dt(version).schema().to_pyarrow()
        pcols = list(self.spec.partition_by)
        data_schema = spark_schema(pa.schema([f for f in schema if f.name not in pcols]))
        groups: dict[tuple, list[str]] = {}
        for action in self._active_files(version):
            key = tuple(action["partition_values"].get(c) for c in pcols)
            groups.setdefault(key, []).append(self._full_path(action["path"]))
        frames = []
        for values, paths in sorted(groups.items(), key=lambda kv: str(kv[0])):
            frame = self.spark.read.schema(data_schema).parquet(*paths)
            if with_file:
                frame = frame.withColumn(FILE_COLUMN, F.col("_metadata.file_path"))
            for col, value in zip(pcols, values):
                frame = frame.withColumn(col, F.lit(value).cast(spark_schema(pa.schema([schema.field(col)]))[0]
                                                               .dataType))
            frames.append(frame)
        if not frames:
            frame = self.spark.createDataFrame([], spark_schema(schema))
            if with_file:
                frame = frame.withColumn(FILE_COLUMN, F.lit(None).cast("string"))
            return frame
        out = frames[0]
        for frame in frames[1:]:
            out = out.unionByName(frame)
        cols = schema.names + ([FILE_COLUMN] if with_file else [])
        return out.select(*cols)

    def _full_path(self, log_path: str) -> str:
        return f"{self.path}/{urllib.parse.unquote(log_path)}"

    def _relative(self, file_uri: str) -> str:
        """Spark's ``_metadata.file_path`` (a URI) -> the log path of that file."""
        parsed = urllib.parse.urlparse(file_uri)
        disk = urllib.parse.unquote(parsed.path) if parsed.scheme in ("file", "") else file_uri
        base = urllib.parse.urlparse(self.path).path if "://" in self.path else str(Path(self.path).resolve())
        return _log_path(os.path.relpath(disk, base))

    def _write(self, df, schema: pa.Schema) -> list[dict]:
        data_schema = pa.schema([f for f in schema if f.name not in self.spec.partition_by])
        task = _FileWriterTask(self.path, data_schema, tuple(self.spec.partition_by), uuid.uuid4().hex[:12],
                               self.store.target_file_rows, self.store.fault_fail_task)
        if self.spec.partition_by:
            # One task per partition value: few, large files instead of (tasks x partition values) small ones.
            df = df.repartition(*self.spec.partition_by)
        rows = df.select(*schema.names).mapInArrow(task, _ACTION_SCHEMA).collect()
        return [r.asDict() for r in rows]

    def _evolved_schema(self, df, current: pa.Schema) -> pa.Schema | None:
        """The current schema plus any new nullable columns the DataFrame brings, or None if nothing is new."""
        from pyspark.sql.pandas.types import to_arrow_type

        new = [pa.field(f.name, to_arrow_type(f.dataType), True, f.metadata or None)
               for f in df.schema.fields if f.name not in current.names and f.name != FILE_COLUMN]
        return pa.schema(list(current) + new) if new else None

    def append(self, df, *, evolve_schema: bool = False, operation: str = "WRITE") -> CommitResult:
        """Executors write ``df``'s rows as new files; one commit adds them all (no commit if there are none)."""
        self._check_df(df, "append")
        self.create_if_missing()
        read_version = self.version()
        schema = self.arrow_schema()
        evolved = self._evolved_schema(df, schema) if evolve_schema else None
        adds = self._write(df, evolved or schema)
        return self._commit(adds, [], operation, {"mode": "Append"}, read_version, evolved)

    def upsert(self, df, *, evolve_schema: bool = False) -> CommitResult:
        """Replace rows whose key is in ``df`` and insert the rest, copy-on-write at file level, in one commit.

        Only files holding a key of ``df`` are rewritten (their untouched rows are carried over), so upserting the
        same rows twice leaves the same logical table. ``df`` must have unique keys. A replaced row is the row of
        ``df``: columns the table gained by schema evolution that ``df`` lacks are null in it, and kept in every
        other row. Columns of ``df`` the table lacks are ignored unless ``evolve_schema`` adds them.
        """
        from pyspark.sql import functions as F

        self._check_df(df, "upsert")
        self._check_unique_keys(df, "upsert")
        self.create_if_missing()
        read_version = self.version()
        key = list(self.spec.key)
        current = self.arrow_schema()
        evolved = self._evolved_schema(df, current) if evolve_schema else None
        schema = evolved or current
        incoming = _with_columns_of(df, spark_schema(schema))
        existing = self.read(read_version, with_file=True)
        touched = {r[0] for r in existing.join(incoming.select(*key), key, "left_semi")
                   .select(FILE_COLUMN).distinct().collect()}
        touched_log = {self._relative(uri): uri for uri in touched}
        kept = (existing.filter(F.col(FILE_COLUMN).isin(list(touched))).join(incoming.select(*key), key, "left_anti")
                .drop(FILE_COLUMN))
        adds = self._write(_with_columns_of(kept, spark_schema(schema)).unionByName(incoming), schema)
        by_path = {a["path"]: a for a in self._active_files(read_version)}
        missing = [p for p in touched_log if p not in by_path]
        if missing:
            raise TableError(f"upsert into '{self.spec.name}': cannot map files {missing[:3]} back to the Delta log")
        removes = [by_path[p] for p in touched_log]
        return self._commit(adds, removes, "MERGE", {"predicate": " AND ".join(f"t.{k} = s.{k}" for k in key)},
                            read_version, evolved)

    def _commit(self, adds: list[dict], removes: list[dict], operation: str, params: dict, read_version: int,
                new_schema: pa.Schema | None = None) -> CommitResult:
        """Write one Delta log entry holding every add/remove action, atomically (put-if-absent)."""
        if not adds and not removes and new_schema is None:
            return CommitResult(self.spec.name, None)
        if "://" in self.path and not self.path.startswith("file://"):
            raise TableError(f"the delta-rs backend commits to local paths only; set tables.backend: delta-spark for "
                             f"{self.path}")
        now = int(time.time() * 1000)
        log_dir = Path(urllib.parse.urlparse(self.path).path if "://" in self.path else self.path) / "_delta_log"
        for attempt in range(20):
            latest = self.version()
            if latest != read_version and removes:
                active = {a["path"] for a in self._active_files()}
                gone = [r["path"] for r in removes if r["path"] not in active]
                if gone:
                    raise ConcurrentCommitError(
                        f"'{self.spec.name}' changed since version {read_version}: files {gone[:3]} were removed by "
                        f"another writer; rerun the job")
            actions: list[dict] = [{"commitInfo": {
                "timestamp": now, "operation": operation,
                "operationParameters": {k: str(v) for k, v in params.items()},
                "readVersion": read_version, "isBlindAppend": not removes,
                "clientVersion": f"cxatlas-{__version__}",
                "operationMetrics": {"numAddedFiles": str(len(adds)), "numRemovedFiles": str(len(removes)),
                                     "numOutputRows": str(sum(int(a["num_records"]) for a in adds))}}}]
            if new_schema is not None:
                actions.append({"metaData": self._metadata_action(new_schema)})
            actions += [{"remove": {"path": r["path"], "deletionTimestamp": now, "dataChange": True,
                                    "extendedFileMetadata": True, "partitionValues": r["partition_values"],
                                    "size": int(r["size"])}} for r in removes]
            actions += [{"add": {"path": a["path"], "partitionValues": json.loads(a["partition_values"]),
                                 "size": int(a["size"]), "modificationTime": int(a["modification_time"]),
                                 "dataChange": True, "stats": a["stats"]}} for a in adds]
            target = log_dir / f"{latest + 1:020d}.json"
            tmp = log_dir / f".tmp-{uuid.uuid4().hex}.json"
            tmp.write_text("\n".join(json.dumps(a) for a in actions), encoding="utf-8")
            try:
                os.link(tmp, target)  # fails if another writer took this version: put-if-absent
            except FileExistsError:
                continue
            finally:
                tmp.unlink(missing_ok=True)
            result = CommitResult(self.spec.name, latest + 1, len(adds), len(removes),
                                  sum(int(a["num_records"]) for a in adds))
            log.info("committed %s version %d: +%d files, -%d files, %d rows", self.spec.name, result.version,
                     result.files_added, result.files_removed, result.rows_written)
            return result
        raise ConcurrentCommitError(f"could not commit to '{self.spec.name}' after 20 attempts")

    def _metadata_action(self, schema: pa.Schema) -> dict:
        from deltalake import Schema as DeltaSchema

        meta = self._dt().metadata()
        return {"id": meta.id, "name": meta.name, "description": meta.description,
                "format": {"provider": "parquet", "options": {}},
                "schemaString": DeltaSchema.from_pyarrow(schema).to_json(),
                "partitionColumns": list(meta.partition_columns), "configuration": dict(meta.configuration),
                "createdTime": meta.created_time}

    def history(self) -> list[dict]:
        return self._dt().history()

    def vacuum(self, retention_hours: float | None = None) -> list[str]:
        """Delete files removed from the table, and orphans of failed jobs, older than the retention.

        delta-rs only deletes tombstoned files; a job that died before its commit leaves files no log entry ever
        named, so those are found by listing the folder (files of in-flight jobs are younger than the retention).
        """
        hours = self.store.vacuum_retention_hours if retention_hours is None else retention_hours
        removed = list(self._dt().vacuum(retention_hours=int(hours), dry_run=False,
                                         enforce_retention_duration=False))
        fs, base = _filesystem(self.path)
        from pyarrow import fs as pafs

        active = {urllib.parse.unquote(a["path"]) for a in self._active_files()}
        cutoff = time.time() - hours * 3600
        for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
            rel = info.path[len(base):].lstrip("/")
            if (info.type == pafs.FileType.File and rel.endswith(".parquet") and not rel.startswith("_delta_log")
                    and rel not in active and info.mtime.timestamp() <= cutoff):
                fs.delete_file(info.path)
                removed.append(rel)
        return removed

    def optimize(self) -> dict:
        """Compact small files (delta-rs runs this on the driver; on clusters delta-spark's OPTIMIZE is distributed)."""
        return self._dt().optimize.compact()


class DeltaSparkTable(Table):
    """delta-spark path: the JVM Delta Lake library does the writing and committing."""

    def _delta(self):
        from delta.tables import DeltaTable

        return DeltaTable.forPath(self.spark, self.path)

    def exists(self) -> bool:
        from delta.tables import DeltaTable

        return DeltaTable.isDeltaTable(self.spark, self.path)

    def create_if_missing(self) -> "DeltaSparkTable":
        from delta.tables import DeltaTable

        (DeltaTable.createIfNotExists(self.spark).location(self.path).addColumns(spark_schema(self.spec.schema))
         .partitionedBy(*self.spec.partition_by).comment(self.spec.comment).execute())
        return self

    def version(self) -> int:
        return int(self._delta().history(1).collect()[0]["version"])

    def read(self, version: int | None = None, with_file: bool = False):
        from pyspark.sql import functions as F

        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        df = reader.load(self.path)
        return df.withColumn(FILE_COLUMN, F.col("_metadata.file_path")) if with_file else df

    def append(self, df, *, evolve_schema: bool = False, operation: str = "WRITE") -> CommitResult:
        self._check_df(df, "append")
        self.create_if_missing()
        before = self.version()
        (df.write.format("delta").mode("append").option("mergeSchema", str(evolve_schema).lower())
         .save(self.path))
        after = self.version()
        return CommitResult(self.spec.name, after if after != before else None)

    def upsert(self, df, *, evolve_schema: bool = False) -> CommitResult:
        """MERGE with the delta-rs path's semantics: ``df`` is first given the table's columns (typed nulls for
        evolved ones it lacks, its extra columns dropped unless ``evolve_schema``), so UPDATE SET * replaces rows."""
        self._check_df(df, "upsert")
        self._check_unique_keys(df, "upsert")
        self.create_if_missing()
        target = self._delta()
        source = _with_columns_of(df, target.toDF().schema, keep_extra=evolve_schema)
        cond = " AND ".join(f"t.{k} = s.{k}" for k in self.spec.key)
        before = self.version()
        merge = target.alias("t").merge(source.alias("s"), cond)
        if evolve_schema:
            merge = merge.withSchemaEvolution()
        merge.whenMatchedUpdateAll().whenNotMatchedInsertAll().execute()
        after = self.version()
        return CommitResult(self.spec.name, after if after != before else None)

    def history(self) -> list[dict]:
        return [r.asDict(recursive=True) for r in self._delta().history().collect()]

    def vacuum(self, retention_hours: float | None = None) -> list[str]:
        hours = self.store.vacuum_retention_hours if retention_hours is None else retention_hours
        self._delta().vacuum(hours)
        return []

    def optimize(self) -> dict:
        rows = self._delta().optimize().executeCompaction().collect()
        return rows[0].asDict(recursive=True) if rows else {}


@dataclass
class TableStore:
    """All tables under one root, on one backend."""

    spark: Any
    root: str
    backend: str
    target_file_rows: int
    vacuum_retention_hours: float
    fault_fail_task: int | None = None
    _tables: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"tables.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "auto":
            self.backend = "delta-spark" if delta_spark_available(self.spark) else "delta-rs"
        if self.backend == "delta-spark" and not delta_spark_available(self.spark):
            raise TableError("tables.backend is delta-spark but the Delta Lake jars are not on Spark's classpath: "
                             "set spark.jars.packages=io.delta:delta-spark_2.13:<version> (see conf/cluster.yaml) "
                             "or use tables.backend: delta-rs")
        log.info("tables at %s via %s", self.root, self.backend)

    @classmethod
    def from_config(cls, spark, cfg: Config) -> "TableStore":
        t = cfg.settings.tables
        return cls(spark, cfg.table_root, t.backend, t.target_file_rows, t.vacuum_retention_hours, t.fault_fail_task)

    def table(self, spec: TableSpec) -> Table:
        if spec.name not in self._tables:
            kind = DeltaSparkTable if self.backend == "delta-spark" else DeltaRsTable
            self._tables[spec.name] = kind(self, spec)
        return self._tables[spec.name]

    def register_views(self, specs: Sequence[TableSpec]) -> list[str]:
        """Register every existing table as a temp view so ``spark.sql`` / ``cxatlas sql`` can query it by name."""
        names = []
        for spec in specs:
            table = self.table(spec)
            if table.exists():
                table.read().createOrReplaceTempView(spec.name)
                names.append(spec.name)
        return names


def delta_spark_available(spark) -> bool:
    """True when the JVM can load Delta Lake's classes (jars on the classpath)."""
    try:
        spark.sparkContext._jvm.java.lang.Class.forName("io.delta.tables.DeltaTable")
        return True
    except Exception:  # noqa: BLE001 - py4j raises its own error types; any failure means "not available"
        return False
