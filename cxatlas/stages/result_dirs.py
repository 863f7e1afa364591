"""Where ``cxatlas report`` finds the results of ``cxatlas ppca``, ``transfer`` and ``au-tuning``.

Why a setting and not a table: those commands write plain files to a folder the user names (``--out``), so a report
cannot know them unless told. ``analyze.report_results`` lists folders (relative ones under the data root; default
``results``, i.e. ``<data_root>/results``); each listed folder, and each folder directly inside it, that holds a
command's marker file is one result. So ``cxatlas ppca ... --out data/results/brooks`` and ``cxatlas transfer ...
--out data/results/kdef_vs_krc`` both appear in the next ``cxatlas report`` without further settings.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from cxatlas.core.config import Config

__all__ = ["result_folders", "search_roots"]


def search_roots(cfg: Config) -> list[Path]:
    """The folders of ``analyze.report_results``, relative ones joined to the data root (local paths only)."""
    root = str(cfg.data_root).removeprefix("file://")
    return [Path(entry) if os.path.isabs(entry) else Path(root) / entry
            for entry in cfg.settings.analyze.report_results]


def result_folders(cfg: Config, is_result: Callable[[Path], bool]) -> list[Path]:
    """Every listed folder, or folder directly inside one, for which ``is_result(folder)`` holds; sorted, unique."""
    found: dict[str, Path] = {}
    for base in search_roots(cfg):
        if not base.is_dir():
            continue
        candidates = [base] + sorted(p for p in base.iterdir() if p.is_dir())
        for folder in candidates:
            if is_result(folder):
                found.setdefault(str(folder.resolve()), folder)
    return [found[k] for k in sorted(found)]
