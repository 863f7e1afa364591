"""The Inagaki et al. (2022) section of ``cxatlas report``: ``cxatlas transfer`` and ``cxatlas au-tuning`` results.

A provider of :data:`cxatlas.stages.report.SECTION_PROVIDERS`. Results are the folders named by
``analyze.report_results`` (see :mod:`cxatlas.stages.result_dirs`): a folder with ``summary.csv`` and
``confusion.csv`` is a transfer run, one with ``au_run.json`` an AU-tuning run; with neither, the page has no Inagaki
section. Shown: matched vs swapped (per train/test pair, and over ``--runs`` the paired t-tests and the two-way
ANOVA), the confusion matrices as tables, and the AU-profile matrix with its correlation to the swapped choice rates.
The paper's numbers stand beside ours where the quantity is the same: "KDEF, 0.76 for database matched, 0.41 for
database swapped, p < 0.0001, t test; KRC, 0.75 for database matched, 0.50 for database swapped" and "KDEF to KRC,
rs = 0.59, p < 0.0001; KRC to KDEF, rs = 0.49, p = 0.00038".
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from cxatlas.stages.report import ReportSection, ReportTable
from cxatlas.stages.result_dirs import result_folders

__all__ = ["au_section", "is_au_result", "is_transfer_result", "report_sections", "transfer_section"]

_CITATION = ("Inagaki, Ito, Shinozaki & Fujita (2022), \"Convolutional neural networks reveal differences in action "
             "units of facial expressions between face image databases developed in different countries\", Front. "
             "Psychol. 13:988302.")


def is_transfer_result(folder: Path) -> bool:
    return (folder / "summary.csv").is_file() and (folder / "confusion.csv").is_file()


def is_au_result(folder: Path) -> bool:
    return (folder / "au_run.json").is_file()


def _read(folder: Path, name: str) -> pd.DataFrame:
    path = folder / name
    return pd.read_csv(path) if path.is_file() and path.stat().st_size > 1 else pd.DataFrame()


def _confusion_tables(slug: str, conf: pd.DataFrame) -> list[ReportTable]:
    """One wide table per train/test pair: rated (rows) x chosen (columns) counts."""
    tables = []
    for (train, test, cond), part in conf.groupby(["train", "test", "condition"], sort=False):
        labels = list(dict.fromkeys(part["true_label"]))
        wide = part.pivot_table(index="true_label", columns="predicted_label", values="count", aggfunc="sum")
        wide = wide.reindex(index=labels, columns=labels).fillna(0).astype(int)
        wide.columns.name = None  # else pandas draws the axis name as an extra header cell
        wide.insert(0, "rated \\ chosen", wide.index)
        tables.append(ReportTable(f"Inagaki {slug}: confusion matrix, model {train} on {test} ({cond})",
                                  wide.reset_index(drop=True)))
    return tables


def transfer_section(folder: Path) -> ReportSection:
    """One ``cxatlas transfer`` output folder as a report section."""
    slug = folder.name
    summary = _read(folder, "summary.csv")
    tests, anova, runs_summary = (_read(folder, n) for n in ("runs_tests.csv", "runs_anova.csv", "runs_summary.csv"))
    cols = ["train", "test", "condition", "balanced_correct_rate", "top1_agreement", "mean_r", "n"]
    tables = [ReportTable(f"Inagaki {slug}: matched vs swapped (run 0; balanced correct rate = mean of the "
                          "per-expression rates)", summary.reindex(columns=cols))]
    if not tests.empty:
        tables.append(ReportTable(f"Inagaki {slug}: paired t-tests over runs, matched vs swapped (balanced correct "
                                  "rate; the paper: KDEF 0.76 vs 0.41, KRC 0.75 vs 0.50, both p < 0.0001)", tests))
    if not anova.empty:
        tables.append(ReportTable(f"Inagaki {slug}: two-way ANOVA per trained model, condition x expression (the "
                                  "paper: matched or swapped, expression and interaction all p < 0.0001)", anova))
    if not runs_summary.empty:
        tables.append(ReportTable(f"Inagaki {slug}: mean and SD over runs of the correct rates",
                                  runs_summary, max_rows=400))
    tables += _confusion_tables(slug, _read(folder, "confusion.csv"))
    figures, captions = {}, {}
    for name, caption in (("confusion", "The four confusion matrices (matched and swapped), row-normalised: the "
                                        "paper's Figs. 3 and 4."),
                          ("correlations", "Held-out Pearson r per label, matched and swapped.")):
        if (folder / f"{name}.png").is_file():
            figures[f"inagaki_{slug}_{name}"] = str(folder / f"{name}.png")
            captions[f"inagaki_{slug}_{name}"] = caption
    runs = "one run" if tests.empty else f"{int(tests['runs'].max())} runs"
    return ReportSection(f"inagaki-{slug}", f"Inagaki et al. (2022): matched vs swapped ({slug})", paragraphs=[
        _CITATION, f"Result folder {folder} (cxatlas transfer, {runs}). Each model is tested on its own database's "
        "held-out images (matched) and on the other's (swapped)."], tables=tables, figures=figures, captions=captions)


def au_section(folder: Path) -> ReportSection:
    """One ``cxatlas au-tuning`` output folder as a report section."""
    slug = folder.name
    run = json.loads((folder / "au_run.json").read_text())
    a, b = run["models"]
    sim = _read(folder, "au_similarity.csv")
    units = list(run["units"])
    wide = sim.pivot(index="unit_a", columns="unit_b", values="spearman").reindex(index=units, columns=units)
    wide.columns.name = None
    wide.insert(0, f"{a} \\ {b}", wide.index)
    vs = _read(folder, "au_vs_confusion.csv")
    if not vs.empty:
        paper = {0: "0.59 (p < 0.0001, KDEF to KRC)", 1: "0.49 (p = 0.00038, KRC to KDEF)"}
        vs["paper_rs"] = [paper.get(i, "") for i in range(len(vs))]
    tables = [ReportTable(f"Inagaki {slug}: AU-profile similarity matrix (Spearman between the units' baseline-"
                          f"subtracted AU profiles; rows model {a}, columns model {b})", wide.reset_index(drop=True)),
              ReportTable(f"Inagaki {slug}: AU-profile matrix vs the swapped confusion matrices (Spearman over the "
                          "cells)", vs),
              ReportTable(f"Inagaki {slug}: peak/trough PCA, unit scores", _read(folder, "au_pca.csv"))]
    figures, captions = {}, {}
    if (folder / "au_similarity.png").is_file():
        figures[f"inagaki_{slug}_au_similarity"] = str(folder / "au_similarity.png")
        captions[f"inagaki_{slug}_au_similarity"] = ("AU-profile similarity of the two models' output units (the "
                                                     "paper's Fig. 9A,B).")
    explained = ", ".join(f"{x:.2f}" for x in run.get("explained_variance", []))
    return ReportSection(f"inagaki-au-{slug}", f"Inagaki et al. (2022): AU tuning ({slug})", paragraphs=[
        _CITATION, f"Result folder {folder} (cxatlas au-tuning): models {a} and {b} on {len(run['aus'])} AUs x "
        f"{len(run['levels'])} levels of {run['manifest']}, the lowest level the null image whose response is "
        f"subtracted. Peak/trough PCA explained variance: {explained}."], tables=tables, figures=figures,
        captions=captions)


def report_sections(spark, cfg, store, analysis_row: Mapping[str, Any]) -> list[ReportSection]:
    """A section per transfer and AU-tuning result under ``analyze.report_results``; [] when there is none."""
    return ([transfer_section(f) for f in result_folders(cfg, is_transfer_result)]
            + [au_section(f) for f in result_folders(cfg, is_au_result)])
