"""Bad input is refused at the door with a typed error; the orchestrator keeps serving (promise 3)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from transport_helpers import lab_config

from ppu import protocol as p
from ppu.errors import UnknownBackendError, UnknownCapabilityError, UnknownTaskError
from ppu.models import MAX_IDS, Limit, Result, TaskSpec
from ppu.transport import LabThread


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabThread]:
    tmp = tmp_path_factory.mktemp("input")
    cfg = lab_config(Path(tmp), orchestrator={"heartbeat_s": 0.1, "max_message_bytes": 2048})
    with LabThread(cfg) as lt:
        yield lt


@pytest.fixture
def raw(lab: LabThread) -> Iterator[zmq.Socket]:
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(lab.address)
    yield s
    s.close()
    ctx.term()


def _ask(sock: zmq.Socket, frames: list[bytes]) -> p.Message:
    sock.send_multipart(frames)
    assert sock.poll(5000), "no answer"
    return p.decode(sock.recv_multipart())


def _counters(lab: LabThread) -> dict[str, int]:
    with lab.client() as c:
        return dict(c.status()["counters"])


CASES = [
    (p.BAD_FRAMES, [b"PPU1", b"{}", b"extra"]),
    (p.BAD_FRAMES, [b"just one"]),
    (p.BAD_VERSION, [b"PPU0", b'{"type": "status"}']),
    (p.OVERSIZE, [b"PPU1", b'{"type": "status", "actor": "' + b"x" * 3000 + b'"}']),
    (p.BAD_JSON, [b"PPU1", b'{"type": ']),
    (p.UNKNOWN_TYPE, [b"PPU1", b'{"type": "launch_missiles"}']),
    (p.UNKNOWN_TYPE, [b"PPU1", b'{"req": "r1"}']),
    (p.BAD_PAYLOAD, [b"PPU1", b'{"type": "submit", "req": "r2", "tasks": [{"capability": 3}]}']),
    (p.BAD_PAYLOAD, [b"PPU1", b'[1, 2]']),
]


@pytest.mark.parametrize(("reason", "frames"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_malformed_kind_gets_its_typed_error(lab: LabThread, raw: zmq.Socket, reason: str,
                                                  frames: list[bytes]):
    before = _counters(lab).get("protocol_" + reason, 0)
    reply = _ask(raw, frames)
    assert isinstance(reply, p.Error) and reply.code == "protocol_error"
    assert reply.message
    if b'"req"' in frames[-1]:
        assert reply.req == json.loads(frames[-1])["req"]  # the client can match the error
    if reason == p.BAD_PAYLOAD and b"tasks" in frames[-1]:
        assert reply.field == "tasks.0.capability"
    assert _counters(lab)["protocol_" + reason] == before + 1


def test_unexpected_and_unregistered_messages(lab: LabThread, raw: zmq.Socket):
    reply = _ask(raw, p.encode(p.Abort(backend="x", task_id="y")))
    assert isinstance(reply, p.Error) and reply.field == "type"
    reply = _ask(raw, p.encode(p.Started(backend="echo-1", runs=[("t", 1)])))
    assert isinstance(reply, p.Error) and reply.code == "not_registered"
    with lab.client() as c:
        st = c.status()
    assert st["counters"]["protocol_unexpected_type"] >= 1 and st["counters"]["not_registered"] >= 1


_json_bits = st.sampled_from([b"{", b"}", b'"type"', b":", b'"submit"', b'"tasks"', b"[", b"]", b"null",
                              b'"register"', b'"backends"', b"1e999", b'"\\ud800"', b",", b'"req"'])
_frame = st.one_of(st.binary(max_size=64), st.just(p.PROTOCOL_VERSION),
                   st.lists(_json_bits, max_size=12).map(b"".join))


FUZZ_EXAMPLES = 150  # README (Security) quotes this count


def _one_reply(sock: zmq.Socket, frames: list[bytes]) -> p.Message:
    """Send ``frames``, then a status request as a marker: exactly one answer must come before its reply."""
    sock.send_multipart(frames)
    marker = p.new_req()
    sock.send_multipart(p.encode(p.Status(req=marker)))
    got: list[p.Message] = []
    while True:
        assert sock.poll(10_000), f"no answer to {frames!r}"
        msg = p.decode(sock.recv_multipart())
        if isinstance(msg, p.Reply) and msg.req == marker:
            break
        got.append(msg)
    assert len(got) == 1, f"{len(got)} answers to {frames!r}: {got!r}"
    return got[0]


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(_frame, min_size=1, max_size=4))
def test_fuzz_every_random_frame_gets_a_typed_error(lab: LabThread, raw: zmq.Socket, frames: list[bytes]):
    reply = _one_reply(raw, frames)
    assert isinstance(reply, p.Error), reply  # nothing in the alphabet makes a valid request
    assert reply.code == "protocol_error", reply
    assert reply.message


def test_still_serves_a_normal_client_after_the_fuzz(lab: LabThread):
    with lab.client() as c:
        [t] = c.run([{"capability": "echo", "inputs": {"x": 3}}], timeout=10)
        assert t.state.value == "succeeded"
        assert c.status()["counters"].get("internal_errors", 0) == 0


# ---- non-finite numbers (issue 13 item 5) ---------------------------------------------------------------

def _submit(task: str) -> bytes:
    return b'{"type": "submit", "req": "n1", "tasks": [' + task.encode() + b"]}"


BAD_NUMBERS = [
    (_submit('{"capability": "echo", "inputs": {"x": NaN}}'), "tasks.0.inputs.x"),
    (_submit('{"capability": "echo", "inputs": {"x": Infinity}}'), "tasks.0.inputs.x"),
    (_submit('{"capability": "echo", "inputs": {"x": -Infinity}}'), "tasks.0.inputs.x"),
    (_submit('{"capability": "echo", "inputs": {"x": 1e400}}'), "tasks.0.inputs.x"),
    (_submit('{"capability": "echo", "inputs": {"x": 1, "v": [1.0, {"w": -1E+999}]}}'), "tasks.0.inputs.v.1.w"),
    (_submit('{"capability": "echo", "deadline": NaN}'), "tasks.0.deadline"),
    (_submit('{"capability": "echo", "deadline": Infinity}'), "tasks.0.deadline"),
    (_submit('{"capability": "echo", "deadline": 1e400}'), "tasks.0.deadline"),
    (_submit('{"capability": "echo", "min_fidelity": NaN}'), "tasks.0.min_fidelity"),
    (b'{"type": "wait", "req": "n2", "task_ids": ["t"], "timeout": Infinity}', "timeout"),
    (b'{"type": "busy", "req": "n3", "since": -Infinity}', "since"),
    (b'{"type": "review", "req": "n4", "task_id": "t", "decision": "result", "outputs": {"y": NaN}}', "outputs.y"),
]


@pytest.mark.parametrize(("body", "field"), BAD_NUMBERS, ids=[f[1] + f"-{i}" for i, f in enumerate(BAD_NUMBERS)])
def test_non_finite_numbers_are_refused_at_the_door(lab: LabThread, raw: zmq.Socket, body: bytes, field: str):
    before = _counters(lab).get("protocol_" + p.BAD_NUMBER, 0)
    with lab.client() as c:
        stored = sum(c.status()["tasks"].values())
    reply = _ask(raw, [p.PROTOCOL_VERSION, body])
    assert isinstance(reply, p.Error) and reply.code == "protocol_error", reply
    assert reply.field == field and "finite" in reply.message
    assert reply.req == json.loads(body.replace(b"NaN", b"0").replace(b"Infinity", b"0")
                                   .replace(b"1e400", b"0").replace(b"1E+999", b"0"))["req"]
    assert _counters(lab)["protocol_" + p.BAD_NUMBER] == before + 1
    with lab.client() as c:
        assert sum(c.status()["tasks"].values()) == stored  # nothing half-accepted


def test_a_batch_with_one_nan_is_refused_whole_and_the_next_batch_runs(lab: LabThread, raw: zmq.Socket):
    good = '{"capability": "echo", "inputs": {"x": 1}}'
    reply = _ask(raw, [p.PROTOCOL_VERSION, _submit(f"{good}, {good}, " + '{"capability": "echo", "inputs": '
                                                   '{"x": NaN}}')])
    assert isinstance(reply, p.Error) and reply.field == "tasks.2.inputs.x"
    with lab.client() as c:
        done = c.run([{"capability": "echo", "inputs": {"x": i}} for i in range(4)], timeout=10)
    assert [t.state.value for t in done] == ["succeeded"] * 4


def test_strings_that_look_like_numbers_are_fine(lab: LabThread):
    with lab.client() as c:
        [t] = c.run([{"capability": "echo", "inputs": {"x": 1, "payload": "NaN Infinity 1e400"},
                      "campaign": "Infinity-1e999"}], timeout=10)
    assert t.state.value == "succeeded" and t.inputs["payload"] == "NaN Infinity 1e400"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_model_refuses_non_finite_numbers(value: float):
    """The same promise for Python callers that never touch the wire (models are the door too)."""
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: TaskSpec(capability="echo", inputs={"x": value}), "inputs"),
        (lambda: TaskSpec(capability="echo", inputs={"a": [1, {"b": value}]}), "inputs"),
        (lambda: TaskSpec(capability="echo", deadline=value), "deadline"),
        (lambda: Result(task_id="t", attempt=1, status="succeeded", outputs={"y": value}), "outputs"),
        (lambda: Limit(min=value), "min"),
        (lambda: p.Wait(task_ids=["t"], timeout=value), "timeout"),
    ]
    for make, field in cases:
        with pytest.raises(ValidationError) as e:
            make()
        assert e.value.errors()[0]["loc"][0] == field


# ---- bounds and names that must exist (issue 13 item 6) ----------------------------------------------------

LONG = "x" * (p.MAX_NAME + 1)
BOUNDS = [
    ({"type": "submit", "tasks": [{"capability": "echo", "campaign": LONG}]}, "tasks.0.campaign"),
    ({"type": "submit", "tasks": [{"capability": LONG}]}, "tasks.0.capability"),
    ({"type": "submit", "tasks": [{"capability": "echo", "pin_backend": LONG}]}, "tasks.0.pin_backend"),
    ({"type": "submit", "tasks": [{"capability": "echo", "depends_on": [LONG]}]}, "tasks.0.depends_on.0"),
    ({"type": "submit", "tasks": []}, "tasks"),
    ({"type": "status", "actor": "a" * (p.MAX_ACTOR + 1)}, "actor"),
    ({"type": "status", "req": "r" * (p.MAX_REQ + 1)}, "req"),
    ({"type": "cancel", "task_id": LONG}, "task_id"),
    ({"type": "set_autonomy", "level": "manual", "capability": LONG}, "capability"),
    ({"type": "set_autonomy", "level": "manual", "backend": LONG}, "backend"),
    ({"type": "set_autonomy", "level": "reckless"}, "level"),
    ({"type": "tasks", "state": "bogus"}, "state"),
    ({"type": "tasks", "campaign": LONG}, "campaign"),
    ({"type": "hold", "backend": LONG}, "backend"),
    ({"type": "samples", "campaign": LONG}, "campaign"),
    ({"type": "wait", "task_ids": []}, "task_ids"),
]


@pytest.mark.parametrize(("msg", "field"), BOUNDS, ids=[f"{b[0]['type']}-{b[1]}" for b in BOUNDS])
def test_strings_and_lists_are_bounded_on_the_wire(lab: LabThread, raw: zmq.Socket, msg: dict[str, Any],
                                                   field: str):
    reply = _ask(raw, [p.PROTOCOL_VERSION, json.dumps(msg).encode()])
    assert isinstance(reply, p.Error) and reply.code == "protocol_error", reply
    assert reply.field == field, reply


BIG = [  # above the test lab's 2 KiB frame limit: checked by decode() with a larger one
    ({"type": "submit", "tasks": [{"capability": "echo", "campaign": "c" * 5_000_000}]}, "tasks.0.campaign"),
    ({"type": "set_autonomy", "level": "manual", "capability": "c" * 1_000_000}, "capability"),
    ({"type": "cancel", "task_id": "t", "reason": "r" * (p.MAX_TEXT + 1)}, "reason"),
    ({"type": "approve", "task_id": "t", "note": "n" * (p.MAX_TEXT + 1)}, "note"),
    ({"type": "wait", "task_ids": ["t"] * (p.MAX_WAIT_IDS + 1)}, "task_ids"),
    ({"type": "submit", "tasks": [{"capability": "echo", "depends_on": ["t"] * (MAX_IDS + 1)}]},
     "tasks.0.depends_on"),
    ({"type": "submit", "tasks": [{"capability": "echo"}] * (p.MAX_SUBMIT_TASKS + 1)}, "tasks"),
    ({"type": "tasks", "limit": p.MAX_LIST_ROWS + 1}, "limit"),
]


@pytest.mark.parametrize(("msg", "field"), BIG, ids=[f"{b[0]['type']}-{b[1]}" for b in BIG])
def test_big_strings_and_lists_are_bounded(msg: dict[str, Any], field: str):
    with pytest.raises(p.ProtocolError) as e:
        p.decode([p.PROTOCOL_VERSION, json.dumps(msg).encode()], max_bytes=64 * 1024 * 1024)
    assert e.value.data["reason"] == p.BAD_PAYLOAD and e.value.field == field
    assert len(str(e.value)) < 500  # the error does not echo the megabytes back


def test_names_that_must_exist_are_checked(lab: LabThread):
    with lab.client() as c:
        before = len(c.audit())
        with pytest.raises(UnknownCapabilityError) as uc:
            c.set_autonomy("manual", capability="no-such-capability")
        assert uc.value.field == "capability"
        with pytest.raises(UnknownBackendError) as ub:
            c.set_autonomy("manual", backend="no-such-backend")
        assert ub.value.field == "backend"
        with pytest.raises(UnknownBackendError) as ub:
            c.stop("no-such-backend")
        assert ub.value.field == "backend"
        with pytest.raises(UnknownBackendError) as ub:
            c.resume("no-such-backend")
        assert ub.value.field == "backend"
        with pytest.raises(UnknownCapabilityError) as uc:
            c.submit({"capability": "no-such-capability"})
        assert uc.value.field == "capability"
        with pytest.raises(UnknownTaskError):
            c.task("no-such-task")
        assert len(c.audit()) == before  # nothing unknown was persisted
        c.set_autonomy("autonomous", backend="echo-1")  # a known one is fine
