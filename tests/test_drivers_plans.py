"""Device classes and plans: message lists without a RunEngine, stock plans, EPICS twins, analysis."""

from __future__ import annotations

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky import plans as bp
from bluesky.utils import DuringTask
from ophyd.sim import make_fake_device

from ppu.drivers.mof import (
    EpicsGasSorption,
    EpicsSampleTransfer,
    EpicsSynthesisRobot,
    EpicsUVVis,
    EpicsXRD,
    fit_langmuir,
    identify_phases,
    isotherm_pressures,
    measure_isotherm,
    measure_uvvis,
    measure_xrd,
    synthesize,
    tauc_band_gap,
    transfer,
)
from ppu.drivers.mof.xrd import two_theta_grid
from ppu.simulators.mof import (
    GasSorptionAnalyzer,
    IsothermModel,
    SampleTransfer,
    SimulatedLab,
    SynthesisModel,
    SynthesisRobot,
    UVVisModel,
    UVVisSpectrometer,
    World,
    WorldConfig,
    XRDDiffractometer,
    XRDModel,
    candidate_pool,
)

FAST = 1e5


@pytest.fixture
def lab() -> SimulatedLab:
    return SimulatedLab(World(WorldConfig(seed=4)))


@pytest.fixture
def RE():
    engine = RunEngine({}, context_managers=[], during_task=DuringTask())
    yield engine
    engine.loop.call_soon_threadsafe(engine.loop.stop)
    engine._th.join(5)
    engine.loop.close()


def test_synthesize_plan_messages_without_runengine(lab: SimulatedLab) -> None:
    robot = SynthesisRobot(name="robot", lab=lab)
    cand = candidate_pool(10, 0)[3]
    msgs = list(synthesize(robot, cand, {"task_id": "t1", "campaign": "c"}, sample_label="S-t1"))
    cmds = [m.command for m in msgs]
    assert cmds[0] == "open_run" and cmds[-1] == "close_run"
    assert "clear_checkpoint" in cmds and cmds.index("clear_checkpoint") < cmds.index("trigger")
    md = msgs[0].kwargs
    assert md["task_id"] == "t1" and md["campaign"] == "c" and md["recipe"]["composition"] == cand.composition
    sets = {m.obj.name: m.args[0] for m in msgs if m.command == "set"}
    assert sets["robot_sample_label"] == "S-t1"


def test_measurement_plans_messages(lab: SimulatedLab) -> None:
    xrd = XRDDiffractometer(name="xrd", lab=lab)
    msgs = list(measure_xrd(xrd, "S1", 10, 20, 0.1, md={"task_id": "x"}))
    assert [m.command for m in msgs].count("trigger") == 1
    assert msgs[0].kwargs["sample_id"] == "S1" and msgs[0].kwargs["task_id"] == "x"
    gas = GasSorptionAnalyzer(name="gas", lab=lab)
    msgs = list(measure_isotherm(gas, "S1", [0.1, 0.2, 0.5]))
    assert [m.command for m in msgs].count("checkpoint") == 3
    assert [m.args[0] for m in msgs if m.command == "set" and m.obj.name == "gas_pressure"] == [0.1, 0.2, 0.5]
    tr = SampleTransfer(name="transfer", lab=lab)
    msgs = list(transfer(tr, "S1", "xrd"))
    assert msgs[0].kwargs["destination"] == "xrd"
    uv = UVVisSpectrometer(name="uv", lab=lab)
    assert next(iter(measure_uvvis(uv, "S1"))).kwargs["plan_name"] == "measure_uvvis"


def test_plans_and_stock_plans_run_on_simulated_devices(lab: SimulatedLab, RE: RunEngine) -> None:
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda n, d: docs.append((n, d)))
    robot = SynthesisRobot(name="robot", lab=lab, model=SynthesisModel(time_scale=FAST))
    xrd = XRDDiffractometer(name="xrd", lab=lab, model=XRDModel(time_scale=FAST))
    gas = GasSorptionAnalyzer(name="gas", lab=lab, model=IsothermModel(time_scale=FAST))
    RE(synthesize(robot, candidate_pool(10, 0)[3], sample_label="S-a"))
    assert robot.sample_id.get() == "S-a" and lab.rack()
    RE(measure_xrd(xrd, "S-a", 10, 40, 0.1))
    uids = RE(bp.count([xrd], num=2))
    assert len(uids) == 1
    gas.sample_id.put("S-a")  # stock plans know nothing of samples: the device holds the setting
    RE(bp.scan([gas], gas.pressure, 0.05, 1.0, 4))
    events = [d for n, d in docs if n == "event"]
    assert len(events) == 1 + 1 + 2 + 4
    assert events[-1]["data"]["gas_uptake"] > events[-4]["data"]["gas_uptake"]  # isotherm rises


def test_unknown_sample_fails_at_trigger(lab: SimulatedLab, RE: RunEngine) -> None:
    from bluesky.utils import FailedStatus

    from ppu.simulators.mof import UnknownSampleError

    xrd = XRDDiffractometer(name="xrd", lab=lab, model=XRDModel(time_scale=FAST))
    # trigger() returns a failed Status (bluesky's contract), whose cause is the unknown sample
    with pytest.raises(FailedStatus) as info:
        RE(measure_xrd(xrd, "never-made"))
    assert isinstance(info.value.__cause__, UnknownSampleError)


@pytest.mark.parametrize("cls", [EpicsSynthesisRobot, EpicsXRD, EpicsUVVis, EpicsGasSorption, EpicsSampleTransfer])
def test_epics_twins_construct_with_fake_signals(cls: type) -> None:
    dev = make_fake_device(cls)("LAB1:", name="dev")
    assert dev.prefix == "LAB1:" and cls.acquire.suffix == "Acquire"
    dev.read()  # fake PVs read
    # the plan-facing component names match the simulated twin's
    sim = {SynthesisRobot: EpicsSynthesisRobot, XRDDiffractometer: EpicsXRD, UVVisSpectrometer: EpicsUVVis,
           GasSorptionAnalyzer: EpicsGasSorption, SampleTransfer: EpicsSampleTransfer}
    twin = next(s for s, e in sim.items() if e is cls)
    assert set(twin.component_names) <= set(cls.component_names)


def test_epics_xrd_reads_through_fake_pvs() -> None:
    dev = make_fake_device(EpicsXRD)("XRD1:", name="xrd")
    dev.intensity.sim_put(np.array([1.0, 2.0, 3.0]))
    assert list(dev.read()["xrd_intensity"]["value"]) == [1.0, 2.0, 3.0]
    assert EpicsXRD.two_theta_start.suffix == "TwoThetaStart"


# ---- analysis recovers known answers from simulated signals ---------------------------------


def test_xrd_phase_fit_recovers_fractions() -> None:
    grid = two_theta_grid(10, 80, 0.05)
    truth = {"MOF-74": 0.7, "linker": 0.2, "rocksalt-oxide": 0.1}
    fit = identify_phases(grid, XRDModel(seed=1).pattern(truth, grid))
    assert fit.main_phase == "MOF-74"
    for phase, frac in truth.items():
        assert fit.phases[phase] == pytest.approx(frac, abs=0.03)
    pure = identify_phases(grid, XRDModel(seed=2).pattern({"MOF-74": 1.0}, grid))
    assert pure.purity > 0.97


@pytest.mark.parametrize("gap", [1.8, 2.7, 3.6])
def test_tauc_recovers_band_gap(gap: float) -> None:
    lam = np.linspace(250, 900, 651)
    found, r2 = tauc_band_gap(lam, UVVisModel(seed=3).spectrum(gap, lam))
    assert found == pytest.approx(gap, abs=0.05) and r2 > 0.95


def test_langmuir_recovers_uptake() -> None:
    p = np.array(isotherm_pressures(12))
    q = IsothermModel(seed=5).uptake(2.5, 6.0, p)
    fit = fit_langmuir(p, q)
    assert fit.uptake(0.15) == pytest.approx(2.5, rel=0.03) and fit.b == pytest.approx(6.0, rel=0.2)
