"""``cxatlas analyze``: the statistics of Cowen et al. (2021) from the annotation tables, in one distributed pass.

Data flow (only small partial sums and the result rows ever reach the driver)::

    video_expressions (one model version)  --+
    video_contexts (one model version, one taxonomy) --join on video_id--> prepared rows
    uploads (region not null, geobin)  ------+
      -> mapInArrow(cxatlas.udfs.moments.MomentsPass): partial Moments (regions x replicates), geobin sums, and per region
         the candidate rows of the balanced CCA sample (each task's 25,000 smallest of a second hash)
      -> groupBy(kind, key).applyInPandas(combine_partials): sums added, CCA sample = global bottom-25,000 -> sums
      -> driver: cxatlas.stats algebra (partial correlations, region similarity, region vs world, CCA, tests)
      -> one commit per result table (cxatlas.core.result_schemas), the ``analyses`` row last, PNG figures

Definitions follow the paper's Methods (Cowen et al. 2021, Nature 589:251) as implemented in :mod:`cxatlas.stats`:
per region, the partial correlation of each context with each expression controlling for the other expressions;
prevalence = share of videos where the context occurred; a context is analysed when it occurred (score >= ``analyze.occur_threshold``) at
least ``analyze.min_occurrences`` times over all regions; region similarity and region-vs-world are weighted
correlations of the regions' context x expression matrices; CCA is fitted on a balanced sample (25,000 videos per
region, or all videos with regions re-weighted to equal mass) and evaluated on held-out regions. Standard errors
come from a one-pass Poisson bootstrap whose weights derive from ``(xxhash64(video_id), replicate, seed)``, so the
numbers do not depend on partitioning, executor count or retries.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time

import pandas as pd

from cxatlas import __version__
from cxatlas.core.config import Config, join_uri
from cxatlas.core.regions import REGION_IDS
from cxatlas.core.result_schemas import (ANALYSES, CCA_HELDOUT, CCA_LOADINGS, CCA_TESTS,
                                         CONTEXT_EXPRESSION_CORRELATIONS, GEOBIN_VARIATES, HEADLINE_NUMBERS,
                                         REGION_SIMILARITY, REGION_VS_WORLD, RESULT_TABLES, SIGN_AGREEMENT)
from cxatlas.core.runs import StageClock
from cxatlas.core.settings import AnalyzeSettings
from cxatlas.stages.analyze.results import ResultFrames, _to_spark, compute_results, write_figures
from cxatlas.stages.analyze.background import in_background
from cxatlas.stages.analyze.unfinished import start_removal
from cxatlas.stages.analyze.writing import create_in_background, write_result_tables
from cxatlas.stages.analyze.settings import (BALANCED_FIT, CCA_BALANCE, LORO, AnalyzeError, AnalyzeReport,
                                             check_settings, new_analysis_id)
from cxatlas.stages.analyze.sums import (Inputs, compute_sums, describe_video_filter, prepare_input, resolve_inputs,
                                         taxonomy_labels, video_filter_labels)
from cxatlas.warehouse.tables import TableStore

log = logging.getLogger(__name__)

__all__ = ["AnalyzeError", "AnalyzeReport", "AnalyzeSettings", "BALANCED_FIT", "CCA_BALANCE", "Inputs", "LORO",
           "ResultFrames", "compute_results", "compute_sums", "new_analysis_id", "prepare_input", "run_analyze"]


def run_analyze(spark, cfg: Config, store: TableStore, analysis_id: str | None = None,
                settings: AnalyzeSettings | None = None, incremental: bool = False) -> AnalyzeReport:
    """Run one analysis from the annotation tables to the result tables and figures.

    Parameters
    ----------
    spark, cfg, store : the session, configuration and table store.
    analysis_id : id of the analysis (default: UTC timestamp + random suffix); must have no ``analyses`` row yet
        (the id of a run killed before its ``analyses`` row may be reused: its invisible rows are replaced).
    settings : default ``cfg.settings.analyze`` (the ``analyze:`` section).

    Returns
    -------
    AnalyzeReport
    """
    from pyspark.sql import functions as F

    started = time.time()
    settings = check_settings(settings or cfg.settings.analyze)
    analyses = store.table(ANALYSES)
    if analysis_id and analyses.exists() and analyses.read().filter(F.col("analysis_id") == analysis_id).limit(1) \
            .count():
        raise AnalyzeError(f"analysis {analysis_id!r} already exists; choose another id")
    analysis_id = analysis_id or new_analysis_id()
    report = AnalyzeReport(analysis_id, settings)
    housekeeping = start_removal(store, cfg.settings.failures.unfinished_results_hours, keep=analysis_id)

    clock = StageClock(f"analyze {analysis_id}")
    clock.enter("inputs")
    inputs = Inputs.read(store)
    versions = report.input_versions = inputs.versions
    expr_version, ctx_version, taxonomy, expr_columns, expr_rows = resolve_inputs(inputs, settings)
    labels = taxonomy_labels(inputs, ctx_version, taxonomy)
    report.expression_model_version, report.context_model_version, report.taxonomy = expr_version, ctx_version, \
        taxonomy
    report.expressions, report.n_contexts, report.expression_rows = list(expr_columns), len(labels), expr_rows
    log.info("analyze %s: expressions %s (%d columns), contexts %s / %s (%d labels), tables %s", analysis_id,
             expr_version, len(expr_columns), ctx_version, taxonomy, len(labels), versions)
    created = create_in_background(store, RESULT_TABLES)  # the inputs are there: the analysis will write
    exclude = video_filter_labels(taxonomy, settings, cfg.settings.annotate.context)
    broadcast = expr_rows <= settings.broadcast_max_rows
    prepared = prepare_input(inputs, expr_version, ctx_version, taxonomy, expr_columns, settings.cca.sample_seed,
                             broadcast=broadcast, exclude_labels=exclude, occur_threshold=settings.occur_threshold)
    if exclude:
        report.n_videos_filtered = prepare_input(
            inputs, expr_version, ctx_version, taxonomy, expr_columns, broadcast=broadcast, exclude_labels=exclude,
            occur_threshold=settings.occur_threshold, excluded_only=True).count()
    report.video_filter = describe_video_filter(taxonomy, exclude, report.n_videos_filtered, settings.video_filter)

    clock.enter("heavy_pass")
    if incremental:  # the stored sums of this configuration, brought up to date (cxatlas.stages.analyze.incremental)
        from cxatlas.stages.analyze.incremental import current_sums, selection

        sel = selection(expr_version, ctx_version, taxonomy, expr_columns, labels, exclude)
        m, cm, geobins, report.sums = current_sums(store, inputs, sel, settings, cfg.settings.incremental,
                                                   analysis_id, full_prepared=prepared)
    else:
        m, cm, geobins = compute_sums(prepared, expr_columns, labels, settings)
    report.moments, report.cca_moments, report.geobins = m, cm, geobins
    report.videos_per_region = {r: int(n) for r, n in zip(REGION_IDS, m.n[:, 0]) if n > 0}
    if not report.videos_per_region:
        raise AnalyzeError("no video has expression scores, a context row and a region: nothing to analyse")

    clock.enter("statistics")
    frames = compute_results(m, cm, geobins, expr_columns, labels, settings)
    report.n_contexts_analysed = int(frames.analysed.sum())
    if report.n_contexts_analysed == 0:
        log.warning("no context occurred %d times (analyze.min_occurrences): correlation tables stay empty",
                    settings.min_occurrences)

    figures_dir = join_uri(cfg.data_root, settings.figures.dir, analysis_id)
    drawing = None
    if settings.figures.enabled:  # drawn in this process while the table writes wait on Spark and Delta
        drawing = in_background("cxatlas-figures", write_figures, frames, figures_dir, cfg.settings.geo.bin_deg,
                                settings.figures.dpi)

    clock.enter("write_tables")
    created.result()  # analyses before any result row: the views join on it (README "Statistics")
    report.commits.update(write_result_tables(spark, store, analysis_id, (
        (CONTEXT_EXPRESSION_CORRELATIONS, frames.correlations), (REGION_SIMILARITY, frames.similarity),
        (REGION_VS_WORLD, frames.world), (CCA_HELDOUT, frames.cca_heldout), (CCA_TESTS, frames.cca_tests),
        (GEOBIN_VARIATES, frames.geobins), (SIGN_AGREEMENT, frames.sign_agreement),
        (CCA_LOADINGS, frames.cca_loadings), (HEADLINE_NUMBERS, frames.headline))))

    if drawing is not None:
        clock.enter("figures")  # the wait for the drawing that did not end with the writes
        report.figures = drawing.result()

    # Housekeeping (rows that killed or failed analyses left, invisible already, are deleted; this one's are kept)
    # ran beside the analysis; it ends before the commit marker, and the wait for it is a stage of the row.
    clock.enter("housekeeping")
    housekeeping.result()
    clock.enter(None)
    report.stage_seconds = clock.seconds

    report.seconds = time.time() - started
    row = pd.DataFrame([dict(
        started=pd.Timestamp(int(started * 1e6), unit="us", tz="UTC"),
        finished=pd.Timestamp.now(tz="UTC").floor("us"),
        run_seconds=report.seconds, stage_seconds=json.dumps(report.stage_seconds, sort_keys=True),
        expression_model_version=expr_version, context_model_version=ctx_version,
        taxonomy=taxonomy, n_videos=report.n_videos, n_contexts=len(labels),
        n_contexts_analysed=report.n_contexts_analysed, n_expressions=len(expr_columns),
        n_replicates=settings.replicates, n_videos_filtered=report.n_videos_filtered,
        video_filter=report.video_filter, parameters=json.dumps(dataclasses.asdict(settings), sort_keys=True),
        input_versions=json.dumps(versions, sort_keys=True),
        result_versions=json.dumps({k: c.version for k, c in report.commits.items()}, sort_keys=True),
        figures_dir=figures_dir if report.figures else None, cxatlas_version=__version__)])
    # The commit marker: this row makes the result rows above visible. A MERGE on the id, so two runs of one id
    # cannot both commit it (the loser writes no row and its command fails).
    marker = _to_spark(spark, ANALYSES, row, analysis_id)
    report.commits[ANALYSES.name] = analyses.create_if_missing().insert_new(marker, evolve_schema=True,
                                                                           keys_unique=True)  # one row
    log.info("analysis %s finished in %.1fs", analysis_id, report.seconds)
    return report
