"""Memory never ahead of the journal (issue 12 item 5), on SQLite and on PostgreSQL.

The fault is real: a trigger installed from outside makes the database refuse every journal
insert, exactly as a full disk or a lost server would refuse the commit. The orchestrator runs as
its own process (``ppu orchestrator``). What must hold: no client got an ack for a task that is not
on disk, the orchestrator ends with a non-zero exit and a clear line, and a restart sees exactly
the journal.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from store_backends import store_url_fixture  # noqa: F401  (store_url: SQLite and PostgreSQL)
from transport_helpers import HB, free_port, lab_config, run, until

from ppu.errors import NotAllowed, PPUError
from ppu.models import TaskSpec, TaskState
from ppu.orchestrator import Orchestrator
from ppu.store import Store
from ppu.transport import AsyncPPUClient, EmbeddedLab

TESTS = Path(__file__).parent


def _break_journal(url: str) -> None:
    """Make the database itself refuse every journal insert (a real error inside the real commit)."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(sa.text("CREATE TRIGGER ppu_fail BEFORE INSERT ON journal "
                                 "BEGIN SELECT RAISE(ABORT, 'injected: the disk is gone'); END"))
        else:
            conn.execute(sa.text("CREATE FUNCTION ppu_fail() RETURNS trigger AS $$ BEGIN "
                                 "RAISE EXCEPTION 'injected: the disk is gone'; END $$ LANGUAGE plpgsql"))
            conn.execute(sa.text("CREATE TRIGGER ppu_fail BEFORE INSERT ON journal "
                                 "FOR EACH ROW EXECUTE FUNCTION ppu_fail()"))
    engine.dispose()


def _mend_journal(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER ppu_fail" + ("" if engine.dialect.name == "sqlite" else " ON journal")))
    engine.dispose()


def _spawn_orchestrator(cfg: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
               PPU_LOG="WARNING")
    return subprocess.Popen([sys.executable, "-m", "ppu.cli", "orchestrator", "--config", str(cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_a_failed_commit_ends_the_orchestrator_and_a_restart_sees_exactly_the_journal(
        tmp_path: Path, store_url: str):
    port = free_port()
    cfg = tmp_path / "lab.yaml"
    # No backend: tasks stay queued, so the store's rows are exactly what was accepted.
    cfg.write_text(yaml.safe_dump({"name": "faults", "run_dir": str(tmp_path), "store": store_url,
                                   "orchestrator": {"bind": f"tcp://127.0.0.1:{port}", "heartbeat_s": HB}}))
    addr = f"tcp://127.0.0.1:{port}"

    async def body() -> None:
        proc = _spawn_orchestrator(cfg)
        client = AsyncPPUClient(addr, timeout=5)
        acked: list[str] = []
        try:
            await until(lambda: client.ping(0.5), 20, "the orchestrator to answer")
            acked += await client.submit([{"capability": "echo", "inputs": {"x": i}} for i in range(5)])
            _break_journal(store_url)
            refused: list[BaseException] = []
            for i in range(3):  # each is refused: the first by the failed commit, the rest by a stopped journal
                try:
                    acked += await client.submit([{"capability": "echo", "inputs": {"x": 100 + i}}])
                except PPUError as exc:
                    refused.append(exc)
            assert len(refused) == 3, "a submit whose commit failed was acknowledged"
            assert "journal" in str(refused[0]), refused[0]
            rc = await asyncio.to_thread(proc.wait, 20)
            out = proc.stdout.read().decode() if proc.stdout else ""
            assert rc != 0, out
            assert "journal could not be written" in out and "Traceback" not in out, out
        finally:
            await client.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            if proc.stdout:
                proc.stdout.close()
        # Nothing acknowledged is missing and nothing unacknowledged is there.
        store = Store(store_url)
        assert {t.id for t in store.list_tasks()} == set(acked)
        store.close()
        _mend_journal(store_url)
        proc = _spawn_orchestrator(cfg)
        client = AsyncPPUClient(addr, timeout=5)
        try:
            await until(lambda: client.ping(0.5), 20, "the restarted orchestrator to answer")
            after = {t.id: t for t in await client.tasks()}
            assert set(after) == set(acked)
            assert all(t.state is TaskState.pending or t.state is TaskState.ready for t in after.values())
            more = await client.submit([{"capability": "echo", "inputs": {"x": 7}}])  # it journals again
            assert (await client.task(more[0])).id == more[0]
        finally:
            await client.close()
            proc.terminate()
            assert await asyncio.to_thread(proc.wait, 20) == 0
            if proc.stdout:
                proc.stdout.close()
    run(body(), 120)


class _BrokenSubscriber:
    """An event consumer that raises: an error that happens only *after* the commit."""

    def qsize(self) -> int:
        return 0

    def put_nowait(self, _event: Any) -> None:
        raise RuntimeError("a subscriber broke")


def test_an_error_after_a_durable_commit_keeps_the_acks(tmp_path: Path):
    lab = lab_config(tmp_path)

    async def body() -> None:
        embedded = EmbeddedLab(lab)
        async with embedded as client:
            orch = embedded.orch
            assert orch is not None
            listening, _ = orch.feed.subscribe()  # events are built once someone listens
            orch.feed._subscribers.append(_BrokenSubscriber())  # type: ignore[arg-type]
            ids = await client.submit([{"capability": "echo", "inputs": {"x": i}} for i in range(20)])
            assert len(ids) == 20  # answered, although carrying out the step raised afterwards
            assert orch.counters["carry_out_errors"] >= 1
            assert embedded.store is not None
            assert {t.id for t in embedded.store.list_tasks()} >= set(ids)
            orch.feed._subscribers.clear()
            assert not listening.empty()
            done = await client.wait(ids, timeout=20)
            assert all(t.state is TaskState.succeeded for t in done)
    run(body(), 60)


def test_a_submission_is_all_or_none_even_when_the_scheduler_would_refuse_half_way(tmp_path: Path):
    async def body() -> None:
        store = Store(f"sqlite:///{tmp_path / 'ppu.sqlite'}")
        orch = Orchestrator(store)
        await orch.start()
        try:
            [first] = orch.submit([TaskSpec(capability="echo", inputs={"x": 1})])
            with pytest.raises(NotAllowed):
                orch.submit([TaskSpec(capability="echo", inputs={"x": 2}, id="fresh"),
                             TaskSpec(capability="echo", inputs={"x": 3}, id=first)])
            assert orch.view.get_task("fresh") is None and store.get_task("fresh") is None
            assert [t.id for t in store.list_tasks()] == [first]
        finally:
            await orch.close()
            store.close()
    run(body(), 30)
