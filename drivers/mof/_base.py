"""Shared machinery of the device classes: simulated acquisition and EPICS acquisition.

A simulated device is an ordinary ophyd ``Device`` of soft ``Signal`` components; its
``trigger()`` asks its instrument model (``ppu.simulators.mof.instruments``) how long the acquisition
takes, returns a ``DeviceStatus`` at once and completes it from a timer thread after the scaled
duration, with the readback signals filled in (or with the injected fault as the status error).
An EPICS device has the same component names on ``EpicsSignal`` PVs and triggers by a
put-completion on its ``Acquire`` PV (the areaDetector convention).
"""

from __future__ import annotations

import threading
from typing import Any

from ophyd import Component as Cpt
from ophyd import Device, DeviceStatus, EpicsSignal
from ophyd.status import Status

from ppu.simulators.mof.instruments import InstrumentFault, InstrumentModel
from ppu.simulators.mof.lab import SimulatedLab


class SimulatedAcquisition(Device):
    """Base of the simulated devices: ``trigger`` runs ``_acquire`` after the model's scaled duration."""

    def __init__(self, prefix: str = "", *, name: str, lab: SimulatedLab, model: InstrumentModel, **kw: Any):
        super().__init__(prefix, name=name, **kw)
        self.lab = lab
        self.model = model
        self._timers: list[threading.Timer] = []

    def _lab_seconds(self) -> float:
        raise NotImplementedError

    def _acquire(self) -> None:
        """Fill the readback signals (runs on the timer thread)."""
        raise NotImplementedError

    def _prepare(self) -> None:
        """Checks that must fail at once, before any time passes: by default, that the sample a
        measuring device is set to is one this lab made (an unknown id raises here, nothing moves)."""
        sample_id = getattr(self, "sample_id", None)
        if sample_id is not None:
            self.lab.sample(sample_id.get())

    def trigger(self) -> DeviceStatus:
        self._prepare()
        lab_s = self._lab_seconds()
        fault = self.model.begin(lab_s)
        status = DeviceStatus(self)

        def finish() -> None:
            try:
                if fault:
                    raise InstrumentFault(fault)
                self._acquire()
            except Exception as exc:
                status.set_exception(exc)
                return
            status.set_finished()

        timer = threading.Timer(self.model.wall_seconds(lab_s), finish)
        timer.daemon = True
        self._timers = [t for t in self._timers if t.is_alive()] + [timer]
        timer.start()
        return status

    def stop(self, *, success: bool = False) -> None:
        for t in self._timers:
            t.cancel()
        super().stop(success=success)


class EpicsAcquisition(Device):
    """Base of the EPICS devices: ``trigger`` puts 1 to ``Acquire`` and completes on put-callback."""

    acquire = Cpt(EpicsSignal, "Acquire", kind="omitted", put_complete=True)

    def trigger(self) -> Status:
        return self.acquire.set(1)
