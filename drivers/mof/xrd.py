"""Powder X-ray diffractometer: a 2-theta scan of one sample, read as two arrays."""

from __future__ import annotations

from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.utils import MsgGenerator
from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO

from ppu.backends.devices import EpicsAcquisition


def two_theta_grid(start: float, stop: float, step: float) -> np.ndarray:
    n = max(round((stop - start) / step) + 1, 2)
    return np.linspace(start, stop, n)


class EpicsXRD(EpicsAcquisition):
    sample_id = Cpt(EpicsSignal, "SampleId", string=True, kind="config")
    two_theta_start = Cpt(EpicsSignal, "TwoThetaStart", kind="config")
    two_theta_stop = Cpt(EpicsSignal, "TwoThetaStop", kind="config")
    two_theta_step = Cpt(EpicsSignal, "TwoThetaStep", kind="config")
    two_theta = Cpt(EpicsSignalRO, "TwoTheta_RBV", kind="normal")
    intensity = Cpt(EpicsSignalRO, "Intensity_RBV", kind="hinted")


def measure_xrd(xrd: Device, sample_id: str, two_theta_start: float = 10.0, two_theta_stop: float = 80.0,
                two_theta_step: float = 0.05, md: dict[str, Any] | None = None) -> MsgGenerator[Any]:
    """One pattern of ``sample_id``: one run, one event holding the 2-theta and intensity arrays."""
    _md = {"plan_name": "measure_xrd", "sample_id": sample_id, "detectors": [xrd.name], "motors": [],
           "num_points": 1, "hints": {"dimensions": [(["time"], "primary")]},
           "plan_args": {"two_theta_start": two_theta_start, "two_theta_stop": two_theta_stop,
                         "two_theta_step": two_theta_step}, **(md or {})}

    @bpp.run_decorator(md=_md)
    def inner() -> MsgGenerator[Any]:
        yield from bps.mv(xrd.sample_id, sample_id, xrd.two_theta_start, two_theta_start,  # type: ignore[attr-defined]
                          xrd.two_theta_stop, two_theta_stop, xrd.two_theta_step, two_theta_step)  # type: ignore[attr-defined]
        yield from bps.checkpoint()
        return (yield from bps.trigger_and_read([xrd]))

    return (yield from inner())
