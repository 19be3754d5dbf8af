"""Instrument models of the flow lab: the world's truth turned into raw signals, time and faults.

Each model is seeded, counts its acquisitions, knows how long one takes in *lab* seconds and
divides by the time scale for wall time. Faults are injected by rate, by acquisition number or by
hand (``inject_fault``) and surface as :class:`InstrumentFault` when the acquisition would have
finished. Drift grows with lab hours of use:

- the reactor's pump B loses delivery (fewer real equivalents than set) and its thermocouple
  reads low (the coil runs hotter than set) as the pump seals and the sensor age;
- the HPLC column ages: retention times creep later and the baseline tilts.

The chromatogram is what a UV detector records: exponentially modified Gaussian peaks (a
Gaussian band broadened by an exponential tail, :func:`scipy.stats.exponnorm`) for each species
with area = response factor x concentration in the vial, on a baseline with offset, slope and
the gradient's hump, a solvent-front disturbance, and white detector noise.
"""

from __future__ import annotations

import hashlib
import threading

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import exponnorm

from ppu.drivers.flowchem.method import DILUTION, METHOD, SOLVENT_FRONT_MIN
from ppu.drivers.flowchem.models import FlowRecipe


class InstrumentFault(RuntimeError):
    """A simulated hardware fault (clogged coil, pump stall, injector jam...)."""


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
    """Seeded noise, time scaling, drift with use, fault injection."""

    name = "instrument"

    def __init__(self, *, seed: int = 0, time_scale: float = 1.0, faults: FaultConfig | None = None,
                 drift_per_hour: float = 0.0):
        self.rng = seeded_rng(self.name, seed)
        self.time_scale = time_scale
        self.faults = faults or FaultConfig()
        self.drift_per_hour = drift_per_hour
        self.acquisitions = 0
        self.lab_seconds_used = 0.0
        self._manual: list[str] = []
        self._lock = threading.Lock()

    def wall_seconds(self, lab_seconds: float) -> float:
        return lab_seconds / self.time_scale

    def inject_fault(self, message: str = "injected fault") -> None:
        """Make the next acquisition fault."""
        with self._lock:
            self._manual.append(message)

    def begin(self, lab_seconds: float) -> str | None:
        """Count one acquisition; returns the fault it will end in, if any."""
        with self._lock:
            self.acquisitions += 1
            self.lab_seconds_used += lab_seconds
            if self._manual:
                return self._manual.pop(0)
            if self.acquisitions in self.faults.fail_on or self.rng.random() < self.faults.fail_rate:
                return f"{self.faults.message} ({self.name}, acquisition {self.acquisitions})"
            return None

    @property
    def drift(self) -> float:
        """Relative drift accumulated with use."""
        return self.drift_per_hour * self.lab_seconds_used / 3600.0


class FlowReactorModel(InstrumentModel):
    """A 10 mL heated coil, two pumps, a back-pressure regulator and a fraction collector."""

    name = "flow_reactor"
    reactor_volume_ml = 10.0
    heating_c_per_min = 8.0
    steady_state_volumes = 3.0
    pressure_limit_bar = 20.0

    def __init__(self, **kw: object):
        super().__init__(**kw)  # type: ignore[arg-type]
        self.coil_temperature_c = 25.0

    def duration_s(self, recipe: FlowRecipe, collect_volume_ml: float) -> float:
        """Reach temperature, flush to steady state, collect the fraction (lab seconds)."""
        heat = abs(recipe.temperature_c - self.coil_temperature_c) / self.heating_c_per_min
        flow = self.reactor_volume_ml / recipe.residence_time_min  # mL/min
        return 60.0 * (heat + self.steady_state_volumes * recipe.residence_time_min + collect_volume_ml / flow)

    def actual(self, recipe: FlowRecipe, rng: np.random.Generator) -> FlowRecipe:
        """The conditions the coil really ran: drift plus run-to-run scatter (seeded by the vial)."""
        d = min(self.drift, 0.3)
        return recipe.model_copy(update={
            "temperature_c": recipe.temperature_c + 8.0 * d + rng.normal(0, 0.4),
            "residence_time_min": recipe.residence_time_min * (1 + rng.normal(0, 0.008)),
            "equivalents_b": max(recipe.equivalents_b * (1 - d) * (1 + rng.normal(0, 0.012)), 1e-3),
            "concentration_m": max(recipe.concentration_m * (1 + rng.normal(0, 0.008)), 1e-4),
        })

    def pressure_bar(self, recipe: FlowRecipe, clogged: bool, rng: np.random.Generator) -> float:
        flow = self.reactor_volume_ml / recipe.residence_time_min
        base = 6.0 + 0.15 * flow * (1 + 0.4 * recipe.concentration_m)  # BPR setpoint + line drop
        return float(base * (4.0 if clogged else 1.0) + rng.normal(0, 0.05))


def emg_peak(t: np.ndarray, apex_min: float, area: float, sigma: float, tau: float) -> np.ndarray:
    """An exponentially modified Gaussian of ``area`` (signal x seconds) with its apex near ``apex_min``."""
    return area / 60.0 * exponnorm.pdf(t, tau / sigma, loc=apex_min - 0.6 * tau, scale=sigma)


class HPLCModel(InstrumentModel):
    """An online HPLC with a UV detector at 254 nm: the method's species as EMG peaks, plus baseline and noise."""

    name = "hplc"
    sigma_min = 0.030
    tau_min = 0.025
    noise_mau = 0.25
    re_equilibration_s = 120.0

    def duration_s(self, run_time_min: float) -> float:
        return 60.0 * run_time_min + self.re_equilibration_s

    def time_axis(self, run_time_min: float, sample_rate_hz: float) -> np.ndarray:
        n = round(run_time_min * 60.0 * sample_rate_hz) + 1
        return np.linspace(0.0, run_time_min, n)

    def chromatogram(self, concentrations_m: dict[str, float], t: np.ndarray, injection_ul: float = 5.0) -> np.ndarray:
        """Detector trace (mAU) for a vial holding ``concentrations_m`` (mol/L in the fraction)."""
        d = min(self.drift, 0.5)
        y = np.zeros_like(t)
        for name, sp in METHOD.items():
            c_mm = 1000.0 * concentrations_m.get(name, 0.0) / DILUTION
            if c_mm <= 0:
                continue
            area = sp.response * c_mm * injection_ul / 5.0
            rt = sp.retention_min * (1.0 + 0.04 * d) + self.rng.normal(0, 0.004)
            y += emg_peak(t, rt, area, self.sigma_min * (1 + 0.3 * d), self.tau_min)
        baseline = 1.5 + (0.25 + 0.6 * d) * t + 2.0 * np.exp(-0.5 * ((t - 0.75 * t[-1]) / (0.2 * t[-1])) ** 2)
        front = 30.0 * np.exp(-0.5 * ((t - SOLVENT_FRONT_MIN) / 0.04) ** 2) - 12.0 * np.exp(
            -0.5 * ((t - SOLVENT_FRONT_MIN - 0.12) / 0.05) ** 2)
        return y + baseline + front + self.rng.normal(0, self.noise_mau, size=t.shape)
