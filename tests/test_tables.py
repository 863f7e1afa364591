"""Tables on real Spark and real Delta Lake (delta-spark): schema evolution survives later upserts; an independent
reader (delta-rs) sees the same."""
from __future__ import annotations

import deltalake
import pyarrow as pa
import pytest

from cxatlas.core.schemas import TableSpec

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
