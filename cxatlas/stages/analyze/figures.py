"""Figures of the paper's main results, drawn from cxatlas result tables (pandas DataFrames).

Why a module of its own: the statistics tables are the product, but people judge them by eye, so every figure is
readable on its own -- titles, labelled axes, colour bars with units, regions by the paper's display names. All
functions use matplotlib's object API with the Agg canvas (no pyplot state, no display, safe in a Spark driver or a
thread), write a PNG of exactly ``figsize * dpi`` pixels, and return its path.

- :func:`heatmap_contexts`: Fig. 2 analogue, contexts x expressions, each cell a 3 x 4 mosaic of the 12 regions.
- :func:`region_similarity_matrix`: Fig. 3a, how similar the context-expression associations of two regions are.
- :func:`region_vs_world_bars`: Fig. 3b, how well the rest of the world predicts each region, and its best match.
- :func:`heldout_canonical_correlations`: Fig. 3c, canonical correlations in held-out regions per dimension.
- :func:`geobin_map`: Fig. 4, the first three canonical variates as RGB on an equirectangular world map.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from cxatlas.core import regions

__all__ = [
    "heatmap_contexts",
    "region_similarity_matrix",
    "region_vs_world_bars",
    "heldout_canonical_correlations",
    "geobin_map",
]

_DIVERGING = "RdBu_r"  # red = positive, blue = negative, white = 0: the usual reading of a correlation map


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------
def _new_figure(figsize: tuple[float, float], dpi: int, layout: str | None = None) -> Figure:
    fig = Figure(figsize=figsize, dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out: str | os.PathLike, dpi: int) -> Path:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")  # no bbox_inches="tight": the pixel size stays figsize * dpi
    return path


def _display(region: str) -> str:
    """The paper's display name for a region id; anything else (already a display name) is shown as given."""
    try:
        return regions.region_by_id(str(region)).display_name
    except KeyError:
        return str(region)


def _region_order(values: Sequence[str]) -> list[str]:
    """Regions in the canonical order of :data:`cxatlas.core.regions.REGIONS`, unknown values after them, sorted."""
    present = list(dict.fromkeys(str(v) for v in values))
    known = [r for r in regions.REGION_IDS if r in present]
    known += [r.display_name for r in regions.REGIONS if r.display_name in present and r.display_name not in known]
    return known + sorted(v for v in present if v not in known)


def _expression_label(expr: str) -> str:
    text = str(expr)
    if text.startswith("expr_"):
        text = text[len("expr_"):].replace("_", " ").capitalize()
    return text


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; got {list(df.columns)}")


def _symmetric_limit(values: np.ndarray, percentile: float) -> float:
    finite = np.abs(values[np.isfinite(values)])
    if finite.size == 0:
        return 1.0
    lim = float(np.percentile(finite, percentile))
    return lim if lim > 0 else (float(finite.max()) or 1.0)


# ----------------------------------------------------------------------------------------------------------------
# Fig. 2
# ----------------------------------------------------------------------------------------------------------------
def heatmap_contexts(
    corr_df: pd.DataFrame,
    contexts: Sequence[str],
    out: str | os.PathLike,
    *,
    value: str = "r",
    mosaic: tuple[int, int] = (3, 4),
    vmax: float | None = None,
    clip_percentile: float = 99.0,
    title: str = "Context-expression correlations in 12 world regions",
    figsize: tuple[float, float] | None = None,
    dpi: int = 150,
    zscore_rows: bool = False,
    marginals: bool = False,
) -> Path:
    """Contexts (rows) x expressions (columns); each cell a ``mosaic`` grid with one tile per region.

    Why a mosaic: the paper's point is that the pattern repeats across regions; 12 tiles of one cell that share a
    colour show that at a glance, while a tile that differs stands out. A key panel shows which tile is which region.

    Parameters
    ----------
    corr_df : columns ``region, context, expression`` and ``value`` (default ``r``); other columns are ignored.
    contexts : the rows to draw, in this order (missing contexts raise ValueError).
    value : column to colour by.
    mosaic : (rows, cols) of the per-cell region grid; rows * cols must hold all regions present.
    vmax : colour limit (symmetric around 0); None: the ``clip_percentile`` percentile of |value| drawn.
    figsize : inches; None sizes the figure to the number of contexts and expressions.
    zscore_rows : colour by the values z-scored within each context row (over its regions and expressions), as the
        paper's Fig. 2 does, so each context's pattern shows whatever its overall strength.
    marginals : add the marginal means of the (raw) values: per expression above (over the drawn contexts and
        regions in light grey, over every context of ``corr_df`` in dark grey), per context on the right (over
        expressions and regions).

    Cells positive in every region get the paper's red rectangle (:func:`positive_everywhere_cells`).
    """
    _require(corr_df, ["region", "context", "expression", value], "heatmap_contexts")
    contexts = [str(c) for c in contexts]
    df = corr_df[corr_df["context"].astype(str).isin(contexts)]
    missing = [c for c in contexts if c not in set(df["context"].astype(str))]
    if missing:
        raise ValueError(f"heatmap_contexts: contexts not in the table: {missing}")
    region_list = _region_order(df["region"])
    expressions = list(dict.fromkeys(df["expression"].astype(str)))
    m_rows, m_cols = mosaic
    if m_rows * m_cols < len(region_list):
        raise ValueError(f"mosaic {mosaic} has fewer tiles than the {len(region_list)} regions")

    n_ctx, n_expr = len(contexts), len(expressions)
    image = np.full((n_ctx * m_rows, n_expr * m_cols), np.nan)
    c_idx = {c: i for i, c in enumerate(contexts)}
    e_idx = {e: j for j, e in enumerate(expressions)}
    r_idx = {r: k for k, r in enumerate(region_list)}
    ci = df["context"].astype(str).map(c_idx).to_numpy()
    ej = df["expression"].astype(str).map(e_idx).to_numpy()
    rk = df["region"].astype(str).map(r_idx).to_numpy()
    image[ci * m_rows + rk // m_cols, ej * m_cols + rk % m_cols] = df[value].to_numpy(dtype=float)
    raw = image.copy()
    if zscore_rows:
        image = _zscore_rows(image, m_rows)

    lim = vmax if vmax is not None else _symmetric_limit(image, clip_percentile)
    cmap = colormaps[_DIVERGING].with_extremes(bad="#d9d9d9")
    if figsize is None:
        label_in = 0.6 + 0.075 * max(len(c) for c in contexts)  # room for the context labels
        figsize = (label_in + 0.5 * n_expr + 2.4 + (1.2 if marginals else 0.0),
                   max(4.5, 2.0 + 0.4 * n_ctx) + (1.0 if marginals else 0.0))
    fig = _new_figure(figsize, dpi, layout="constrained")
    if marginals:
        grid = fig.add_gridspec(3, 3, width_ratios=[0.5 * n_expr, 1.0, 1.2],
                                height_ratios=[0.25 * figsize[1], 0.5 * figsize[1], 0.5 * figsize[1]])
        ax = fig.add_subplot(grid[1:, 0])
        side, top = fig.add_subplot(grid[1:, 1], sharey=ax), fig.add_subplot(grid[0, 0], sharex=ax)
        cax_spec, key_spec = grid[1, 2], grid[2, 2]
    else:
        grid = fig.add_gridspec(2, 2, width_ratios=[0.5 * n_expr, 1.2], height_ratios=[1.0, 1.0])
        ax = fig.add_subplot(grid[:, 0])
        cax_spec, key_spec = grid[0, 1], grid[1, 1]
    im = ax.imshow(image, cmap=cmap, vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest",
                   extent=(0, n_expr, n_ctx, 0))
    ax.vlines(np.arange(1, n_expr), 0, n_ctx, colors="white", linewidth=2.0)
    ax.hlines(np.arange(1, n_ctx), 0, n_expr, colors="white", linewidth=2.0)
    ax.set_xticks(np.arange(n_expr) + 0.5, [_expression_label(e) for e in expressions], rotation=55, ha="right")
    ax.set_yticks(np.arange(n_ctx) + 0.5, contexts)
    ax.tick_params(length=0)
    ax.set_xlabel("Facial expression")
    ax.set_ylabel("Context")
    (top if marginals else ax).set_title(title)
    for ctx, expr in positive_everywhere_cells(df, value).itertuples(index=False):
        # The paper's red rectangles: positive in every region present.
        ax.add_patch(Rectangle((e_idx[expr], c_idx[ctx]), 1, 1, fill=False, edgecolor=RED_RECTANGLE,
                               linewidth=1.6, zorder=3))
    if marginals:
        all_means = (corr_df.groupby(corr_df["expression"].astype(str))[value].mean()
                     .reindex(expressions).to_numpy(dtype=float))
        _marginal_bars(top, side, raw, m_rows, m_cols, value, all_means)

    cax = fig.add_subplot(cax_spec)
    cax.set_box_aspect(6)
    bar = fig.colorbar(im, cax=cax)
    label = f"{value} (partial correlation)" if value == "r" else value
    bar.set_label(f"{value}, z-scored per context" if zscore_rows else label)

    key = fig.add_subplot(key_spec)
    key.set_title("Tile = region", fontsize=8)
    for k, reg in enumerate(region_list):
        row, col = divmod(k, m_cols)
        key.add_patch(_tile(col, row))
        key.text(col + 0.5, row + 0.5, _short(_display(reg)), ha="center", va="center", fontsize=5.5)
    key.set_xlim(0, m_cols)
    key.set_ylim(m_rows, 0)
    key.set_aspect("equal")
    key.axis("off")
    return _save(fig, out, dpi)


RED_RECTANGLE = "#ff0000"


def positive_everywhere_cells(corr_df: pd.DataFrame, value: str = "r") -> pd.DataFrame:
    """The (context, expression) cells whose ``value`` is positive in every region of ``corr_df``.

    Fig. 2a legend: "correlations with specific expressions that were positive in all 12 regions, as represented by
    the red rectangles". A cell missing in a region, or NaN there, is not positive everywhere.
    """
    regions = corr_df["region"].nunique()
    pos = corr_df.assign(_pos=corr_df[value].to_numpy(dtype=float) > 0)
    agg = pos.groupby([pos["context"].astype(str), pos["expression"].astype(str)])["_pos"].agg(["sum", "size"])
    hit = agg[(agg["sum"] == regions) & (agg["size"] == regions)]
    return hit.reset_index()[["context", "expression"]]


def _zscore_rows(image: np.ndarray, m_rows: int) -> np.ndarray:
    """Z-score each context's block of ``m_rows`` image rows (all its regions x expressions), NaN kept."""
    out = np.full(image.shape, np.nan)
    for a in range(0, image.shape[0], m_rows):
        block = image[a:a + m_rows]
        ok = np.isfinite(block)
        if ok.sum() >= 2 and np.std(block[ok]) > 0:
            out[a:a + m_rows] = (block - block[ok].mean()) / block[ok].std()
    return out


def _marginal_bars(top, side, raw: np.ndarray, m_rows: int, m_cols: int, value: str,
                   all_means: np.ndarray) -> None:
    """Means of the raw values per expression (bars above the heatmap: over the drawn contexts in light grey, over
    all contexts of the table in dark grey, as the paper's Fig. 2) and per context (bars to its right)."""
    def block_means(a: np.ndarray, size: int) -> np.ndarray:  # mean of each block of `size` rows, NaN if empty
        blocks = a.reshape(a.shape[0] // size, -1)
        ok = np.isfinite(blocks)
        return np.where(ok.any(axis=1), np.where(ok, blocks, 0.0).sum(axis=1) / np.maximum(ok.sum(axis=1), 1),
                        np.nan)

    per_ctx = block_means(raw, m_rows)
    per_expr = block_means(raw.T, m_cols)
    n_ctx, n_expr = per_ctx.size, per_expr.size
    cmap = colormaps[_DIVERGING]
    lim = max(np.nanmax(np.abs(np.r_[per_expr, per_ctx, 1e-12])), 1e-12)
    top.bar(np.arange(n_expr) + 0.3, np.nan_to_num(per_expr), width=0.4, color="#c8c8c8", label="drawn contexts")
    top.bar(np.arange(n_expr) + 0.7, np.nan_to_num(all_means), width=0.4, color="#5a5a5a", label="all contexts")
    top.legend(fontsize=6, frameon=False, loc="upper right")
    top.axhline(0, color="#555555", linewidth=0.6)
    top.set_ylabel(f"mean {value}", fontsize=7)
    top.tick_params(axis="x", labelbottom=False, length=0)
    top.tick_params(axis="y", labelsize=6)
    side.barh(np.arange(n_ctx) + 0.5, np.nan_to_num(per_ctx), height=0.8,
              color=cmap(0.5 + 0.5 * np.nan_to_num(per_ctx) / lim))
    side.axvline(0, color="#555555", linewidth=0.6)
    side.set_xlabel(f"mean {value}", fontsize=7)
    side.tick_params(axis="y", labelleft=False, length=0)
    side.tick_params(axis="x", labelsize=6)


def _tile(x: float, y: float) -> Rectangle:
    return Rectangle((x, y), 1, 1, facecolor="#f4f4f4", edgecolor="#777777", linewidth=0.6)


def _short(name: str) -> str:
    """Compact region label for small tiles: ``SoutheastAsia(Mainland)`` -> ``SE Asia\\nMainl.``-style abbreviations."""
    special = {
        "CentralNorthernEurope": "C/N\nEurope", "SoutheastAsia(Mainland)": "SE Asia\nmainl.",
        "SoutheastAsia(Maritime)": "SE Asia\nmarit.", "IndianSubcontinent": "Indian\nsubcont.",
        "HispanicAmerica": "Hispanic\nAmerica", "EasternEurope": "Eastern\nEurope", "WesternEurope": "Western\nEurope",
        "MiddleEast": "Middle\nEast", "EastAsia": "East\nAsia", "USCanada": "US/\nCanada",
    }
    return special.get(name, name)


# ----------------------------------------------------------------------------------------------------------------
# Fig. 3a
# ----------------------------------------------------------------------------------------------------------------
def region_similarity_matrix(
    sim_df: pd.DataFrame,
    out: str | os.PathLike,
    *,
    title: str = "Similarity of context-expression associations between regions",
    figsize: tuple[float, float] = (10.0, 8.5),
    dpi: int = 150,
) -> Path:
    """Region x region matrix of ``r`` (annotated with ``r`` and, if present, ``± se``); the diagonal if absent is grey.

    Pairs given once (a, b) are mirrored to (b, a): the statistic is symmetric and a full square is easier to read.
    """
    _require(sim_df, ["region_a", "region_b", "r"], "region_similarity_matrix")
    order = _region_order(list(sim_df["region_a"]) + list(sim_df["region_b"]))
    pos = {r: i for i, r in enumerate(order)}
    n = len(order)
    mat = np.full((n, n), np.nan)
    se = np.full((n, n), np.nan)
    has_se = "se" in sim_df.columns
    for row in sim_df.itertuples(index=False):
        a, b = pos[str(row.region_a)], pos[str(row.region_b)]
        for i, j in ((a, b), (b, a)):
            if np.isnan(mat[i, j]) or (i, j) == (a, b):
                mat[i, j] = float(row.r)
                se[i, j] = float(row.se) if has_se else np.nan
    off = mat[~np.eye(n, dtype=bool)]
    lim = max(_symmetric_limit(off, 100.0), 1e-9)
    cmap = colormaps[_DIVERGING].with_extremes(bad="#d9d9d9")
    fig = _new_figure(figsize, dpi)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(mat, cmap=cmap, vmin=-lim, vmax=lim, interpolation="nearest")
    font = max(4.5, min(8.0, 70.0 / n))
    for i in range(n):
        for j in range(n):
            if np.isfinite(mat[i, j]):
                text = f"{mat[i, j]:.2f}" + (f"\n±{se[i, j]:.2f}" if np.isfinite(se[i, j]) else "")
                dark = abs(mat[i, j]) > 0.6 * lim
                ax.text(j, i, text, ha="center", va="center", fontsize=font, color="white" if dark else "black")
    labels = [_display(r) for r in order]
    ax.set_xticks(range(n), labels, rotation=50, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("Region")
    ax.set_ylabel("Region")
    ax.set_title(title)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("r between the regions' context-expression correlations")
    fig.tight_layout()
    return _save(fig, out, dpi)


# ----------------------------------------------------------------------------------------------------------------
# Fig. 3b
# ----------------------------------------------------------------------------------------------------------------
def region_vs_world_bars(
    world_df: pd.DataFrame,
    out: str | os.PathLike,
    *,
    title: str = "How well the rest of the world predicts each region",
    figsize: tuple[float, float] = (10.0, 6.5),
    dpi: int = 150,
) -> Path:
    """Horizontal bars of ``r2`` (± ``se``) per region, sorted; a diamond marks the best single matching region.

    Why horizontal: the paper's region names are long; on a vertical axis they read without rotation.
    """
    _require(world_df, ["region", "r2", "best_match_region", "best_match_r2"], "region_vs_world_bars")
    df = world_df.copy()
    df = df.sort_values("r2", ascending=True, kind="stable").reset_index(drop=True)
    y = np.arange(len(df))
    fig = _new_figure(figsize, dpi)
    ax = fig.add_subplot(1, 1, 1)
    err = df["se"].to_numpy(dtype=float) if "se" in df.columns else None
    ax.barh(y, df["r2"].to_numpy(dtype=float), xerr=err, color="#4c72b0", height=0.65, capsize=3,
            error_kw=dict(ecolor="#222222", lw=1.0), label="rest of the world (R², ± SE)")
    ax.scatter(df["best_match_r2"].to_numpy(dtype=float), y, marker="D", s=36, color="#dd8452", zorder=3,
               edgecolor="black", linewidth=0.5, label="best single region")
    xmax = float(np.nanmax(np.r_[df["r2"].to_numpy(float) + (0 if err is None else np.nan_to_num(err)),
                                 df["best_match_r2"].to_numpy(float)]))
    xmax = xmax if np.isfinite(xmax) and xmax > 0 else 1.0
    for yi, row in zip(y, df.itertuples(index=False)):
        ax.text(xmax * 1.03, yi, f"best: {_display(row.best_match_region)} ({row.best_match_r2:.2f})",
                va="center", fontsize=7.5, color="#8c4a1d")
    ax.set_yticks(y, [_display(r) for r in df["region"]])
    ax.set_xlim(0, xmax * 1.55)
    ax.set_xticks([t for t in ax.get_xticks() if 0 <= t <= xmax * 1.02])  # no axis ticks under the text column
    ax.set_xlabel("Variance explained (R²) in the region's context-expression correlations")
    ax.set_ylabel("Region")
    ax.set_title(title)
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.spines[["right", "top"]].set_visible(False)
    fig.legend(loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return _save(fig, out, dpi)


# ----------------------------------------------------------------------------------------------------------------
# Fig. 3c
# ----------------------------------------------------------------------------------------------------------------
def heldout_canonical_correlations(
    cca_df: pd.DataFrame,
    out: str | os.PathLike,
    *,
    title: str = "Canonical correlations in held-out regions",
    jitter: float = 0.18,
    seed: int = 0,
    figsize: tuple[float, float] | None = None,
    dpi: int = 150,
) -> Path:
    """One panel per ``variant``: per canonical ``dimension``, one point per held-out region and a bar at the median.

    The jitter (``jitter`` dimension units, seeded) only separates overlapping points; colours identify regions
    consistently across panels.
    """
    _require(cca_df, ["variant", "dimension", "heldout_region", "r"], "heldout_canonical_correlations")
    variants = list(dict.fromkeys(cca_df["variant"].astype(str)))
    order = _region_order(cca_df["heldout_region"])
    palette = colormaps["tab20"]
    colour = {r: palette(i % 20) for i, r in enumerate(order)}
    dims = np.sort(cca_df["dimension"].unique())
    if figsize is None:
        figsize = (max(6.0, 1.2 + (0.45 * len(dims) + 1.5) * len(variants) + 2.4), 5.2)
    fig = _new_figure(figsize, dpi)
    axes = fig.subplots(1, len(variants), sharey=True, squeeze=False)[0]
    rng = np.random.default_rng(seed)
    for ax, variant in zip(axes, variants):
        sub = cca_df[cca_df["variant"].astype(str) == variant]
        for reg in order:
            pts = sub[sub["heldout_region"].astype(str) == reg]
            if pts.empty:
                continue
            x = pts["dimension"].to_numpy(dtype=float) + rng.uniform(-jitter, jitter, len(pts))
            ax.scatter(x, pts["r"].to_numpy(dtype=float), s=14, color=colour[reg], alpha=0.85, linewidth=0)
        med = sub.groupby("dimension")["r"].median()
        ax.hlines(med.to_numpy(), med.index.to_numpy(float) - 0.35, med.index.to_numpy(float) + 0.35,
                  colors="black", linewidth=2.2, zorder=3)
        ax.axhline(0, color="#999999", linewidth=0.7)
        ax.set_title(variant)
        ax.set_xlabel("Canonical dimension")
        ax.set_xticks(dims)
        ax.grid(axis="y", color="#eeeeee", linewidth=0.6)
    axes[0].set_ylabel("Canonical correlation in the held-out region")
    handles = [Line2D([], [], marker="o", linestyle="", color=colour[r], label=_display(r)) for r in order]
    handles.append(Line2D([], [], color="black", linewidth=2.2, label="median over regions"))
    fig.legend(handles=handles, loc="center right", fontsize=7.5, title="Held-out region", title_fontsize=8,
               frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1 - 2.3 / figsize[0], 1))
    return _save(fig, out, dpi)


# ----------------------------------------------------------------------------------------------------------------
# Fig. 4
# ----------------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _country_outlines() -> tuple[np.ndarray, ...]:
    """Coarse country borders (lon, lat rings) from the ``countryinfo`` package's bundled GeoJSON; () if absent."""
    try:
        import countryinfo
    except ImportError:
        return ()
    import json

    rings: list[np.ndarray] = []
    for file in sorted((Path(countryinfo.__file__).parent / "data").glob("*.json")):
        shape = json.loads(file.read_text(encoding="utf-8")).get("geoJSON") or {}
        for feature in shape.get("features", []) if isinstance(shape, dict) else []:
            geom = feature.get("geometry") or {}
            polys = geom.get("coordinates", [])
            polys = [polys] if geom.get("type") == "Polygon" else polys
            rings.extend(np.asarray(ring, dtype=float)[:, :2] for poly in polys for ring in poly if len(ring) > 2)
    return tuple(rings)


def geobin_map(
    geo_df: pd.DataFrame,
    out: str | os.PathLike,
    bin_deg: float = 0.5,
    *,
    variates: Sequence[str] = ("variate_1", "variate_2", "variate_3"),
    percentiles: tuple[float, float] = (2.0, 98.0),
    outlines: bool = True,
    title: str = "Canonical variates 1-3 as colour, per geographic bin",
    figsize: tuple[float, float] = (12.0, 6.0),
    dpi: int = 150,
) -> Path:
    """Equirectangular map: each bin coloured RGB = (variate_1, variate_2, variate_3), opacity by video count.

    ``lat_bin, lon_bin`` are bin *indices* as :func:`cxatlas.core.geo.geobin` makes them (``floor(lat / bin_deg)``), so a
    bin covers ``[lat_bin * bin_deg, (lat_bin + 1) * bin_deg)``. Each variate is rescaled to [0, 1] between its
    ``percentiles`` (robust to outlying bins) and clipped. Opacity grows with log(n_videos) so that bins resting on
    a handful of videos do not dominate the eye. Bins are drawn at least ~1 degree wide so that sparse points stay
    visible at world scale. Country outlines come from ``countryinfo``'s bundled GeoJSON (no basemap package).
    """
    _require(geo_df, ["lat_bin", "lon_bin", "n_videos", *variates], "geobin_map")
    if len(variates) != 3:
        raise ValueError("geobin_map needs exactly three variates (red, green, blue)")
    df = geo_df[np.isfinite(geo_df[list(variates)].to_numpy(dtype=float)).all(axis=1)]
    rgb = np.empty((len(df), 3))
    for k, col in enumerate(variates):
        v = df[col].to_numpy(dtype=float)
        lo, hi = (np.percentile(v, percentiles) if v.size else (0.0, 1.0))
        rgb[:, k] = np.clip((v - lo) / (hi - lo), 0, 1) if hi > lo else 0.5
    n = df["n_videos"].to_numpy(dtype=float)
    alpha = 0.35 + 0.65 * (np.log1p(n) / np.log1p(n.max())) if n.size and n.max() > 0 else np.ones(len(df))
    lat0 = df["lat_bin"].to_numpy(dtype=float) * bin_deg
    lon0 = df["lon_bin"].to_numpy(dtype=float) * bin_deg

    fig = _new_figure(figsize, dpi)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_facecolor("#f3f6fa")
    if outlines:
        rings = _country_outlines()
        if rings:
            ax.add_collection(LineCollection(rings, colors="#9a9a9a", linewidths=0.4, zorder=1))
    width = max(bin_deg, 1.0)  # degrees; a 0.5-degree square is under a pixel at this scale
    pad = (width - bin_deg) / 2
    squares = [((x - pad, y - pad), (x + bin_deg + pad, y - pad), (x + bin_deg + pad, y + bin_deg + pad),
                (x - pad, y + bin_deg + pad)) for x, y in zip(lon0, lat0)]
    faces = np.column_stack([rgb, alpha])
    ax.add_collection(PolyCollection(squares, facecolors=faces, edgecolors="none", zorder=2))
    ax.set_xlim(-180, 180)
    ax.set_ylim(-60, 85)
    ax.set_aspect("equal")
    ax.set_xticks(np.arange(-180, 181, 30))
    ax.set_yticks(np.arange(-60, 81, 20))
    ax.grid(color="#d0d0d0", linewidth=0.5, zorder=0)
    ax.set_xlabel("Longitude (°)")
    ax.set_ylabel("Latitude (°)")
    ax.set_title(title)
    total = int(n.sum()) if n.size else 0
    ax.text(0.005, 0.015, f"R = {variates[0]}, G = {variates[1]}, B = {variates[2]} (each scaled between its "
            f"percentiles {percentiles[0]:g} and {percentiles[1]:g}); opacity ~ log(videos per bin); "
            f"{len(df):,} bins of {bin_deg:g}°, {total:,} videos",
            transform=ax.transAxes, fontsize=7, va="bottom", ha="left",
            bbox=dict(facecolor="white", alpha=0.8, edgecolor="none", pad=2))
    fig.tight_layout()
    return _save(fig, out, dpi)
