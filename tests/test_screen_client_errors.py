"""What a screening client refuses, and how it says so: before sending, as a ppu.errors error naming
the argument; a failed block named in the caller's numbering; a screen that would wait forever.

Most cases drive the client's operations (``ppu.transport.ops``) against a scripted orchestrator,
a function answering each call, so they need no sockets; the repro of the user trial runs through
an EmbeddedLab with the torch backend.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_digital_columnar import CAP, candidates, torch_entry
from transport_helpers import free_port, lab_config
from typer.testing import CliRunner

from ppu import protocol as p
from ppu.artifacts import npz_bytes, sha256
from ppu.cli import app
from ppu.digital.nets import mlp
from ppu.drivers.mof.featurize import N_FEATURES, candidate_columns
from ppu.errors import BackendError, PPUError, UnknownCapabilityError, ValidationFailed
from ppu.transport import ops
from ppu.transport.client import AsyncPPUClient, PPUClient
from ppu.transport.lab import EmbeddedLab


class ScriptedLab:
    """Answers the calls of an operation as an orchestrator would; block ``fail`` (0-based) fails."""

    def __init__(self, offers: tuple[str, ...] = (CAP,), fail: int | None = None, wait_times_out: bool = False,
                 non_finite: dict[int, int] | None = None, live: tuple[int, ...] = ()):
        self.offers, self.fail, self.wait_times_out = offers, fail, wait_times_out
        self.live = live  # blocks (0-based) not yet ended when the screen gives up: the ones it cancels
        self.non_finite = non_finite or {}  # block (0-based) -> rows its model answered with NaN or inf
        self.calls: list[Any] = []
        self.blocks: dict[str, int] = {}  # task id -> rows

    def task(self, tid: str) -> dict[str, Any]:
        failed = self.fail is not None and list(self.blocks).index(tid) == self.fail
        return {"id": tid, "capability": CAP, "action": "repeatable", "state": "failed" if failed else "succeeded",
                "attempts": 1, "error": "row(s) 5: NaN" if failed else None}

    def __call__(self, call: ops.Call) -> Any:
        msg = call.msg
        self.calls.append(msg)
        if isinstance(msg, p.Status):
            return {"backends": [{"name": "b", "capabilities": list(self.offers)}]}
        if isinstance(msg, p.Submit):
            tid = f"t-{len(self.blocks)}"
            self.blocks[tid] = msg.tasks[0].block.rows  # type: ignore[union-attr]
            return [tid]
        if isinstance(msg, p.Wait):
            if self.wait_times_out:
                raise p.WaitTimeout("the tasks did not all end within 1s")
            tasks = [self.task(t) for t in msg.task_ids]
            return p.Reply(data=tasks) if call.whole else tasks  # a wait reads the Reply: it may say next
        if isinstance(msg, p.GetResult):
            t = self.task(msg.task_id)
            if t["state"] == "failed":
                return {"task_id": msg.task_id, "attempt": 1, "status": "failed", "error": t["error"]}
            raw = npz_bytes({"y": np.zeros(self.blocks[msg.task_id])})
            bad = self.non_finite.get(list(self.blocks).index(msg.task_id), 0)
            return {"task_id": msg.task_id, "attempt": 1, "status": "succeeded", "outputs": {"non_finite_rows": bad},
                    "artifact": {"rows": self.blocks[msg.task_id], "columns": ["y"], "sha256": sha256(raw)}}
        if isinstance(msg, p.GetArtifact):
            sha = msg.sha256
            rows = next(n for n in self.blocks.values()
                        if sha256(npz_bytes({"y": np.zeros(n)})) == sha)
            return p.Reply().carrying({"npz": np.frombuffer(npz_bytes({"y": np.zeros(rows)}), np.uint8)})
        if isinstance(msg, p.GetTask):
            t = self.task(msg.task_id)
            return {**t, "state": "ready"} if list(self.blocks).index(msg.task_id) in self.live else t
        if isinstance(msg, p.Cancel):
            return None
        raise AssertionError(f"unexpected call {msg!r}")


def _screen(lab: ScriptedLab, columns: dict[str, np.ndarray], block_rows: Any = 20, timeout: float | None = None,
            max_blob_bytes: int | None = None, **spec: Any) -> Any:
    limit = {} if max_blob_bytes is None else {"max_blob_bytes": max_blob_bytes}
    return ops.drive(ops.screen(CAP, columns, block_rows, timeout, spec, 1.0, None, **limit), lab)


def _cols(rows: int = 50) -> dict[str, np.ndarray]:
    return {"a": np.arange(rows, dtype=np.float64), "b": np.ones(rows, dtype=np.float32)}


def _nobody() -> PPUClient:
    return PPUClient(f"tcp://127.0.0.1:{free_port()}", timeout=0.5)


# ---- 1. a block over the blob limit is refused before it leaves ------------------------------------

def test_a_block_over_the_blob_limit_is_refused_naming_block_rows_before_anything_is_sent() -> None:
    lab = ScriptedLab()
    with pytest.raises(ValidationFailed) as err:
        _screen(lab, _cols(50), block_rows=40, max_blob_bytes=300)  # 40 rows x 12 bytes = 480
    assert err.value.field == "block_rows"
    assert "480 bytes" in err.value.message and "limit of 300 bytes" in err.value.message
    assert err.value.hint == "pass block_rows=25 or fewer"
    assert lab.calls == []
    out, results = _screen(lab, _cols(50), block_rows=25, max_blob_bytes=300)  # what the hint says fits
    assert len(out["y"]) == 50 and len(results) == 2


def test_the_user_trials_oversize_screen_fails_at_once_not_after_60s() -> None:
    """561 MB of rows in one block: the default limit (512 MiB) refuses it before sending, instead of
    ZMQ dropping it and the client saying the orchestrator does not answer."""
    huge = {"x": np.broadcast_to(np.zeros(1), (70_000_000,))}  # 560 MB without allocating it
    with _nobody() as client, pytest.raises(ValidationFailed) as err:  # nobody there: a send would time out
        client.screen(CAP, huge, block_rows=10**9)
    assert err.value.field == "block_rows" and f"limit of {p.MAX_BLOB_BYTES} bytes" in err.value.message


def test_any_request_whose_binary_frames_pass_the_limit_is_refused_before_sending() -> None:
    msg = p.Submit(tasks=[{"capability": CAP, "block": {"rows": 100, "columns": ["a"]}}])
    msg.carrying({"0:a": np.zeros(100)})
    with PPUClient(f"tcp://127.0.0.1:{free_port()}", timeout=0.5, max_blob_bytes=500) as client, \
            pytest.raises(ValidationFailed) as err:
        client.request(msg)
    assert err.value.field == "blobs" and "800 bytes" in err.value.message


# ---- 2. the hint names a command that exists -------------------------------------------------------

def test_a_failed_blocks_hint_names_a_command_that_exists() -> None:
    with pytest.raises(BackendError) as err:
        _screen(ScriptedLab(fail=0), _cols(10))
    hint = err.value.hint or ""
    assert hint.startswith("`ppu tasks --state failed`") and "client.task('t-0')" in hint
    shown = CliRunner().invoke(app, ["tasks", "--help"])
    assert shown.exit_code == 0 and "--state" in shown.output


# ---- 3. bad arguments are ValidationFailed naming them ----------------------------------------------

@pytest.mark.parametrize(("call", "field", "says"), [
    (lambda: ops.artifact("xyz", None), "sha256", "pattern"),
    (lambda: ops.artifact("A" * 64, None), "sha256", "pattern"),
    (lambda: ops.submit_block(CAP, {"c" * 129: np.zeros(3)}, 2, {}, None), "columns", "1 to 128 characters"),
    (lambda: ops.submit_block(CAP, _cols(3), 10.5, {}, None), "block_rows", "whole number >= 1"),  # type: ignore[arg-type]
    (lambda: ops.submit_block(CAP, _cols(3), True, {}, None), "block_rows", "whole number >= 1"),
    (lambda: ops.submit_block(CAP, _cols(3), 0, {}, None), "block_rows", "whole number >= 1"),
    (lambda: ops.submit_block(CAP, _cols(3), 2, {"campaign": "c" * 200}, None), "campaign", "at most 128"),
    (lambda: ops.submit_block(CAP, _cols(3), 2, {"colour": "red"}, None), "colour", "Extra inputs"),
    (lambda: ops.submit([{"capability": "echo"}, {"capability": "echo", "priority": 5000}]), "tasks.1.priority",
     "less than or equal to 1000"),
    (lambda: ops.cancel("t" * 200, ""), "task_id", "at most 128"),
    (lambda: ops.review("t-1", "maybe", "", None), "decision", "'retry', 'fail' or 'result'"),
    (lambda: ops.set_autonomy("full", None, None), "level", "'manual'"),
    (lambda: ops.hold("b" * 200, True, False), "backend", "at most 128"),
    (lambda: ops.tasks("nonsense", None, None, 10), "state", "Input should be"),
    (lambda: ops.tasks(None, None, None, 2.5), "limit", "whole number >= 1"),  # type: ignore[arg-type]
    (lambda: ops.wait(["t" * 200], None, 1.0), "task_ids.0", "at most 128"),
    (lambda: ops.task("t" * 200), "task_id", "at most 128"),
    (lambda: ops.sample("s" * 200), "sample_id", "at most 128"),
    (lambda: ops.audit("yesterday"), "since", "valid number"),  # type: ignore[arg-type]
])
def test_a_bad_argument_is_a_validation_failed_naming_it(call: Any, field: str, says: str) -> None:
    def carry(c: ops.Call) -> Any:
        raise AssertionError(f"sent {c.msg!r}")

    with pytest.raises(ValidationFailed) as err:
        ops.drive(call(), carry)
    assert isinstance(err.value, PPUError)
    assert err.value.field == field, err.value
    assert says in err.value.message, err.value.message


def test_the_clients_raise_ppu_errors_for_the_user_trials_bad_arguments() -> None:
    with _nobody() as client:
        for bad in ("xyz", "A" * 64):
            with pytest.raises(ValidationFailed, match="sha256"):
                client.artifact(bad)
        with pytest.raises(ValidationFailed, match="block_rows"):
            client.screen(CAP, _cols(3), block_rows=10.5)  # type: ignore[arg-type]
        with pytest.raises(ValidationFailed, match="column name"):
            client.submit_block(CAP, {**_cols(3), "x" * 129: np.zeros(3)})



def test_the_async_runs_own_wait_refuses_a_bad_timeout_before_submitting() -> None:
    async def go() -> None:
        async with AsyncPPUClient(f"tcp://127.0.0.1:{free_port()}", timeout=0.5) as client:
            await client.run([{"capability": "echo", "inputs": {"x": 1.0}}], timeout=-1.0)

    with pytest.raises(ValidationFailed) as err:
        asyncio.run(go())
    assert err.value.field == "timeout"


# ---- 4. a failed block is named in the caller's numbering --------------------------------------------

def test_a_failed_block_is_named_by_its_number_and_rows() -> None:
    """50 rows in blocks of 20, the third fails: 'block 3 of 3 (rows 40-49)'."""
    with pytest.raises(BackendError) as err:
        _screen(ScriptedLab(fail=2), _cols(50), block_rows=20)
    text = str(err.value)
    assert "block 3 of 3 (rows 40-49)" in text and "t-2" in text and "row(s) 5" in text
    assert "row 40 of the columns" in text
    assert err.value.data["task_ids"] == ["t-0", "t-1", "t-2"] and err.value.data["block"] == 2


def test_a_refused_block_submit_says_which_block_and_what_got_in() -> None:
    lab = ScriptedLab()

    def carry(call: ops.Call) -> Any:
        if isinstance(call.msg, p.Submit) and len(lab.blocks) == 1:
            raise ValidationFailed("the queue is full")
        return lab(call)

    with pytest.raises(ValidationFailed) as err:
        ops.drive(ops.submit_block(CAP, _cols(50), 20, {}, None), carry)
    assert "block 2 of 3 (rows 20-39)" in err.value.message \
        and "the 1 block(s) before it were accepted" in err.value.message
    assert err.value.data["accepted"] == ["t-0"]


# ---- 5. a screen that would wait forever; the blocks left behind ------------------------------------

def test_a_screen_of_a_capability_no_backend_offers_is_refused_before_submitting() -> None:
    lab = ScriptedLab(offers=("echo",))
    with pytest.raises(UnknownCapabilityError) as err:
        _screen(lab, _cols(10))
    assert err.value.field == "capability" and "echo" in err.value.message and "timeout=" in (err.value.hint or "")
    assert not any(isinstance(m, p.Submit) for m in lab.calls)
    out, _ = _screen(lab, _cols(10), timeout=5.0)  # with a timeout it submits: a worker may still come
    assert len(out["y"]) == 10


def test_a_failed_block_cancels_the_blocks_after_it() -> None:
    lab = ScriptedLab(fail=0, live=(1, 2))
    with pytest.raises(BackendError) as err:
        _screen(lab, _cols(50), block_rows=20)
    assert [m.task_id for m in lab.calls if isinstance(m, p.Cancel)] == ["t-1", "t-2"]
    assert err.value.data["cancelled"] == ["t-1", "t-2"] and "of the 2 block(s) after it, 2 not yet ended were " \
        "cancelled" in err.value.message


def test_a_screen_that_times_out_cancels_the_blocks_not_ended() -> None:
    lab = ScriptedLab(wait_times_out=True, live=(0, 1, 2))
    with pytest.raises(p.WaitTimeout) as err:
        _screen(lab, _cols(50), block_rows=20, timeout=1.0)
    assert [m.task_id for m in lab.calls if isinstance(m, p.Cancel)] == ["t-0", "t-1", "t-2"]
    assert "waiting for block 1 of 3 (rows 0-19)" in err.value.message


# ---- the user trial's repros through a lab -----------------------------------------------------------

@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.pt"
    torch.save(mlp(N_FEATURES, hidden=32, seed=3).state_dict(), path)
    return path


def test_through_a_lab_a_nan_row_names_its_block_and_a_missing_capability_does_not_hang(
        tmp_path: Path, weights: Path) -> None:
    cols = candidate_columns(candidates(50, seed=6))
    cols["anneal_time_h"][45] = np.nan
    lab = lab_config(tmp_path, [torch_entry(weights)])

    async def go() -> tuple[BackendError, UnknownCapabilityError]:
        async with EmbeddedLab(lab) as client:
            with pytest.raises(BackendError) as failed:
                await client.screen(CAP, cols, block_rows=20)
            with pytest.raises(UnknownCapabilityError) as missing:
                await client.screen("predict.band_gap", cols, block_rows=20)
            return failed.value, missing.value

    failed, missing = asyncio.run(asyncio.wait_for(go(), 60))
    assert "block 3 of 3 (rows 40-49)" in str(failed), failed
    assert "predict.co2_uptake" in missing.message


def test_rows_a_model_answered_with_nan_are_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A block whose model gave NaN for some rows succeeds (the rows are the model's, not the task's
    fault), but the caller hears of them: argmax over the columns would pick a NaN."""
    with caplog.at_level("WARNING", logger="ppu.transport.ops"):
        out, results = _screen(ScriptedLab(non_finite={1: 7}), _cols(50))
    assert len(out["y"]) == 50 and len(results) == 3
    [record] = [r for r in caplog.records if "non-finite" in r.getMessage()]
    assert "7 row(s)" in record.getMessage() and "7 in block 2 of 3 (rows 20-39)" in record.getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="ppu.transport.ops"):
        _screen(ScriptedLab(), _cols(50))
    assert not [r for r in caplog.records if "non-finite" in r.getMessage()]


# ---- a wait lost in an orchestrator restart is asked again -----------------------------------

class Restarting:
    """An orchestrator that loses the first wait (it restarted: the client hears nothing), then says
    "not yet" once, then answers."""

    def __init__(self) -> None:
        self.waits: list[float | None] = []

    def __call__(self, call: ops.Call) -> Any:
        assert isinstance(call.msg, p.Wait)
        self.waits.append(call.msg.timeout)
        if len(self.waits) == 1:
            raise p.NotAnswering("the orchestrator at tcp://x did not answer within 40s")
        if len(self.waits) == 2:
            raise p.WaitTimeout(f"the tasks did not all end within {call.msg.timeout}s")
        tasks = [{"id": t, "capability": CAP, "action": "repeatable", "state": "succeeded", "attempts": 1}
                 for t in call.msg.task_ids]
        return p.Reply(data=tasks) if call.whole else tasks


def test_a_wait_the_orchestrator_lost_is_asked_again_while_time_is_left() -> None:
    """With no timeout a wait used to be one request of 1e9 s: lost in a restart, it hung for ever
    (the tasks all succeeded meanwhile). Now each request asks for at most WAIT_SLICE_S."""
    lab = Restarting()
    [task] = ops.drive(ops.wait(["t-1"], None, 1.0), lab)
    assert task.state.value == "succeeded"
    assert lab.waits == [ops.WAIT_SLICE_S] * 3


def test_a_wait_whose_own_time_is_up_says_the_time_the_caller_gave() -> None:
    lab = Restarting()
    lab.waits.append(None)  # skip the lost request: the first one says "not yet"
    with pytest.raises(p.WaitTimeout) as err:
        ops.drive(ops.wait(["t-1"], 2.0, 1.0), lab)
    assert "within the 2 s given" in err.value.message and len(lab.waits) == 2


def test_inputs_nested_too_deep_are_refused_naming_where_not_with_a_serialiser_traceback() -> None:
    """600 levels used to pass the door's model and then break the message encoder (a pydantic
    serialisation error, a traceback in the CLI); 200-254 levels gave the server's "not valid JSON"."""
    deep: dict[str, Any] = {"x": 1}
    cur = deep
    for _ in range(600):
        cur["n"] = {}
        cur = cur["n"]
    with pytest.raises(ValidationFailed) as err:
        ops.specs_of({"capability": "echo", "inputs": deep})
    assert err.value.field == "tasks.0.inputs" and "nested deeper than 32 levels" in err.value.message
    assert "Value error" not in err.value.message


def test_an_empty_submission_is_refused_naming_tasks() -> None:
    with pytest.raises(ValidationFailed) as err:  # it was a raw pydantic error from the Submit message
        ops.drive(ops.submit([]), ScriptedLab())
    assert err.value.field == "tasks"
