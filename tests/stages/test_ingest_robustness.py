"""Ingest robustness on real files, real GeoNames data, real Spark and real Delta tables: coordinates checked against
the claimed country and the sea, swapped lat/lon recognised, a duplicated header and a tied upload_time described as
what they are, and user mistakes (no such manifest, an unknown URI scheme, a video or an image given as the manifest)
answered by the real CLI in one line with exit code 2."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from cxatlas.core import geo
from cxatlas.core.config import load_config
from cxatlas.core.regions import load_country_regions
from cxatlas.core.schemas import QUARANTINE, UPLOADS
from cxatlas.stages.ingest import ManifestError, run_ingest
from tests.stages.test_ingest import COLUMNS, PARIS, write_csv

ROOT = Path(__file__).resolve().parents[2]

# Real places given correctly (lat, lon, claimed country): capitals, a coastal city, border cities.
GOOD = {
    "paris": (48.8566, 2.3522, "FR"),
    "tokyo": (35.6762, 139.6503, "JP"),
    "sao_paulo": (-23.5505, -46.6333, "BR"),
    "toronto": (43.6532, -79.3832, "CA"),
    "mumbai": (19.0760, 72.8777, "IN"),
    "lagos": (6.5244, 3.3792, "NG"),
    "lisbon": (38.7223, -9.1393, "PT"),
    "sydney": (-33.8688, 151.2093, "AU"),
    "strasbourg": (48.5734, 7.7521, "FR"),  # on the Rhine, Kehl (DE) across the bridge
    "geneva": (46.2044, 6.1432, "CH"),  # French communes on three sides
}
BAD = {  # (lat, lon, claimed country, reason)
    # Lagos with lat and lon swapped: 108 km out in the Gulf of Guinea, the Nigerian coast all to one side.
    "lagos_swapped": (3.3792, 6.5244, "NG", geo.COORDINATES_SWAPPED),
    "mid_atlantic": (30.0, -40.0, "PT", geo.COORDINATES_OUTSIDE_COUNTRY),  # 1300 km from the Azores
    # Barcelona claimed as France: same region (western Europe), ~100 km from the nearest French place.
    "barcelona_as_france": (41.3874, 2.1686, "FR", geo.COORDINATES_OUTSIDE_COUNTRY),
    # 66 km off Rio de Janeiro's coast (Brazil): within max_distance_km, but at sea.
    "off_rio": (-23.5, -42.7, "BR", geo.COORDINATES_OUTSIDE_COUNTRY),
}


@pytest.fixture(scope="module")
def country_regions() -> dict[str, str | None]:
    return load_country_regions(ROOT / "conf" / "regions.csv")


def limits(**overrides) -> dict:
    """coordinate_problems' limits as the packaged defaults (conf/local.yaml) set them, ingest's own call."""
    g = load_config().settings.geo
    values = dict(max_distance_km=g.max_distance_km, border_tolerance_km=g.border_tolerance_km,
                  max_offshore_km=g.max_offshore_km, offshore_neighbours=g.offshore_neighbours)
    return {**values, **overrides}


def problems(points: dict, country_regions, **overrides) -> dict:
    lat, lon, country = zip(*[p[:3] for p in points.values()])
    found = geo.coordinate_problems(np.array(lat), np.array(lon), list(country), country_regions, **limits(**overrides))
    return dict(zip(points, found))


# --------------------------------------------------------------------------------------------------------------------
# 1. Coordinates: the country, the sea, swapped pairs
# --------------------------------------------------------------------------------------------------------------------


def test_real_cities_stay_valid_and_bad_points_get_their_reason(country_regions) -> None:
    assert problems(GOOD, country_regions) == {name: None for name in GOOD}
    assert problems(BAD, country_regions) == {name: p[3] for name, p in BAD.items()}


def test_the_sea_rule_is_what_rejects_a_point_off_shore_and_spares_remote_land(country_regions) -> None:
    off_rio = {"off_rio": BAD["off_rio"]}
    assert problems(off_rio, country_regions)["off_rio"] == geo.COORDINATES_OUTSIDE_COUNTRY
    assert problems(off_rio, country_regions, max_offshore_km=None)["off_rio"] is None  # the old 300 km rule
    assert problems(off_rio, country_regions, max_offshore_km=100)["off_rio"] is None
    # Far from towns but on land, with towns all around: the Algerian Sahara (181 km from the nearest place),
    # Yellowstone (62 km) and the Salar de Uyuni (61 km) stay valid.
    remote = {"sahara": (23.0, 10.0, "DZ"), "yellowstone": (44.46, -110.38, "US"), "uyuni": (-20.13, -67.49, "BO")}
    assert problems(remote, country_regions) == {name: None for name in remote}
    assert geo.nearest_country([23.0], [10.0])[1][0] > 150


def test_the_country_not_only_the_region_is_checked(country_regions) -> None:
    # Barcelona is accepted as Spain and refused as France (same region), and a Spanish border town 2 km from Le
    # Perthus (FR) is accepted as France within the border tolerance but not without it.
    cases = {"es": (41.3874, 2.1686, "ES"), "fr": (41.3874, 2.1686, "FR"), "jonquera": (42.419, 2.875, "FR")}
    assert problems(cases, country_regions) == {"es": None, "fr": geo.COORDINATES_OUTSIDE_COUNTRY, "jonquera": None}
    strict = problems({"jonquera": cases["jonquera"]}, country_regions, border_tolerance_km=0)
    assert strict == {"jonquera": geo.COORDINATES_OUTSIDE_COUNTRY}


def test_swapped_pairs_are_recognised_only_when_the_swap_fits_better(country_regions) -> None:
    swapped = {name: (lon, lat, country) for name, (lat, lon, country) in GOOD.items() if abs(lon) <= 90}
    found = problems(swapped, country_regions)
    assert found["lagos"] == geo.COORDINATES_SWAPPED
    # Other swaps land far from their country, where the swap rule has nothing to prefer; none is accepted.
    assert all(reason in (geo.COORDINATES_SWAPPED, geo.COORDINATES_OUTSIDE_COUNTRY) for reason in found.values())
    # Without the sea rule, Lagos' swap (an acceptable point at sea) is valid and nothing is called swapped.
    assert problems({"lagos": swapped["lagos"]}, country_regions, max_offshore_km=None) == {"lagos": None}


def test_ingest_quarantines_swapped_foreign_and_offshore_rows(spark, store, cfg, tmp_path) -> None:
    rows = [dict(PARIS, video_id=name, lat=str(p[0]), lon=str(p[1]), country=p[2])
            for name, p in {**GOOD, **BAD}.items()]
    report = run_ingest(spark, cfg, store, write_csv(tmp_path / "geo.csv", rows))
    assert report.reconciles and (report.rows_in, report.new, report.quarantined) == (len(rows), len(GOOD), len(BAD))
    assert sorted(store.table(UPLOADS).read().toPandas().video_id) == sorted(GOOD)
    q = store.table(QUARANTINE).read().toPandas().set_index("video_id")
    assert q["reason"].to_dict() == {name: p[3] for name, p in BAD.items()}
    assert q.loc["lagos_swapped", "detail"] == ("lat=3.3792 lon=6.5244 look swapped: read the other way round "
                                                "(lat=6.5244, lon=3.3792) they make a plausible point in country NG")
    assert "geo.max_offshore_km" in q.loc["off_rio", "detail"]


# --------------------------------------------------------------------------------------------------------------------
# 2. Messages that say what happened
# --------------------------------------------------------------------------------------------------------------------


def test_duplicated_header_is_named_as_such(spark, store, cfg, tmp_path) -> None:
    header = COLUMNS + ["title"]
    path = tmp_path / "dup.csv"
    path.write_text(",".join(header) + "\nv1,/v/a.mp4,48.85,2.35,FR,2021-06-01T12:00:00Z,a,b,c\n", encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        run_ingest(spark, cfg, store, str(path))
    message = str(info.value)
    assert "column 'title' appears 2 times in the header" in message
    assert "title6" not in message and "title8" not in message and "missing" not in message
    # The fsspec path (pandas renames the second 'title' to 'title.1') says the same.
    import fsspec

    with fsspec.open("memory://robustness/dup.csv", "wb") as handle:
        handle.write(path.read_bytes())
    with pytest.raises(ManifestError, match="column 'title' appears 2 times in the header"):
        run_ingest(spark, cfg, store, "memory://robustness/dup.csv")
    assert not store.table(UPLOADS).exists() or store.table(UPLOADS).read().count() == 0


def test_tied_upload_time_is_reported_as_a_tie_and_the_later_row_wins(spark, store, cfg, tmp_path) -> None:
    rows = [dict(PARIS, video_id="t1", title="first"), dict(PARIS, video_id="t1", title="second"),
            dict(PARIS, video_id="t2", title="old", upload_time="2021-01-01T00:00:00Z"),
            dict(PARIS, video_id="t2", title="new", upload_time="2021-02-01T00:00:00Z")]
    report = run_ingest(spark, cfg, store, write_csv(tmp_path / "tie.csv", rows))
    assert report.reconciles and (report.new, report.quarantined) == (2, 2)
    assert store.table(UPLOADS).read().toPandas().set_index("video_id")["title"].to_dict() == {"t1": "second",
                                                                                                "t2": "new"}
    q = store.table(QUARANTINE).read().toPandas()
    detail = {json.loads(r)["title"]: d for r, d in zip(q["source_row"], q["detail"])}
    assert detail["first"] == ("another row of this video_id in the same manifest has the same upload_time "
                               "(2021-06-01 12:00:00); the tie is broken by manifest order: the later row wins")
    assert detail["old"] == "a later upload of this video_id (2021-02-01 00:00:00) is in the same manifest"


# --------------------------------------------------------------------------------------------------------------------
# 4. User mistakes through the real CLI: one line, exit 2
# --------------------------------------------------------------------------------------------------------------------


def test_unknown_scheme_in_process(spark, store, cfg) -> None:
    """The same refusal without a CLI (and its JVM start-up): a scheme neither Hadoop nor fsspec knows."""
    with pytest.raises(ManifestError, match=r"^unsupported URI scheme 's3x://' in manifest s3x://bucket/m.csv: "):
        run_ingest(spark, cfg, store, "s3x://bucket/m.csv")


def _media(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """Manifest paths and the message each must give: real files (a video from an installed package renamed .csv,
    matplotlib's own PNG icon renamed .csv), a path that does not exist, and a scheme nothing can read."""
    from cxatlas.sim.media_corpus import source_paths

    video = tmp_path / "video.csv"
    shutil.copyfile(source_paths()["single_face"], video)
    image = tmp_path / "icon.csv"
    shutil.copyfile(Path(matplotlib.get_data_path()) / "images" / "home.png", image)
    return {
        "missing": (str(tmp_path / "no_such_manifest.csv"), "manifest not found: "),
        "ftp2": ("ftp2://x/y.csv", "unsupported URI scheme 'ftp2://' in manifest ftp2://x/y.csv"),
        "video": (str(video), "is not a CSV text file: it looks like an MP4/MOV video"),
        "image": (str(image), "is not a CSV text file: it looks like a PNG image"),
    }


def test_user_mistakes_are_one_line_and_exit_2_through_the_cli(tmp_path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cases = _media(tmp_path)
    # One CLI process per mistake, run side by side: each pays a JVM start-up, the slow part.
    running = {name: subprocess.Popen([sys.executable, "-m", "cxatlas.cli", "--data", str(tmp_path / name),
                                       "--set", "spark.master=local[1]", "ingest", "--manifest", manifest],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                                      cwd=tmp_path, env=env)
               for name, (manifest, _) in cases.items()}
    failures = []
    for name, process in running.items():
        _, stderr = process.communicate(timeout=300)
        lines = stderr.strip().splitlines()
        last = lines[-1] if lines else ""
        # No Python traceback, and no Java stack trace either (Spark logs one when it is left to find out).
        if not (process.returncode == 2 and last.startswith("cxatlas ingest: error: ") and cases[name][1] in last
                and not any("Traceback" in line or line.startswith("\tat ") for line in lines)):
            failures.append(f"{name}: rc={process.returncode} last={last!r}\n{stderr[-2000:]}")
    assert not failures, "\n".join(failures)
