"""The replication report (``cxatlas report``) in a real browser: headless Chromium from Debian's package
(``make browser``), driven over the DevTools protocol (tests/headless_chromium.py).

A small simulated world goes through the real path: its annotations into the Delta tables, ``run_analyze`` (result
tables and figures), ``write_report`` (the page, from those tables). Chromium then loads the page and the test
checks what the browser made of it:

* no JavaScript exception, no ``console.error``, no error in the browser's log (a missing resource, ...);
* every figure decodes (``HTMLImageElement.decode()`` resolves, ``naturalWidth`` > 0), at the pixel size of the PNG
  the analysis wrote, and every PNG of the analysis' figure folder is on the page; the ``data:`` URI the browser
  holds is that PNG byte for byte, and PIL decodes it to the end (Chromium draws a PNG cut short as far as it goes
  and calls it decoded);
* every table has its rows: for each table the browser laid out, the rows in its body (plus the "N more rows" note,
  where the page cuts a long table) equal the rows of the Delta table it was built from, counted with Spark SQL on
  the tables themselves.

The checks are functions returning what is wrong, so a last test gives them a broken copy of the page (a corrupt
figure, a script error, a lost row) and sees each one fail.
"""
from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import pytest
from PIL import Image

from cxatlas.sim.world import import_simulated, world_params_from_config
from cxatlas.stages.analyze import run_analyze
from cxatlas.stages.report import SECTIONS, write_report
from cxatlas.warehouse.tables import TableStore
from tests.conftest import make_config
from tests.headless_chromium import chromium_path, load

ANALYSIS_ID = "browser-1"
# The cheapest world that still gives every section: all 12 regions, figures on (small), two bootstrap replicates.
WORLD_SETTINGS = [
    "simulate.n_contexts=20", "simulate.seed=7", "simulate.effect_scale=4.0", "analyze.replicates=2",
    "analyze.cca.per_region=100", "analyze.min_occurrences=5", "analyze.partitions=2",
    "analyze.figures.enabled=true", "analyze.figures.n_contexts=6", "analyze.figures.dpi=40",
]
N_VIDEOS = 3_000

#: What the browser is asked, once the page has loaded: every image (awaiting its decoding), every table with its
#: caption, header, body rows and the "N more rows" note after it, and the sections.
PAGE_SCRIPT = r"""(async () => {
  const images = [...document.images];
  const decoded = await Promise.all(images.map(i => i.decode().then(() => true, () => false)));
  const tables = [...document.querySelectorAll("table")].map(t => {
    const next = t.nextElementSibling;
    const body = t.tBodies.length ? [...t.tBodies[0].rows] : [];
    return {caption: t.caption ? t.caption.textContent.trim() : null,
            header: t.tHead ? t.tHead.rows[t.tHead.rows.length - 1].cells.length : 0,
            rows: body.length, cells: body.map(r => r.cells.length),
            more: next && next.classList.contains("note") ? next.textContent.trim() : null,
            section: t.closest("section") ? t.closest("section").id : null};
  });
  return {title: document.title,
          sections: [...document.querySelectorAll("section")].map(s => s.id),
          images: images.map((img, k) => ({alt: img.alt, complete: img.complete, decoded: decoded[k],
                                          width: img.naturalWidth, height: img.naturalHeight,
                                          src: img.currentSrc || img.src})),
          tables: tables};
})()"""


@pytest.fixture(scope="module")
def report(spark, tmp_path_factory):
    """A small simulated world, analysed, its report written; with the tables it was built from."""
    if chromium_path() is None:
        pytest.fail("chromium is not installed: run `make browser` (make test does)")
    root = tmp_path_factory.mktemp("browser-world")
    cfg = make_config(root / "data", *WORLD_SETTINGS)
    store = TableStore.from_config(spark, cfg)
    import_simulated(spark, cfg, store, world_params_from_config(cfg), N_VIDEOS, model_version="sim-v1",
                     taxonomy="sim20")
    run_analyze(spark, cfg, store, analysis_id=ANALYSIS_ID)
    page = write_report(spark, cfg, store, ANALYSIS_ID, str(root / "report.html"))
    return dict(path=Path(page.path), expected=expected_tables(spark, store), analysis=analyses_row(store))


def analyses_row(store) -> dict:
    from cxatlas.core.result_schemas import ANALYSES

    return store.table(ANALYSES).read().filter(f"analysis_id = '{ANALYSIS_ID}'").collect()[0].asDict()


def expected_tables(spark, store) -> dict[str, int]:
    """Caption of each table the page must show -> the number of rows it stands for, counted on the Delta tables
    with Spark SQL (not with the report's code): one row per stored row, per region pair, per held-out fit, or per
    loading among the 5 largest of its dimension and side."""
    from cxatlas.core.result_schemas import (ANALYSES, CCA_HELDOUT, CCA_LOADINGS, CCA_TESTS, HEADLINE_NUMBERS,
                                             REGION_SIMILARITY, REGION_VS_WORLD, SIGN_AGREEMENT)

    views = {}
    for spec in (ANALYSES, CCA_HELDOUT, CCA_LOADINGS, CCA_TESTS, HEADLINE_NUMBERS, REGION_SIMILARITY,
                 REGION_VS_WORLD, SIGN_AGREEMENT):  # this analysis' rows, as views of this test's own names
        views[spec.name] = f"browser_test_{spec.name}"
        store.table(spec).read().filter(f"analysis_id = '{ANALYSIS_ID}'").createOrReplaceTempView(views[spec.name])

    def count(sql: str) -> int:
        return int(spark.sql(sql.format(**views)).collect()[0][0])

    try:
        analysis = spark.table(views[ANALYSES.name]).collect()[0].asDict()
        counts = sum(1 for k in ("n_videos", "n_videos_filtered", "n_contexts", "n_contexts_analysed",
                                 "n_expressions", "n_replicates") if k in analysis)
        return {
            "headline_numbers": count("SELECT count(*) FROM {headline_numbers}"),
            "counts": counts + (count("SELECT count(*) FROM {region_vs_world}") > 0),  # + n_regions
            "sign_agreement": count("SELECT count(*) FROM {sign_agreement}"),
            "region pairs (region_similarity, each pair once, r2 = shared variance)": count(
                "SELECT count(DISTINCT least(region_a, region_b), greatest(region_a, region_b)) "
                "FROM {region_similarity} WHERE region_a <> region_b"),
            "region_vs_world (r2 with the average of the remaining regions; best match)": count(
                "SELECT count(*) FROM {region_vs_world}"),
            "held-out canonical correlations (cca_heldout)": count(
                "SELECT count(DISTINCT variant, heldout_region) FROM {cca_heldout}"),
            "tests (cca_tests)": count("SELECT count(*) FROM {cca_tests}"),
            "loadings: the 5 features per dimension and side with the largest |structure correlation| "
            "(cca_loadings)": count("SELECT sum(least(n, 5)) FROM (SELECT count(*) AS n FROM {cca_loadings} "
                                    "GROUP BY variant, dimension, side)"),
            "geobin numbers": count("SELECT count(*) FROM {headline_numbers} WHERE startswith(name, 'geobin_')"),
        }
    finally:
        for view in views.values():
            spark.catalog.dropTempView(view)


@pytest.fixture(scope="module")
def browser(report, tmp_path_factory):
    """What headless Chromium made of the report."""
    return load(report["path"], PAGE_SCRIPT, workdir=tmp_path_factory.mktemp("chromium"))


def figure_files(analysis: dict) -> dict[str, Path]:
    folder = Path(analysis["figures_dir"])
    return {p.stem: p for p in sorted(folder.glob("*.png"))}


# --- the checks: each returns what is wrong (empty: nothing) ------------------------------------------------------
def page_errors(loaded) -> list[str]:
    return list(loaded.errors)


def figure_problems(page: dict, figures: dict[str, Path]) -> list[str]:
    problems = []
    shown = {img["alt"]: img for img in page["images"]}
    if len(shown) != len(page["images"]):
        problems.append(f"figures shown twice: {[i['alt'] for i in page['images']]}")
    if set(shown) != set(figures):
        problems.append(f"figures on the page {sorted(shown)} != PNGs of the analysis {sorted(figures)}")
    for name, img in shown.items():
        if not (img["complete"] and img["decoded"] and img["width"] > 0 and img["height"] > 0):
            problems.append(f"figure {name} does not decode: {({k: v for k, v in img.items() if k != 'src'})}")
        elif name in figures:
            with Image.open(figures[name]) as png:
                if (img["width"], img["height"]) != png.size:
                    problems.append(f"figure {name}: {img['width']}x{img['height']} in the browser, {png.size} PNG")
        if name in figures:
            prefix = "data:image/png;base64,"
            if not img["src"].startswith(prefix):
                problems.append(f"figure {name} is not embedded: {img['src'][:80]}")
                continue
            data = base64.b64decode(img["src"][len(prefix):])
            if data != figures[name].read_bytes():
                problems.append(f"figure {name}: the page's PNG is not the analysis' file")
            try:
                with Image.open(io.BytesIO(data)) as png:
                    png.load()
            except (OSError, SyntaxError, ValueError) as exc:
                problems.append(f"figure {name}: PIL cannot decode it: {exc}")
    return problems


def table_problems(page: dict, expected: dict[str, int]) -> list[str]:
    problems = []
    laid_out = {t["caption"]: t for t in page["tables"]}
    if set(laid_out) != set(expected):
        problems.append(f"tables on the page {sorted(map(str, laid_out))} != expected {sorted(expected)}")
    for caption, want in expected.items():
        table = laid_out.get(caption)
        if table is None:
            continue
        more = int(re.match(r"(\d+) more rows", table["more"]).group(1)) if table["more"] else 0
        if table["rows"] + more != want or table["rows"] == 0:
            problems.append(f"{caption}: {table['rows']} rows shown + {more} more != {want} in the tables")
        if any(n != table["header"] for n in table["cells"]):
            problems.append(f"{caption}: rows of {sorted(set(table['cells']))} cells under {table['header']} columns")
    return problems


# --- the tests ----------------------------------------------------------------------------------------------------
def test_report_loads_in_chromium_without_console_errors(browser, report):
    assert "Chrome" in browser.version
    assert page_errors(browser) == []
    page = browser.value
    assert page["title"] == f"cxatlas report {ANALYSIS_ID}"
    assert [s for s in page["sections"] if s in SECTIONS] == list(SECTIONS)


def test_every_figure_decodes_at_its_size(browser, report):
    figures = figure_files(report["analysis"])
    assert len(figures) >= 5  # Fig. 2 (two), 3a-c, 4: the analysis wrote them
    assert figure_problems(browser.value, figures) == []


def test_every_table_has_the_rows_of_its_delta_table(browser, report):
    expected = report["expected"]
    assert expected["region pairs (region_similarity, each pair once, r2 = shared variance)"] == 66  # 12 regions
    assert all(n > 0 for n in expected.values()), expected
    assert table_problems(browser.value, expected) == []


def test_the_checks_fail_on_a_broken_page(report, tmp_path):
    """The same checks on a broken copy: one figure's PNG cut short, another's header garbled, a script that throws
    and logs an error, an image that is not there, one row taken out of a table. Each must be reported."""
    page = report["path"].read_text(encoding="utf-8")
    marker = "data:image/png;base64,"
    first = page.index(marker) + len(marker)
    second = page.index(marker, first) + len(marker)
    broken = (page[:first] + page[first:first + 400] + page[page.index('"', first):second]  # the first cut short
              + "AAAA" + page[second + 4:])  # the second's PNG signature garbled
    broken = re.sub(r"<tr>\s*<td>[^<]*</td>.*?</tr>", "", broken, count=1, flags=re.S)  # the first body row
    broken = broken.replace("</body>", '<img alt="missing" src="no-such-figure.png">'
                            '<script>console.error("report broken"); undefinedRenderer();</script></body>')
    path = tmp_path / "broken.html"
    path.write_text(broken, encoding="utf-8")
    loaded = load(path, PAGE_SCRIPT, workdir=tmp_path)
    errors = page_errors(loaded)
    assert any("undefinedRenderer" in e for e in errors), errors
    assert any("report broken" in e for e in errors), errors
    assert any("no-such-figure.png" in e for e in errors), errors
    figures = figure_problems(loaded.value, figure_files(report["analysis"]))
    assert sum("does not decode" in p for p in figures) == 2, figures  # the garbled PNG and the missing file
    assert sum("PIL cannot decode" in p for p in figures) == 2, figures  # the garbled one and the one cut short
    assert sum("not the analysis' file" in p for p in figures) == 2, figures
    tables = table_problems(loaded.value, report["expected"])
    assert len(tables) == 1 and "headline_numbers" in tables[0], tables
