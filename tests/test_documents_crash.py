"""Issue 12.10: Bluesky documents are streamed to disk as the RunEngine emits them.

A real worker process runs a CO2 isotherm (a real Bluesky plan on the simulated gas-sorption
analyser) and is SIGKILLed after a few points: the partial run (start, descriptor, the events so
far, no stop) must be on disk for the person who reviews the interrupted task. Before the fix the
documents were written only when the plan ended, so nothing of the running plan survived.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from test_transport_crash import _kill, _spawn
from transport_helpers import HB, free_port, run, until

from ppu.backends.documents import JsonlSink
from ppu.config import parse_lab
from ppu.models import TaskState
from ppu.orchestrator import Orchestrator
from ppu.simulators.mof import candidate_pool
from ppu.store import Store
from ppu.transport import AsyncPPUClient, OrchestratorServer


def _events_on_disk(folder: Path, task_id: str) -> int:
    """Isotherm points of the task on disk (its sample transfers are runs of their own)."""
    n = 0
    for path in folder.glob("*.jsonl") if folder.is_dir() else []:
        lines = path.read_text().splitlines()
        start = json.loads(lines[0])[1] if lines else {}
        if start.get("task_id") == task_id and start.get("plan_name") == "measure_isotherm":
            n += sum(1 for line in lines if line.startswith('["event"'))
    return n


def test_worker_killed_mid_isotherm_leaves_the_partial_run_on_disk(tmp_path: Path):
    port = free_port()
    common = {"simulated": True, "lab": "stream", "run_dir": str(tmp_path / "lab"), "world": {"seed": 3}, "seed": 1}
    raw = {"name": "stream", "run_dir": str(tmp_path), "store": f"sqlite:///{tmp_path / 'ppu.sqlite'}",
           "packs": ["mof"],
           "orchestrator": {"bind": f"tcp://127.0.0.1:{port}", "heartbeat_s": HB, "missed_heartbeats": 3,
                            "backoff_base_s": 0.0, "restart_grace_s": 2.0},
           "backends": [{"type": "synthesis_robot", "name": "robot", "time_scale": 1e6, **common},
                        # 12 points of 600 s lab time each: about 0.6 s of wall time per point
                        {"type": "gas_sorption", "name": "sorption", "time_scale": 1000.0, **common}]}
    cfg = tmp_path / "lab.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    lab = parse_lab(raw)
    docs = tmp_path / "lab" / "documents"

    async def body() -> None:
        store = Store(lab.store_url())
        orch = Orchestrator(store, lab.orchestrator, lab.autonomy)
        await orch.start()
        server = OrchestratorServer(orch, lab.orchestrator.bind)
        addr = await server.start()
        client = AsyncPPUClient(addr, timeout=5)
        worker = _spawn("worker", "--config", str(cfg), "--backend", "robot", "--backend", "sorption")
        try:
            await until(lambda: {"robot", "sorption"} <= set(server.backend_peer), 30, "the worker to register")
            recipe = candidate_pool(20, seed=1)[0].model_dump(mode="json")
            [synth] = await client.submit([{"capability": "synthesize", "inputs": {"recipe": recipe}}])
            [made] = await client.wait([synth], timeout=30)
            assert made.state is TaskState.succeeded, made
            sample = (await client.result(synth)).outputs["sample_id"]
            [tid] = await client.submit([{"capability": "measure.co2_uptake", "inputs": {"sample_id": sample}}])
            await until(lambda: _events_on_disk(docs, tid) >= 3, 30, "three isotherm points on disk")
            _kill(worker)  # SIGKILL mid-plan: no stop document, no result
            await until(lambda: orch.view.get_task(tid).state is TaskState.needs_review, 10, "the isotherm to review")

            sink = JsonlSink(docs)
            # the reviewer finds the interrupted runs by the task id: the transfer in, then the isotherm
            transfer, uid = sink.runs_for(tid)
            assert [n for n, _ in sink.read(transfer)][-1] == "stop"
            names = [n for n, _ in sink.read(uid)]
            assert names[0] == "start" and "descriptor" in names and "stop" not in names
            start = sink.read(uid)[0][1]
            assert start["task_id"] == tid and start["plan_name"] == "measure_isotherm"
            assert start["sample_id"] == sample
            events = [d for n, d in sink.read(uid) if n == "event"]
            assert 3 <= len(events) < 12  # the points measured before the kill, and not the rest
            assert all("gas_uptake" in e["data"] for e in events)
            # the finished synthesis run is complete on disk, with its stop document
            *_, synth_uid = sink.runs_for(synth)
            assert [n for n, _ in sink.read(synth_uid)][-1] == "stop"
        finally:
            _kill(worker)
            await client.close()
            await server.close()
            await orch.close()
            store.close()
    run(body(), 90)


def test_a_half_written_last_line_is_skipped_when_read(tmp_path: Path):
    """A writer killed inside a line leaves it half written: the rest of the run still reads."""
    sink = JsonlSink(tmp_path)
    sink.write("u1", "t1", [("start", {"uid": "u1", "task_id": "t1", "time": 1.0})])
    with sink.path("u1").open("a") as fh:
        fh.write('["event", {"uid": "e1", "da')
    assert sink.read("u1") == [("start", {"uid": "u1", "task_id": "t1", "time": 1.0})]
    assert sink.runs_for("t1") == ["u1"] and sink.runs_for("t2") == []


def test_documents_reach_the_sink_one_by_one_while_the_plan_runs(tmp_path: Path):
    """The stream hands each document to the sink as it is emitted, before the plan ends."""
    from bluesky import plan_stubs as bps
    from bluesky import preprocessors as bpp
    from ophyd.sim import det

    from ppu.backends.documents import DocumentStream
    from ppu.backends.runengine import RunEngineHost

    seen_during_plan: list[int] = []
    sink = JsonlSink(tmp_path)
    stream = DocumentStream(sink, "t9")

    def plan():  # type: ignore[no-untyped-def]
        @bpp.run_decorator(md={"task_id": "t9"})
        def inner():  # type: ignore[no-untyped-def]
            for _ in range(3):
                yield from bps.trigger_and_read([det])
                # what is on disk now, while the run is still open
                seen_during_plan.append(sum(1 for uid in stream.where for _ in sink.read(uid)))
        return (yield from inner())

    host = RunEngineHost("t")
    host.start()
    try:
        outcome = host.submit("t9", plan, on_document=stream).result(30)
    finally:
        host.close()
    assert outcome.ok
    assert seen_during_plan == [3, 4, 5]  # start + descriptor + event, then one more event each time
    [uid] = sink.runs_for("t9")
    assert [n for n, _ in sink.read(uid)] == ["start", "descriptor", "event", "event", "event", "stop"]
