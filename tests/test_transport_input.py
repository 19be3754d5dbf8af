"""Bad input is refused at the door with a typed error; the orchestrator keeps serving (promise 3)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transport_helpers import lab_config

from ppu import protocol as p
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
    reply = _ask(raw, p.encode(p.Started(backend="echo-1", task_id="t", attempt=1)))
    assert isinstance(reply, p.Error) and reply.code == "not_registered"
    with lab.client() as c:
        st = c.status()
    assert st["counters"]["protocol_unexpected_type"] >= 1 and st["counters"]["not_registered"] >= 1


_json_bits = st.sampled_from([b"{", b"}", b'"type"', b":", b'"submit"', b'"tasks"', b"[", b"]", b"null",
                              b'"register"', b'"backends"', b"1e999", b'"\\ud800"', b",", b'"req"'])
_frame = st.one_of(st.binary(max_size=64), st.just(p.PROTOCOL_VERSION),
                   st.lists(_json_bits, max_size=12).map(b"".join))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(_frame, min_size=1, max_size=4))
def test_fuzz_random_frames_never_stop_the_orchestrator(lab: LabThread, raw: zmq.Socket, frames: list[bytes]):
    raw.send_multipart(frames)
    if raw.poll(2000):
        reply = p.decode(raw.recv_multipart())
        assert isinstance(reply, p.Error | p.Reply | p.RegisterOk)


def test_still_serves_a_normal_client_after_the_fuzz(lab: LabThread):
    with lab.client() as c:
        [t] = c.run([{"capability": "echo", "inputs": {"x": 3}}], timeout=10)
        assert t.state.value == "succeeded"
        assert c.status()["counters"].get("internal_errors", 0) == 0
