"""``cxatlas transfer``: does a model trained on one culture's ratings carry over to another's? (after Inagaki et al.
2022, and the cross-country comparisons of Brooks et al. 2024)

Two datasets -- two ratings tables (``--ratings-a``, ``--ratings-b``), or two rater countries of one table
(``--ratings`` with ``--country-a``/``--country-b``) -- are prepared as for ``cxatlas train`` (the same face crops and
split; a set prepared before is reused). The same head is trained on each dataset's training stimuli, then each
model is tested on the held-out stimuli of both: *matched* (A on A, B on B) and *swapped* (A on B, B on A). A
dataset's target for a label is its countries' mean scaled rating (one country, when countries are compared).

Written to ``--out``:

* ``correlations.csv``: train, test, condition, label, r (Pearson, held-out crops), n.
* ``confusion.csv``: train, test, condition, true_label, predicted_label, count: the argmax label of the targets
  against the argmax of the predictions, over held-out crops with every label rated.
* ``profile_similarity.csv``: label, spearman, n: per label, Spearman's rho between the two models' predictions on the
  pooled held-out crops of both datasets (do the two models order the faces alike?). This is NOT Inagaki et al.'s
  AU-profile similarity (Spearman between units' responses to action-unit image series), which
  :mod:`cxatlas.stages.inagaki` computes from an AU series; the name is kept so scripts keep working.
* ``summary.csv``: per train/test pair: mean r, top-1 agreement, n, ``balanced_correct_rate`` (the mean of the
  per-expression correct rates, Inagaki et al.'s "average correct rate across the seven facial expressions"); and the
  mean per-crop Spearman rho between the two models' label profiles.
* ``correlations.png``, ``confusion.png``, ``profile_similarity.png``; ``model_<A>.pt``, ``model_<B>.pt``.

``--group-by COLUMN`` splits by person (a ratings column, e.g. the poser id) instead of by stimulus, as Inagaki et al.
did ("we randomly divided the images of 60 individuals into a training dataset (40), validation dataset (8), and
test dataset (12)"); a split that would leak a person is refused. ``--runs N`` repeats the whole comparison with
seeds ``train.seed + i`` (a new split and initialisation each; the paper: "we repeated the experimental runs 40
times") and writes ``runs.csv`` (run, seed, train, test, condition, expression, correct_rate), ``runs_summary.csv``
(mean and SD over runs), ``runs_tests.csv`` (paired t-tests matched vs swapped) and ``runs_anova.csv`` (two-way ANOVA
condition x expression per trained model). The tables above describe run 0. Each seed prepares its own split, so
crops are computed once per seed (reused on reruns).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cxatlas.core.config import Config
from cxatlas.core.errors import UserError
from cxatlas.core.runs import RunReport
from cxatlas.stages.train import PetastormFeed, TrainingSet, prepare_training_set, recipe_of
from cxatlas.warehouse.tables import TableStore


@dataclass
class Dataset:
    """One side of the comparison: a prepared set and which of its target columns make each label's target."""

    name: str
    prepared: TrainingSet
    groups: list[list[int]]


@dataclass
class TransferReport(RunReport):
    """Reconciles the stimuli of every prepared set; then the headline numbers."""

    names: tuple[str, str] = ("A", "B")
    prepared: list[TrainingSet] = field(default_factory=list)
    summary_rows: list[dict] = field(default_factory=list)
    profile_spearman: float | None = None
    out_dir: str = ""
    runs: int = 1

    def headline(self) -> str:
        return f"transfer {self.names[0]} <-> {self.names[1]} (run {self.run_id})"

    def balance(self):
        if not self.prepared:
            return None
        return (("stimuli rated", sum(p.stimuli for p in self.prepared)),
                [("with face crops", sum(p.stimuli_with_crops for p in self.prepared)),
                 ("quarantined", sum(p.quarantined for p in self.prepared))])

    def details(self) -> list[str]:
        lines = [line for p in self.prepared for line in p.lines()[::2]]
        for row in self.summary_rows:
            lines.append(f"  {row['train']} -> {row['test']} ({row['condition']}): mean r {row['mean_r']:.3f}, "
                         f"top-1 agreement {row['top1_agreement']:.2f}, balanced correct rate "
                         f"{row.get('balanced_correct_rate', float('nan')):.2f} over {row['n']} held-out crops")
        if self.profile_spearman is not None:
            lines.append(f"  label-profile similarity of the two models (mean per-crop Spearman rho): "
                         f"{self.profile_spearman:.3f}")
        if self.runs > 1:
            lines.append(f"  {self.runs} runs (seeds train.seed + 0..{self.runs - 1}): runs.csv, runs_summary.csv, "
                         f"runs_tests.csv (paired t, matched vs swapped), runs_anova.csv (condition x expression)")
        lines.append(f"  wrote correlations.csv, confusion.csv, profile_similarity.csv, summary.csv and figures to "
                     f"{self.out_dir}")
        return lines


def _datasets(spark, cfg: Config, store: TableStore, run_id: str, ratings_a: str | None, ratings_b: str | None,
              ratings: str | None, country_a: str | None, country_b: str | None,
              group_by: str | None = None) -> tuple[list[Dataset], list[str]]:
    """The two datasets and their shared labels, from either form of the arguments."""
    if ratings and country_a and country_b and not (ratings_a or ratings_b):
        if country_a == country_b:
            raise UserError("--country-a and --country-b must differ")
        prepared = prepare_training_set(spark, cfg, store, ratings, run_id, group_by=group_by)
        unknown = [c for c in (country_a, country_b) if c not in prepared.countries]
        if unknown:
            raise UserError(f"country {unknown} not in ratings '{ratings}' (countries: {prepared.countries})")
        n = len(prepared.labels)
        sides = [Dataset(c, prepared, [[prepared.countries.index(c) * n + i] for i in range(n)])
                 for c in (country_a, country_b)]
        return sides, list(prepared.labels)
    if ratings_a and ratings_b and not (ratings or country_a or country_b):
        a = prepare_training_set(spark, cfg, store, ratings_a, run_id, group_by=group_by)
        b = prepare_training_set(spark, cfg, store, ratings_b, run_id, group_by=group_by)
        labels = [label for label in a.labels if label in b.labels]
        if not labels:
            raise UserError(f"ratings '{ratings_a}' and '{ratings_b}' share no label column "
                            f"({a.labels} vs {b.labels})")
        names = [Path(r).stem for r in (ratings_a, ratings_b)]
        names = names if names[0] != names[1] else ["A", "B"]

        def groups(p: TrainingSet) -> list[list[int]]:
            n = len(p.labels)
            return [[c * n + p.labels.index(label) for c in range(len(p.countries))] for label in labels]

        return [Dataset(names[0], a, groups(a)), Dataset(names[1], b, groups(b))], labels
    raise UserError("give either --ratings-a and --ratings-b, or --ratings with --country-a and --country-b")


def _confusion(pred: np.ndarray, target: np.ndarray, n_labels: int) -> np.ndarray:
    """Counts of (argmax target, argmax prediction) over rows with every label rated."""
    complete = ~np.isnan(target).any(axis=1)
    matrix = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(matrix, (target[complete].argmax(axis=1), pred[complete].argmax(axis=1)), 1)
    return matrix


def _with_seed(cfg: Config, seed: int) -> Config:
    import copy

    out = copy.deepcopy(cfg)
    out.set("train.seed", seed, f"transfer --runs (seed {seed})")
    return out


def run_transfer(spark, cfg: Config, store: TableStore, model: str, out: str, *, ratings_a: str | None = None,
                 ratings_b: str | None = None, ratings: str | None = None, country_a: str | None = None,
                 country_b: str | None = None, epochs: int | None = None, batch_size: int | None = None,
                 group_by: str | None = None, runs: int | None = None) -> TransferReport:
    """Train ``model``'s head on each dataset, test each on both, write the tables and figures to ``out``;
    ``runs`` times with seeds ``train.seed + i`` (see the module docstring), split by ``group_by`` when given."""
    from cxatlas.stages.inagaki import balanced_correct_rates, paired_tests, summarise_runs, two_way_anova

    n_runs = int(runs or 1)
    if n_runs < 1:
        raise UserError(f"--runs must be at least 1, got {runs}")
    report = TransferReport()
    base_seed = cfg.settings.train.seed
    run_rows: list[dict] = []
    first = None
    for i in range(n_runs):
        rcfg = cfg if i == 0 else _with_seed(cfg, base_seed + i)
        result = _one_run(spark, rcfg, store, report, model, out, ratings_a=ratings_a, ratings_b=ratings_b,
                          ratings=ratings, country_a=country_a, country_b=country_b, epochs=epochs,
                          batch_size=batch_size, group_by=group_by, save_models=(i == 0), tag=f"run {i}")
        labels, confusions = result["labels"], result["confusions"]
        for (train, test, condition), matrix in confusions.items():
            rates, _ = balanced_correct_rates(matrix)
            run_rows += [{"run": i, "seed": base_seed + i, "train": train, "test": test, "condition": condition,
                          "expression": label, "correct_rate": rates[j]} for j, label in enumerate(labels)]
        if i == 0:
            first = result
    out_dir = Path(out)
    corr, conf, sim = pd.DataFrame(first["corr_rows"]), pd.DataFrame(first["conf_rows"]), pd.DataFrame(first["sim_rows"])
    report.summary_rows = first["summary_rows"]
    summary = pd.DataFrame(report.summary_rows)
    summary["profile_spearman_mean"] = report.profile_spearman
    corr.to_csv(out_dir / "correlations.csv", index=False)
    conf.to_csv(out_dir / "confusion.csv", index=False)
    sim.to_csv(out_dir / "profile_similarity.csv", index=False)
    summary.to_csv(out_dir / "summary.csv", index=False)
    runs_df = pd.DataFrame(run_rows)
    runs_df.to_csv(out_dir / "runs.csv", index=False)
    if n_runs >= 2:
        summarise_runs(runs_df).to_csv(out_dir / "runs_summary.csv", index=False)
        paired_tests(runs_df).to_csv(out_dir / "runs_tests.csv", index=False)
        anova = [two_way_anova(part, "condition").assign(train=train) for train, part in runs_df.groupby("train")]
        pd.concat(anova, ignore_index=True).to_csv(out_dir / "runs_anova.csv", index=False)
        report.runs = n_runs
    _figures(out_dir, corr, conf, sim, first["labels"], report.names)
    report.finish()
    return report


def _one_run(spark, cfg: Config, store: TableStore, report: TransferReport, model: str, out: str, *,
             ratings_a, ratings_b, ratings, country_a, country_b, epochs, batch_size, group_by, save_models: bool,
             tag: str) -> dict:
    """One train-both, test-on-both comparison; returns its rows and confusion matrices."""
    from scipy.stats import spearmanr

    from cxatlas.models.device import pick_device
    from cxatlas.models.registry import REGISTRY
    from cxatlas.models.training import TargetView, Trainer, build_trainable, loss_for, pearson_per_label, predict, \
        save_epoch
    from cxatlas.stages.inagaki import balanced_correct_rates

    t = cfg.settings.train
    sides, labels = _datasets(spark, cfg, store, report.run_id, ratings_a, ratings_b, ratings, country_a, country_b,
                              group_by)
    report.names = (sides[0].name, sides[1].name)
    for p in {id(s.prepared): s.prepared for s in sides}.values():
        if all(p is not q for q in report.prepared):
            report.prepared.append(p)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report.out_dir = str(out_dir)
    device = pick_device(t.device)
    input_spec = REGISTRY[model].input_spec
    feeds: dict[str, PetastormFeed] = {}
    summary_rows: list[dict] = []
    confusions: dict[tuple[str, str, str], np.ndarray] = {}
    try:
        for side in sides:
            if side.prepared.training_set not in feeds:
                feeds[side.prepared.training_set] = PetastormFeed(spark, cfg, store, side.prepared, input_spec,
                                                                  batch_size or t.batch_size)
        views = {s.name: TargetView(s.groups, len(s.prepared.target_labels)) for s in sides}
        modules = {}
        for side in sides:
            feed = feeds[side.prepared.training_set]
            module = build_trainable(model, labels, t.trunk_checkpoint, t.seed, device)
            trainer = Trainer(module, recipe_of(t, epochs), views[side.name], device, loss=loss_for(model))
            path = out_dir / f"model_{side.name}.pt"

            def on_epoch(result, side=side, trainer=trainer, module=module, path=path, unit=feed.unit) -> None:
                extra = {"dataset": side.name, "training_set": side.prepared.training_set,
                         "training_table_version": side.prepared.version, "countries": side.prepared.countries,
                         "epoch": result.epoch, "metrics": {"heldout_r": dict(zip(labels, result.heldout_r))}}
                if save_models:
                    save_epoch(path, model, module, labels, input_spec, extra, trainer.state())
                print(f"[transfer {side.name} {tag}] {result.line(labels, unit=unit)}", flush=True)

            trainer.fit(feed.train_batches, feed.heldout_batches, on_epoch)
            modules[side.name] = module

        corr_rows, conf_rows, preds = [], [], {}
        for m in sides:
            for test in sides:
                pred, target = predict(modules[m.name], feeds[test.prepared.training_set].heldout_batches(),
                                       views[test.name], device, t.amp)
                preds[(m.name, test.name)] = pred
                condition = "matched" if m is test else "swapped"
                r = pearson_per_label(pred, target)
                corr_rows += [{"train": m.name, "test": test.name, "condition": condition, "label": label,
                               "r": r[i], "n": int((~np.isnan(target[:, i])).sum())} for i, label in enumerate(labels)]
                matrix = _confusion(pred, target, len(labels))
                confusions[(m.name, test.name, condition)] = matrix
                conf_rows += [{"train": m.name, "test": test.name, "condition": condition, "true_label": labels[i],
                               "predicted_label": labels[j], "count": int(matrix[i, j])}
                              for i in range(len(labels)) for j in range(len(labels))]
                summary_rows.append({"train": m.name, "test": test.name, "condition": condition,
                                     "mean_r": float(np.nanmean(r)) if np.isfinite(r).any() else float("nan"),
                                     "top1_agreement": float(np.trace(matrix) / max(matrix.sum(), 1)),
                                     "n": int(matrix.sum()),
                                     "balanced_correct_rate": balanced_correct_rates(matrix)[1]})
        a, b = report.names
        pooled_a = np.concatenate([preds[(a, test.name)] for test in sides])
        pooled_b = np.concatenate([preds[(b, test.name)] for test in sides])
        sim_rows = [{"label": label, "spearman": float(spearmanr(pooled_a[:, i], pooled_b[:, i]).statistic),
                     "n": len(pooled_a)} for i, label in enumerate(labels)]
        per_crop = [spearmanr(x, y).statistic for x, y in zip(pooled_a, pooled_b)]
        per_crop = [v for v in per_crop if np.isfinite(v)]
        if save_models:
            report.profile_spearman = float(np.mean(per_crop)) if per_crop else None
    finally:
        for feed in feeds.values():
            feed.close()
    return {"labels": labels, "corr_rows": corr_rows, "conf_rows": conf_rows, "sim_rows": sim_rows,
            "summary_rows": summary_rows, "confusions": confusions}


def _save(fig, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def _figures(out_dir: Path, corr: pd.DataFrame, conf: pd.DataFrame, sim: pd.DataFrame, labels: Sequence[str],
             names: tuple[str, str]) -> None:
    """Per-label correlations by condition (grouped bars), the four confusion matrices (row-normalised), and the
    per-label Spearman similarity of the two models."""
    from matplotlib.figure import Figure

    a, b = names
    pairs = [(a, a), (a, b), (b, b), (b, a)]
    x = np.arange(len(labels))
    width = 0.8 / len(pairs)
    fig = Figure(figsize=(max(6.0, 0.6 * len(labels) + 2), 4))
    ax = fig.add_subplot()
    for k, (train, test) in enumerate(pairs):
        part = corr[(corr.train == train) & (corr.test == test)].set_index("label").reindex(labels)
        ax.bar(x + (k - 1.5) * width, part.r.to_numpy(dtype=float), width,
               label=f"{train} on {test} ({'matched' if train == test else 'swapped'})")
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set_ylabel("held-out Pearson r")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=7)
    ax.set_title("Per-label correlation, matched and swapped")
    _save(fig, out_dir / "correlations.png")

    fig = Figure(figsize=(9.5, 8), layout="constrained")
    for k, (train, test) in enumerate([(a, a), (a, b), (b, a), (b, b)]):
        ax = fig.add_subplot(2, 2, k + 1)
        part = conf[(conf.train == train) & (conf.test == test)]
        matrix = part.pivot(index="true_label", columns="predicted_label", values="count").reindex(
            index=labels, columns=labels).to_numpy(dtype=float)
        rows = matrix.sum(axis=1, keepdims=True)
        image = ax.imshow(np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0), vmin=0, vmax=1,
                          cmap="Blues")
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
        ax.set_title(f"model {train} on {test} ({'matched' if train == test else 'swapped'})", fontsize=9)
        ax.set_xlabel("predicted (argmax)", fontsize=7)
        ax.set_ylabel("rated (argmax)", fontsize=7)
    fig.colorbar(image, ax=fig.axes, shrink=0.6, label="share of row")
    _save(fig, out_dir / "confusion.png")

    fig = Figure(figsize=(max(6.0, 0.5 * len(labels) + 2), 3.5))
    ax = fig.add_subplot()
    ax.bar(x, sim.spearman.to_numpy(dtype=float), color="tab:purple")
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set_ylim(-1, 1)
    ax.set_ylabel("Spearman rho")
    ax.set_title(f"Do models {a} and {b} order the faces alike? (pooled held-out crops)")
    _save(fig, out_dir / "profile_similarity.png")
