"""One Delta table: its location and catalog name, reading, and writing through Delta's own writer and MERGE."""
from __future__ import annotations

from typing import Sequence

from cxatlas.core.config import join_uri
from cxatlas.core.schemas import TableSpec, spark_schema
from cxatlas.warehouse.tables.change_feed import CHANGE_FEED, ChangeFeedMixin
from cxatlas.warehouse.tables.checks import ChecksMixin
from cxatlas.warehouse.tables.commit import CommitMixin, CommitResult
from cxatlas.warehouse.tables.errors import TableError
from cxatlas.warehouse.tables.maintenance import MaintenanceMixin


def with_columns_of(df, struct, keep_extra: bool = False):
    """``df`` with the columns of the Spark ``struct``, in its order, typed nulls for the ones ``df`` lacks; then,
    if ``keep_extra``, ``df``'s other columns (they evolve the table's schema)."""
    from pyspark.sql import functions as F

    names = set(struct.fieldNames())
    return df.select(*[F.col(f"`{f.name}`") if f.name in df.columns else F.lit(None).cast(f.dataType).alias(f.name)
                       for f in struct],
                     *[F.col(f"`{c}`") for c in df.columns if keep_extra and c not in names])


def sql_string(text: str) -> str:
    """``text`` as a Spark SQL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


#: (Spark application, catalog name, location) of the tables this process has created or found registered at their
#: location. Issue #25: a result write used to pay four catalog round trips (database, name, DESCRIBE DETAIL) per
#: table per run; the catalog entry of a location does not move while a session lives, so it is checked once.
_REGISTERED: set[tuple[str, str, str]] = set()


class Table(CommitMixin, ChecksMixin, ChangeFeedMixin, MaintenanceMixin):
    """One Delta table: its spec, its location and its name in the catalog.

    Its concerns live in one module each: committing (:mod:`.commit`), checks (:mod:`.checks`), the change feed
    (:mod:`.change_feed`) and maintenance (:mod:`.maintenance`); this class adds existence, the catalog, reading
    and writing.
    """

    def __init__(self, store, spec: TableSpec):
        """``store``: the :class:`~cxatlas.warehouse.tables.store.TableStore` the table belongs to."""
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

        ready = (self.spark.sparkContext.applicationId, self.name, self.path)
        if ready in _REGISTERED and self.exists():  # checked once per session: no catalog round trip per write
            return self
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
        _REGISTERED.add(ready)
        return self

    def register(self) -> None:
        """Register an existing Delta location under its name (a no-op when the catalog already has it there).
        A catalog entry of that name pointing elsewhere is refused: it would make queries read another data root."""
        ready = (self.spark.sparkContext.applicationId, self.name, self.path)
        if ready in _REGISTERED:
            return
        if not self.spark.catalog.tableExists(self.name):
            try:
                self.spark.sql(f"CREATE TABLE IF NOT EXISTS {self.name} USING delta LOCATION {sql_string(self.path)}")
                _REGISTERED.add(ready)
                return
            except Exception as exc:  # another process registered it between the check and the create
                if "AlreadyExists" not in str(exc) and "ALREADY_EXISTS" not in str(exc):
                    raise
        location = self._catalog_location()
        if location.removeprefix("file:").rstrip("/") != self.path.removeprefix("file:").rstrip("/"):
            raise TableError(f"the catalog's {self.name} is the table at {location}, not {self.path}: another data "
                             f"root uses this metastore and database; set catalog.database for this one")
        _REGISTERED.add(ready)

    def _catalog_location(self) -> str:
        """Where the catalog's entry of this name points. ``DESCRIBE TABLE EXTENDED`` reads the metastore and the
        table's schema; ``DESCRIBE DETAIL`` would rebuild the whole snapshot to count files (0.7-1 s a table, 13 s
        for the 14 tables of a data root when a session registers them)."""
        rows = self.spark.sql(f"DESCRIBE TABLE EXTENDED {self.name}").collect()
        return next(r["data_type"] for r in rows if r["col_name"] == "Location")

    def _delta(self):
        from delta.tables import DeltaTable

        return DeltaTable.forPath(self.spark, self.path)

    def version(self) -> int:
        return self.latest_commit()[0]

    def latest_commit(self) -> tuple[int, str | None]:
        """(version, userMetadata) of the table's latest commit, in one history read: whether the latest commit is a
        given commit of ours (:attr:`CommitResult.tag`), which a version number alone cannot tell (a table deleted
        and written again at the same path reaches the same numbers)."""
        row = self._delta().history(1).collect()[0]
        return int(row["version"]), row["userMetadata"]

    # -- reading ---------------------------------------------------------------------------------------------------
    def read(self, version: int | None = None):
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(self.path)

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
        return self._commit("append", lambda tag: writer.option("userMetadata", tag).save(self.path),
                            session_tag=False)

    def insert_new(self, df, *, evolve_schema: bool = False, keys_unique: bool = False) -> CommitResult:
        """Insert the rows whose key the table does not hold yet (``MERGE ... WHEN NOT MATCHED INSERT``).

        Unlike a blind append, a MERGE reads the table: if another job commits rows in between, Delta raises a
        conflict instead of letting both commit the same keys; the retry then sees those rows and skips them.
        ``keys_unique``: the caller built ``df`` with one row per key (one row; rows deduplicated on the key) and
        says so, which spares the check's Spark job, as for :meth:`upsert`.
        """
        self._check_df(df, "insert")
        if not keys_unique:
            self._check_unique_keys(df, "insert")
        self.create_if_missing()
        key = list(self.spec.key)
        fresh = df.join(self.read().select(*key), key, "left_anti")
        if fresh.limit(1).count() == 0:  # nothing new: no commit at all, so a rerun leaves every version unchanged
            return CommitResult(self.spec.name, None)
        return self._merge(fresh, evolve_schema, update=False)

    def upsert(self, df, *, evolve_schema: bool = False, update_when: str | None = None,
               keys_unique: bool = False) -> CommitResult:
        """``MERGE``: rows whose key exists are replaced whole (``UPDATE SET *``), the others inserted. ``df`` is
        first given the table's columns (typed nulls for evolved ones it lacks; its extra columns dropped unless
        ``evolve_schema``, which adds them to the table). ``update_when`` (SQL over ``t`` = target, ``s`` = source)
        limits which matched rows are replaced, e.g. only by a later upload. ``keys_unique``: the caller built
        ``df`` with one row per key (ingest: the first row of a window per key) and says so, which spares the check's
        Spark job (a group-by over every input row); readers still refuse a table holding a key twice
        (:meth:`read_unique`)."""
        self._check_df(df, "upsert")
        if not keys_unique:
            self._check_unique_keys(df, "upsert")
        self.create_if_missing()
        return self._merge(df, evolve_schema, update=True, update_when=update_when)

    def delete(self, condition: str) -> CommitResult:
        """Delete the rows matching a SQL condition (a Delta deletion: time travel still shows them)."""
        self.create_if_missing()
        return self._commit("delete", lambda tag: self._delta().delete(condition), session_tag=True)

    def replace_where(self, df, condition: str, *, evolve_schema: bool = False,
                      n_rows: int | None = None) -> CommitResult:
        """Replace the rows matching a SQL ``condition`` by ``df`` in ONE commit (Delta's ``replaceWhere``): readers
        see the old rows or the new ones, never a mix, and a writer killed before the commit changed nothing.
        Nothing to write and nothing matching: no commit. ``n_rows``: ``df``'s row count when the caller knows it
        (rows built on the driver), which spares a Spark job that counts them."""
        self._check_df(df, "replace")
        self.create_if_missing()
        empty = df.limit(1).count() == 0 if n_rows is None else n_rows == 0
        if empty and self.read().filter(condition).limit(1).count() == 0:
            return CommitResult(self.spec.name, None)
        writer = (df.write.format("delta").mode("overwrite").option("replaceWhere", condition)
                  .option("mergeSchema", str(evolve_schema).lower())
                  .option("maxRecordsPerFile", self.store.target_file_rows))
        return self._commit("replace", lambda tag: writer.option("userMetadata", tag).save(self.path),
                            session_tag=False)

    def delete_matching(self, keys_df, on: Sequence[str]) -> CommitResult:
        """Delete the rows whose ``on`` columns match a row of ``keys_df`` (``MERGE ... WHEN MATCHED DELETE``): a
        Delta deletion, so time travel still shows them. Nothing matched: no commit."""
        self.create_if_missing()
        keys = keys_df.select(*on).distinct()
        if keys.join(self.read().select(*on), list(on), "left_semi").limit(1).count() == 0:
            return CommitResult(self.spec.name, None)

        def run(tag: str) -> None:
            cond = " AND ".join(f"t.`{k}` = s.`{k}`" for k in on)
            self._delta().alias("t").merge(keys.alias("s"), cond).whenMatchedDelete().execute()

        return self._commit("delete", run, session_tag=True)

    def _merge(self, df, evolve_schema: bool, update: bool, update_when: str | None = None) -> CommitResult:
        def run(tag: str) -> None:
            target = self._delta()
            source = with_columns_of(df, target.toDF().schema, keep_extra=evolve_schema)
            cond = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in self.spec.key)
            merge = target.alias("t").merge(source.alias("s"), cond)
            if evolve_schema:
                merge = merge.withSchemaEvolution()
            if update:
                merge = merge.whenMatchedUpdateAll(condition=update_when)
            merge.whenNotMatchedInsertAll().execute()

        return self._commit("upsert" if update else "insert", run, session_tag=True)
