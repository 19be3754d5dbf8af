"""Powder X-ray diffractometer: a 2-theta scan of one sample, read as two arrays."""

from __future__ import annotations

from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.utils import MsgGenerator
from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO, Signal

from ppu.drivers.mof._base import EpicsAcquisition, SimulatedAcquisition
from ppu.simulators.mof.instruments import XRDModel
from ppu.simulators.mof.lab import SimulatedLab


def two_theta_grid(start: float, stop: float, step: float) -> np.ndarray:
    n = max(round((stop - start) / step) + 1, 2)
    return np.linspace(start, stop, n)


class XRDDiffractometer(SimulatedAcquisition):
    sample_id = Cpt(Signal, value="", kind="config")
    two_theta_start = Cpt(Signal, value=10.0, kind="config")
    two_theta_stop = Cpt(Signal, value=80.0, kind="config")
    two_theta_step = Cpt(Signal, value=0.05, kind="config")
    two_theta = Cpt(Signal, value=np.zeros(2), kind="normal")
    intensity = Cpt(Signal, value=np.zeros(2), kind="hinted")

    def __init__(self, prefix: str = "", *, name: str, lab: SimulatedLab, model: XRDModel | None = None, **kw: Any):
        super().__init__(prefix, name=name, lab=lab, model=model or XRDModel(), **kw)

    def _grid(self) -> np.ndarray:
        return two_theta_grid(self.two_theta_start.get(), self.two_theta_stop.get(), self.two_theta_step.get())

    def _lab_seconds(self) -> float:
        return self.model.duration_s(len(self._grid()))  # type: ignore[attr-defined]

    def _acquire(self) -> None:
        grid = self._grid()
        rec = self.lab.sample(self.sample_id.get())
        self.two_theta.put(grid)
        self.intensity.put(self.model.pattern(rec.phases, grid))  # type: ignore[attr-defined]


class EpicsXRD(EpicsAcquisition):
    sample_id = Cpt(EpicsSignal, "SampleId", string=True, kind="config")
    two_theta_start = Cpt(EpicsSignal, "TwoThetaStart", kind="config")
    two_theta_stop = Cpt(EpicsSignal, "TwoThetaStop", kind="config")
    two_theta_step = Cpt(EpicsSignal, "TwoThetaStep", kind="config")
    two_theta = Cpt(EpicsSignalRO, "TwoTheta_RBV", kind="normal")
    intensity = Cpt(EpicsSignalRO, "Intensity_RBV", kind="hinted")


def xrd_diffractometer(name: str, *, simulated: bool, prefix: str = "", lab: SimulatedLab | None = None,
                       model: XRDModel | None = None) -> Device:
    if simulated:
        if lab is None:
            raise ValueError("a simulated diffractometer needs a SimulatedLab")
        return XRDDiffractometer(name=name, lab=lab, model=model)
    return EpicsXRD(prefix, name=name)


def measure_xrd(xrd: Device, sample_id: str, two_theta_start: float = 10.0, two_theta_stop: float = 80.0,
                two_theta_step: float = 0.05, md: dict[str, Any] | None = None) -> MsgGenerator[Any]:
    """One pattern of ``sample_id``: one run, one event holding the 2-theta and intensity arrays."""
    _md = {"plan_name": "measure_xrd", "sample_id": sample_id,
           "plan_args": {"two_theta_start": two_theta_start, "two_theta_stop": two_theta_stop,
                         "two_theta_step": two_theta_step}, **(md or {})}

    @bpp.run_decorator(md=_md)
    def inner() -> MsgGenerator[Any]:
        yield from bps.mv(xrd.sample_id, sample_id, xrd.two_theta_start, two_theta_start,  # type: ignore[attr-defined]
                          xrd.two_theta_stop, two_theta_stop, xrd.two_theta_step, two_theta_step)  # type: ignore[attr-defined]
        yield from bps.checkpoint()
        return (yield from bps.trigger_and_read([xrd]))

    return (yield from inner())
