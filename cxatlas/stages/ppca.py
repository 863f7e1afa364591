"""Front end for principal preserved components: files in, tables and a heatmap out.

Brooks et al. (2024), iScience, compare how people in different cultures rate the same facial-expression stimuli on
the same attributes, and ask which dimensions of those ratings are preserved across cultures (Fig. 2: attributes x
preserved components). :func:`run_ppca` takes one file per dataset (culture, rater group, model), each with a
stimulus id column and the same numeric attribute columns, aligns the rows by id, runs PPCA (two files) or G-PPCA
(three or more) from :mod:`cxatlas.stats.ppca`, and writes:

- ``components.csv``: one row per attribute, ``attribute, component_1..K``: unit-norm loadings before rotation,
  each column sign-fixed so its largest loading is positive.
- ``significance.csv``: one row per component: ``component, covariance, cv_correlation, p_value, q_value, snr,
  kept``.
- ``rotated_loadings.csv``: one row per attribute: ``attribute, rotated_1..k`` (varimax-rotated kept components),
  then ``rotated_j_p_value`` and ``rotated_j_snr`` (bootstrap significance of each loading).
- ``loadings_heatmap.png``: attributes x kept (rotated) components, diverging colour map, significant loadings
  marked.
- ``pairs.csv``, ``loading_significance.csv``, ``ppca_run.json`` (the rule, the counts), and, when attributes are
  ``country:label``, ``universality.csv``: each rotated dimension's class (the paper's 21 of 28, see
  :func:`cxatlas.stats.ppca.universality_classes`).

Everything runs in-process with pandas and numpy (the inputs are stimuli x attributes, thousands of rows at most);
no Spark. Bad input raises :class:`PpcaInputError` (a :class:`~cxatlas.core.errors.UserError`) naming the file and
what to change.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cxatlas.core.errors import UserError
from cxatlas.stats.ppca import UNIVERSALITY_CLASSES, PpcaResult, ppca

__all__ = ["PpcaInputError", "PpcaReport", "read_table", "load_datasets", "run_ppca", "loadings_heatmap"]

_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
_SHOW = 5  # how many offending ids / columns an error message lists


class PpcaInputError(UserError, ValueError):
    """An input file cannot be used for PPCA; the message names the file and what is wrong."""


@dataclass
class PpcaReport:
    """What :func:`run_ppca` read, computed and wrote."""

    inputs: list[str]
    id_column: str
    out_dir: str
    attributes: list[str]
    n_stimuli: int
    result: PpcaResult = field(repr=False)
    files: dict[str, str] = field(default_factory=dict)
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    names: list[str] = field(default_factory=list)
    preservation_r: float | None = None
    universality: pd.DataFrame | None = field(default=None, repr=False)

    def summary(self) -> str:
        r = self.result
        kind = "G-PPCA" if r.generalized else "PPCA"
        lines = [
            f"{kind} of {len(self.inputs)} datasets ({', '.join(Path(p).name for p in self.inputs)}) in "
            f"{self.seconds:.1f}s: {self.n_stimuli} stimuli x {len(self.attributes)} attributes",
            f"  {r.n_kept} of {r.loadings.shape[1]} components kept by rule {r.rule_text} ({r.resamples} bootstrap "
            f"resamples, seed {r.seed})",
        ]
        for c in np.flatnonzero(r.kept)[:10]:
            top = np.argsort(-np.abs(r.loadings[:, c]))[:3]
            lines.append(f"    component {c + 1}: cv r={r.cv_correlations[c]:.3f}, p={r.p_values[c]:.3g}, "
                         f"SNR={r.snr[c]:.1f}; top attributes " + ", ".join(self.attributes[i] for i in top))
        if r.n_kept:
            lines.append(f"  varimax ({'Kaiser-normalised' if r.kaiser else 'statsmodels rotate_factors, no Kaiser'})"
                         f"; significant loadings per rotated dimension (top-N sign test, ForwardStop, "
                         f"{r.loading_resamples} resamples): {', '.join(str(int(x)) for x in r.n_significant_loadings)}")
        if self.preservation_r is not None and np.isfinite(self.preservation_r):
            lines.append(f"  countrywise loadings explained by the average loading: r = {self.preservation_r:.2f}, "
                         f"r^2 = {self.preservation_r ** 2:.2f} (Brooks et al.: r = .80, 63%)")
        if self.universality is not None and len(self.universality):
            u = self.universality
            counts = ", ".join(f"{c} {int((u['class'] == c).sum())}" for c in UNIVERSALITY_CLASSES)
            lines.append(f"  universal in meaning: {int(u['universal'].sum())} of {len(u)} rotated dimensions ({counts}; "
                         f"Brooks et al.: 21 of 28 = 12 + 4 + 5)")
        for path, cols in self.ignored_columns.items():
            lines.append(f"  ignored non-numeric columns of {Path(path).name}: {', '.join(cols)}")
        lines.append(f"  wrote {', '.join(Path(p).name for p in self.files.values())} to {self.out_dir}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# reading and aligning
# ----------------------------------------------------------------------------------------------------------------
def _is_parquet(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            if fh.read(4) == b"PAR1":
                return True
    except OSError as exc:
        raise PpcaInputError(f"cannot read {path}: {exc}") from exc
    return path.suffix.lower() in _PARQUET_SUFFIXES


def read_table(path: str | os.PathLike, id_column: str) -> pd.DataFrame:
    """Read one input: Parquet (by the ``PAR1`` magic bytes or a Parquet suffix), else CSV; ids read as text.

    Why ids as text: a CSV id ``007`` would otherwise become the integer 7 in one file and stay ``"007"`` in a
    Parquet file, and the rows would silently fail to align.
    """
    p = Path(path)
    if not p.is_file():
        raise PpcaInputError(f"input file {p} does not exist")
    parquet = _is_parquet(p)
    try:
        df = pd.read_parquet(p) if parquet else pd.read_csv(p, dtype={id_column: str})
    except Exception as exc:  # a parser error is bad input, not a cxatlas fault
        raise PpcaInputError(f"cannot read {p} as {'Parquet' if parquet else 'CSV'}: {exc}") from exc
    if id_column not in df.columns:
        raise PpcaInputError(f"{p} has no id column {id_column!r} (its columns: {_names(list(df.columns))})")
    df[id_column] = df[id_column].astype(str)
    return df


def _names(items: Sequence, limit: int = _SHOW) -> str:
    items = [str(x) for x in items]
    shown = ", ".join(repr(x) for x in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def load_datasets(inputs: Sequence[str | os.PathLike], id_column: str
                  ) -> tuple[list[np.ndarray], list[str], list[str], dict[str, list[str]]]:
    """Read, check and align the inputs.

    Every file must have ``id_column`` and the same numeric attribute columns (non-numeric columns other than the id
    are ignored and reported); ids must be unique within a file and present in every file; attributes must have no
    missing values. Rows are aligned to the first file's id order and columns to its column order.

    Returns
    -------
    datasets : list of ndarray, each (n, p)
    attributes : list of str
    ids : list of str
    ignored : dict file -> non-numeric columns ignored

    Raises
    ------
    PpcaInputError
        Naming the files and the offending columns or ids.
    """
    paths = [str(p) for p in inputs]
    if len(paths) < 2:
        raise PpcaInputError(f"PPCA needs at least 2 input files, got {len(paths)}")
    frames = [read_table(p, id_column) for p in paths]

    numeric: list[list[str]] = []
    ignored: dict[str, list[str]] = {}
    for path, df in zip(paths, frames):
        cols = [c for c in df.columns if c != id_column]
        num = [str(c) for c in cols if pd.api.types.is_numeric_dtype(df[c])]
        other = [str(c) for c in cols if not pd.api.types.is_numeric_dtype(df[c])]
        numeric.append(num)
        if other:
            ignored[path] = other
    ref_path, ref = paths[0], numeric[0]
    if not ref:
        raise PpcaInputError(f"{ref_path} has no numeric attribute columns besides {id_column!r}")
    problems = []
    for path, num, df in zip(paths[1:], numeric[1:], frames[1:]):
        missing = [c for c in ref if c not in num]
        extra = [c for c in num if c not in ref]
        if missing:
            nonnum = [c for c in missing if c in df.columns]
            note = f" ({_names(nonnum)} present but not numeric)" if nonnum else ""
            problems.append(f"{path} lacks attribute column(s) {_names(missing)} that {ref_path} has{note}")
        if extra:
            problems.append(f"{path} has attribute column(s) {_names(extra)} that {ref_path} lacks")
    if problems:
        raise PpcaInputError("input files must have the same numeric attribute columns: " + "; ".join(problems))

    for path, df in zip(paths, frames):
        dup = df[id_column][df[id_column].duplicated()].unique()
        if dup.size:
            raise PpcaInputError(f"{path} has {dup.size} duplicated id(s) in column {id_column!r}: {_names(dup)}; "
                                 "each stimulus must appear once per file")
        na = df[ref].isna()
        if na.any().any():
            bad = [c for c in ref if na[c].any()]
            raise PpcaInputError(f"{path} has missing values in attribute column(s) {_names(bad)} (ids "
                                 f"{_names(df.loc[na.any(axis=1), id_column])}); drop or impute those rows first")

    id_sets = [set(df[id_column]) for df in frames]
    common = set.intersection(*id_sets)
    if any(len(s) != len(common) for s in id_sets):
        lacking = []
        for path, s in zip(paths, id_sets):
            absent = sorted(set.union(*id_sets) - s)
            if absent:
                lacking.append(f"{path} lacks {len(absent)} ({_names(absent)})")
        raise PpcaInputError("every stimulus id must be in every file (rows are matched by id): "
                             + "; ".join(lacking))
    ids = [i for i in frames[0][id_column]]
    datasets = [df.set_index(id_column).loc[ids, ref].to_numpy(dtype=np.float64) for df in frames]
    if len(ids) < 3:
        raise PpcaInputError(f"PPCA needs at least 3 stimuli shared by all files, got {len(ids)}")
    for path, x in zip(paths, datasets):
        if not np.isfinite(x).all():
            bad = [ref[j] for j in np.flatnonzero(~np.isfinite(x).all(axis=0))]
            raise PpcaInputError(f"{path} has infinite values in attribute column(s) {_names(bad)}")
    return datasets, ref, ids, ignored


# ----------------------------------------------------------------------------------------------------------------
# figure
# ----------------------------------------------------------------------------------------------------------------
def loadings_heatmap(loadings: np.ndarray, attributes: Sequence[str], out: str | os.PathLike, *,
                     p_values: np.ndarray | None = None, alpha: float = 0.05,
                     column_labels: Sequence[str] | None = None,
                     title: str = "Preserved components\n(varimax-rotated loadings)", dpi: int = 120) -> Path:
    """Attributes x components heatmap of loadings (iScience Fig. 2 analogue), diverging map centred on zero.

    Loadings with a bootstrap p-value below ``alpha`` carry a dot, so the eye can tell stable loadings from noise.
    With no components the figure says so (the file is always written, so downstream steps find it).
    """
    loadings = np.asarray(loadings, dtype=np.float64).reshape(len(attributes), -1)
    p, k = loadings.shape
    fig = Figure(figsize=(max(4.5, 2.0 + 0.7 * k), max(3.0, 1.4 + 0.28 * p)), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if k == 0:
        ax.text(0.5, 0.5, "no component kept", ha="center", va="center", fontsize=12)
        ax.set_axis_off()
    else:
        vmax = float(np.abs(loadings).max()) or 1.0
        im = ax.imshow(loadings, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
        ax.set_yticks(range(p), labels=list(attributes), fontsize=8)
        labels = list(column_labels) if column_labels is not None else [f"{j + 1}" for j in range(k)]
        ax.set_xticks(range(k), labels=labels, fontsize=8)
        xlabel = "component"
        if p_values is not None:
            rows, cols = np.nonzero(np.asarray(p_values) < alpha)
            ax.scatter(cols, rows, s=6, c="black", marker="o")
            xlabel += f"\n(dot: bootstrap p < {alpha:g})"
        ax.set_xlabel(xlabel, fontsize=8)
        fig.colorbar(im, ax=ax, label="loading", shrink=0.8)
    ax.set_title(title, fontsize=10)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


# ----------------------------------------------------------------------------------------------------------------
# stage
# ----------------------------------------------------------------------------------------------------------------
def dataset_names(inputs: Sequence[str], names: Sequence[str] | None = None) -> list[str]:
    """A name per input (the country, in Brooks' G-PPCA): given ``names``, else the file stems, made unique."""
    if names:
        names = [str(x) for x in names]
        if len(names) != len(inputs):
            raise PpcaInputError(f"--name given {len(names)} times for {len(inputs)} inputs; give one per --input")
        if len(set(names)) != len(names):
            raise PpcaInputError(f"dataset names must be unique, got {names}")
        return names
    stems = [Path(str(p)).stem for p in inputs]
    return stems if len(set(stems)) == len(stems) else [f"{i + 1}_{s}" for i, s in enumerate(stems)]


def split_attribute(attribute: str) -> tuple[str | None, str]:
    """``"US:anger"`` -> ``("US", "anger")`` (the brooks288 ``country:label`` convention); ``"anger"`` -> (None, ..)."""
    group, sep, label = attribute.partition(":")
    return (group, label) if sep else (None, attribute)


def run_ppca(inputs: list[str], id_column: str, out_dir: str, *, resamples: int = 1000, seed: int = 0,
             alpha: float = 0.05, snr: float = 3.0, rule: str = "brooks", bh_dimensions: int | None = 48,
             gppca_bh: str = "within_pair", kaiser: bool = False, loading_resamples: int | None = None,
             names: Sequence[str] | None = None) -> PpcaReport:
    """Run PPCA (two inputs) or G-PPCA (three or more) on files of stimuli x attributes and write the results.

    The rule (``rule``, default ``"brooks"``: the paper's rule for the number of inputs, see
    :func:`cxatlas.stats.ppca.rule_for`) is written into every output: a ``rule`` column in the CSVs, the heatmap
    title, and ``ppca_run.json``. Everything is checked before anything is written.

    Parameters
    ----------
    inputs : list of str
        One file per dataset (CSV or Parquet), each with ``id_column`` and the same numeric attribute columns.
    id_column : str
        Stimulus id used to match rows across files.
    out_dir : str
        Created if needed; the outputs are overwritten.
    resamples, seed, alpha, snr, rule, bh_dimensions, gppca_bh, kaiser, loading_resamples : see
        :func:`cxatlas.stats.ppca.ppca`.
    names : list of str, optional
        One name per input (default: the file stems), used in ``pairs.csv``.

    Returns
    -------
    PpcaReport
    """
    import json

    from cxatlas.stats.ppca import RULES, loading_preservation, rule_for, universality_classes

    t0 = time.perf_counter()
    if rule not in RULES:
        raise PpcaInputError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    if len(inputs) < 2:
        raise PpcaInputError(f"PPCA needs at least 2 input files (datasets, e.g. countries), got {len(inputs)}")
    try:
        rule_for(rule, len(inputs))
    except ValueError as exc:
        raise PpcaInputError(str(exc)) from None
    labels = dataset_names(inputs, names)
    datasets, attributes, ids, ignored = load_datasets(inputs, id_column)
    result = ppca(datasets, resamples=resamples, seed=seed, alpha=alpha, snr_threshold=snr, rule=rule,
                  bh_dimensions=bh_dimensions, gppca_bh=gppca_bh, kaiser=kaiser, loading_resamples=loading_resamples)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    k_all = result.loadings.shape[1]

    comp = pd.DataFrame(result.loadings, columns=[f"component_{j + 1}" for j in range(k_all)])
    comp.insert(0, "attribute", attributes)
    sig = pd.DataFrame({
        "component": np.arange(1, k_all + 1), "covariance": result.covariances,
        "cv_correlation": result.cv_correlations, "p_value": result.p_values, "q_value": result.q_values,
        "snr": result.snr, "kept": result.kept,
        "bootstrap_sd": result.bootstrap_sd, "bh_pass": result.bh_pass, "forwardstop_pass": result.forwardstop_pass,
        "snr_pass": result.snr_pass, "graph_pass": result.graph_pass, "rule": result.rule_text,
    })
    k = result.rotated_loadings.shape[1]
    rot = pd.DataFrame({"attribute": attributes})
    for j in range(k):
        rot[f"rotated_{j + 1}"] = result.rotated_loadings[:, j]
    for j in range(k):
        rot[f"rotated_{j + 1}_p_value"] = result.loading_p_values[:, j]
        rot[f"rotated_{j + 1}_snr"] = result.loading_snr[:, j]
    for j in range(k):
        order = np.argsort(-np.abs(result.rotated_loadings[:, j]), kind="stable")
        rank = np.empty(len(attributes), dtype=np.int64)
        rank[order] = np.arange(1, len(attributes) + 1)
        rot[f"rotated_{j + 1}_top_n_p_value"] = result.top_n_p_values[rank - 1, j]  # p of the top-N ending here
        rot[f"rotated_{j + 1}_significant"] = result.significant_loadings[:, j]
    rot["rule"] = result.rule_text
    tests = result.pair_tests
    pairs = pd.DataFrame([
        {"dimension": c + 1, "country_a": labels[a], "country_b": labels[b], "r": tests.r[i, c],
         "p": tests.p[i, c], "q": tests.q[i, c], "significant": bool(tests.significant[i, c]),
         "df": tests.df[c], "kept": bool(result.kept[c]), "rule": result.rule_text}
        for c in range(k_all) for i, (a, b) in enumerate(tests.pairs)])
    groups = [split_attribute(a) for a in attributes]
    per_country = []
    for j in range(k):
        for g in sorted({g for g, _ in groups if g is not None}):
            rows = [i for i, (gg, _) in enumerate(groups) if gg == g]
            per_country.append({"rotated": j + 1, "country": g, "attributes": len(rows),
                                "significant_loadings": int(result.significant_loadings[rows, j].sum())})
    preservation = None
    universality = pd.DataFrame(columns=["rotated", "class", "universal", "countries", "countries_significant",
                                         "not_significant", "concepts", "average_top"])
    if any(g is not None for g, _ in groups) and k:
        keep = [i for i, (g, _) in enumerate(groups) if g is not None]
        preservation, _ = loading_preservation(result.rotated_loadings[keep], [groups[i][0] for i in keep],
                                               [groups[i][1] for i in keep])
        universality = pd.DataFrame(universality_classes(
            result.rotated_loadings[keep], result.significant_loadings[keep], [groups[i][0] for i in keep],
            [groups[i][1] for i in keep]), columns=universality.columns)
    universality["rule"] = result.rule_text
    dims = pd.DataFrame({"rotated": np.arange(1, k + 1), "n_significant_loadings": result.n_significant_loadings,
                         "rule": result.rule_text})

    files = {
        "components": str(out / "components.csv"),
        "significance": str(out / "significance.csv"),
        "rotated_loadings": str(out / "rotated_loadings.csv"),
        "pairs": str(out / "pairs.csv"),
        "loading_significance": str(out / "loading_significance.csv"),
        "universality": str(out / "universality.csv"),
        "heatmap": str(out / "loadings_heatmap.png"),
        "run": str(out / "ppca_run.json"),
    }
    comp.to_csv(files["components"], index=False)
    sig.to_csv(files["significance"], index=False)
    rot.to_csv(files["rotated_loadings"], index=False)
    pairs.to_csv(files["pairs"], index=False)
    loading_sig = dims
    if per_country:
        loading_sig = dims.merge(pd.DataFrame(per_country), on="rotated", how="left")
    loading_sig.to_csv(files["loading_significance"], index=False)
    universality.to_csv(files["universality"], index=False)
    kind = "G-PPCA" if result.generalized else "PPCA"
    loadings_heatmap(result.rotated_loadings, attributes, files["heatmap"],
                     p_values=np.where(result.significant_loadings, 0.0, 1.0), alpha=alpha,
                     column_labels=[f"R{j + 1}" for j in range(k)],
                     title=f"{kind}: {k} preserved component{'s' if k != 1 else ''} (rule {result.rule})\n"
                           f"(varimax-rotated loadings; dot: significant, top-N sign test)")
    run = {"kind": kind, "rule": result.rule, "rule_requested": result.rule_requested, "rule_text": result.rule_text,
           "alpha": alpha, "snr_threshold": snr, "bh_dimensions": bh_dimensions, "gppca_bh": gppca_bh,
           "kaiser": kaiser, "resamples": resamples, "loading_resamples": result.loading_resamples, "seed": seed,
           "datasets": labels, "inputs": [str(p) for p in inputs], "n_stimuli": len(ids),
           "n_attributes": len(attributes), "n_components": k_all, "n_kept": result.n_kept,
           "kept": [int(c) + 1 for c in np.flatnonzero(result.kept)],
           "n_significant_loadings": [int(x) for x in result.n_significant_loadings],
           "preservation_r": None if preservation is None or not np.isfinite(preservation) else preservation,
           "n_universal": int(universality["universal"].sum()) if len(universality) else None,
           "universality": {c: int((universality["class"] == c).sum()) for c in UNIVERSALITY_CLASSES}
           if len(universality) else None}
    Path(files["run"]).write_text(json.dumps(run, indent=2) + "\n")
    return PpcaReport(inputs=[str(p) for p in inputs], id_column=id_column, out_dir=str(out), attributes=attributes,
                      n_stimuli=len(ids), result=result, files=files, ignored_columns=ignored,
                      seconds=time.perf_counter() - t0, names=labels, preservation_r=preservation,
                      universality=universality)
