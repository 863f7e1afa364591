"""Ingest on real Spark and real Delta tables: every bad input lands in quarantine with its reason, counts reconcile,
re-ingest changes nothing, the latest upload wins, and a job killed mid-write leaves the table as it was."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import deltalake
import pandas as pd
import pytest

from cxatlas.stages.ingest import ManifestError, run_ingest
from cxatlas.core.schemas import QUARANTINE, UPLOADS
from tests.conftest import cli_args, make_config

COLUMNS = ["video_id", "uri", "lat", "lon", "country", "upload_time", "title", "description"]
PARIS = dict(uri="/v/p.mp4", lat="48.8566", lon="2.3522", country="FR", upload_time="2021-06-01T12:00:00Z",
             title="Wedding in Paris", description="the bride and groom")
SAO_PAULO = dict(uri="/v/s.mp4", lat="-23.55", lon="-46.63", country="BR", upload_time="2021-06-02T10:00:00Z",
                 title="Futebol", description="a match\nover two lines")
SYDNEY = dict(uri="/v/y.mp4", lat="-33.87", lon="151.21", country="AU", upload_time="2021-06-03T10:00:00Z",
              title="Fireworks", description="new year")


def write_csv(path: Path, rows: list[dict], columns=COLUMNS) -> str:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def uploads_df(store) -> pd.DataFrame:
    return store.table(UPLOADS).read().toPandas()


def quarantine_df(store) -> pd.DataFrame:
    return store.table(QUARANTINE).read().toPandas()


BAD_ROWS = [
    (dict(PARIS, video_id=""), "missing_video_id"),
    (dict(PARIS, video_id="nan", lat="NaN"), "invalid_coordinates"),
    (dict(PARIS, video_id="text", lat="north"), "invalid_coordinates"),
    (dict(PARIS, video_id="nolat", lat=""), "missing_coordinates"),
    (dict(PARIS, video_id="swapped", lat="139.69", lon="35.68", country="JP"), "coordinates_swapped"),
    (dict(PARIS, video_id="range", lat="95.0", lon="200.0"), "coordinates_out_of_range"),
    (dict(PARIS, video_id="zz", country="ZZ"), "unknown_country"),
    (dict(PARIS, video_id="time", upload_time="last tuesday"), "malformed_upload_time"),
    (dict(PARIS, video_id="notime", upload_time=""), "missing_upload_time"),
    (dict(PARIS, video_id="elsewhere", country="BR"), "coordinates_outside_country"),
    (dict(PARIS, video_id="sea", lat="30.0", lon="-40.0"), "coordinates_outside_country"),
]


def test_every_bad_row_is_quarantined_with_its_reason_and_counts_reconcile(spark, store, cfg, tmp_path):
    good = [dict(PARIS, video_id="p1"), dict(SAO_PAULO, video_id="s1"), dict(SYDNEY, video_id="au1")]
    manifest = write_csv(tmp_path / "m.csv", good + [row for row, _ in BAD_ROWS])
    report = run_ingest(spark, cfg, store, manifest)

    assert report.rows_in == len(good) + len(BAD_ROWS)
    assert report.reconciles and report.new == 3 and report.quarantined == len(BAD_ROWS)
    up = uploads_df(store).set_index("video_id")
    assert sorted(up.index) == ["au1", "p1", "s1"]
    assert up.loc["p1", "region"] == "western_europe" and up.loc["s1", "region"] == "brazil"
    assert pd.isna(up.loc["au1", "region"])  # a country with no region is kept, region null
    assert (up.loc["p1", "lat_bin"], up.loc["p1", "lon_bin"]) == (97, 4)
    assert (up.loc["s1", "lat_bin"], up.loc["s1", "lon_bin"]) == (-48, -94)  # floor, not truncation
    assert up.loc["s1", "description"] == "a match\nover two lines"
    q = quarantine_df(store)
    expected = sorted(reason for _, reason in BAD_ROWS)
    assert sorted(q["reason"]) == expected
    # Nothing is lost: every quarantined row keeps its source row.
    kept = {json.loads(r)["video_id"] for r in q["source_row"]}
    assert kept == {row["video_id"] or None for row, _ in BAD_ROWS}  # CSV reads an empty field as null
    assert q.loc[q.video_id == "time", "detail"].item() == "upload_time 'last tuesday' is not an ISO-8601 timestamp"
    # One commit per table per run.
    assert store.table(UPLOADS).version() == 1 and store.table(QUARANTINE).version() == 1

    again = run_ingest(spark, cfg, store, manifest)
    assert again.reconciles and again.unchanged == 3 and again.new == again.updated == 0
    assert again.commits["uploads"].version is None and again.commits["quarantine"].version is None
    assert store.table(UPLOADS).version() == 1 and store.table(QUARANTINE).version() == 1
    assert len(quarantine_df(store)) == len(BAD_ROWS)


def test_latest_upload_wins_within_and_across_manifests(spark, store, cfg, tmp_path):
    first = [dict(PARIS, video_id="v1", title="first", upload_time="2021-01-01T00:00:00Z"),
             dict(PARIS, video_id="v1", title="later in same manifest", upload_time="2021-02-01T00:00:00Z"),
             dict(PARIS, video_id="v2", title="v2", upload_time="2021-01-01T00:00:00Z")]
    r1 = run_ingest(spark, cfg, store, write_csv(tmp_path / "a.csv", first))
    assert (r1.new, r1.quarantined, r1.reasons) == (2, 1, {"duplicate": 1})
    assert uploads_df(store).set_index("video_id").loc["v1", "title"] == "later in same manifest"

    second = [dict(PARIS, video_id="v1", title="re-upload", upload_time="2021-03-01T00:00:00Z"),
              dict(PARIS, video_id="v2", title="stale", upload_time="2020-01-01T00:00:00Z"),
              dict(SAO_PAULO, video_id="v3")]
    r2 = run_ingest(spark, cfg, store, write_csv(tmp_path / "b.csv", second))
    assert (r2.new, r2.updated, r2.quarantined) == (1, 1, 1) and r2.reconciles
    up = uploads_df(store).set_index("video_id")
    assert sorted(up.index) == ["v1", "v2", "v3"]  # no duplicate keys after the upsert
    assert up.loc["v1", "title"] == "re-upload" and up.loc["v2", "title"] == "v2"
    q = quarantine_df(store)
    titles = sorted(json.loads(r)["title"] for r in q["source_row"])
    assert titles == ["first", "later in same manifest", "stale"]  # replaced and stale rows are kept
    assert store.table(UPLOADS).version() == 2


def test_json_lines_and_parquet_manifests(spark, store, cfg, tmp_path):
    jsonl = tmp_path / "m.jsonl"
    rows = [dict(PARIS, video_id="j1", lat=48.8566, lon=2.3522), dict(SAO_PAULO, video_id="j2")]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json at all\n", encoding="utf-8")
    report = run_ingest(spark, cfg, store, str(jsonl))
    assert (report.new, report.reasons) == (2, {"malformed_record": 1}) and report.reconciles

    parquet = tmp_path / "m.parquet"
    frame = pd.DataFrame([dict(SYDNEY, video_id="q1"), dict(PARIS, video_id="q2")])
    frame["lat"], frame["lon"] = frame["lat"].astype(float), frame["lon"].astype(float)
    frame["upload_time"] = pd.to_datetime(frame["upload_time"])
    frame.to_parquet(parquet)
    report = run_ingest(spark, cfg, store, str(parquet))
    assert report.new == 2 and report.reconciles
    assert sorted(uploads_df(store).video_id) == ["j1", "j2", "q1", "q2"]


def test_wrong_columns_are_refused_naming_them(spark, store, cfg, tmp_path):
    extra = write_csv(tmp_path / "extra.csv", [dict(PARIS, video_id="x", views="3")], COLUMNS + ["views"])
    with pytest.raises(ManifestError, match="unexpected column.*views"):
        run_ingest(spark, cfg, store, extra)
    cols = [c for c in COLUMNS if c != "country"]
    missing = write_csv(tmp_path / "missing.csv", [{k: v for k, v in dict(PARIS, video_id="x").items()
                                                    if k != "country"}], cols)
    with pytest.raises(ManifestError, match="missing required column.*country"):
        run_ingest(spark, cfg, store, missing)
    assert not store.table(UPLOADS).exists() or uploads_df(store).empty
    lenient = make_config(Path(cfg.data_root), "ingest.allow_extra_columns=true", "ingest.partitions=2")
    assert run_ingest(spark, lenient, store, extra).new == 1


def test_empty_manifests(spark, store, cfg, tmp_path):
    header_only = write_csv(tmp_path / "h.csv", [])
    zero = tmp_path / "zero.csv"
    zero.write_bytes(b"")
    for manifest in (header_only, str(zero)):
        report = run_ingest(spark, cfg, store, manifest)
        assert report.rows_in == 0 and report.reconciles


def test_non_utf8_and_huge_titles_are_truncated_and_flagged(spark, store, cfg, tmp_path):
    path = tmp_path / "bytes.csv"
    header = ",".join(COLUMNS) + "\n"
    row = 'b1,/v/b.mp4,48.85,2.35,FR,2021-06-01T12:00:00Z,Caf\xff wedding,"desc"\n'.encode("latin-1")
    huge = f'b2,/v/c.mp4,48.85,2.35,FR,2021-06-01T12:00:00Z,{"x" * 20000},"{"y" * 9000}"\n'.encode()
    path.write_bytes(header.encode() + row + huge)
    report = run_ingest(spark, cfg, store, str(path))
    assert report.new == 2 and report.reconciles
    up = uploads_df(store).set_index("video_id")
    assert list(up.loc["b1", "text_flags"]) == ["title_invalid_utf8"]
    assert sorted(up.loc["b2", "text_flags"]) == ["description_truncated", "title_truncated"]
    assert len(up.loc["b2", "title"]) == cfg.settings.ingest.max_title_chars
    assert len(up.loc["b2", "description"]) == cfg.settings.ingest.max_description_chars


def test_tables_read_back_with_an_independent_delta_reader(spark, store, cfg, tmp_path):
    """What Delta Lake on Spark wrote, delta-rs (no JVM) reads: schema with comments, partitions, history, versions."""
    run_ingest(spark, cfg, store, write_csv(tmp_path / "a.csv", [dict(PARIS, video_id="d1"),
                                                                  dict(SYDNEY, video_id="d2")]))
    run_ingest(spark, cfg, store, write_csv(tmp_path / "b.csv", [dict(SAO_PAULO, video_id="d3")]))
    path = Path(cfg.table_root) / "uploads"
    dt = deltalake.DeltaTable(str(path))  # an independent Delta reader
    assert dt.metadata().partition_columns == ["region"]
    assert dt.schema().to_pyarrow().names == UPLOADS.schema.names
    comments = {f.name: f.metadata.get("comment") for f in dt.schema().fields}
    assert "ISO 3166-1" in comments["country"]
    assert [h["operation"] for h in dt.history()] == ["MERGE", "MERGE", "CREATE TABLE"]
    assert dt.version() == 2
    assert sorted(dt.to_pandas().video_id) == ["d1", "d2", "d3"]
    assert sorted(deltalake.DeltaTable(str(path), version=1).to_pandas().video_id) == ["d1", "d2"]
    regions = dt.to_pyarrow_table().to_pandas().set_index("video_id")["region"]
    assert regions["d1"] == "western_europe" and pd.isna(regions["d2"])
    # Time travel through Spark too, and the table is in the catalog under its name, with its comment.
    assert store.table(UPLOADS).read(version=1).count() == 2
    detail = spark.sql(f"DESCRIBE TABLE EXTENDED {store.table(UPLOADS).name}").toPandas()
    assert UPLOADS.comment in set(detail["data_type"]) | set(detail["comment"].dropna())


def test_sql_over_registered_tables(spark, store, cfg, tmp_path, capsys):
    from cxatlas.cli import main

    run_ingest(spark, cfg, store, write_csv(tmp_path / "a.csv", [dict(PARIS, video_id="s1"),
                                                                  dict(SAO_PAULO, video_id="s2")]))
    store.register_all([UPLOADS])
    rows = spark.sql(f"SELECT region, count(*) AS n FROM {cfg.settings.catalog.database}.uploads GROUP BY region ORDER BY region").collect()
    assert [(r.region, r.n) for r in rows] == [("brazil", 1), ("western_europe", 1)]
    assert main([*cli_args(cfg), "sql", "SELECT country, count(*) AS n FROM uploads GROUP BY country"]) == 0
    out = capsys.readouterr().out
    assert "|     BR|  1|" in out and "|     FR|  1|" in out


def test_withdrawals_tombstone_the_upload_delete_its_annotations_and_a_later_upload_returns(spark, store, cfg,
                                                                                           tmp_path):
    """A withdrawing row needs only video_id and upload_time; it also applies to a stored row without an
    upload_time (imported annotations have none); an older row arriving late does not bring the video back; a
    later upload does. Bad withdrawn values are quarantined with their reason."""
    from pyspark.sql import functions as F

    from cxatlas.core.schemas import VIDEO_EXPRESSIONS, spark_schema

    run_ingest(spark, cfg, store, write_csv(tmp_path / "m1.csv", [dict(PARIS, video_id="a"),
                                                                   dict(SYDNEY, video_id="b")]))
    # "c" stored as an import stores it: no upload_time.
    store.table(UPLOADS).append(store.table(UPLOADS).read().filter("video_id = 'b'")
                                .withColumn("video_id", F.lit("c")).withColumn("upload_time", F.lit(None)))
    expr = spark.createDataFrame(
        pd.DataFrame({"video_id": ["a", "b", "c"], "model_version": "m", "n_windows": 1, "n_faces": 1}),
        "video_id string, model_version string, n_windows int, n_faces int")
    for f in spark_schema(VIDEO_EXPRESSIONS.schema).fields:
        if f.name not in expr.columns:
            expr = expr.withColumn(f.name, F.lit(None).cast(f.dataType))
    store.table(VIDEO_EXPRESSIONS).append(expr.select(*VIDEO_EXPRESSIONS.schema.names))

    withdrawals = write_csv(tmp_path / "w.csv", [
        {"video_id": "a", "upload_time": "2022-01-01T00:00:00Z", "withdrawn": "true"},
        {"video_id": "c", "upload_time": "2022-01-01T00:00:00Z", "withdrawn": "yes"},
        {"video_id": "b", "upload_time": "2022-01-01T00:00:00Z", "withdrawn": "perhaps"},
    ], columns=["video_id", "upload_time", "withdrawn"])
    report = run_ingest(spark, cfg, store, withdrawals)
    assert report.reconciles and report.withdrawn == 2 and report.annotations_deleted == 2
    assert report.reasons == {"invalid_withdrawn": 1}
    up = uploads_df(store).set_index("video_id")
    assert up.loc["a", "withdrawn"] and up.loc["c", "withdrawn"] and not up.loc["b", "withdrawn"]
    assert pd.isna(up.loc["a", "uri"])  # a tombstone carries no content
    assert sorted(store.table(VIDEO_EXPRESSIONS).read().toPandas()["video_id"]) == ["b"]

    # An older row of "a" arriving late is quarantined; a later upload brings it back.
    late = run_ingest(spark, cfg, store, write_csv(tmp_path / "late.csv", [dict(PARIS, video_id="a")]))
    assert late.quarantined == 1 and uploads_df(store).set_index("video_id").loc["a", "withdrawn"]
    back = run_ingest(spark, cfg, store, write_csv(tmp_path / "back.csv", [
        dict(PARIS, video_id="a", upload_time="2023-01-01T00:00:00Z")]))
    assert back.updated == 1 and back.withdrawn == 0
    up = uploads_df(store).set_index("video_id")
    assert not up.loc["a", "withdrawn"] and up.loc["a", "uri"] == PARIS["uri"]
