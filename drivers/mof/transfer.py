"""Sample transfer: a gripper or track that moves a sample between the rack and instruments."""

from __future__ import annotations

from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator
from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO

from ppu.backends.devices import EpicsAcquisition


class EpicsSampleTransfer(EpicsAcquisition):
    sample_id = Cpt(EpicsSignal, "SampleId", string=True, kind="config")
    destination = Cpt(EpicsSignal, "Destination", string=True, kind="config")
    location = Cpt(EpicsSignalRO, "Location_RBV", string=True, kind="hinted")


def transfer(transfer_dev: Device, sample: str, dest: str, md: dict[str, Any] | None = None) -> MsgGenerator[Any]:
    """Move ``sample`` to ``dest`` (an instrument name, or ``rack``): one run, one event."""
    _md = {"plan_name": "transfer", "sample_id": sample, "destination": dest, "detectors": [transfer_dev.name],
           "motors": [], "num_points": 1, "hints": {"dimensions": [(["time"], "primary")]}, **(md or {})}

    @bpp.run_decorator(md=_md)
    def inner() -> MsgGenerator[Any]:
        yield from bps.mv(transfer_dev.sample_id, sample, transfer_dev.destination, dest)  # type: ignore[attr-defined]
        yield from bps.checkpoint()
        return (yield from bps.trigger_and_read([transfer_dev]))

    return (yield from inner())
