"""Schemas of the tables of ``cxatlas release``: differentially private releases of the per-region
context x expression correlations, and the privacy budget they are charged to.

* ``releases``: one row per release: what was released from which analysis, the privacy parameters, the mechanism,
  the sensitivity bounds and the noise scale of every statistic, the library and its version.
* ``released_correlations``: the released (noisy) correlations, one row per (release, region, context, expression),
  with the noisy counts they were computed from; suppressed contexts have ``r`` null.
* ``privacy_ledger``: one row per charge to the data root's budget; ``seq`` is the key, so two releases racing for
  the same charge conflict in Delta and one of them re-reads what was spent.
"""
from __future__ import annotations

import pyarrow as pa

from cxatlas.core.schemas import TS, TableSpec, _f

_RID = _f("release_id", pa.string(), "the release (releases.release_id)", nullable=False)

RELEASES = TableSpec(
    name="releases",
    schema=pa.schema([
        _RID,
        _f("analysis_id", pa.string(), "the analysis whose correlations were released (analyses.analysis_id)"),
        _f("started", TS, "when the release started (UTC)"),
        _f("finished", TS, "when its tables were written (UTC)"),
        _f("epsilon", pa.float64(), "epsilon of the (epsilon, delta)-DP guarantee of this release"),
        _f("delta", pa.float64(), "delta of the (epsilon, delta)-DP guarantee of this release"),
        _f("rho", pa.float64(), "zero-concentrated DP (rho) of each region's measurement, OpenDP's privacy map"),
        _f("privacy_unit", pa.string(), "what is protected: one video, added or removed"),
        _f("mechanism", pa.string(), "the noise mechanism and how it was calibrated"),
        _f("correlation", pa.string(), "partial or semipartial (release.correlation)"),
        _f("sensitivity", pa.string(), "L2 sensitivity of each statistic under adding/removing one video, JSON"),
        _f("budget_shares", pa.string(), "share of each region's rho given to each statistic, JSON"),
        _f("noise_scale", pa.string(), "standard deviation of the Gaussian noise on each entry of each statistic "
                                       "(sums of scores, counts), JSON"),
        _f("clipping", pa.string(), "bounds that make the sensitivity hold: score range, max non-zero contexts per "
                                    "video, occurrence threshold, JSON"),
        _f("min_occurrences", pa.float64(), "a context is suppressed in a region when its noisy occurrence count is "
                                            "below this (release.min_occurrences)"),
        _f("n_videos", pa.int64(), "videos that entered the release's statistics (exact; not published in --out)"),
        _f("n_contexts", pa.int32(), "contexts of the taxonomy"),
        _f("n_suppressed", pa.int64(), "(region, context) pairs suppressed by their noisy count"),
        _f("suppressed", pa.string(), "suppressed contexts per region, JSON {region: [context, ...]}"),
        _f("library", pa.string(), "the differential-privacy library that added the noise"),
        _f("library_version", pa.string(), "its version"),
        _f("out_dir", pa.string(), "where the per-region CSVs were written"),
        _f("input_versions", pa.string(), "Delta versions of the input tables read (the analysis'), JSON"),
        _f("cxatlas_version", pa.string(), "cxatlas package version"),
    ]),
    partition_by=(),
    key=("release_id",),
    comment="One row per differentially private release: parameters, mechanism, sensitivity and noise scales.",
)

RELEASED_CORRELATIONS = TableSpec(
    name="released_correlations",
    schema=pa.schema([
        _RID,
        _f("region", pa.string(), "world region id (cxatlas.core.regions)"),
        _f("context", pa.string(), "context label of the analysis' taxonomy"),
        _f("expression", pa.string(), "expression column, expr_<label>"),
        _f("r", pa.float64(), "released (differentially private) correlation; null when the context is suppressed "
                              "in the region"),
        _f("suppressed", pa.bool_(), "true: the context's noisy occurrence count in the region was below "
                                     "releases.min_occurrences"),
        _f("noisy_occurrences", pa.float64(), "noisy count of the region's videos in which the context occurred"),
        _f("noisy_n_videos", pa.float64(), "noisy count of the region's videos"),
    ]),
    partition_by=(),
    key=("release_id", "region", "context", "expression"),
    comment="Differentially private per-region context x expression correlations, keyed by release.",
)

PRIVACY_LEDGER = TableSpec(
    name="privacy_ledger",
    schema=pa.schema([
        _f("seq", pa.int64(), "charge number, 1, 2, ... (the key: two releases racing for one number conflict)",
           nullable=False),
        _f("release_id", pa.string(), "the release charged"),
        _f("analysis_id", pa.string(), "its analysis"),
        _f("epsilon", pa.float64(), "epsilon charged"),
        _f("delta", pa.float64(), "delta charged"),
        _f("spent_epsilon", pa.float64(), "epsilon spent on this data root including this charge"),
        _f("spent_delta", pa.float64(), "delta spent on this data root including this charge"),
        _f("total_epsilon", pa.float64(), "the budget in force (release.total_epsilon)"),
        _f("total_delta", pa.float64(), "the budget in force (release.total_delta)"),
        _f("charged", TS, "when the charge was committed (UTC)"),
    ]),
    partition_by=(),
    key=("seq",),
    comment="The privacy budget of this data root: every release's (epsilon, delta), added up (sequential "
            "composition).",
)

RELEASE_TABLES: tuple[TableSpec, ...] = (RELEASES, RELEASED_CORRELATIONS, PRIVACY_LEDGER)
