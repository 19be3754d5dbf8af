"""What a screen says when it gives up, and what it takes as rows (a user trial's defects).

A block failed while the 395 after it had all succeeded: the screen cancelled all 395 (each refused
by the orchestrator, which counted error_not_allowed: 395) and said "395 block(s) still queued or
running were cancelled". A screen that ran out of time said "did not all end within the 0 s given"
(the time left, not the timeout the user gave). A pandas DataFrame raised a raw ValueError.

The screens here run against a scripted orchestrator (a function answering each call), with a
scripted clock where time matters: no sockets, no waiting.
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

import numpy as np
import pytest

from ppu import protocol as p
from ppu.artifacts import npz_bytes, sha256
from ppu.errors import BackendError, NotAllowed, ValidationFailed
from ppu.transport import client as client_module
from ppu.transport import ops
from ppu.transport.client import AsyncPPUClient

CAP = "predict.y"


class Clock:
    """Seconds that pass only when the scripted orchestrator says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class Lab:
    """Answers a screen's calls. ``now``: each block's state when the screen gives up (default
    succeeded); block ``fail`` ends failed; the wait for block ``stuck`` times out (its seconds pass
    on ``clock``), and each other wait takes ``wait_s`` of it."""

    def __init__(self, now: dict[int, str] | None = None, fail: int | None = None, stuck: int | None = None,
                 clock: Clock | None = None, wait_s: float = 0.0, ends_meanwhile: set[int] | None = None):
        self.now = now or {}
        self.fail, self.stuck, self.clock, self.wait_s = fail, stuck, clock, wait_s
        self.ends_meanwhile = ends_meanwhile or set()  # running when asked, ended by the time it is cancelled
        self.calls: list[Any] = []
        self.rows: dict[str, int] = {}

    def index(self, tid: str) -> int:
        return list(self.rows).index(tid)

    def state(self, tid: str) -> str:
        i = self.index(tid)
        return "failed" if i == self.fail else self.now.get(i, "succeeded")

    def task(self, tid: str, state: str) -> dict[str, Any]:
        return {"id": tid, "capability": CAP, "action": "repeatable", "state": state, "attempts": 1,
                "error": "row(s) 3: NaN" if state == "failed" else None}

    def __call__(self, call: ops.Call) -> Any:
        msg = call.msg
        self.calls.append(msg)
        if isinstance(msg, p.Status):
            return {"backends": [{"name": "b", "capabilities": [CAP]}]}
        if isinstance(msg, p.Submit):
            tid = f"t-{len(self.rows)}"
            self.rows[tid] = msg.tasks[0].block.rows  # type: ignore[union-attr]
            return [tid]
        if isinstance(msg, p.Wait):
            [tid] = msg.task_ids
            if self.index(tid) == self.stuck:
                if self.clock is not None:
                    self.clock.now += msg.timeout or 0.0
                raise p.WaitTimeout(f"the tasks did not all end within {msg.timeout}s",
                                    hint="wait again, or check them with ppu tasks")
            if self.clock is not None:
                self.clock.now += self.wait_s
            return p.Reply(data=[self.task(tid, "failed" if self.index(tid) == self.fail else "succeeded")])
        if isinstance(msg, p.GetTask):
            return self.task(msg.task_id, self.state(msg.task_id))
        if isinstance(msg, p.GetResult):
            if self.state(msg.task_id) == "failed":
                return {"task_id": msg.task_id, "attempt": 1, "status": "failed", "error": "row(s) 3: NaN"}
            raw = npz_bytes({"y": np.zeros(self.rows[msg.task_id])})
            return {"task_id": msg.task_id, "attempt": 1, "status": "succeeded", "outputs": {},
                    "artifact": {"rows": self.rows[msg.task_id], "columns": ["y"], "sha256": sha256(raw)}}
        if isinstance(msg, p.GetArtifact):
            rows = next(n for n in self.rows.values() if sha256(npz_bytes({"y": np.zeros(n)})) == msg.sha256)
            return p.Reply().carrying({"npz": np.frombuffer(npz_bytes({"y": np.zeros(rows)}), np.uint8)})
        if isinstance(msg, p.Cancel):
            i = self.index(msg.task_id)
            if i in self.ends_meanwhile:
                self.now[i] = "succeeded"
            state = self.state(msg.task_id)
            if state in ("succeeded", "failed", "cancelled"):  # as the scheduler refuses it
                raise NotAllowed(f"task {msg.task_id} already ended ({state})")
            self.now[i] = "cancelled"
            return None
        raise AssertionError(f"unexpected call {msg!r}")

    def cancelled(self) -> list[str]:
        return [m.task_id for m in self.calls if isinstance(m, p.Cancel)]


def _screen(lab: Lab, rows: int, block_rows: int = 10, timeout: float | None = None, columns: Any = None) -> Any:
    cols = columns if columns is not None else {"a": np.arange(rows, dtype=np.float64)}
    return ops.drive(ops.screen(CAP, cols, block_rows, timeout, {}, 1.0, None), lab)


# ---- A. a failed block cancels only the blocks not yet ended, and says how many of each ----------------

def test_the_user_trials_failed_block_cancels_nothing_when_the_rest_had_all_succeeded() -> None:
    lab = Lab(fail=0)
    with pytest.raises(BackendError) as err:
        _screen(lab, 200, block_rows=10)  # 20 blocks: the first fails, the 19 after it had all succeeded
    assert lab.cancelled() == []  # cancelling an ended task is refused (and counted) by the orchestrator
    text = err.value.message
    assert "still queued or running were cancelled" not in text
    assert "of the 19 block(s) after it, all 19 had already finished, so none was cancelled" in text, text
    assert err.value.data["cancelled"] == [] and len(err.value.data["finished"]) == 19
    assert "wait again" not in (err.value.hint or "")


def test_a_failed_block_cancels_the_blocks_not_ended_and_counts_those_that_had_finished() -> None:
    lab = Lab(fail=1, now={2: "succeeded", 3: "running", 4: "assigned", 5: "ready", 6: "pending"})
    with pytest.raises(BackendError) as err:
        _screen(lab, 70, block_rows=10)  # 7 blocks, the second fails
    assert lab.cancelled() == ["t-3", "t-4", "t-5", "t-6"]
    assert "of the 5 block(s) after it, 4 not yet ended were cancelled, 1 had already finished" \
        in err.value.message, err.value.message
    assert err.value.data["cancelled"] == ["t-3", "t-4", "t-5", "t-6"] and err.value.data["finished"] == ["t-2"]
    assert err.value.data["task_ids"] == [f"t-{i}" for i in range(7)] and err.value.data["left"] == []


def test_a_block_that_ends_before_its_cancel_arrives_is_counted_as_finished() -> None:
    lab = Lab(fail=0, now={1: "running", 2: "running"}, ends_meanwhile={1})
    with pytest.raises(BackendError) as err:
        _screen(lab, 30, block_rows=10)
    assert lab.cancelled() == ["t-1", "t-2"]
    assert err.value.data["cancelled"] == ["t-2"] and err.value.data["finished"] == ["t-1"]
    assert "1 not yet ended was cancelled, 1 had already finished" in err.value.message, err.value.message


def test_blocks_left_behind_when_the_orchestrator_stops_answering_are_named() -> None:
    lab = Lab(fail=0, now={1: "running", 2: "ready", 3: "ready"})

    def carry(call: ops.Call) -> Any:
        if isinstance(call.msg, p.GetTask) and call.msg.task_id == "t-2":
            raise p.NotAnswering("the orchestrator at tcp://x did not answer within 1s")
        return lab(call)

    with pytest.raises(BackendError) as err:
        ops.drive(ops.screen(CAP, {"a": np.zeros(40)}, 10, None, {}, 1.0, None), carry)
    assert lab.cancelled() == ["t-1"]
    assert err.value.data["left"] == ["t-2", "t-3"]
    assert "2 could not be cancelled (the orchestrator did not answer)" in err.value.message


# ---- A. a screen out of time names the timeout the user gave -------------------------------------------

@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(ops, "time", types.SimpleNamespace(monotonic=c.monotonic))
    monkeypatch.setattr(client_module, "time", types.SimpleNamespace(monotonic=c.monotonic))
    return c


def test_a_screen_out_of_time_names_the_users_timeout_not_the_time_left(clock: Clock) -> None:
    """Block 1 took 4 of the 5 s; the wait for block 2 timed out with 1 s left: the user gave 5."""
    lab = Lab(stuck=1, clock=clock, wait_s=4.0, now={1: "running", 2: "ready", 3: "succeeded"})
    with pytest.raises(p.WaitTimeout) as err:
        _screen(lab, 40, block_rows=10, timeout=5.0)
    text = err.value.message
    assert text.startswith("the blocks did not all end within the 5 s given (waiting for block 2 of 4 (rows 10-19))")
    assert "1 s given" not in text and "0 s given" not in text
    assert "of the 3 block(s) not yet fetched, 2 not yet ended were cancelled, 1 had already finished" in text, text
    assert lab.cancelled() == ["t-1", "t-2"]
    assert "wait again" not in (err.value.hint or "") and "longer timeout" in (err.value.hint or "")


def test_a_wait_split_in_slices_names_the_users_timeout(clock: Clock) -> None:
    lab = Lab(stuck=0, clock=clock)
    lab.rows["t-0"] = 1
    with pytest.raises(p.WaitTimeout) as err:
        ops.drive(ops.wait(["t-0"], 70.0, 1.0), lab)  # slices of 30, 30 and 10 s
    assert err.value.message == "the tasks did not all end within the 70 s given"
    with pytest.raises(p.WaitTimeout) as err:
        ops.drive(ops.wait(["t-0"], 20.0, 1.0, given=50.0), lab)  # 20 s left of the 50 given
    assert err.value.message == "the tasks did not all end within the 50 s given"


class ScriptedAsyncClient(AsyncPPUClient):
    """The async client with its requests answered by a scripted lab, no socket."""

    def __init__(self, lab: Lab) -> None:
        super().__init__("tcp://127.0.0.1:1", timeout=1.0)
        self.lab = lab

    async def request(self, msg: Any, timeout: float | None = None, *, whole: bool = False,
                      again_on_drop: bool = False) -> Any:
        if isinstance(msg, p.Submit):  # the async run submits several specs in one request
            ids = [s.id for s in msg.tasks]
            for tid in ids:
                self.lab.rows[str(tid)] = 1
            return ids
        reply = self.lab(ops.Call(msg, timeout, whole))
        return reply if whole or not isinstance(reply, p.Reply) else reply.data


def test_the_async_run_past_its_first_slice_names_the_users_timeout(clock: Clock) -> None:
    """The async run's first wait asks for 30 s; the rest went out as a wait of the time left (70 s),
    which named that as the timeout given."""
    lab = Lab(stuck=0, clock=clock)

    async def go() -> None:
        c = ScriptedAsyncClient(lab)
        try:
            await c.run([{"capability": "echo", "inputs": {"x": 1.0}}], timeout=100.0)
        finally:
            await c.close()

    with pytest.raises(p.WaitTimeout) as err:
        asyncio.run(go())
    assert err.value.message == "the tasks did not all end within the 100 s given"
    assert [m.timeout for m in lab.calls if isinstance(m, p.Wait)] == [30.0, 30.0, 30.0, 10.0]


def test_the_async_runs_only_slice_names_the_users_timeout_as_the_others_do(clock: Clock) -> None:
    lab = Lab(stuck=0, clock=clock)

    async def go() -> None:
        c = ScriptedAsyncClient(lab)
        try:
            await c.run([{"capability": "echo", "inputs": {"x": 1.0}}], timeout=5.0)
        finally:
            await c.close()

    with pytest.raises(p.WaitTimeout) as err:
        asyncio.run(go())
    assert err.value.message == "the tasks did not all end within the 5 s given"


# ---- F. rows as pandas columns --------------------------------------------------------------------------

def test_a_pandas_dataframe_or_a_mapping_of_series_screens_as_numpy_columns_do() -> None:
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"f0": np.arange(25, dtype=np.float64), "f1": np.ones(25, dtype=np.int64)})
    for columns in (df, {"f0": df["f0"], "f1": df["f1"]}, {"f0": list(range(25)), "f1": df["f1"].to_numpy()}):
        lab = Lab()
        out, results = _screen(lab, 25, block_rows=10, columns=columns)
        assert len(out["y"]) == 25 and len(results) == 3
        sent = [m for m in lab.calls if isinstance(m, p.Submit)]
        assert [b.name for b in sent[0].blobs] == ["0:f0", "0:f1"]
        assert sent[2].arrays()["0:f0"].tolist() == [20.0, 21.0, 22.0, 23.0, 24.0]


def test_what_is_not_columns_is_refused_naming_columns() -> None:
    pd = pytest.importorskip("pandas")
    with pytest.raises(ValidationFailed) as err:
        _screen(Lab(), 3, columns=pd.Series([1.0, 2.0, 3.0]))
    assert err.value.field == "columns" and "not Series" in err.value.message
    with pytest.raises(ValidationFailed) as err:
        _screen(Lab(), 3, columns=[np.zeros(3)])
    assert err.value.field == "columns" and "DataFrame" in err.value.message
    twice = pd.DataFrame([[1.0, 2.0]], columns=["f", "f"])
    with pytest.raises(ValidationFailed) as err:
        _screen(Lab(), 1, columns=twice)
    assert err.value.field == "columns.f" and "two columns are named 'f'" in err.value.message
    with pytest.raises(ValidationFailed) as err:  # a column of text: refused by its dtype, as a numpy one is
        _screen(Lab(), 2, columns=pd.DataFrame({"name": ["a", "b"]}))
    assert err.value.field == "columns.name" and "dtype" in err.value.message
