"""Analysis settings checks, constants and the report of one analysis.

The settings themselves are :class:`cxatlas.core.settings.AnalyzeSettings` (built from the ``analyze:`` section of
the config, defaults in ``conf/local.yaml``); this module adds the checks that need more than a type.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from cxatlas.core.errors import UserError
from cxatlas.core.regions import REGION_IDS
from cxatlas.core.runs import new_run_id
from cxatlas.core.settings import AnalyzeSettings
from cxatlas.stats import CORRELATION_KINDS, CcaMoments, Moments
from cxatlas.udfs.moments import GeobinSums
from cxatlas.warehouse.tables import CommitResult

CCA_BALANCE = ("subsample", "reweight")
CCA_FIT_REGION_SAMPLE = ("all", "per_region")
BARTLETT_VARIANTS = ("bartlett", "lawley")
LORO = "leave_one_region_out"
BALANCED_FIT = "balanced_fit"


class AnalyzeError(UserError, ValueError):
    """The analysis cannot run as configured (no input, ambiguous model version, ...); the message says how to fix."""


def check_settings(settings: AnalyzeSettings) -> AnalyzeSettings:
    """Refuse settings that type-check but cannot work, naming the setting."""
    if settings.cca.balance not in CCA_BALANCE:
        raise AnalyzeError(f"analyze.cca.balance must be one of {CCA_BALANCE}, got {settings.cca.balance!r}")
    for value, allowed, name in ((settings.cca.fit_region_sample, CCA_FIT_REGION_SAMPLE, "cca.fit_region_sample"),
                                 (settings.cca.bartlett, BARTLETT_VARIANTS, "cca.bartlett"),
                                 (settings.correlation, CORRELATION_KINDS, "correlation")):
        if value not in allowed:
            raise AnalyzeError(f"analyze.{name} must be one of {allowed}, got {value!r}")
    if settings.replicates < 0:
        raise AnalyzeError("analyze.replicates must be >= 0")
    if settings.cca.fit_region not in REGION_IDS:
        raise AnalyzeError(f"analyze.cca.fit_region {settings.cca.fit_region!r} is not a region id: {REGION_IDS}")
    if settings.cca.per_region < 1 or settings.partitions < 1:
        raise AnalyzeError("analyze.cca.per_region and analyze.partitions must be >= 1")
    return settings


def new_analysis_id() -> str:
    """Analysis ids are run ids (UTC timestamp + random suffix)."""
    return new_run_id()


@dataclass
class AnalyzeReport:
    """What one analysis did. ``moments``/``cca_moments``/``geobins`` hold the combined sums (for tests/benchmarks)."""

    analysis_id: str
    settings: AnalyzeSettings
    expression_model_version: str = ""
    context_model_version: str = ""
    taxonomy: str = ""
    expressions: list[str] = field(default_factory=list)
    n_contexts: int = 0
    n_contexts_analysed: int = 0
    expression_rows: int = 0
    videos_per_region: dict[str, int] = field(default_factory=dict)
    input_versions: dict[str, int] = field(default_factory=dict)
    commits: dict[str, CommitResult] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    sums: dict = field(default_factory=dict)  # incremental runs: mode (current | incremental | full), changed, reason
    n_videos_filtered: int = 0  # left out by the video filter (experiment 1: video games, animation)
    video_filter: str = ""      # what the filter did, or why none applied
    seconds: float = 0.0
    moments: Moments | None = field(default=None, repr=False)
    cca_moments: CcaMoments | None = field(default=None, repr=False)
    geobins: GeobinSums | None = field(default=None, repr=False)

    @property
    def n_videos(self) -> int:
        return int(sum(self.videos_per_region.values()))

    def summary(self) -> str:
        lines = [
            f"analysis {self.analysis_id} in {self.seconds:.1f}s "
            f"({', '.join(f'{k} {v:.1f}s' for k, v in self.stage_seconds.items())})",
            f"  expressions: model {self.expression_model_version} ({len(self.expressions)} columns); contexts: "
            f"model {self.context_model_version}, taxonomy {self.taxonomy} ({self.n_contexts_analysed} of "
            f"{self.n_contexts} contexts analysed)",
            f"  videos analysed: {self.n_videos} of {self.expression_rows} expression rows "
            f"(the rest lack scores, a context row or a region)",
            f"  video filter: {self.video_filter}",
            "  per region: " + ", ".join(f"{r}={n}" for r, n in self.videos_per_region.items()),
            f"  bootstrap: {self.settings.replicates} Poisson replicates (seed {self.settings.seed}); CCA: "
            + (f"balanced sample of {self.settings.cca.per_region} videos per region"
               if self.settings.cca.balance == "subsample" else "all videos, regions re-weighted to equal mass")
            + f", ridge {self.settings.cca.ridge}",
        ]
        if self.sums:
            lines.append(f"  sums: {self.sums.get('mode')} ({self.sums.get('reason')}); stored under stat_sums key "
                         f"{self.sums.get('sums_key')}")
        for name, commit in self.commits.items():
            lines.append(f"  {name}: " + (f"version {commit.version}, {commit.rows_written} rows"
                                          if commit.version is not None else "no rows"))
        if self.figures:
            lines.append(f"  figures: {os.path.dirname(next(iter(self.figures.values())))}/ "
                         f"({', '.join(sorted(os.path.basename(p) for p in self.figures.values()))})")
        return "\n".join(lines)
