"""Humans in charge, on the simulated lab's real Bluesky backends: autonomy gates, stop/resume,
review of interrupted physical work with a manual result, the sample ledger and the audit log."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from lab_helpers import phys as _phys
from lab_helpers import until as _until

from ppu.backends import build_backend
from ppu.config import AutonomyConfig, OrchestratorConfig
from ppu.models import ApprovalState, TaskSpec, TaskState
from ppu.orchestrator import LocalWorker, Orchestrator
from ppu.simulators.mof.world import candidate_pool
from ppu.store import Store, sqlite_url


def _recipe(i: int = 3, **over: Any) -> dict[str, Any]:
    return {**candidate_pool(40, seed=2)[i].model_dump(mode="json"), **over}


class Lab:
    def __init__(self, tmp_path: Path, backends: list[dict[str, Any]], **autonomy: Any):
        self.store = Store(sqlite_url(tmp_path / "ppu.sqlite"))
        self.orch = Orchestrator(self.store, OrchestratorConfig(heartbeat_s=0.05), AutonomyConfig(**autonomy))
        self.backends = [build_backend(b) for b in backends]
        self.worker = LocalWorker(self.orch, self.backends)

    async def __aenter__(self) -> Lab:
        await self.orch.start()
        await self.worker.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.worker.close()
        await self.orch.close()
        self.store.close()

    def state(self, tid: str) -> TaskState:
        t = self.orch.view.get_task(tid)
        assert t is not None
        return t.state

    async def synth(self, i: int = 3, **over: Any) -> str:
        (tid,) = self.orch.submit([TaskSpec(capability="synthesize", inputs={"recipe": _recipe(i, **over)})])
        return tid


def test_stop_during_synthesis_lets_the_anneal_finish_holds_the_queue_and_keeps_the_ledger(tmp_path: Path):
    async def body() -> None:
        async with Lab(tmp_path, [_phys(tmp_path, "synthesis_robot", "robot")]) as lab:
            a = await lab.synth(3)
            await _until(lambda: lab.state(a) is TaskState.running)
            states = await lab.orch.controls.stop(actor="carol")
            assert states["robot"].startswith("pause requested at the next checkpoint")
            b = await lab.synth(4)
            (ta,) = await lab.orch.waits.wait([a], timeout=20)
            assert ta.state is TaskState.succeeded  # a synthesis is never cut mid-anneal
            await asyncio.sleep(0.3)
            assert lab.state(b) is TaskState.ready  # held: nothing new starts while stopped
            resumed = await lab.orch.controls.resume(actor="carol")
            assert set(resumed) == {"robot"}
            (tb,) = await lab.orch.waits.wait([b], timeout=20)
            assert tb.state is TaskState.succeeded
            samples = lab.store.list_samples()
            assert sorted(s.made_by or "" for s in samples) == sorted([a, b])
            for tid in (a, b):
                assert len(lab.store.results_for(tid)) == 1
                assert [j["dst"] for j in lab.store.journal_for(tid)].count("assigned") == 1
            actions = [e.action for e in lab.store.audit_entries() if e.actor == "carol"]
            assert actions == ["stop", "paused", "resume"]
    asyncio.run(body())


def test_stop_pauses_a_measurement_at_a_checkpoint_and_resume_finishes_it(tmp_path: Path):
    async def body() -> None:
        async with Lab(tmp_path, [_phys(tmp_path, "synthesis_robot", "robot"),
                                  _phys(tmp_path, "gas_sorption", "gas", time_scale=3000)]) as lab:
            s = await lab.synth(5)
            (ts,) = await lab.orch.waits.wait([s], timeout=20)
            assert ts.state is TaskState.succeeded, ts.error
            sample_id = lab.store.final_result(s).outputs["sample_id"]
            (m,) = lab.orch.submit([TaskSpec(capability="measure.co2_uptake",
                                             inputs={"sample_id": sample_id, "points": 6})])
            await _until(lambda: lab.state(m) is TaskState.running)
            await asyncio.sleep(0.2)
            states = await lab.orch.controls.stop("gas", actor="dan")
            assert "pause requested" in states["gas"]
            gas = next(b for b in lab.backends if b.name == "gas")
            await _until(lambda: gas.host.state == "paused")  # type: ignore[attr-defined]
            await asyncio.sleep(0.3)
            assert lab.state(m) is TaskState.running
            # ppu status says the running plan is paused, and why nothing new starts there
            await _until(lambda: any(r["task_id"] == m and (r["progress"] or {}).get("message") ==
                                     "paused at a checkpoint" for r in lab.orch.view.status()["running"]))
            assert [r["held"] for r in lab.orch.view.status()["running"] if r["task_id"] == m] == [True]
            await lab.orch.controls.resume("gas", actor="dan")
            (tm,) = await lab.orch.waits.wait([m], timeout=30)
            assert tm.state is TaskState.succeeded, tm.error
            assert lab.store.final_result(m).outputs["uptake_mmol_g"] > 0
            assert lab.store.get_sample(sample_id).measurements == [m]
    asyncio.run(body())


def test_each_autonomy_level_gates_exactly_what_it_says(tmp_path: Path):
    async def body() -> None:
        echo_dear = {"type": "echo", "name": "dear", "duration_s": 0,
                     "capabilities": [{"name": "echo", "cost": 500.0, "duration_s": 1}]}
        async with Lab(tmp_path, [_phys(tmp_path, "synthesis_robot", "robot"), echo_dear],
                       default="supervised", cost_threshold=100) as lab:
            (dear,) = lab.orch.submit([TaskSpec(capability="echo", inputs={"x": 1})])
            new = await lab.synth(7)
            hot = await lab.synth(8, anneal_temperature_c=795.0)  # robot's safe max is 800
            waiting = {w["task_id"]: w["reason"] for w in lab.orch.view.approvals()}
            assert "above the supervised threshold" in waiting[dear]
            assert "recipe outside the set" in waiting[new]
            assert "within 5%" in waiting[hot] or "recipe outside" in waiting[hot]
            lab.orch.approve(new, actor="erin")
            (t,) = await lab.orch.waits.wait([new], timeout=20)
            assert t.state is TaskState.succeeded
            again = await lab.synth(7)  # a recipe already run successfully: runs on its own
            assert lab.orch.view.get_task(again).approval is ApprovalState.not_required
            lab.orch.controls.set_autonomy("autonomous", actor="erin", capability="echo")
            lab.orch.controls.set_autonomy("autonomous", actor="erin", backend="dear")
            (cheap_now,) = lab.orch.submit([TaskSpec(capability="echo", inputs={"x": 2})])
            assert lab.orch.view.get_task(cheap_now).approval is ApprovalState.not_required
            lab.orch.controls.set_autonomy("manual", actor="erin", capability="synthesize")
            manual = await lab.synth(7)  # known recipe, but manual means every task
            assert lab.orch.view.get_task(manual).approval is ApprovalState.waiting
            lab.orch.reject(manual, actor="erin", reason="not today")
            lab.orch.reject(hot, actor="erin", reason="too close to the limit")
            (tm,) = await lab.orch.waits.wait([manual], timeout=5)
            assert tm.state is TaskState.cancelled and tm.attempts == 0  # a rejected task never ran
            audit = [(e.actor, e.action) for e in lab.store.audit_entries() if e.actor == "erin"]
            assert audit == [("erin", "approve"), ("erin", "autonomy"), ("erin", "autonomy"), ("erin", "autonomy"),
                             ("erin", "reject"), ("erin", "reject")]
            await lab.orch.waits.wait([again], timeout=20)
    asyncio.run(body())


def test_interrupted_measurement_goes_to_review_and_a_manual_result_enters_like_a_measured_one(tmp_path: Path):
    async def body() -> None:
        faulty = _phys(tmp_path, "xrd", "xrd", faults={"fail_on": [1], "message": "detector tripped"})
        async with Lab(tmp_path, [_phys(tmp_path, "synthesis_robot", "robot"), faulty]) as lab:
            s = await lab.synth(2)
            (ts,) = await lab.orch.waits.wait([s], timeout=20)
            assert ts.state is TaskState.succeeded, ts.error
            sample_id = lab.store.final_result(s).outputs["sample_id"]
            (m,) = lab.orch.submit([TaskSpec(capability="characterize.xrd", inputs={"sample_id": sample_id})])
            await _until(lambda: lab.state(m) is TaskState.needs_review, timeout=20)
            (r,) = lab.orch.view.reviews()
            assert r["task_id"] == m and "detector tripped" in (r["why"] or "")
            assert r["sample"]["id"] == sample_id
            lab.orch.review(m, "result", actor="alice", outputs={"phases": {"rocksalt": 1.0}, "purity": 0.97,
                                                                 "main_phase": "rocksalt"})
            (tm,) = await lab.orch.waits.wait([m], timeout=5)
            assert tm.state is TaskState.succeeded
            res = lab.store.final_result(m)
            assert res.outputs["purity"] == 0.97 and res.provenance.entered_by == "alice"
            detail = lab.orch.view.sample_detail(sample_id)
            assert [x["task_id"] for x in detail["measurements"]] == [m]
            assert detail["measurements"][0]["entered_by"] == "alice"
            assert ("alice", "review_result") in [(e.actor, e.action) for e in lab.store.audit_entries()]
    asyncio.run(body())


def test_cancelling_a_running_synthesis_stops_the_robot_so_no_sample_appears_after(tmp_path: Path):
    """Bluesky's abort stops only what a plan moved; a triggered synthesis would run on and make a
    sample the store never hears of. The backend stops its instrument when it aborts a plan under way."""
    async def body() -> None:
        async with Lab(tmp_path, [_phys(tmp_path, "synthesis_robot", "robot")]) as lab:
            robot = lab.backends[0]
            (t,) = lab.orch.submit([TaskSpec(capability="synthesize",
                                             inputs={"recipe": _recipe(3, anneal_time_h=12.0)})])
            await _until(lambda: lab.state(t) is TaskState.running)
            await asyncio.sleep(0.5)  # the anneal is under way (4.5 s of wall time at this time scale)
            lab.orch.cancel(t, "erin", "wrong recipe")
            (tt,) = await lab.orch.waits.wait([t], timeout=20)
            assert tt.state is TaskState.cancelled
            await asyncio.sleep(6.0)  # past the end the synthesis would have had
            assert robot.lab.known_samples() == []  # type: ignore[attr-defined]
            assert lab.store.list_samples() == []
    asyncio.run(body())
