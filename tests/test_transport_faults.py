"""Issue 12 (exactly once under faults) and issue 13 item 1 (only the holder reports), on real ZMQ.

Each test reproduces one failure a user saw, with real loopback sockets and, where a lab would,
separate OS processes; physical actions are counted in a file the test backend appends to.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq
import zmq.asyncio
from test_transport_crash import RECIPE, _kill, _runs, _spawn, _write_lab
from transport_helpers import HB, SYNTH, free_port, lab_config, run, until

from ppu import protocol as p
from ppu.backends.registry import build_backend
from ppu.config import AutonomyConfig, LabConfig, parse_lab
from ppu.models import Result, ResultStatus, TaskSpec, TaskState
from ppu.orchestrator import Orchestrator
from ppu.protocol import WaitTimeout
from ppu.store import Store
from ppu.transport import AsyncPPUClient, OrchestratorServer, Worker


class RawPeer:
    """A hand-driven DEALER: a rogue or a worker that misbehaves on purpose."""

    def __init__(self, ctx: zmq.asyncio.Context, addr: str, curve: Any = None):
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            self.sock.curve_publickey = curve.public
            self.sock.curve_secretkey = curve.secret
            self.sock.curve_serverkey = curve.server_public
        self.sock.connect(addr)

    async def send(self, msg: Any) -> None:
        await self.sock.send_multipart(p.encode(msg))

    async def expect(self, *types: str, timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.sock.poll(50):
                msg = p.decode(await self.sock.recv_multipart())
                if msg.type in types:
                    return msg
        raise AssertionError(f"no {types} within {timeout}s")

    def close(self) -> None:
        self.sock.close(linger=0)


def _synth(name: str, log: Path, duration_s: float = 1.0, slots: int = 1) -> dict[str, Any]:
    return {"type": SYNTH, "name": name, "slots": slots, "duration_s": duration_s, "time_scale": 100.0,
            "log_path": str(log)}


async def _serve(lab: LabConfig, autonomy: AutonomyConfig | None = None) -> tuple[Store, Orchestrator,
                                                                                   OrchestratorServer, str]:
    store = Store(lab.store_url())
    orch = Orchestrator(store, lab.orchestrator, autonomy or lab.autonomy)
    await orch.start()
    server = OrchestratorServer(orch, "tcp://127.0.0.1:0")
    return store, orch, server, await server.start()


def _journal_states(store: Store, tid: str) -> list[str]:
    return [str(e["dst"]) for e in store.journal_for(tid)]


def test_assignment_with_no_connected_worker_goes_back_to_its_queue(tmp_path: Path):
    """Issue 12.3: the worker's connection is gone when the assign is sent: requeued, not reviewed."""
    log = tmp_path / "runs.log"
    lab = lab_config(tmp_path, [_synth("robot", log)],
                     orchestrator={"heartbeat_s": 0.5, "missed_heartbeats": 6, "backoff_base_s": 0.0})

    async def body() -> None:
        store, orch, server, addr = await _serve(lab)
        ctx = zmq.asyncio.Context()
        ghost = RawPeer(ctx, addr)
        client = AsyncPPUClient(addr, timeout=5)
        worker: Worker | None = None
        try:
            spec = build_backend(lab.backend_entry("robot")).spec()
            await ghost.send(p.Register(req="g1", worker="ghost", backends=[spec]))
            await ghost.expect("register_ok")
            ghost.close()  # the connection is gone; the scheduler still counts on the backend
            await asyncio.sleep(0.3)
            [tid] = await client.submit([{"capability": "synthesize", "inputs": RECIPE}])
            await until(lambda: orch.counters["assign_undelivered"] >= 1, 5, "the assign to be refused")
            assert orch.sched.state_of(tid) is TaskState.ready  # back in its queue
            worker = Worker(addr, [build_backend(lab.backend_entry("robot"))], heartbeat_s=0.1)
            await worker.start()
            [t] = await client.wait([tid], timeout=15)
            assert t.state is TaskState.succeeded
            assert TaskState.needs_review.value not in _journal_states(store, tid)
            assert _runs(log)[tid] == 1
        finally:
            await client.close()
            if worker is not None:
                await worker.close()
            await server.close()
            await orch.close()
            store.close()
            ctx.term()
    run(body(), 60)


def test_dropped_assign_is_sent_again_not_left_stuck(tmp_path: Path):
    """Issue 12.4: an assign that never arrives (the worker keeps heartbeating) is re-sent, same attempt."""
    log = tmp_path / "runs.log"
    lab = lab_config(tmp_path, [_synth("robot", log)])

    async def body() -> None:
        store, orch, server, addr = await _serve(lab)
        worker = Worker(addr, [build_backend(lab.backend_entry("robot"))], heartbeat_s=HB)
        dropped: list[p.Assign] = []
        deliver = worker._on_message

        def lossy(msg: Any) -> None:
            if isinstance(msg, p.Assign) and not dropped:
                dropped.append(msg)  # lost on the way
                worker._last_heard = time.monotonic()
                return
            deliver(msg)
        worker._on_message = lossy  # type: ignore[method-assign]
        client = AsyncPPUClient(addr, timeout=5)
        try:
            await worker.start()
            await worker.wait_registered(10)
            [tid] = await client.submit([{"capability": "synthesize", "inputs": RECIPE}])
            [t] = await client.wait([tid], timeout=20)
            assert len(dropped) == 1 and t.state is TaskState.succeeded
            assert t.attempts == 1  # the same attempt was sent again, not a new one
            assert _runs(log)[tid] == 1
            assert _journal_states(store, tid) == ["pending", "ready", "assigned", "running", "succeeded"]
        finally:
            await client.close()
            await worker.close()
            await server.close()
            await orch.close()
            store.close()
    run(body(), 60)


def test_retry_after_review_runs_and_the_late_first_attempt_is_kept(tmp_path: Path):
    """Issue 12.2 and 12.7: a worker process stalls (SIGSTOP) mid-synthesis and is declared lost;
    the operator retries; the worker comes back, registers again, runs the retry (never ignored),
    and the first attempt's late result is kept with the task and its sample, not dropped."""
    log = tmp_path / "runs.log"
    port = free_port()
    cfg = _write_lab(tmp_path, port, [_synth("robot", log, duration_s=500.0)])
    lab = parse_lab(yaml.safe_load(cfg.read_text()))

    async def body() -> None:
        store, orch, server, addr = await _serve(lab)
        cfg.write_text(cfg.read_text().replace(f"tcp://127.0.0.1:{port}", addr))
        proc = _spawn("worker", "--config", str(cfg), "--backend", "robot")
        client = AsyncPPUClient(addr, timeout=5)
        try:
            await until(lambda: orch.sched.is_registered("robot"), 20, "the worker process to register")
            [tid] = await client.submit([{"capability": "synthesize", "inputs": RECIPE}])
            await until(lambda: _runs(log)[tid] == 1, 10, "attempt 1 to start")
            os.kill(proc.pid, signal.SIGSTOP)
            await until(lambda: orch.sched.state_of(tid) is TaskState.needs_review, 10, "needs_review")
            await client.review(tid, "retry", reason="robot looked idle")
            os.kill(proc.pid, signal.SIGCONT)
            [t] = await client.wait([tid], timeout=40)
            assert t.state is TaskState.succeeded and t.attempts == 2
            lines = [ln.split()[:2] for ln in log.read_text().splitlines()]
            assert lines == [[tid, "1"], [tid, "2"]]  # the retry ran: not ignored as a repeat
            await until(lambda: {r.attempt for r in store.results_for(tid)} == {1, 2}, 15,
                        "the late first attempt to be kept")
            assert store.get_sample(f"s-{tid}") is not None
            late = [a for a in store.audit_entries() if a.action == "late_result"]
            assert [(a.target, a.detail["attempt"]) for a in late] == [(tid, 1)]
            st = await client.status()
            [row] = [b for b in st["backends"] if b["name"] == "robot"]
            assert row["registered"] and row["state"] in ("online", "busy")  # back for good
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
            _kill(proc)
            await client.close()
            await server.close()
            await orch.close()
            store.close()
    run(body(), 90)


def test_forged_results_and_spoofed_registers_are_refused(tmp_path: Path):
    """Issue 13.1: a result is accepted only from the connection and backend holding the attempt."""
    log = tmp_path / "runs.log"
    lab = lab_config(tmp_path, [_synth("robot", log, duration_s=400.0),
                                {"type": "echo", "name": "rogue-echo", "duration_s": 0.0}])
    autonomy = AutonomyConfig(backends={"robot": "manual"})

    async def body() -> None:
        store, orch, server, addr = await _serve(lab, autonomy)
        ctx = zmq.asyncio.Context()
        worker = Worker(addr, [build_backend(lab.backend_entry("robot"))], heartbeat_s=HB)
        rogue, stranger = RawPeer(ctx, addr), RawPeer(ctx, addr)
        client = AsyncPPUClient(addr, timeout=5)
        try:
            await worker.start()
            await worker.wait_registered(10)
            await rogue.send(p.Register(req="r1", worker="rogue",
                                        backends=[build_backend(lab.backend_entry("rogue-echo")).spec()]))
            await rogue.expect("register_ok")
            [held, waiting] = await client.submit([{"capability": "synthesize", "inputs": RECIPE}] * 2)
            await client.approve(held)
            await until(lambda: _runs(log)[held] == 1, 10, "the approved synthesis to run")
            assert orch.view.get_task(waiting).approval.value == "waiting"

            def forged(tid: str, attempt: int, backend: str) -> p.ResultMsg:
                return p.ResultMsg(backend=backend, result=Result(
                    task_id=tid, attempt=attempt, status=ResultStatus.succeeded,
                    outputs={"sample_id": f"forged-{tid}-{attempt}", "mass_mg": 1.0}))
            cases = [(rogue, forged(held, 1, "rogue-echo"), "not_allowed"),  # registered, not the holder
                     (rogue, forged(held, 1, "robot"), "not_registered"),  # names a backend it lacks
                     (rogue, forged(waiting, 0, "rogue-echo"), "not_allowed"),  # waits for approval
                     (rogue, forged(waiting, 1, "rogue-echo"), "not_allowed"),  # never assigned
                     (stranger, forged(held, 1, "robot"), "not_registered")]  # never registered
            for peer, msg, code in cases:
                await peer.send(msg)
                err = await peer.expect("error", "ack")
                assert (err.type, err.code) == ("error", code), (msg, err)
            # several forged results in one message: each is refused on its own, none is acked
            await rogue.send(p.Results(backend="rogue-echo", results=[forged(held, 1, "rogue-echo").result,
                                                                     forged(waiting, 1, "rogue-echo").result]))
            errs = [await rogue.expect("error", "ack") for _ in range(2)]
            assert [(e.type, e.code, e.req) for e in errs] == [("error", "not_allowed", f"result:1:{held}"),
                                                               ("error", "not_allowed", f"result:1:{waiting}")]
            await rogue.send(p.Started(backend="rogue-echo", runs=[(held, 1)]))
            assert (await rogue.expect("error")).code == "not_allowed"
            # a spoofed register of the live robot from another socket is refused: no hijack
            await stranger.send(p.Register(req="s1", worker="spoof", boot="guess",
                                           backends=[build_backend(lab.backend_entry("robot")).spec()]))
            err = await stranger.expect("error", "register_ok")
            assert (err.type, err.code, err.req) == ("error", "not_allowed", "s1")
            assert server.peers[server.backend_peer["robot"]].boot == worker.boot  # still the real worker
            [t] = await client.wait([held], timeout=20)
            assert t.state is TaskState.succeeded and t.attempts == 1
            assert orch.view.get_task(waiting).approval.value == "waiting"
            assert orch.view.get_task(waiting).state is TaskState.pending
            assert {s.id for s in store.list_samples()} == {f"s-{held}"}  # no forged sample
            assert not [r for r in store.results_for(held) if r.outputs.get("sample_id", "").startswith("forged")]
            assert orch.counters["refused_result"] == 5 and orch.counters["refused_started"] == 1
            audited = [a for a in store.audit_entries() if a.action.startswith("refused_")]
            assert sum(a.action == "refused_result" for a in audited) == 5
            assert sum(a.action == "refused_register" for a in audited) == 1
        finally:
            await client.close()
            rogue.close()
            stranger.close()
            await worker.close()
            await server.close()
            await orch.close()
            store.close()
            ctx.term()
    run(body(), 60)


def test_floods_and_spoofed_backends_leave_state_bounded(tmp_path: Path):
    """Issue 12.8: 20,000 progress messages for unknown ids, timed-out waits and 100 spoofed
    backends that never come back: every table keyed by a peer, task or request stays bounded."""
    lab = lab_config(tmp_path, [{"type": "echo", "name": "echo-1", "duration_s": 0.0}])

    async def body() -> None:
        store, orch, server, addr = await _serve(lab, AutonomyConfig(capabilities={"echo": "manual"}))
        ctx = zmq.asyncio.Context()
        rogue = RawPeer(ctx, addr)
        client = AsyncPPUClient(addr, timeout=5)
        spoofs: list[RawPeer] = []
        try:
            spec = build_backend(lab.backend_entry("echo-1")).spec()
            await rogue.send(p.Register(req="r1", worker="rogue", backends=[spec]))
            await rogue.expect("register_ok")
            for i in range(20_000):
                await rogue.send(p.Progress(backend="echo-1", task_id=f"unknown-{i}", fraction=0.5,
                                            message="x" * 100))
            # refused by the scheduler (no such attempt) or, once the silent rogue was declared
            # lost, by the server (not registered): either way counted, and nothing kept
            await until(lambda: orch.counters["refused_progress"] == 20_000, 60, "the flood to be handled")
            assert orch.progress_of == {}
            audit_rows = len(store.audit_entries())
            assert audit_rows < 10  # progress refusals are counted, not written one by one
            # timed-out waits leave no future behind (the task waits for an approval that never comes)
            [tid] = await client.submit([{"capability": "echo", "inputs": {"x": 1}}])
            assert orch.view.get_task(tid).approval.value == "waiting"
            for _ in range(50):
                with pytest.raises(WaitTimeout):
                    await client.wait([tid], timeout=0.01)
            assert len(orch.waits) == 0
            # 100 spoofed backends that register and vanish are forgotten
            for i in range(100):
                peer = RawPeer(ctx, addr)
                s = spec.model_copy(update={"name": f"spoof-{i}"})
                await peer.send(p.Register(req=f"s{i}", worker="spoof", backends=[s]))
                spoofs.append(peer)
            await until(lambda: sum(n.startswith("spoof-") for n in orch.specs) == 100, 20, "the spoofs")
            for peer in spoofs:
                peer.close()
            spoofs = []
            await until(lambda: not any(b["name"].startswith("spoof-") for b in orch.sched.backends()), 30,
                        "the spoofed backends to expire")
            status = await client.status()
            assert status["backends"] == []  # the silent rogue's echo-1 expired as well
            assert not any(n.startswith("spoof-") for n in orch.specs)
            assert not any(n.startswith("spoof-") for n in server.backend_peer)
            await until(lambda: len(server.peers) == 0, 10, "silent connections to be let go")
        finally:
            for peer in spoofs:
                peer.close()
            await client.close()
            rogue.close()
            await server.close()
            await orch.close()
            store.close()
            ctx.term()
    run(body(), 120)


def test_restart_storm_sends_nothing_to_review_that_ran_or_never_started(tmp_path: Path):
    """Issue 12.1: SIGKILL and restart the orchestrator process three times while a worker keeps
    running and queueing messages. The worker registers once per connection, and no `once` task
    goes to review: every one ran exactly once and succeeded."""
    log = tmp_path / "runs.log"
    port = free_port()
    cfg = _write_lab(tmp_path, port, [_synth("robot", log, duration_s=20.0, slots=2)])
    lab = parse_lab(yaml.safe_load(cfg.read_text()))
    addr = lab.orchestrator.bind

    async def body() -> None:
        orch_proc = _spawn("orchestrator", "--config", str(cfg))
        worker = Worker(addr, [build_backend(lab.backend_entry("robot"))], heartbeat_s=HB)
        client = AsyncPPUClient(addr, timeout=2)
        kills = 0
        try:
            await worker.start()
            await worker.wait_registered(20)
            specs = [{"capability": "synthesize", "inputs": RECIPE} if i % 2 == 0
                     else {"capability": "echo", "inputs": {"x": i}} for i in range(40)]
            ids = await client.submit(specs)
            for target in (8, 18, 28):
                await until(lambda t=target: sum(_runs(log).values()) >= t, 30, f"{target} runs")
                _kill(orch_proc)
                kills += 1
                await asyncio.sleep(0.5)  # the worker goes on, queueing heartbeats and results
                orch_proc = _spawn("orchestrator", "--config", str(cfg))
                await until(lambda: worker.registered, 20, "the worker to register again")

            async def settled() -> bool:
                try:
                    tasks = await client.tasks(limit=1000)
                except Exception:
                    return False
                return len(tasks) == 40 and all(t.state in (TaskState.succeeded, TaskState.needs_review,
                                                            TaskState.failed) for t in tasks)
            await until(settled, 60, "every task to settle")
            tasks = {t.id: t for t in await client.tasks(limit=1000)}
            assert set(tasks) == set(ids)
            runs = _runs(log)
            review = [t for t in tasks.values() if t.state is not TaskState.succeeded]
            assert review == [], [(t.id, t.state, t.error) for t in review]
            synth = [i for i, s in zip(ids, specs, strict=True) if s["capability"] == "synthesize"]
            assert all(runs[tid] == 1 for tid in synth), {tid: runs[tid] for tid in synth if runs[tid] != 1}
            # once per connection: one registration per new connection or not_registered answer,
            # and the orchestrator takes one registration per incarnation (the issue saw 7 to 58)
            processed = [a for a in await client.audit() if a.action == "register"]
            print(f"storm: kills={kills} sent={worker.registrations} reconnects={worker.reconnects} "
                  f"processed={len(processed)}")
            assert worker.registrations <= 1 + kills + worker.reconnects
            assert len(processed) <= 2 * (1 + kills)
        finally:
            await client.close()
            await worker.close()
            _kill(orch_proc)
    run(body(), 150)


def test_a_worker_key_cannot_report_for_backends_it_does_not_hold(tmp_path: Path):
    """Issue 13.1 with CURVE: a worker key allowed only `echo-2` registers it, then reports a result
    for the robot's running task (naming either backend): refused, counted, audited, no effect."""
    from ppu.transport import generate_keys, peer_keys

    log = tmp_path / "runs.log"
    keys = tmp_path / "keys"
    for name in ("orchestrator", "robot-pc", "other-pc", "client"):
        generate_keys(name, keys)
    lab = lab_config(tmp_path, [_synth("robot", log, duration_s=300.0),
                                {"type": "echo", "name": "echo-2", "duration_s": 0.0}],
                     security={"curve": True, "keys_dir": str(keys), "clients": ["client"],
                               "workers": {"robot-pc": ["robot"], "other-pc": ["echo-2"]}})

    async def body() -> None:
        store = Store(lab.store_url())
        orch = Orchestrator(store, lab.orchestrator, lab.autonomy)
        await orch.start()
        server = OrchestratorServer(orch, "tcp://127.0.0.1:0", lab.security)
        addr = await server.start()
        ctx = zmq.asyncio.Context()
        worker = Worker(addr, [build_backend(lab.backend_entry("robot"))], heartbeat_s=HB,
                        curve=peer_keys(lab.security, "robot-pc"))
        other = RawPeer(ctx, addr, curve=peer_keys(lab.security, "other-pc"))
        client = AsyncPPUClient(addr, timeout=5, curve=peer_keys(lab.security, "client"))
        try:
            await worker.start()
            await worker.wait_registered(10)
            await other.send(p.Register(req="o1", worker="other",
                                        backends=[build_backend(lab.backend_entry("echo-2")).spec()]))
            await other.expect("register_ok")
            [tid] = await client.submit([{"capability": "synthesize", "inputs": RECIPE}])
            await until(lambda: _runs(log)[tid] == 1, 10, "the synthesis to run on the robot")
            for backend, code in (("echo-2", "not_allowed"), ("robot", "not_registered")):
                await other.send(p.ResultMsg(backend=backend, result=Result(
                    task_id=tid, attempt=1, status=ResultStatus.succeeded,
                    outputs={"sample_id": "forged", "mass_mg": 1.0})))
                assert (await other.expect("error")).code == code
            # and it may not register the robot either
            await other.send(p.Register(req="o2", worker="other",
                                        backends=[build_backend(lab.backend_entry("robot")).spec()]))
            assert (await other.expect("error")).code == "not_allowed"
            [t] = await client.wait([tid], timeout=20)
            assert t.state is TaskState.succeeded
            assert {s.id for s in store.list_samples()} == {f"s-{tid}"}
            assert orch.counters["refused_result"] == 2
            refused = [a for a in store.audit_entries() if a.action == "refused_result"]
            assert len(refused) == 2 and all(a.target == tid for a in refused)
        finally:
            await client.close()
            other.close()
            await worker.close()
            await server.close()
            await orch.close()
            store.close()
            ctx.term()
    run(body(), 60)


def test_work_the_orchestrator_does_not_expect_is_aborted_and_let_go(tmp_path: Path):
    """Issue 12.4, the other side: a worker runs an attempt nobody assigned it (as after a lost
    abort). Its inventory shows it; the orchestrator aborts it and refuses its result, which the
    worker then stops re-sending."""
    from ppu.backends.base import TaskRun

    log = tmp_path / "runs.log"
    lab = lab_config(tmp_path, [_synth("robot", log, duration_s=3000.0)])

    async def body() -> None:
        store, orch, server, addr = await _serve(lab)
        worker = Worker(addr, [build_backend(lab.backend_entry("robot"))], heartbeat_s=HB)
        try:
            await worker.start()
            await worker.wait_registered(10)
            worker._on_message(p.Assign(backend="robot", batch_id="robot#1", reg="stale", seq=7, runs=[
                TaskRun(task_id="ghost", attempt=1, capability="echo", inputs={"x": 1})]))
            host = worker.hosts["robot"]
            assert host.holding()[0] == [("ghost", 1)]
            await until(lambda: host.holding() == ([], []), 10, "the ghost run to be aborted and let go")
            assert _runs(log)["ghost"] == 1
            assert orch.counters["refused_result"] == 1
            assert orch.sched.state_of("ghost") is None and store.get_task("ghost") is None
        finally:
            await worker.close()
            await server.close()
            await orch.close()
            store.close()
    run(body(), 60)


def test_registering_again_happens_on_a_new_connection_once(tmp_path: Path):
    """Issue 12.1: a registration's list of held work must be exact, so a worker registers again
    only on a fresh connection (what the old one still carried is dropped unread with it), and
    a burst of not_registered answers to older messages yields one registration, not one each."""
    log = tmp_path / "runs.log"
    lab = lab_config(tmp_path, [_synth("robot", log)])

    async def body() -> None:
        store, orch, server, addr = await _serve(lab)
        worker = Worker(addr, [build_backend(lab.backend_entry("robot"))], heartbeat_s=HB)
        try:
            await worker.start()
            await worker.wait_registered(10)
            first = server.backend_peer["robot"]
            regs = worker.registrations
            for _ in range(20):  # as after a restart: answers to messages queued before registering
                await server.send(first, p.Error.of(p.NotRegistered("not registered")))
            await until(lambda: worker.registered and server.backend_peer.get("robot") not in (None, first), 10,
                        "the registration on the new connection")
            assert worker.registrations == regs + 1 and worker.reconnects == 1
            assert orch.counters["registrations"] == 2
            [tid] = orch.submit([TaskSpec(capability="synthesize", inputs=RECIPE)])
            [t] = await orch.waits.wait([tid], timeout=10)
            assert t.state is TaskState.succeeded and _runs(log)[tid] == 1
        finally:
            await worker.close()
            await server.close()
            await orch.close()
            store.close()
    run(body(), 60)


def test_a_standby_worker_says_once_why_it_waits_and_takes_over_when_the_holder_goes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """A second worker for a held backend was refused at every try, and logged each refusal as an error
    (every 3 s with the default heartbeat): now once, until the holder goes quiet and it takes over."""
    import logging

    lab = lab_config(tmp_path, [{"type": "echo", "name": "echo-1", "duration_s": 0.0}])

    async def body() -> None:
        store, orch, server, addr = await _serve(lab, None)
        # a slower heartbeat than the other tests': a stall of the shared loop on a busy machine must not
        # pass for the holder going quiet before the standby has been refused four times
        holder = Worker(addr, [build_backend(lab.backend_entry("echo-1"))], heartbeat_s=3 * HB)
        standby = Worker(addr, [build_backend(lab.backend_entry("echo-1"))], heartbeat_s=3 * HB)
        client = AsyncPPUClient(addr, timeout=5)
        try:
            await holder.start()
            await holder.wait_registered(10)
            with caplog.at_level(logging.DEBUG, logger="ppu.transport.worker"):
                await standby.start()

                def refusals() -> list[logging.LogRecord]:
                    return [r for r in caplog.records if "refused the registration" in r.getMessage()]

                # counted from the log, not from the registrations sent: the fourth answer may still be on its way
                await until(lambda: len(refusals()) >= 4, 20, "the standby to be refused four times")
                refused = refusals()
                assert len(refused) >= 4 and [r.levelno for r in refused].count(logging.ERROR) == 1, refused
                assert "held by another live connection" in refused[0].getMessage()
                await holder.close()  # the holder goes quiet: the standby takes over
                await standby.wait_registered(20)
            assert any("(refused until now)" in r.getMessage() for r in caplog.records)
            [t] = await client.run([{"capability": "echo", "inputs": {"x": 1}}], timeout=20)
            assert t.state is TaskState.succeeded
        finally:
            await client.close()
            await standby.close()
            await holder.close()
            await server.close()
            await orch.close()
            store.close()
    run(body(), 90)
