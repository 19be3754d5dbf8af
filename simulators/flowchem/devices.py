"""Simulator hooks: what the simulated builds of the flow devices do when triggered.

``flow_reactor(..., simulator=ReactorSimulator(lab, model))`` (from ``ppu.drivers.flowchem``) is
the same device class as the EPICS build; its ``trigger()`` lands here. A hook checks what must
fail at once (a malformed recipe, an unknown vial), asks its instrument model how long the
acquisition takes in lab seconds, returns a ``DeviceStatus`` and completes it from a timer thread
after the scaled duration, with the read-backs filled by ``sim_put`` (they are read-only to
everyone else) or with the injected fault as the status error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ophyd import Device, DeviceStatus

from ppu.drivers.flowchem.devices import HPLC, FlowReactor, flow_reactor, hplc
from ppu.drivers.flowchem.models import FlowRecipe
from ppu.simulators.flowchem.instruments import (
    FlowReactorModel,
    HPLCModel,
    InstrumentFault,
    InstrumentModel,
    seeded_rng,
)
from ppu.simulators.flowchem.lab import FlowLab


class _Hook:
    def __init__(self, lab: FlowLab, model: InstrumentModel):
        self.lab = lab
        self.model = model
        self._timers: list[tuple[threading.Timer, DeviceStatus]] = []

    def _later(self, device: Device, lab_s: float, fault: str | None, finish: Callable[[], None]) -> DeviceStatus:
        status = DeviceStatus(device)

        def done() -> None:
            try:
                if fault:
                    raise InstrumentFault(fault)
                finish()
            except Exception as exc:
                status.set_exception(exc)
                return
            status.set_finished()

        timer = threading.Timer(self.model.wall_seconds(lab_s), done)
        timer.daemon = True
        self._timers = [(t, s) for t, s in self._timers if t.is_alive()] + [(timer, status)]
        timer.start()
        return status

    def stop(self) -> None:
        """Stop every acquisition in flight: its read-backs are never filled, its status fails."""
        for timer, status in self._timers:
            timer.cancel()
            if not status.done:
                status.set_exception(InstrumentFault(f"{self.model.name}: acquisition stopped"))
        self._timers = []


class ReactorSimulator(_Hook):
    """Runs the recipe on the world; a clog (P precipitating) ends with no fraction and a pressure alarm."""

    model: FlowReactorModel

    def __init__(self, lab: FlowLab, model: FlowReactorModel | None = None):
        super().__init__(lab, model or FlowReactorModel())
        self._made = 0

    def trigger(self, device: Device) -> DeviceStatus:
        assert isinstance(device, FlowReactor)
        recipe = FlowRecipe(ligand=device.ligand.get(), temperature_c=device.temperature_c.get(),  # fails at once
                            residence_time_min=device.residence_time_min.get(),
                            equivalents_b=device.equivalents_b.get(), concentration_m=device.concentration_m.get())
        volume = float(device.collect_volume_ml.get())
        self.lab.free_slot()  # a full collector fails here, before any reagent is pumped
        self._made += 1
        sample_id = str(device.sample_label.get() or f"{device.name}-{self._made:05d}")
        lab_s = self.model.duration_s(recipe, volume)
        fault = self.model.begin(lab_s)
        rng = seeded_rng("fraction", self.lab.name, sample_id)
        actual = self.model.actual(recipe, rng)
        clogged = bool(rng.random() < self.lab.world.clog_probability(actual))
        pressure = self.model.pressure_bar(actual, clogged, rng)

        def finish() -> None:
            self.model.coil_temperature_c = recipe.temperature_c
            device.coil_temperature_c.sim_put(round(actual.temperature_c, 2))
            device.pressure_bar.sim_put(pressure)
            if clogged:  # the BPR alarm stops the pumps; the coil is flushed to waste, no vial
                device.sample_id.sim_put("")
                device.volume_ml.sim_put(0.0)
                device.vial_slot.sim_put("")
                return
            rec = self.lab.collect(sample_id, recipe, actual, volume)
            device.sample_id.sim_put(rec.sample_id)
            device.volume_ml.sim_put(rec.volume_ml)
            device.vial_slot.sim_put(rec.slot or "")

        return self._later(device, lab_s, fault, finish)


class HPLCSimulator(_Hook):
    """Injects the vial the device names and records the detector trace of its composition."""

    model: HPLCModel

    def __init__(self, lab: FlowLab, model: HPLCModel | None = None):
        super().__init__(lab, model or HPLCModel())

    def trigger(self, device: Device) -> DeviceStatus:
        assert isinstance(device, HPLC)
        rec = self.lab.sample(str(device.sample_id.get()))  # an unknown vial fails here, nothing injected
        run_time, rate, inj = (float(device.run_time_min.get()), float(device.sample_rate_hz.get()),
                               float(device.injection_ul.get()))
        lab_s = self.model.duration_s(run_time)
        fault = self.model.begin(lab_s)

        def finish() -> None:
            t = self.model.time_axis(run_time, rate)
            device.time_min.sim_put(t)
            device.absorbance.sim_put(self.model.chromatogram(rec.concentrations, t, inj))

        return self._later(device, lab_s, fault, finish)


def simulated_flow_reactor(name: str, lab: FlowLab, model: FlowReactorModel | None = None) -> FlowReactor:
    return flow_reactor(name, simulator=ReactorSimulator(lab, model))


def simulated_hplc(name: str, lab: FlowLab, model: HPLCModel | None = None) -> HPLC:
    return hplc(name, simulator=HPLCSimulator(lab, model))


__all__ = ["HPLCSimulator", "ReactorSimulator", "simulated_flow_reactor", "simulated_hplc"]
