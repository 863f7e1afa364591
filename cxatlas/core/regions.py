"""The 12 world regions of Cowen et al. (2021) and the country -> region table.

Why this module exists: the paper reports every statistic per world region, and its public files name regions by
display names such as ``SoutheastAsia(Mainland)`` -- fine as file names, awkward as column values, Delta partition
values or dictionary keys. cxatlas therefore identifies a region by a stable snake_case id (``southeast_asia_mainland``)
and keeps the paper's display name only for reading and writing the paper's files.

The paper did not publish which country belongs to which region; ``conf/regions.csv`` holds the mapping the cxatlas
engineers built (its ``#`` header explains the rules). :func:`load_country_regions` reads it and validates it strictly,
because a typo there would silently move a whole country out of the analysis.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from os import PathLike

__all__ = [
    "Region",
    "REGIONS",
    "REGION_IDS",
    "region_by_id",
    "region_by_display_name",
    "load_country_regions",
]


@dataclass(frozen=True)
class Region:
    """One world region.

    Attributes
    ----------
    id : str
        Stable snake_case identifier used in tables, configs and code (``us_canada``).
    display_name : str
        The name exactly as the paper's published files spell it (``USCanada``), needed to read/write those files.
    """

    id: str
    display_name: str


# Alphabetical by display name: the order of the paper's published files, so loops over regions line up with them.
REGIONS: tuple[Region, ...] = (
    Region("africa", "Africa"),
    Region("brazil", "Brazil"),
    Region("central_northern_europe", "CentralNorthernEurope"),
    Region("east_asia", "EastAsia"),
    Region("eastern_europe", "EasternEurope"),
    Region("hispanic_america", "HispanicAmerica"),
    Region("indian_subcontinent", "IndianSubcontinent"),
    Region("middle_east", "MiddleEast"),
    Region("southeast_asia_mainland", "SoutheastAsia(Mainland)"),
    Region("southeast_asia_maritime", "SoutheastAsia(Maritime)"),
    Region("us_canada", "USCanada"),
    Region("western_europe", "WesternEurope"),
)

REGION_IDS: tuple[str, ...] = tuple(r.id for r in REGIONS)

_BY_ID: dict[str, Region] = {r.id: r for r in REGIONS}
_BY_DISPLAY: dict[str, Region] = {r.display_name: r for r in REGIONS}

_HEADER = ("country_code", "country_name", "region_id")
_CODE_RE = re.compile(r"[A-Z]{2}")


def region_by_id(region_id: str) -> Region:
    """Return the region with this snake_case id.

    Raises
    ------
    KeyError
        For an unknown id; the message lists the valid ids so a config typo is easy to fix.
    """
    try:
        return _BY_ID[region_id]
    except KeyError:
        raise KeyError(f"unknown region id {region_id!r}; valid ids: {', '.join(REGION_IDS)}") from None


def region_by_display_name(name: str) -> Region:
    """Return the region whose paper display name is ``name`` (e.g. ``"SoutheastAsia(Maritime)"``).

    Matching is exact: the display names are file-name fragments of the published data, so a near-miss is a bug.

    Raises
    ------
    KeyError
        For an unknown display name.
    """
    try:
        return _BY_DISPLAY[name]
    except KeyError:
        valid = ", ".join(r.display_name for r in REGIONS)
        raise KeyError(f"unknown region display name {name!r}; valid names: {valid}") from None


def load_country_regions(path: str | PathLike[str]) -> dict[str, str | None]:
    """Read a country -> region table such as ``conf/regions.csv``.

    The file is CSV (UTF-8) with the header ``country_code,country_name,region_id``; lines starting with ``#`` and
    blank lines are skipped (the header comments document how the mapping was made). ``region_id`` may be empty:
    the country belongs to no region.

    Parameters
    ----------
    path : str or path-like
        The CSV file.

    Returns
    -------
    dict[str, str | None]
        Upper-case ISO 3166-1 alpha-2 code -> region id, or None for a country in no region.

    Raises
    ------
    ValueError
        Naming the file and line, for a missing/wrong header, a wrong number of fields, a code that is not two
        letters A-Z, a duplicated code, or a region id not in :data:`REGION_IDS`. Strict on purpose: a silently
        skipped row would drop a country's videos from every statistic.
    """
    result: dict[str, str | None] = {}
    header_seen = False
    with open(path, encoding="utf-8", newline="") as handle:
        for lineno, line in enumerate(handle, start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            fields = [f.strip() for f in next(csv.reader([stripped]))]
            where = f"{path}, line {lineno}"
            if not header_seen:
                if tuple(fields) != _HEADER:
                    raise ValueError(f"{where}: expected header {','.join(_HEADER)!r}, got {stripped!r}")
                header_seen = True
                continue
            if len(fields) != len(_HEADER):
                raise ValueError(f"{where}: expected {len(_HEADER)} fields, got {len(fields)}: {stripped!r}")
            code, _name, region_id = fields
            if not _CODE_RE.fullmatch(code):
                raise ValueError(f"{where}: country code {code!r} is not two upper-case letters")
            if code in result:
                raise ValueError(f"{where}: duplicate country code {code!r}")
            if region_id and region_id not in _BY_ID:
                raise ValueError(
                    f"{where}: unknown region id {region_id!r} for {code}; valid ids: {', '.join(REGION_IDS)}"
                )
            result[code] = region_id or None
    if not header_seen:
        raise ValueError(f"{path}: no header line {','.join(_HEADER)!r} found (empty file?)")
    return result
