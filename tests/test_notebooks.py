"""Every notebook in notebooks/ runs headless, as an analyst would open it, against demo data made by the real
scheduled pipeline (sample corpus -> ``reprocess``: ingest, annotate, statistics, a ``runs`` row), and fails on any
error. Each notebook runs in a Jupyter kernel of this venv's Python (nbclient), in a process of its own with its own
Spark session, reaching the tables through the environment only: ``CXATLAS_DATA`` and a ``CXATLAS_CONF`` overlay
naming this run's Derby metastore server and catalog database."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from tests.conftest import TEST_SPARK_CONF, make_config

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
VIDEOS = 8
# What an analyst must see in each notebook's outputs (besides no error).
EXPECTED = {
    "01_tables_and_catalog": ["context_expression_correlations", "manifest key of the video", "expression_scores",
                              "USCanada", "MERGE"],
    "02_results_and_figures": ["r2_world", "fig3a_region_similarity.png", "image/png"],
    "03_example_sql": ["region_a_name", "mean_score", "succeeded", "reprocess --manifest-dir"],
}


def overlay_for(cfg, path: Path) -> Path:
    """This test run's overlay ($CXATLAS_CONF: its own Derby port) plus the demo's catalog database and the test
    Spark settings, as one file: a notebook reads nothing but the environment."""
    from cxatlas.core.config import parse_override

    data = yaml.safe_load(Path(os.environ["CXATLAS_CONF"]).read_text()) or {}
    for text in [*TEST_SPARK_CONF, f"catalog.database={cfg.settings.catalog.database}"]:
        key, value = parse_override(text)
        parts = key.split(".", 2) if key.startswith("spark.conf.") else key.split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def demo(spark, tmp_path_factory):
    """A data root made by one scheduled run over a manifest folder holding the demo corpus' manifest (its
    deliberately bad rows included), with the demo's analysis settings."""
    from cxatlas.cli.commands import sample_corpus
    from cxatlas.cli.demo import demo_config
    from cxatlas.stages.reprocess import run_reprocess
    from cxatlas.warehouse.tables import TableStore

    base = tmp_path_factory.mktemp("notebooks")
    cfg = make_config(base / "data")
    info = sample_corpus(cfg, str(base / "corpus"), VIDEOS)
    manifests = base / "manifests"
    manifests.mkdir()
    shutil.copy(info.manifest, manifests / "uploads-0001.csv")
    report = run_reprocess(spark, demo_config(cfg), TableStore.from_config(spark, cfg), str(manifests))
    assert report.status == "succeeded" and report.analysis_id, report.summary()
    return cfg


@pytest.fixture(scope="module")
def kernel_env(demo, tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("kernel")
    return {**os.environ, "CXATLAS_DATA": demo.data_root,
            "CXATLAS_CONF": str(overlay_for(demo, folder / "notebooks.yaml"))}


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory) -> Path:
    """A kernel spec for this venv's Python (ipykernel is in requirements-dev.txt), in a folder of its own: whatever
    kernels the machine has installed, the notebooks run on the project's stack."""
    folder = tmp_path_factory.mktemp("kernels")
    (folder / "cxatlas-venv").mkdir()
    (folder / "cxatlas-venv" / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "cxatlas (.venv)", "language": "python"}))
    return folder


def execute(path: Path, env: dict[str, str], specs: Path) -> nbformat.NotebookNode:
    """Run every cell of the notebook in a fresh kernel started in the notebook's folder, as Jupyter does; a cell
    that raises fails the run (nbclient's CellExecutionError names the cell and the error)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    manager = KernelManager(kernel_name="cxatlas-venv", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(specs)]))
    NotebookClient(notebook, km=manager, timeout=600, resources={"metadata": {"path": str(path.parent)}}).execute(
        env=env)
    return notebook


def outputs_text(notebook: nbformat.NotebookNode) -> str:
    """Everything the cells showed: streams, results and displays (with their MIME types), as one text."""
    parts = []
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            for mime, value in out.get("data", {}).items():
                parts.extend([mime, value if isinstance(value, str) else json.dumps(value)])
    return "\n".join(parts)


def test_every_notebook_is_expected():
    assert {p.stem for p in NOTEBOOKS} == set(EXPECTED), "a notebook without expectations, or one missing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_headless_against_demo_data(path, demo, kernel_env, kernel_specs):
    notebook = execute(path, kernel_env, kernel_specs)
    shown = outputs_text(notebook)
    assert demo.settings.catalog.database in shown  # it opened the demo's catalog database, from the environment
    missing = [text for text in EXPECTED[path.stem] if text not in shown]
    assert not missing, f"{path.name} did not show {missing}"
    assert "no table runs" not in shown and "Traceback" not in shown
