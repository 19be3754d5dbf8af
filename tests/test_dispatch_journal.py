"""What one task costs the journal (issue 17.4), and the lab setting for process-crash durability.

A task pays two commits on its way: accepted (with its assignment, in the same transaction) and its
result. The start of `repeatable` work rides with the next commit; the start of `once` work is
written at once. The store's ``durability`` picks what a commit survives.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sched_helpers import ok, spec, task

from ppu import journal as journal_mod
from ppu.backends.base import TaskRun
from ppu.config import OrchestratorConfig, parse_lab
from ppu.errors import ConfigError, PPUError, StoreError
from ppu.events import Cancel, Submit
from ppu.models import ActionClass, Task, TaskSpec, TaskState
from ppu.orchestrator import Orchestrator
from ppu.scheduler import Scheduler
from ppu.store import Rows, Store, sqlite_url


class Link:
    """A worker link that only records what it was sent."""

    def __init__(self) -> None:
        self.assigned: list[tuple[str, int]] = []

    async def assign(self, backend: str, batch_id: str, runs: list[TaskRun], reg: str = "", seq: int = 0) -> None:
        self.assigned += [(r.task_id, r.attempt) for r in runs]

    async def abort(self, backend: str, task_id: str, attempt: int = 0) -> None:
        pass

    async def pause(self, backend: str, defer: bool = True) -> str:
        return "paused"

    async def resume(self, backend: str) -> str:
        return "running"


class CountingStore(Store):
    """The real store, counting its transactions."""

    def __init__(self, url: str, durability: str = "power"):
        super().__init__(url, durability)
        self.writes: list[Rows] = []

    def write(self, rows: Rows) -> None:
        if rows:
            self.writes.append(rows)
        super().write(rows)


def _moves(store: Store, tid: str) -> list[str]:
    return [j["dst"] for j in store.journal_for(tid)]


async def _orch(store: Store) -> tuple[Orchestrator, Link]:
    orch = Orchestrator(store, OrchestratorConfig(heartbeat_s=30))  # no heartbeats needed
    await orch.start()
    link = Link()
    orch.register(spec("robot", ["echo", "synthesize"], kind="physical"), link)
    return orch, link


def test_the_body_the_store_keeps_is_the_task():
    s = Scheduler()
    step = s.handle(Submit(task("t1", inputs={"x": 1.5, "nested": {"a": [1, 2]}}, priority=3, campaign="c",
                                deadline=99.0, max_attempts=5, sample_id="s-1", submitted_by="alice"), 1.0))
    rec = step.records["t1"]
    assert Task.model_validate_json(rec.body_json()) == rec.to_task()
    s.handle(Cancel("t1", 2.0, "no longer wanted"))  # the fields that change are written anew, the rest once
    assert rec.state is TaskState.cancelled and rec.error == "no longer wanted"
    assert Task.model_validate_json(rec.body_json()) == rec.to_task()


def test_a_body_the_fast_encoder_cannot_write_is_written_all_the_same():
    s = Scheduler()
    big = 2 ** 70  # beyond orjson's 64-bit integers: the standard library writes it
    step = s.handle(Submit(task("t1", inputs={"big": big, "name": "Kupfer \u00fc"}), 1.0))
    rec = step.records["t1"]
    assert Task.model_validate_json(rec.body_json()).inputs == {"big": big, "name": "Kupfer \u00fc"}


def test_a_wait_answers_from_memory_and_from_the_store_alike(tmp_path: Path):
    """The last ``kept`` ended tasks are answered from their records, older ones from the store:
    both as Task and as the JSON the server sends, and all four agree."""

    async def body() -> None:
        store = Store(sqlite_url(tmp_path / "ppu.sqlite"))
        orch, link = await _orch(store)
        orch.waits.kept = 2
        ids = orch.submit([TaskSpec(capability="echo", inputs={"x": i}) for i in range(5)])
        for _ in ids:  # one slot: each is assigned once the one before has ended
            await asyncio.sleep(0)
            tid, attempt = link.assigned[-1]
            orch.finished(ok(tid, attempt, y=2.0), "robot")
        assert list(orch.waits.records) == ids[-2:]  # the oldest let go
        for tid in (ids[0], ids[-1]):  # from the store, from memory
            [t] = await orch.waits.wait([tid], timeout=5)
            [raw] = await orch.waits.wait_json([tid], timeout=5)
            assert t.state is TaskState.succeeded and Task.model_validate_json(raw) == t == store.get_task(tid)
        tasks = await orch.waits.wait(ids, timeout=5)
        assert [t.id for t in tasks] == ids
        await orch.close()
        store.close()
    asyncio.run(body())


def test_a_repeatable_task_pays_two_commits_and_its_start_rides_with_the_result(tmp_path: Path):
    async def body() -> None:
        store = CountingStore(sqlite_url(tmp_path / "ppu.sqlite"))
        orch, link = await _orch(store)
        before = len(store.writes)
        [tid] = orch.submit([TaskSpec(capability="echo", inputs={"x": 1})])
        await asyncio.sleep(0)  # the assignment leaves (after the commit)
        assert link.assigned == [(tid, 1)] and len(store.writes) == before + 1
        assert _moves(store, tid) == ["pending", "ready", "assigned"]  # accepted and assigned: one commit
        orch.started(tid, 1, "robot")
        assert len(store.writes) == before + 1  # no commit of its own
        assert _moves(store, tid) == ["pending", "ready", "assigned"]
        orch.finished(ok(tid), "robot")
        assert len(store.writes) == before + 2
        assert _moves(store, tid) == ["pending", "ready", "assigned", "running", "succeeded"]
        await orch.close()
        store.close()
    asyncio.run(body())


def test_the_start_of_once_work_is_journaled_at_once(tmp_path: Path):
    async def body() -> None:
        store = CountingStore(sqlite_url(tmp_path / "ppu.sqlite"))
        orch, _ = await _orch(store)
        [tid] = orch.submit([TaskSpec(capability="synthesize",
                                      inputs={"recipe": {"composition": {"Cu": 0.5, "O": 0.5}}})])
        assert orch.view.get_task(tid).action is ActionClass.once
        n = len(store.writes)
        orch.started(tid, 1, "robot")
        assert len(store.writes) == n + 1
        assert _moves(store, tid)[-1] == "running"
        await orch.close()
        store.close()
    asyncio.run(body())


def test_a_deferred_start_is_written_by_the_clock_when_nothing_else_commits(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(journal_mod, "DEFER_MAX_S", 0.05)

    async def body() -> None:
        store = CountingStore(sqlite_url(tmp_path / "ppu.sqlite"))
        orch, _ = await _orch(store)
        [tid] = orch.submit([TaskSpec(capability="echo", inputs={"x": 1})])
        orch.started(tid, 1, "robot")
        assert _moves(store, tid)[-1] == "assigned"
        for _ in range(200):  # the clock ticks at least every 0.5 s
            if _moves(store, tid)[-1] == "running":
                break
            await asyncio.sleep(0.05)
        assert _moves(store, tid) == ["pending", "ready", "assigned", "running"]
        await orch.close()
        store.close()
    asyncio.run(body())


def test_a_start_lost_in_a_crash_is_rebuilt_as_assigned_and_the_result_still_lands(tmp_path: Path):
    url = sqlite_url(tmp_path / "ppu.sqlite")

    async def body() -> None:
        store = Store(url)
        orch, _ = await _orch(store)
        [tid] = orch.submit([TaskSpec(capability="echo", inputs={"x": 1})])
        orch.started(tid, 1, "robot")
        store.release_writer()  # the process died here: no close, the deferred start never written
        store.engine.dispose()

        store2 = Store(url)
        orch2 = Orchestrator(store2, OrchestratorConfig(heartbeat_s=0.05))
        await orch2.start()
        t = orch2.view.get_task(tid)
        assert t is not None and t.state is TaskState.assigned and t.backend == "robot"
        orch2.register(spec("robot", ["echo", "synthesize"], kind="physical"), Link(), [tid])  # still holds it
        assert orch2.view.get_task(tid).state is TaskState.assigned
        orch2.finished(ok(tid), "robot")
        assert orch2.view.get_task(tid).state is TaskState.succeeded
        assert _moves(store2, tid) == ["pending", "ready", "assigned", "succeeded"]
        assert [r.attempt for r in store2.results_for(tid)] == [1]
        await orch2.close()
        store2.close()
    asyncio.run(body())


# ---- the lab setting ------------------------------------------------------------------------------


def _synchronous(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.exec_driver_sql("PRAGMA synchronous").scalar() or -1)


def test_store_durability_in_the_lab_file(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'ppu.sqlite'}"
    short = parse_lab({"name": "a", "store": url})
    assert short.store_url() == url and short.store_durability() == "power"
    assert parse_lab({"name": "a"}).store_durability() == "power"
    lab = parse_lab({"name": "a", "run_dir": str(tmp_path), "store": {"durability": "process"}})
    assert lab.store_durability() == "process" and lab.store_url().endswith("ppu.sqlite")
    power, process = Store(url), Store(f"sqlite:///{tmp_path / 'other.sqlite'}", "process")
    assert (_synchronous(power), _synchronous(process)) == (2, 1)  # FULL, NORMAL
    power.close()
    process.close()


@pytest.mark.parametrize("store, field, words", [
    ({"durability": "crash"}, "store.durability", "power"),
    ({"url": "postgresql+psycopg://db/ppu", "durability": "process"}, "store", "SQLite only"),
    ({"url": "sqlite:///x", "fsync": False}, "store.fsync", "Extra"),
])
def test_a_bad_store_setting_names_the_field(store: dict[str, Any], field: str, words: str):
    with pytest.raises(ConfigError) as ei:
        parse_lab({"name": "a", "store": store})
    assert ei.value.field == field and words.lower() in str(ei.value).lower()


def test_the_store_refuses_process_durability_off_sqlite():
    with pytest.raises(StoreError) as ei:
        Store("postgresql+psycopg://nobody@localhost/none", "process")
    assert ei.value.field == "store.durability"


# ---- submit and wait in one round trip ------------------------------------------------------------


def test_run_sends_its_wait_behind_the_submit_and_raises_the_submits_error(tmp_path: Path):
    from transport_helpers import lab_config, run

    from ppu.errors import UnknownCapabilityError
    from ppu.transport import EmbeddedLab

    async def body() -> None:
        async with EmbeddedLab(lab_config(tmp_path)) as client:
            [t] = await client.run({"capability": "echo", "inputs": {"x": 2}}, timeout=10)
            assert t.state is TaskState.succeeded and t.id.startswith("t-")
            mine = await client.run([{"capability": "echo", "inputs": {"x": i}, "id": f"mine-{i}"} for i in range(3)],
                                    timeout=10)
            assert [x.id for x in mine] == ["mine-0", "mine-1", "mine-2"]
            with pytest.raises(UnknownCapabilityError) as ei:  # the submission's error, not the wait's
                await client.run({"capability": "teleport"}, timeout=10)
            assert "teleport" in str(ei.value)
            with pytest.raises(PPUError) as dup:  # an id that exists: refused, nothing waited for
                await client.run({"capability": "echo", "id": "mine-0"}, timeout=10)
            assert "already exists" in str(dup.value)
            assert len(await client.tasks()) == 4
    run(body(), 60)


@pytest.mark.parametrize("durability", ["power", "process"])
def test_where_a_group_is_written_and_who_checkpoints(tmp_path: Path, durability: str,
                                                       monkeypatch: pytest.MonkeyPatch):
    """power: groups are fsynced on the journal thread. process: written on the loop (no fsync to wait
    for), with SQLite's own checkpoints off and the orchestrator's on the journal thread instead."""
    import threading

    monkeypatch.setattr(journal_mod, "CHECKPOINT_EVERY", 4)

    class Watched(CountingStore):
        def __init__(self, url: str, durability: str):
            super().__init__(url, durability)
            self.threads: set[str] = set()
            self.checkpoints: list[str] = []

        def write(self, rows: Rows) -> None:
            self.threads.add(threading.current_thread().name)
            super().write(rows)

        def checkpoint(self) -> None:
            self.checkpoints.append(threading.current_thread().name)
            super().checkpoint()

    async def body() -> None:
        store = Watched(sqlite_url(tmp_path / "ppu.sqlite"), durability)
        orch, _ = await _orch(store)
        store.threads.clear()
        for i in range(10):
            async with orch.grouped():
                orch.submit([TaskSpec(capability="echo", inputs={"x": i})])
        on_loop = threading.current_thread().name
        with store.engine.connect() as conn:
            auto = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
        if durability == "process":
            assert store.threads == {on_loop} and auto == 0
            assert store.checkpoints and on_loop not in store.checkpoints
        else:
            assert on_loop not in store.threads and auto > 0 and store.checkpoints == []
        await orch.close()
        store.close()
    asyncio.run(body())


def test_ids_sort_by_the_time_they_were_made_and_never_collide(monkeypatch: pytest.MonkeyPatch):
    """Time first (the store's indexes take inserts on their last pages), then 52 random bits."""
    import time as time_mod

    from ppu.models import new_id
    now = [1_765_000_000_000_000_000]
    monkeypatch.setattr(time_mod, "time_ns", lambda: now[0])
    same_ms = {new_id() for _ in range(10_000)}
    assert len(same_ms) == 10_000 and len({i[:13] for i in same_ms}) == 1  # one millisecond, all apart
    now[0] += 1_000_000  # a millisecond later
    later = new_id()
    assert all(i < later for i in same_ms) and later.startswith("t-") and len(later) == 26
    assert TaskSpec(capability="echo", id=later).id == later  # a valid id for a client to send
