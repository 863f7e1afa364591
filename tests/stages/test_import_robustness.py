"""``cxatlas import-annotations`` must never lose data silently: on real Parquet files and real Delta tables.

Each test covers one way an import used to drop data without a word: a folder whose files disagree on their columns
(the first file's schema won), Parquet files without a ``.parquet`` name (skipped) and other files in the folder
(skipped), type differences between files (a crash after the tables had been created), and rows whose coordinates
lie outside their stated region (stored under it). A refused input must leave every table uncreated.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cxatlas.core.schemas import QUARANTINE, UPLOADS, VIDEO_CONTEXTS, VIDEO_EXPRESSIONS
from cxatlas.stages import import_annotations
from cxatlas.stages.import_annotations import REASONS, ImportFormatError, plan_layout, read_input, run_import

TABLES = (UPLOADS, VIDEO_EXPRESSIONS, VIDEO_CONTEXTS, QUARANTINE)
SAO_PAULO = (-23.55, -46.63)


def _write(path: Path, columns: dict[str, pa.Array]) -> Path:
    """One Parquet file with exactly these columns and Arrow types."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def _base(prefix: str, n: int, *, string_type=pa.string(), coord_type=pa.float64()) -> dict[str, pa.Array]:
    """``n`` Brazilian videos ``<prefix>0..`` located in Sao Paulo."""
    return {"video_id": pa.array([f"{prefix}{i}" for i in range(n)], string_type),
            "region": pa.array(["brazil"] * n, string_type),
            "lat": pa.array([SAO_PAULO[0]] * n, coord_type), "lon": pa.array([SAO_PAULO[1]] * n, coord_type)}


def _no_tables(store) -> bool:
    return not any(store.table(spec).exists() for spec in TABLES)


def _contexts(store) -> dict[str, dict[str, float]]:
    rows = store.table(VIDEO_CONTEXTS).read().toPandas()
    return {r.video_id: {c["label"]: c["score"] for c in r.contexts} for r in rows.itertuples()}


def test_files_that_disagree_on_contexts_are_refused_unless_missing_contexts_count_as_zero(spark, store, cfg,
                                                                                            tmp_path):
    folder = tmp_path / "ctx"
    _write(folder / "a.parquet", {**_base("a", 4), "expr_joy": pa.array([0.1, 0.2, 0.3, 0.4], pa.float32()),
                                  "ctx_beach": pa.array([1.0, 0.0, 0.0, 1.0], pa.float32())})
    _write(folder / "b.parquet", {**_base("b", 3), "expr_joy": pa.array([0.5, 0.6, 0.7], pa.float32()),
                                  "ctx_beach": pa.array([0.0, 1.0, 0.0], pa.float32()),
                                  "ctx_wedding": pa.array([1.0, 0.5, 0.0], pa.float32())})
    with pytest.raises(ImportFormatError) as refused:
        run_import(spark, cfg, store, str(folder))
    message = str(refused.value)
    assert "ctx_wedding" in message and "a.parquet" in message and "--missing-contexts-as-zero" in message
    assert _no_tables(store)

    report = run_import(spark, cfg, store, str(folder), missing_contexts_as_zero=True)
    assert report.reconciles and report.rows_in == 7 and report.imported == 7 and report.n_contexts == 2
    ctx = _contexts(store)
    assert ctx["b0"] == {"wedding": 1.0} and ctx["b1"] == {"beach": 1.0, "wedding": 0.5}
    assert ctx["a0"] == {"beach": 1.0} and ctx["a1"] == {}  # the missing context counts as absent (score 0)

    # A missing expression column is never filled: the file says nothing about that expression.
    expr = tmp_path / "expr"
    _write(expr / "a.parquet", {**_base("x", 2), "expr_joy": pa.array([0.1, 0.2], pa.float32()),
                                "expr_fear": pa.array([0.3, 0.4], pa.float32()),
                                "ctx_beach": pa.array([1.0, 0.0], pa.float32())})
    _write(expr / "b.parquet", {**_base("y", 2), "expr_joy": pa.array([0.1, 0.2], pa.float32()),
                                "ctx_beach": pa.array([1.0, 0.0], pa.float32())})
    before = {spec.name: store.table(spec).version() for spec in TABLES}
    with pytest.raises(ImportFormatError, match=r"expr_fear.*b\.parquet"):
        run_import(spark, cfg, store, str(expr), model_version="v2", missing_contexts_as_zero=True)
    assert {spec.name: store.table(spec).version() for spec in TABLES} == before


def test_folder_reads_parquet_by_content_skips_hidden_entries_and_refuses_other_files(spark, store, cfg, tmp_path,
                                                                                      caplog):
    def fill(folder: Path) -> None:
        _write(folder / "part-00000.parquet", {**_base("p", 3), "expr_joy": pa.array([0.1] * 3, pa.float32()),
                                               "ctx_beach": pa.array([1.0] * 3, pa.float32())})
        _write(folder / "part-00001", {**_base("q", 4), "expr_joy": pa.array([0.2] * 4, pa.float32()),  # Hadoop name
                                       "ctx_beach": pa.array([0.0] * 4, pa.float32())})
        (folder / "_SUCCESS").write_bytes(b"")
        (folder / ".part-00000.parquet.crc").write_bytes(b"crc\x00\x01")
        _write(folder / "_population" / "truth.parquet", {"something": pa.array([1, 2])})  # a simulator's truth

    mixed = tmp_path / "mixed"
    fill(mixed)
    (mixed / "README.md").write_text("how these annotations were made\n")
    (mixed / "scores.csv").write_text("video_id,region\nz,brazil\n")
    (mixed / "fake.parquet").write_text("not parquet at all")
    with pytest.raises(ImportFormatError) as refused:
        run_import(spark, cfg, store, str(mixed))
    message = str(refused.value)
    assert all(name in message for name in ("README.md", "scores.csv", "fake.parquet", "--skip-non-parquet"))
    assert "_SUCCESS" not in message and "crc" not in message and "part-00001" not in message
    assert _no_tables(store)

    with caplog.at_level(logging.WARNING, logger=import_annotations.__name__):
        skipped = run_import(spark, cfg, store, str(mixed), skip_non_parquet=True)
    assert skipped.reconciles and skipped.rows_in == 7 and skipped.imported == 7
    assert "README.md" in caplog.text and "scores.csv" in caplog.text

    clean = tmp_path / "clean"
    fill(clean)
    report = run_import(spark, cfg, store, str(clean), model_version="v2")
    assert report.reconciles and report.rows_in == 7 and report.imported == 7  # part-00001 is read too
    ids = set(store.table(VIDEO_EXPRESSIONS).read().filter("model_version = 'v2'").toPandas()["video_id"])
    assert ids == {"p0", "p1", "p2", "q0", "q1", "q2", "q3"}

    # A single Parquet file without the extension is read as well (Spark's old "*.parquet" filter dropped it).
    assert read_input(spark, str(clean / "part-00001")).count() == 4


def test_type_differences_between_files_are_widened_or_refused_before_any_table_exists(spark, store, cfg,
                                                                                       tmp_path):
    clash = tmp_path / "clash"
    _write(clash / "a.parquet", {**_base("a", 2), "expr_joy": pa.array([0.1, 0.2], pa.float64()),
                                 "ctx_beach": pa.array([1.0, 0.0], pa.float32())})
    _write(clash / "b.parquet", {**_base("b", 2), "expr_joy": pa.array(["0.1", "high"], pa.string()),
                                 "ctx_beach": pa.array([1.0, 0.0], pa.float32())})
    with pytest.raises(ImportFormatError) as refused:
        run_import(spark, cfg, store, str(clash))
    message = str(refused.value)
    assert all(s in message for s in ("expr_joy", "a.parquet", "b.parquet", "string", "double"))
    assert "Traceback" not in message and len(message) < 2000
    assert _no_tables(store)

    mixed = tmp_path / "mixed"
    _write(mixed / "f32.parquet", {**_base("s", 2), "expr_joy": pa.array([0.25, 0.5], pa.float32()),
                                   "ctx_beach": pa.array([1.0, 0.0], pa.float32())})
    _write(mixed / "f64.parquet", {**_base("d", 2, string_type=pa.large_string(), coord_type=pa.float32()),
                                   "expr_joy": pa.array([0.125, -3.5], pa.float64()),
                                   "ctx_beach": pa.array([0, 1], pa.int32())})
    _write(mixed / "i64.parquet", {**_base("i", 2), "expr_joy": pa.array([2, -1], pa.int64()),
                                   "ctx_beach": pa.array([1, 0], pa.int64())})
    report = run_import(spark, cfg, store, str(mixed))
    assert report.reconciles and report.rows_in == 6 and report.imported == 6
    expr = store.table(VIDEO_EXPRESSIONS).read().toPandas().set_index("video_id")["expr_joy"].to_dict()
    assert expr == pytest.approx({"s0": 0.25, "s1": 0.5, "d0": 0.125, "d1": -3.5, "i0": 2.0, "i1": -1.0})
    ctx = _contexts(store)
    assert ctx["d1"] == {"beach": 1.0} and ctx["d0"] == {} and ctx["i0"] == {"beach": 1.0}
    uploads = store.table(UPLOADS).read().toPandas().set_index("video_id")
    assert uploads.loc["d0", "lat"] == pytest.approx(SAO_PAULO[0], abs=1e-5)  # float32 coordinates widened
    assert uploads.loc["d0", "lat_bin"] == uploads.loc["s0", "lat_bin"]


_NUMBERS = [pa.int8(), pa.uint32(), pa.int64(), pa.float32(), pa.float64(), pa.decimal128(9, 3)]
_TEXTS = [pa.string(), pa.large_string(), pa.dictionary(pa.int32(), pa.string())]


def _arrow_merges(a, b) -> bool:
    """The independent reference: does Arrow itself (``pa.unify_schemas``, permissive) merge the two types?"""
    plain = [t.value_type if pa.types.is_dictionary(t) else t for t in (a, b)]
    try:
        pa.unify_schemas([pa.schema([("c", t)]) for t in plain], promote_options="permissive")
        return True
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return False


@pytest.mark.parametrize("column", ["expr_joy", "ctx_beach", "lat", "video_id", "note"])
def test_type_layout_follows_arrow_promotion_with_the_stricter_rules_on_top(column):
    """Every pair of number and text types, in a score, a coordinate, the key and an extra column: the layout
    refuses exactly where Arrow cannot merge the types or one of the module's stricter rules applies (no number
    family mixed outside scores; no decimal outside scores; the key stays text), and reads scores as double."""
    base = {"video_id": pa.string(), "region": pa.string(), "expr_joy": pa.float32(), "ctx_beach": pa.float32()}
    for a in _NUMBERS + _TEXTS:
        for b in _NUMBERS + _TEXTS:
            if a == b:
                continue
            schemas = {"a.parquet": pa.schema({**base, column: a}), "b.parquet": pa.schema({**base, column: b})}
            kinds = {"int" if pa.types.is_integer(t) else "float" if pa.types.is_floating(t) else
                     "decimal" if pa.types.is_decimal(t) else "string" for t in (a, b)}
            if column == "note":  # an extra column: only kept for the quarantine's source rows
                expected = {"int": "bigint", "float": "double", "string": "string"}.get(kinds.pop(), "string") \
                    if len(kinds) == 1 else "string"
            elif not _arrow_merges(a, b):
                expected = None
            elif column.startswith(("expr_", "ctx_")) or column == "lat":
                expected = "double" if "string" not in kinds else None
            else:
                expected = "string" if kinds == {"string"} else "bigint" if kinds == {"int"} else \
                    "double" if kinds == {"float"} else None
            if expected is None:
                with pytest.raises(ImportFormatError, match=f"'{column}' has types that cannot be combined"):
                    plan_layout(schemas)
            else:
                assert plan_layout(schemas).casts[column] == expected, (a, b)


def test_rows_located_outside_their_stated_region_are_quarantined(spark, store, cfg, tmp_path):
    places = {  # video_id: (region as written, lat, lon, expected reason)
        "new_york": ("us_canada", 40.71, -74.0, None),
        "toronto": ("USCanada", 43.65, -79.38, None),  # Canada belongs to us_canada too
        "el_paso": ("us_canada", 31.76, -106.49, None),  # a border town
        "no_coords": ("us_canada", None, None, None),  # coordinates stay optional
        "sao_paulo": ("brazil", *SAO_PAULO, None),
        "reykjavik": ("us_canada", 64.15, -21.94, "coordinates_outside_region"),
        "reykjavik_display": ("USCanada", 64.15, -21.94, "coordinates_outside_region"),
        "lisbon": ("brazil", 38.72, -9.14, "coordinates_outside_region"),
        "mid_atlantic": ("us_canada", 45.0, -35.0, "coordinates_outside_region"),  # far from any land
    }
    n = len(places)
    _write(tmp_path / "in" / "part-0.parquet", {
        "video_id": pa.array(list(places)), "region": pa.array([p[0] for p in places.values()]),
        "lat": pa.array([p[1] for p in places.values()], pa.float64()),
        "lon": pa.array([p[2] for p in places.values()], pa.float64()),
        "expr_joy": pa.array([0.5] * n, pa.float32()), "ctx_beach": pa.array([1.0] * n, pa.float32())})
    report = run_import(spark, cfg, store, str(tmp_path / "in"))
    outside = {vid for vid, p in places.items() if p[3]}
    assert report.reconciles and report.rows_in == n and report.imported == n - len(outside)
    assert report.reasons == {"coordinates_outside_region": len(outside)}
    assert "coordinates_outside_region" in REASONS and "coordinates_outside_region" in import_annotations.__doc__

    q = store.table(QUARANTINE).read().toPandas().set_index("video_id")
    assert set(q.index) == outside and set(q["reason"]) == {"coordinates_outside_region"}
    assert "us_canada" in q.loc["reykjavik", "detail"] and "IS" in q.loc["reykjavik", "detail"]
    uploads = store.table(UPLOADS).read().toPandas().set_index("video_id")
    assert set(uploads.index) == set(places) - outside
    assert uploads.loc["toronto", "region"] == "us_canada"


def test_inputs_without_any_parquet_data_are_refused_by_name(spark, store, cfg, tmp_path):
    csv = tmp_path / "scores.csv"
    csv.write_text("video_id,region,expr_joy,ctx_beach\na,brazil,0.1,1\n")
    with pytest.raises(ImportFormatError, match=r"scores\.csv: not a Parquet file"):
        run_import(spark, cfg, store, str(csv))
    hidden_only = tmp_path / "hidden"
    _write(hidden_only / "_population" / "truth.parquet", {"x": pa.array([1])})
    (hidden_only / "_SUCCESS").write_bytes(b"")
    with pytest.raises(ImportFormatError, match="holds no Parquet file"):
        run_import(spark, cfg, store, f"file://{hidden_only}")
    with pytest.raises(ImportFormatError, match="input not found"):
        run_import(spark, cfg, store, str(tmp_path / "nowhere"))
    assert _no_tables(store)
