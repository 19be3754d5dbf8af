"""Flow-lab devices and plans: messages without a RunEngine, both builds, stock plans, units."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky import plans as bp
from bluesky.utils import DuringTask, FailedStatus
from ophyd.sim import make_fake_device
from ophyd.utils import ReadOnlyError
from pydantic import ValidationError

from ppu.drivers.flowchem import HPLC, FlowReactor, FlowRecipe, analyse_chromatogram, measure_hplc, run_flow_reaction
from ppu.drivers.flowchem.devices import flow_reactor
from ppu.simulators.flowchem import FlowLab, FlowReactorModel, FlowWorld, FlowWorldConfig, HPLCModel, InstrumentFault
from ppu.simulators.flowchem.devices import simulated_flow_reactor, simulated_hplc
from ppu.simulators.flowchem.lab import UnknownFractionError

FAST = 1e6
RECIPE = FlowRecipe(ligand="SPhos", temperature_c=85.0, residence_time_min=8.0, equivalents_b=1.6,
                    concentration_m=0.4)


@pytest.fixture
def lab(tmp_path: Path) -> FlowLab:
    return FlowLab(FlowWorld(FlowWorldConfig(seed=1)), registry_path=tmp_path / "fractions.jsonl", name="t")


@pytest.fixture
def RE():
    engine = RunEngine({}, context_managers=[], during_task=DuringTask())
    yield engine
    engine.loop.call_soon_threadsafe(engine.loop.stop)
    engine._th.join(5)
    engine.loop.close()


def test_reaction_plan_is_a_list_of_messages() -> None:
    dev = make_fake_device(FlowReactor)("FLOW1:", name="reactor")
    msgs = list(run_flow_reaction(dev, RECIPE, {"task_id": "t1"}, collect_volume_ml=3.0, sample_label="F-1"))
    cmds = [m.command for m in msgs]
    assert cmds[:2] == ["stage", "open_run"] and cmds[-2:] == ["close_run", "unstage"]
    opened = msgs[1]
    assert opened.kwargs["recipe"]["ligand"] == "SPhos" and opened.kwargs["task_id"] == "t1"
    sets = {m.obj.attr_name: m.args[0] for m in msgs if m.command == "set"}
    assert sets == {"ligand": "SPhos", "temperature_c": 85.0, "residence_time_min": 8.0, "equivalents_b": 1.6,
                    "concentration_m": 0.4, "collect_volume_ml": 3.0, "sample_label": "F-1"}
    # the checkpoint is cleared before the (non-rewindable) trigger: a pause aborts, never repeats
    assert cmds.index("clear_checkpoint") < cmds.index("trigger")
    assert cmds.count("trigger") == 1 and "checkpoint" not in cmds


def test_hplc_plan_is_a_list_of_messages() -> None:
    dev = make_fake_device(HPLC)("HPLC1:", name="hplc")
    msgs = list(measure_hplc(dev, "F-1", run_time_min=12.0))
    cmds = [m.command for m in msgs]
    assert cmds[:2] == ["stage", "open_run"] and msgs[1].kwargs["sample_id"] == "F-1"
    assert cmds.index("checkpoint") < cmds.index("trigger") < cmds.index("read")
    assert {m.obj.attr_name: m.args[0] for m in msgs if m.command == "set"}["run_time_min"] == 12.0


def test_bad_recipe_fails_before_any_message() -> None:
    dev = make_fake_device(FlowReactor)("FLOW1:", name="reactor")
    with pytest.raises(ValidationError):
        next(run_flow_reaction(dev, {"ligand": "unobtainium"}))


def test_both_builds_share_one_class_and_pv_names() -> None:
    lab = FlowLab(FlowWorld())
    sim = simulated_flow_reactor("reactor", lab)
    assert isinstance(sim, FlowReactor) and sim.simulated
    assert FlowReactor.temperature_c.suffix == "Temperature" and FlowReactor.sample_id.suffix == "SampleId_RBV"
    epics = make_fake_device(FlowReactor)("FLOW1:", name="reactor")  # the EPICS build, no IOC in CI
    assert not epics.simulated and epics.prefix == "FLOW1:"
    assert set(sim.component_names) == set(epics.component_names)
    with pytest.raises(ValueError, match="PV prefix"):
        flow_reactor("reactor")


def test_readbacks_are_read_only_and_units_are_described() -> None:
    r = simulated_flow_reactor("reactor", FlowLab(FlowWorld()))
    with pytest.raises(ReadOnlyError):
        r.sample_id.put("forged")
    with pytest.raises(ReadOnlyError):
        r.coil_temperature_c.set(20.0)
    desc = r.describe()
    assert desc["reactor_coil_temperature_c"]["units"] == "degC"
    assert desc["reactor_pressure_bar"]["units"] == "bar"
    assert r.describe_configuration()["reactor_residence_time_min"]["units"] == "min"
    h = simulated_hplc("hplc", FlowLab(FlowWorld()))
    assert h.describe()["hplc_absorbance"]["units"] == "mAU"
    with pytest.raises(ReadOnlyError):
        h.absorbance.put(np.zeros(3))


def test_plans_run_on_the_simulated_devices(RE, lab: FlowLab) -> None:
    reactor = simulated_flow_reactor("reactor", lab, FlowReactorModel(time_scale=FAST, seed=2))
    h = simulated_hplc("hplc", lab, HPLCModel(time_scale=FAST, seed=2))
    docs: list[tuple[str, dict]] = []
    RE(run_flow_reaction(reactor, RECIPE, sample_label="F-42"), lambda n, d: docs.append((n, d)))
    (ev,) = [d for n, d in docs if n == "event"]
    assert ev["data"]["reactor_sample_id"] == "F-42" and ev["data"]["reactor_volume_ml"] == 2.0
    assert abs(ev["data"]["reactor_coil_temperature_c"] - 85.0) < 2.0
    docs.clear()
    RE(measure_hplc(h, "F-42"), lambda n, d: docs.append((n, d)))
    (ev,) = [d for n, d in docs if n == "event"]
    res = analyse_chromatogram(ev["data"]["hplc_time_min"], ev["data"]["hplc_absorbance"])
    assert res.product_yield == pytest.approx(lab.sample("F-42").product_yield, abs=0.02)
    # a second lab object on the same register finds the vial (another process would)
    assert FlowLab(FlowWorld(FlowWorldConfig(seed=1)), registry_path=lab.registry_path).sample("F-42").volume_ml == 2.0


def test_stock_count_on_both_devices(RE, lab: FlowLab) -> None:
    reactor = simulated_flow_reactor("reactor", lab, FlowReactorModel(time_scale=FAST))
    for attr, value in {"ligand": "XPhos", "temperature_c": 90.0, "residence_time_min": 5.0}.items():
        getattr(reactor, attr).set(value).wait(1)
    docs: list[tuple[str, dict]] = []
    RE(bp.count([reactor], num=2), lambda n, d: docs.append((n, d)))
    made = [d["data"]["reactor_sample_id"] for n, d in docs if n == "event"]
    assert len(made) == 2 and len(set(made)) == 2 and all(made)
    descriptor = next(d for n, d in docs if n == "descriptor")
    assert descriptor["data_keys"]["reactor_coil_temperature_c"]["units"] == "degC"
    h = simulated_hplc("hplc", lab, HPLCModel(time_scale=FAST))
    h.sample_id.set(made[1]).wait(1)
    docs.clear()
    RE(bp.count([h]), lambda n, d: docs.append((n, d)))
    (ev,) = [d for n, d in docs if n == "event"]
    assert len(ev["data"]["hplc_absorbance"]) == len(ev["data"]["hplc_time_min"]) == 6001


def test_unknown_vial_and_injected_fault(RE, lab: FlowLab) -> None:
    h = simulated_hplc("hplc", lab, HPLCModel(time_scale=FAST))
    with pytest.raises(UnknownFractionError):
        RE(measure_hplc(h, "never-made"))
    model = FlowReactorModel(time_scale=FAST)
    reactor = simulated_flow_reactor("reactor", lab, model)
    model.inject_fault("pump B stalled")
    with pytest.raises(FailedStatus) as info:
        RE(run_flow_reaction(reactor, RECIPE, sample_label="F-x"))
    assert isinstance(info.value.__cause__, InstrumentFault) and "pump B stalled" in str(info.value.__cause__)
    assert "F-x" not in lab.known_samples()


def test_clogged_coil_collects_nothing(RE, lab: FlowLab) -> None:
    reactor = simulated_flow_reactor("reactor", lab, FlowReactorModel(time_scale=FAST, seed=3))
    cold = FlowRecipe(ligand="XPhos", temperature_c=40.0, residence_time_min=30.0, equivalents_b=3.0,
                      concentration_m=1.0)
    assert lab.world.clog_probability(cold) > 0.9
    docs: list[tuple[str, dict]] = []
    RE(run_flow_reaction(reactor, cold, sample_label="F-clog"), lambda n, d: docs.append((n, d)))
    (ev,) = [d for n, d in docs if n == "event"]
    assert ev["data"]["reactor_sample_id"] == "" and ev["data"]["reactor_pressure_bar"] > 20.0


def test_full_collector_fails_before_pumping(RE, tmp_path: Path) -> None:
    from ppu.simulators.flowchem.lab import CollectorFullError

    small = FlowLab(FlowWorld(), name="small", rack_slots=1)
    model = FlowReactorModel(time_scale=FAST)
    reactor = simulated_flow_reactor("reactor", small, model)
    RE(run_flow_reaction(reactor, RECIPE, sample_label="F-1"))
    assert small.sample("F-1").slot == "V0001"
    with pytest.raises(CollectorFullError, match="full"):
        RE(run_flow_reaction(reactor, RECIPE, sample_label="F-2"))
    assert model.acquisitions == 1 and small.known_samples() == ["F-1"]
