"""Tables the benchmarks print, through ``tabulate`` (pinned in constraints.txt; the ``[dev]`` extra).

Every bench formats its own cells (so a number reads as the bench chose: "0.50", "12.3%", "-") and prints them with
:func:`print_table`; :func:`stage_names` orders the stages of several runs' ``stage_seconds`` for a table of where the
time went.
"""
from __future__ import annotations

import textwrap
from typing import Any, Mapping, Sequence


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ") -> None:
    """A ``tabulate`` table ("simple": a header, a dashed rule, then the rows), indented by ``indent``.

    Cells are printed as given (``disable_numparse``: "0.50" stays "0.50"; leading spaces are kept); a column whose
    cells are all numbers (or empty, or "-") is right-aligned, any other left-aligned.
    """
    from tabulate import tabulate

    cells = [[str(c) for c in row] for row in rows]
    align = ["right" if all(_is_number(r[i]) for r in cells) else "left" for i in range(len(headers))]
    text = tabulate(cells, headers=[str(h) for h in headers], tablefmt="simple", disable_numparse=True,
                    colalign=align, preserve_whitespace=True)
    print(textwrap.indent(text, indent), flush=True)


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("x%"))
        return True
    except ValueError:
        return text in ("", "-")


def stage_names(*stage_seconds: Mapping[str, float]) -> list[str]:
    """The stages of all these runs, each once, in the order the runs entered them."""
    names: list[str] = []
    for stages in stage_seconds:
        names += [name for name in stages if name not in names]
    return names
