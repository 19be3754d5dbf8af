"""Instrument models: the world's truth turned into raw signals, with noise, drift, time and faults.

Each model is seeded, counts its own triggers, and knows how long one acquisition takes in *lab*
seconds; ``wall_seconds`` divides by the time scale (1e4 runs a 4-hour anneal in 1.4 s). Faults
are injected by rate, by trigger number, or by hand (``inject_fault``), and surface as
:class:`InstrumentFault` when the acquisition would have finished.
"""

from __future__ import annotations

import hashlib
import threading

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ppu.drivers.mof.phases import HC_EV_NM, phase_profile


class InstrumentFault(RuntimeError):
    """A simulated hardware fault (lost vacuum, jammed gripper, shutter stuck...)."""


class FaultConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fail_rate: float = Field(0.0, ge=0, le=1, description="chance that any one acquisition faults (seeded)")
    fail_on: list[int] = Field(default_factory=list, description="1-based acquisition numbers that fault")
    message: str = Field("simulated instrument fault", description="text of the injected fault")


def seeded_rng(*parts: object) -> np.random.Generator:
    """A generator seeded from any parts (stable across processes, unlike hash())."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


class InstrumentModel:
    """Shared machinery: seeded noise, time scaling, drift with use, fault injection."""

    name = "instrument"

    def __init__(self, *, seed: int = 0, time_scale: float = 1.0, faults: FaultConfig | None = None,
                 drift_per_hour: float = 0.0):
        self.rng = seeded_rng(self.name, seed)
        self.time_scale = time_scale
        self.faults = faults or FaultConfig()
        self.drift_per_hour = drift_per_hour
        self.acquisitions = 0
        self.lab_seconds_used = 0.0
        self._manual_faults: list[str] = []
        self._lock = threading.Lock()

    def wall_seconds(self, lab_seconds: float) -> float:
        return lab_seconds / self.time_scale

    def inject_fault(self, message: str = "injected fault") -> None:
        """Make the next acquisition fault."""
        with self._lock:
            self._manual_faults.append(message)

    def begin(self, lab_seconds: float) -> str | None:
        """Count one acquisition; returns the fault it will end in, if any."""
        with self._lock:
            self.acquisitions += 1
            self.lab_seconds_used += lab_seconds
            if self._manual_faults:
                return self._manual_faults.pop(0)
            if self.acquisitions in self.faults.fail_on or self.rng.random() < self.faults.fail_rate:
                return f"{self.faults.message} ({self.name}, acquisition {self.acquisitions})"
            return None

    @property
    def drift(self) -> float:
        """Relative drift accumulated with use (e.g. source decay, transducer offset)."""
        return self.drift_per_hour * self.lab_seconds_used / 3600.0


class SynthesisModel(InstrumentModel):
    name = "synthesis"

    def duration_s(self, anneal_time_h: float) -> float:
        return 1800.0 + anneal_time_h * 3600.0  # weighing, mixing, transfer + the anneal itself

    def mass_mg(self, target_mass_mg: float, success: bool) -> float:
        if not success:
            return 0.0
        return float(max(target_mass_mg * self.rng.normal(0.92, 0.04), 0.0))


class XRDModel(InstrumentModel):
    """Powder diffraction: phases add in proportion to weight fraction, Poisson counting noise."""

    name = "xrd"
    seconds_per_step = 0.5
    fwhm = 0.25
    peak_counts = 2000.0

    def duration_s(self, n_points: int) -> float:
        return 60.0 + self.seconds_per_step * n_points

    def pattern(self, phases: dict[str, float], two_theta: np.ndarray) -> np.ndarray:
        scale = self.peak_counts * (1.0 - min(self.drift, 0.5))  # tube ageing lowers counts
        signal = sum((frac * phase_profile(p, two_theta, self.fwhm) for p, frac in phases.items() if frac > 0),
                     start=np.zeros_like(two_theta))
        background = 40.0 + 120.0 * np.exp(-two_theta / 12.0)
        return self.rng.poisson(np.clip(scale * signal + background, 0, None)).astype(float)


class UVVisModel(InstrumentModel):
    """Diffuse-reflectance UV-vis: a direct-allowed edge ((alpha E)^2 linear in E - Eg) plus an Urbach tail."""

    name = "uvvis"
    urbach_ev = 0.04

    def duration_s(self, n_points: int) -> float:
        return 90.0 + 0.05 * n_points

    def spectrum(self, band_gap_ev: float, wavelength_nm: np.ndarray) -> np.ndarray:
        e = HC_EV_NM / wavelength_nm
        above = np.sqrt(np.clip(e - band_gap_ev, 0, None)) / e
        # the tail joins the edge smoothly enough: it only matters for the bottom of the fit window
        tail = 0.02 * np.exp(np.clip((e - band_gap_ev) / self.urbach_ev, -50, 0))
        baseline = 0.05 + self.drift * 0.05
        a = 1.5 * above + tail + baseline
        return a + self.rng.normal(0, 0.004, size=e.shape)


class IsothermModel(InstrumentModel):
    """Volumetric CO2 sorption: a Langmuir isotherm through the true uptake at 0.15 bar, with noise."""

    name = "sorption"
    seconds_per_point = 600.0

    def duration_s(self, n_points: int) -> float:
        return 1800.0 + self.seconds_per_point * n_points  # degas + equilibration per point

    @staticmethod
    def langmuir_qmax(uptake_at: float, b: float, pressure_bar: float = 0.15) -> float:
        return uptake_at * (1 + b * pressure_bar) / (b * pressure_bar)

    def uptake(self, uptake_015: float, b: float, pressure_bar: np.ndarray) -> np.ndarray:
        qmax = self.langmuir_qmax(uptake_015, b)
        p = pressure_bar * (1.0 + self.drift * 0.01)  # transducer offset drifts slowly
        q = qmax * b * p / (1 + b * p)
        return q * (1 + self.rng.normal(0, 0.01, size=np.shape(p))) + self.rng.normal(0, 0.01, size=np.shape(p))
