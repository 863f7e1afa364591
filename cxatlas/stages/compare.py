"""``cxatlas compare-experiments``: the same annotations analysed against the paper's two context taxonomies.

Why: Cowen et al. (2021) ran two experiments on the same kind of videos, contexts from video content (experiment 1,
653 contexts) and from titles and descriptions only (experiment 2, 1,953 contexts), and report that experiment 2's
region similarities are about 40% lower while the pattern stays. This command runs one analysis per taxonomy (the
same expression model, the same settings otherwise) and writes the headline numbers side by side, with the ratio
experiment 2 / experiment 1 and its SE, to ``experiment_comparison``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxatlas.core.errors import UserError
from cxatlas.core.paper_values import paper_value

__all__ = ["CompareError", "CompareReport", "compare_headlines", "run_compare"]


class CompareError(UserError, ValueError):
    """The two analyses cannot be compared as asked (e.g. the same taxonomy twice)."""


def compare_headlines(h1: pd.DataFrame, h2: pd.DataFrame) -> pd.DataFrame:
    """Headline numbers of two analyses side by side (``name, value, se`` each), with the ratio 2 / 1.

    The ratio's SE is the delta-method approximation for independent estimates,
    ``|ratio| * sqrt((se1 / v1)**2 + (se2 / v2)**2)`` (the two analyses share videos, so it is conservative when
    their errors correlate positively). Numbers present in only one analysis keep NaN on the other side.
    """
    a = h1.set_index("name")[["value", "se"]].add_prefix("exp1_")
    b = h2.set_index("name")[["value", "se"]].add_prefix("exp2_")
    out = a.join(b, how="outer")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = out["exp2_value"] / out["exp1_value"]
        rel = np.sqrt((out["exp1_se"] / out["exp1_value"]) ** 2 + (out["exp2_se"] / out["exp2_value"]) ** 2)
    out["ratio"] = ratio.where(np.isfinite(ratio))
    out["ratio_se"] = (ratio.abs() * rel).where(np.isfinite(ratio * rel))
    out["paper_exp1"] = [getattr(paper_value(1, n), "value", math.nan) for n in out.index]
    out["paper_exp2"] = [getattr(paper_value(2, n), "value", math.nan) for n in out.index]
    return out.reset_index().rename(columns={"index": "name"})


@dataclass
class CompareReport:
    comparison_id: str
    analysis_ids: tuple[str, str]
    table: pd.DataFrame

    def summary(self) -> str:
        cols = ["name", "exp1_value", "exp1_se", "exp2_value", "exp2_se", "ratio", "ratio_se"]
        return (f"comparison {self.comparison_id}: experiment 1 = analysis {self.analysis_ids[0]}, experiment 2 = "
                f"analysis {self.analysis_ids[1]}\n" + self.table[cols].to_string(index=False, float_format="%.4g"))


def run_compare(spark, cfg, store, taxonomy_1: str, taxonomy_2: str,
                comparison_id: str | None = None) -> CompareReport:
    """Analyse the annotations once per taxonomy and write ``experiment_comparison`` (one commit)."""
    from pyspark.sql import functions as F

    from cxatlas.core.result_schemas import EXPERIMENT_COMPARISON, HEADLINE_NUMBERS
    from cxatlas.stages.analyze import new_analysis_id, run_analyze
    from cxatlas.stages.analyze.results import _to_spark

    if taxonomy_1 == taxonomy_2:
        raise CompareError(f"both experiments name taxonomy {taxonomy_1!r}; give two different taxonomies")
    comparison_id = comparison_id or new_analysis_id()
    base = cfg.settings.analyze
    reports = [run_analyze(spark, cfg, store, analysis_id=f"{comparison_id}-exp{i}",
                           settings=dataclasses.replace(base, taxonomy=tax))
               for i, tax in ((1, taxonomy_1), (2, taxonomy_2))]
    heads = [store.table(HEADLINE_NUMBERS).read().filter(F.col("analysis_id") == rep.analysis_id).toPandas()
             for rep in reports]
    table = compare_headlines(heads[0], heads[1])
    table.insert(1, "exp1_analysis_id", reports[0].analysis_id)
    table.insert(2, "exp2_analysis_id", reports[1].analysis_id)
    store.table(EXPERIMENT_COMPARISON).create_if_missing().append(
        _to_spark(spark, EXPERIMENT_COMPARISON, table, comparison_id, id_column="comparison_id"))
    return CompareReport(comparison_id, (reports[0].analysis_id, reports[1].analysis_id), table)

