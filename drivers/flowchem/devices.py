"""Ophyd devices of the flow lab: one class per instrument, two builds (STYLE.md §13).

Each class declares its signals once, on EPICS PVs: setpoints are ``EpicsSignal`` (kind
``config``), read-backs ``EpicsSignalRO``. The *EPICS build* is the class itself under a PV prefix;
``trigger()`` puts 1 to ``<prefix>Acquire`` and completes on the put-callback (the areaDetector
convention), checked against ``Status_RBV``, its alarm and ``Counter_RBV`` and with a timeout (the
core's :class:`~ppu.backends.devices.EpicsAcquisition`), so a refused or stale acquisition fails.
Plans stage the device; unstaging it while an acquisition is still running (the run was aborted)
stops the acquisition. The *simulated build* is the same class through
:func:`ophyd.sim.make_fake_device`: every PV becomes a soft signal with the same name and kind,
read-backs stay read-only (a ``put`` raises ``ReadOnlyError``), and ``trigger()`` is handed to a
*simulator hook*, an object the caller passes in (``ppu.simulators.flowchem`` provides them), which
fills the read-backs with ``sim_put`` when the acquisition is over. Drivers never import
simulators: the hook is duck-typed (:class:`SimulatorHook`). ``ppu ioc`` serves a simulated build as
an IOC under its EPICS build's PV names (``epics_class``).

Units travel in ``describe()`` in both builds: from the PV's EGU field when the IOC gives one,
otherwise from the class's ``UNITS`` table.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO
from ophyd.sim import make_fake_device
from ophyd.status import StatusBase

from ppu.backends.devices import EpicsAcquisition


class SimulatorHook(Protocol):
    """What a simulated build delegates to: start an acquisition, stop all of them."""

    def trigger(self, device: Device) -> StatusBase: ...

    def stop(self) -> None: ...


class FlowDevice(EpicsAcquisition):
    """Shared behaviour: the EPICS build triggers as :class:`~ppu.backends.devices.EpicsAcquisition`
    (put-completion on ``Acquire``, checked against ``Status_RBV``, its alarm and ``Counter_RBV``, with a
    timeout, so a refused or stale acquisition fails); the simulated build through the simulator hook.
    Units in describe()."""

    UNITS: ClassVar[dict[str, str]] = {}
    ARRAY_LENGTHS: ClassVar[dict[str, int]] = {}  # the longest array read-backs (the IOC sizes its waveforms)
    default_acquire_timeout_s: ClassVar[float] = 3600.0

    def __init__(self, prefix: str = "", *, name: str, simulator: SimulatorHook | None = None, **kw: Any):
        kw.setdefault("acquire_timeout_s", self.default_acquire_timeout_s)
        super().__init__(prefix, name=name, **kw)
        self.simulator = simulator
        self._in_flight: StatusBase | None = None

    @property
    def simulated(self) -> bool:
        return self.simulator is not None

    def trigger(self) -> StatusBase:
        status = self.simulator.trigger(self) if self.simulator is not None else super().trigger()
        self._in_flight = status
        return status

    def unstage(self) -> list[object]:
        # The RunEngine unstages what a plan staged when the run ends, also on abort or a pause
        # that cannot rewind: an acquisition still running then is stopped, so nothing lands later.
        if self._in_flight is not None and not self._in_flight.done:
            self.stop()
        return super().unstage()  # type: ignore[no-any-return]

    def stop(self, *, success: bool = False) -> None:
        if self.simulator is not None:
            self.simulator.stop()
            Device.stop(self, success=success)
        else:
            super().stop(success=success)  # fails pending acquisitions, puts Acquire=0

    def _units(self, desc: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        prefix = f"{self.name}_"
        for key, entry in desc.items():
            unit = self.UNITS.get(key[len(prefix):] if key.startswith(prefix) else key)
            if unit is not None and not entry.get("units"):
                entry["units"] = unit
        return desc

    def describe(self) -> dict[str, dict[str, Any]]:
        return self._units(dict(super().describe()))

    def describe_configuration(self) -> dict[str, dict[str, Any]]:
        return self._units(dict(super().describe_configuration()))


class FlowReactor(FlowDevice):
    """A heated coil reactor fed by two pumps, with a fraction collector at its outlet.

    Set the recipe, trigger: the reactor reaches temperature, runs three residence volumes to
    steady state, then collects ``collect_volume_ml`` into a new vial. Read: the vial's
    ``sample_id``, ``volume_ml`` and ``vial_slot`` in the collector, the coil temperature and
    back-pressure during collection.
    """

    ligand = Cpt(EpicsSignal, "Ligand", string=True, kind="config")
    temperature_c = Cpt(EpicsSignal, "Temperature", kind="config")
    residence_time_min = Cpt(EpicsSignal, "ResidenceTime", kind="config")
    equivalents_b = Cpt(EpicsSignal, "EquivalentsB", kind="config")
    concentration_m = Cpt(EpicsSignal, "Concentration", kind="config")
    collect_volume_ml = Cpt(EpicsSignal, "CollectVolume", kind="config")
    sample_label = Cpt(EpicsSignal, "SampleLabel", string=True, kind="config")
    sample_id = Cpt(EpicsSignalRO, "SampleId_RBV", string=True, kind="hinted")
    volume_ml = Cpt(EpicsSignalRO, "Volume_RBV", kind="normal")
    vial_slot = Cpt(EpicsSignalRO, "VialSlot_RBV", string=True, kind="normal")
    coil_temperature_c = Cpt(EpicsSignalRO, "Temperature_RBV", kind="hinted")
    pressure_bar = Cpt(EpicsSignalRO, "Pressure_RBV", kind="normal")

    UNITS: ClassVar[dict[str, str]] = {
        "temperature_c": "degC", "residence_time_min": "min", "equivalents_b": "eq", "concentration_m": "mol/L",
        "collect_volume_ml": "mL", "volume_ml": "mL", "coil_temperature_c": "degC", "pressure_bar": "bar"}
    default_acquire_timeout_s: ClassVar[float] = 6 * 3600.0


class HPLC(FlowDevice):
    """An online HPLC with a UV detector: injects an aliquot of ``sample_id``, records one trace."""

    sample_id = Cpt(EpicsSignal, "SampleId", string=True, kind="config")
    run_time_min = Cpt(EpicsSignal, "RunTime", kind="config")
    sample_rate_hz = Cpt(EpicsSignal, "SampleRate", kind="config")
    injection_ul = Cpt(EpicsSignal, "Injection", kind="config")
    time_min = Cpt(EpicsSignalRO, "Time_RBV", kind="normal")
    absorbance = Cpt(EpicsSignalRO, "Absorbance_RBV", kind="hinted")

    UNITS: ClassVar[dict[str, str]] = {"run_time_min": "min", "sample_rate_hz": "Hz", "injection_ul": "uL",
                                       "time_min": "min", "absorbance": "mAU"}
    ARRAY_LENGTHS: ClassVar[dict[str, int]] = {"time_min": 360_000, "absorbance": 360_000}  # 60 min at 100 Hz
    default_acquire_timeout_s: ClassVar[float] = 3600.0


REACTOR_DEFAULTS: dict[str, Any] = {"ligand": "PPh3", "temperature_c": 25.0, "residence_time_min": 10.0,
                                    "equivalents_b": 1.5, "concentration_m": 0.5, "collect_volume_ml": 2.0,
                                    "sample_label": "", "sample_id": "", "volume_ml": 0.0, "vial_slot": "",
                                    "coil_temperature_c": 25.0, "pressure_bar": 1.0}
HPLC_DEFAULTS: dict[str, Any] = {"sample_id": "", "run_time_min": 10.0, "sample_rate_hz": 10.0,
                                 "injection_ul": 5.0, "time_min": [0.0, 0.0], "absorbance": [0.0, 0.0]}


def _build(cls: type[FlowDevice], defaults: dict[str, Any], name: str, prefix: str,
           simulator: SimulatorHook | None) -> FlowDevice:
    if simulator is None:
        if not prefix:
            raise ValueError(f"an EPICS {cls.__name__} needs a PV prefix (or pass a simulator for the twin)")
        return cls(prefix, name=name)
    dev = make_fake_device(cls)(prefix or f"SIM:{name}:", name=name, simulator=simulator)
    for attr, value in defaults.items():
        getattr(dev, attr).sim_put(value)
    dev.epics_class = cls  # `ppu ioc` serves this twin under the PV names of its EPICS build
    return dev


def flow_reactor(name: str, *, prefix: str = "", simulator: SimulatorHook | None = None) -> FlowReactor:
    """The EPICS build under ``prefix``, or the simulated build driven by ``simulator``."""
    return _build(FlowReactor, REACTOR_DEFAULTS, name, prefix, simulator)  # type: ignore[return-value]


def hplc(name: str, *, prefix: str = "", simulator: SimulatorHook | None = None) -> HPLC:
    """The EPICS build under ``prefix``, or the simulated build driven by ``simulator``."""
    return _build(HPLC, HPLC_DEFAULTS, name, prefix, simulator)  # type: ignore[return-value]
