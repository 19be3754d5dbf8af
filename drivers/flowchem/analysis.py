"""From a raw chromatogram to yield and impurity, from the signal alone.

Steps, each a standard one of chromatography data systems:

1. **Baseline** by asymmetric least squares (Eilers & Boelens 2005): a smooth curve that the
   signal may rise above (peaks) but is pulled onto where the signal is flat, then re-centred on
   the peak-free points (ALS alone sits at the bottom of the noise); subtracted.
2. **Noise** from the median absolute deviation of the first difference (robust to peaks).
3. **Peaks** by :func:`scipy.signal.find_peaks` on a Savitzky-Golay smoothed trace, kept when
   their prominence is ``snr`` times the noise and they elute after the solvent front.
4. **Integration** of the corrected (unsmoothed) signal between the points where it falls to a
   small fraction of the apex, or to the valley between two neighbours (drop-line).
5. **Identification** by retention-time windows of the method (:mod:`.method`); the largest peak
   in a window is the species, anything else is reported as unidentified.
6. **Quantification**: area / response factor is proportional to the amount in the vial. The
   assay yield is the mass balance over the A-derived species, P / (A + P + S); the impurity
   is S / (A + P + S); conversion 1 - A / (A + P + S). A species with no peak counts zero.

The tests check these against the simulated world's truth on seeded signals (clean, noisy,
missing peaks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.signal import find_peaks, savgol_filter
from scipy.sparse.linalg import spsolve

from ppu.drivers.flowchem.method import A_DERIVED, METHOD, SOLVENT_FRONT_MIN, Species


class ChromatogramError(ValueError):
    """The chromatogram cannot give an answer (no A-derived peak, too short, not finite)."""


@dataclass
class Peak:
    retention_min: float
    area: float
    height: float
    start_min: float
    end_min: float
    species: str | None = None


@dataclass
class ChromatogramResult:
    product_yield: float
    impurity: float
    conversion: float
    peaks: dict[str, Peak]
    unidentified: list[Peak] = field(default_factory=list)
    noise: float = 0.0

    def outputs(self) -> dict[str, object]:
        """The ``hplc`` capability's outputs."""
        return {"product_yield": self.product_yield, "impurity": self.impurity, "conversion": self.conversion,
                "peaks": {k: {"retention_min": p.retention_min, "area": p.area, "height": p.height}
                          for k, p in self.peaks.items()},
                "unidentified": len(self.unidentified)}


def als_baseline(y: np.ndarray, lam: float = 1e7, p: float = 0.002, iterations: int = 10) -> np.ndarray:
    """Asymmetric least-squares baseline: minimise sum w (y - z)^2 + lam sum (D2 z)^2."""
    n = len(y)
    d = sparse.diags([1.0, -2.0, 1.0], [0, -1, -2], shape=(n, n - 2))
    penalty = lam * (d @ d.T)
    w = np.ones(n)
    z = y
    for _ in range(iterations):
        wm = sparse.spdiags(w, 0, n, n)
        z = spsolve((wm + penalty).tocsc(), w * y)
        w = np.where(y > z, p, 1.0 - p)
    # ALS hugs the lower envelope of the noise; re-centre it on the peak-free points
    r = y - np.asarray(z)
    for _ in range(3):
        quiet = r < np.median(r) + 3.0 * noise_level(r)
        r = r - np.median(r[quiet])
    return y - r


def noise_level(y: np.ndarray) -> float:
    """Standard deviation of white noise on ``y`` from the MAD of its first difference."""
    dy = np.diff(y)
    return float(1.4826 * np.median(np.abs(dy - np.median(dy))) / np.sqrt(2.0)) or 1e-12


def _bounds(y: np.ndarray, apex: int, lo_limit: int, hi_limit: int, floor: float) -> tuple[int, int]:
    """Walk down from the apex to ``floor`` or to a valley, within the neighbours' limits."""
    left = apex
    while left > lo_limit and y[left - 1] > floor:
        left -= 1
    right = apex
    while right < hi_limit and y[right + 1] > floor:
        right += 1
    return left, right


def detect_peaks(time_min: np.ndarray, corrected: np.ndarray, noise: float, *, snr: float = 8.0,
                 tail_fraction: float = 0.005) -> list[Peak]:
    """Peaks of a baseline-corrected trace, integrated by trapezoids between drop-lines."""
    dt = float(np.median(np.diff(time_min)))
    window = max(5, round(0.06 / dt) | 1)  # ~ the peak half-width: smooths noise, keeps shape
    smooth = savgol_filter(corrected, window, 3)
    idx, _ = find_peaks(smooth, prominence=snr * noise, distance=max(1, int(0.08 / dt)))
    idx = idx[time_min[idx] > SOLVENT_FRONT_MIN + 0.3]
    peaks: list[Peak] = []
    for k, apex in enumerate(idx):
        lo = int(idx[k - 1]) if k > 0 else 0
        hi = int(idx[k + 1]) if k + 1 < len(idx) else len(corrected) - 1
        # the valley between neighbours is the furthest a peak may extend
        front = int(np.searchsorted(time_min, SOLVENT_FRONT_MIN))
        lo_limit = lo + int(np.argmin(smooth[lo:apex + 1])) if k > 0 else front
        hi_limit = apex + int(np.argmin(smooth[apex:hi + 1])) if k + 1 < len(idx) else hi
        floor = max(tail_fraction * smooth[apex], 2.0 * noise)
        left, right = _bounds(smooth, int(apex), lo_limit, hi_limit, floor)
        seg = slice(left, right + 1)
        area = float(np.trapezoid(corrected[seg], time_min[seg]) * 60.0)  # mAU*s
        peaks.append(Peak(retention_min=float(time_min[apex]), area=area, height=float(smooth[apex]),
                          start_min=float(time_min[left]), end_min=float(time_min[right])))
    return peaks


def identify(peaks: Sequence[Peak], method: dict[str, Species] | None = None) -> tuple[dict[str, Peak], list[Peak]]:
    """The largest peak inside each species' window is that species; the rest are unidentified."""
    method = method or METHOD
    found: dict[str, Peak] = {}
    for name, sp in method.items():
        inside = [p for p in peaks if abs(p.retention_min - sp.retention_min) <= sp.window_min]
        if inside:
            best = max(inside, key=lambda p: p.area)
            best.species = name
            found[name] = best
    unidentified = [p for p in peaks if p.species is None]
    return found, unidentified


def analyse_chromatogram(time_min: Sequence[float], signal: Sequence[float], *,
                         method: dict[str, Species] | None = None, snr: float = 8.0) -> ChromatogramResult:
    """Yield, impurity and conversion of one injection; see the module docstring for the steps."""
    t = np.asarray(time_min, dtype=float)
    y = np.asarray(signal, dtype=float)
    if t.shape != y.shape or len(t) < 100:
        raise ChromatogramError(f"a chromatogram needs matching time and signal arrays of >= 100 points "
                                f"(got {t.shape} and {y.shape})")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(y))):
        raise ChromatogramError("the chromatogram holds NaN or infinite values: detector fault?")
    method = method or METHOD
    corrected = y - als_baseline(y)
    noise = noise_level(corrected)
    found, unidentified = identify(detect_peaks(t, corrected, noise, snr=snr), method)
    moles = {s: (found[s].area / method[s].response if s in found else 0.0) for s in A_DERIVED}
    total = sum(moles.values())
    if total <= 0:
        raise ChromatogramError("no peak of A, P or S in the chromatogram: nothing to quantify "
                                "(empty vial, failed injection, or the method's windows do not match)")
    frac = {s: min(max(moles[s] / total, 0.0), 1.0) for s in A_DERIVED}
    return ChromatogramResult(product_yield=frac["P"], impurity=frac["S"], conversion=1.0 - frac["A"],
                              peaks=found, unidentified=unidentified, noise=noise)
