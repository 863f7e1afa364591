"""Context taxonomies (the label sets a context model scores) and the paper's published correlations.

The two built-in taxonomies are the paper's own context lists, copied as data from the public release of Cowen et al.
(Nature 589, 2021; CC BY 4.0, see ``ATTRIBUTION.md``), so that our annotations use exactly the contexts whose
correlations the authors published and the two can be compared row by row:

- ``nature2021_exp1``: the 653 rows of experiment 1 (contexts from video content and metadata), in file order.
  Four names occur twice in the release (Football, Cream, Goal, Fish); the k-th occurrence (k >= 2) of a name is
  stored as ``"<name> (k)"`` (so ``"Football"`` and ``"Football (2)"``), which keeps all 653 rows addressable by label
  without reordering. :attr:`Taxonomy.source_names` gives back the names as published.
- ``nature2021_exp2``: the 1,953 rows of experiment 2 (contexts from title and description text only).

User taxonomies are plain text files: one label per line, blank lines and lines starting with ``#`` skipped. Inline
``#`` is *not* a comment, so a label such as ``C#`` survives. A label may not repeat: silent duplicates would make two
output columns indistinguishable downstream, so they raise :class:`ValueError` naming them.
"""
from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd

BUILTIN_TAXONOMIES: tuple[str, ...] = ("nature2021_exp1", "nature2021_exp2")
"""Names accepted by :func:`load_taxonomy` without a path."""

EXPRESSIONS_2021: tuple[str, ...] = (
    "Amusement", "Anger", "Awe", "Concentration", "Confusion", "Contempt", "Contentment", "Desire",
    "Disappointment", "Doubt", "Elation", "Interest", "Pain", "Sadness", "Surprise", "Triumph",
)
"""The 16 expression columns of the published CSVs, in their file order."""

_DUPLICATE_SUFFIX = re.compile(r"^(?P<base>.+) \((?P<k>[2-9]|[1-9][0-9]+)\)$")


@dataclass(frozen=True)
class Taxonomy:
    """An ordered, duplicate-free set of context labels.

    Order matters: it is the column order of every score matrix a context model produces for this taxonomy.
    """

    name: str
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def source_names(self) -> tuple[str, ...]:
        """Labels with the duplicate suffix removed (``"Goal (2)"`` -> ``"Goal"``).

        A suffix counts as a disambiguation only when the base name is itself an earlier label, so a genuine name
        such as ``"Apollo (11)"`` is left alone. Text models embed these names: the ``" (2)"`` carries no meaning
        and would only perturb the embedding.
        """
        seen: set[str] = set()
        out = []
        for label in self.labels:
            match = _DUPLICATE_SUFFIX.match(label)
            out.append(match["base"] if match and match["base"] in seen else label)
            seen.add(label)
        return tuple(out)


def disambiguate_duplicates(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Make repeated names unique, deterministically: the k-th occurrence (k >= 2) becomes ``"<name> (k)"``.

    This is how the built-in taxonomy files were made from the published CSVs and how
    :func:`load_published_correlations` labels their rows, so both always agree.

    Raises
    ------
    ValueError
        If a generated name collides with a name already present (the suffix scheme would then be ambiguous).
    """
    counts: Counter[str] = Counter()
    out = []
    for name in names:
        counts[name] += 1
        out.append(name if counts[name] == 1 else f"{name} ({counts[name]})")
    clashes = sorted(name for name, n in Counter(out).items() if n > 1)
    if clashes:
        raise ValueError(f"disambiguated names collide with existing names: {clashes}")
    return tuple(out)


def parse_labels(text: str) -> tuple[str, ...]:
    """Labels from taxonomy file text: one per line, stripped; blank lines and ``#`` comment lines skipped."""
    labels = tuple(s for s in (line.strip() for line in text.splitlines()) if s and not s.startswith("#"))
    duplicates = sorted(name for name, n in Counter(labels).items() if n > 1)
    if duplicates:
        raise ValueError(f"duplicate taxonomy labels: {duplicates}")
    return labels


def load_taxonomy(name_or_path: str | os.PathLike[str]) -> Taxonomy:
    """Load a built-in taxonomy by name (see :data:`BUILTIN_TAXONOMIES`) or a user file by path.

    Built-ins are read through ``importlib.resources`` so they work from a wheel or a zipped ``--py-files`` archive
    on Spark executors, not only from a source checkout.

    Raises
    ------
    FileNotFoundError
        If the argument is neither a built-in name nor an existing file.
    ValueError
        If the file is empty or repeats a label (the message names the repeated labels).
    """
    key = os.fspath(name_or_path)
    if key in BUILTIN_TAXONOMIES:
        text = resources.files(__name__).joinpath(f"{key}.txt").read_text(encoding="utf-8")
        name, source = key, f"built-in taxonomy {key}"
    else:
        path = Path(key)
        if not path.is_file():
            raise FileNotFoundError(
                f"taxonomy {key!r} is neither a built-in name {list(BUILTIN_TAXONOMIES)} nor an existing file")
        text = path.read_text(encoding="utf-8")
        name, source = path.stem, str(path)
    try:
        labels = parse_labels(text)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    if not labels:
        raise ValueError(f"{source} holds no labels")
    return Taxonomy(name=name, labels=labels)


def published_data_dir() -> Path:
    """The published correlation CSVs vendored inside the package (``cxatlas/published``; CC BY 4.0, see README there)."""
    from importlib import resources

    return Path(str(resources.files("cxatlas.core.published")))


def load_published_correlations(experiment: int,
                                data_dir: str | os.PathLike[str] | None = None) -> dict[str, pd.DataFrame]:
    """The paper's per-region context x expression correlations, one ``K x 16`` frame per region.

    Parameters
    ----------
    experiment
        1 or 2 (reads ``Exp<experiment>_<Region>.csv``).
    data_dir
        Default: the copy vendored in the package. Folder holding the released CSVs (``ExpressionContextCorrCSVs`` of google/context-expression-nature-study).

    Returns
    -------
    dict
        Region display name as the files spell it (``"USCanada"``, ``"SoutheastAsia(Mainland)"``) -> DataFrame
        indexed by context label (index name ``context``, duplicates disambiguated exactly as in the built-in
        taxonomy, so ``frame.index`` equals ``load_taxonomy(f"nature2021_exp{experiment}").labels``) with the 16
        expression columns of :data:`EXPRESSIONS_2021`, float64. NaN rows are kept as published (the simulator
        decides what a missing correlation means).

    Raises
    ------
    FileNotFoundError
        If the folder has no file for this experiment.
    ValueError
        If a file's header or row order differs from the others or from the built-in taxonomy: every consumer
        aligns regions by row, so a silent mismatch would corrupt every comparison.
    """
    if experiment not in (1, 2):
        raise ValueError(f"experiment must be 1 or 2, got {experiment!r}")
    files = sorted(Path(data_dir or published_data_dir()).glob(f"Exp{experiment}_*.csv"))
    if not files:
        raise FileNotFoundError(f"no Exp{experiment}_<Region>.csv files in {data_dir}")
    expected = load_taxonomy(f"nature2021_exp{experiment}").labels
    out: dict[str, pd.DataFrame] = {}
    for file in files:
        with file.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        header = tuple(rows[0][1:])
        if header != EXPRESSIONS_2021:
            raise ValueError(f"{file}: expression columns {header} differ from {EXPRESSIONS_2021}")
        labels = disambiguate_duplicates([row[0] for row in rows[1:]])
        if labels != expected:
            raise ValueError(f"{file}: context rows differ from built-in taxonomy nature2021_exp{experiment}")
        values = [[float(v) if v.strip() else float("nan") for v in row[1:]] for row in rows[1:]]
        frame = pd.DataFrame(values, index=pd.Index(labels, name="context"), columns=list(EXPRESSIONS_2021),
                             dtype="float64")
        out[file.stem.split("_", 1)[1]] = frame
    return out
