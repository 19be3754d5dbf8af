"""The MOF lab's simulated devices: the drivers' devices on soft signals, backed by the simulated lab.

A simulated device is an ordinary ophyd ``Device`` of soft ``Signal`` components with the same
component names as the EPICS class in ``ppu.drivers.mof``; its ``trigger()`` asks its instrument
model (:mod:`ppu.simulators.mof.instruments`) how long the acquisition takes, returns a
``DeviceStatus`` at once and completes it from a timer thread after the scaled duration, with the
readback signals filled in (or with the injected fault as the status error). Each factory
(``xrd_diffractometer``, ...) has the one ``simulated`` switch that picks the twin or the EPICS build.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, DeviceStatus

from ppu.backends.devices import Readback, SimSignal
from ppu.drivers.mof.capabilities import Candidate
from ppu.drivers.mof.sorption import EpicsGasSorption
from ppu.drivers.mof.synthesis import EpicsSynthesisRobot
from ppu.drivers.mof.transfer import EpicsSampleTransfer
from ppu.drivers.mof.uvvis import EpicsUVVis, wavelength_grid
from ppu.drivers.mof.xrd import EpicsXRD, two_theta_grid
from ppu.simulators.mof.instruments import (
    InstrumentFault,
    InstrumentModel,
    IsothermModel,
    SynthesisModel,
    UVVisModel,
    XRDModel,
)
from ppu.simulators.mof.lab import SimulatedLab


class SimulatedAcquisition(Device):
    """Base of the simulated devices: ``trigger`` runs ``_acquire`` after the model's scaled duration."""

    epics_class: type[Device] | None = None  # the EPICS build whose PV names the IOC twin serves

    def __init__(self, prefix: str = "", *, name: str, lab: SimulatedLab, model: InstrumentModel, **kw: Any):
        super().__init__(prefix, name=name, **kw)
        self.lab = lab
        self.model = model
        self._timers: list[threading.Timer] = []
        self._pending: set[DeviceStatus] = set()

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
        status = DeviceStatus(self)
        try:
            self._prepare()
            lab_s = self._lab_seconds()
        except Exception as exc:  # not configured (unknown sample, bad recipe): a failed Status
            status.set_exception(exc)
            return status
        fault = self.model.begin(lab_s)

        def finish() -> None:
            try:
                if fault:
                    raise InstrumentFault(fault)
                self._acquire()
            except Exception as exc:
                status.set_exception(exc)
                return
            status.set_finished()

        self._pending = {st for st in self._pending if not st.done} | {status}
        timer = threading.Timer(self.model.wall_seconds(lab_s), finish)
        timer.daemon = True
        self._timers = [t for t in self._timers if t.is_alive()] + [timer]
        timer.start()
        return status

    def stop(self, *, success: bool = False) -> None:
        for t in self._timers:
            t.cancel()
        pending, self._pending = list(self._pending), set()
        for st in pending:  # a cancelled timer never completes its Status: fail it here
            if not st.done:
                st.set_exception(RuntimeError(f"{self.name}: stopped during the acquisition"))
        super().stop(success=success)


class SynthesisRobot(SimulatedAcquisition):
    """The simulated twin: soft signals; the shared :class:`SimulatedLab` realises the sample."""

    recipe = Cpt(SimSignal, value="{}", kind="config")
    target_mass_mg = Cpt(SimSignal, value=50.0, kind="config", units="mg")
    sample_label = Cpt(SimSignal, value="", kind="config")
    sample_id = Cpt(Readback, value="", kind="hinted")
    success = Cpt(Readback, value=0, kind="normal")
    mass_mg = Cpt(Readback, value=0.0, kind="hinted", units="mg")
    slot = Cpt(Readback, value="", kind="normal")

    def __init__(self, prefix: str = "", *, name: str, lab: SimulatedLab, model: SynthesisModel | None = None,
                 **kw: Any):
        super().__init__(prefix, name=name, lab=lab, model=model or SynthesisModel(), **kw)
        self._made = 0

    def _candidate(self) -> Candidate:
        return Candidate.model_validate_json(self.recipe.get())

    def _prepare(self) -> None:
        self._candidate()  # a malformed recipe fails before anything is weighed
        self.lab.rack()

    def _lab_seconds(self) -> float:
        return self.model.duration_s(self._candidate().anneal_time_h)  # type: ignore[attr-defined]

    def _acquire(self) -> None:
        recipe = self._candidate()
        self._made += 1
        label = self.sample_label.get() or f"{self.name}-{self._made:05d}"
        truth = self.lab.world.properties(recipe)
        success = bool(self.model.rng.random() < truth.success_probability)
        mass = self.model.mass_mg(float(self.target_mass_mg.get()), success)  # type: ignore[attr-defined]
        rec = self.lab.realise(label, recipe, success=success, mass_mg=mass)
        self.sample_id.publish(rec.sample_id)
        self.success.publish(int(success))
        self.mass_mg.publish(rec.mass_mg)
        self.slot.publish(rec.slot or "")


def synthesis_robot(name: str, *, simulated: bool, prefix: str = "", lab: SimulatedLab | None = None,
                    model: SynthesisModel | None = None) -> Device:
    """One switch picks the twin; the plans never know which they got."""
    if simulated:
        if lab is None:
            raise ValueError("a simulated synthesis robot needs a SimulatedLab")
        return SynthesisRobot(name=name, lab=lab, model=model)
    return EpicsSynthesisRobot(prefix, name=name)



class TransferModel(InstrumentModel):
    name = "transfer"

    def duration_s(self) -> float:
        return 30.0


class SampleTransfer(SimulatedAcquisition):
    sample_id = Cpt(SimSignal, value="", kind="config")
    destination = Cpt(SimSignal, value="rack", kind="config")
    location = Cpt(Readback, value="", kind="hinted")

    def __init__(self, prefix: str = "", *, name: str, lab: SimulatedLab, model: TransferModel | None = None,
                 **kw: Any):
        super().__init__(prefix, name=name, lab=lab, model=model or TransferModel(), **kw)

    def _prepare(self) -> None:
        self.lab.sample(self.sample_id.get())

    def _lab_seconds(self) -> float:
        return self.model.duration_s()  # type: ignore[attr-defined]

    def _acquire(self) -> None:
        rec = self.lab.move(self.sample_id.get(), self.destination.get())
        self.location.publish(f"{rec.device}:{rec.slot}" if rec.device == "rack" else rec.device)


def sample_transfer(name: str, *, simulated: bool, prefix: str = "", lab: SimulatedLab | None = None,
                    model: TransferModel | None = None) -> Device:
    if simulated:
        if lab is None:
            raise ValueError("a simulated sample transfer needs a SimulatedLab")
        return SampleTransfer(name=name, lab=lab, model=model)
    return EpicsSampleTransfer(prefix, name=name)



class GasSorptionAnalyzer(SimulatedAcquisition):
    sample_id = Cpt(SimSignal, value="", kind="config")
    temperature_k = Cpt(SimSignal, value=298.0, kind="config", units="K")
    pressure = Cpt(SimSignal, value=0.1, kind="hinted", units="bar")  # setpoint, bar
    uptake = Cpt(Readback, value=0.0, kind="hinted", units="mmol/g")  # mmol/g at equilibrium

    def __init__(self, prefix: str = "", *, name: str, lab: SimulatedLab, model: IsothermModel | None = None,
                 **kw: Any):
        super().__init__(prefix, name=name, lab=lab, model=model or IsothermModel(), **kw)

    def _lab_seconds(self) -> float:
        return self.model.seconds_per_point  # type: ignore[attr-defined]

    def _acquire(self) -> None:
        rec = self.lab.sample(self.sample_id.get())
        # uptake falls with temperature (isosteric heat ~ 40 kJ/mol): a crude van 't Hoff factor
        b = rec.langmuir_b_per_bar * float(np.exp(4800.0 * (1 / self.temperature_k.get() - 1 / 298.0)))
        q = self.model.uptake(rec.co2_uptake_mmol_g, b, np.array([float(self.pressure.get())]))  # type: ignore[attr-defined]
        self.uptake.publish(float(q[0]))


def gas_sorption_analyzer(name: str, *, simulated: bool, prefix: str = "", lab: SimulatedLab | None = None,
                          model: IsothermModel | None = None) -> Device:
    if simulated:
        if lab is None:
            raise ValueError("a simulated sorption analyser needs a SimulatedLab")
        return GasSorptionAnalyzer(name=name, lab=lab, model=model)
    return EpicsGasSorption(prefix, name=name)



class UVVisSpectrometer(SimulatedAcquisition):
    sample_id = Cpt(SimSignal, value="", kind="config")
    wavelength_start = Cpt(SimSignal, value=250.0, kind="config", units="nm")
    wavelength_stop = Cpt(SimSignal, value=900.0, kind="config", units="nm")
    wavelength_step = Cpt(SimSignal, value=1.0, kind="config", units="nm")
    wavelength = Cpt(Readback, value=np.zeros(2), kind="normal", units="nm")
    absorbance = Cpt(Readback, value=np.zeros(2), kind="hinted", units="AU")

    def __init__(self, prefix: str = "", *, name: str, lab: SimulatedLab, model: UVVisModel | None = None,
                 **kw: Any):
        super().__init__(prefix, name=name, lab=lab, model=model or UVVisModel(), **kw)

    def _grid(self) -> np.ndarray:
        return wavelength_grid(self.wavelength_start.get(), self.wavelength_stop.get(), self.wavelength_step.get())

    def _lab_seconds(self) -> float:
        return self.model.duration_s(len(self._grid()))  # type: ignore[attr-defined]

    def _acquire(self) -> None:
        grid = self._grid()
        rec = self.lab.sample(self.sample_id.get())
        self.wavelength.publish(grid)
        self.absorbance.publish(self.model.spectrum(rec.band_gap_ev, grid))  # type: ignore[attr-defined]


def uvvis_spectrometer(name: str, *, simulated: bool, prefix: str = "", lab: SimulatedLab | None = None,
                       model: UVVisModel | None = None) -> Device:
    if simulated:
        if lab is None:
            raise ValueError("a simulated spectrometer needs a SimulatedLab")
        return UVVisSpectrometer(name=name, lab=lab, model=model)
    return EpicsUVVis(prefix, name=name)



class XRDDiffractometer(SimulatedAcquisition):
    sample_id = Cpt(SimSignal, value="", kind="config")
    two_theta_start = Cpt(SimSignal, value=10.0, kind="config", units="deg")
    two_theta_stop = Cpt(SimSignal, value=80.0, kind="config", units="deg")
    two_theta_step = Cpt(SimSignal, value=0.05, kind="config", units="deg")
    two_theta = Cpt(Readback, value=np.zeros(2), kind="normal", units="deg")
    intensity = Cpt(Readback, value=np.zeros(2), kind="hinted", units="counts")

    def __init__(self, prefix: str = "", *, name: str, lab: SimulatedLab, model: XRDModel | None = None, **kw: Any):
        super().__init__(prefix, name=name, lab=lab, model=model or XRDModel(), **kw)

    def _grid(self) -> np.ndarray:
        return two_theta_grid(self.two_theta_start.get(), self.two_theta_stop.get(), self.two_theta_step.get())

    def _lab_seconds(self) -> float:
        return self.model.duration_s(len(self._grid()))  # type: ignore[attr-defined]

    def _acquire(self) -> None:
        grid = self._grid()
        rec = self.lab.sample(self.sample_id.get())
        self.two_theta.publish(grid)
        self.intensity.publish(self.model.pattern(rec.phases, grid))  # type: ignore[attr-defined]


def xrd_diffractometer(name: str, *, simulated: bool, prefix: str = "", lab: SimulatedLab | None = None,
                       model: XRDModel | None = None) -> Device:
    if simulated:
        if lab is None:
            raise ValueError("a simulated diffractometer needs a SimulatedLab")
        return XRDDiffractometer(name=name, lab=lab, model=model)
    return EpicsXRD(prefix, name=name)


# the EPICS build each simulated build is served as by `ppu ioc` (same component names, its PV suffixes)
SynthesisRobot.epics_class = EpicsSynthesisRobot
XRDDiffractometer.epics_class = EpicsXRD
UVVisSpectrometer.epics_class = EpicsUVVis
GasSorptionAnalyzer.epics_class = EpicsGasSorption
SampleTransfer.epics_class = EpicsSampleTransfer
