"""Suspenders from the lab file (Bluesky's own, on each instrument's RunEngine): a tripped interlock
suspends the running plan, `ppu status` says why, and the plan goes on, once, when it clears."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import phys, until
from ophyd.utils.errors import ReadOnlyError
from pydantic import ValidationError
from rich.console import Console

from ppu import cli
from ppu.backends import build_backend
from ppu.backends.suspenders import Interlock, SuspenderConfig, signal_of
from ppu.config import AutonomyConfig, OrchestratorConfig
from ppu.dashboard.view import LabView, Raw
from ppu.errors import ConfigError
from ppu.models import TaskSpec, TaskState
from ppu.orchestrator import LocalWorker, Orchestrator
from ppu.simulators.mof.world import candidate_pool
from ppu.store import Store, sqlite_url


@pytest.mark.parametrize(("entry", "says"), [
    ({"when": "high"}, "exactly one of `pv`"),
    ({"pv": "BL:DOOR", "signal": "gas.pressure", "when": "high"}, "exactly one of `pv`"),
    ({"pv": "BL:BEAM", "when": "below"}, "needs a `threshold`"),
    ({"pv": "BL:DOOR", "when": "high", "threshold": 1}, "takes no threshold"),
    ({"pv": "BL:BEAM", "when": "below", "threshold": 10, "resume_threshold": 5}, "at or above"),
    ({"pv": "BL:BEAM", "when": "above", "threshold": 10, "resume_threshold": 15}, "at or below"),
    ({"pv": "BL:BEAM", "when": "sideways"}, "when"),
    ({"signal": "not a path", "when": "high"}, "signal"),
])
def test_a_bad_suspender_entry_says_what_is_wrong(entry: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError) as e:
        SuspenderConfig.model_validate(entry)
    assert says in str(e.value)


def test_a_suspender_on_a_signal_the_backend_lacks_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        build_backend(phys(tmp_path, "gas_sorption", "gas", "suspenders",
                           suspenders=[{"signal": "gas.no_such_signal", "when": "high"}]))
    assert e.value.field == "suspenders.signal" and "gas" in (e.value.hint or "")


def test_a_tripped_interlock_suspends_the_plan_status_says_why_and_it_finishes_once(tmp_path: Path,
                                                                                     monkeypatch: pytest.MonkeyPatch):
    async def body() -> None:
        store = Store(sqlite_url(tmp_path / "ppu.sqlite"))
        orch = Orchestrator(store, OrchestratorConfig(heartbeat_s=0.05), AutonomyConfig())
        backends = [build_backend(phys(tmp_path, "synthesis_robot", "robot", "suspenders")),
                    build_backend(phys(tmp_path, "gas_sorption", "gas", "suspenders", time_scale=3000, suspenders=[
                        {"pv": "BL:DOOR", "when": "high", "message": "enclosure door open"}]))]
        worker = LocalWorker(orch, backends)
        await orch.start()
        await worker.start()
        try:
            recipe = candidate_pool(40, seed=2)[5].model_dump(mode="json")
            (s,) = orch.submit([TaskSpec(capability="synthesize", inputs={"recipe": recipe})])
            (ts,) = await orch.waits.wait([s], timeout=20)
            assert ts.state is TaskState.succeeded, ts.error
            sample_id = store.final_result(s).outputs["sample_id"]
            (m,) = orch.submit([TaskSpec(capability="measure.co2_uptake", inputs={"sample_id": sample_id,
                                                                                  "points": 6})])
            await until(lambda: orch.view.get_task(m).state is TaskState.running)  # type: ignore[union-attr]
            await asyncio.sleep(0.2)
            gas = backends[1]
            (door,) = [signal_of(x) for x in gas.suspenders]  # type: ignore[attr-defined]
            assert isinstance(door, Interlock)
            with pytest.raises(ReadOnlyError):
                door.put(1)  # read-only to plans, like the PV it stands for
            door.publish(1)  # the door opens

            def message() -> str:
                rows = [r for r in orch.view.status()["running"] if r["task_id"] == m]
                return str((rows[0]["progress"] or {}).get("message") or "") if rows else ""

            await until(lambda: message() == "suspended: enclosure door open")
            await asyncio.sleep(0.3)
            assert orch.view.get_task(m).state is TaskState.running  # type: ignore[union-attr]
            out = Console(record=True, width=200)
            monkeypatch.setattr(cli, "console", out)
            cli._print_status(orch.view.status())
            assert "suspended: enclosure door open" in out.export_text()
            # the dashboard's backend card says it too
            live = [t for t in [orch.view.get_task(m)] if t is not None]
            raw = Raw(now=time.time(), status=orch.view.status(), live=live, approvals=[], reviews=[], busy=[],
                      samples=[])
            [card] = [b for b in LabView({}).snapshot(raw)["backends"] if b["name"] == "gas"]
            assert [c["waiting"] for c in card["current"]] == ["suspended: enclosure door open"]
            door.publish(0)  # closed again: the plan goes on from its checkpoint
            (tm,) = await orch.waits.wait([m], timeout=30)
            assert tm.state is TaskState.succeeded, tm.error
            assert store.final_result(m).outputs["uptake_mmol_g"] > 0
            assert len(store.results_for(m)) == 1
            assert [j["dst"] for j in store.journal_for(m)].count("running") == 1
            assert store.get_sample(sample_id).measurements == [m]
        finally:
            await worker.close()
            await orch.close()
            store.close()
    asyncio.run(body())
