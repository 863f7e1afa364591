"""``cxatlas au-tuning``: run two trained models on an action-unit image series and compare their AU tuning
(Inagaki et al. 2022, the paper's main result).

Inagaki et al.: "we increased the intensity of one of the AUs from the minimum (0.0) to the maximum (1.0) at 11
steps", recorded the responses of each CNN's seven output units, "adjusted the baseline activity by subtracting the
response to the null image", and "computed the pairwise correlation coefficients between the two sets of seven
profiles each of which was obtained from KDEF-trained and KRC-trained CNNs, thus resulting in a 7x7 matrix";
"Higher correlation coefficients were associated with higher choice rates in both database-swapped conditions".

Input: a manifest (CSV: ``au, level, image``; checked by :func:`cxatlas.stages.inagaki.read_au_manifest`) of
images the user supplies (e.g. FaceGen renders; ``cxatlas au-series`` writes a small synthetic one for tests and the
demo), and two models: ``--transfer DIR`` (the ``model_<A>.pt``/``model_<B>.pt`` and ``confusion.csv`` that
``cxatlas transfer`` wrote) or ``--checkpoint-a``/``--checkpoint-b`` (cxatlas checkpoints of one registered model).
Each image is scored whole as one face crop (resized to the model's input; FaceGen renders are already face-only,
so no face detection runs). Written to ``--out``:

* ``au_responses.csv``: model, au, level, unit, response, baseline_subtracted.
* ``au_similarity.csv``: unit_a, unit_b, spearman (the units x units matrix of :func:`profile_spearman_matrix`).
* ``au_vs_confusion.csv``: per swapped condition (train, test): Spearman rho and p between the matrix, oriented as
  the confusion matrix (rows: the test database's model's units = true labels; columns: the trained model's units =
  chosen labels), and the row-normalised choice rates. Only with ``--transfer`` or ``--confusion``.
* ``au_pca.csv``: model, unit, pc1..pc3 of the peak/trough matrix (:func:`peak_trough_pca`); ``au_similarity.png``;
  ``au_run.json`` (inputs, names, units, explained variance, the correlations).

Everything is checked (manifest, images, checkpoints, shared units, confusion labels) before anything is written.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cxatlas.stages.inagaki import (AuManifestError, au_profiles, matrix_vs_confusion, peak_trough, peak_trough_pca,
                                    profile_spearman_matrix, read_au_manifest)

__all__ = ["AuTuningReport", "run_au_tuning", "models_of_transfer"]


@dataclass
class AuTuningReport:
    out_dir: str
    names: tuple[str, str]
    units: list[str]
    aus: list[str]
    levels: list[float]
    similarity: np.ndarray = field(repr=False)
    vs_confusion: list[dict] = field(default_factory=list)
    explained: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        a, b = self.names
        diag = np.diag(self.similarity)
        lines = [f"AU tuning of models {a} and {b} in {self.seconds:.1f}s: {len(self.aus)} AUs x {len(self.levels)} "
                 f"levels (null image level {self.levels[0]:g}), {len(self.units)} units",
                 "  same-unit profile similarity (Spearman): " + ", ".join(
                     f"{u} {r:.2f}" for u, r in zip(self.units, diag))]
        for row in self.vs_confusion:
            lines.append(f"  matrix vs choice rates, {row['train']} tested on {row['test']}: rs = {row['spearman']:.2f}"
                         f", p = {row['p']:.3g} (Inagaki et al.: rs = 0.59 and 0.49)")
        lines.append(f"  peak/trough PCA, explained variance: {', '.join(f'{x:.2f}' for x in self.explained)}")
        lines.append(f"  wrote au_responses.csv, au_similarity.csv, au_pca.csv, au_similarity.png, au_run.json"
                     f"{', au_vs_confusion.csv' if self.vs_confusion else ''} to {self.out_dir}")
        return "\n".join(lines)


def models_of_transfer(folder: str | Path) -> tuple[list[str], list[Path], Path]:
    """The two models (names in ``summary.csv`` order), their checkpoints and the confusion table of a transfer run."""
    d = Path(folder)
    summary, confusion = d / "summary.csv", d / "confusion.csv"
    if not (summary.is_file() and confusion.is_file()):
        raise AuManifestError(f"{d} is not a `cxatlas transfer` output folder (needs summary.csv and confusion.csv)")
    names = list(dict.fromkeys(pd.read_csv(summary)["train"].astype(str)))
    paths = [d / f"model_{n}.pt" for n in names]
    absent = [str(p) for p in paths if not p.is_file()]
    if len(names) != 2 or absent:
        raise AuManifestError(f"{d}: expected two models model_<name>.pt for {names}; missing {absent}")
    return names, paths, confusion


def _model_name(path: Path) -> str:
    import torch

    from cxatlas.models.checkpoint import CheckpointError

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unreadable bytes fail in many ways
        raise CheckpointError(f"'{path}' is not a readable cxatlas checkpoint ({type(exc).__name__})") from None
    name = payload.get("model_name") if isinstance(payload, dict) else None
    if not name:
        raise CheckpointError(f"'{path}' is not a cxatlas checkpoint (no model_name)")
    return str(name)


def _load_images(paths: Sequence[str]) -> list[np.ndarray]:
    from PIL import Image

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                out.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds on bad files
            raise AuManifestError(f"AU image {p} cannot be read as an image ({type(exc).__name__})") from None
    return out


def _choice_rates(confusion: pd.DataFrame, train: str, test: str, units: list[str]) -> np.ndarray:
    part = confusion[(confusion["train"].astype(str) == train) & (confusion["test"].astype(str) == test)]
    m = part.pivot_table(index="true_label", columns="predicted_label", values="count", aggfunc="sum")
    m = m.reindex(index=units, columns=units).to_numpy(dtype=float)
    rows = np.nansum(m, axis=1, keepdims=True)
    return np.divide(m, rows, out=np.full_like(m, np.nan), where=rows > 0)


def run_au_tuning(manifest: str, out: str, *, transfer: str | None = None, checkpoint_a: str | None = None,
                  checkpoint_b: str | None = None, names: Sequence[str] | None = None, confusion: str | None = None,
                  device: str = "cpu", batch_size: int = 32) -> AuTuningReport:
    """Score the AU series with both models and write the AU-tuning tables (see the module docstring)."""
    from cxatlas.models.registry import load_expression_model

    t0 = time.perf_counter()
    series = read_au_manifest(manifest)
    if transfer and (checkpoint_a or checkpoint_b):
        raise AuManifestError("give either --transfer or --checkpoint-a and --checkpoint-b, not both")
    if transfer:
        labels, paths, conf_path = models_of_transfer(transfer)
        conf_path = Path(confusion) if confusion else conf_path
    elif checkpoint_a and checkpoint_b:
        paths = [Path(checkpoint_a), Path(checkpoint_b)]
        labels = list(names) if names else ["A", "B"]
        conf_path = Path(confusion) if confusion else None
    else:
        raise AuManifestError("give --transfer DIR (a `cxatlas transfer` output) or --checkpoint-a and --checkpoint-b")
    if len(labels) != 2 or labels[0] == labels[1]:
        raise AuManifestError(f"the two models need two different names, got {labels}")
    conf = None
    if conf_path is not None:
        if not conf_path.is_file():
            raise AuManifestError(f"confusion table {conf_path} does not exist")
        conf = pd.read_csv(conf_path, dtype={"train": str, "test": str})
        need = {"train", "test", "condition", "true_label", "predicted_label", "count"}
        if not need <= set(conf.columns):
            raise AuManifestError(f"confusion table {conf_path} lacks column(s) {sorted(need - set(conf.columns))}")
    models = [load_expression_model(_model_name(p), p, device=device, batch_size=batch_size) for p in paths]
    units = list(models[0].labels)
    if sorted(units) != sorted(models[1].labels):
        raise AuManifestError(f"the two models do not share their units: {units} vs {list(models[1].labels)}")
    if conf is not None:
        unknown = sorted((set(conf["true_label"]) | set(conf["predicted_label"])) - set(units))
        if unknown:
            raise AuManifestError(f"confusion table {conf_path} has labels {unknown} that the models lack")
    images = _load_images(series["image"].tolist())

    aus = list(dict.fromkeys(series["au"]))
    levels = sorted(series["level"].unique())
    responses = []
    for m in models:
        scores = m.predict_windows([img[None] for img in images])
        order = [list(m.labels).index(u) for u in units]
        responses.append(scores[:, order].astype(np.float64).reshape(len(aus), len(levels), len(units)))
    profiles = [au_profiles(r) for r in responses]
    sim = profile_spearman_matrix(profiles[0], profiles[1])
    peaks = np.concatenate([peak_trough(p) for p in profiles], axis=1)  # (AUs, 2 * units)
    scores_pc, explained = peak_trough_pca(peaks, 3)

    vs = []
    if conf is not None:
        a, b = labels
        for train, test, matrix in ((a, b, sim.T), (b, a, sim)):
            rates = _choice_rates(conf, train, test, units)
            if np.isfinite(rates).any():
                rho, p = matrix_vs_confusion(matrix, rates)
                vs.append({"train": train, "test": test, "spearman": rho, "p": p,
                           "cells": int(np.isfinite(rates).sum())})

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, raw, prof in zip(labels, responses, profiles):
        for i, au in enumerate(aus):
            for j, level in enumerate(levels):
                for k, unit in enumerate(units):
                    rows.append({"model": name, "au": au, "level": float(level), "unit": unit,
                                 "response": raw[i, j, k],
                                 "baseline_subtracted": prof[i, j - 1, k] if j else float("nan")})
    pd.DataFrame(rows).to_csv(out_dir / "au_responses.csv", index=False)
    pd.DataFrame([{"unit_a": ua, "unit_b": ub, "spearman": sim[i, j]} for i, ua in enumerate(units)
                  for j, ub in enumerate(units)]).to_csv(out_dir / "au_similarity.csv", index=False)
    pca = pd.DataFrame([{"model": name, "unit": u} for name in labels for u in units])
    for c in range(scores_pc.shape[1]):
        pca[f"pc{c + 1}"] = scores_pc[:, c]
    pca.to_csv(out_dir / "au_pca.csv", index=False)
    if vs:
        pd.DataFrame(vs).to_csv(out_dir / "au_vs_confusion.csv", index=False)
    _heatmap(sim, units, labels, out_dir / "au_similarity.png")
    run = {"manifest": str(manifest), "models": labels, "checkpoints": [str(p) for p in paths],
           "model_versions": [m.version for m in models], "units": units, "aus": aus,
           "levels": [float(x) for x in levels], "explained_variance": [float(x) for x in explained],
           "vs_confusion": vs, "confusion": str(conf_path) if conf_path else None}
    (out_dir / "au_run.json").write_text(json.dumps(run, indent=2) + "\n")
    return AuTuningReport(str(out_dir), (labels[0], labels[1]), units, aus, [float(x) for x in levels], sim, vs,
                          [float(x) for x in explained], time.perf_counter() - t0)


def _heatmap(sim: np.ndarray, units: list[str], names: Sequence[str], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(sim, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(units)), units, rotation=90, fontsize=7)
    ax.set_yticks(range(len(units)), units, fontsize=7)
    ax.set_xlabel(f"unit of model {names[1]}")
    ax.set_ylabel(f"unit of model {names[0]}")
    ax.set_title("AU-profile similarity (Spearman)", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(path, dpi=120, facecolor="white")
