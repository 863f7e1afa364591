"""``cxatlas report``: one self-contained HTML page per analysis, every headline number next to the paper's.

Why: a scientist judges a replication by putting its numbers beside the published ones. The page holds the
analysis' settings, how many videos, contexts and regions entered, every headline number of Cowen et al. (2021),
Nature 589:251 with its bootstrap SE next to the paper's value and SE for the *same quantity* (the
``headline_numbers`` columns ``paper_value``, ``paper_se``, ``paper_source``, paired in
:mod:`cxatlas.stages.analyze.headline`), the tables behind them (the 66 region pairs, region vs world, held-out
canonical correlations, tests, loadings), and the figures embedded as base64 PNG with a paragraph each, so the single
file can be mailed or archived. Sections of the later papers (Brooks et al. 2024, Inagaki et al. 2022) and of
releases come from :data:`SECTION_PROVIDERS` and appear only when their results exist.

The page is rendered from the Jinja2 template ``templates/report.html.j2`` (autoescaped); tables come from pandas.
:func:`render_html` is pure (frames in, a string out); :func:`write_report` reads one analysis' result tables
(Spark + Delta) and writes ``<data_root>/<analyze.report_dir>/<analysis_id>.html``.
"""
from __future__ import annotations

import base64
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from cxatlas.core.errors import UserError
from cxatlas.core.paper_values import experiment_for_labels

__all__ = ["FIGURE_NOTES", "SECTIONS", "SECTION_PROVIDERS", "extra_sections", "ReportError", "ReportResult", "ReportSection",
           "ReportTable", "render_html", "write_report"]


class ReportError(UserError, ValueError):
    """No analysis to report on (or the one named does not exist)."""


#: The sections every analysis report has, in order (ids of the HTML ``<section>`` elements).
SECTIONS = ("summary", "headline", "counts", "sign-agreement", "regions", "cca", "geobins", "figures", "settings")

#: What each figure shows, printed under it.
FIGURE_NOTES: dict[str, str] = {
    "fig2_context_expression_heatmap": (
        "Fig. 2: partial correlations of selected contexts (rows) with each expression (columns), one small square "
        "per region inside each cell. A red rectangle marks a context-expression pair whose correlation is positive in "
        "every region present (the paper's red rectangles). The bars on top give each expression's mean correlation "
        "over the drawn contexts (light) and over all analysed contexts (dark); the bars on the right each context's "
        "mean over expressions and regions."),
    "fig2_zscored_with_marginal_means": (
        "Fig. 2 as the paper draws it: correlations z-scored within each context (row), with the same red "
        "rectangles and marginal means."),
    "fig3a_region_similarity": (
        "Fig. 3a: correlations between regions of their context-expression correlations, each context weighted by "
        "sqrt(p1(1-p1)p2(1-p2)). The lowest of them is min_region_similarity (the paper's 0.703, \"70% shared\")."),
    "fig3b_region_vs_world": (
        "Fig. 3b: shared variance (r2) between each region and the Fisher average of the remaining regions, and with "
        "the region it is most similar to."),
    "fig3c_heldout_canonical_correlations": (
        "Fig. 3c: canonical correlations of each dimension evaluated in held-out regions (CCA fitted without the "
        "region, or on the USA/Canada alone); the paper found all 16 positive in every region."),
    "fig4_geobin_variates": (
        "Fig. 4, expression side: the first three canonical variates (red, green, blue) of the expression "
        "annotations, averaged within 0.5-degree bins."),
    "fig4_geobin_context_variates": (
        "Fig. 4, context side: the same three variates of the context annotations per bin. The paper says the "
        "expression map \"closely tracked\" the context map; geobin_variate_tracking_k gives the correlation "
        "across bins."),
}


@dataclass
class ReportTable:
    """One table of a section: a caption and its frame (rendered by pandas)."""

    caption: str
    frame: pd.DataFrame
    max_rows: int = 200


@dataclass
class ReportSection:
    """A section of the page. Stages of the other papers return these from their report provider."""

    id: str
    title: str
    paragraphs: Sequence[str] = ()
    tables: Sequence[ReportTable] = ()
    figures: Mapping[str, str] = field(default_factory=dict)  # figure name -> PNG path
    preformatted: str | None = None
    captions: Mapping[str, str] = field(default_factory=dict)  # figure name -> paragraph (else FIGURE_NOTES)


#: Modules that add sections to the page: each has ``report_sections(spark, cfg, store, analysis_row) ->
#: list[ReportSection]`` and returns nothing when its results do not exist (other papers' stages, releases).
SECTION_PROVIDERS: tuple[str, ...] = ("cxatlas.stages.brooks_report", "cxatlas.stages.inagaki_report",
                                       "cxatlas.stages.release.utility")


def extra_sections(spark, cfg, store, analysis_row: Mapping[str, Any]) -> list[ReportSection]:
    """The sections of every module in :data:`SECTION_PROVIDERS`, in that order."""
    import importlib

    return [s for name in SECTION_PROVIDERS
            for s in importlib.import_module(name).report_sections(spark, cfg, store, analysis_row)]


@dataclass
class ReportResult:
    analysis_id: str
    path: str
    headline: pd.DataFrame

    def summary(self) -> str:
        return f"report of analysis {self.analysis_id}: {self.path}"


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, float):
        if x != 0 and (abs(x) >= 1e5 or x == round(x)) and abs(x) < 1e15:
            return f"{x:,.0f}"
        return f"{x:,.1f}" if abs(x) >= 1000 else f"{x:.4g}"
    return str(x)


def _table_html(t: ReportTable) -> dict:
    df = t.frame
    if df is None or df.empty:
        return dict(caption=t.caption, html="", more=0)
    body = df.head(t.max_rows).to_html(index=False, na_rep="–", formatters={c: _fmt for c in df.columns},
                                       escape=True, border=0)
    body = body.replace("<table class=\"dataframe\">", f"<table class=\"dataframe\"><caption>{_escape(t.caption)}"
                        "</caption>", 1)
    return dict(caption=t.caption, html=body, more=max(0, len(df) - t.max_rows), source="")


def _escape(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))


def _figure(name: str, path: str, caption: str) -> dict | None:
    if not path or not os.path.isfile(path):
        return None
    with open(path, "rb") as fh:
        data = base64.b64encode(fh.read()).decode("ascii")
    return dict(name=name, data=data, caption=caption)


def _environment():
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(loader=PackageLoader("cxatlas.stages", "templates"), autoescape=select_autoescape(["j2"]),
                       trim_blocks=True, lstrip_blocks=True)


def _experiment_note(analysis: Mapping[str, Any], tables: Mapping[str, pd.DataFrame]) -> str:
    """Which experiment the headline is compared with, and why (the labels the analysed taxonomy shares)."""
    from cxatlas.core.taxonomies import load_taxonomy

    try:
        labels = list(load_taxonomy(str(analysis.get("taxonomy"))).labels)
    except (FileNotFoundError, ValueError, TypeError):
        corr = tables.get("context_expression_correlations", pd.DataFrame())
        labels = list(corr["context"].unique()) if "context" in corr else []
    return experiment_for_labels(labels).describe()


def _pairs(similarity: pd.DataFrame) -> pd.DataFrame:
    """The region pairs once each (a < b in the table's order), with r, its SE and the shared variance r2."""
    if similarity.empty:
        return similarity
    order = {r: i for i, r in enumerate(dict.fromkeys(similarity["region_a"]))}
    pairs = similarity[similarity["region_a"].map(order) < similarity["region_b"].map(order)].copy()
    pairs["r2"] = pairs["r"] ** 2
    return pairs.sort_values("r", ascending=False)[["region_a", "region_b", "r", "se", "r2"]]


def _heldout(heldout: pd.DataFrame) -> pd.DataFrame:
    if heldout.empty:
        return heldout
    wide = heldout.pivot_table(index=["variant", "heldout_region"], columns="dimension", values="r")
    wide.columns = [f"dim {d}" for d in wide.columns]
    return wide.reset_index()


def _top_loadings(loadings: pd.DataFrame, n: int = 5) -> pd.DataFrame:
    """Per variant, dimension and side, the ``n`` features with the largest |structure correlation|."""
    if loadings.empty:
        return loadings
    ranked = loadings.assign(_a=loadings["correlation"].abs()).sort_values(
        ["variant", "dimension", "side", "_a"], ascending=[True, True, True, False])
    return ranked.groupby(["variant", "dimension", "side"]).head(n).drop(columns="_a")


def analysis_sections(analysis: Mapping[str, Any], tables: Mapping[str, pd.DataFrame],
                      figures: Mapping[str, str]) -> list[ReportSection]:
    """The sections of the Cowen et al. (2021) replication, from one analysis' row, result frames and figures."""
    get = lambda name: tables.get(name, pd.DataFrame())  # noqa: E731
    aid = str(analysis.get("analysis_id", ""))
    head = get("headline_numbers")
    cols = ["name", "value", "se", "paper_value", "paper_se", "detail", "paper_source"]
    head = head.reindex(columns=cols) if not head.empty else pd.DataFrame(columns=cols)
    counts = pd.DataFrame([(k, analysis.get(k)) for k in ("n_videos", "n_videos_filtered", "n_contexts",
                                                          "n_contexts_analysed", "n_expressions", "n_replicates")
                           if k in analysis], columns=["count", "value"])
    world = get("region_vs_world")
    if not world.empty:
        counts.loc[len(counts)] = ("n_regions", float(world["region"].nunique()))
    try:
        params = json.dumps(json.loads(analysis.get("parameters") or "{}"), indent=2, sort_keys=True)
    except (TypeError, ValueError):
        params = str(analysis.get("parameters"))
    filter_note = analysis.get("video_filter")
    return [
        ReportSection("summary", f"cxatlas replication report: analysis {aid}", paragraphs=[
            "Cowen, Keltner, Schroff, Jou, Adam & Prasad (2021), \"Sixteen facial expressions occur in similar "
            "contexts worldwide\", Nature 589:251.",
            f"Taxonomy {_fmt(analysis.get('taxonomy'))}, {_experiment_note(analysis, tables)}. Expression model "
            f"{_fmt(analysis.get('expression_model_version'))}, context model "
            f"{_fmt(analysis.get('context_model_version'))}; started {_fmt(analysis.get('started'))}, "
            f"{_fmt(analysis.get('run_seconds'))} s. SE = bootstrap standard error "
            f"({_fmt(analysis.get('n_replicates'))} Poisson replicates over videos).",
            "Paper values stand beside a number only when it is the same quantity and all 12 regions entered. They "
            "cannot be expected to match closely: the paper's expression and context models are proprietary, its "
            "videos and the contexts' prevalences are not public, and the published per-region correlations carry "
            "differential-privacy noise (see README, 'What can and cannot be reproduced').",
            *([f"Video filter: {filter_note}"] if filter_note else [])]),
        ReportSection("headline", "Headline numbers next to the paper's", paragraphs=[
            "Each row is computed the paper's way (the sentence it comes from is in paper_source); null paper values "
            "mean the paper gives none for this quantity or the analysis lacks some of the 12 regions."],
            tables=[ReportTable("headline_numbers", head)]),
        ReportSection("counts", "What entered the analysis", tables=[ReportTable("counts", counts)]),
        ReportSection("sign-agreement", "Contexts positive everywhere, per expression", paragraphs=[
            "Per expression, the share of analysed contexts whose correlation with it is positive in every region (the "
            "red rectangles of its column); 'all' counts contexts with at least one such expression (the paper's "
            "49.6% / 33.5%)."], tables=[ReportTable("sign_agreement", get("sign_agreement"))]),
        ReportSection("regions", "Region similarity and region vs world", tables=[
            ReportTable("region pairs (region_similarity, each pair once, r2 = shared variance)",
                        _pairs(get("region_similarity")), max_rows=100),
            ReportTable("region_vs_world (r2 with the average of the remaining regions; best match)", world)]),
        ReportSection("cca", "Canonical dimensions", tables=[
            ReportTable("held-out canonical correlations (cca_heldout)", _heldout(get("cca_heldout"))),
            ReportTable("tests (cca_tests)", get("cca_tests")),
            ReportTable("loadings: the 5 features per dimension and side with the largest |structure correlation| "
                        "(cca_loadings)", _top_loadings(get("cca_loadings")), max_rows=400)]),
        ReportSection("geobins", "Geography (Fig. 4)", paragraphs=[
            "geobin_variate_tracking_k: correlation across 0.5-degree bins between the mean expression-side and "
            "context-side score of canonical variate k; the paper's claim that expression variation \"closely "
            "tracked\" context variation is supported when these are high."],
            tables=[ReportTable("geobin numbers", head[head["name"].astype(str).str.startswith("geobin_")])]),
        ReportSection("figures", "Figures", figures=dict(figures)),
        ReportSection("settings", "Settings", preformatted=params),
    ]


def render_html(analysis: Mapping[str, Any], tables: Mapping[str, pd.DataFrame], figures: Mapping[str, str],
                extra: Sequence[ReportSection] = ()) -> str:
    """The report page.

    Parameters
    ----------
    analysis : the ``analyses`` row (analysis_id, taxonomy, n_videos, n_contexts, parameters JSON, ...).
    tables : result frames by table name (``headline_numbers``, ``sign_agreement``, ``region_similarity``,
        ``region_vs_world``, ``cca_tests``, ``cca_heldout``, ``cca_loadings``); missing ones render as empty.
    figures : figure name -> PNG path; each is embedded with its paragraph (:data:`FIGURE_NOTES`).
    extra : further sections (other papers, releases), appended before the settings.
    """
    sections = analysis_sections(analysis, tables, figures)
    sections[-1:-1] = list(extra)
    rendered = []
    for s in sections:
        figs = [f for f in (_figure(n, p, dict(s.captions).get(n) or FIGURE_NOTES.get(n, ""))
                            for n, p in dict(s.figures).items()) if f]
        rendered.append(dict(id=s.id, title=s.title, paragraphs=list(s.paragraphs),
                             tables=[_table_html(t) for t in s.tables], figures=figs, preformatted=s.preformatted))
    return _environment().get_template("report.html.j2").render(
        analysis_id=str(analysis.get("analysis_id", "")), sections=rendered)


def write_report(spark, cfg, store, analysis_id: str | None = None, out: str | None = None) -> ReportResult:
    """Read one analysis' result tables (default: the latest analysis) and write its HTML report.

    The page goes to ``out`` or ``<data_root>/<analyze.report_dir>/<analysis_id>.html`` (a local path).
    """
    from pyspark.sql import functions as F

    from cxatlas.core.result_schemas import (ANALYSES, CCA_HELDOUT, CCA_LOADINGS, CCA_TESTS, HEADLINE_NUMBERS,
                                             REGION_SIMILARITY, REGION_VS_WORLD, SIGN_AGREEMENT)

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
    for spec in (HEADLINE_NUMBERS, SIGN_AGREEMENT, REGION_VS_WORLD, REGION_SIMILARITY, CCA_TESTS, CCA_HELDOUT,
                 CCA_LOADINGS):
        t = store.table(spec)
        tables[spec.name] = (t.read().filter(F.col("analysis_id") == aid).drop("analysis_id").toPandas()
                             if t.exists() else pd.DataFrame())
    if not tables[CCA_TESTS.name].empty:
        tables[CCA_TESTS.name] = tables[CCA_TESTS.name].sort_values(["variant", "dimension"])
    figures = {}
    fdir = row.get("figures_dir")
    if fdir and os.path.isdir(fdir):
        figures = {os.path.splitext(f)[0]: os.path.join(fdir, f) for f in sorted(os.listdir(fdir))
                   if f.endswith(".png")}
    page = render_html(row, tables, figures, extra_sections(spark, cfg, store, row))
    path = out or os.path.join(cfg.data_root, cfg.settings.analyze.report_dir, f"{aid}.html")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return ReportResult(aid, path, tables[HEADLINE_NUMBERS.name])
