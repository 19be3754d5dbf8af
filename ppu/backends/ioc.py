"""Serve simulated Ophyd devices as EPICS IOCs over Channel Access (caproto), under the PV names of
their EPICS builds, so the real-mode code path (EPICS signals, put-completion, status PVs, alarms)
runs in CI exactly as it would against an instrument's IOC.

For one device, every component of its EPICS class becomes a PV under the device's prefix:

- a setpoint (``EpicsSignal``) is writable and writes through to the simulated signal of the same
  attribute name; a signal with a separate ``write_pv`` gets a writable setpoint PV and a read-only
  read-back PV;
- a read-back (``EpicsSignalRO``) is read-only to clients; the IOC updates it after an acquisition;
- ``Acquire`` (put 1) triggers the simulated acquisition; the put completes when the acquisition
  ends (areaDetector's busy-record convention). An acquisition the instrument refuses (unknown
  sample, injected fault) FAILS the put, leaves ``Status_RBV`` at ``Error`` with MAJOR alarm and
  ``StatusMessage_RBV`` saying why, and leaves ``Counter_RBV`` unchanged, as a real IOC would;
- ``Status_RBV`` (Idle / Acquiring / Done / Error), ``StatusMessage_RBV`` and ``Counter_RBV`` (count
  of completed acquisitions) are what :class:`~ppu.backends.devices.EpicsAcquisition` checks so that a
  rejected put or a stale read-back is a failure, never the previous acquisition's data.

The devices keep their world, time scale, drift and faults: they are the same simulated objects the
simulated lab uses, only reached over the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from caproto import (
    AccessRights,
    AlarmSeverity,
    AlarmStatus,
    ChannelChar,
    ChannelData,
    ChannelDouble,
    ChannelEnum,
    ChannelInteger,
    ChannelType,
)
from ophyd import Component, Device, EpicsSignalRO
from ophyd.signal import EpicsSignalBase

log = logging.getLogger(__name__)

ACQUIRE = "Acquire"
STATUS = "Status_RBV"
MESSAGE = "StatusMessage_RBV"
COUNTER = "Counter_RBV"
STATES = ["Idle", "Acquiring", "Done", "Error"]
_SERVED_HERE = {ACQUIRE, STATUS, MESSAGE, COUNTER}  # the acquisition protocol's own PVs
STRING_MAX = 4096  # strings travel as CHAR waveforms (set-point strings are often longer than DBR_STRING's 40 bytes)
ARRAY_MIN = 16384  # waveform length for array read-backs


class _ReadOnly:
    """Clients may read, never write (a read-back)."""

    def check_access(self, hostname: str, username: str) -> AccessRights:
        return AccessRights.READ


class _ReadbackDouble(_ReadOnly, ChannelDouble):
    pass


class _ReadbackInteger(_ReadOnly, ChannelInteger):
    pass


class _ReadbackChar(_ReadOnly, ChannelChar):
    pass


class _ReadbackEnum(_ReadOnly, ChannelEnum):
    pass


class _Setpoint:
    """A writable PV that writes through to the simulated signal (and refuses what it refuses)."""

    twin: Any = None
    mirror: ChannelData | None = None  # the read-back PV of a setpoint with its own write PV

    async def verify_value(self, data: Any) -> Any:
        value = _from_wire(data, self.twin.get())
        self.twin.put(value)  # the simulated signal's own checks raise here: the put fails
        if self.mirror is not None:  # the controller reached the setpoint: its read-back follows
            await self.mirror.write(_to_wire(self.twin.get()), verify_value=False)
        return data


class _SetpointDouble(_Setpoint, ChannelDouble):
    pass


class _SetpointInteger(_Setpoint, ChannelInteger):
    pass


class _SetpointChar(_Setpoint, ChannelChar):
    pass


def _from_wire(data: Any, like: Any) -> Any:
    if isinstance(like, str):
        if isinstance(data, bytes | bytearray):
            return bytes(data).rstrip(b"\x00").decode("latin-1")
        return str(data)
    if isinstance(data, list | tuple | np.ndarray) and not isinstance(like, np.ndarray):
        data = data[0]
    if isinstance(like, bool | int | np.integer) and not isinstance(like, float):
        return int(data)
    return float(data)


def _to_wire(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [float(x) for x in value.ravel()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _channel(value: Any, *, writable: bool, units: str, length: int = 0) -> ChannelData:
    """A channel for a simulated signal's current value: strings as CHAR waveforms, numbers, arrays
    (``length``: the longest array the instrument may give, when more than :data:`ARRAY_MIN`)."""
    if isinstance(value, list | tuple):
        value = np.asarray(value, dtype=float)
    if isinstance(value, str):
        cls: type[ChannelData] = _SetpointChar if writable else _ReadbackChar
        return cls(value=value, max_length=STRING_MAX, string_encoding="latin-1")
    if isinstance(value, np.ndarray):
        cls = _SetpointDouble if writable else _ReadbackDouble
        return cls(value=_to_wire(value), max_length=max(ARRAY_MIN, value.size, length), units=units, precision=4)
    if isinstance(value, bool | int | np.integer) and not isinstance(value, float):
        cls = _SetpointInteger if writable else _ReadbackInteger
        return cls(value=int(value), units=units)
    if isinstance(value, float | np.floating) and not math.isfinite(float(value)):
        raise ValueError(f"non-finite initial value {value!r}")
    cls = _SetpointDouble if writable else _ReadbackDouble
    return cls(value=float(value), units=units, precision=4)


@dataclass
class _Wiring:
    """Which PV mirrors which simulated signal, for one device."""

    readbacks: dict[str, tuple[ChannelData, Any]] = field(default_factory=dict)


class _Acquire(ChannelInteger):
    """``Acquire``: put 1 runs one acquisition of the simulated device; the put completes at its end."""

    def __init__(self, *, device: Device, wiring: _Wiring, status: ChannelEnum, message: ChannelChar,
                 counter: ChannelInteger, timeout_s: float, fault: str | None = None, **kw: Any):
        super().__init__(value=0, **kw)
        self.fault = fault  # "stale": complete without new data; "hang": never complete (until stopped)
        self._stopped = asyncio.Event()
        self.device = device
        self.wiring = wiring
        self.status_pv = status
        self.message_pv = message
        self.counter_pv = counter
        self.timeout_s = timeout_s
        self._busy = asyncio.Lock()

    async def verify_value(self, data: Any) -> Any:
        if int(_from_wire(data, 0)) != 1:
            self._stopped.set()
            with contextlib.suppress(Exception):
                self.device.stop()
            return data
        if self._busy.locked():
            raise RuntimeError("an acquisition is already running")
        async with self._busy:
            self._stopped.clear()
            await self._state("Acquiring", "", AlarmSeverity.NO_ALARM)
            if self.fault == "stale":  # a misbehaving IOC: done, but the read-backs are the old ones
                await self._state("Done", "", AlarmSeverity.NO_ALARM)
                return 0
            if self.fault == "hang":  # a misbehaving IOC: the acquisition never ends until stopped
                await self._stopped.wait()
                await self._state("Idle", "stopped", AlarmSeverity.NO_ALARM)
                return 0
            try:
                status = self.device.trigger()
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, status.wait, self.timeout_s)
            except Exception as exc:  # any refusal is reported on the PVs, then fails the put
                why = f"{type(exc).__name__}: {exc}"
                await self._state("Error", why, AlarmSeverity.MAJOR_ALARM)
                raise RuntimeError(why) from None
            for pv, sig in self.wiring.readbacks.values():
                await pv.write(_to_wire(sig.get()), verify_value=False)
            await self.counter_pv.write(int(self.counter_pv.value) + 1, verify_value=False)
            await self._state("Done", "", AlarmSeverity.NO_ALARM)
        return 0  # a busy record reads 0 once done

    async def _state(self, state: str, message: str, severity: AlarmSeverity) -> None:
        alarm_status = AlarmStatus.STATE if severity else AlarmStatus.NO_ALARM
        await self.message_pv.write(message[:STRING_MAX - 1], verify_value=False)
        await self.status_pv.write(state, verify_value=False, status=alarm_status, severity=severity)


def twin_pvdb(device: Device, epics_cls: type[Device], prefix: str, *, timeout_s: float = 3600.0,
              units: dict[str, str] | None = None, fault: str | None = None) -> dict[str, ChannelData]:
    """The PV database that serves ``device`` (a simulated build) as its EPICS build ``epics_cls``."""
    units = units or {}
    wiring = _Wiring()
    db: dict[str, ChannelData] = {}
    for attr in epics_cls.component_names:
        cpt: Component[Any] = getattr(epics_cls, attr)
        if cpt.suffix in _SERVED_HERE or not issubclass(cpt.cls, EpicsSignalBase):
            continue
        twin = getattr(device, attr, None)
        if twin is None:
            raise ValueError(f"{type(device).__name__} has no signal {attr!r} that {epics_cls.__name__} serves")
        read_only = issubclass(cpt.cls, EpicsSignalRO)
        write_pv = cpt.kwargs.get("write_pv")
        value = twin.get()
        unit = units.get(attr, getattr(twin, "units", "") or getattr(epics_cls, "UNITS", {}).get(attr, ""))
        length = int(getattr(epics_cls, "ARRAY_LENGTHS", {}).get(attr, 0))
        read = _channel(value, writable=not read_only and not write_pv, units=unit, length=length)
        if isinstance(read, _Setpoint):
            read.twin = twin
        else:
            wiring.readbacks[attr] = (read, twin)
        db[prefix + cpt.suffix] = read
        if write_pv:
            setpoint = _channel(value, writable=True, units=unit, length=length)
            setpoint.twin = twin  # type: ignore[attr-defined]
            setpoint.mirror = read  # type: ignore[attr-defined]
            db[prefix + write_pv] = setpoint
    status = _ReadbackEnum(value="Idle", enum_strings=STATES)
    message = _ReadbackChar(value="", max_length=STRING_MAX, string_encoding="latin-1")
    counter = _ReadbackInteger(value=0)
    db[prefix + STATUS] = status
    db[prefix + MESSAGE] = message
    db[prefix + COUNTER] = counter
    db[prefix + ACQUIRE] = _Acquire(device=device, wiring=wiring, status=status, message=message,
                                    counter=counter, timeout_s=timeout_s, fault=fault)
    return db


def lab_pvdb(backends: Iterable[Any]) -> dict[str, ChannelData]:
    """One PV database for the simulated builds of a lab's backends (each with ``twin_pvdbs()``); a
    prefix two backends share (one sample transfer serving several instruments) is served once."""
    served: dict[str, dict[str, ChannelData]] = {}
    for backend in backends:
        for prefix, db in backend.twin_pvdbs().items():
            served.setdefault(prefix, db)
    return merge_pvdbs(served.values())


def merge_pvdbs(dbs: Iterable[dict[str, ChannelData]]) -> dict[str, ChannelData]:
    out: dict[str, ChannelData] = {}
    for db in dbs:
        clash = set(out) & set(db)
        if clash:
            raise ValueError(f"two devices serve the same PV(s): {', '.join(sorted(clash)[:5])}; "
                             "give each instrument its own epics_prefix")
        out.update(db)
    return out


async def serve(pvdb: dict[str, ChannelData], interfaces: list[str] | None = None) -> None:
    """Serve ``pvdb`` until cancelled, on ``interfaces`` (default: ``EPICS_CAS_INTF_ADDR_LIST``, else all)
    and the port ``EPICS_CA_SERVER_PORT`` names (default 5064)."""
    from caproto.asyncio.server import Context

    # caproto logs a refused put with its traceback; the IOC's own status PVs already say why
    logging.getLogger("caproto.ctx").setLevel(logging.CRITICAL)
    await Context(pvdb, interfaces).run(log_pv_names=False)


__all__ = ["ACQUIRE", "COUNTER", "MESSAGE", "STATES", "STATUS", "ChannelType", "lab_pvdb", "merge_pvdbs", "serve",
           "twin_pvdb"]
