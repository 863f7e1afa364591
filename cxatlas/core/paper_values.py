"""The published numbers of Cowen et al. (2021), Nature 589:251, keyed by the ``headline_numbers`` row that computes
the same quantity, and which experiment an analysis is compared with.

Why here: a number shown next to a paper's value must be the same quantity, so the pairing lives in one table that
the analysis (``headline_numbers.paper_value``), the report and ``compare-experiments`` all read. Each entry quotes
the sentence it comes from (``source``); the statistic that computes it quotes the same sentence in its docstring
(:mod:`cxatlas.stages.analyze.headline`). A row name absent here has no published counterpart (its paper columns
stay null).

Experiment 1 analysed contexts annotated from video content (653 contexts); experiment 2 contexts annotated from
titles and descriptions only (1,953 contexts). :func:`experiment_for_labels` picks the experiment whose context
labels an analysis shares most, so simulated or imported annotations over the 653 labels are compared with
experiment 1, and an unrelated taxonomy with neither.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

__all__ = ["PaperValue", "PAPER_VALUES", "EXPERIMENT_TAXONOMIES", "ExperimentMatch", "experiment_for_labels",
           "paper_value"]


@dataclass(frozen=True)
class PaperValue:
    """One published number: its value, its standard error where the paper gives one, and where it stands."""

    value: float
    se: float | None
    source: str


#: The built-in taxonomy of each experiment (``cxatlas.core.taxonomies``).
EXPERIMENT_TAXONOMIES: dict[int, str] = {1: "nature2021_exp1", 2: "nature2021_exp2"}

_POS_ALL = ("Fig. 2{p} legend: \"For {what} of contexts, we uncovered correlations with specific expressions that "
            "were positive in all 12 regions\"")
_DIMS = ("Fig. 3c legend: \"Correlations were positive for all 16 variates in all regions in both experiments, "
         "whether the CCA was trained on geographically balanced videos or on USA/Canada videos alone\"")

PAPER_VALUES: dict[int, dict[str, PaperValue]] = {
    1: {
        "n_videos": PaperValue(3_029_812, None, "Methods, Experiment 1: \"This yielded a total of 3,029,812 videos\""),
        "n_regions": PaperValue(12, None, "main text: 12 world regions"),
        "n_contexts": PaperValue(653, None, "Methods: 653 contexts from the video topic annotations (experiment 1)"),
        "contexts_positive_everywhere": PaperValue(0.496, None, _POS_ALL.format(p="a", what="about half (49.6%)")),
        "min_region_similarity": PaperValue(
            0.703, 0.008, "main text: \"correlations between world regions ... ranged from 0.703 (s.e., 0.008) "
                          "between the Indian subcontinent and East Asia\"; the same number is the \"70% (s.e., "
                          "0.8%)\" of variance shared with universal associations"),
        "sqrt_min_region_similarity": PaperValue(
            0.84, None, "main text: \"The square root of the minimum correlation between two regions (0.703) ... "
                        "yields a correlation of 0.84\""),
        "max_region_similarity": PaperValue(
            0.971, 0.005, "main text: \"to 0.971 (s.e., 0.005) between USA and Canada ... and western Europe\""),
        "mean_region_similarity": PaperValue(0.838, None, "main text: \"with a mean of 0.838\""),
        "min_region_vs_world_r2": PaperValue(
            0.701, 0.006, "main text: \"A minimum of 70.1% (s.e., 0.6%) of the variance was shared between an "
                          "individual region (the Indian subcontinent) and the world average\""),
        "mean_region_vs_world_r2": PaperValue(0.825, None, "main text: \"On average, 82.5% was shared.\""),
        "mean_best_match_r2": PaperValue(
            0.848, None, "main text: \"the variance each region shared with the region with which it was most "
                         "similar ... (84.8% compared with 82.5%)\""),
        "pair_r2_africa_middle_east": PaperValue(
            0.798, 0.016, "main text: \"Africa was most similar ... to the Middle East (r2 = 79.8%, s.e., 1.6%)\""),
        "pair_r2_middle_east_indian_subcontinent": PaperValue(
            0.850, 0.004, "main text: \"the Middle East to the Indian subcontinent (85.0%; s.e., 0.4%)\" (the "
                          "Discussion gives s.e. 0.8% for the same number)"),
        "pair_r2_africa_indian_subcontinent": PaperValue(
            0.673, 0.021, "main text: \"Africa and the Indian subcontinent were less similar to each other (67.3%; "
                          "s.e., 2.1%)\""),
        "pair_r2_middle_east_us_canada": PaperValue(
            0.639, 0.012, "Discussion: the Middle East shared \"only 63.9% (s.e., 1.2%)\" with the USA/Canada"),
        "pair_r2_indian_subcontinent_us_canada": PaperValue(
            0.538, 0.009, "Discussion: the Indian subcontinent shared \"53.8% (s.e., 0.9%)\" with the USA/Canada"),
        "world_r2_africa": PaperValue(
            0.821, 0.013, "main text: \"than to the world average (82.1% and 70.1%; s.e., 1.3% and 0.8%)\" (Africa)"),
        "world_r2_indian_subcontinent": PaperValue(
            0.701, 0.008, "main text: \"than to the world average (82.1% and 70.1%; s.e., 1.3% and 0.8%)\" "
                          "(Indian subcontinent)"),
        "world_average_closest_region": PaperValue(
            float("nan"), None, "Discussion: the world average \"is most correlated with maritime Southeast Asia "
                                "(Fig. 3b)\" (the paper names the region, southeast_asia_maritime, not its r2)"),
        "leave_one_region_out_dims_positive_everywhere": PaperValue(16, None, _DIMS),
        "fit_on_us_canada_dims_positive_everywhere": PaperValue(16, None, _DIMS),
        "leave_one_region_out_dims_significant": PaperValue(
            16, None, "Fig. 3c legend: 16 dimensions (P < 0.001, one-sided sign-rank test across regions; q < 0.001, "
                      "Benjamini-Hochberg)"),
        "fit_on_us_canada_n_videos": PaperValue(333_226, None, "Fig. 3c legend: \"the 333,226 videos from the "
                                                               "USA/Canada\""),
        "bartlett_chi2_last": PaperValue(860.4, None, "Extended Data Fig. 3: \"chi2 = 860.4 for 16 variates, P < 10-8, "
                                                      "Bartlett's chi2 test\" (read as the 16th sequential test)"),
        "geobin_expression_variance_share": PaperValue(
            0.02, None, "Fig. 4 legend: 0.5-degree bins \"accounting for approximately 2% of the variance in "
                        "expression annotations\""),
        "context_prediction_r": PaperValue(
            0.154, None, "Extended Data Fig. 7b: \"the expression predictions in actual videos from experiment 1 "
                         "(r = 0.154, tenfold ordinary least squares linear regression applied to a subset of 60,000 "
                         "videos from experiment 1; 5,000 from each of the 12 regions)\""),
    },
    2: {
        "n_videos": PaperValue(3_056_861, None, "Methods, Experiment 2: \"This yielded a total of 3,056,861 videos\""),
        "n_regions": PaperValue(12, None, "main text: 12 world regions"),
        "n_contexts": PaperValue(1953, None, "Methods: 1,953 contexts from the text topic annotations (experiment 2)"),
        "contexts_positive_everywhere": PaperValue(0.335, None, _POS_ALL.format(p="b", what="about a third (33.5%)")),
        "mean_region_similarity": PaperValue(0.596, None, "main text: \"with an average of 0.596\" (experiment 2)"),
        "min_region_similarity": PaperValue(
            0.159, 0.009, "Fig. 3a legend: \"r >= 0.159 (s.e., 0.009) for the Indian subcontinent, an outlier\""),
        "min_region_similarity_without_indian_subcontinent": PaperValue(
            0.490, 0.014, "Fig. 3a legend: \"r >= 0.490 (s.e., 0.014) for other regions\""),
        "leave_one_region_out_dims_positive_everywhere": PaperValue(16, None, _DIMS),
        "fit_on_us_canada_dims_positive_everywhere": PaperValue(16, None, _DIMS),
    },
}


def paper_value(experiment: int | None, name: str) -> PaperValue | None:
    """The published value paired with headline row ``name`` in ``experiment`` (None where there is none)."""
    return PAPER_VALUES.get(experiment or 0, {}).get(name)


@dataclass(frozen=True)
class ExperimentMatch:
    """Which experiment an analysis is compared with, and how much of its taxonomy that experiment shares."""

    experiment: int | None
    shared_labels: int
    n_labels: int

    def describe(self) -> str:
        if self.experiment is None:
            return (f"compared with neither experiment: none of its {self.n_labels} context labels is one of the "
                    "paper's")
        return (f"compared with experiment {self.experiment}: {self.shared_labels} of its {self.n_labels} context "
                f"labels are that experiment's")


def experiment_for_labels(labels: Sequence[str]) -> ExperimentMatch:
    """The experiment whose context labels ``labels`` share most (ties go to experiment 1).

    Imported or simulated annotations name no experiment; their labels decide, so a world simulated over the 653
    labels of experiment 1 is compared with experiment 1, and one over experiment 2's labels with experiment 2.
    """
    from cxatlas.core.taxonomies import load_taxonomy

    wanted = set(labels)
    shared = {e: len(wanted & set(load_taxonomy(t).labels)) for e, t in EXPERIMENT_TAXONOMIES.items()}
    best = max(shared, key=lambda e: (shared[e], -e))
    return ExperimentMatch(best if shared[best] > 0 else None, shared[best], len(wanted))
