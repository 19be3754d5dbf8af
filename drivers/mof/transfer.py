"""Sample transfer: a gripper or track that moves a sample between the rack and instruments."""

from __future__ import annotations

from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator
from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO, Signal

from ppu.drivers.mof._base import EpicsAcquisition, SimulatedAcquisition
from ppu.simulators.mof.instruments import InstrumentModel
from ppu.simulators.mof.lab import SimulatedLab


class TransferModel(InstrumentModel):
    name = "transfer"

    def duration_s(self) -> float:
        return 30.0


class SampleTransfer(SimulatedAcquisition):
    sample_id = Cpt(Signal, value="", kind="config")
    destination = Cpt(Signal, value="rack", kind="config")
    location = Cpt(Signal, value="", kind="hinted")

    def __init__(self, prefix: str = "", *, name: str, lab: SimulatedLab, model: TransferModel | None = None,
                 **kw: Any):
        super().__init__(prefix, name=name, lab=lab, model=model or TransferModel(), **kw)

    def _prepare(self) -> None:
        self.lab.sample(self.sample_id.get())

    def _lab_seconds(self) -> float:
        return self.model.duration_s()  # type: ignore[attr-defined]

    def _acquire(self) -> None:
        rec = self.lab.move(self.sample_id.get(), self.destination.get())
        self.location.put(f"{rec.device}:{rec.slot}" if rec.device == "rack" else rec.device)


class EpicsSampleTransfer(EpicsAcquisition):
    sample_id = Cpt(EpicsSignal, "SampleId", string=True, kind="config")
    destination = Cpt(EpicsSignal, "Destination", string=True, kind="config")
    location = Cpt(EpicsSignalRO, "Location_RBV", string=True, kind="hinted")


def sample_transfer(name: str, *, simulated: bool, prefix: str = "", lab: SimulatedLab | None = None,
                    model: TransferModel | None = None) -> Device:
    if simulated:
        if lab is None:
            raise ValueError("a simulated sample transfer needs a SimulatedLab")
        return SampleTransfer(name=name, lab=lab, model=model)
    return EpicsSampleTransfer(prefix, name=name)


def transfer(transfer_dev: Device, sample: str, dest: str, md: dict[str, Any] | None = None) -> MsgGenerator[Any]:
    """Move ``sample`` to ``dest`` (an instrument name, or ``rack``): one run, one event."""
    _md = {"plan_name": "transfer", "sample_id": sample, "destination": dest, **(md or {})}

    @bpp.run_decorator(md=_md)
    def inner() -> MsgGenerator[Any]:
        yield from bps.mv(transfer_dev.sample_id, sample, transfer_dev.destination, dest)  # type: ignore[attr-defined]
        yield from bps.checkpoint()
        return (yield from bps.trigger_and_read([transfer_dev]))

    return (yield from inner())
