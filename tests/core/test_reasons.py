"""The quarantine reason catalogue (cxatlas/core/reasons.py) against the code that writes reasons and the README.

The reasons a job writes are found in its source, not listed here: string constants in the positions that set a
reason (the value of a ``reason``/``_reason`` variable or ``withColumn("_reason", ...)``: ``.when(c, "x")``,
``.otherwise("x")``, ``F.lit("x")``, ``"x" if ... else "y"``; the first argument of ``quarantine("x", ...)`` /
``quarantined("x", ...)``), plus the reason dictionaries of the URI policy and the video decoder and the flags of
``coordinate_problems``. A new reason in any of them without a catalogue entry fails here, and so does an entry no
code writes any more.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cxatlas.core import reasons as catalogue
from cxatlas.core import uris
from cxatlas.media import video

ROOT = Path(__file__).resolve().parents[2]

#: Which stage each module that writes quarantine reasons belongs to.
STAGE_MODULES = {
    "ingest": sorted(str(p.relative_to(ROOT)) for p in (ROOT / "cxatlas/stages/ingest").glob("*.py")),
    "import": ["cxatlas/stages/import_annotations.py"],
    "annotate": ["cxatlas/stages/annotate.py", "udfs/annotate.py"],
    "train": ["cxatlas/stages/train.py", "udfs/training.py"],
}
REASON_NAME = re.compile(r"^_?reason$")


def _str(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _attr(call: ast.Call) -> str | None:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None


def _reason_values(expr) -> set[str]:
    """String constants a reason expression can evaluate to."""
    found = set()
    if _str(expr):
        found.add(_str(expr))
    for node in ast.walk(expr):
        if isinstance(node, ast.Call):
            name, args = _attr(node), node.args
            if name == "when" and len(args) == 2 and _str(args[1]):
                found.add(_str(args[1]))
            elif name in ("otherwise", "lit") and len(args) == 1 and _str(args[0]):
                found.add(_str(args[0]))
        elif isinstance(node, ast.IfExp):
            found |= {s for s in (_str(node.body), _str(node.orelse)) if s}
    return found


def written_reasons(path: str) -> set[str]:
    """The reason codes ``path`` writes (see the module docstring)."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and REASON_NAME.match(t.id)
                                                for t in node.targets):
            found |= _reason_values(node.value)
        elif isinstance(node, ast.Call):
            name = _attr(node)
            if name == "withColumn" and node.args and _str(node.args[0]) in ("_reason", "reason"):
                found |= _reason_values(node.args[1])
            elif name in ("quarantine", "quarantined") and node.args and _str(node.args[0]):
                found.add(_str(node.args[0]))
    return found


def geo_flags() -> set[str]:
    """The reasons ``coordinate_problems`` flags (``flag(mask, NAME)``), resolved to their values."""
    import cxatlas.core.geo as geo

    tree = ast.parse(Path(geo.__file__).read_text(encoding="utf-8"))
    names = {node.args[1].id for node in ast.walk(tree) if isinstance(node, ast.Call) and _attr(node) == "flag"
             and len(node.args) == 2 and isinstance(node.args[1], ast.Name)}
    assert names, "coordinate_problems no longer calls flag(mask, REASON): update this test"
    return {getattr(geo, n) for n in names}


def code_reasons() -> dict[str, set[str]]:
    found = {stage: set().union(*(written_reasons(p) for p in paths)) for stage, paths in STAGE_MODULES.items()}
    found["ingest"] |= set(uris.REASONS) | geo_flags()
    found["annotate"] |= set(uris.REASONS) | set(video.REASONS)  # the policy again, then every VideoError
    return found


def test_every_reason_written_is_catalogued_and_every_entry_is_written():
    found = code_reasons()
    assert all(found.values()), f"the scan found no reason for a stage: {found}"
    for stage in catalogue.STAGES:
        listed = {r.code for r in catalogue.reasons(stage)}
        assert not found[stage] - listed, (f"{stage} writes reasons the catalogue lacks (add them to "
                                           f"cxatlas/core/reasons.py): {sorted(found[stage] - listed)}")
        text = "".join((ROOT / p).read_text(encoding="utf-8") for p in STAGE_MODULES[stage])
        stale = {c for c in listed - found[stage] if f'"{c}"' not in text}  # e.g. a code in a tuple test
        assert not stale, f"catalogued for {stage} but written nowhere: {sorted(stale)}"


def test_modules_writing_quarantine_are_the_scanned_ones():
    """A new module writing quarantine rows must join STAGE_MODULES, or its reasons would escape the scan."""
    writers = {str(p.relative_to(ROOT)) for d in ("cxatlas", "udfs", "models")
               for p in (ROOT / d).rglob("*.py")
               if re.search(r"\bto_quarantine_rows\(|\.quarantine\(\"", p.read_text(encoding="utf-8"))}
    writers.discard("cxatlas/warehouse/quarantine.py")
    scanned = {p for paths in STAGE_MODULES.values() for p in paths}
    assert writers <= scanned, f"modules writing quarantine rows that this test does not scan: {writers - scanned}"


def test_catalogue_is_well_formed_and_retry_reasons_exist():
    from cxatlas.core.config import load_config

    keys = [(r.stage, r.code) for r in catalogue.CATALOGUE]
    assert len(keys) == len(set(keys)), "a (stage, code) pair is catalogued twice"
    for r in catalogue.CATALOGUE:
        assert r.stage in catalogue.STAGES and re.fullmatch(r"[a-z]+(_[a-z]+)*", r.code)
        assert r.meaning.strip() and r.action.strip() and "|" not in r.meaning + r.action
    retried = set(load_config(None).settings.annotate.retry_reasons)
    assert retried <= {r.code for r in catalogue.reasons("annotate")}


def test_readme_tables_are_generated_from_the_catalogue():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert catalogue.render_readme(readme) == readme, \
        "README's reason tables drifted from cxatlas/core/reasons.py: run `cxatlas reasons --update-readme README.md`"
    for stage in catalogue.STAGES:
        assert catalogue.markdown_table(stage) in readme


def test_render_detects_drift_and_missing_markers():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    drifted = readme.replace("| `shared_uri` |", "| `shared_uris` |")
    assert drifted != readme and catalogue.render_readme(drifted) == readme
    with pytest.raises(ValueError, match="train"):
        catalogue.render_readme(readme.replace("<!-- /reasons:train -->", ""))


def test_cli_prints_the_catalogue(tmp_path):
    run = subprocess.run([sys.executable, "-m", "cxatlas.cli", "reasons", "--format", "json"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    import json

    rows = json.loads(run.stdout)
    assert [(r["stage"], r["code"]) for r in rows] == [(r.stage, r.code) for r in catalogue.CATALOGUE]
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text(encoding="utf-8").replace("| `no_face` |", "| `no_faces` |"))
    run = subprocess.run([sys.executable, "-m", "cxatlas.cli", "reasons", "--update-readme", str(readme)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0 and "rewritten" in run.stdout, run.stdout + run.stderr
    assert readme.read_text(encoding="utf-8") == (ROOT / "README.md").read_text(encoding="utf-8")
