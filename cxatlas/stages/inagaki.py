"""Inagaki et al. (2022), Front. Psychol.: the statistics of repeated transfer runs and of action-unit (AU) tuning.

Two parts, both on small in-memory tables (pandas; statsmodels and pingouin for the tests):

* **Repeated runs** (:func:`balanced_correct_rates`, :func:`summarise_runs`, :func:`paired_tests`,
  :func:`two_way_anova`): per run, the per-expression correct rates of each model on each test set (matched and
  swapped), their mean and SD over runs, paired t-tests matched vs swapped, and the two-way ANOVA condition x
  expression.
* **AU tuning** (:func:`read_au_manifest`, :func:`au_profiles`, :func:`profile_spearman_matrix`,
  :func:`matrix_vs_confusion`, :func:`peak_trough`, :func:`peak_trough_pca`): responses of each model's output units to
  images of single AUs at graded intensities, baseline-subtracted, compared between the two models.
  :func:`synthetic_au_series` generates a small series with a planted profile for tests and the demo (generated,
  never downloaded); real FaceGen series are the user's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.stats

from cxatlas.core.errors import UserError

__all__ = ["AuManifestError", "balanced_correct_rates", "summarise_runs", "paired_tests", "two_way_anova",
           "read_au_manifest", "au_profiles", "profile_spearman_matrix", "matrix_vs_confusion", "peak_trough",
           "peak_trough_pca", "synthetic_au_series", "AuSeries"]


class AuManifestError(UserError, ValueError):
    """An AU manifest that cannot be used (missing column, level or image); the message names what to change."""


# ---------------------------------------------------------------------------------------------------------------------
# repeated runs: correct rates and their tests
# ---------------------------------------------------------------------------------------------------------------------
def balanced_correct_rates(confusion: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-expression correct rates of a confusion matrix (rows: true, columns: chosen) and their mean.

    Inagaki et al.: "the average correct rate across the seven facial expressions". The per-expression rate is the
    diagonal over the row total; the mean is over expressions (balanced: each expression weighs the same, however
    many test images it has), not trace / total. A row with no test image gives NaN and is left out of the mean.
    """
    m = np.asarray(confusion, dtype=np.float64)
    rows = m.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(rows > 0, np.diag(m) / np.where(rows > 0, rows, 1.0), np.nan)
    return rates, float(np.nanmean(rates)) if np.isfinite(rates).any() else float("nan")


def summarise_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and SD over runs of each per-expression correct rate, and of the balanced mean (``expression='mean'``).

    ``runs``: one row per run, train, test, condition, expression, correct_rate. Inagaki et al.: "For each database,
    we repeated the experimental runs 40 times"; figures show "The means and standard deviations across 40 runs".
    SD is the sample SD (ddof 1).
    """
    balanced = (runs.groupby(["run", "train", "test", "condition"], as_index=False)["correct_rate"].mean()
                .assign(expression="mean"))
    both = pd.concat([runs[balanced.columns], balanced], ignore_index=True)
    return (both.groupby(["train", "test", "condition", "expression"], sort=False)["correct_rate"]
            .agg(mean="mean", sd=lambda x: x.std(ddof=1), runs="count").reset_index())


def paired_tests(runs: pd.DataFrame) -> pd.DataFrame:
    """Per trained model: paired t-test over runs of its balanced correct rate, matched vs swapped (pingouin).

    Inagaki et al. compare "the correct rates in the database-swapped conditions" with "those in the database-matched
    conditions" per CNN. Reading taken: a run's model is tested on its own test set and on the other database's, so
    the two rates of one run are paired; the test is two-sided (pingouin ``ttest(paired=True)``).
    """
    import pingouin as pg

    balanced = runs.groupby(["run", "train", "condition"], as_index=False)["correct_rate"].mean()
    out = []
    for train, part in balanced.groupby("train", sort=False):
        wide = part.pivot(index="run", columns="condition", values="correct_rate").dropna()
        if {"matched", "swapped"} <= set(wide.columns) and len(wide) >= 2:
            res = pg.ttest(wide["matched"], wide["swapped"], paired=True)
            p = float(res["p_val"].iloc[0] if "p_val" in res else res["p-val"].iloc[0])
            out.append({"train": train, "runs": len(wide), "matched_mean": float(wide["matched"].mean()),
                        "swapped_mean": float(wide["swapped"].mean()), "t": float(res["T"].iloc[0]),
                        "dof": float(res["dof"].iloc[0]), "p": p})
    return pd.DataFrame(out, columns=["train", "runs", "matched_mean", "swapped_mean", "t", "dof", "p"])


def two_way_anova(runs: pd.DataFrame, factor: str = "condition") -> pd.DataFrame:
    """Two-way ANOVA of the per-expression correct rates: ``factor`` x expression, with interaction (statsmodels).

    Inagaki et al.: "the way in which the correct rates depended on the facial expressions differed between the two
    databases (two-way ANOVA; database, p = 0.13; facial expression, p < 0.0001; interaction, p < 0.0001)". Here per
    trained model with ``factor="condition"`` (matched/swapped x expression, issue #22), or over the matched runs
    with ``factor="train"`` (the paper's database x expression). Type II sums of squares; each run's rate of one
    expression is one observation.
    """
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    data = runs[["correct_rate", factor, "expression"]].dropna().rename(columns={factor: "factor"})
    fit = smf.ols("correct_rate ~ C(factor) * C(expression)", data=data).fit()
    table = anova_lm(fit, typ=2).reset_index().rename(columns={"index": "source", "PR(>F)": "p"})
    table["source"] = table["source"].replace({"C(factor)": factor, "C(expression)": "expression",
                                               "C(factor):C(expression)": f"{factor}:expression"})
    return table


# ---------------------------------------------------------------------------------------------------------------------
# AU tuning
# ---------------------------------------------------------------------------------------------------------------------
def read_au_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check an AU manifest (CSV: ``au``, ``level``, ``image``), sorted by au and level.

    Inagaki et al.: "we increased the intensity of one of the AUs from the minimum (0.0) to the maximum (1.0) at 11
    steps"; "the generated image with the minimum intensity was identical across the 20 AUs ... (hereafter ... the
    'null image')". So every AU must have the same levels, the lowest of which is the null image, and every image
    must exist (relative paths are read from the manifest's folder). Refused with one line otherwise.
    """
    p = Path(path)
    if not p.is_file():
        raise AuManifestError(f"AU manifest {p} does not exist")
    try:
        df = pd.read_csv(p, dtype={"au": str, "image": str})
    except Exception as exc:
        raise AuManifestError(f"cannot read AU manifest {p} as CSV: {exc}") from None
    missing = [c for c in ("au", "level", "image") if c not in df.columns]
    if missing:
        raise AuManifestError(f"AU manifest {p} lacks column(s) {missing}; expected au, level, image")
    if df[["au", "level", "image"]].isna().any().any():
        row = int(df[["au", "level", "image"]].isna().any(axis=1).to_numpy().argmax())
        raise AuManifestError(f"AU manifest {p} row {row + 2} has an empty au, level or image")
    df["level"] = pd.to_numeric(df["level"], errors="coerce")
    if df["level"].isna().any():
        raise AuManifestError(f"AU manifest {p} has a level that is not a number")
    levels = sorted(df["level"].unique())
    if len(levels) < 2:
        raise AuManifestError(f"AU manifest {p} needs at least two levels (the null image and one more)")
    if df.duplicated(["au", "level"]).any():
        au, level = df.loc[df.duplicated(["au", "level"]), ["au", "level"]].iloc[0]
        raise AuManifestError(f"AU manifest {p} has two images for au {au} at level {level:g}")
    for au, part in df.groupby("au"):
        lack = sorted(set(levels) - set(part["level"]))
        if lack:
            raise AuManifestError(f"AU manifest {p}: au {au} lacks level(s) {[float(x) for x in lack]} (every AU needs "
                                  f"every level, {[float(x) for x in levels]})")
    images = [Path(x) if Path(x).is_absolute() else p.parent / x for x in df["image"]]
    absent = [str(x) for x in images if not x.is_file()]
    if absent:
        raise AuManifestError(f"AU manifest {p}: {len(absent)} image(s) do not exist, first {absent[0]}")
    df["image"] = [str(x) for x in images]
    return df.sort_values(["au", "level"]).reset_index(drop=True)


def au_profiles(responses: np.ndarray) -> np.ndarray:
    """Baseline-subtracted response profiles, null image excluded.

    ``responses``: (AUs, levels, units), levels ascending, level 0 the null image. Inagaki et al.: "We adjusted the
    baseline activity by subtracting the response to the null image from the data so that the response magnitude to
    the null image became 0 in every computational unit", and "We excluded the responses to the null image from the
    computation of the correlation coefficient". Reading taken: the baseline is the mean over AUs of the level-0
    responses (the paper's null images are identical, so their responses are too).

    Returns
    -------
    ndarray, (AUs, levels - 1, units)
    """
    r = np.asarray(responses, dtype=np.float64)
    baseline = r[:, 0, :].mean(axis=0)
    return r[:, 1:, :] - baseline


def profile_spearman_matrix(profiles_a: np.ndarray, profiles_b: np.ndarray) -> np.ndarray:
    """units_a x units_b Spearman rank correlations between the full AU profiles of two models' units.

    Inagaki et al.: "For a given pair of FC3 units, we evaluated the similarity of the selectivity by computing
    Spearman's rank correlation coefficient (rs) between the full profiles of their responses to the AUs ... The
    combination of the two sets of the seven units from the KDEF-and KRC-trained CNNs yielded a 7x7 matrix".
    """
    a = np.asarray(profiles_a, dtype=np.float64)
    b = np.asarray(profiles_b, dtype=np.float64)
    fa = a.reshape(-1, a.shape[-1])
    fb = b.reshape(-1, b.shape[-1])
    rho = scipy.stats.spearmanr(fa, fb).statistic
    ka = fa.shape[1]
    return np.asarray(rho)[:ka, ka:] if np.ndim(rho) == 2 else np.array([[float(rho)]])


def matrix_vs_confusion(similarity: np.ndarray, choice_rates: np.ndarray) -> tuple[float, float]:
    """Spearman rho (and p) between the AU-profile similarity matrix and the swapped confusion matrix's choice rates.

    Inagaki et al.: "Higher correlation coefficients were associated with higher choice rates in both
    database-swapped conditions (Figures 9C,D ...)". Reading taken: the 49 cells paired element by element, the
    similarity's rows the model tested, its columns the model trained, the same orientation as the confusion
    matrix's rows (true) and columns (chosen).
    """
    x = np.asarray(similarity, dtype=np.float64).ravel()
    y = np.asarray(choice_rates, dtype=np.float64).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    res = scipy.stats.spearmanr(x[ok], y[ok])
    return float(res.statistic), float(res.pvalue)


def peak_trough(profiles: np.ndarray) -> np.ndarray:
    """Per AU and unit the single peak or trough value: the response of largest magnitude over levels, signed.

    Inagaki et al.: "we reduced the dimensionality of a response profile from 220 (20 AUs x 11 levels) to 20 by
    adopting a single peak or trough value for each AU."

    Returns
    -------
    ndarray, (AUs, units)
    """
    p = np.asarray(profiles, dtype=np.float64)
    idx = np.abs(p).argmax(axis=1)
    return np.take_along_axis(p, idx[:, None, :], axis=1)[:, 0, :]


def peak_trough_pca(features: np.ndarray, n_components: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """PCA of the AUs x (units of both models) peak/trough matrix: each unit's scores and the explained variance.

    Inagaki et al.: "We then aligned these values taken from the seven profiles of the two CNNs to create a feature
    matrix (20x14) to which we applied principal component analysis." Reading taken: the 14 units are the
    observations, the 20 AUs the variables (Fig. 10 plots the facial expressions in PC space), centred, no scaling.

    Returns
    -------
    scores : ndarray, (units, n_components)
    explained : ndarray, (n_components,), share of variance
    """
    x = np.asarray(features, dtype=np.float64).T
    x = x - x.mean(axis=0)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    k = min(n_components, len(s))
    total = float((s ** 2).sum()) or 1.0
    return u[:, :k] * s[:k], (s[:k] ** 2) / total


# ---------------------------------------------------------------------------------------------------------------------
# a synthetic AU series (generated; for tests and the demo)
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class AuSeries:
    """A generated AU series: the manifest, and two models' responses with a planted tuning."""

    manifest: Path
    aus: list[str]
    levels: np.ndarray
    units: list[str]
    responses_a: np.ndarray
    responses_b: np.ndarray
    planted_peaks_a: np.ndarray
    planted_peaks_b: np.ndarray


def synthetic_au_series(out: str | os.PathLike, *, aus: Sequence[str] = ("AU1", "AU4", "AU6", "AU12", "AU15", "AU25"),
                        levels: int = 6, units: Sequence[str] = ("neutral", "happy", "sad", "angry"),
                        differ: Sequence[str] = ("angry",), noise: float = 0.02, seed: int = 0) -> AuSeries:
    """Write a small AU series (grey PNG images whose brightness grows with the level; the null image shared) and
    two models' responses with a planted tuning: each unit responds linearly to the level of its AUs with a planted
    slope; model B shares A's slopes except for the ``differ`` units, whose slopes are reversed.

    Not a face renderer: the images stand in for FaceGen renders so the manifest checks and the pipeline run end to
    end without downloads; the responses carry the planted profile the analysis must recover.
    """
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lv = np.linspace(0.0, 1.0, levels)
    null = out / "null.png"
    Image.fromarray(np.full((32, 32), 40, dtype=np.uint8)).save(null)
    rows = []
    for i, au in enumerate(aus):
        for j, level in enumerate(lv):
            if j == 0:
                rows.append({"au": au, "level": level, "image": null.name})
                continue
            img = np.full((32, 32), 40, dtype=np.uint8)
            img[i * 4:(i + 1) * 4, :] = int(40 + 200 * level)
            name = f"{au}_{j:02d}.png"
            Image.fromarray(img).save(out / name)
            rows.append({"au": au, "level": level, "image": name})
    manifest = out / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    slopes_a = rng.normal(size=(len(aus), len(units)))
    slopes_b = slopes_a.copy()
    for u in differ:
        slopes_b[:, list(units).index(u)] *= -1.0
    base = rng.normal(size=len(units))

    def respond(slopes):
        return base + lv[None, :, None] * slopes[:, None, :] + noise * rng.normal(size=(len(aus), levels, len(units)))

    return AuSeries(manifest, list(aus), lv, list(units), respond(slopes_a), respond(slopes_b), slopes_a, slopes_b)
