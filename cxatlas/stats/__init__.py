"""The statistics of Cowen et al. (2021), "Sixteen facial expressions occur in similar contexts worldwide",
Nature 589:251 (Methods), as pure numpy/scipy.

Heavy work is additive: Spark executors call :func:`accumulate` (and :func:`accumulate_cca`) on batches of videos
with deterministic Poisson bootstrap weights (:func:`poisson_weights`); the driver adds the partial
:class:`Moments` and runs the small algebra (:mod:`.correlation`, :mod:`.cca`, :mod:`.tests`). Never imports
pyspark.
"""
from .bootstrap import bootstrap_summary, poisson_weights, stable_hash
from .cca import (CcaFit, CovarianceBlocks, balanced_covariance, bartlett_test, canonical_correlations_on, cca_fit,
                  context_variates, expression_variates, fit_on_one_region, leave_one_region_out, rao_f_test)
from .correlation import (CORRELATION_KINDS, analysed_contexts, context_expression_correlations, fisher_mean,
                          mean_context_score, partial_correlations, prevalence, region_similarity,
                          region_similarity_batched, region_vs_world, region_vs_world_batched,
                          semipartial_correlations, weighted_pearson)
from .moments import (CcaMoments, CovarianceParts, Moments, accumulate, accumulate_cca, covariance_from_sums,
                      covariance_parts, variance_from_sums)
from .summaries import (cells_same_sign_everywhere, contexts_positive_everywhere, dims_positive_everywhere,
                        geobin_variance_share, structure_correlations, variate_tracking)
from .prediction import tenfold_prediction_r
from .tests import bh_qvalues, signed_rank_tests

__all__ = [
    "poisson_weights", "stable_hash", "bootstrap_summary",
    "Moments", "CcaMoments", "CovarianceParts", "accumulate", "accumulate_cca", "covariance_parts",
    "covariance_from_sums", "variance_from_sums",
    "partial_correlations", "semipartial_correlations", "prevalence", "mean_context_score", "CORRELATION_KINDS",
    "context_expression_correlations", "analysed_contexts", "weighted_pearson",
    "fisher_mean", "region_similarity", "region_similarity_batched", "region_vs_world", "region_vs_world_batched",
    "CcaFit", "CovarianceBlocks", "cca_fit", "canonical_correlations_on", "balanced_covariance",
    "leave_one_region_out", "fit_on_one_region", "bartlett_test", "rao_f_test", "expression_variates",
    "context_variates",
    "signed_rank_tests", "bh_qvalues",
    "contexts_positive_everywhere", "cells_same_sign_everywhere", "variate_tracking", "dims_positive_everywhere",
    "structure_correlations", "geobin_variance_share", "tenfold_prediction_r",
]
