"""The house plan, enforced: layers import only downward, no module cycles, one top-level name when installed.

The layer table is the one in DESIGN.md. Every ``import`` statement of every module counts, including imports inside
functions (a deferred import is still a dependency), so a cycle cannot hide behind one.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Checkout folder -> installed package (setup.py's package_dir).
MAPPED = {"models": "cxatlas.models", "udfs": "cxatlas.udfs", "jobs": "cxatlas.jobs", "conf": "cxatlas.conf"}
# Rank of each layer: a module may import its own layer or any lower rank, never a higher one.
LAYERS = {
    "cxatlas.core": 0, "cxatlas.stats": 0, "cxatlas.conf": 0,
    "cxatlas.media": 1, "cxatlas.models": 1, "cxatlas.compat": 1,
    "cxatlas.udfs": 2,
    "cxatlas.stages": 3,
    "cxatlas.sim": 4,
    "cxatlas.cli": 5,
    "cxatlas.jobs": 6,
}
# Layers that must stay free of each other although they share a rank or sit apart.
FORBIDDEN = {"cxatlas.stats": ("cxatlas.",), "cxatlas.models": ("cxatlas.media", "cxatlas.udfs"),
             "cxatlas.media": ("cxatlas.models",), "cxatlas.compat": ("cxatlas.media", "cxatlas.models")}


def module_files() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.glob("cxatlas/**/*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for folder, package in MAPPED.items():
        for path in sorted((ROOT / folder).glob("**/*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            name = ".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)])
            out[name] = path
    return out


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def layer_of(module: str) -> str | None:
    for layer in sorted(LAYERS, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: {m for m in imports_of(path) if m in files} for name, path in files.items()}


def test_every_module_sits_in_a_layer():
    homeless = [m for m in module_files() if m != "cxatlas" and layer_of(m) is None]
    assert not homeless, f"modules outside every layer of DESIGN.md: {homeless}"


def test_imports_only_go_downward():
    upward = []
    for module, targets in graph().items():
        src = layer_of(module)
        for target in targets:
            dst = layer_of(target)
            if src and dst and LAYERS[dst] > LAYERS[src]:
                upward.append(f"{module} -> {target}")
            if src in FORBIDDEN and any(target.startswith(p) for p in FORBIDDEN[src]) and dst != src:
                upward.append(f"{module} -> {target} (forbidden)")
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    g = graph()
    # A package's __init__ re-exporting its own submodules is not a cycle between modules.
    edges = {m: {t for t in ts if not (t.startswith(m + ".") and g.get(m) is not None)} for m, ts in g.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_stats_never_imports_spark_or_torch():
    bad = [(m, t) for m, p in module_files().items() if m.startswith("cxatlas.stats")
           for t in imports_of(p) if t.split(".")[0] in ("pyspark", "torch", "pandas")]
    assert not bad, bad


def test_models_never_import_spark():
    bad = [(m, t) for m, p in module_files().items() if m.startswith("cxatlas.models")
           for t in imports_of(p) if t.split(".")[0] == "pyspark"]
    assert not bad, bad


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    return next(out.glob("cxatlas-*.whl"))


def test_wheel_claims_only_the_cxatlas_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"cxatlas"}, tops
    for package in ("cxatlas/models/fer7.py", "cxatlas/udfs/annotate.py", "cxatlas/jobs/ingest.py",
                    "cxatlas/conf/local.yaml", "cxatlas/core/taxonomies/nature2021_exp1.txt"):
        assert package in names, package


def test_installed_next_to_another_models_package(wheel, tmp_path):
    """A foreign top-level ``models`` package first on sys.path must not shadow cxatlas's models, nor be shadowed."""
    foreign = tmp_path / "foreign" / "models"
    foreign.mkdir(parents=True)
    (foreign / "__init__.py").write_text("WHO = 'someone else'\n")
    code = ("import models, cxatlas.models.registry as r; "
            "assert models.WHO == 'someone else'; assert 'fer7' in r.REGISTRY; print('ok')")
    # The wheel itself is importable as a zip (pure Python): sys.path = [foreign, wheel] and nothing of the checkout.
    env = {"PYTHONPATH": f"{tmp_path / 'foreign'}:{wheel}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path[:0] = {[str(tmp_path / 'foreign'), str(wheel)]!r}; {code}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
