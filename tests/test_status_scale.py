"""A status costs the same after a million tasks as after ten; the Gantt chart's intervals stay bounded.

The orchestrator kept every closed busy interval for ever (one per batch: a flood of single-task
batches made one per task, ~300 bytes each), summed them all at every ``status``, and counted the
tasks per state with a query over every task ever run: 20,000 tasks kept 20,000 intervals and a
status took 17 ms of the orchestrator's loop, growing with every task the lab ran (the count alone
took ~65 ms over a million rows). Now the newest ``kept`` intervals are kept for the ``busy``
request, each backend's busy seconds are summed as intervals close, and the tasks per state are
counted from the store once at start and then moved by each transition.
"""

from __future__ import annotations

from pathlib import Path

from transport_helpers import run

from ppu.busy import BusyTime
from ppu.config import LabConfig, parse_lab
from ppu.models import TaskState
from ppu.transport.lab import EmbeddedLab


def _closed(busy: BusyTime, n: int, backend: str = "b", start: float = 0.0) -> None:
    for i in range(n):
        busy.open(backend, f"#{i}", start + i)
        busy.close(backend, f"#{i}", start + i + 0.5)


def test_intervals_are_bounded_and_totals_count_every_one() -> None:
    busy = BusyTime(started_at=0.0, kept=100)
    _closed(busy, 250)
    assert len(busy) == 100
    assert busy.seconds(now=300.0) == {"b": 125.0}  # 250 half-second batches, the 150 let go included
    kept = busy.since(0.0)
    assert [pos for pos, _ in kept] == list(range(150, 250))
    assert [iv["batch"] for _, iv in kept] == [f"#{i}" for i in range(150, 250)]


def test_positions_stay_as_old_intervals_go() -> None:
    """A cursor (the position after a page's last interval) goes on where the page ended, though older
    intervals were let go in between; one let go before it was read is skipped, none is read twice."""
    busy = BusyTime(started_at=0.0, kept=10)
    _closed(busy, 10)
    first = busy.since(0.0)[:4]
    assert [pos for pos, _ in first] == [0, 1, 2, 3]
    _closed(busy, 6, start=100.0)  # positions 10-15 arrive, 0-5 are let go
    rest = busy.since(0.0, cursor=first[-1][0] + 1)
    assert [pos for pos, _ in rest] == list(range(6, 16))
    assert busy.since(0.0, cursor=12) == busy.since(0.0)[6:]
    assert [iv["end"] for _, iv in busy.since(104.0)] == [104.5, 105.5]  # ended at or after `since`


def test_open_intervals_count_until_now_and_not_before_the_start() -> None:
    busy = BusyTime(started_at=10.0)
    busy.open("robot", "a", 4.0)  # opened before this orchestrator started: counted from its start
    busy.open("robot", "a", 12.0)  # assigned again: keeps its first start
    busy.open("xrd", "b", 15.0)
    assert busy.seconds(now=20.0) == {"robot": 10.0, "xrd": 5.0}
    busy.close("robot", "a", 18.0)
    busy.close("robot", "a", 19.0)  # a batch-mate leaving later does not open or close anything
    busy.close(None, "b", 19.0)  # no backend: nothing
    assert busy.seconds(now=30.0) == {"robot": 8.0, "xrd": 15.0}
    assert [iv["batch"] for _, iv in busy.since(0.0)] == ["a"]


def test_a_lab_past_the_kept_intervals_still_reports_its_utilisation(tmp_path: Path) -> None:
    """Through a running orchestrator: 120 single-task batches with 40 intervals kept. ``busy`` answers
    the newest 40 (in parts: a reply holds 4 kB), and ``status`` counts all 120."""
    lab = parse_lab({"name": "busy", "run_dir": str(tmp_path), "store": f"sqlite:///{tmp_path / 'lab.sqlite'}",
                     "orchestrator": {"max_message_bytes": 4096},
                     "backends": [{"type": "echo", "name": "e", "duration_s": 0.002}]})

    async def body() -> None:
        embedded = EmbeddedLab(lab)
        c = await embedded.start()
        try:
            orch = embedded.orch
            assert orch is not None
            orch.busy = BusyTime(orch.started_at, kept=40)
            ids = await c.submit([{"capability": "echo", "inputs": {"x": float(i)}} for i in range(120)])
            await c.wait(ids)
            intervals = await c.busy()
            assert len(intervals) == 40 and len({iv["batch"] for iv in intervals}) == 40
            assert [iv["end"] for iv in intervals] == sorted(iv["end"] for iv in intervals)
            total = orch.busy.seconds(orch.clock())["e"]
            assert total > sum(iv["end"] - iv["start"] for iv in intervals)  # the 80 let go still count
            [row] = (await c.status())["backends"]
            assert row["utilisation"] > 0
        finally:
            await embedded.close()

    run(body(), timeout=60)


def _lab(tmp: Path) -> LabConfig:
    return parse_lab({"name": "counts", "run_dir": str(tmp), "store": f"sqlite:///{tmp / 'lab.sqlite'}",
                      "backends": [{"type": "echo", "name": "e", "duration_s": 0.0, "fail_when_x": 13.0,
                                    "batch_size": 4}]})


def test_status_counts_tasks_per_state_as_the_store_has_them_across_a_restart(tmp_path: Path) -> None:
    """Succeeded, failed, cancelled and queued tasks (held back by a hold on the one backend), counted in
    memory, match a count over the store's rows, before and after the orchestrator restarts on the same
    store (whose count seeds the new one's)."""

    async def life(first: bool) -> None:
        embedded = EmbeddedLab(_lab(tmp_path))
        c = await embedded.start()
        try:
            orch, store = embedded.orch, embedded.store
            assert orch is not None and store is not None
            if not first:  # seeded from the store at start: two tasks still queued behind the hold
                assert (await c.status())["tasks"] == store.count_tasks()
                await c.hold("e", held=False)
                await c.wait(held)
            ids = await c.submit([{"capability": "echo", "inputs": {"x": float(i)}, "max_attempts": 1}
                                  for i in range(20)])
            await c.wait(ids)
            if first:
                await c.hold("e")
                held[:] = await c.submit([{"capability": "echo", "inputs": {"x": 1.0}} for _ in range(3)])
                await c.cancel(held.pop(0), reason="not needed")
            status = (await c.status())["tasks"]
            assert status == store.count_tasks()
            assert status[TaskState.failed.value] == (1 if first else 2) and status[TaskState.cancelled.value] == 1
            assert sum(status.values()) == (23 if first else 43)
        finally:
            await embedded.close()

    held: list[str] = []
    run(life(first=True), timeout=60)
    run(life(first=False), timeout=60)
