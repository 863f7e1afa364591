"""The one module that touches Delta tables: Delta Lake on Spark (delta-spark), registered in the Hive catalog.

Every table lives at ``<data_root>/<tables.dir>/<name>`` and is registered by name as ``<catalog.database>.<name>``
(a Hive metastore that survives restarts, see :mod:`cxatlas.core.metastore`), with its table and column comments.
All writing and committing is Delta's own: appends use Delta's writer, upserts are ``MERGE INTO`` (with schema
evolution when asked), ``optimize`` (Z-ORDER on the geobin columns of the annotation tables), ``vacuum``, history,
time travel and checkpoints are Delta's. The project writes no Delta log entry itself.

Concurrency: Delta's optimistic concurrency control decides. Writes of keyed rows go through ``MERGE`` (not blind
appends), so two jobs inserting the same keys conflict instead of duplicating them; a write that loses a commit race
is retried ``tables.conflict_retries`` times (re-reading the table, logged), then fails with a message naming the
conflict and what to do. A job killed mid-write leaves the table at its previous version: its files are never
committed, and ``vacuum`` removes them later.

Modelled on delta-io/delta ``python/delta/tables.py``: a facade per table, factories, argument checks at the boundary.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from cxatlas.core.config import Config, join_uri
from cxatlas.core.errors import UserError
from cxatlas.core.schemas import TableSpec, spark_schema

log = logging.getLogger(__name__)

# Delta's exceptions that mean "another writer committed first": retrying from a fresh read is correct.
CONFLICTS = ("ConcurrentAppendException", "ConcurrentDeleteReadException", "ConcurrentDeleteDeleteException",
             "ConcurrentTransactionException", "MetadataChangedException", "ProtocolChangedException",
             "ConcurrentWriteException", "DELTA_CONCURRENT_APPEND", "DELTA_CONCURRENT_DELETE_READ",
             "DELTA_CONCURRENT_TRANSACTION", "DELTA_METADATA_CHANGED", "DELTA_CONCURRENT_WRITE")
SAFE_RETENTION_HOURS = 168.0  # Delta's own default: below it Delta refuses to vacuum unless told it is intended
USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"  # tags our own commits in the table's history
CHANGE_FEED = "delta.enableChangeDataFeed"


class TableError(RuntimeError):
    """A table operation that cannot proceed; the message says which table and why."""


class ConcurrentCommitError(TableError, UserError):
    """Another writer kept winning the commit race; the message names the table and what to do."""


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
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_deleted: int = 0

    def describe(self) -> str:
        """One line for a job's summary: what this commit changed in its table."""
        if self.version is None:
            return f"  {self.table}: unchanged (nothing to commit)"
        return (f"  {self.table}: committed version {self.version} (+{self.files_added} files, "
                f"-{self.files_removed} files, {self.rows_written} rows written)")


# Every commit this process made, in order: when a command fails, the command line says what it committed (exit 1)
# and whether it touched no table at all (a refusal, exit 2). Read with :func:`commits_made`.
_JOURNAL: list[CommitResult] = []


def commits_made(since: int = 0) -> list[CommitResult]:
    """The commits this process made (those after the first ``since``), oldest first."""
    return list(_JOURNAL[since:])


def with_columns_of(df, struct, keep_extra: bool = False):
    """``df`` with the columns of the Spark ``struct``, in its order, typed nulls for the ones ``df`` lacks; then,
    if ``keep_extra``, ``df``'s other columns (they evolve the table's schema)."""
    from pyspark.sql import functions as F

    names = set(struct.fieldNames())
    return df.select(*[F.col(f"`{f.name}`") if f.name in df.columns else F.lit(None).cast(f.dataType).alias(f.name)
                       for f in struct],
                     *[F.col(f"`{c}`") for c in df.columns if keep_extra and c not in names])


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def is_conflict(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return any(name in text for name in CONFLICTS)


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Table:
    """One Delta table: its spec, its location and its name in the catalog."""

    def __init__(self, store: "TableStore", spec: TableSpec):
        self.store, self.spec = store, spec
        self.path = join_uri(store.root, spec.name)
        self.name = f"{store.database}.{spec.name}"

    @property
    def spark(self):
        return self.store.spark

    def __repr__(self) -> str:
        return f"Table({self.name!r}, path={self.path!r})"

    # -- existence, creation, catalog ---------------------------------------------------------------------------
    def exists(self) -> bool:
        from delta.tables import DeltaTable

        return bool(DeltaTable.isDeltaTable(self.spark, self.path))

    def create_if_missing(self) -> "Table":
        """Create the table at its location (partitioning, table and column comments) and register it in the
        catalog; an existing table at the location is only registered."""
        from delta.tables import DeltaTable

        self.store.ensure_database()
        if self.exists():
            self.register()
            return self
        if self.spark.catalog.tableExists(self.name):  # the name is another location's: refused, naming both (else
            self.register()                            # createIfNotExists would do nothing and say nothing)
        builder = DeltaTable.createIfNotExists(self.spark).tableName(self.name).location(self.path)
        builder = builder.addColumns(spark_schema(self.spec.schema))
        if self.spec.change_feed:
            builder = builder.property(CHANGE_FEED, "true")
        self._retry("create", lambda: builder.partitionedBy(*self.spec.partition_by).comment(self.spec.comment)
                    .execute())
        return self

    def register(self) -> None:
        """Register an existing Delta location under its name (a no-op when the catalog already has it there).
        A catalog entry of that name pointing elsewhere is refused: it would make queries read another data root."""
        if not self.spark.catalog.tableExists(self.name):
            try:
                self.spark.sql(f"CREATE TABLE IF NOT EXISTS {self.name} USING delta LOCATION {_sql_string(self.path)}")
                return
            except Exception as exc:  # another process registered it between the check and the create
                if "AlreadyExists" not in str(exc) and "ALREADY_EXISTS" not in str(exc):
                    raise
        location = self.spark.sql(f"DESCRIBE DETAIL {self.name}").collect()[0]["location"]
        if location.removeprefix("file:").rstrip("/") != self.path.removeprefix("file:").rstrip("/"):
            raise TableError(f"the catalog's {self.name} is the table at {location}, not {self.path}: another data "
                             f"root uses this metastore and database; set catalog.database for this one")

    def _delta(self):
        from delta.tables import DeltaTable

        return DeltaTable.forPath(self.spark, self.path)

    def version(self) -> int:
        return int(self._delta().history(1).collect()[0]["version"])

    # -- change data feed ----------------------------------------------------------------------------------------
    def change_feed_since(self) -> int | None:
        """The first version from which the change feed is complete (None: the feed is off).

        Tables written before the feed was switched on by cxatlas get it switched on here (one ALTER TABLE commit);
        their feed then starts at that commit.
        """
        if not self.spec.change_feed or not self.exists():
            return None
        for row in self._delta().history().orderBy("version").collect():
            params = row["operationParameters"] or {}
            if row["operation"] in ("CREATE TABLE", "CREATE OR REPLACE TABLE", "WRITE") and \
                    CHANGE_FEED in (params.get("properties") or ""):
                return int(row["version"])
            if row["operation"] == "SET TBLPROPERTIES" and CHANGE_FEED in (params.get("properties") or ""):
                return int(row["version"])
        self.spark.sql(f"ALTER TABLE delta.`{self.path}` SET TBLPROPERTIES ('{CHANGE_FEED}' = 'true')")
        return self.version()

    def changed_keys(self, after: int, upto: int, columns: Sequence[str]):
        """Distinct ``columns`` of the rows inserted, updated or deleted in versions ``(after, upto]``: what changed
        since a reader last saw version ``after`` (Delta's change data feed; before and after images alike)."""
        if upto <= after:
            return self.spark.createDataFrame([], self.read(upto).select(*columns).schema)
        return (self.spark.read.format("delta").option("readChangeFeed", "true")
                .option("startingVersion", after + 1).option("endingVersion", upto).load(self.path)
                .select(*columns).distinct())

    # -- reading ---------------------------------------------------------------------------------------------------
    def read(self, version: int | None = None):
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(self.path)

    def read_unique(self, version: int | None = None, examples: int = 5):
        """:meth:`read`, after checking that no key occurs twice (one aggregation over the key columns).

        Every job reads its keyed inputs through this: a table that somehow holds a key twice (a hand edit, a writer
        outside cxatlas) would otherwise be multiplied silently by every join downstream.
        Raises :class:`DuplicateKeyError` naming the table and a few keys.
        """
        df = self.read(version)
        key = list(self.spec.key)
        dup = self._duplicate_keys(df, examples)
        if dup:
            shown = "; ".join(", ".join(f"{k}={row[k]!r}" for k in key) + f" ({row['count']} rows)" for row in dup)
            raise DuplicateKeyError(
                f"table '{self.spec.name}' (at {self.path}) holds duplicate keys {key}, e.g. {shown}. Refusing to "
                f"read it: joins would multiply these rows. Restore a clean version (`cxatlas history "
                f"{self.spec.name}`, Delta time travel) or remove the extra rows, then rerun.")
        return df

    # -- writing ---------------------------------------------------------------------------------------------------
    def append(self, df, *, evolve_schema: bool = False) -> CommitResult:
        """Blind append with Delta's writer, for rows whose keys are new by construction (per-run result rows,
        a fresh table). Nothing to write: no commit."""
        self._check_df(df, "append")
        self.create_if_missing()
        if df.limit(1).count() == 0:
            return CommitResult(self.spec.name, None)
        writer = (df.write.format("delta").mode("append").option("mergeSchema", str(evolve_schema).lower())
                  .option("maxRecordsPerFile", self.store.target_file_rows))
        return self._commit("append", lambda: writer.save(self.path))

    def insert_new(self, df, *, evolve_schema: bool = False) -> CommitResult:
        """Insert the rows whose key the table does not hold yet (``MERGE ... WHEN NOT MATCHED INSERT``).

        Unlike a blind append, a MERGE reads the table: if another job commits rows in between, Delta raises a
        conflict instead of letting both commit the same keys; the retry then sees those rows and skips them.
        """
        self._check_df(df, "insert")
        self._check_unique_keys(df, "insert")
        self.create_if_missing()
        key = list(self.spec.key)
        fresh = df.join(self.read().select(*key), key, "left_anti")
        if fresh.limit(1).count() == 0:  # nothing new: no commit at all, so a rerun leaves every version unchanged
            return CommitResult(self.spec.name, None)
        return self._merge(fresh, evolve_schema, update=False)

    def upsert(self, df, *, evolve_schema: bool = False, update_when: str | None = None) -> CommitResult:
        """``MERGE``: rows whose key exists are replaced whole (``UPDATE SET *``), the others inserted. ``df`` is
        first given the table's columns (typed nulls for evolved ones it lacks; its extra columns dropped unless
        ``evolve_schema``, which adds them to the table). ``update_when`` (SQL over ``t`` = target, ``s`` = source)
        limits which matched rows are replaced, e.g. only by a later upload."""
        self._check_df(df, "upsert")
        self._check_unique_keys(df, "upsert")
        self.create_if_missing()
        return self._merge(df, evolve_schema, update=True, update_when=update_when)

    def delete(self, condition: str) -> CommitResult:
        """Delete the rows matching a SQL condition (a Delta deletion: time travel still shows them)."""
        self.create_if_missing()
        return self._commit("delete", lambda: self._delta().delete(condition))

    def replace_where(self, df, condition: str, *, evolve_schema: bool = False) -> CommitResult:
        """Replace the rows matching a SQL ``condition`` by ``df`` in ONE commit (Delta's ``replaceWhere``): readers
        see the old rows or the new ones, never a mix, and a writer killed before the commit changed nothing.
        Nothing to write and nothing matching: no commit."""
        self._check_df(df, "replace")
        self.create_if_missing()
        if df.limit(1).count() == 0 and self.read().filter(condition).limit(1).count() == 0:
            return CommitResult(self.spec.name, None)
        writer = (df.write.format("delta").mode("overwrite").option("replaceWhere", condition)
                  .option("mergeSchema", str(evolve_schema).lower())
                  .option("maxRecordsPerFile", self.store.target_file_rows))
        return self._commit("replace", lambda: writer.save(self.path))

    def delete_matching(self, keys_df, on: Sequence[str]) -> CommitResult:
        """Delete the rows whose ``on`` columns match a row of ``keys_df`` (``MERGE ... WHEN MATCHED DELETE``): a
        Delta deletion, so time travel still shows them. Nothing matched: no commit."""
        self.create_if_missing()
        keys = keys_df.select(*on).distinct()
        if keys.join(self.read().select(*on), list(on), "left_semi").limit(1).count() == 0:
            return CommitResult(self.spec.name, None)

        def run() -> None:
            cond = " AND ".join(f"t.`{k}` = s.`{k}`" for k in on)
            self._delta().alias("t").merge(keys.alias("s"), cond).whenMatchedDelete().execute()

        return self._commit("delete", run)

    def _merge(self, df, evolve_schema: bool, update: bool, update_when: str | None = None) -> CommitResult:
        def run() -> None:
            target = self._delta()
            source = with_columns_of(df, target.toDF().schema, keep_extra=evolve_schema)
            cond = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in self.spec.key)
            merge = target.alias("t").merge(source.alias("s"), cond)
            if evolve_schema:
                merge = merge.withSchemaEvolution()
            if update:
                merge = merge.whenMatchedUpdateAll(condition=update_when)
            merge.whenNotMatchedInsertAll().execute()

        return self._commit("upsert" if update else "insert", run)

    def _commit(self, op: str, action: Callable[[], Any]) -> CommitResult:
        """Run a write (retrying lost commit races) with a unique tag in its commit info, then report what OUR
        commit changed, read from the table's history (other writers' commits in between are not counted)."""
        tag = f"cxatlas-{op}-{uuid.uuid4().hex}"
        before = self.version()
        self.spark.conf.set(USER_METADATA, tag)
        try:
            self._retry(op, action)
        finally:
            self.spark.conf.unset(USER_METADATA)
        ours = [row for row in self._delta().history(max(self.version() - before, 1)).collect()
                if row["userMetadata"] == tag]
        if not ours:
            return CommitResult(self.spec.name, None)
        m = {k: _int(v) for k, v in (ours[0]["operationMetrics"] or {}).items()}
        inserted, updated = m.get("numTargetRowsInserted", 0), m.get("numTargetRowsUpdated", 0)
        merged = "numTargetRowsInserted" in m
        _JOURNAL.append(CommitResult(self.spec.name, int(ours[0]["version"])))
        return CommitResult(
            self.spec.name, int(ours[0]["version"]),
            files_added=m.get("numTargetFilesAdded", 0) + m.get("numFiles", 0) + m.get("numAddedFiles", 0),
            files_removed=m.get("numTargetFilesRemoved", 0) + m.get("numRemovedFiles", 0),
            rows_deleted=m.get("numTargetRowsDeleted", 0) + m.get("numDeletedRows", 0),
            rows_written=inserted + updated if merged else m.get("numOutputRows", 0),
            rows_inserted=inserted if merged else m.get("numOutputRows", 0), rows_updated=updated)

    def _retry(self, op: str, action: Callable[[], Any]) -> Any:
        attempts = self.store.conflict_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return action()
            except Exception as exc:  # noqa: BLE001 - only Delta's commit conflicts are retried
                if not is_conflict(exc):
                    raise
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if attempt == attempts:
                    raise ConcurrentCommitError(
                        f"{op} into '{self.spec.name}' lost the commit race to another writer {attempts} times "
                        f"({first[:300]}). Nothing of this {op} was committed; rerun the job when the other writer "
                        f"has finished, or raise tables.conflict_retries.") from exc
                wait = 0.5 * attempt
                log.warning("%s into %s conflicted with a concurrent commit (attempt %d of %d: %s); retrying in "
                            "%.1fs", op, self.spec.name, attempt, attempts, first[:200], wait)
                time.sleep(wait)
        return None

    # -- maintenance -----------------------------------------------------------------------------------------------
    def history(self) -> list[dict]:
        return [r.asDict(recursive=True) for r in self._delta().history().collect()]

    def vacuum(self, retention_hours: float | None = None) -> list[str]:
        """Delete data files no longer referenced by versions younger than the retention; returns their paths.

        A retention below Delta's safe default (168 h) shortens how far back time travel and slow readers can go;
        it is allowed because the user asked for it (``--retention-hours``), not silently.
        """
        hours = self.store.vacuum_retention_hours if retention_hours is None else float(retention_hours)
        check = "spark.databricks.delta.retentionDurationCheck.enabled"
        previous = self.spark.conf.get(check, "true")
        if hours < SAFE_RETENTION_HOURS:
            self.spark.conf.set(check, "false")
        try:
            listed = self.spark.sql(f"VACUUM delta.`{self.path}` RETAIN {hours} HOURS DRY RUN").collect()
            removed = [row[0] for row in listed]
            if removed:
                self.spark.sql(f"VACUUM delta.`{self.path}` RETAIN {hours} HOURS")
        finally:
            self.spark.conf.set(check, previous)
        return removed

    def optimize(self) -> dict:
        """Compact small files; Z-order by the spec's ``zorder_by`` columns (the geobins of the annotation tables)."""
        opt = self._delta().optimize()
        result = opt.executeZOrderBy(*self.spec.zorder_by) if self.spec.zorder_by else opt.executeCompaction()
        rows = result.collect()
        metrics = rows[0].asDict(recursive=True).get("metrics", {}) if rows else {}
        return {"zorder_by": list(self.spec.zorder_by), **{k: metrics.get(k) for k in
                                                             ("numFilesAdded", "numFilesRemoved")}}

    # -- checks ----------------------------------------------------------------------------------------------------
    def _check_df(self, df, op: str) -> None:
        from pyspark.sql import DataFrame

        if not isinstance(df, DataFrame):
            raise TypeError(f"Type of 'df' in {op} must be DataFrame, got {type(df).__name__}.")
        missing = [c for c in self.spec.schema.names if c not in df.columns]
        if missing:
            raise TableError(f"{op} into '{self.spec.name}': the DataFrame lacks column(s) {missing}")

    def _duplicate_keys(self, df, limit: int) -> list:
        """Up to ``limit`` keys of the spec that occur more than once in ``df``, with their ``count``."""
        from pyspark.sql import functions as F

        return df.groupBy(*self.spec.key).count().filter(F.col("count") > 1).limit(limit).collect()

    def _check_unique_keys(self, df, op: str) -> None:
        dup = self._duplicate_keys(df, 1)
        if dup:
            raise TableError(f"{op} into '{self.spec.name}': key {list(self.spec.key)} is not unique in the input, "
                             f"e.g. {dup[0].asDict()}")


@dataclass
class TableStore:
    """All tables under one root, registered in one catalog database."""

    spark: Any
    root: str
    database: str
    target_file_rows: int
    vacuum_retention_hours: float
    conflict_retries: int
    _tables: dict = field(default_factory=dict, repr=False)
    _database_ready: bool = field(default=False, repr=False)

    @classmethod
    def from_config(cls, spark, cfg: Config) -> "TableStore":
        t = cfg.settings.tables
        return cls(spark, cfg.table_root, cfg.settings.catalog.database, t.target_file_rows,
                   t.vacuum_retention_hours, t.conflict_retries)

    def table(self, spec: TableSpec) -> Table:
        if spec.name not in self._tables:
            self._tables[spec.name] = Table(self, spec)
        return self._tables[spec.name]

    def ensure_database(self) -> None:
        if not self._database_ready:
            self.spark.sql(f"CREATE DATABASE IF NOT EXISTS {self.database} COMMENT "
                           f"{_sql_string('cxatlas: uploads, annotations and the statistics of Cowen et al. 2021')}")
            self._database_ready = True

    def register_all(self, specs: Sequence[TableSpec]) -> list[str]:
        """Register every existing table in the catalog (tables written before the catalog existed, or moved);
        then ``USE`` the database so bare names resolve too. Returns the registered names."""
        self.ensure_database()
        names = []
        for spec in specs:
            table = self.table(spec)
            if table.exists():
                table.register()
                names.append(table.name)
        self.spark.catalog.setCurrentDatabase(self.database)
        return names
