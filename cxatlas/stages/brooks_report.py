"""The Brooks et al. (2024) section of ``cxatlas report``: every ``cxatlas ppca`` result the report can find.

A provider of :data:`cxatlas.stages.report.SECTION_PROVIDERS`. Results are the folders named by
``analyze.report_results`` (see :mod:`cxatlas.stages.result_dirs`) that hold a ``ppca_run.json``; with none, the
page has no Brooks section. Per result: the kept dimensions with the rule that kept them (each criterion on its own),
the country-pair significance graph, the varimax-rotated loadings heatmap with its significant loadings, the
universality classes, and the paper's counts beside ours:

- 31: "We found that 31 semantic dimensions, or distinct kinds of emotion, were preserved across all six cultures in
  emotion judgments of the seed images" (G-PPCA of the judgments; ours only for a G-PPCA run).
- 28: "we uncovered 28 significant dimensions of facial expression that were reliably associated with distinct
  meanings" (PPCA of the DNN's outputs vs the judgments; ours only for a two-dataset PPCA run).
- 21: "Thus, a total of 21 dimensions of facial expression showed a high degree of cultural universality in meaning
  across the 6 countries" (:func:`cxatlas.stats.ppca.universality_classes`; needs ``country:label`` attributes).
- 63% / r = .80: "were 63% preserved in both meaning and translation across the 6 countries (r = 0.80, r^2 = 0.63,
  countrywise dimension loadings explained by the average loading)".
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from cxatlas.stages.report import ReportSection, ReportTable
from cxatlas.stages.result_dirs import result_folders

__all__ = ["PAPER_COUNTS", "brooks_section", "report_sections"]

#: (quantity, the paper's value, which analysis it belongs to, the sentence).
PAPER_COUNTS = (
    ("preserved dimensions (G-PPCA of judgments across countries)", 31.0, "G-PPCA",
     "We found that 31 semantic dimensions ... were preserved across all six cultures in emotion judgments of the "
     "seed images"),
    ("kept dimensions (PPCA, DNN outputs vs judgments)", 28.0, "PPCA",
     "we uncovered 28 significant dimensions of facial expression that were reliably associated with distinct "
     "meanings"),
    ("dimensions universal in meaning", 21.0, "PPCA",
     "Thus, a total of 21 dimensions of facial expression showed a high degree of cultural universality in meaning "
     "across the 6 countries"),
    ("loading preservation r (countrywise vs average loading)", 0.80, "PPCA",
     "63% preserved in both meaning and translation across the 6 countries (r = 0.80, r^2 = 0.63, countrywise "
     "dimension loadings explained by the average loading)"),
    ("% preserved (r^2)", 0.63, "PPCA", "r^2 = 0.63"),
)


def _read(folder: Path, name: str) -> pd.DataFrame:
    path = folder / name
    return pd.read_csv(path) if path.is_file() and path.stat().st_size else pd.DataFrame()


def _counts(run: Mapping[str, Any], universality: pd.DataFrame) -> pd.DataFrame:
    """The paper's counts beside ours; ours is blank where this run is not the analysis the count belongs to."""
    kind = run.get("kind")
    r = run.get("preservation_r")
    n_rot = len(universality)
    ours = {
        PAPER_COUNTS[0][0]: float(run["n_kept"]) if kind == "G-PPCA" else None,
        PAPER_COUNTS[1][0]: float(run["n_kept"]) if kind == "PPCA" else None,
        PAPER_COUNTS[2][0]: float(universality["universal"].sum()) if n_rot else None,
        PAPER_COUNTS[3][0]: float(r) if r is not None else None,
        PAPER_COUNTS[4][0]: float(r) ** 2 if r is not None else None,
    }
    rows = []
    for name, paper, applies, source in PAPER_COUNTS:
        of = f"of {n_rot} rotated" if name == PAPER_COUNTS[2][0] and n_rot else ""
        rows.append({"quantity": name, "ours": ours[name], "paper": paper, "out_of": of, "paper_analysis": applies,
                     "this_run": kind, "paper_source": source})
    return pd.DataFrame(rows)


def _graph(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per dimension: significant positive links, the fewest any country has, and who has fewer than two."""
    if pairs.empty:
        return pairs
    rows = []
    for dim, part in pairs.groupby("dimension", sort=True):
        countries = sorted(set(part["country_a"]) | set(part["country_b"]))
        edges = part[part["significant"].astype(bool) & (part["r"] > 0)]
        degree = {c: int(((edges["country_a"] == c) | (edges["country_b"] == c)).sum()) for c in countries}
        rows.append({"dimension": int(dim), "kept": bool(part["kept"].iloc[0]) if "kept" in part else None,
                     "significant_links": len(edges), "pairs": len(part), "min_links": min(degree.values()),
                     "countries_below_2": ";".join(c for c in countries if degree[c] < 2)})
    return pd.DataFrame(rows)


def _top_loadings(rot: pd.DataFrame, k: int, n: int = 5) -> pd.DataFrame:
    rows = []
    for j in range(1, k + 1):
        col = rot[f"rotated_{j}"].to_numpy(dtype=float)
        sig = rot.get(f"rotated_{j}_significant", pd.Series(False, index=rot.index)).astype(bool).to_numpy()
        for i in np.argsort(-np.abs(col), kind="stable")[:n]:
            rows.append({"rotated": j, "attribute": rot["attribute"].iloc[i], "loading": float(col[i]),
                         "significant": bool(sig[i])})
    return pd.DataFrame(rows)


def brooks_section(folder: Path) -> ReportSection:
    """One ``cxatlas ppca`` output folder as a report section."""
    run = json.loads((folder / "ppca_run.json").read_text())
    sig = _read(folder, "significance.csv")
    pairs = _read(folder, "pairs.csv")
    rot = _read(folder, "rotated_loadings.csv")
    universality = _read(folder, "universality.csv")
    loading_sig = _read(folder, "loading_significance.csv")
    k = sum(1 for c in rot.columns if c.startswith("rotated_") and c.split("_")[1].isdigit()
            and c.count("_") == 1) if not rot.empty else 0
    kept_cols = ["component", "cv_correlation", "p_value", "q_value", "snr", "bootstrap_sd", "bh_pass",
                 "forwardstop_pass", "snr_pass", "graph_pass", "kept"]
    kept = sig[sig["kept"].astype(bool)].reindex(columns=kept_cols) if not sig.empty else sig
    slug = folder.name
    heatmap = folder / "loadings_heatmap.png"
    fig_name = f"brooks_{slug}_rotated_loadings"
    datasets = ", ".join(str(d) for d in run.get("datasets", []))
    paragraphs = [
        "Brooks, Kim, Opara, ..., Tadesse, Zegeye & Cowen (2024), \"Deep learning reveals what facial expressions mean "
        "to people in different cultures\", iScience. Principal preserved components (cxatlas ppca).",
        f"Result folder {folder}: {run.get('kind')} of {len(run.get('datasets', []))} datasets ({datasets}), "
        f"{run.get('n_stimuli')} stimuli x {run.get('n_attributes')} attributes; {run.get('n_kept')} of "
        f"{run.get('n_components')} dimensions kept by rule {run.get('rule_text')} (requested: "
        f"{run.get('rule_requested')}); {run.get('resamples')} bootstrap resamples, {run.get('loading_resamples')} "
        f"for the loading test; varimax {'Kaiser-normalised' if run.get('kaiser') else 'as statsmodels rotate_factors (no Kaiser)'}.",
        "Paper values stand beside ours for the same quantity; ours is blank where this run is not the analysis the "
        "paper's count comes from (31: G-PPCA of the six countries' judgments; 28, 21, r = .80: PPCA of the DNN's 288 "
        "outputs vs the judgments). The universality classes are a mechanical reading of the paper's hand judgement "
        "(cxatlas.stats.ppca.universality_classes).",
    ]
    tables = [
        ReportTable(f"Brooks {slug}: the paper's counts beside ours", _counts(run, universality)),
        ReportTable(f"Brooks {slug}: kept dimensions and the criteria of the rule ({run.get('rule')})", kept),
        ReportTable(f"Brooks {slug}: pair graph per dimension (significant positive country-pair links)",
                    _graph(pairs), max_rows=100),
        ReportTable(f"Brooks {slug}: country pairs of the kept dimensions (pairs.csv)",
                    pairs[pairs["kept"].astype(bool)].reindex(columns=["dimension", "country_a", "country_b", "r", "p",
                                                                       "q", "significant"])
                    if not pairs.empty else pairs, max_rows=400),
        ReportTable(f"Brooks {slug}: universality of the rotated dimensions", universality.drop(
            columns=[c for c in ("rule",) if c in universality.columns])),
        ReportTable(f"Brooks {slug}: significant loadings per rotated dimension (top-N sign test, ForwardStop)",
                    loading_sig.drop(columns=[c for c in ("rule",) if c in loading_sig.columns])),
        ReportTable(f"Brooks {slug}: the 5 largest rotated loadings per dimension", _top_loadings(rot, k),
                    max_rows=500),
    ]
    caption = (f"Varimax-rotated loadings of the {run.get('n_kept')} kept dimensions (attributes x rotated "
               "dimensions, diverging colour map); a dot marks a significant loading (the paper's top-N sign test "
               "with ForwardStop). The paper's Fig. 2 draws the same map for its 28 dimensions.")
    return ReportSection(f"brooks-{slug}", f"Brooks et al. (2024): preserved dimensions ({slug})",
                         paragraphs=paragraphs, tables=tables,
                         figures={fig_name: str(heatmap)} if heatmap.is_file() else {},
                         captions={fig_name: caption})


def report_sections(spark, cfg, store, analysis_row: Mapping[str, Any]) -> list[ReportSection]:
    """One section per ``cxatlas ppca`` result under ``analyze.report_results``; [] when there is none."""
    return [brooks_section(folder)
            for folder in result_folders(cfg, lambda f: (f / "ppca_run.json").is_file())]
