"""Shared machinery of the device classes: simulated acquisition and EPICS acquisition.

A simulated device is an ordinary ophyd ``Device`` of soft ``Signal`` components; its
``trigger()`` asks its instrument model (``ppu.simulators.mof.instruments``) how long the acquisition
takes, returns a ``DeviceStatus`` at once and completes it from a timer thread after the scaled
duration, with the readback signals filled in (or with the injected fault as the status error).
An EPICS device has the same component names on ``EpicsSignal`` PVs and triggers by a
put-completion on its ``Acquire`` PV (the areaDetector convention).
"""

from __future__ import annotations

from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal
from ophyd.status import Status


class EpicsAcquisition(Device):
    """Base of the EPICS devices: ``trigger`` puts 1 to ``Acquire`` and completes on put-callback."""

    acquire = Cpt(EpicsSignal, "Acquire", kind="omitted", put_complete=True)

    def trigger(self) -> Status:
        return self.acquire.set(1)
