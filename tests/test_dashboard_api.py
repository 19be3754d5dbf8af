"""The dashboard's HTTP API against a real lab over loopback (LabThread) and a real web server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from transport_helpers import SYNTH, lab_config

from ppu.backends.base import ProgressFn, TaskRun
from ppu.backends.echo import EchoBackend
from ppu.dashboard import DashboardSettings, DashboardThread
from ppu.dashboard.settings import checked
from ppu.dashboard.view import LabView, Raw
from ppu.errors import ConfigError
from ppu.models import BackendKind, CapabilityOffer, Result, Task, TaskState
from ppu.transport import LabThread, PPUClient

SORB = "test_dashboard_api:SorbBackend"
TRIP = 7.0  # a measurement at this pressure is interrupted: the task goes to review
RECIPE = {"composition": {"Zn": 0.5, "O": 0.5}, "anneal_temperature_c": 350.0}


class SorbBackend(EchoBackend):
    """A test gas-sorption instrument: measure.co2_uptake, a value fixed by the sample id."""

    kind = BackendKind.physical

    def default_offers(self) -> list[CapabilityOffer]:
        return [CapabilityOffer(name="measure.co2_uptake", duration_s=1.0)]

    async def run(self, batch: list[TaskRun], progress: ProgressFn) -> list[Result]:
        started = time.time()
        await asyncio.sleep(self.config.duration_s / self.config.time_scale)  # type: ignore[attr-defined]
        return [self.fail(r, "pressure transducer tripped at 7 bar", started, interrupted=True)
                if r.inputs.get("pressure_bar") == TRIP else
                self.ok(r, {"uptake_mmol_g": round(1 + (zlib.crc32(str(r.sample_id).encode()) % 400) / 100, 2)},
                        started) for r in batch]


def lab(tmp: Path, synth_s: float = 0.3, extra: list[dict[str, Any]] | None = None) -> Any:
    return lab_config(tmp, backends=[
        {"type": "echo", "name": "gpu-surrogate", "duration_s": 0.0},
        {"type": SYNTH, "name": "synth-robot", "duration_s": synth_s, "time_scale": 1.0},
        {"type": SORB, "name": "sorption-1", "duration_s": 0.05, "time_scale": 1.0},
        *(extra or []),
    ], autonomy={"capabilities": {"synthesize": "manual"}})


@contextlib.contextmanager
def lab_and_dashboard(tmp: Path, synth_s: float = 0.3, extra: list[dict[str, Any]] | None = None,
                      **settings: Any) -> Iterator[tuple[PPUClient, DashboardThread]]:
    """A lab (manual approval for synthesize) with a dashboard on a free loopback port."""
    opts: dict[str, Any] = {"port": 0, "token": "t0ken-for-tests", "user": "alice", "refresh_s": 0.2}
    opts.update(settings)
    with LabThread(lab(tmp, synth_s, extra)) as lt, lt.client(timeout=5) as client, \
            DashboardThread(lt.address, DashboardSettings(**opts), lab_name="test-lab") as dash:
        yield client, dash


def synth(campaign: str | None = "c1", on: str | None = None, zn: float = 0.5) -> dict[str, Any]:
    recipe = {**RECIPE, "composition": {"Zn": zn, "O": round(1 - zn, 3)}}
    return {"capability": "synthesize", "inputs": {"recipe": recipe}, "campaign": campaign, "pin_backend": on}


def state(http: httpx.Client, pred: Any = None, timeout: float = 10.0) -> dict[str, Any]:
    """GET /api/state until ``pred(state)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        st = http.get("/api/state", params={"fresh": 1}).json()
        if pred is None or pred(st):
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"state never matched: {json.dumps(st)[:2000]}")
        time.sleep(0.05)


def test_state_shows_backends_queues_and_approvals(tmp_path: Path):
    with lab_and_dashboard(tmp_path) as (client, dash), httpx.Client(base_url=dash.url) as http:
        [tid] = client.submit(synth())
        st = state(http, lambda s: s["approvals"])
        assert {b["name"]: b["kind"] for b in st["backends"]} == {
            "gpu-surrogate": "digital", "synth-robot": "physical", "sorption-1": "physical"}
        assert st["connected"] is True and st["workers"] == 1
        [a] = st["approvals"]
        assert a["task_id"] == tid and "manual" in a["reason"] and a["backends"] == ["synth-robot"]
        [q] = [q for q in st["queues"] if q["capability"] == "synthesize"]
        assert q["approval"] == 1 and q["waiting"] == 1 and q["oldest_wait_s"] >= 0
        assert set(st["gantt"]["rows"]) == {"gpu-surrogate", "synth-robot", "sorption-1"}
        page = http.get("/")
        assert page.status_code == 200 and "test-lab" in page.text and "http" not in page.text.split("<body>")[1] \
            .replace("http-equiv", "")  # nothing fetched from the network


def test_sse_stream_delivers_state_and_task_events(tmp_path: Path):
    with lab_and_dashboard(tmp_path) as (client, dash), httpx.Client(base_url=dash.url, timeout=10) as http:
        with http.stream("GET", "/api/stream") as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            lines = resp.iter_lines()
            kind = ""
            tid = None
            for line in lines:
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind == "state" and tid is None:
                    assert "backends" in json.loads(line[6:])
                    [tid] = client.submit({"capability": "echo", "inputs": {"x": 3}})
                elif line.startswith("data: ") and kind == "task":
                    ev = json.loads(line[6:])
                    if ev.get("task_id") == tid and ev.get("dst") == "succeeded":
                        break
        assert tid is not None


def test_actions_need_the_token(tmp_path: Path):
    with lab_and_dashboard(tmp_path) as (client, dash), httpx.Client(base_url=dash.url) as http:
        [tid] = client.submit(synth())
        url = f"/api/tasks/{tid}/approve"
        assert http.post(url, json={}).status_code == 401
        assert http.post(url, json={}, headers={"Authorization": "Bearer wrong-token"}).status_code == 403
        assert http.post(url, content="note=x", headers={"Authorization": f"Bearer {dash.token}",
                                                         "Content-Type": "application/x-www-form-urlencoded"}
                         ).status_code == 415
        assert http.get("/?token=wrong-token").status_code == 403
        assert client.task(tid).approval.value == "waiting"
        assert http.get("/api/whoami").json() == {"user": None, "can_act": False}
        assert http.get("/api/state", headers={"Host": "evil.example"}).status_code == 400  # DNS rebinding


def test_approve_with_the_token_runs_the_task_as_the_dashboard_user(tmp_path: Path):
    with lab_and_dashboard(tmp_path) as (client, dash), httpx.Client(base_url=dash.url) as http:
        a, b = client.submit([synth(), synth()])
        r = http.post(f"/api/tasks/{a}/approve", json={"note": "looks fine"},
                      headers={"Authorization": f"Bearer {dash.token}"})
        assert r.status_code == 200 and r.json()["actor"] == "dashboard:alice"
        [done] = client.wait([a], timeout=10)
        assert done.state is TaskState.succeeded
        # the browser way: visit /?token=..., keep the cookie, act with it
        login = http.get(f"/?token={dash.token}", follow_redirects=True)
        assert login.status_code == 200 and "ppu_token" in http.cookies
        assert http.get("/api/whoami").json() == {"user": "alice", "can_act": True}
        assert http.post(f"/api/tasks/{b}/reject", json={"reason": "wrong batch"}).status_code == 200
        [rej] = client.wait([b], timeout=10)
        assert rej.state is TaskState.cancelled
        audit = {(e.action, e.target): e.actor for e in client.audit()}
        assert audit[("approve", a)] == "dashboard:alice" and audit[("reject", b)] == "dashboard:alice"
        bad = http.post(f"/api/tasks/{a}/result", json={"outputs": "nope"})
        assert bad.status_code == 422 and bad.json()["field"] == "outputs"
        missing = http.post("/api/tasks/nope/approve", json={})
        assert 400 <= missing.status_code < 500 and missing.json()["message"]


def test_campaign_view_plots_best_so_far_and_samples(tmp_path: Path):
    with lab_and_dashboard(tmp_path, synth_s=0.0) as (client, dash), httpx.Client(base_url=dash.url) as http:
        ids = client.submit([synth("mof-1") for _ in range(4)])
        for tid in ids:
            client.approve(tid)
        made = client.wait(ids, timeout=10)
        samples = [client.result(t.id).outputs["sample_id"] for t in made]  # type: ignore[union-attr]
        client.wait(client.submit([{"capability": "measure.co2_uptake", "inputs": {"sample_id": s},
                                    "campaign": "mof-1"} for s in samples]), timeout=10)
        st = state(http, lambda s: s["campaigns"] and len(s["campaigns"][0]["points"]) == 4)
        [c] = st["campaigns"]
        values = [p["value"] for p in c["points"]]
        assert [p["best"] for p in c["points"]] == [max(values[: i + 1]) for i in range(4)]
        assert c["best"] == max(values) and c["objective"] == "measure.co2_uptake.uptake_mmol_g"
        assert {s["id"] for s in c["samples"]} == set(samples)
        assert all(s["device"] for s in c["samples"])
        assert any(rows for rows in st["gantt"]["rows"].values())  # busy history for the timeline


def test_review_an_interrupted_measurement_with_a_manual_result(tmp_path: Path):
    with lab_and_dashboard(tmp_path, synth_s=0.0) as (client, dash), httpx.Client(base_url=dash.url) as http:
        [s] = client.submit(synth("mof-2"))
        client.approve(s)
        [made] = client.wait([s], timeout=10)
        sample = client.result(made.id).outputs["sample_id"]  # type: ignore[union-attr]
        [m] = client.submit({"capability": "measure.co2_uptake", "campaign": "mof-2",
                             "inputs": {"sample_id": sample, "pressure_bar": TRIP}})
        st = state(http, lambda st: st["reviews"])
        [r] = st["reviews"]
        assert r["task_id"] == m and "tripped" in r["why"] and r["backend"] == "sorption-1"
        auth = {"Authorization": f"Bearer {dash.token}"}
        ok = http.post(f"/api/tasks/{m}/result", json={"outputs": {"uptake_mmol_g": 3.3}, "reason": "read by hand"},
                       headers=auth)
        assert ok.status_code == 200, ok.text
        [done] = client.wait([m], timeout=10)
        assert done.state is TaskState.succeeded
        st = state(http, lambda st: not st["reviews"] and st["campaigns"] and st["campaigns"][0]["points"])
        assert st["campaigns"][0]["best"] == 3.3
        assert ("review_result", "dashboard:alice") in [(e.action, e.actor) for e in client.audit()]


def test_a_non_loopback_bind_needs_a_configured_token(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("PPU_DASHBOARD_TOKEN", raising=False)
    with pytest.raises(ConfigError) as e:
        checked(DashboardSettings(host="0.0.0.0"))
    assert e.value.field == "token"
    s, generated = checked(DashboardSettings(host="0.0.0.0", token="a-long-enough-token"))
    assert not generated and s.token == "a-long-enough-token"
    s, generated = checked(DashboardSettings(host="127.0.0.1"))
    assert generated and s.token and len(s.token) >= 16


def test_view_timeline_queues_and_reviews_without_sockets():
    view = LabView({"measure.co2_uptake": "uptake_mmol_g"}, maximize=False, window_s=100)
    view.apply_event({"type": "transition", "task_id": "t1", "dst": "assigned", "at": 950.0, "backend": "xrd"})
    view.apply_event({"type": "transition", "task_id": "t1", "dst": "running", "at": 951.0, "backend": "xrd"})
    view.apply_event({"type": "transition", "task_id": "t0", "dst": "failed", "at": 951.0, "backend": "xrd"})
    running = Task(id="t1", capability="characterize.xrd", action="once", state=TaskState.running, backend="xrd",
                   submitted_at=900.0)
    waiting = Task(id="t2", capability="characterize.xrd", action="once", state=TaskState.ready, submitted_at=940.0)
    raw = Raw(now=1000.0, status={"backends": [{"name": "xrd", "state": "faulted", "held": False}]},
              live=[running, waiting], approvals=[], busy=[{"backend": "xrd", "start": 800.0, "end": 910.0}],
              reviews=[{"task_id": "t9", "capability": "synthesize", "inputs": {"recipe": {"T": 1}}}], samples=[])
    snap = view.snapshot(raw)
    [b] = snap["backends"]
    assert b["fault"] == "faulted" and b["failures"] == 1 and b["current"][0]["task_id"] == "t1"
    assert sorted(snap["gantt"]["rows"]["xrd"]) == [[900.0, 910.0, "done"], [950.0, 1000.0, "busy"]]
    [q] = snap["queues"]
    assert q["waiting"] == 1 and q["running"] == 1 and q["oldest_wait_s"] == 60.0
    assert snap["reviews"][0]["inputs_short"] == "T=1"
    assert [e["dst"] for e in snap["events"]] == ["failed", "running", "assigned"]
