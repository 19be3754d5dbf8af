"""docs/protocol.md and the shipped JSON Schema are generated from the models and cannot drift."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import jsonschema
import pytest
from transport_helpers import lab_config

from ppu import protocol as p
from ppu import protocol_schema as ps
from ppu.backends.base import TaskRun
from ppu.models import BackendKind, BackendSpec, CapabilityOffer, Result, TaskSpec
from ppu.transport import LabThread


def test_committed_schema_and_doc_tables_match_the_models():
    stale = ps.stale()
    assert stale == [], f"regenerate with: python -m ppu.protocol_schema ({[str(s) for s in stale]})"
    assert ps.main(["--check"]) == 0


def test_the_check_notices_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    doc = tmp_path / "protocol.md"
    row = "| `submit` | client → orchestrator"
    doc.write_text(ps.DOC.read_text().replace(row, row.replace("client", "worker"), 1))
    monkeypatch.setattr(ps, "DOC", doc)
    assert doc in ps.stale()
    no_markers = tmp_path / "bare.md"
    no_markers.write_text("# nothing generated here\n")
    monkeypatch.setattr(ps, "DOC", no_markers)
    with pytest.raises(ValueError, match="generated:messages"):
        ps.outputs()


def test_the_schema_ships_with_the_package():
    shipped = ps.load_schema()
    assert shipped == ps.schema()
    assert shipped["x-protocol-version"] == "PPU1"
    assert set(shipped["discriminator"]["mapping"]) == p.TYPES
    for name in ("Task", "TaskSpec", "Result", "Sample", "AuditEntry", "TransitionEvent", "ProgressEvent"):
        assert name in shipped["$defs"]


EXAMPLES = [
    p.Submit(req="r1", actor="ada", tasks=[TaskSpec(capability="echo", inputs={"x": 1.5}, deadline=1.7e9)]),
    p.Wait(req="r2", task_ids=["t-1", "t-2"], timeout=2.5),
    p.Cancel(req="r3", task_id="t-1", reason="why"),
    p.SetAutonomy(req="r4", level="manual", capability="echo"),
    p.Tasks(req="r5", state="running", limit=10),
    p.Reply(req="r1", data=["t-1"]),
    p.Error(req="r2", code="unknown_task", message="unknown task 't-9'", field="task_ids", hint="ppu tasks"),
    p.Event(event={"type": "progress", "task_id": "t-1", "fraction": 0.5, "message": ""}),
    p.Register(req="w1", worker="w", backends=[BackendSpec(name="echo-1", kind=BackendKind.digital,
                                                           capabilities=[CapabilityOffer(name="echo")])]),
    p.Assign(backend="echo-1", batch_id="b-1", runs=[TaskRun(task_id="t-1", attempt=1, capability="echo",
                                                            inputs={"x": 1})]),
    p.ResultMsg(backend="echo-1", result=Result(task_id="t-1", attempt=1, status="succeeded", outputs={"y": 2})),
    p.Heartbeat(),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=[m.type for m in EXAMPLES])
def test_what_the_code_sends_fits_the_schema(msg: p.Message):
    validator = jsonschema.Draft202012Validator(ps.load_schema())
    validator.validate(json.loads(p.encode(msg)[1]))


def test_a_reply_of_serialised_records_is_the_same_message_as_a_reply():
    records = [{"id": "t-1", "inputs": {"x": 1.5, "name": "Kupfer \u00fc"}, "state": "succeeded"}, [], None]
    raw = p.encode(p.RawReply('r"1', [json.dumps(r) for r in records]))
    assert json.loads(raw[1]) == json.loads(p.encode(p.Reply(req='r"1', data=records))[1])
    assert p.decode(raw) == p.Reply(req='r"1', data=records)
    jsonschema.Draft202012Validator(ps.load_schema()).validate(json.loads(raw[1]))


@pytest.mark.parametrize("bad", [
    {"type": "submit", "tasks": [{"capability": "echo", "campaign": "c" * (p.MAX_NAME + 1)}]},
    {"type": "submit", "tasks": []},
    {"type": "wait", "task_ids": ["t"], "surprise": 1},
    {"type": "launch"},
    {"type": "set_autonomy", "level": "reckless"},
])
def test_the_schema_refuses_what_decode_refuses(bad: dict[str, object]):
    validator = jsonschema.Draft202012Validator(ps.load_schema())
    assert not validator.is_valid(bad)
    with pytest.raises(p.ProtocolError):
        p.decode([p.PROTOCOL_VERSION, json.dumps(bad).encode()])


def test_events_carry_the_documented_fields(tmp_path: Path):
    """What a subscriber receives fits TransitionEvent / ProgressEvent, the models the doc shows."""
    seen: list[dict[str, object]] = []
    with LabThread(lab_config(tmp_path)) as lab, lab.client() as watcher, lab.client() as c:
        def watch() -> None:
            for ev in watcher.events(timeout=10):  # the timeout only bounds a broken run
                seen.append(ev)
                if ev.get("type") == "transition" and ev.get("dst") == "succeeded":
                    return

        watcher.request(p.Subscribe())
        t = threading.Thread(target=watch)
        t.start()
        c.run([{"capability": "echo", "inputs": {"x": 1}}], timeout=10)
        t.join(15)
    kinds = {"transition": p.TransitionEvent, "progress": p.ProgressEvent}
    assert [e["dst"] for e in seen if e["type"] == "transition"][-1] == "succeeded"
    for ev in seen:
        kinds[str(ev["type"])].model_validate(ev)
