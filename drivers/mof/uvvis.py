"""UV-vis spectrometer (diffuse reflectance, reported as absorbance) of one sample."""

from __future__ import annotations

from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.utils import MsgGenerator
from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO

from ppu.backends.devices import EpicsAcquisition


def wavelength_grid(start: float, stop: float, step: float) -> np.ndarray:
    n = max(round((stop - start) / step) + 1, 2)
    return np.linspace(start, stop, n)


class EpicsUVVis(EpicsAcquisition):
    sample_id = Cpt(EpicsSignal, "SampleId", string=True, kind="config")
    wavelength_start = Cpt(EpicsSignal, "WavelengthStart", kind="config")
    wavelength_stop = Cpt(EpicsSignal, "WavelengthStop", kind="config")
    wavelength_step = Cpt(EpicsSignal, "WavelengthStep", kind="config")
    wavelength = Cpt(EpicsSignalRO, "Wavelength_RBV", kind="normal")
    absorbance = Cpt(EpicsSignalRO, "Absorbance_RBV", kind="hinted")


def measure_uvvis(uvvis: Device, sample_id: str, wavelength_start_nm: float = 250.0,
                  wavelength_stop_nm: float = 900.0, wavelength_step_nm: float = 1.0,
                  md: dict[str, Any] | None = None) -> MsgGenerator[Any]:
    """One absorbance spectrum of ``sample_id``: one run, one event."""
    _md = {"plan_name": "measure_uvvis", "sample_id": sample_id, "detectors": [uvvis.name], "motors": [],
           "num_points": 1, "hints": {"dimensions": [(["time"], "primary")]},
           "plan_args": {"wavelength_start_nm": wavelength_start_nm, "wavelength_stop_nm": wavelength_stop_nm,
                         "wavelength_step_nm": wavelength_step_nm}, **(md or {})}

    @bpp.run_decorator(md=_md)
    def inner() -> MsgGenerator[Any]:
        yield from bps.mv(uvvis.sample_id, sample_id, uvvis.wavelength_start, wavelength_start_nm,  # type: ignore[attr-defined]
                          uvvis.wavelength_stop, wavelength_stop_nm,  # type: ignore[attr-defined]
                          uvvis.wavelength_step, wavelength_step_nm)  # type: ignore[attr-defined]
        yield from bps.checkpoint()
        return (yield from bps.trigger_and_read([uvvis]))

    return (yield from inner())
