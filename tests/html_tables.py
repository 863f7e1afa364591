"""Read the tables of a rendered report back (stdlib HTML parser: the test sees what a browser would lay out)."""
from __future__ import annotations

from html.parser import HTMLParser

import pandas as pd


class _Tables(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._rows: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self._caption: list[str] | None = None
        self._name = ""

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._rows, self._name = [], f"table {len(self.tables)}"
        elif tag == "caption":
            self._caption = []
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th") and self._rows is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "caption" and self._caption is not None:
            self._name, self._caption = "".join(self._caption).strip(), None
        elif tag in ("td", "th") and self._cell is not None:
            self._rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table" and self._rows is not None:
            self.tables[self._name] = self._rows
            self._rows = None

    def handle_data(self, data):
        if self._caption is not None:
            self._caption.append(data)
        elif self._cell is not None:
            self._cell.append(data)


def report_tables(page: str) -> dict[str, pd.DataFrame]:
    """Caption -> the table's cells as strings (header row as columns)."""
    parser = _Tables()
    parser.feed(page)
    return {name: pd.DataFrame(rows[1:], columns=rows[0]) for name, rows in parser.tables.items() if rows}


def number(cell: str) -> float:
    """A formatted cell back to a float ('–' is missing)."""
    return float("nan") if cell in ("–", "") else float(cell.replace(",", ""))
