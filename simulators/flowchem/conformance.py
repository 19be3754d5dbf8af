"""The flow-chemistry pack's conformance cases: the one backend contract on each of its backend types.

Physical cases run on a flow lab of their own (one per test folder) at a high time scale; ``slow`` builds
the same backend at a time scale where a reaction lasts seconds, so that an abort or a pause lands mid-run.
HPLC cases collect their fractions first with a reactor of the same lab.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ppu.backends.base import Backend, TaskRun
from ppu.backends.registry import build_backend
from ppu.conformance import ConformanceCase
from ppu.models import ResultStatus

FAST = 1e6
SLOW = 300.0
RECIPE: dict[str, Any] = {"ligand": "SPhos", "temperature_c": 85.0, "residence_time_min": 8.0,
                          "equivalents_b": 1.6, "concentration_m": 0.4}


def _no_progress(task_id: str, fraction: float, message: str) -> None:
    return None


def lab_config(tmp_path: Path, type_: str, name: str, *, time_scale: float = FAST, **kw: Any) -> dict[str, Any]:
    return {"type": type_, "name": name, "simulated": True, "time_scale": time_scale,
            "run_dir": str(tmp_path / "run"), "lab": f"flow-{tmp_path.name}", "world": {"seed": 3}, "seed": 1, **kw}


def react_run(task_id: str, **over: Any) -> TaskRun:
    return TaskRun(task_id=task_id, attempt=1, capability="react.flow", inputs={"recipe": {**RECIPE, **over}})


async def make_fractions(tmp_path: Path, n: int) -> list[str]:
    reactor = build_backend(lab_config(tmp_path, "flow_reactor", "reactor_prep"))
    await reactor.start()
    try:
        results = await reactor.run([react_run(f"prep{i}") for i in range(n)], _no_progress)
    finally:
        await reactor.close()
    made = [r.outputs["sample_id"] for r in results if r.status == ResultStatus.succeeded]
    if len(made) != n:
        raise RuntimeError(f"could collect only {len(made)} of {n} fractions: {[r.error for r in results]}")
    return made


class FlowReactor(ConformanceCase):
    def config(self, tmp_path: Path, *, slow: bool = False) -> dict[str, Any]:
        return lab_config(tmp_path, "flow_reactor", "reactor1", time_scale=SLOW if slow else FAST)

    async def good_runs(self, backend: Backend, tmp_path: Path) -> list[TaskRun]:
        return [react_run("r1"), react_run("r2", ligand="XPhos", temperature_c=100.0)]

    def bad_run(self) -> TaskRun:
        return react_run("hot", temperature_c=250.0)  # a valid payload outside the reactor's safe limits

    async def long_run(self, backend: Backend, tmp_path: Path) -> TaskRun | None:
        return react_run("long", residence_time_min=30.0)


class HPLC(ConformanceCase):
    def config(self, tmp_path: Path, *, slow: bool = False) -> dict[str, Any]:
        return lab_config(tmp_path, "hplc", "hplc1", time_scale=SLOW if slow else FAST)

    async def good_runs(self, backend: Backend, tmp_path: Path) -> list[TaskRun]:
        return [TaskRun(task_id=f"h{i}", attempt=1, capability="measure.hplc", inputs={"sample_id": s})
                for i, s in enumerate(await make_fractions(tmp_path, 2))]

    def bad_run(self) -> TaskRun:
        return TaskRun(task_id="bad", attempt=1, capability="measure.hplc", inputs={"sample_id": "never-made"})

    async def long_run(self, backend: Backend, tmp_path: Path) -> TaskRun | None:
        [sid] = await make_fractions(tmp_path, 1)
        return TaskRun(task_id="long", attempt=1, capability="measure.hplc", inputs={"sample_id": sid})


class Twin(ConformanceCase):
    def config(self, tmp_path: Path, *, slow: bool = False) -> dict[str, Any]:
        return {"type": "flow_twin", "name": "twin", "batch_size": 64}

    async def good_runs(self, backend: Backend, tmp_path: Path) -> list[TaskRun]:
        return [TaskRun(task_id=f"p{i}", attempt=1, capability="predict.yield",
                        inputs={"recipe": {**RECIPE, "temperature_c": 60.0 + 10 * i}}) for i in range(3)]

    def bad_run(self) -> TaskRun:
        return TaskRun(task_id="bad", attempt=1, capability="predict.yield", inputs={"recipe": {"ligand": "none"}})
