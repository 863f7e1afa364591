"""Schemas of the statistics tables written by ``cxatlas analyze`` (one row set per analysis, keyed by analysis_id).

Every table carries ``analysis_id``; the ``analyses`` table says which inputs (table versions, model version,
taxonomy) and which parameters produced it, so any number can be traced back to the data it came from. Column
comments travel into the Delta schema and show in ``cxatlas sql "DESCRIBE ..."``.

Definitions follow Cowen et al. (2021), "Sixteen facial expressions occur in similar contexts worldwide", Nature
589:251, Methods; see :mod:`cxatlas.stats` for the formulas and :mod:`cxatlas.stages.analyze` for how they are computed.
"""
from __future__ import annotations

import pyarrow as pa

from cxatlas.core.schemas import TS, TableSpec, _f

_ID = _f("analysis_id", pa.string(), "the analysis that produced the row (analyses.analysis_id)", nullable=False)

CONTEXT_EXPRESSION_CORRELATIONS = TableSpec(
    name="context_expression_correlations",
    schema=pa.schema([
        _ID,
        _f("region", pa.string(), "world region id (cxatlas.core.regions)"),
        _f("context", pa.string(), "context label of the analysis' taxonomy"),
        _f("expression", pa.string(), "expression column, expr_<label>"),
        _f("r", pa.float64(), "partial correlation of the context score with the expression, controlling for the "
                              "other expressions, over the region's videos (semi-partial: only the expression "
                              "residualised, with analyze.correlation=semipartial; NaN: the context is constant)"),
        _f("se", pa.float64(), "bootstrap standard error of r (sd over the Poisson bootstrap replicates)"),
        _f("prevalence", pa.float64(), "share of the region's videos in which the context occurred (score >= "
                                       "analyze.occur_threshold), the weight p of the similarity statistics"),
        _f("prevalence_se", pa.float64(), "bootstrap standard error of the prevalence"),
        _f("occurrences", pa.int64(), "videos of the region whose context score reached analyze.occur_threshold"),
        _f("n_videos", pa.int64(), "videos of the region in the analysis"),
    ]),
    partition_by=(),
    key=("analysis_id", "region", "context", "expression"),
    comment="Per region: context x expression partial correlations with bootstrap SEs (Fig. 2 of the paper). "
            "Only contexts that occurred at least analyze.min_occurrences times are analysed.",
)

REGION_SIMILARITY = TableSpec(
    name="region_similarity",
    schema=pa.schema([
        _ID,
        _f("region_a", pa.string(), "world region id"),
        _f("region_b", pa.string(), "world region id"),
        _f("r", pa.float64(), "weighted Pearson correlation between the two regions' context x expression partial "
                              "correlation matrices; context c weighted by sqrt(p_ac(1-p_ac) p_bc(1-p_bc))"),
        _f("se", pa.float64(), "bootstrap standard error of r"),
    ]),
    partition_by=(),
    key=("analysis_id", "region_a", "region_b"),
    comment="How similar the context-expression associations of two regions are (Fig. 3a); all ordered pairs.",
)

REGION_VS_WORLD = TableSpec(
    name="region_vs_world",
    schema=pa.schema([
        _ID,
        _f("region", pa.string(), "world region id"),
        _f("r2", pa.float64(), "squared weighted correlation between the region's associations and the Fisher-z "
                               "average of the other regions' (the share of variance the rest of the world explains)"),
        _f("se", pa.float64(), "bootstrap standard error of r2"),
        _f("best_match_region", pa.string(), "the single other region whose associations share the most variance"),
        _f("best_match_r2", pa.float64(), "squared region_similarity.r with that region"),
        _f("best_match_se", pa.float64(), "bootstrap standard error of best_match_r2 (the same pair in every "
                                          "replicate)"),
        _f("best_match_agreement", pa.float64(), "share of bootstrap replicates whose best match is the same region"),
    ]),
    partition_by=(),
    key=("analysis_id", "region"),
    comment="How well the rest of the world predicts each region's context-expression associations (Fig. 3b).",
)

CCA_HELDOUT = TableSpec(
    name="cca_heldout",
    schema=pa.schema([
        _ID,
        _f("variant", pa.string(), "leave_one_region_out (fit on the balanced sample of the other regions) or "
                                   "fit_on_<region> (fit on that region alone)"),
        _f("dimension", pa.int32(), "canonical dimension, 1 = strongest in the fit"),
        _f("heldout_region", pa.string(), "region the fitted variates are evaluated on"),
        _f("r", pa.float64(), "correlation of the fitted expression and context variates in the held-out region"),
    ]),
    partition_by=(),
    key=("analysis_id", "variant", "dimension", "heldout_region"),
    comment="Canonical correlations between expressions and contexts evaluated on held-out regions (Fig. 3c).",
)

CCA_TESTS = TableSpec(
    name="cca_tests",
    schema=pa.schema([
        _ID,
        _f("variant", pa.string(), "leave_one_region_out / fit_on_<region> (Wilcoxon across held-out regions) or "
                                   "balanced_fit (Bartlett's test of the in-sample fit)"),
        _f("dimension", pa.int32(), "canonical dimension, 1 = strongest"),
        _f("test", pa.string(), "wilcoxon_signed_rank (one-sided, r > 0), or bartlett_chi2 / lawley_chi2 "
                                "(sequential: dims k..D all zero, df (E-k+1)(K-k+1); analyze.cca.bartlett)"),
        _f("statistic", pa.float64(), "W+ (sum of positive ranks) or the chi-square statistic"),
        _f("df", pa.float64(), "degrees of freedom of the chi-square test; null for Wilcoxon"),
        _f("p", pa.float64(), "p-value"),
        _f("q", pa.float64(), "Benjamini-Hochberg q-value over the dimensions of the same variant (Bartlett rows: "
                              "only with analyze.cca.bartlett_fdr)"),
        _f("rho", pa.float64(), "in-sample canonical correlation of the balanced fit (balanced_fit rows), or the "
                                "median held-out correlation (other variants)"),
    ]),
    partition_by=(),
    key=("analysis_id", "variant", "dimension"),
    comment="Which canonical dimensions are preserved across regions (Fig. 3c, Extended Data Fig. 3).",
)

GEOBIN_VARIATES = TableSpec(
    name="geobin_variates",
    schema=pa.schema([
        _ID,
        _f("lat_bin", pa.int32(), "floor(lat / geo.bin_deg)"),
        _f("lon_bin", pa.int32(), "floor(lon / geo.bin_deg)"),
        _f("n_videos", pa.int64(), "videos in the bin"),
        _f("variate_1", pa.float64(), "mean score of the videos on expression canonical variate 1 (balanced fit)"),
        _f("variate_2", pa.float64(), "mean score on expression canonical variate 2"),
        _f("variate_3", pa.float64(), "mean score on expression canonical variate 3"),
        _f("context_variate_1", pa.float64(), "mean score of the videos on context canonical variate 1"),
        _f("context_variate_2", pa.float64(), "mean score on context canonical variate 2"),
        _f("context_variate_3", pa.float64(), "mean score on context canonical variate 3"),
    ]),
    partition_by=(),
    key=("analysis_id", "lat_bin", "lon_bin"),
    comment="Mean canonical variate scores per geographic bin, mapped as RGB in Fig. 4.",
)

SIGN_AGREEMENT = TableSpec(
    name="sign_agreement",
    schema=pa.schema([
        _ID,
        _f("expression", pa.string(), "expression column, or 'all': contexts positive everywhere with any expression"),
        _f("share", pa.float64(), "share of analysed contexts whose correlation with the expression is positive in "
                                  "every region (Fig. 2's red rectangles); 'all': with at least one expression "
                                  "(49.6% / 33.5% in the paper's experiments 1 / 2)"),
        _f("se", pa.float64(), "bootstrap standard error of share"),
        _f("n_contexts", pa.int64(), "contexts with a finite correlation in every region (the denominator)"),
    ]),
    partition_by=(),
    key=("analysis_id", "expression"),
    comment="Contexts positive everywhere, per expression: how often an association is positive in all regions.",
)

CCA_LOADINGS = TableSpec(
    name="cca_loadings",
    schema=pa.schema([
        _ID,
        _f("variant", pa.string(), "balanced_fit (all regions' balanced sample) or fit_on_<region>"),
        _f("dimension", pa.int32(), "canonical dimension, 1 = strongest"),
        _f("side", pa.string(), "expression or context"),
        _f("feature", pa.string(), "expression column or context label"),
        _f("weight", pa.float64(), "canonical weight (variates have unit variance on the fit sample)"),
        _f("correlation", pa.float64(), "correlation of the feature with its side's canonical variate (structure "
                                        "coefficient; what drives the dimension, Extended Data Fig. 3)"),
    ]),
    partition_by=(),
    key=("analysis_id", "variant", "dimension", "side", "feature"),
    comment="What each canonical dimension is made of, on both sides.",
)

HEADLINE_NUMBERS = TableSpec(
    name="headline_numbers",
    schema=pa.schema([
        _ID,
        _f("name", pa.string(), "which number (contexts_positive_everywhere, min_region_similarity, ..., see README "
                                "statistics)"),
        _f("value", pa.float64(), "the estimate on the observed data"),
        _f("se", pa.float64(), "bootstrap standard error (null where the number has none, e.g. counts)"),
        _f("detail", pa.string(), "what it is, and e.g. which region pair it comes from, or why it is null"),
        _f("paper_value", pa.float64(), "the paper's value of the same quantity (experiment the analysis is compared "
                                        "with); null where the paper gives none or fewer than 12 regions entered"),
        _f("paper_se", pa.float64(), "the paper's standard error of that value, where it gives one"),
        _f("paper_source", pa.string(), "experiment, figure or sentence the paper value comes from"),
    ]),
    partition_by=(),
    key=("analysis_id", "name"),
    comment="The paper's summary numbers of one analysis, for the replication report.",
)

ANALYSES = TableSpec(
    name="analyses",
    schema=pa.schema([
        _ID,
        _f("started", TS, "when the analysis started (UTC)"),
        _f("finished", TS, "when its last result table was committed (UTC)"),
        _f("run_seconds", pa.float64(), "wall time of the analysis"),
        _f("stage_seconds", pa.string(), "JSON {stage: seconds}: where the run time went (inputs, heavy_pass, "
                                         "statistics, write_tables, figures, housekeeping)"),
        _f("expression_model_version", pa.string(), "video_expressions.model_version analysed"),
        _f("context_model_version", pa.string(), "video_contexts.model_version analysed"),
        _f("taxonomy", pa.string(), "video_contexts.taxonomy analysed"),
        _f("n_videos", pa.int64(), "videos in the analysis (annotated by both models, with a region)"),
        _f("n_contexts", pa.int32(), "contexts of the taxonomy"),
        _f("n_contexts_analysed", pa.int32(), "contexts passing the occurrence filter"),
        _f("n_expressions", pa.int32(), "expression columns analysed"),
        _f("n_replicates", pa.int32(), "bootstrap replicates (besides replicate 0, the observed data)"),
        _f("n_videos_filtered", pa.int64(), "videos left out by the video filter (experiment 1: video games and "
                                            "animation; analyze.video_filter); 0 when no filter applied"),
        _f("video_filter", pa.string(), "what the video filter did, or why none applied"),
        _f("parameters", pa.string(), "every setting of the analysis, JSON"),
        _f("input_versions", pa.string(), "Delta versions of the input tables read, JSON {table: version}"),
        _f("result_versions", pa.string(), "Delta versions of the result tables written, JSON {table: version}"),
        _f("figures_dir", pa.string(), "folder of the PNG figures"),
        _f("cxatlas_version", pa.string(), "cxatlas package version"),
    ]),
    partition_by=(),
    key=("analysis_id",),
    comment="One row per analysis: inputs, parameters and run time, so every result row can be traced back.",
)

EXPERIMENT_COMPARISON = TableSpec(
    name="experiment_comparison",
    schema=pa.schema([
        _f("comparison_id", pa.string(), "the comparison (cxatlas compare-experiments)", nullable=False),
        _f("name", pa.string(), "headline number (headline_numbers.name)"),
        _f("exp1_analysis_id", pa.string(), "the analysis against the experiment-1 taxonomy"),
        _f("exp2_analysis_id", pa.string(), "the analysis against the experiment-2 taxonomy"),
        _f("exp1_value", pa.float64(), "value in experiment 1"),
        _f("exp1_se", pa.float64(), "its bootstrap SE"),
        _f("exp2_value", pa.float64(), "value in experiment 2"),
        _f("exp2_se", pa.float64(), "its bootstrap SE"),
        _f("ratio", pa.float64(), "exp2_value / exp1_value (the paper: region similarities about 40% lower)"),
        _f("ratio_se", pa.float64(), "delta-method SE of the ratio, treating the two estimates as independent"),
        _f("paper_exp1", pa.float64(), "the paper's value in experiment 1, where it gives one"),
        _f("paper_exp2", pa.float64(), "the paper's value in experiment 2, where it gives one"),
    ]),
    partition_by=(),
    key=("comparison_id", "name"),
    comment="Headline numbers of the same annotations analysed against the two context taxonomies.",
)

RESULT_TABLES: tuple[TableSpec, ...] = (
    CONTEXT_EXPRESSION_CORRELATIONS, REGION_SIMILARITY, REGION_VS_WORLD, CCA_HELDOUT, CCA_TESTS, GEOBIN_VARIATES,
    SIGN_AGREEMENT, CCA_LOADINGS, HEADLINE_NUMBERS, ANALYSES,
)
