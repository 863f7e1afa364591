"""The heavy pass of an analysis: choose and join its inputs, then one distributed pass to sufficient sums.

Only small partial sums reach the driver; see :mod:`cxatlas.udfs.moments` for the executor side.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Sequence

from cxatlas.core.regions import REGION_IDS
from cxatlas.core.schemas import EXPR_PREFIX, UPLOADS, VIDEO_CONTEXTS, VIDEO_EXPRESSIONS, live_uploads
from cxatlas.core.settings import AnalyzeSettings, ContextSettings
from cxatlas.stages.analyze.settings import AnalyzeError
from cxatlas.stats import CcaMoments, Moments
from cxatlas.udfs.moments import PARTIAL_SCHEMA, GeobinSums, MomentsPass, assemble, combine_partials
from cxatlas.warehouse.tables import TableStore

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    """The three input tables, each read once at a pinned Delta version (a consistent snapshot for the analysis)."""

    versions: dict[str, int]
    uploads: Any
    expressions: Any
    contexts: Any

    @classmethod
    def read(cls, store: TableStore) -> "Inputs":
        frames, versions = {}, {}
        for spec in (UPLOADS, VIDEO_EXPRESSIONS, VIDEO_CONTEXTS):
            table = store.table(spec)
            if not table.exists():
                raise AnalyzeError(f"table '{spec.name}' does not exist under {store.root}: run `cxatlas ingest` and "
                                   f"`cxatlas annotate`, or `cxatlas import-annotations`, first")
            versions[spec.name] = table.version()
            frames[spec.name] = table.read_unique(versions[spec.name])
        return cls(versions, frames[UPLOADS.name], frames[VIDEO_EXPRESSIONS.name], frames[VIDEO_CONTEXTS.name])


def _choose(options: list[tuple], wanted: dict[str, str | None], what: str, setting: str) -> tuple:
    """Pick the one option matching the wanted values (None = any); refuse ambiguity with the choices listed."""
    names = list(wanted)
    matches = [o for o in options if all(w is None or o[i] == w for i, w in enumerate(wanted.values()))]
    listing = ", ".join("/".join(str(x) for x in o) for o in sorted(options, key=str)) or "none"
    if not matches:
        raise AnalyzeError(f"no {what} rows with {dict(wanted)}; present ({'/'.join(names)}): {listing}")
    if len(matches) > 1:
        raise AnalyzeError(f"several {what} ({'/'.join(names)}) are present: {listing}; choose one with {setting}")
    return matches[0]


def resolve_inputs(inputs: Inputs, settings: AnalyzeSettings) -> tuple[str, str, str, list[str], int]:
    """The expression model version, context model version, taxonomy and expression columns of the analysis.

    Each may be set in ``analyze:`` (or on the command line); when not set it must be unambiguous in the tables.
    Expression columns default to those the chosen model filled (any non-null value): ``video_expressions`` holds
    the union of every model's labels. Two small aggregations, one per annotation table.

    Returns
    -------
    (expression_model_version, context_model_version, taxonomy, expression_columns, expression_rows)
    """
    from pyspark.sql import functions as F

    candidates = [c for c in inputs.expressions.columns if c.startswith(EXPR_PREFIX)]
    per_version = {r["model_version"]: r for r in inputs.expressions.groupBy("model_version").agg(
        F.count(F.lit(1)).alias("_rows"), *[F.count(F.col(c)).alias(c) for c in candidates]).collect()}
    (expr_version,) = _choose([(v,) for v in per_version], {"model_version": settings.expression_model_version},
                              "expression model versions", "--set analyze.expression_model_version=...")
    if settings.context_model_version is not None and settings.taxonomy is not None:
        cx_options = [(settings.context_model_version, settings.taxonomy)]  # checked by the join (0 rows: error)
    else:
        cx_options = [(r[0], r[1]) for r in inputs.contexts.select("model_version", "taxonomy").distinct().collect()]
    ctx_version, taxonomy = _choose(cx_options, {"model_version": settings.context_model_version,
                                                 "taxonomy": settings.taxonomy},
                                    "context model versions / taxonomies",
                                    "--set analyze.context_model_version=... / analyze.taxonomy=...")
    counts = per_version[expr_version]
    if settings.expressions:
        from cxatlas.core.schemas import label_to_column

        columns = [c if c.startswith(EXPR_PREFIX) else label_to_column(c) for c in settings.expressions]
        missing = [c for c in columns if c not in candidates]
        if missing:
            raise AnalyzeError(f"analyze.expressions names columns not in video_expressions: {missing}")
    else:
        columns = [c for c in candidates if counts[c] > 0]
    if not columns:
        raise AnalyzeError(f"expression model {expr_version} has no non-null expr_* column")
    return expr_version, ctx_version, taxonomy, columns, int(counts["_rows"])


def taxonomy_labels(inputs: Inputs, ctx_version: str, taxonomy: str) -> list[str]:
    """The context labels in column order: the taxonomy's own order when it can be loaded (a built-in name or a
    file), else the labels present in the data, sorted (e.g. an imported taxonomy)."""
    from pyspark.sql import functions as F

    from cxatlas.core.taxonomies import load_taxonomy

    try:
        return list(load_taxonomy(taxonomy).labels)
    except (FileNotFoundError, ValueError):
        pass
    rows = (inputs.contexts.filter((F.col("model_version") == ctx_version) & (F.col("taxonomy") == taxonomy))
            .select(F.explode("contexts.label").alias("label")).distinct().collect())
    return sorted(r[0] for r in rows if r[0] is not None)


def prepare_input(inputs: Inputs, expr_version: str, ctx_version: str, taxonomy: str,
                  expr_columns: Sequence[str], sample_seed: int = 0, broadcast: bool = False,
                  exclude_labels: Sequence[str] = (), occur_threshold: float = 0.5, excluded_only: bool = False):
    """The analysed videos, one row each: annotations joined with ``uploads`` (region not null, a known region).

    Columns: ``_region`` (code in :data:`cxatlas.core.regions.REGION_IDS` order), ``_hash`` = ``xxhash64(video_id)``
    (bootstrap weights), ``_key`` = ``xxhash64(salt, video_id)`` (an independent order for the CCA sample),
    ``lat_bin``, ``lon_bin``, the expression columns (rows with any null or NaN score are left out: no face found)
    and ``contexts``. Region and geobin come from ``uploads`` (the table of record), not from the annotation rows.

    ``broadcast=True`` joins the narrow sides (uploads, then expressions) as broadcast hash tables, so the wide
    context rows stream through without a shuffle or sort; it needs the expression rows to fit in executor memory
    (``analyze.broadcast_max_rows``). Otherwise Spark shuffles all three sides by ``video_id``.

    ``exclude_labels`` (the video filter, :func:`video_filter_labels`) leaves out videos in which one of those labels
    occurred (score >= ``occur_threshold``); ``excluded_only=True`` returns just those videos instead (to count them).
    """
    from pyspark.sql import functions as F

    expr_ok = F.lit(True)
    for c in expr_columns:
        expr_ok = expr_ok & F.col(c).isNotNull() & ~F.isnan(F.col(c))
    ex = inputs.expressions.filter((F.col("model_version") == expr_version) & expr_ok).select("video_id",
                                                                                            *expr_columns)
    cx = (inputs.contexts.filter((F.col("model_version") == ctx_version) & (F.col("taxonomy") == taxonomy))
          .select("video_id", "contexts"))
    up = live_uploads(inputs.uploads).filter(F.col("region").isin(list(REGION_IDS))).select("video_id", "region", "lat_bin",
                                                                              "lon_bin")
    region_code = F.create_map(*[x for i, r in enumerate(REGION_IDS) for x in (F.lit(r), F.lit(i))])
    if broadcast:
        joined = cx.join(F.broadcast(ex.join(F.broadcast(up), "video_id")), "video_id")
    else:
        joined = ex.join(cx, "video_id").join(up, "video_id")
    if exclude_labels or excluded_only:
        hit = F.exists("contexts", lambda c: c["label"].isin(list(exclude_labels)) & (c["score"] >= occur_threshold))
        joined = joined.filter(hit if excluded_only else ~hit)
    return joined.select(
        region_code[F.col("region")].cast("int").alias("_region"),
        F.xxhash64("video_id").alias("_hash"),
        F.xxhash64(F.lit(f"cxatlas-cca-sample-{sample_seed}"), F.col("video_id")).alias("_key"),
        F.col("lat_bin"), F.col("lon_bin"), *[F.col(c) for c in expr_columns], F.col("contexts"),
    )


def video_filter_labels(taxonomy: str, settings: AnalyzeSettings, context: ContextSettings) -> tuple[str, ...]:
    """The labels whose occurrence leaves a video out of this analysis (empty: no filter).

    Cowen et al. (2021), Methods, experiment 1: "we filtered out videos predicted by the video topic annotations to
    include video games and other animated content". cxatlas scores ``annotate.context.filter_labels`` in addition
    to the taxonomies of ``annotate.context.filter_taxonomies`` (:func:`cxatlas.models.annotation.scored_labels`);
    ``analyze.video_filter`` applies the filter to analyses of those taxonomies.
    """
    if not settings.video_filter or taxonomy not in context.filter_taxonomies:
        return ()
    return tuple(dict.fromkeys(context.filter_labels))


def describe_video_filter(taxonomy: str, labels: Sequence[str], excluded: int | None, enabled: bool) -> str:
    """The analysis record's sentence about the video filter."""
    if not labels:
        why = ("analyze.video_filter is off" if not enabled else
               f"taxonomy {taxonomy!r} is not one of annotate.context.filter_taxonomies (imported and simulated "
               "annotations carry no filter scores)")
        return f"no video filter: {why}"
    return (f"left out {excluded} videos in which {', '.join(repr(x) for x in labels)} occurred (experiment 1's "
            "video-game and animation filter); annotations imported under this taxonomy carry no filter scores, so "
            "none of them is left out")


# --------------------------------------------------------------------------------------------------------------------
# The heavy pass
# --------------------------------------------------------------------------------------------------------------------
def compute_sums(prepared, expr_columns: Sequence[str], labels: Sequence[str], settings: AnalyzeSettings
                 ) -> tuple[Moments, CcaMoments, GeobinSums]:
    """Run :class:`cxatlas.udfs.moments.MomentsPass` over the prepared rows and add the partials (on the executors).

    The balanced CCA sample (``settings.cca.per_region`` videos per region with the smallest ``_key``) is drawn in
    the same pass: tasks send their per-region bottom-k candidates, the combine step keeps the global bottom-k.
    """
    n_regions = len(REGION_IDS)
    per_region = settings.cca.per_region if settings.cca.balance == "subsample" else None
    rows = combined_partials(prepared, expr_columns, labels, settings, per_region)
    return assemble(rows, n_regions, settings.replicates + 1, len(expr_columns), len(labels))


def moments_pass(expr_columns: Sequence[str], labels: Sequence[str], settings: AnalyzeSettings,
                 cca_per_region: int | None, emit_candidates: bool = False) -> MomentsPass:
    """The executor function of the heavy pass for these settings.

    ``cca_per_region`` is the bottom-k size per region (None: every video in the CCA sums); ``emit_candidates``
    returns the bottom-k rows themselves instead of their CCA sums (see :mod:`.incremental`).
    """
    # The one-region CCA is fitted on every video of its region unless analyze.cca.fit_region_sample=per_region.
    all_regions = [REGION_IDS.index(settings.cca.fit_region)] if settings.cca.fit_region_sample == "all" else []
    return MomentsPass(expr_columns=list(expr_columns), labels=list(labels), n_regions=len(REGION_IDS),
                       n_replicates=settings.replicates, seed=settings.seed, cca_per_region=cca_per_region,
                       cca_all_regions=all_regions, occur_threshold=settings.occur_threshold,
                       batch_rows=settings.batch_rows, chunk_rows=settings.chunk_rows,
                       geobin_shards=settings.geobin_shards, emit_candidates=emit_candidates)


def combined_partials(prepared, expr_columns: Sequence[str], labels: Sequence[str], settings: AnalyzeSettings,
                      cca_per_region: int | None, emit_candidates: bool = False) -> list[tuple[str, int, bytes]]:
    """The heavy pass itself: ``(kind, key, payload)`` rows, one per (kind, key), combined on the executors."""
    task = moments_pass(expr_columns, labels, settings, cca_per_region, emit_candidates)
    partials = prepared.coalesce(settings.partitions).mapInArrow(task, PARTIAL_SCHEMA)
    combine = functools.partial(combine_partials, prediction_per_region=settings.prediction_per_region)
    combined = partials.groupBy("kind", "key").applyInPandas(combine, PARTIAL_SCHEMA)
    return [(r["kind"], int(r["key"]), bytes(r["payload"])) for r in combined.collect()]


def local_partials(rows, expr_columns: Sequence[str], labels: Sequence[str], settings: AnalyzeSettings,
                   cca_per_region: int | None, emit_candidates: bool = False) -> list[tuple[str, int, bytes]]:
    """The same pass in this process over rows already collected (an Arrow table of prepared rows): for a few
    thousand changed videos, one collect beats scheduling Python workers and a shuffle."""
    import pandas as pd

    task = moments_pass(expr_columns, labels, settings, cca_per_region, emit_candidates)
    out = [batch.to_pandas() for batch in task(iter(rows.to_batches()))]
    if not out:
        return []
    partials = pd.concat(out, ignore_index=True)
    combined = [combine_partials(group, settings.prediction_per_region)
                for _, group in partials.groupby(["kind", "key"], sort=True)]
    return [(str(k), int(key), bytes(p)) for df in combined for k, key, p in df.itertuples(index=False)]
