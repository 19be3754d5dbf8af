"""Generic Ophyd bases for a pack's instruments (no domain): the safe EPICS acquisition and the signals of
simulated builds.

- :class:`EpicsAcquisition`: an EPICS device triggers by a put-completion on its ``Acquire`` PV (the
  areaDetector convention) and checks what the IOC reports (``Status_RBV``, its alarm, ``Counter_RBV``)
  before it calls an acquisition done; every acquisition has a timeout, ``stop()`` fails pending ones.
- :class:`SimSignal` / :class:`Readback`: a simulated build's set-points and read-backs, with units in
  ``describe()`` and read-backs read-only to plans, exactly like the EPICS build's PVs.

``ppu ioc`` (:mod:`ppu.backends.ioc`) serves a simulated build under its EPICS build's PV names.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, DeviceStatus, EpicsSignal, EpicsSignalRO, Signal
from ophyd.utils.errors import InvalidState, ReadOnlyError


class SimSignal(Signal):
    """A simulated setpoint or configuration signal that carries its units into ``describe()``, as an
    EPICS PV does with its EGU field, so documents read the same in both builds."""

    def __init__(self, *args: Any, units: str = "", **kw: Any):
        super().__init__(*args, **kw)
        self.units = units

    def describe(self) -> dict[str, Any]:
        desc: dict[str, Any] = super().describe()
        if self.units:
            desc[self.name]["units"] = self.units
        value = np.asarray(self._readback)
        if value.dtype.kind in "biuf":  # numbers: say their numpy type, as an EPICS build does (Tiled needs it)
            desc[self.name]["dtype_numpy"] = value.dtype.str
        return desc


class Readback(SimSignal):
    """A simulated read-back: read-only to plans, exactly like the ``_RBV`` PV of the EPICS build (so a plan
    that tries to move one fails in simulation too); only the instrument model ``publish``-es a value."""

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self._metadata.update(write_access=False)

    def put(self, value: Any, **kw: Any) -> None:
        raise ReadOnlyError(f"{self.name} is a read-back (read-only)")

    def set(self, value: Any, **kw: Any) -> Any:
        raise ReadOnlyError(f"{self.name} is a read-back (read-only)")

    def publish(self, value: Any) -> None:
        Signal.put(self, value, force=True)  # the instrument writes its own read-back


class AcquisitionFailed(RuntimeError):
    """An EPICS acquisition that did not give fresh data: refused, timed out, alarmed or stale."""


class EpicsAcquisition(Device):
    """Base of the EPICS devices: ``trigger`` puts 1 to ``Acquire`` and completes on put-callback, but
    only after checking what a real IOC reports, so that a refused or stale acquisition is a failure
    and never the previous acquisition's read-backs:

    - ``Status_RBV`` goes to ``Error`` (or its alarm is MAJOR/INVALID): fail at once with
      ``StatusMessage_RBV`` as the reason (a refused put may never call the put-callback back);
    - the put completes but ``Counter_RBV`` did not advance: the read-backs are stale, fail;
    - nothing within ``acquire_timeout_s``: fail with a timeout;
    - ``stop()`` fails every pending acquisition; a device that cannot be reached returns a failed
      Status instead of raising.
    """

    acquire = Cpt(EpicsSignal, "Acquire", kind="omitted", put_complete=True)
    acquire_status = Cpt(EpicsSignalRO, "Status_RBV", string=True, kind="omitted", auto_monitor=True)
    status_message = Cpt(EpicsSignalRO, "StatusMessage_RBV", string=True, kind="omitted")
    acquire_counter = Cpt(EpicsSignalRO, "Counter_RBV", kind="omitted")

    def __init__(self, prefix: str = "", *, name: str, acquire_timeout_s: float = 3600.0, **kw: Any):
        super().__init__(prefix, name=name, **kw)
        self.acquire_timeout_s = acquire_timeout_s
        self._pending: set[DeviceStatus] = set()
        self._watch: DeviceStatus | None = None  # the acquisition whose Status_RBV changes we follow
        self._seen_busy = False
        self._status_sub: int | None = None

    def trigger(self) -> DeviceStatus:
        status = DeviceStatus(self, timeout=self.acquire_timeout_s)
        try:
            before = int(self.acquire_counter.get())
            if self._status_sub is None:
                self._status_sub = self.acquire_status.subscribe(self._on_status, run=False)
        except Exception as exc:  # not connected / not configured: a failed Status, not an exception
            status.set_exception(AcquisitionFailed(f"{self.name}: cannot start an acquisition: {exc}"))
            return status
        self._pending.add(status)
        self._watch, self._seen_busy = status, False
        status.add_callback(lambda st: self._pending.discard(st))

        def put_done(*_: Any, **__: Any) -> None:
            # check on a thread of our own: a CA get inside a CA callback can dead-lock
            threading.Thread(target=self._check, args=(status, before), daemon=True).start()

        try:
            self.acquire.put(1, use_complete=True, callback=put_done)
        except Exception as exc:
            self._fail(status, f"{self.name}: the IOC refused Acquire: {self._why(exc)}")
        return status

    def _why(self, exc: Exception) -> str:
        """The IOC's own reason (StatusMessage_RBV) for a refused put, else the client's error."""
        try:
            message = str(self.status_message.get(use_monitor=False) or "")
        except Exception:  # unreachable: the client's error is all there is
            message = ""
        return f"{message} ({exc})" if message else str(exc)

    def _on_status(self, value: Any = None, **_: Any) -> None:
        status = self._watch
        if status is None or status.done:
            return
        if value == "Acquiring":
            self._seen_busy = True
        elif value == "Error" and self._seen_busy:
            threading.Thread(target=self._check, args=(status, None), daemon=True).start()

    def _check(self, status: DeviceStatus, before: int | None) -> None:
        if status.done:
            return
        try:
            state = self.acquire_status.get(use_monitor=False)
            severity = int(getattr(self.acquire_status, "alarm_severity", 0) or 0)
            if state == "Error" or severity >= 2:  # MAJOR or INVALID
                why = self.status_message.get() or f"status {state}, alarm severity {severity}"
                return self._fail(status, f"{self.name}: acquisition refused or failed: {why}")
            if before is not None and int(self.acquire_counter.get()) <= before:
                return self._fail(status, f"{self.name}: Acquire completed but Counter_RBV did not advance: "
                                          "the read-backs are stale (not this acquisition's data)")
        except Exception as exc:
            return self._fail(status, f"{self.name}: could not read the acquisition status: {exc}")
        if before is not None:
            with contextlib.suppress(InvalidState):  # the other check (Error seen) failed it first
                status.set_finished()

    @staticmethod
    def _fail(status: DeviceStatus, why: str) -> None:
        # Two checks may race on their own threads (Acquire's put completing, the status PV going to
        # Error); ophyd marks a status done only after its callbacks, so "not done" is no guard: the
        # first outcome wins and the second is dropped.
        if not status.done:
            with contextlib.suppress(InvalidState):
                status.set_exception(AcquisitionFailed(why))

    def stop(self, *, success: bool = False) -> None:
        pending, self._pending = list(self._pending), set()
        for st in pending:
            self._fail(st, f"{self.name}: stopped during the acquisition")
        if pending:
            try:
                self.acquire.put(0, use_complete=False)
            except Exception:  # an unreachable IOC: the statuses are failed already
                pass
        super().stop(success=success)
