"""The house plan, enforced: each layer imports only what DESIGN.md's table lets it, no module cycles, a stage
imports another stage only where DESIGN.md says so, ``core/`` starts no process and writes no file, and one
top-level name when installed.

Every ``import`` statement of every module counts, including imports inside functions (a deferred import is still a
dependency, so a cycle cannot hide behind one) and relative imports (``from .tables import x`` is resolved against
the module's own package).
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
# Rank of each layer (DESIGN.md's table): a module never imports a layer of a higher rank.
LAYERS = {
    "cxatlas.core": 0, "cxatlas.stats": 0, "cxatlas.conf": 0,
    "cxatlas.warehouse": 1, "cxatlas.media": 1, "cxatlas.models": 1, "cxatlas.compat": 1,
    "cxatlas.udfs": 2,
    "cxatlas.stages": 3,
    "cxatlas.sim": 4,
    "cxatlas.cli": 5,
    "cxatlas.jobs": 6,
}
# What each layer may import besides itself (DESIGN.md's "may import" column). The package root ``cxatlas`` (it
# holds only ``__version__``) is importable from anywhere.
BELOW_STAGES = frozenset({"cxatlas.warehouse", "cxatlas.udfs", "cxatlas.models", "cxatlas.media", "cxatlas.compat",
                          "cxatlas.stats", "cxatlas.core", "cxatlas.conf"})
MAY_IMPORT: dict[str, frozenset[str]] = {
    "cxatlas.core": frozenset(), "cxatlas.stats": frozenset(), "cxatlas.conf": frozenset(),
    "cxatlas.warehouse": frozenset({"cxatlas.core"}),
    "cxatlas.media": frozenset({"cxatlas.core"}),
    "cxatlas.models": frozenset({"cxatlas.core"}),
    "cxatlas.compat": frozenset({"cxatlas.core"}),
    "cxatlas.udfs": frozenset({"cxatlas.models", "cxatlas.media", "cxatlas.stats", "cxatlas.core"}),
    "cxatlas.stages": BELOW_STAGES,
    "cxatlas.sim": BELOW_STAGES | {"cxatlas.stages"},
    "cxatlas.cli": BELOW_STAGES | {"cxatlas.stages", "cxatlas.sim"},
    "cxatlas.jobs": BELOW_STAGES | {"cxatlas.stages", "cxatlas.sim", "cxatlas.cli"},
}
# A stage (a module or folder of cxatlas/stages/) imports another stage only here (DESIGN.md, "Stages and stages"):
# the orchestrators that run other stages, the stages built on another's results, and the report's paper sections.
# Exactly these: a new edge, or one that is gone, is a change to the design and to DESIGN.md.
STAGE_IMPORTS: dict[str, frozenset[str]] = {
    "reprocess": frozenset({"ingest", "annotate", "analyze"}),  # runs the pipeline
    "compare": frozenset({"analyze"}),  # runs analyze on each side
    "release": frozenset({"analyze", "report"}),  # releases analyze's sufficient sums; its section of the report
    "transfer": frozenset({"train", "inagaki"}),  # trains with train's feed, scores with Inagaki's statistics
    "au_tuning": frozenset({"inagaki"}),  # Inagaki's AU profiles
    "brooks_report": frozenset({"report", "result_dirs"}),  # a report section and its result folders
    "inagaki_report": frozenset({"report", "result_dirs"}),
}
ROOT_PACKAGE = "cxatlas"


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


def imports_of(path: Path, module: str = "") -> set[str]:
    """Every module (and ``module.name``) that ``path``'s code imports; a relative import is resolved against the
    package of ``module`` (the installed name of ``path``)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                if node.level - 1 > len(base) or not module:
                    raise AssertionError(f"{path}: relative import beyond its package ({'.' * node.level}"
                                         f"{node.module or ''})")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return found


def layer_of(module: str) -> str | None:
    for layer in sorted(LAYERS, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def stage_of(module: str) -> str | None:
    """``cxatlas.stages.analyze.sums`` -> ``analyze``; None outside the stages (and for the package itself)."""
    parts = module.split(".")
    return parts[2] if parts[:2] == ["cxatlas", "stages"] and len(parts) > 2 else None


def graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: {m for m in imports_of(path, name) if m in files} for name, path in files.items()}


def test_relative_imports_are_resolved_against_the_package(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .tables import Table\nfrom . import spark\n")
    (pkg / "mod.py").write_text("def f():\n    from ..core.settings import S\n    from .tables.store import T\n")
    assert imports_of(pkg / "__init__.py", "cxatlas.warehouse") >= {
        "cxatlas.warehouse.tables", "cxatlas.warehouse.tables.Table", "cxatlas.warehouse", "cxatlas.warehouse.spark"}
    assert imports_of(pkg / "mod.py", "cxatlas.warehouse.mod") >= {
        "cxatlas.core.settings", "cxatlas.core.settings.S", "cxatlas.warehouse.tables.store"}
    # so a relative import across layers is caught like an absolute one
    assert "cxatlas.core.settings" in graph_of({"cxatlas.warehouse.mod": pkg / "mod.py"})["cxatlas.warehouse.mod"]


def graph_of(files: dict[str, Path]) -> dict[str, set[str]]:
    return {name: imports_of(path, name) for name, path in files.items()}


def test_every_module_sits_in_a_layer():
    homeless = [m for m in module_files() if m != ROOT_PACKAGE and layer_of(m) is None]
    assert not homeless, f"modules outside every layer of DESIGN.md: {homeless}"
    assert set(MAY_IMPORT) == set(LAYERS)


def test_each_layer_imports_only_what_design_allows():
    bad = []
    for module, targets in graph().items():
        src = layer_of(module)
        for target in targets:
            dst = layer_of(target)
            if src is None or target == ROOT_PACKAGE or dst == src:
                continue
            if dst is None or dst not in MAY_IMPORT[src]:
                bad.append(f"{module} -> {target}")
            elif LAYERS[dst] > LAYERS[src]:
                bad.append(f"{module} -> {target} (upward)")
    assert not bad, "imports DESIGN.md does not allow:\n" + "\n".join(sorted(bad))


def test_a_stage_imports_another_stage_only_where_design_says():
    used: dict[str, set[str]] = {}
    for module, targets in graph().items():
        src = stage_of(module)
        for target in targets:
            dst = stage_of(target)
            if src and dst and dst != src:
                used.setdefault(src, set()).add(dst)
    extra = sorted(f"{s} -> {d}" for s, ds in used.items() for d in ds - STAGE_IMPORTS.get(s, frozenset()))
    stale = sorted(f"{s} -> {d}" for s, ds in STAGE_IMPORTS.items() for d in ds - used.get(s, set()))
    assert not extra, "a stage imports a stage DESIGN.md does not list (decide, then add it to DESIGN.md and " \
                      "STAGE_IMPORTS):\n" + "\n".join(extra)
    assert not stale, "listed in STAGE_IMPORTS (and DESIGN.md) but no longer imported:\n" + "\n".join(stale)
    # and the relation is a hierarchy: no stage reaches itself through others
    def reach(stage: str, seen: frozenset = frozenset()) -> None:
        assert stage not in seen, f"stages import each other in a cycle through {stage}"
        for nxt in STAGE_IMPORTS.get(stage, ()):
            reach(nxt, seen | {stage})

    for stage in STAGE_IMPORTS:
        reach(stage)


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
           for t in imports_of(p, m) if t.split(".")[0] in ("pyspark", "torch", "pandas")]
    assert not bad, bad


def test_models_never_import_spark():
    bad = [(m, t) for m, p in module_files().items() if m.startswith("cxatlas.models")
           for t in imports_of(p, m) if t.split(".")[0] == "pyspark"]
    assert not bad, bad


# -- core/ is vocabulary: it starts no process and writes no file ------------------------------------------------
PROCESS_OR_FILE_MODULES = {"subprocess", "multiprocessing", "shutil", "tempfile", "pty", "socketserver"}
OS_EFFECTS = {"system", "popen", "fork", "forkpty", "kill", "killpg", "remove", "unlink", "rename", "renames",
              "replace", "link", "symlink", "mkdir", "makedirs", "rmdir", "removedirs", "chmod", "chown", "open",
              "write", "truncate", "mkfifo", "mknod", "utime", "startfile"}
OS_EFFECT_PREFIXES = ("spawn", "exec", "posix_spawn")
EFFECT_METHODS = {"write_text", "write_bytes", "mkdir", "touch", "unlink", "rmdir", "symlink_to", "hardlink_to",
                  "link_to", "chmod", "lchmod", "Popen", "getOrCreate", "saveAsTable", "insertInto", "to_csv",
                  "to_parquet", "to_feather", "to_pickle", "to_excel", "to_hdf", "savez", "savez_compressed", "save",
                  "write", "sql"}  # a SQL statement through a session can write tables and the metastore
OPENERS = {"open"}  # open(), io.open, gzip.open, Path.open, ...: only reading modes


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _writing_mode(call: ast.Call, mode_position: int) -> bool:
    mode = next((k.value for k in call.keywords if k.arg == "mode"), None)
    if mode is None and len(call.args) > mode_position:
        mode = call.args[mode_position]
    if mode is None:
        return False
    if not (isinstance(mode, ast.Constant) and isinstance(mode.value, str)):
        return True  # a computed mode could write: not allowed in core
    return any(c in mode.value for c in "wax+")


def side_effects(source: str, name: str = "<code>") -> list[str]:
    """What in ``source`` starts a process or writes a file (an AST scan: imports and calls)."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"line {node.lineno}: imports {m}" for m in mods if m.split(".")[0] in PROCESS_OR_FILE_MODULES]
            if isinstance(node, ast.ImportFrom) and node.module == "os":
                found += [f"line {node.lineno}: imports os.{a.name}" for a in node.names
                          if a.name in OS_EFFECTS or a.name.startswith(OS_EFFECT_PREFIXES)]
        elif isinstance(node, ast.Call):
            func = _dotted(node.func)
            attr = func.rsplit(".", 1)[-1]
            if func.startswith("os.") and (attr in OS_EFFECTS or attr.startswith(OS_EFFECT_PREFIXES)):
                found.append(f"line {node.lineno}: {func}()")
            elif func == "open" and _writing_mode(node, 1):
                found.append(f"line {node.lineno}: open() for writing")
            elif attr in OPENERS and isinstance(node.func, ast.Attribute) and _writing_mode(
                    node, 0 if _dotted(node.func.value) not in ("io", "gzip", "bz2", "lzma", "codecs") else 1):
                found.append(f"line {node.lineno}: {func}() for writing")
            elif isinstance(node.func, ast.Attribute) and attr in EFFECT_METHODS:
                found.append(f"line {node.lineno}: .{attr}()")
        elif isinstance(node, ast.Attribute) and node.attr == "write" and not isinstance(getattr(node, "ctx", None),
                                                                                          ast.Store):
            found.append(f"line {node.lineno}: .write")  # DataFrame.write, a file's write
    return sorted(set(found))


@pytest.mark.parametrize("code", [
    "import subprocess", "from subprocess import run", "import os\nos.system('x')", "os.makedirs(p)",
    "from os import makedirs", "open(p, 'w')", "open(p, mode='a')", "open(p, 'rb+')", "Path(p).write_text('x')",
    "p.write_bytes(b'')", "p.mkdir(parents=True)", "p.open('w')", "gzip.open(p, 'wt')", "p.touch()", "p.unlink()",
    "df.write.parquet(p)", "SparkSession.builder.getOrCreate()", "os.execv('x', [])", "os.spawnl(0, 'x')",
    "import shutil", "frame.to_csv(p)", "handle.write('x')", "spark.sql('CREATE VIEW v AS SELECT 1')",
])
def test_the_side_effect_scan_finds(code):
    assert side_effects(code), code


@pytest.mark.parametrize("code", [
    "open(p)", "open(p, encoding='utf-8', newline='')", "gzip.open(p)", "p.open()", "p.read_text()", "os.path.join(a)",
    "os.environ.get('X')", "resources.files('x').joinpath('y').open('rb')", "text.replace('a', 'b')",
])
def test_the_side_effect_scan_lets_reading_pass(code):
    assert not side_effects(code), side_effects(code)


def test_core_starts_no_process_and_writes_no_file():
    found = {m: side_effects(p.read_text(), str(p)) for m, p in module_files().items()
             if layer_of(m) == "cxatlas.core"}
    found = {m: f for m, f in found.items() if f}
    assert not found, "core/ is vocabulary; move what acts to cxatlas/warehouse/:\n" + "\n".join(
        f"{m}: {', '.join(f)}" for m, f in sorted(found.items()))


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
                    "cxatlas/conf/local.yaml", "cxatlas/core/taxonomies/nature2021_exp1.txt",
                    "cxatlas/warehouse/spark.py", "cxatlas/warehouse/tables/commit.py"):
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
