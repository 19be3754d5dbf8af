"""Reduction of raw signals to the numbers a capability returns, from the signal alone.

Nothing here reads the simulated world: XRD phases come from a non-negative least-squares fit of
reference profiles (a phase library, as a lab would take from a database), the band gap from a
Tauc plot, the uptake from a Langmuir fit of the isotherm. The tests check each recovers a known
answer within the noise.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit, nnls

from ppu.drivers.mof.phases import HC_EV_NM, REFERENCE_PEAKS, TARGET_PHASE, phase_profile


@dataclass
class PhaseFit:
    phases: dict[str, float]
    purity: float
    main_phase: str | None
    residual: float = 0.0


def identify_phases(two_theta: Sequence[float], intensity: Sequence[float], *,
                    references: dict[str, list[tuple[float, float]]] | None = None,
                    target: str = TARGET_PHASE, fwhm: float = 0.25, min_fraction: float = 0.005) -> PhaseFit:
    """Weight fractions by NNLS on reference profiles plus a smooth background.

    Intensity is taken as proportional to weight fraction (equal reference intensity ratios),
    the convention the reference library is normalised to.
    """
    x = np.asarray(two_theta, dtype=float)
    y = np.asarray(intensity, dtype=float)
    refs = references or REFERENCE_PEAKS
    names = list(refs)
    profiles = [phase_profile(p, x, fwhm, refs) for p in names]
    background = [np.ones_like(x), np.exp(-x / 12.0), np.exp(-x / 30.0), x / x.max()]
    a = np.column_stack(profiles + background)
    w = 1.0 / np.sqrt(np.clip(y, 1.0, None))  # Poisson weights
    coef, resid = nnls(a * w[:, None], y * w)
    scale = coef[: len(names)]
    total = float(scale.sum())
    if total <= 0:
        return PhaseFit(phases={}, purity=0.0, main_phase=None, residual=float(resid))
    fractions = {n: float(s / total) for n, s in zip(names, scale, strict=True)}
    fractions = {n: f for n, f in fractions.items() if f >= min_fraction}
    norm = sum(fractions.values())
    fractions = {n: f / norm for n, f in fractions.items()}
    main = max(fractions, key=lambda k: fractions[k]) if fractions else None
    return PhaseFit(phases=fractions, purity=fractions.get(target, 0.0), main_phase=main, residual=float(resid))


def tauc_band_gap(wavelength_nm: Sequence[float], absorbance: Sequence[float], *, exponent: float = 2.0,
                  window: tuple[float, float] = (0.2, 0.8)) -> tuple[float, float]:
    """Band gap (eV) and the fit's R^2 from a Tauc plot, (A E)^exponent against E.

    exponent 2 is a direct allowed transition (1/2 an indirect one). The baseline is the median of
    the lowest-energy 5 % of the spectrum; the line is fitted where the smoothed Tauc curve lies
    within ``window`` of its maximum, on the contiguous stretch that starts at the edge.
    """
    lam = np.asarray(wavelength_nm, dtype=float)
    e = HC_EV_NM / lam
    order = np.argsort(e)
    e, a = e[order], np.asarray(absorbance, dtype=float)[order]
    base = float(np.median(a[: max(len(a) // 20, 3)]))
    y = (np.clip(a - base, 0, None) * e) ** exponent
    k = 9 if len(y) > 30 else 3
    ys = np.convolve(y, np.ones(k) / k, mode="same")
    top = float(ys[k:-k].max()) if len(ys) > 2 * k else float(ys.max())
    lo, hi = window[0] * top, window[1] * top
    above = np.nonzero(ys >= lo)[0]
    if len(above) < 3:
        raise ValueError("no absorption edge in the spectrum: widen the wavelength range")
    start = int(above[0])
    stop = start
    while stop + 1 < len(ys) and ys[stop + 1] <= hi:
        stop += 1
    if stop - start < 2:
        stop = min(start + 3, len(ys) - 1)
    ef, yf = e[start : stop + 1], y[start : stop + 1]
    m, c = np.polyfit(ef, yf, 1)
    if m <= 0:
        raise ValueError("the Tauc plot has no rising edge: cannot fit a band gap")
    pred = m * ef + c
    ss_res = float(((yf - pred) ** 2).sum())
    ss_tot = float(((yf - yf.mean()) ** 2).sum()) or 1.0
    return float(-c / m), 1.0 - ss_res / ss_tot


def langmuir(p: np.ndarray, qmax: float, b: float) -> np.ndarray:
    return qmax * b * p / (1.0 + b * p)


@dataclass
class IsothermFit:
    qmax: float
    b: float
    r2: float
    pressures: list[float] = field(default_factory=list)

    def uptake(self, pressure_bar: float) -> float:
        return float(langmuir(np.array([pressure_bar]), self.qmax, self.b)[0])


def fit_langmuir(pressure_bar: Sequence[float], uptake_mmol_g: Sequence[float]) -> IsothermFit:
    """Least-squares single-site Langmuir fit (qmax mmol/g, b 1/bar)."""
    p = np.asarray(pressure_bar, dtype=float)
    q = np.asarray(uptake_mmol_g, dtype=float)
    if len(p) < 3:
        raise ValueError("a Langmuir fit needs at least 3 isotherm points")
    p0 = (max(float(q.max()) * 1.5, 1e-3), 5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        (qmax, b), _ = curve_fit(langmuir, p, q, p0=p0, bounds=([0.0, 1e-6], [1e4, 1e4]), maxfev=10_000)
    pred = langmuir(p, qmax, b)
    ss_tot = float(((q - q.mean()) ** 2).sum()) or 1.0
    return IsothermFit(qmax=float(qmax), b=float(b), r2=1.0 - float(((q - pred) ** 2).sum()) / ss_tot,
                       pressures=[float(x) for x in p])
