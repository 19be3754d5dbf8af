"""The MOF pack's conformance cases: how the one backend contract runs on each of its backend types.

Physical cases run on a simulated lab of their own (one per test folder) at a high time scale;
``slow`` builds the same backend at a time scale where a run lasts seconds, so that an abort or a
pause lands mid-run. Measurement cases make their samples first with a robot of the same lab.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ppu.backends.base import Backend, TaskRun
from ppu.backends.registry import build_backend
from ppu.conformance import ConformanceCase
from ppu.models import ResultStatus
from ppu.simulators.mof.world import World, candidate_pool

FAST = 1e5  # lab seconds per wall second: a 4-hour anneal takes 0.16 s
SLOW = 100.0  # a run lasts seconds to minutes: long enough to abort or pause mid-way


def _no_progress(task_id: str, fraction: float, message: str) -> None:
    return None


def lab_config(tmp_path: Path, type_: str, name: str, *, time_scale: float = FAST, **kw: Any) -> dict[str, Any]:
    return {"type": type_, "name": name, "simulated": True, "time_scale": time_scale,
            "run_dir": str(tmp_path / "run"), "lab": f"lab-{tmp_path.name}", "world": {"seed": 5}, "seed": 1, **kw}


def recipe(i: int = 7) -> dict[str, Any]:
    return candidate_pool(40, seed=2)[i].model_dump(mode="json")


def synth_run(task_id: str, **over: Any) -> TaskRun:
    return TaskRun(task_id=task_id, attempt=1, capability="synthesize", inputs={"recipe": {**recipe(), **over}},
                   campaign="c1")


async def make_samples(tmp_path: Path, n: int) -> list[str]:
    """Synthesise n samples with a robot of the same lab (retries the rare chemical failure)."""
    robot = build_backend(lab_config(tmp_path, "synthesis_robot", "robot_prep"))
    await robot.start()
    out: list[str] = []
    try:
        i = 0
        while len(out) < n and i < 5 * n:
            [res] = await robot.run([synth_run(f"prep{i}")], _no_progress)
            i += 1
            if res.status == ResultStatus.succeeded:
                out.append(res.outputs["sample_id"])
    finally:
        await robot.close()
    if len(out) != n:
        raise RuntimeError(f"could make only {len(out)} of {n} samples")
    return out


class Measurement(ConformanceCase):
    type_: str = ""
    capability: str = ""

    def config(self, tmp_path: Path, *, slow: bool = False) -> dict[str, Any]:
        return lab_config(tmp_path, self.type_, f"{self.type_}1", time_scale=SLOW if slow else FAST)

    async def good_runs(self, backend: Backend, tmp_path: Path) -> list[TaskRun]:
        sids = await make_samples(tmp_path, 2)
        return [TaskRun(task_id=f"m{i}", attempt=1, capability=self.capability, inputs={"sample_id": s})
                for i, s in enumerate(sids)]

    def bad_run(self) -> TaskRun:
        return TaskRun(task_id="bad", attempt=1, capability=self.capability, inputs={"sample_id": "never-made"})

    async def long_run(self, backend: Backend, tmp_path: Path) -> TaskRun | None:
        [sid] = await make_samples(tmp_path, 1)
        return TaskRun(task_id="long", attempt=1, capability=self.capability, inputs={"sample_id": sid})


class Synthesis(ConformanceCase):
    def config(self, tmp_path: Path, *, slow: bool = False) -> dict[str, Any]:
        return lab_config(tmp_path, "synthesis_robot", "synthesis_robot1", time_scale=SLOW if slow else FAST)

    async def good_runs(self, backend: Backend, tmp_path: Path) -> list[TaskRun]:
        # recipes inside the synthesis window: success probability ~0.97, and the seed makes it certain
        return [synth_run("s1"), synth_run("s2")]

    def bad_run(self) -> TaskRun:
        return synth_run("hot", anneal_temperature_c=950.0)

    async def long_run(self, backend: Backend, tmp_path: Path) -> TaskRun | None:
        return synth_run("long", anneal_time_h=24.0)


class XRD(Measurement):
    type_, capability = "xrd", "characterize.xrd"


class UVVis(Measurement):
    type_, capability = "uvvis", "measure.band_gap"


class GasSorption(Measurement):
    type_, capability = "gas_sorption", "measure.co2_uptake"


POOL = [c.model_dump(mode="json") for c in candidate_pool(30, seed=1)]


class SurrogateTrainer(ConformanceCase):
    def config(self, tmp_path: Path, *, slow: bool = False) -> dict[str, Any]:
        return {"type": "surrogate_trainer", "name": "trainer1", "registry": str(tmp_path / "models")}

    async def good_runs(self, backend: Backend, tmp_path: Path) -> list[TaskRun]:
        world = World.from_config({"seed": 3})
        cands = candidate_pool(30, seed=1)[:12]  # small: the contract is about routing, not the fit
        values = [world.properties(c).co2_uptake_mmol_g for c in cands]
        inputs = {"target": "co2_uptake", "candidates": POOL[:12], "values": values, "seed": 0}
        return [TaskRun(task_id=f"tr{i}", attempt=1, capability="train.surrogate", inputs=inputs) for i in range(2)]

    def bad_run(self) -> TaskRun:
        return TaskRun(task_id="bad", attempt=1, capability="train.surrogate",
                       inputs={"target": "co2_uptake", "candidates": POOL[:3], "values": [1.0], "seed": 0})


class MLIP(ConformanceCase):
    requires = ("chgnet", "pymatgen")

    def config(self, tmp_path: Path, *, slow: bool = False) -> dict[str, Any]:
        return {"type": "mlip", "name": "mlip1"}

    async def good_runs(self, backend: Backend, tmp_path: Path) -> list[TaskRun]:
        return [TaskRun(task_id=f"e{i}", attempt=1, capability="predict.energy", inputs={"candidate": c})
                for i, c in enumerate(POOL[:2])]

    def bad_run(self) -> TaskRun:
        unknown = {"composition": {"Xx": 1.0}, "anneal_temperature_c": 400, "anneal_time_h": 4}
        return TaskRun(task_id="bad", attempt=1, capability="predict.energy", inputs={"candidate": unknown})
