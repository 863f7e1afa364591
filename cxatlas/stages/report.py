"""``cxatlas report``: one self-contained HTML page per analysis, every headline number next to the paper's.

Why: a scientist judges a replication by putting its numbers beside the published ones. The page holds the
analysis' settings, how many videos, contexts and regions entered, every headline number of
Cowen et al. (2021), Nature 589:251 with its bootstrap SE next to the paper's value (and SE where the paper gives
one), the tables behind them, and the figures embedded as base64 PNG, so the single file can be mailed or archived.

:func:`render_html` is pure (pandas frames in, a string out); :func:`write_report` reads the result tables of one
analysis (Spark + Delta) and writes ``<data_root>/<analyze.report_dir>/<analysis_id>.html``.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

import pandas as pd

from cxatlas.core.errors import UserError

__all__ = ["PAPER_VALUES", "SECTIONS", "ReportError", "ReportResult", "experiment_of", "headline_table",
           "render_html", "write_report"]


class ReportError(UserError, ValueError):
    """No analysis to report on (or the one named does not exist)."""


#: The paper's values of the headline numbers, per experiment (1: contexts from video content; 2: from titles and
#: descriptions only): (value, SE or None, where the paper says it). Missing names have no published counterpart.
PAPER_VALUES: dict[int, dict[str, tuple[float, float | None, str]]] = {
    1: {
        "n_videos": (6_000_000, None, "about 6 million videos, 144 countries"),
        "n_regions": (12, None, "12 world regions"),
        "n_contexts": (653, None, "653 contexts (experiment 1)"),
        "same_sign_share": (0.496, None, "main text: 49.6% of context-expression correlations share their sign in "
                                         "all 12 regions"),
        "universality": (0.70, 0.008, "main text: sqrt of the lowest region similarity, 70% (s.e. 0.8%)"),
        "leave_one_region_out_dims_positive_everywhere": (16, None, "Fig. 3c: 16 of 16 dimensions preserved"),
        "leave_one_region_out_dims_significant": (16, None, "Fig. 3c: all 16 significant (Wilcoxon, BH)"),
        "fit_on_us_canada_n_videos": (333_226, None, "Methods: CCA trained on all US/Canada videos"),
        "bartlett_chi2_last": (860.4, None, "Extended Data Fig. 3: 16th variate, df (16-15)(653-15)"),
        "geobin_expression_variance_share": (0.02, None, "Fig. 4: about 2% of expression variance between "
                                                         "0.5-degree geobins"),
    },
    2: {
        "n_contexts": (1953, None, "1,953 contexts (experiment 2)"),
        "n_regions": (12, None, "12 world regions"),
        "same_sign_share": (0.335, None, "main text: 33.5% share their sign in all 12 regions (experiment 2)"),
    },
}

#: The sections every report has, in order (ids of the HTML ``<section>`` elements).
SECTIONS = ("summary", "headline", "settings", "counts", "sign-agreement", "regions", "cca", "figures")


def experiment_of(taxonomy: str | None) -> int:
    """Experiment 2 for its taxonomy (titles/descriptions), experiment 1 for anything else (incl. simulations)."""
    return 2 if taxonomy and "exp2" in str(taxonomy).lower() else 1


@dataclass
class ReportResult:
    analysis_id: str
    path: str
    headline: pd.DataFrame

    def summary(self) -> str:
        return f"report of analysis {self.analysis_id}: {self.path}"


def headline_table(headline: pd.DataFrame, experiment: int) -> pd.DataFrame:
    """The analysis' headline numbers with the paper's value, SE and source beside each (NaN where none)."""
    paper = PAPER_VALUES.get(experiment, {})
    out = headline.copy()
    out["paper_value"] = [paper.get(n, (math.nan,))[0] for n in out["name"]]
    out["paper_se"] = [paper.get(n, (math.nan, None))[1] for n in out["name"]]
    out["paper_source"] = [paper.get(n, (None, None, ""))[2] for n in out["name"]]
    out["paper_se"] = out["paper_se"].astype(float)
    return out


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, float):
        if x != 0 and (abs(x) >= 1e5 or x == round(x)) and abs(x) < 1e15:
            return f"{x:,.0f}"
        return f"{x:,.1f}" if abs(x) >= 1000 else f"{x:.4g}"
    return html.escape(str(x))


def _table(df: pd.DataFrame, max_rows: int = 200) -> str:
    if df is None or df.empty:
        return "<p class='empty'>(no rows)</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>"
                   for row in df.head(max_rows).itertuples(index=False))
    more = f"<p class='note'>{len(df) - max_rows} more rows in the table</p>" if len(df) > max_rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>{more}"


def _image(path: str) -> str:
    with open(path, "rb") as fh:
        data = base64.b64encode(fh.read()).decode("ascii")
    name = html.escape(os.path.basename(path))
    return f"<figure><img alt='{name}' src='data:image/png;base64,{data}'/><figcaption>{name}</figcaption></figure>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}img{max-width:100%}figure{margin:1em 0}
.note,.empty{color:#666;font-size:13px}pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:12px}"""


def render_html(analysis: Mapping[str, Any], tables: Mapping[str, pd.DataFrame], figures: Mapping[str, str]) -> str:
    """The report page.

    Parameters
    ----------
    analysis : the ``analyses`` row (analysis_id, taxonomy, n_videos, n_contexts, parameters JSON, ...).
    tables : result frames by table name (``headline_numbers``, ``sign_agreement``, ``region_vs_world``,
        ``region_similarity``, ``cca_tests``, ``cca_heldout``); missing ones render as empty.
    figures : figure name -> PNG path; each is embedded.
    """
    aid = str(analysis.get("analysis_id", ""))
    exp = experiment_of(analysis.get("taxonomy"))
    get = lambda name: tables.get(name, pd.DataFrame())  # noqa: E731
    head = headline_table(get("headline_numbers"), exp) if not get("headline_numbers").empty else pd.DataFrame(
        columns=["name", "value", "se", "paper_value", "paper_se", "detail", "paper_source"])
    head = head[["name", "value", "se", "paper_value", "paper_se", "detail", "paper_source"]]
    try:
        params = json.dumps(json.loads(analysis.get("parameters") or "{}"), indent=2, sort_keys=True)
    except (TypeError, ValueError):
        params = str(analysis.get("parameters"))
    counts = pd.DataFrame([(k, analysis.get(k)) for k in ("n_videos", "n_contexts", "n_contexts_analysed",
                                                          "n_expressions", "n_replicates")],
                          columns=["count", "value"])
    world = get("region_vs_world")
    if not world.empty:
        counts = pd.concat([counts, pd.DataFrame([("n_regions", float(world["region"].nunique()))],
                                                 columns=["count", "value"])], ignore_index=True)
    counts["value"] = counts["value"].astype(float)
    wil = get("cca_tests")
    parts = [
        f"<section id='summary'><h1>cxatlas replication report: analysis {html.escape(aid)}</h1>"
        f"<p>Cowen, Keltner, Schroff, Jou, Adam &amp; Prasad (2021), \"Sixteen facial expressions occur in similar "
        f"contexts worldwide\", Nature 589:251, experiment {exp}. Taxonomy {_fmt(analysis.get('taxonomy'))}, "
        f"expression model {_fmt(analysis.get('expression_model_version'))}, context model "
        f"{_fmt(analysis.get('context_model_version'))}; started {_fmt(analysis.get('started'))}, "
        f"{_fmt(analysis.get('run_seconds'))} s. SE = bootstrap standard error "
        f"({_fmt(analysis.get('n_replicates'))} Poisson replicates).</p></section>",
        "<section id='headline'><h2>Headline numbers next to the paper's</h2>" + _table(head) + "</section>",
        f"<section id='settings'><h2>Settings</h2><pre>{html.escape(params)}</pre></section>",
        "<section id='counts'><h2>What entered the analysis</h2>" + _table(counts) + "</section>",
        "<section id='sign-agreement'><h2>Same sign in every region, per expression</h2>"
        + _table(get("sign_agreement")) + "</section>",
        "<section id='regions'><h2>Region vs rest of world, best match</h2>" + _table(world) + "</section>",
        "<section id='cca'><h2>Canonical dimensions: tests</h2>" + _table(wil) + "</section>",
        "<section id='figures'><h2>Figures</h2>" + ("".join(_image(p) for p in figures.values() if p and
                                                            os.path.isfile(p)) or "<p class='empty'>(none)</p>")
        + "</section>",
    ]
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>cxatlas report {html.escape(aid)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")


def write_report(spark, cfg, store, analysis_id: str | None = None, out: str | None = None) -> ReportResult:
    """Read one analysis' result tables (default: the latest analysis) and write its HTML report.

    The page goes to ``out`` or ``<data_root>/<analyze.report_dir>/<analysis_id>.html`` (a local path).
    """
    from pyspark.sql import functions as F

    from cxatlas.core.result_schemas import (ANALYSES, CCA_TESTS, HEADLINE_NUMBERS, REGION_VS_WORLD,
                                             SIGN_AGREEMENT)

    analyses = store.table(ANALYSES)
    if not analyses.exists():
        raise ReportError("no analysis yet: run `cxatlas analyze` first")
    df = analyses.read()
    if analysis_id:
        df = df.filter(F.col("analysis_id") == analysis_id)
    rows = df.orderBy(F.col("finished").desc()).limit(1).collect()
    if not rows:
        raise ReportError(f"no analysis {analysis_id!r} in the analyses table")
    row = rows[0].asDict()
    aid = row["analysis_id"]
    tables = {}
    for spec in (HEADLINE_NUMBERS, SIGN_AGREEMENT, REGION_VS_WORLD, CCA_TESTS):
        t = store.table(spec)
        tables[spec.name] = (t.read().filter(F.col("analysis_id") == aid).drop("analysis_id").toPandas()
                             if t.exists() else pd.DataFrame())
    if not tables[CCA_TESTS.name].empty:
        tables[CCA_TESTS.name] = tables[CCA_TESTS.name].sort_values(["variant", "dimension"])
    if not tables[HEADLINE_NUMBERS.name].empty:
        order = {n: i for i, n in enumerate(PAPER_VALUES[1])}
        h = tables[HEADLINE_NUMBERS.name]
        tables[HEADLINE_NUMBERS.name] = h.assign(_o=h["name"].map(lambda n: order.get(n, len(order)))).sort_values(
            ["_o", "name"]).drop(columns="_o")
    figures = {}
    fdir = row.get("figures_dir")
    if fdir and os.path.isdir(fdir):
        figures = {os.path.splitext(f)[0]: os.path.join(fdir, f) for f in sorted(os.listdir(fdir))
                   if f.endswith(".png")}
    page = render_html(row, tables, figures)
    path = out or os.path.join(cfg.data_root, cfg.settings.analyze.report_dir, f"{aid}.html")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return ReportResult(aid, path, tables[HEADLINE_NUMBERS.name])
