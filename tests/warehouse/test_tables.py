"""Tables on real Spark and real Delta Lake (delta-spark): schema evolution survives later upserts; an independent
reader (delta-rs) sees the same."""
from __future__ import annotations

import dataclasses
import logging

import deltalake
import pyarrow as pa
import pytest

from cxatlas.core.schemas import TableSpec
from tests.conftest import make_config

SCORES = TableSpec(
    name="scores",
    schema=pa.schema([pa.field("video_id", pa.string(), False), pa.field("region", pa.string()),
                      pa.field("score_a", pa.float32())]),
    partition_by=("region",),
    key=("video_id",),
    comment="a small keyed table for these tests",
)


def rows(table) -> dict[str, dict]:
    return {r["video_id"]: r for r in table.read().toPandas().to_dict("records")}


def test_upsert_keeps_columns_added_by_schema_evolution(spark, store):
    table = store.table(SCORES)
    table.append(spark.createDataFrame([("v1", "brazil", 0.1, 1.5), ("v2", "africa", 0.2, 2.5)],
                                       "video_id string, region string, score_a float, score_b double"),
                 evolve_schema=True)
    assert table.read().columns == ["video_id", "region", "score_a", "score_b"]

    # An upsert that carries only the spec's columns: the evolved column stays in the table, the untouched row keeps
    # its value, the replaced and the new rows hold null there (an upsert replaces whole rows).
    result = table.upsert(spark.createDataFrame([("v1", "brazil", 0.9), ("v3", "africa", 0.3)],
                                                "video_id string, region string, score_a float"))
    assert result.version == table.version()
    got = rows(table)
    assert sorted(got) == ["v1", "v2", "v3"]
    assert got["v1"]["score_a"] == pytest.approx(0.9) and got["v1"]["score_b"] != got["v1"]["score_b"]  # NaN = null
    assert got["v2"]["score_b"] == 2.5
    assert got["v3"]["score_b"] != got["v3"]["score_b"]

    # An upsert that carries the evolved column sets it.
    table.upsert(spark.createDataFrame([("v3", "africa", 0.4, 3.5)],
                                       "video_id string, region string, score_a float, score_b double"))
    got = rows(table)
    assert got["v3"]["score_b"] == 3.5 and got["v2"]["score_b"] == 2.5 and len(got) == 3
    # An independent reader sees the same schema and rows.
    dt = deltalake.DeltaTable(table.path)
    assert dt.schema().to_pyarrow().names == ["video_id", "region", "score_a", "score_b"]
    assert dt.to_pyarrow_table().num_rows == 3


def test_upsert_with_new_columns_evolves_only_when_asked(spark, store):
    table = store.table(SCORES)
    table.append(spark.createDataFrame([("v1", "brazil", 0.1)], "video_id string, region string, score_a float"))
    wider = spark.createDataFrame([("v2", "brazil", 0.2, 7)], "video_id string, region string, score_a float, n int")
    table.upsert(wider)
    assert table.read().columns == ["video_id", "region", "score_a"]  # extra columns ignored by default
    table.upsert(wider, evolve_schema=True)
    assert table.read().columns == ["video_id", "region", "score_a", "n"]
    got = rows(table)
    assert got["v2"]["n"] == 7 and got["v1"]["n"] != got["v1"]["n"] and got["v1"]["score_a"] == pytest.approx(0.1)


GEO = TableSpec(
    name="geo_scores",
    schema=pa.schema([pa.field("video_id", pa.string(), False), pa.field("region", pa.string()),
                      pa.field("lat_bin", pa.int32()), pa.field("lon_bin", pa.int32()), pa.field("s", pa.float32())]),
    partition_by=("region",),
    key=("video_id",),
    comment="keyed rows with geobins",
    zorder_by=("lat_bin", "lon_bin"),
)


def test_optimize_z_orders_by_geobins_and_vacuum_reports_what_it_removed(spark, store):
    table = store.table(GEO)
    for i in range(3):  # three commits, three small files
        table.insert_new(spark.createDataFrame([(f"v{i}", "africa", i, -i, 0.5)],
                                               "video_id string, region string, lat_bin int, lon_bin int, s float"))
    result = table.optimize()
    assert result["zorder_by"] == ["lat_bin", "lon_bin"] and result["numFilesRemoved"] == 3
    ops = [h["operation"] for h in table.history()]
    assert ops[0] == "OPTIMIZE" and ops.count("MERGE") == 3
    params = table.history()[0]["operationParameters"]
    assert "lat_bin" in params["zOrderBy"] and "lon_bin" in params["zOrderBy"]
    removed = table.vacuum(retention_hours=0)
    assert len(removed) == 3 and all(p.endswith(".parquet") for p in removed)  # the files OPTIMIZE replaced
    assert table.vacuum(retention_hours=0) == []
    assert sorted(r.video_id for r in table.read().collect()) == ["v0", "v1", "v2"]
    assert deltalake.DeltaTable(table.path).to_pandas().shape[0] == 3  # an independent reader agrees


# What Delta itself sets in the session on every write (the version it last committed, its Parquet field ids): Delta's
# bookkeeping, set by a plain delta-spark write too, not a setting of cxatlas's to restore.
DELTAS_OWN = {"spark.databricks.delta.lastCommitVersionInSession", "spark.sql.parquet.fieldId.read.enabled",
              "spark.sql.parquet.fieldId.write.enabled"}


def session_conf(spark) -> dict[str, str]:
    """The settings made in the session (``spark.conf.getAll``: set ones only), less Delta's own bookkeeping."""
    return {k: v for k, v in spark.conf.getAll.items() if k not in DELTAS_OWN}


def test_commits_are_tagged_in_history_and_the_session_conf_is_left_as_found(spark, store):
    """Every commit carries its own tag in Delta's history (``userMetadata``: the writer's option for an append or a
    replace, the session setting around one MERGE or DELETE), and no write leaves a setting in the session: not the
    tag, not a user's own tag replaced, not vacuum's retention check."""
    from cxatlas.warehouse.tables import USER_METADATA

    table = store.table(SCORES)
    schema = "video_id string, region string, score_a float"
    before = session_conf(spark)
    assert USER_METADATA not in before
    results = {
        "append": table.append(spark.createDataFrame([("v1", "brazil", 0.1), ("v2", "africa", 0.2)], schema)),
        "upsert": table.upsert(spark.createDataFrame([("v1", "brazil", 0.5), ("v3", "africa", 0.3)], schema)),
        "insert": table.insert_new(spark.createDataFrame([("v4", "africa", 0.4)], schema)),
        "replace": table.replace_where(spark.createDataFrame([("v1", "brazil", 0.7)], schema), "region = 'brazil'"),
        "delete": table.delete("video_id = 'v2'"),
    }
    matching = table.delete_matching(spark.createDataFrame([("v3",)], "video_id string"), ["video_id"])
    table.vacuum(retention_hours=0)  # below Delta's safe retention: its check is off for this vacuum only
    assert session_conf(spark) == before

    history = {row["version"]: row for row in table.history()}
    for op, result in [*results.items(), ("delete", matching)]:
        assert result.version is not None, op
        assert history[result.version]["userMetadata"].startswith(f"cxatlas-{op}-"), (op, history[result.version])
    tags = [history[r.version]["userMetadata"] for r in [*results.values(), matching]]
    assert len(set(tags)) == len(tags)
    assert results["upsert"].rows_inserted == 1 and results["upsert"].rows_updated == 1
    assert matching.rows_deleted == 1 and sorted(rows(table)) == ["v1", "v4"]

    # A tag the user set in the session is theirs: our MERGE tags its own commit and then puts theirs back; a
    # writer's own option wins over it.
    spark.conf.set(USER_METADATA, "the user's tag")
    try:
        merged = table.upsert(spark.createDataFrame([("v4", "africa", 0.9)], schema))
        appended = table.append(spark.createDataFrame([("v5", "africa", 0.1)], schema))
        assert spark.conf.get(USER_METADATA) == "the user's tag"
    finally:
        spark.conf.unset(USER_METADATA)
    history = {row["version"]: row for row in table.history()}
    assert history[merged.version]["userMetadata"].startswith("cxatlas-upsert-")
    assert history[appended.version]["userMetadata"].startswith("cxatlas-append-")


def test_a_merge_that_loses_a_real_commit_race_is_retried_and_commits(spark, store, tmp_path, caplog):
    """A real race: while our MERGE computes its source, another writer (delta-rs, from inside the Spark task)
    commits to the same partition. Delta refuses our commit (its ConcurrentAppendException, which must arrive as
    delta-spark's class even in a process that has caught none before); the retry reads afresh and commits once."""
    table = store.table(SCORES)
    schema = "video_id string, region string, score_a float"
    table.append(spark.createDataFrame([("v0", "africa", 0.0)], schema))
    raced, path = str(tmp_path / "raced"), table.path

    def race(batches):
        import os

        import pyarrow as pa
        from deltalake import write_deltalake

        for batch in batches:
            if not os.path.exists(raced):  # the first evaluation only: the retry finds the table quiet
                open(raced, "w").close()
                write_deltalake(path, pa.table({"video_id": ["w1"], "region": ["africa"], "score_a": [1.0]},
                                                schema=pa.schema([pa.field("video_id", pa.string(), False),
                                                                  ("region", pa.string()), ("score_a", pa.float32())])),
                                mode="append")
            yield batch

    source = spark.createDataFrame([("v1", "africa", 0.5)], schema).mapInPandas(race, schema)
    before = table.version()
    with caplog.at_level(logging.WARNING, logger="cxatlas.warehouse.tables.commit"):
        result = table._merge(source, evolve_schema=False, update=True)  # the MERGE itself (nothing reads source)
    lost = [r.getMessage() for r in caplog.records if "conflicted with a concurrent commit" in r.getMessage()]
    assert len(lost) == 1 and "attempt 1 of 4" in lost[0] and "ConcurrentAppendException" in lost[0], lost
    assert result.version == before + 2 and result.rows_inserted == 1  # the other writer's commit, then ours
    assert sorted(rows(table)) == ["v0", "v1", "w1"]
    ours = [h for h in table.history() if (h["userMetadata"] or "").startswith("cxatlas-upsert-")]
    assert [h["version"] for h in ours] == [result.version]


def test_a_lost_commit_race_is_told_by_deltas_exception_class_and_retried(spark, store):
    """A commit conflict is one of delta-spark's exception classes (converted from the JVM's by delta-spark itself),
    not a message that happens to name one; it is retried, and after ``tables.conflict_retries`` it fails naming
    the table and what to do."""
    from delta.exceptions import ConcurrentAppendException
    from pyspark.errors.exceptions import captured

    from cxatlas.warehouse.tables import ConcurrentCommitError, conflicts, is_conflict

    conflicts()  # installs delta-spark's conversion of its JVM exceptions
    jvm_conflict = spark.sparkContext._jvm.io.delta.exceptions.ConcurrentAppendException(
        "Files were added to the root of the table by a concurrent update. Please try the operation again.")
    conflict = captured.convert_exception(jvm_conflict)  # what pyspark does with every JVM exception
    assert isinstance(conflict, ConcurrentAppendException) and is_conflict(conflict)
    assert not is_conflict(RuntimeError("ConcurrentAppendException: DELTA_CONCURRENT_APPEND"))

    table = store.table(SCORES)
    calls = []

    def loses_once():
        calls.append(1)
        if len(calls) == 1:
            raise conflict
        return "committed"

    assert table._retry("append", loses_once) == "committed" and len(calls) == 2

    def always_loses():
        raise conflict

    with pytest.raises(ConcurrentCommitError, match=r"append into 'scores' lost the commit race .* "
                                                    r"tables.conflict_retries") as lost:
        table._retry("append", always_loses)
    assert lost.value.__cause__ is conflict
    with pytest.raises(ValueError):  # anything else is not retried
        table._retry("append", lambda: (_ for _ in ()).throw(ValueError("not a conflict")))


def test_a_duplicate_key_written_outside_cxatlas_is_refused_at_every_new_version(spark, store):
    """``read_unique`` checks each table version once per process: a version found unique is not aggregated again,
    but a duplicate that any later commit brings in (here Delta's own writer, outside cxatlas) is refused, and so
    is one in a table deleted and created again at the same path (its versions start again at 0)."""
    import shutil

    from cxatlas.warehouse.tables import DuplicateKeyError
    from cxatlas.warehouse.tables.checks import _UNIQUE_VERSIONS

    table = store.table(SCORES)
    schema = "video_id string, region string, score_a float"
    table.upsert(spark.createDataFrame([("v1", "brazil", 0.1), ("v2", "africa", 0.2)], schema))
    clean = table.version()
    assert table.read_unique().count() == 2
    assert any(clean in versions for versions in _UNIQUE_VERSIONS.values())
    assert table.read_unique(clean).count() == 2  # the same version again: known unique

    spark.createDataFrame([("v1", "brazil", 0.5)], schema).write.format("delta").mode("append").save(table.path)
    with pytest.raises(DuplicateKeyError, match=r"'scores'.*video_id='v1' \(2 rows\)"):
        table.read_unique()
    with pytest.raises(DuplicateKeyError):
        table.read_unique()  # refused again: a refusal is never remembered as a pass
    assert table.read_unique(clean).count() == 2  # time travel to the clean version still reads

    # The same path, a new table whose version `clean` (known unique for the old table) holds a duplicate: the new
    # table's id means it is checked.
    shutil.rmtree(table.path)
    for batch in ([("v7", "brazil", 0.1)], [("v7", "africa", 0.3)]):
        spark.createDataFrame(batch, schema).write.format("delta").mode("append").save(table.path)
    assert table.version() == clean == 1
    with pytest.raises(DuplicateKeyError, match="v7"):
        table.read_unique(clean)


def test_a_later_version_is_checked_on_the_keys_changed_since_and_still_refuses_a_duplicate(spark, tmp_path, caplog):
    """With a change feed, a version after one found unique is checked on the keys its commits changed only (issue
    #25: the check follows the change), against the whole table: a row appended outside cxatlas whose key an
    UNCHANGED row already holds is refused (checking the changed rows among themselves would pass it). A feed that
    does not cover the versions means the whole table is checked, and a duplicate is refused just the same."""
    from cxatlas.warehouse.tables import DuplicateKeyError, TableStore

    caplog.set_level(logging.DEBUG, logger="cxatlas.warehouse.tables.checks")
    small = TableStore.from_config(spark, make_config(tmp_path / "small"))  # these tables: whole-table checks
    store = TableStore.from_config(spark, make_config(tmp_path / "data", "tables.changed_keys_check_min_bytes=0"))
    table = store.table(dataclasses.replace(SCORES, name="fed_scores", change_feed=True))
    schema = "video_id string, region string, score_a float"
    table.upsert(spark.createDataFrame([("v1", "brazil", 0.1), ("v2", "africa", 0.2)], schema))
    assert table.read_unique().count() == 2  # the whole table (no earlier version known)
    assert "keys changed since" not in caplog.text
    # A MERGE by another writer (Delta's own API, not this process's Table: its commits are not known unique).
    from delta.tables import DeltaTable

    (DeltaTable.forPath(spark, table.path).alias("t")
     .merge(spark.createDataFrame([("v2", "africa", 0.4), ("v3", "brazil", 0.3)], schema).alias("s"),
            "t.video_id = s.video_id").whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())
    assert table.read_unique().count() == 3
    assert f"version {table.version()} checked for duplicates among the 2 keys changed since" in caplog.text
    caplog.clear()
    same = small.table(dataclasses.replace(SCORES, name="small_scores", change_feed=True))
    for n_rows, row in enumerate([("v1", "brazil", 0.1), ("v2", "africa", 0.2)], start=1):
        same.upsert(spark.createDataFrame([row], schema))
        assert same.read_unique().count() == n_rows
    assert "keys changed since" not in caplog.text  # below tables.changed_keys_check_min_bytes

    caplog.clear()
    spark.createDataFrame([("v1", "brazil", 0.5)], schema).write.format("delta").mode("append").save(table.path)
    with pytest.raises(DuplicateKeyError, match=r"'fed_scores'.*video_id='v1' \(2 rows\)"):
        table.read_unique()
    assert "among the 1 keys changed since" in caplog.text

    # A version written with the feed off: the feed cannot say what changed, so every key is checked.
    other = store.table(dataclasses.replace(SCORES, name="gap_scores", change_feed=True))
    other.upsert(spark.createDataFrame([("w1", "brazil", 0.1), ("w2", "africa", 0.2)], schema))
    assert other.read_unique().count() == 2
    spark.sql(f"ALTER TABLE delta.`{other.path}` SET TBLPROPERTIES ('delta.enableChangeDataFeed' = 'false')")
    spark.createDataFrame([("w2", "africa", 0.5)], schema).write.format("delta").mode("append").save(other.path)
    spark.sql(f"ALTER TABLE delta.`{other.path}` SET TBLPROPERTIES ('delta.enableChangeDataFeed' = 'true')")
    caplog.clear()
    with pytest.raises(DuplicateKeyError, match="w2"):
        other.read_unique()
    assert "unreadable; checking every key" in caplog.text


def test_a_key_preserving_commit_on_a_unique_version_needs_no_check_but_another_writers_rows_do(spark, store,
                                                                                                 caplog):
    """Uniqueness enforced where rows are written (issue #25): this process's MERGE on the key (or deletion) made on
    a version it found unique, with no commit in between, is known unique without a check. An append by another
    writer in between means our next commit is not on a version known unique, so the duplicate it brought is refused
    by the next reader, as without this rule; an append of ours (not key-preserving) is checked too."""
    from cxatlas.warehouse.tables import DuplicateKeyError

    caplog.set_level(logging.DEBUG, logger="cxatlas.warehouse.tables.checks")
    table = store.table(dataclasses.replace(SCORES, name="written_scores"))
    schema = "video_id string, region string, score_a float"
    table.upsert(spark.createDataFrame([("v1", "brazil", 0.1), ("v2", "africa", 0.2)], schema))
    assert table.read_unique().count() == 2
    assert f"version {table.version()} checked for duplicates among every key" in caplog.text
    for n_rows, write in enumerate((table.upsert, lambda df: table.insert_new(df, keys_unique=True)), start=3):
        before = table.version()
        write(spark.createDataFrame([(f"n{before}", "brazil", 0.3)], schema))
        assert f"version {before + 1} known unique: this process's" in caplog.text
        caplog.clear()
        assert table.read_unique().count() == n_rows
        assert "checked for duplicates" not in caplog.text
    table.delete("video_id = 'v2'")
    assert f"version {table.version()} known unique" in caplog.text

    # Another writer's duplicate, then a MERGE of ours on top of it: refused at the next read.
    spark.createDataFrame([("v1", "brazil", 0.5)], schema).write.format("delta").mode("append").save(table.path)
    caplog.clear()
    table.upsert(spark.createDataFrame([("v9", "africa", 0.9)], schema))
    assert "known unique" not in caplog.text
    with pytest.raises(DuplicateKeyError, match=r"'written_scores'.*video_id='v1' \(2 rows\)"):
        table.read_unique()
    assert f"version {table.version()} checked for duplicates among every key" in caplog.text

    # An append of ours is not key-preserving: checked, and its duplicate refused.
    clean = store.table(dataclasses.replace(SCORES, name="appended_scores"))
    clean.upsert(spark.createDataFrame([("a1", "brazil", 0.1)], schema))
    assert clean.read_unique().count() == 1
    clean.append(spark.createDataFrame([("a1", "brazil", 0.2)], schema))
    with pytest.raises(DuplicateKeyError, match="a1"):
        clean.read_unique()


def test_the_change_feed_gives_the_changed_keys_rows_as_time_travel_does(spark, store):
    """``rows_before`` / ``rows_after`` of a feed over versions (a, b] equal time travel to a and to b, restricted to
    the keys the feed changed: over keys updated twice (first pre-image, last post-image, not any other), deleted,
    inserted then deleted, deleted then inserted again, and left alone (not in the feed)."""
    from pyspark.sql import functions as F

    table = store.table(dataclasses.replace(SCORES, name="fed_scores", change_feed=True,
                                            comment="SCORES with Delta's change data feed on"))
    schema = "video_id string, region string, score_a float"

    def upsert(*rows):
        table.upsert(spark.createDataFrame(list(rows), schema))

    upsert(("a", "brazil", 0.1), ("b", "africa", 0.2), ("c", "africa", 0.3), ("keep", "brazil", 0.9))
    start = table.version()
    upsert(("a", "brazil", 0.11), ("n", "brazil", 0.5))       # a updated, n inserted
    upsert(("a", "africa", 0.12))                             # a updated again (and moved partition)
    table.delete("video_id IN ('b', 'n')")                    # b deleted; n inserted then deleted
    table.delete("video_id = 'c'")
    upsert(("c", "brazil", 0.33))                             # c deleted, then inserted again
    end = table.version()
    feed = table.changes(start, end)

    def as_rows(df):
        return sorted(tuple(r) for r in df.select("video_id", "region", "score_a").collect())

    changed = sorted({r[0] for r in feed.select("video_id").collect()})
    assert changed == ["a", "b", "c", "n"]
    for got, version in ((table.rows_before(feed), start), (table.rows_after(feed), end)):
        expected = table.read(version).where(F.col("video_id").isin(changed))
        assert as_rows(got) == as_rows(expected), version
    assert [r[0] for r in as_rows(table.rows_after(feed))] == ["a", "c"]  # b and n are gone


def test_a_catalog_name_pointing_at_another_root_is_refused(spark, store, tmp_path):
    """Two data roots on one metastore and database: the second root's table of the same name would make every query
    read the first root's rows, so registering it is refused, naming both locations (the catalog entry's location
    comes from ``DESCRIBE TABLE EXTENDED``)."""
    from dataclasses import replace

    from cxatlas.warehouse.tables import TableError

    table = store.table(SCORES)
    table.append(spark.createDataFrame([("v1", "brazil", 0.1)], "video_id string, region string, score_a float"))
    table.register()
    assert table._catalog_location().removeprefix("file:").rstrip("/") == table.path.removeprefix("file:").rstrip("/")
    other = replace(store, root=str(tmp_path / "other-root"), _tables={}).table(SCORES)
    spark.createDataFrame([("v9", "africa", 0.9)], "video_id string, region string, score_a float") \
        .write.format("delta").save(other.path)
    with pytest.raises(TableError, match="another data root") as refused:
        other.register()
    assert str(tmp_path / "other-root") in str(refused.value) and store.root.removeprefix("file:") in str(refused.value)
    assert spark.sql(f"SELECT video_id FROM {table.name}").collect()[0][0] == "v1"  # the catalog still reads the first
