"""The noise of ``cxatlas release``: OpenDP's Gaussian mechanism, calibrated to (epsilon, delta) by OpenDP.

Nothing here samples noise or converts privacy parameters by hand: floating-point attacks on naive samplers are
real (Mironov 2012), and OpenDP's samplers and privacy maps exist to avoid them. What OpenDP is given:

* the input space: vectors of floats under the L2 distance, with ``d_in = 1`` -- the packed statistics of one region
  (:func:`cxatlas.stats.dp.pack`), whose L2 sensitivity is 1 by construction once every video's scores are clipped
  to [0, 1] and its non-zero contexts to ``release.max_contexts_per_video`` (:func:`cxatlas.stats.dp.sensitivities`);
* ``make_gaussian`` (zero-concentrated DP), converted to (epsilon, delta)-DP by ``make_zCDP_to_approxDP`` and
  ``make_fix_delta``; ``binary_search_param`` finds the smallest noise scale whose privacy map meets the request.

One measurement per region; the regions hold disjoint videos, so the release as a whole is (epsilon, delta)-DP
(parallel composition), and releases of one data root add up in the budget ledger (sequential composition).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib.metadata import version

import numpy as np

from cxatlas.core.errors import UserError
from cxatlas.stats.dp import budget_shares, noise_scales, sensitivities

LIBRARY = "opendp"
MECHANISM = ("Gaussian mechanism (OpenDP make_gaussian on the region's statistics packed to L2 sensitivity 1; "
             "zCDP converted to (epsilon, delta) by make_zCDP_to_approxDP + make_fix_delta; scale by "
             "binary_search_param); one measurement per region, regions disjoint (parallel composition)")


class CalibrationError(UserError, ValueError):
    """OpenDP cannot calibrate noise for this (epsilon, delta)."""


def _space():
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l2_distance(T=float)


def _approx(scale: float, delta: float):
    import opendp.prelude as dp

    gauss = dp.m.make_gaussian(*_space(), scale=scale)
    return dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(gauss), delta)


@dataclass
class Calibration:
    """The noise of one release: what OpenDP was asked, what it answered, and the scale on every statistic."""

    epsilon: float
    delta: float
    unit_scale: float                  # sd of the noise on the packed vector (L2 sensitivity 1)
    rho: float                         # zCDP of one region's measurement at d_in = 1 (OpenDP's privacy map)
    achieved: tuple[float, float]      # (epsilon, delta) of OpenDP's privacy map at d_in = 1
    sensitivities: dict[str, float] = field(default_factory=dict)
    shares: dict[str, float] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)  # sd of the noise on each entry of each statistic
    library: str = LIBRARY
    library_version: str = ""
    mechanism: str = MECHANISM

    def add_noise(self, vec: np.ndarray) -> np.ndarray:
        """One draw of the region's measurement on the packed vector (fresh OS randomness: no seed decides it)."""
        import opendp.prelude as dp

        meas = dp.m.make_gaussian(*_space(), scale=self.unit_scale)
        return np.asarray(meas([float(v) for v in np.asarray(vec, dtype=np.float64)]), dtype=np.float64)


def calibrate(epsilon: float, delta: float, n_expressions: int, max_contexts: int,
              count_share: float) -> Calibration:
    """The smallest Gaussian noise scale on the packed vector for which OpenDP's privacy map gives (epsilon, delta).

    The search is bracketed around the textbook scale for ``rho = (sqrt(log(1/delta) + epsilon) -
    sqrt(log(1/delta)))^2`` (OpenDP's exact conversion allows 0.3 to 1 times less noise): its exp() overflows for
    scales far below, which for a large epsilon are near. Raises :class:`CalibrationError` when OpenDP cannot reach the request (e.g. an epsilon so large
    that its conversion overflows).
    """
    import opendp.prelude as dp

    log_inv = math.log(1.0 / delta)
    rho0 = (math.sqrt(log_inv + epsilon) - math.sqrt(log_inv)) ** 2
    s0 = 1.0 / math.sqrt(2.0 * rho0)
    try:
        scale = float(dp.binary_search_param(lambda s: _approx(s, delta), d_in=1.0, d_out=(epsilon, delta),
                                             bounds=(s0 / (2.0 if epsilon > 50 else 32.0), s0 * 2.0)))
        eps_got, delta_got = _approx(scale, delta).map(1.0)
        rho = float(dp.m.make_gaussian(*_space(), scale=scale).map(1.0))
    except Exception as exc:  # noqa: BLE001 - OpenDP reports any failure as OpenDPException/ValueError
        raise CalibrationError(f"OpenDP cannot calibrate the Gaussian mechanism to epsilon={epsilon:g}, "
                               f"delta={delta:g} ({str(exc).strip().splitlines()[-1][:160]}); use a smaller "
                               f"epsilon (up to a few thousand)") from exc
    if eps_got > epsilon * (1 + 1e-9) or delta_got > delta * (1 + 1e-9):
        raise CalibrationError(f"OpenDP's privacy map gives ({eps_got}, {delta_got}), above the requested "
                               f"({epsilon}, {delta})")
    sens = sensitivities(n_expressions, max_contexts)
    shares = budget_shares(sens, count_share)
    return Calibration(epsilon=epsilon, delta=delta, unit_scale=scale, rho=rho, achieved=(eps_got, delta_got),
                       sensitivities=sens, shares=shares, scales=noise_scales(sens, shares, scale),
                       library_version=version("opendp"))
