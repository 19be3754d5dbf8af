"""Flow-lab backends through the conformance suite, plus what is particular to them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from conformance import BackendContract, no_progress

from ppu import capabilities
from ppu.backends.base import Backend, TaskRun
from ppu.backends.registry import BACKEND_TYPES, build_backend
from ppu.models import ActionClass, ResultStatus
from ppu.simulators.flowchem import pack
from ppu.simulators.flowchem.backends import FlowInstrumentBackend

pack.register()
FAST = 1e6
RECIPE: dict[str, Any] = {"ligand": "SPhos", "temperature_c": 85.0, "residence_time_min": 8.0,
                          "equivalents_b": 1.6, "concentration_m": 0.4}


def lab_config(tmp_path: Path, type_: str, name: str, **kw: Any) -> dict[str, Any]:
    return {"type": type_, "name": name, "simulated": True, "time_scale": FAST, "run_dir": str(tmp_path / "run"),
            "lab": f"flow-{tmp_path.name}", "world": {"seed": 3}, "seed": 1, **kw}


def react_run(task_id: str, **over: Any) -> TaskRun:
    return TaskRun(task_id=task_id, attempt=1, capability="react.flow", inputs={"recipe": {**RECIPE, **over}})


async def make_fractions(tmp_path: Path, n: int) -> list[str]:
    reactor = build_backend(lab_config(tmp_path, "flow_reactor", "reactor_prep"))
    await reactor.start()
    try:
        results = await reactor.run([react_run(f"prep{i}") for i in range(n)], no_progress)
    finally:
        await reactor.close()
    assert all(r.status == ResultStatus.succeeded for r in results), [r.error for r in results]
    return [r.outputs["sample_id"] for r in results]


class TestFlowReactorContract(BackendContract):
    def make_backend(self, tmp_path: Path) -> Backend:
        return build_backend(lab_config(tmp_path, "flow_reactor", "reactor1"))

    async def good_runs(self, backend: Backend) -> list[TaskRun]:
        return [react_run("r1"), react_run("r2", ligand="XPhos", temperature_c=100.0)]

    def bad_run(self) -> TaskRun:
        return react_run("hot", temperature_c=250.0)  # valid payload, outside the reactor's safe limits


class TestHPLCContract(BackendContract):
    def make_backend(self, tmp_path: Path) -> Backend:
        self._tmp = tmp_path
        return build_backend(lab_config(tmp_path, "hplc", "hplc1"))

    async def good_runs(self, backend: Backend) -> list[TaskRun]:
        return [TaskRun(task_id=f"h{i}", attempt=1, capability="measure.hplc", inputs={"sample_id": s})
                for i, s in enumerate(await make_fractions(self._tmp, 2))]

    def bad_run(self) -> TaskRun:
        return TaskRun(task_id="bad", attempt=1, capability="measure.hplc", inputs={"sample_id": "never-made"})


class TestTwinContract(BackendContract):
    def make_backend(self, tmp_path: Path) -> Backend:
        return build_backend({"type": "flow_twin", "name": "twin", "batch_size": 64})

    async def good_runs(self, backend: Backend) -> list[TaskRun]:
        return [TaskRun(task_id=f"p{i}", attempt=1, capability="predict.yield",
                        inputs={"recipe": {**RECIPE, "temperature_c": 60.0 + 10 * i}}) for i in range(3)]

    def bad_run(self) -> TaskRun:
        return TaskRun(task_id="bad", attempt=1, capability="predict.yield", inputs={"recipe": {"ligand": "none"}})


def test_register_declares_the_pack() -> None:
    pack.register()  # twice is harmless
    react, hplc, predict = (capabilities.get(n) for n in ("react.flow", "measure.hplc", "predict.yield"))
    assert react.action is ActionClass.once and react.makes_sample and not react.needs_sample
    assert hplc.action is ActionClass.once and hplc.needs_sample
    assert predict.action is ActionClass.repeatable
    assert {"flow_reactor", "hplc", "flow_twin"} <= set(BACKEND_TYPES)


def test_reaction_then_hplc_gives_the_fractions_yield(tmp_path: Path) -> None:
    async def main() -> tuple[Any, Any, FlowInstrumentBackend]:
        reactor = build_backend(lab_config(tmp_path, "flow_reactor", "reactor"))
        hplc = build_backend(lab_config(tmp_path, "hplc", "hplc"))
        assert isinstance(hplc, FlowInstrumentBackend)
        await reactor.start()
        await hplc.start()
        try:
            [made] = await reactor.run([react_run("r1")], no_progress)
            [meas] = await hplc.run([TaskRun(task_id="h1", attempt=1, capability="measure.hplc",
                                             inputs={"sample_id": made.outputs["sample_id"]})], no_progress)
        finally:
            await reactor.close()
            await hplc.close()
        return made, meas, hplc

    made, meas, hplc = asyncio.run(main())
    assert made.status == meas.status == ResultStatus.succeeded, (made.error, meas.error)
    assert made.outputs["sample_id"] == "F-r1" and made.provenance.run_uids
    assert made.outputs["location"] == {"device": "reactor", "slot": "V0001"}
    assert Path(made.provenance.documents).exists()
    truth = hplc.lab.sample("F-r1")  # type: ignore[union-attr]
    assert meas.outputs["product_yield"] == pytest.approx(truth.product_yield, abs=0.02)
    assert meas.outputs["impurity"] == pytest.approx(truth.impurity, abs=0.02)
    assert set(meas.outputs["peaks"]) >= {"A", "P"}


def test_clog_fails_without_review_and_fault_goes_to_review(tmp_path: Path) -> None:
    async def main() -> list[Any]:
        reactor = build_backend(lab_config(tmp_path, "flow_reactor", "reactor", faults={"fail_on": [2]}))
        await reactor.start()
        try:
            return await reactor.run([react_run("cold", ligand="XPhos", temperature_c=40.0, residence_time_min=30.0,
                                                equivalents_b=3.0, concentration_m=1.0), react_run("f")],
                                     no_progress)
        finally:
            await reactor.close()

    clog, fault = asyncio.run(main())
    assert clog.status == ResultStatus.failed and "clogged" in clog.error and not clog.interrupted
    assert fault.status == ResultStatus.failed and fault.interrupted and not fault.retryable


def test_refusals_move_nothing(tmp_path: Path) -> None:
    async def main() -> tuple[list[Any], Any]:
        reactor = build_backend(lab_config(tmp_path, "flow_reactor", "reactor"))
        assert isinstance(reactor, FlowInstrumentBackend)
        await reactor.start()
        try:
            res = await reactor.run([react_run("hot", temperature_c=250.0), react_run("conc", concentration_m=3.0),
                                     TaskRun(task_id="x", attempt=1, capability="measure.hplc",
                                             inputs={"sample_id": "F-1"})], no_progress)
            return res, reactor
        finally:
            await reactor.close()

    res, reactor = asyncio.run(main())
    assert [r.status for r in res] == [ResultStatus.failed] * 3
    assert "recipe.temperature_c" in res[0].error and "nothing moved" in res[0].error
    assert "recipe.concentration_m" in res[1].error
    assert "offers react.flow" in res[2].error
    assert reactor.lab.known_samples() == []  # type: ignore[union-attr]


def _slow_reaction(tmp_path: Path, during: str) -> tuple[Any, FlowInstrumentBackend, str]:
    """Start a ~2 s (wall) reaction, then abort or pause it half-way."""
    async def main() -> tuple[Any, FlowInstrumentBackend, str]:
        reactor = build_backend(lab_config(tmp_path, "flow_reactor", "reactor", time_scale=1000.0))
        assert isinstance(reactor, FlowInstrumentBackend)
        await reactor.start()
        try:
            task = asyncio.create_task(reactor.run([react_run("slow")], no_progress))
            await asyncio.sleep(0.6)
            said = await reactor.abort("slow") if during == "abort" else await reactor.pause()
            [res] = await asyncio.wait_for(task, 10)
            await asyncio.sleep(2.0)  # past the reaction's end: a cancelled acquisition must not land
        finally:
            await reactor.close()
        return res, reactor, str(said)

    return asyncio.run(main())


def test_abort_mid_reaction_collects_nothing(tmp_path: Path) -> None:
    res, reactor, _ = _slow_reaction(tmp_path, "abort")
    assert res.status == ResultStatus.failed and res.interrupted and not res.retryable
    assert reactor.lab.known_samples() == []  # type: ignore[union-attr]


def test_pause_during_reaction_aborts_instead_of_repeating(tmp_path: Path) -> None:
    """The reaction cannot be rewound: a pause there ends the run for review, never a second vial."""
    res, reactor, said = _slow_reaction(tmp_path, "pause")
    assert said.startswith("pause requested")
    assert res.status == ResultStatus.failed and res.interrupted
    assert reactor.lab.known_samples() == []  # type: ignore[union-attr]


def test_the_twin_screens_a_block_of_recipes_as_one_task_with_the_row_tasks_numbers() -> None:
    """A columnar task (ligand index + process columns) gives, row for row, what one task per recipe
    gives, with progress per part; a block with a recipe outside its limits fails naming the column and
    the row, and is not retried (running it again cannot help)."""
    import numpy as np

    from ppu.drivers.flowchem.coding import encode_recipe, recipe_columns

    rng = np.random.default_rng(0)
    ligands = ["PPh3", "dppf", "SPhos", "XPhos"]
    recipes = [{"ligand": ligands[int(rng.integers(4))], "temperature_c": float(rng.uniform(40, 160)),
                "residence_time_min": float(rng.uniform(0.5, 30)), "equivalents_b": float(rng.uniform(1, 3)),
                "concentration_m": float(rng.uniform(0.1, 1.0))} for _ in range(300)]
    inputs = [{"recipe": r} for r in recipes]
    cols = recipe_columns(inputs)
    assert cols["ligand"].dtype == np.int64 and len(encode_recipe(inputs[0])) == 8
    backend = build_backend({"type": "flow_twin", "name": "twin", "block_rows": 128})
    bad_cols = {k: v.copy() for k, v in cols.items()}
    bad_cols["temperature_c"][7] = 900.0
    seen: list[float] = []

    def block(c: dict[str, Any], tid: str) -> TaskRun:
        return TaskRun(task_id=tid, attempt=1, capability="predict.yield",
                       block={"rows": len(c["ligand"]), "columns": list(c)}).with_columns(c)

    async def go() -> tuple[Any, ...]:
        [b] = await backend.run([block(cols, "b1")], lambda tid, f, m: seen.append(f))
        rows = await backend.run([TaskRun(task_id=f"r{i}", attempt=1, capability="predict.yield", inputs=x)
                                  for i, x in enumerate(inputs[:40])], no_progress)
        [bad] = await backend.run([block(bad_cols, "b2")], no_progress)
        await backend.close()
        return b, rows, bad

    b, rows, bad = asyncio.run(go())
    assert b.status is ResultStatus.succeeded and b.outputs["rows"] == 300, b.error
    out = b.columns()
    assert out is not None and set(out) == {"mean", "std", "impurity"}
    for i, r in enumerate(rows):
        assert out["mean"][i] == pytest.approx(r.outputs["mean"], abs=1e-12)
        assert out["std"][i] == pytest.approx(r.outputs["std"], abs=1e-12)
    assert seen == pytest.approx([128 / 300, 256 / 300, 1.0])
    assert bad.status is ResultStatus.failed and not bad.retryable
    assert "temperature_c" in (bad.error or "") and "7" in (bad.error or ""), bad.error


def test_a_recipe_block_with_a_column_it_does_not_know_is_refused_naming_it() -> None:
    """A misspelt column (``temprature_c`` beside the real ones) used to be left out without a word."""
    import numpy as np

    from ppu.drivers.flowchem.coding import COLUMNS, checked
    from ppu.drivers.flowchem.models import PROCESS_BOX
    from ppu.errors import ValidationFailed

    cols: dict[str, Any] = {"ligand": np.zeros(3, dtype=np.int64)}
    for name, (lo, hi, *_) in PROCESS_BOX.items():  # the middle of each parameter's range
        cols[name] = np.full(3, (lo + hi) / 2)
    assert set(checked(cols)) == set(COLUMNS)  # every known column, nothing else: fine
    with pytest.raises(ValidationFailed) as err:
        checked({**cols, "temprature_c": np.ones(3)})
    assert err.value.field == "columns.temprature_c" and "ligand" in (err.value.hint or "")
