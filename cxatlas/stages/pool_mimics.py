"""``cxatlas pool-mimics``: Brooks et al.'s seed/mimic targets, as a ratings table ``cxatlas train`` reads.

Brooks et al. (2024), STAR Methods: "For each seed image, we computed the average of all of the intensity ratings
assigned to all mimics of that seed image (both self-report and perceiver ratings of the mimic images) within each
country. These averages were scaled to be in the range [0,1] for each emotion concept in each country. ... During
model training, we assigned the 6x48 label vector of averages of each seed to each mimic image of the respective
seed (regardless of the country of the mimic, thus forcing the model to predict what the mimicked facial movements
mean to people in each country while ignoring ethnicity)."

Input: one row per rating of a mimic image: ``uri`` (the mimic image), ``country`` (the rater's), the seed column
(``--seed-column``, default ``seed_id``) and one numeric column per concept. Output ``--out`` (Parquet): one row per
mimic image and rating country, the concept columns holding that seed's mean over all ratings of all its mimics in
that country, plus the seed column. ``cxatlas train --ratings <out> --group-by <seed column>`` then averages per image
and country (a no-op: the rows already are means), scales each concept to [0, 1] per country, lays the targets out
``country:concept`` (brooks288's 288), and keeps every mimic of a seed on one side of the split (the mimics of one
seed share its targets: split by image, they would leak). ``--judgments`` also writes the seed judgments ``cxatlas
ppca`` compares the model's outputs with: one row per seed, ``<seed column>`` and ``country:concept`` columns
(unscaled means; PPCA's correlations do not depend on the scale). Reading taken: the judgments of a seed are the
ratings of its mimics (the data the paper had in each country).

Bad input (missing file or column, no numeric concept, a mimic under two seeds) is refused before anything is
written. pandas, in one process: ratings tables are hundreds of thousands of rows at most.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxatlas.core.errors import UserError

__all__ = ["PoolingError", "PoolReport", "pool_mimics"]


class PoolingError(UserError, ValueError):
    """Ratings that cannot be pooled by seed; the message names the file and what to change."""


@dataclass
class PoolReport:
    out: str
    judgments: str | None
    ratings: int
    mimics: int
    seeds: int
    countries: list[str]
    concepts: int

    def summary(self) -> str:
        return (f"pooled {self.ratings} ratings of {self.mimics} mimic images of {self.seeds} seeds in "
                f"{len(self.countries)} countries ({', '.join(self.countries)}) x {self.concepts} concepts: {self.out}"
                + (f"; seed judgments: {self.judgments}" if self.judgments else ""))


def _read(path: str) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise PoolingError(f"ratings {p} do not exist (a Parquet or CSV file)")
    try:
        with open(p, "rb") as fh:
            parquet = fh.read(4) == b"PAR1"
        return pd.read_parquet(p) if parquet else pd.read_csv(p, sep="\t" if p.suffix == ".tsv" else ",")
    except Exception as exc:  # noqa: BLE001 - parser errors are bad input
        raise PoolingError(f"cannot read ratings {p}: {exc}") from None


def pool_mimics(ratings: str, out: str, *, seed_column: str = "seed_id", judgments: str | None = None) -> PoolReport:
    """Pool ``ratings`` by seed and country (see the module docstring) and write ``out`` (and ``judgments``)."""
    df = _read(ratings)
    missing = [c for c in ("uri", "country", seed_column) if c not in df.columns]
    if missing:
        raise PoolingError(f"ratings {ratings} lack column(s) {missing}; expected uri (the mimic image), country "
                           f"(the rater's), {seed_column!r} (the seed it mimics) and numeric concept columns")
    concepts = [c for c in df.columns if c not in ("uri", "country", seed_column)
                and pd.api.types.is_numeric_dtype(df[c])]
    if not concepts:
        raise PoolingError(f"ratings {ratings} have no numeric concept column (columns: {list(df.columns)})")
    keys = df[["uri", "country", seed_column]]
    if keys.isna().any().any():
        row = int(keys.isna().any(axis=1).to_numpy().argmax())
        raise PoolingError(f"ratings {ratings} row {row + 2} has an empty uri, country or {seed_column}")
    df = df.astype({"uri": str, "country": str, seed_column: str})
    seeds_per_mimic = df.groupby("uri")[seed_column].nunique()
    if (seeds_per_mimic > 1).any():
        bad = seeds_per_mimic[seeds_per_mimic > 1].index[0]
        raise PoolingError(f"ratings {ratings}: mimic image {bad!r} is listed under more than one {seed_column}")
    # "the average of all of the intensity ratings assigned to all mimics of that seed image ... within each country"
    means = df.groupby([seed_column, "country"], as_index=False)[concepts].mean()
    mimics = df[["uri", seed_column]].drop_duplicates()
    # "assigned the 6x48 label vector of averages of each seed to each mimic image ... regardless of the country of
    # the mimic": every mimic gets a row for every country that rated its seed
    pooled = mimics.merge(means, on=seed_column, how="inner")[["uri", "country", seed_column, *concepts]]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    pooled.to_parquet(path, index=False)
    jpath = None
    if judgments:
        wide = means.pivot(index=seed_column, columns="country", values=concepts)
        wide.columns = [f"{country}:{concept}" for concept, country in wide.columns]
        countries = sorted(means["country"].unique())
        wide = wide[[f"{c}:{k}" for c in countries for k in concepts]].reset_index()
        jpath = Path(judgments)
        jpath.parent.mkdir(parents=True, exist_ok=True)
        wide.to_csv(jpath, index=False)
    return PoolReport(str(path), str(jpath) if jpath else None, len(df), len(mimics), means[seed_column].nunique(),
                      sorted(means["country"].unique()), len(concepts))
