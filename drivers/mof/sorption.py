"""Volumetric gas sorption analyser: dose CO2 to a pressure, wait for equilibrium, read the uptake.

``pressure`` is a settable signal, so stock plans treat the analyser as its own motor:
``scan([gas], gas.pressure, 0.05, 1.0, 8)`` measures an isotherm.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.utils import MsgGenerator
from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO

from ppu.backends.devices import EpicsAcquisition


class EpicsGasSorption(EpicsAcquisition):
    sample_id = Cpt(EpicsSignal, "SampleId", string=True, kind="config")
    temperature_k = Cpt(EpicsSignal, "Temperature", kind="config")
    pressure = Cpt(EpicsSignal, "Pressure_RBV", write_pv="Pressure", kind="hinted")
    uptake = Cpt(EpicsSignalRO, "Uptake_RBV", kind="hinted")


def isotherm_pressures(points: int, max_bar: float = 1.0) -> list[float]:
    """Log-spaced doses from max/50 to max: dense at low pressure, where the 0.15 bar uptake lives."""
    return [float(p) for p in np.geomspace(max_bar / 50.0, max_bar, points)]


def measure_isotherm(gas: Device, sample_id: str, pressures: Sequence[float], temperature_k: float = 298.0,
                     md: dict[str, Any] | None = None) -> MsgGenerator[Any]:
    """An isotherm of ``sample_id``: one run, one event per pressure, a checkpoint before each dose."""
    _md = {"plan_name": "measure_isotherm", "sample_id": sample_id, "detectors": [gas.name],
           "motors": [gas.pressure.name], "num_points": len(pressures),  # type: ignore[attr-defined]
           "hints": {"dimensions": [([gas.pressure.name], "primary")]},  # type: ignore[attr-defined]
           "plan_args": {"pressures": list(pressures), "temperature_k": temperature_k}, **(md or {})}

    @bpp.run_decorator(md=_md)
    def inner() -> MsgGenerator[Any]:
        yield from bps.mv(gas.sample_id, sample_id, gas.temperature_k, temperature_k)  # type: ignore[attr-defined]
        for p in pressures:
            yield from bps.checkpoint()
            yield from bps.mv(gas.pressure, p)  # type: ignore[attr-defined]
            yield from bps.trigger_and_read([gas])

    return (yield from inner())
