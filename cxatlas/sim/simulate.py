"""A simulated world of annotated videos whose population statistics are known exactly.

Why: the real per-video data behind Cowen et al. (2021) are not public, but the pipeline must be shown to *recover*
what is there. This module generates per-video expression scores and context labels for the 12 regions from a
generative model whose population partial correlations, prevalences, region-similarity matrix and region-vs-world
fits are computed *analytically* from the model parameters -- so every statistic the pipeline estimates can be
compared with its true value, not with another noisy estimate.

Generative model (per region ``r``; ``E = 16`` expressions, ``K`` contexts of the chosen taxonomy)
-------------------------------------------------------------------------------------------------------
* Expressions: ``x ~ N(0, Sigma_r)``; ``Sigma_r`` is a correlation matrix from a 4-factor model (positive, negative,
  cognitive, surprise/arousal loadings, :data:`EXPRESSION_LOADINGS`) shared by all regions, with the loadings
  perturbed per region by ``N(0, expression_perturbation_sd)`` and the uniquenesses kept ``>= min_uniqueness`` so that
  ``Sigma_r`` is positive definite.
* Contexts: ``c_k = 1[beta_rk . x + eps > tau_rk]``, ``eps ~ N(0, noise_sd^2)``. With ``u = beta.x + eps ~ N(0, s^2)``,
  ``s^2 = beta' Sigma beta + noise_sd^2``, ``q = tau/s``:  ``p = 1 - Phi(q)``, ``Cov(x, c) = Sigma beta phi(q)/s``,
  ``Var(c) = p(1-p)``. The covariance of ``[x, c]`` is therefore exact, and so is the partial correlation of ``c``
  with ``x_e`` given the other expressions: with ``w = beta phi(q)/s`` (= ``Sigma^-1 Cov(x, c)``) and
  ``d = p(1-p) - w' Sigma w`` (residual variance of ``c`` given ``x``), ``pcorr_e = w_e / sqrt(d (Sigma^-1)_ee + w_e^2)``.
* Targets: the published per-region correlations ``P_r`` (Exp1 or Exp2 CSVs; semi-partial in the paper, used here as
  the *shape* of the partial correlations) are split into a universal part ``m = mean_r P_r`` and regional deviations
  ``D_r = P_r - m``. The target partial correlations are
  ``T_r = effect_scale * rms(P) * (sqrt(1 - regional_share) m / rms(m) + sqrt(regional_share) D_r / rms(D))``; since
  the deviations sum to zero over regions the two parts are orthogonal, so ``regional_share`` is exactly the regional
  share of the targets' total sum of squares. NaN cells (two published rows) get deviation 0.
* Prevalences: log-uniform in ``prevalence_range`` per context, times a per-region log-normal factor
  (``prevalence_regional_sd``), clipped to the range.
* From target and prevalence the parameters are solved in closed form (``noise_sd`` fixes the latent's scale):
  ``z_e = T_e sqrt((Sigma^-1)_ee / (1 - T_e^2))``, ``Q = z' Sigma z``, ``w = z sqrt(p(1-p)/(1+Q))``,
  ``s^2 = noise_sd^2 / (1 - w' Sigma w / phi(q)^2)``, ``beta = w s / phi(q)``, ``tau = q s``. This needs the variance of
  ``c`` explained by ``x`` (``Q/(1+Q)``) below the probit ceiling ``phi(q)^2 / (p(1-p))`` -- tight for rare contexts
  (about 0.02 at ``p = 0.002``). Where a target breaks ``max_r2_fraction`` of the ceiling in any region, that context's
  targets are shrunk by one common factor in all regions (keeping its cross-region pattern); ``WorldParams.shrink``
  records the factors. Shrinking strong contexts moves the realised regional share a little off ``regional_share``
  (e.g. 0.36 for 0.3 in Exp1); the exact value is ``PopulationTruth.meta["realized_regional_share"]``.
* Geography: a video's country is drawn uniformly (or by ``country_weights``) among its region's countries in
  ``conf/regions.csv``; ``lat, lon`` come from :func:`cxatlas.core.geo.sample_points_in_country`.

What the estimates converge to
------------------------------
``population_truth`` gives the *asymptotic* values (infinitely many videos). At a finite size the estimated region
similarity and region-vs-world r2 sit systematically BELOW them, by more than their bootstrap SEs: both correlate two
estimated context x expression matrices, and each matrix carries sampling noise that dilutes the correlation
(regression dilution, Spearman 1904). To first order the expected estimate is the population value times
``sqrt(reliability_a * reliability_b)``, where a region's reliability is the share of the (prevalence-weighted)
variance of its estimated correlations that is signal: ``var(rho) / (var(rho) + mean((1 - rho^2)^2 / (n_r - E - 1)))``.
:func:`expected_at_size` computes these values for a given number of videos and :func:`save_population` stores them
next to the asymptotic ones (``*_at_n``), so a simulated run can be judged against what it should find at its size.

Randomness is drawn per fixed block of ``block_rows`` rows from ``SeedSequence(seed, spawn_key=(block,))``, so the rows
are the same whatever the output chunking, and any row range can be generated independently (e.g. by Spark tasks).
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from scipy.special import ndtr, ndtri

from cxatlas.core import geo, regions
from cxatlas.core.config import packaged_conf_dir
from cxatlas.stats.correlation import region_similarity, region_vs_world
from cxatlas.core.taxonomies import load_published_correlations

__all__ = [
    "EXPRESSION_LOADINGS",
    "WorldParams",
    "PopulationTruth",
    "SimulatedWorld",
    "SparseChunk",
    "expression_column",
    "context_column",
    "make_world_params",
    "population_truth",
    "simulate_world",
    "iter_sparse_chunks",
    "iter_record_batches",
    "import_schema",
    "write_import_dataset",
    "save_population",
    "load_population",
    "expected_at_size",
    "load_expected_at_size",
]

#: Factor loadings (positive valence, negative valence, cognitive, surprise/arousal) of the 16 expressions, in the
#: published column order. A plausible structure for a DNN's expression scores: e.g. amusement, contentment and
#: elation go together; anger, disappointment and sadness go together; awe and surprise share arousal.
EXPRESSION_LOADINGS: dict[str, tuple[float, float, float, float]] = {
    "Amusement": (0.60, -0.10, 0.00, 0.10),
    "Anger": (-0.10, 0.50, 0.00, 0.15),
    "Awe": (0.20, 0.00, 0.10, 0.50),
    "Concentration": (0.00, 0.05, 0.50, 0.00),
    "Confusion": (-0.05, 0.10, 0.50, 0.10),
    "Contempt": (-0.05, 0.40, 0.20, 0.00),
    "Contentment": (0.50, -0.10, 0.05, 0.00),
    "Desire": (0.30, 0.00, 0.10, 0.10),
    "Disappointment": (-0.15, 0.50, 0.10, 0.00),
    "Doubt": (-0.05, 0.15, 0.50, 0.00),
    "Elation": (0.60, -0.10, 0.00, 0.30),
    "Interest": (0.10, 0.00, 0.40, 0.15),
    "Pain": (-0.10, 0.50, 0.00, 0.20),
    "Sadness": (-0.15, 0.60, 0.00, 0.00),
    "Surprise": (0.10, 0.00, 0.10, 0.60),
    "Triumph": (0.40, 0.00, 0.00, 0.30),
}


def _snake(label: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", label.lower()).strip("_")


def expression_column(label: str) -> str:
    """Import-format column of an expression (``Amusement`` -> ``expr_amusement``), as DESIGN.md prescribes."""
    return f"expr_{_snake(label)}"


def context_column(label: str) -> str:
    """Import-format column of a context: the taxonomy label kept verbatim (``Football (2)`` -> ``ctx_Football (2)``)."""
    return f"ctx_{label}"


# ----------------------------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class WorldParams:
    """Everything that defines a simulated world; the data and the population truth are functions of it.

    Array axes: ``R`` regions (order of ``region_ids``), ``K`` contexts, ``E`` expressions.
    """

    experiment: int
    seed: int
    region_ids: tuple[str, ...]
    region_names: tuple[str, ...]
    contexts: tuple[str, ...]
    expressions: tuple[str, ...]
    region_weights: np.ndarray  # (R,) share of videos per region, sums to 1
    sigma: np.ndarray  # (R, E, E) expression correlation matrices
    beta: np.ndarray  # (R, K, E) latent weights of the expressions per context
    tau: np.ndarray  # (R, K) latent thresholds
    noise_sd: float
    target_pcorr: np.ndarray  # (R, K, E) the designed partial correlations (after shrinkage)
    target_prevalence: np.ndarray  # (R, K)
    shrink: np.ndarray  # (K,) factor applied to each context's targets to respect the probit ceiling
    countries: dict[str, tuple[str, ...]]  # region id -> ISO country codes
    country_weights: dict[str, np.ndarray]  # region id -> weights (sum 1) over `countries[region]`
    block_rows: int
    settings: dict = field(default_factory=dict)  # the scalar knobs used, for the record

    @property
    def expression_columns(self) -> list[str]:
        return [expression_column(e) for e in self.expressions]

    @property
    def context_columns(self) -> list[str]:
        return [context_column(c) for c in self.contexts]


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.nanmean(np.square(a))))


def _expression_sigmas(
    expressions: Sequence[str], n_regions: int, perturbation_sd: float, min_uniqueness: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Per-region expression correlation matrices: shared factor structure plus a small regional perturbation."""
    base = np.array([EXPRESSION_LOADINGS[e] for e in expressions], dtype=float)
    out = np.empty((n_regions, len(expressions), len(expressions)))
    for r in range(n_regions):
        load = base + rng.normal(0.0, perturbation_sd, size=base.shape)
        communality = np.sum(load**2, axis=1)
        too_big = communality > 1.0 - min_uniqueness
        load[too_big] *= np.sqrt((1.0 - min_uniqueness) / communality[too_big])[:, None]
        cov = load @ load.T
        cov[np.diag_indices_from(cov)] = 1.0  # uniqueness = 1 - communality >= min_uniqueness > 0: positive definite
        out[r] = cov
    return out


def _explained_share(rho: np.ndarray, sigma: np.ndarray, sigma_inv_diag: np.ndarray) -> np.ndarray:
    """Share of Var(c) explained by x when the partial correlations are ``rho`` (..., E); i.e. ``Q / (1 + Q)``."""
    rho = np.clip(rho, -0.999, 0.999)
    z = rho * np.sqrt(sigma_inv_diag / (1.0 - rho**2))
    q = np.einsum("...e,...ef,...f->...", z, sigma, z)
    return q / (1.0 + q)


def _probit_ceiling(p: np.ndarray) -> np.ndarray:
    """Largest share of Var(1[u > tau]) that any linear function of a Gaussian ``u``'s predictors can explain."""
    dens = np.exp(-0.5 * ndtri(p) ** 2) / math.sqrt(2 * math.pi)
    return dens**2 / (p * (1.0 - p))


def _shrink_factors(target: np.ndarray, prevalence: np.ndarray, sigma: np.ndarray, max_fraction: float) -> np.ndarray:
    """Per-context factor in (0, 1] so that, in every region, the explained share stays below the ceiling fraction."""
    sig = sigma[:, None]  # (R, 1, E, E) broadcasts over contexts
    sinv = np.linalg.inv(sigma)[:, None, :, :].diagonal(axis1=-2, axis2=-1)  # (R, 1, E)
    limit = max_fraction * _probit_ceiling(prevalence)  # (R, K)
    lo = np.zeros(prevalence.shape)
    hi = np.ones(prevalence.shape)
    ok = _explained_share(target, sig, sinv) <= limit
    lo[ok] = 1.0
    for _ in range(50):  # bisection on the (monotone) explained share of f * target
        mid = 0.5 * (lo + hi)
        good = _explained_share(mid[..., None] * target, sig, sinv) <= limit
        lo = np.where(good, mid, lo)
        hi = np.where(good, hi, mid)
    return lo.min(axis=0)


def _solve_latent(
    target: np.ndarray, prevalence: np.ndarray, sigma: np.ndarray, noise_sd: float
) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form ``beta (R,K,E)`` and ``tau (R,K)`` giving partial correlations ``target`` and prevalences."""
    sinv = np.linalg.inv(sigma).diagonal(axis1=-2, axis2=-1)[:, None, :]  # (R, 1, E)
    z = target * np.sqrt(sinv / (1.0 - target**2))
    q_form = np.einsum("rke,ref,rkf->rk", z, sigma, z)
    w = z * np.sqrt(prevalence * (1.0 - prevalence) / (1.0 + q_form))[..., None]
    wsw = np.einsum("rke,ref,rkf->rk", w, sigma, w)
    q = -ndtri(prevalence)
    dens = np.exp(-0.5 * q**2) / math.sqrt(2 * math.pi)
    frac = wsw / dens**2
    if np.any(frac >= 1.0):
        raise ValueError("a target exceeds the probit ceiling; lower max_r2_fraction")
    s = noise_sd / np.sqrt(1.0 - frac)
    beta = w * (s / dens)[..., None]
    return beta, q * s


def make_world_params(
    experiment: int = 1,
    *,
    data_dir: str | os.PathLike | None = None,
    regions_csv: str | os.PathLike | None = None,
    regional_share: float = 0.3,
    seed: int = 0,
    n_contexts: int | None = None,
    prevalence_range: tuple[float, float] = (0.002, 0.15),
    prevalence_regional_sd: float = 0.3,
    effect_scale: float = 1.0,
    expression_perturbation_sd: float = 0.05,
    min_uniqueness: float = 0.2,
    noise_sd: float = 1.0,
    max_r2_fraction: float = 0.5,
    region_weights: Mapping[str, float] | None = None,
    country_weights: Mapping[str, float] | None = None,
    block_rows: int = 32_768,
) -> WorldParams:
    """Build the parameters of a simulated world (see the module docstring for the model).

    Parameters
    ----------
    experiment : 1 or 2, which published taxonomy and correlations to imitate (653 or 1,953 contexts).
    data_dir : folder with the published ``Exp<n>_<Region>.csv`` files (None: the copy vendored in the package).
    regions_csv : ``country_code,country_name,region_id`` table mapping countries to the 12 regions (None: the
        packaged ``conf/regions.csv``).
    regional_share : share of the target partial correlations' sum of squares that is region-specific (0 = one
        universal pattern, 1 = only the published regional deviations).
    n_contexts : keep the first ``n_contexts`` contexts of the taxonomy (None: all); small worlds make fast tests.
    prevalence_range : bounds of the log-uniform per-context prevalence (and of the regional variants).
    prevalence_regional_sd : sd of the per-region log-factor on each context's prevalence.
    effect_scale : multiplies the published overall RMS correlation (about 0.016 in Exp1) to set effect sizes.
    expression_perturbation_sd, min_uniqueness : regional jitter of the expression factor loadings, and the floor on
        each expression's unique variance that keeps ``Sigma_r`` well conditioned.
    noise_sd : sd of the latent noise; only fixes the latent's scale (the data do not depend on it).
    max_r2_fraction : fraction of the probit ceiling a context's explained variance may reach before it is shrunk.
    region_weights : relative number of videos per region id (None: equal).
    country_weights : relative weight per country code within its region (None: equal among the region's countries).
    block_rows : rows per block of the random stream; fixes the data for a seed, so keep it constant across runs.
    """
    if not 0.0 <= regional_share <= 1.0:
        raise ValueError("regional_share must lie in [0, 1]")
    lo_p, hi_p = prevalence_range
    if not 0.0 < lo_p <= hi_p < 1.0:
        raise ValueError("prevalence_range must satisfy 0 < low <= high < 1")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))

    region_list = list(regions.REGIONS)
    region_ids = tuple(r.id for r in region_list)
    region_names = tuple(r.display_name for r in region_list)
    published = load_published_correlations(experiment, data_dir)
    frames = [published[name] for name in region_names]
    contexts = tuple(str(c) for c in frames[0].index)
    expressions = tuple(str(c) for c in frames[0].columns)
    if n_contexts is not None:
        contexts = contexts[:n_contexts]
    pub = np.stack([f.loc[list(contexts), list(expressions)].to_numpy(dtype=float) for f in frames])  # (R, K, E)
    n_reg, n_ctx, _ = pub.shape

    # Targets: universal part + regional deviations, mixed at the requested share of variance.
    universal = np.nanmean(pub, axis=0)
    deviation = np.nan_to_num(pub - universal[None], nan=0.0)
    size = effect_scale * _rms(pub)
    parts = np.zeros_like(deviation)
    if regional_share < 1.0 and _rms(universal) > 0:
        parts += math.sqrt(1.0 - regional_share) * universal[None] / _rms(universal)
    if regional_share > 0.0 and _rms(deviation) > 0:
        parts += math.sqrt(regional_share) * deviation / _rms(deviation)
    target = size * parts

    # Prevalences: log-uniform per context, with a regional log-normal factor.
    base = np.exp(rng.uniform(math.log(lo_p), math.log(hi_p), size=n_ctx))
    prevalence = np.clip(base[None] * np.exp(rng.normal(0.0, prevalence_regional_sd, size=(n_reg, n_ctx))), lo_p, hi_p)

    sigma = _expression_sigmas(expressions, n_reg, expression_perturbation_sd, min_uniqueness, rng)
    shrink = _shrink_factors(target, prevalence, sigma, max_r2_fraction)
    target = target * shrink[None, :, None]
    beta, tau = _solve_latent(target, prevalence, sigma, noise_sd)

    # Geography.
    if regions_csv is None:
        regions_csv = packaged_conf_dir() / "regions.csv"
    mapping = regions.load_country_regions(regions_csv)
    countries: dict[str, tuple[str, ...]] = {}
    cweights: dict[str, np.ndarray] = {}
    for rid in region_ids:
        codes = tuple(sorted(code for code, reg in mapping.items() if reg == rid))
        if not codes:
            raise ValueError(f"no country of region {rid!r} in {regions_csv}")
        w = np.array([1.0 if country_weights is None else float(country_weights.get(c, 0.0)) for c in codes])
        if w.sum() <= 0:
            raise ValueError(f"country_weights give region {rid!r} no weight")
        countries[rid] = codes
        cweights[rid] = w / w.sum()
    rw = np.array([1.0 if region_weights is None else float(region_weights.get(r, 0.0)) for r in region_ids])
    if rw.sum() <= 0:
        raise ValueError("region_weights give no region any weight")

    settings = dict(
        regional_share=regional_share, n_contexts=n_ctx, prevalence_range=list(prevalence_range),
        prevalence_regional_sd=prevalence_regional_sd, effect_scale=effect_scale, effect_rms=size,
        expression_perturbation_sd=expression_perturbation_sd, min_uniqueness=min_uniqueness,
        max_r2_fraction=max_r2_fraction, n_shrunk_contexts=int(np.sum(shrink < 1.0)),
    )
    return WorldParams(
        experiment=experiment, seed=seed, region_ids=region_ids, region_names=region_names, contexts=contexts,
        expressions=expressions, region_weights=rw / rw.sum(), sigma=sigma, beta=beta, tau=tau,
        noise_sd=float(noise_sd), target_pcorr=target, target_prevalence=prevalence, shrink=shrink,
        countries=countries, country_weights=cweights, block_rows=int(block_rows), settings=settings,
    )


# ----------------------------------------------------------------------------------------------------------------
# Population truth
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class PopulationTruth:
    """Exact population values of the statistics the pipeline estimates, for one simulated world."""

    region_ids: tuple[str, ...]
    contexts: tuple[str, ...]
    expressions: tuple[str, ...]
    pcorr: np.ndarray  # (R, K, E) partial correlation of context k with expression e given the other expressions
    prevalence: np.ndarray  # (R, K) P(context k) in region r
    region_similarity: np.ndarray  # (R, R)
    world_r2: np.ndarray  # (R,) how well the rest of the world predicts region r
    best_match: np.ndarray  # (R,) index of the single region that best predicts region r
    best_match_r2: np.ndarray  # (R,)
    meta: dict = field(default_factory=dict)

    def correlation_frame(self) -> pd.DataFrame:
        """Long table ``region, context, expression, r, prevalence``, shaped like the pipeline's correlation table."""
        n_reg, n_ctx, n_expr = self.pcorr.shape
        return pd.DataFrame({
            "region": np.repeat(np.array(self.region_ids, dtype=object), n_ctx * n_expr),
            "context": np.tile(np.repeat(np.array(self.contexts, dtype=object), n_expr), n_reg),
            "expression": np.tile(np.array(self.expressions, dtype=object), n_reg * n_ctx),
            "r": self.pcorr.ravel(),
            "prevalence": np.repeat(self.prevalence.ravel(), n_expr),
        })


def _analytic_pcorr_prevalence(params: WorldParams) -> tuple[np.ndarray, np.ndarray]:
    """Partial correlations and prevalences implied by (Sigma, beta, tau, noise_sd); see the module docstring."""
    sigma, beta = params.sigma, params.beta
    bsb = np.einsum("rke,ref,rkf->rk", beta, sigma, beta)
    s = np.sqrt(bsb + params.noise_sd**2)
    q = params.tau / s
    p = ndtr(-q)
    g = np.exp(-0.5 * q**2) / math.sqrt(2 * math.pi) / s
    w = beta * g[..., None]  # Sigma^-1 Cov(x, c)
    d = p * (1.0 - p) - g**2 * bsb  # Var(c | x) in the linear-projection sense
    sinv = np.linalg.inv(sigma).diagonal(axis1=-2, axis2=-1)[:, None, :]
    return w / np.sqrt(d[..., None] * sinv + w**2), p


def population_truth(params: WorldParams) -> PopulationTruth:
    """Compute the exact population statistics of a world from its parameters (no sampling)."""
    pcorr, prev = _analytic_pcorr_prevalence(params)
    sim = region_similarity(pcorr, prev)
    r2, best, best_r2 = region_vs_world(pcorr, prev, similarity=sim)
    universal = pcorr.mean(axis=0, keepdims=True)
    meta = dict(
        experiment=params.experiment, seed=params.seed, **params.settings,
        realized_regional_share=float(np.sum((pcorr - universal) ** 2) / np.sum(pcorr**2)),
    )
    return PopulationTruth(
        region_ids=params.region_ids, contexts=params.contexts, expressions=params.expressions, pcorr=pcorr,
        prevalence=prev, region_similarity=np.asarray(sim), world_r2=np.asarray(r2),
        best_match=np.asarray(best, dtype=np.int64), best_match_r2=np.asarray(best_r2), meta=meta,
    )


@dataclass
class ExpectedAtSize:
    """What the pipeline's estimates should converge to for a world of ``n_videos`` (see the module docstring)."""

    n_videos: int
    reliability: np.ndarray  # (R,) share of the variance of a region's estimated correlations that is signal
    region_similarity: np.ndarray  # (R, R) asymptotic similarity x sqrt(rel_a rel_b); diagonal 1
    world_r2: np.ndarray  # (R,) asymptotic r2 x rel_r x reliability of the average of the other regions


def expected_at_size(pop: PopulationTruth, region_weights: Sequence[float], n_videos: int) -> ExpectedAtSize:
    """First-order expected values of region similarity and region-vs-world r2 at ``n_videos`` videos.

    The sampling variance of a partial correlation is taken as ``(1 - rho^2)^2 / (n_r - E - 1)`` (``n_r`` videos in
    the region, ``E - 1`` controls), weighted over contexts by ``p(1-p)`` as the similarity weights them.
    """
    weights = np.asarray(region_weights, dtype=float)
    n_r = np.maximum(weights / weights.sum() * n_videos - pop.pcorr.shape[2] - 1, 1.0)
    noise = (1.0 - pop.pcorr ** 2) ** 2 / n_r[:, None, None]
    w = np.broadcast_to((pop.prevalence * (1.0 - pop.prevalence))[..., None], pop.pcorr.shape)
    rel = np.empty(len(n_r))
    for r in range(len(n_r)):
        wr, rho = w[r].ravel(), np.nan_to_num(pop.pcorr[r].ravel())
        signal = np.average((rho - np.average(rho, weights=wr)) ** 2, weights=wr)
        rel[r] = signal / (signal + np.average(noise[r].ravel(), weights=wr))
    similarity = pop.region_similarity * np.sqrt(np.outer(rel, rel))
    np.fill_diagonal(similarity, 1.0)
    others = np.array([np.delete(rel, i).mean() for i in range(len(rel))])
    rel_world = 1.0 - (1.0 - others) / max(len(rel) - 1, 1)  # the world average carries 1/(R-1) of the noise
    return ExpectedAtSize(int(n_videos), rel, similarity, pop.world_r2 * rel * rel_world)


def save_population(world: "SimulatedWorld | PopulationTruth", path: str | os.PathLike,
                    expected: ExpectedAtSize | None = None) -> Path:
    """Write the population truth to folder ``path`` as ``population.npz`` (arrays) + ``population.json`` (labels);
    with ``expected``, also the values the estimates converge to at that size (``*_at_n``)."""
    pop = world.population if isinstance(world, SimulatedWorld) else world
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    at_n = {} if expected is None else dict(
        reliability_at_n=expected.reliability, region_similarity_at_n=expected.region_similarity,
        world_r2_at_n=expected.world_r2)
    np.savez_compressed(
        out / "population.npz", pcorr=pop.pcorr, prevalence=pop.prevalence, region_similarity=pop.region_similarity,
        world_r2=pop.world_r2, best_match=pop.best_match, best_match_r2=pop.best_match_r2, **at_n,
    )
    labels = dict(
        region_ids=list(pop.region_ids), contexts=list(pop.contexts), expressions=list(pop.expressions),
        best_match_region=[pop.region_ids[i] for i in pop.best_match], meta=pop.meta,
        n_videos=None if expected is None else expected.n_videos,
    )
    (out / "population.json").write_text(json.dumps(labels, indent=1, ensure_ascii=False), encoding="utf-8")
    return out


def load_population(path: str | os.PathLike) -> PopulationTruth:
    """Read what :func:`save_population` wrote."""
    folder = Path(path)
    labels = json.loads((folder / "population.json").read_text(encoding="utf-8"))
    with np.load(folder / "population.npz") as arrays:
        data = {k: arrays[k] for k in arrays.files if not k.endswith("_at_n")}  # see load_expected_at_size
    return PopulationTruth(
        region_ids=tuple(labels["region_ids"]), contexts=tuple(labels["contexts"]),
        expressions=tuple(labels["expressions"]), meta=labels["meta"], **data,
    )


def load_expected_at_size(path: str | os.PathLike) -> ExpectedAtSize | None:
    """The ``*_at_n`` values :func:`save_population` stored, or None when it was given no size."""
    folder = Path(path)
    n_videos = json.loads((folder / "population.json").read_text(encoding="utf-8")).get("n_videos")
    if n_videos is None:
        return None
    with np.load(folder / "population.npz") as arrays:
        return ExpectedAtSize(int(n_videos), arrays["reliability_at_n"], arrays["region_similarity_at_n"],
                              arrays["world_r2_at_n"])


# ----------------------------------------------------------------------------------------------------------------
# Per-video data
# ----------------------------------------------------------------------------------------------------------------
class SparseChunk(NamedTuple):
    """A run of consecutive simulated videos with sparse context labels (no wide table needed)."""

    video_id: np.ndarray  # (n,) object array of str
    region: np.ndarray  # (n,) int16 index into WorldParams.region_ids
    lat: np.ndarray  # (n,) float64
    lon: np.ndarray  # (n,) float64
    X: np.ndarray  # (n, E) float32 expression scores
    C: sp.csr_matrix  # (n, K) float32 0/1 context labels

    def region_labels(self, region_ids: Sequence[str]) -> np.ndarray:
        """Region ids (strings) of the rows."""
        return np.asarray(region_ids, dtype=object)[self.region]


def _block_rngs(seed: int, block: int) -> list[np.random.Generator]:
    # Three independent streams per block: regions/countries, coordinates, expressions/contexts. Coordinates have
    # their own stream so that a change in how cxatlas.core.geo samples points leaves the annotations untouched.
    seq = np.random.SeedSequence(seed, spawn_key=(1, block))
    return [np.random.default_rng(s) for s in seq.spawn(3)]


def _generate_block(params: WorldParams, block: int, n_rows: int, inner_rows: int) -> SparseChunk:
    """Rows ``[block * block_rows, block * block_rows + n_rows)`` of the world; depends on nothing else."""
    rng_reg, rng_geo, rng_data = _block_rngs(params.seed, block)
    start = block * params.block_rows
    n_expr, n_ctx = len(params.expressions), len(params.contexts)
    region = rng_reg.choice(len(params.region_ids), size=n_rows, p=params.region_weights).astype(np.int16)
    lat = np.empty(n_rows)
    lon = np.empty(n_rows)
    x = np.empty((n_rows, n_expr), dtype=np.float32)
    rows_parts: list[np.ndarray] = []
    cols_parts: list[np.ndarray] = []
    chol = np.linalg.cholesky(params.sigma)
    for r, rid in enumerate(params.region_ids):
        idx = np.flatnonzero(region == r)
        if idx.size == 0:
            continue
        codes = params.countries[rid]
        country = rng_reg.choice(len(codes), size=idx.size, p=params.country_weights[rid])
        for ci in np.unique(country):
            sel = idx[country == ci]
            la, lo = geo.sample_points_in_country(codes[ci], sel.size, rng_geo)
            lat[sel], lon[sel] = la, lo
        xr = rng_data.standard_normal((idx.size, n_expr)) @ chol[r].T
        x[idx] = xr
        beta_t = params.beta[r].T.astype(np.float32)
        thr = params.tau[r].astype(np.float32)
        for a in range(0, idx.size, inner_rows):  # bounded memory: inner_rows x K latent values at a time
            sub = slice(a, min(a + inner_rows, idx.size))
            u = xr[sub].astype(np.float32) @ beta_t
            u += rng_data.standard_normal(u.shape, dtype=np.float32) * np.float32(params.noise_sd)
            rr, cc = np.nonzero(u > thr)
            rows_parts.append(idx[sub][rr])
            cols_parts.append(cc)
    rows = np.concatenate(rows_parts) if rows_parts else np.empty(0, np.int64)
    cols = np.concatenate(cols_parts) if cols_parts else np.empty(0, np.int64)
    c = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(n_rows, n_ctx))
    c.sum_duplicates()
    c.sort_indices()
    ids = np.array([f"sim{params.seed}-{i:08d}" for i in range(start, start + n_rows)], dtype=object)
    return SparseChunk(ids, region, lat, lon, x, c)


def _concat(chunks: list[SparseChunk]) -> SparseChunk:
    if len(chunks) == 1:
        return chunks[0]
    return SparseChunk(
        np.concatenate([c.video_id for c in chunks]), np.concatenate([c.region for c in chunks]),
        np.concatenate([c.lat for c in chunks]), np.concatenate([c.lon for c in chunks]),
        np.concatenate([c.X for c in chunks]), sp.vstack([c.C for c in chunks], format="csr"),
    )


def _slice(chunk: SparseChunk, a: int, b: int) -> SparseChunk:
    return SparseChunk(chunk.video_id[a:b], chunk.region[a:b], chunk.lat[a:b], chunk.lon[a:b], chunk.X[a:b],
                       chunk.C[a:b])


def iter_sparse_chunks(
    params: WorldParams, n_videos: int, chunk_rows: int = 100_000, start: int = 0, stop: int | None = None,
    inner_rows: int = 8_192,
) -> Iterator[SparseChunk]:
    """Yield rows ``[start, stop)`` of an ``n_videos``-video world in chunks of ``chunk_rows`` rows.

    The rows do not depend on ``chunk_rows``, ``start`` or ``stop`` (only on the parameters and ``n_videos``), so a
    benchmark or a Spark task can generate any slice on its own. ``inner_rows`` bounds the dense latent matrix
    (``inner_rows x K`` float32) held at once; it does not change the data.
    """
    stop = n_videos if stop is None else min(stop, n_videos)
    if chunk_rows <= 0:
        raise ValueError("chunk_rows must be positive")
    b_rows = params.block_rows
    pending: list[SparseChunk] = []
    n_pending = 0
    pos = start
    block = start // b_rows
    while pos < stop:
        b_start = block * b_rows
        b_len = min(b_rows, n_videos - b_start)
        blk = _generate_block(params, block, b_len, inner_rows)
        blk = _slice(blk, pos - b_start, min(stop, b_start + b_len) - b_start)
        pending.append(blk)
        n_pending += len(blk.video_id)
        pos = min(stop, b_start + b_len)
        block += 1
        while n_pending >= chunk_rows or (pos >= stop and n_pending > 0):
            merged = _concat(pending)
            take = min(chunk_rows, n_pending)
            yield _slice(merged, 0, take)
            rest = _slice(merged, take, n_pending)
            pending = [rest] if take < n_pending else []
            n_pending -= take


def import_schema(params: WorldParams) -> pa.Schema:
    """Arrow schema of the wide import format: ids, region, coordinates, ``expr_*`` and ``ctx_*`` float32 columns."""
    fields = [pa.field("video_id", pa.string(), nullable=False), pa.field("region", pa.string(), nullable=False),
              pa.field("lat", pa.float64()), pa.field("lon", pa.float64())]
    fields += [pa.field(c, pa.float32()) for c in params.expression_columns]
    fields += [pa.field(c, pa.float32()) for c in params.context_columns]
    return pa.schema(fields)


def _to_record_batch(params: WorldParams, chunk: SparseChunk, schema: pa.Schema) -> pa.RecordBatch:
    region = np.asarray(params.region_ids, dtype=object)[chunk.region]
    ctx = chunk.C.toarray(order="F")  # column-contiguous, so each Arrow column wraps a slice without copying
    arrays = [pa.array(chunk.video_id, pa.string()), pa.array(region, pa.string()), pa.array(chunk.lat),
              pa.array(chunk.lon)]
    arrays += [pa.array(np.ascontiguousarray(chunk.X[:, j])) for j in range(chunk.X.shape[1])]
    arrays += [pa.array(ctx[:, j]) for j in range(ctx.shape[1])]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def iter_record_batches(params: WorldParams, n_videos: int, chunk_rows: int = 25_000) -> Iterator[pa.RecordBatch]:
    """Yield the world in the wide import format, ``chunk_rows`` rows per Arrow RecordBatch (dense only per chunk)."""
    schema = import_schema(params)
    for chunk in iter_sparse_chunks(params, n_videos, chunk_rows):
        yield _to_record_batch(params, chunk, schema)


def write_import_dataset(
    params: WorldParams, n_videos: int, out_path: str | os.PathLike, chunk_rows: int = 25_000,
    compression: str = "zstd",
) -> Path:
    """Write the world's videos as a folder of Parquet files ``part-00000.parquet``... (one per chunk).

    Why a folder: Spark reads the parts in parallel, and at most one ``chunk_rows x K`` dense block is in memory.
    Existing ``part-*.parquet`` files in the folder are removed first so a rerun never mixes two worlds.
    """
    out = Path(out_path)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*.parquet"):
        old.unlink()
    n_parts = 0
    for n_parts, batch in enumerate(iter_record_batches(params, n_videos, chunk_rows), start=1):
        pq.write_table(pa.Table.from_batches([batch]), out / f"part-{n_parts - 1:05d}.parquet",
                       compression=compression)
    if n_parts == 0:  # an empty world is still a readable dataset with the right schema
        pq.write_table(import_schema(params).empty_table(), out / "part-00000.parquet", compression=compression)
    return out


@dataclass
class SimulatedWorld:
    """A small world held in memory: parameters, the per-video wide table and the population truth."""

    params: WorldParams
    table: pa.Table
    population: PopulationTruth

    def to_pandas(self) -> pd.DataFrame:
        return self.table.to_pandas()


def simulate_world(
    n_videos: int,
    experiment: int = 1,
    *,
    data_dir: str | os.PathLike | None = None,
    regions_csv: str | os.PathLike | None = None,
    regional_share: float = 0.3,
    seed: int = 0,
    n_contexts: int | None = None,
    prevalence_range: tuple[float, float] = (0.002, 0.15),
    chunk_rows: int = 25_000,
    **model_options,
) -> SimulatedWorld:
    """Simulate ``n_videos`` videos in memory with their exact population statistics.

    For large worlds use :func:`make_world_params` + :func:`write_import_dataset` or :func:`iter_sparse_chunks`:
    this function materialises the whole wide table. ``model_options`` go to :func:`make_world_params`.
    """
    params = make_world_params(
        experiment, data_dir=data_dir, regions_csv=regions_csv, regional_share=regional_share, seed=seed,
        n_contexts=n_contexts, prevalence_range=prevalence_range, **model_options,
    )
    batches = list(iter_record_batches(params, n_videos, chunk_rows))
    table = pa.Table.from_batches(batches, schema=import_schema(params))
    return SimulatedWorld(params, table, population_truth(params))
