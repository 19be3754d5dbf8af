"""A wait out when the orchestrator restarts comes back when the task ends, not a slice and a timeout later.

A user trial: after a restart, a client's ``screen`` returned ~19 s after its last block had ended. The
wait request in flight died with the orchestrator, and the client only asked again once that request's
own timeout ran out (the wait's slice, ``WAIT_SLICE_S``, plus the client's timeout). Now both clients
watch their connection (a ZMQ socket monitor): when it drops, a wait out is asked again at once, and the
request goes out when the orchestrator is back.

Real processes, as a lab runs them: an orchestrator killed (SIGKILL) and restarted while a blocking and
an asyncio client wait for a task that a worker process holds until the test lets it end. The clients'
timeouts are 10 minutes, so a wait that is not asked again would not come back within the test.

The same holds for event streams: a restarted orchestrator knows no subscriber, so a dashboard's live
feed went silent for good while its requests still worked. Both clients now subscribe again when the
connection drops.

A network can also go silent without closing the connection (a NAT or firewall that drops a flow, a host
gone without a word): the clients then saw no drop at all, and a wait out hung until its own timeout,
its answer and every re-ask lost in the dead connection. The clients now send ZMQ heartbeats, and a
connection with nothing back for a few of them is dropped like a closed one. The silent network here is
a line process between the clients and the orchestrator (``silent_line.py``) that, on a signal, stops
carrying the connections it holds without closing them, and carries new ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from pydantic import Field
from transport_helpers import free_port

from ppu.backends.base import BackendConfig, ProgressFn, TaskRun
from ppu.backends.echo import EchoBackend, EchoConfig
from ppu.errors import PPUError
from ppu.models import Result, TaskSpec, TaskState
from ppu.transport import AsyncPPUClient, PPUClient

TESTS = Path(__file__).parent
LONG = 600.0  # the clients' timeout: a lost wait asked again only after it would outlast the test
CLIENT_HB = 0.2  # the clients' heartbeat through the silent line: a silent connection is dropped after 1 s


class GateConfig(EchoConfig):
    gate: str = Field(description="a task runs until the file <gate>/go exists")


class GatedEcho(EchoBackend):
    """The echo backend, each batch held until the test lets it go (a file)."""

    Config: ClassVar[type[BackendConfig]] = GateConfig

    async def run(self, batch: list[TaskRun], progress: ProgressFn) -> list[Result]:
        cfg = self.config
        assert isinstance(cfg, GateConfig)
        while not (Path(cfg.gate) / "go").exists():
            await asyncio.sleep(0.01)
        return await super().run(batch, progress)


def _spawn(log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    with open(log, "ab") as out:  # a file, not a pipe nobody reads
        return subprocess.Popen([sys.executable, "-m", "ppu.cli", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def _until(pred: Any, what: str, procs: dict[str, subprocess.Popen[bytes]], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        for name, proc in procs.items():
            assert proc.poll() is None, f"the {name} exited ({proc.returncode}) waiting for {what}:\n" + \
                log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n" + log.read_text()[-3000:]
        time.sleep(0.05)


@dataclass
class _Lab:
    """An orchestrator process and a worker process hosting one gated echo backend."""

    tmp: Path
    gate: Path = field(init=False)
    address: str = field(init=False)
    cfg: Path = field(init=False)
    log: Path = field(init=False)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.gate = self.tmp / "gate"
        self.gate.mkdir()
        self.address = f"tcp://127.0.0.1:{free_port()}"
        raw = {"name": "restart", "run_dir": str(self.tmp), "store": f"sqlite:///{self.tmp / 'ppu.sqlite'}",
               "orchestrator": {"bind": self.address, "heartbeat_s": 0.1, "missed_heartbeats": 20,
                                "restart_grace_s": 120.0},
               "backends": [{"type": "test_client_restart:GatedEcho", "name": "gated", "duration_s": 0.0,
                             "gate": str(self.gate)}]}
        self.cfg = self.tmp / "lab.yaml"
        self.cfg.write_text(yaml.safe_dump(raw))
        self.log = self.tmp / "processes.log"
        self.procs = {"orchestrator": _spawn(self.log, "orchestrator", "--config", str(self.cfg)),
                      "worker": _spawn(self.log, "worker", "--config", str(self.cfg), "--backend", "gated")}

    def until(self, pred: Any, what: str, timeout: float = 120) -> None:
        _until(pred, what, self.procs, self.log, timeout)

    def restart_orchestrator(self) -> None:
        """SIGKILL, then start it again on the same store."""
        killed = self.procs.pop("orchestrator")
        killed.send_signal(signal.SIGKILL)
        killed.wait(30)
        self.procs["orchestrator"] = _spawn(self.log, "orchestrator", "--config", str(self.cfg))

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def _counter(probe: PPUClient, name: str) -> int:
    try:
        return int(probe.status()["counters"].get(name, 0))
    except PPUError:  # not answering yet (the probe's own request is replaced, not queued)
        return -1


def _waits_go_on(lab: _Lab, caplog: pytest.LogCaptureFixture, through: str, interrupt: Any, what: str,
                 **client: Any) -> None:
    """A blocking and an asyncio client (``client`` options) wait through ``through`` for a task the
    worker holds; ``interrupt()`` breaks their connections; then the task ends. Each wait comes back with
    the task, its client having seen the drop once and never waited out a request's timeout."""
    probe = PPUClient(lab.address, timeout=2)  # straight to the orchestrator
    blocking = PPUClient(through, timeout=LONG, **client)
    got: dict[str, Any] = {}
    caplog.set_level(logging.WARNING, logger="ppu.transport.ops")
    loop = asyncio.new_event_loop()
    threads: list[threading.Thread] = []
    try:
        lab.until(lambda: _counter(probe, "waits") >= 0 and probe.status()["backends"], "the worker to register")
        [tid] = probe.submit([TaskSpec(capability="echo", inputs={"x": 2.0})])
        lab.until(lambda: probe.task(tid).state is TaskState.running, "the task to run")

        def wait_blocking() -> None:
            got["blocking"] = blocking.wait([tid])

        async def wait_async() -> None:
            async with AsyncPPUClient(through, timeout=LONG, **client) as c:
                got["async"] = await c.wait([tid])

        threads += [threading.Thread(target=wait_blocking, daemon=True),
                    threading.Thread(target=lambda: loop.run_until_complete(wait_async()), daemon=True)]
        for t in threads:
            t.start()
        lab.until(lambda: _counter(probe, "waits") >= 2, "both waits to reach the orchestrator")

        interrupt(probe)
        (lab.gate / "go").touch()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), f"a wait did not come back after {what}"
        for name in ("blocking", "async"):
            [task] = got[name]
            assert task.id == tid and task.state is TaskState.succeeded, (name, task)
        said = [r.getMessage() for r in caplog.records if r.name == "ppu.transport.ops"]
        assert sum("dropped during a wait" in m for m in said) == 2 and not any("did not answer" in m for m in said), \
            said  # each client saw the drop, and neither waited out a request's timeout
    finally:
        probe.close()
        blocking.close()
        lab.stop()
        if not any(t.is_alive() for t in threads):
            loop.close()


def _streams_go_on(lab: _Lab, through: str, interrupt: Any, subscribed: int, what: str,
                   meanwhile: Any = None, **client: Any) -> dict[str, list[dict[str, Any]]]:
    """A blocking and an asyncio event stream (``client`` options) through ``through`` see a first task;
    ``interrupt()`` breaks their connections, then ``meanwhile(probe)`` runs; once the orchestrator has had
    ``subscribed`` subscriptions in all, both see a task submitted after that. Returns what each saw."""
    (lab.gate / "go").touch()  # nothing held here
    probe = PPUClient(lab.address, timeout=2)
    seen: dict[str, list[dict[str, Any]]] = {"blocking": [], "async": []}
    stop = threading.Event()

    def follow_blocking() -> None:
        with PPUClient(through, timeout=5, **client) as c:
            for ev in c.events(timeout=60.0):
                seen["blocking"].append(ev)
                if stop.is_set():
                    return

    async def follow_async() -> None:
        async with AsyncPPUClient(through, timeout=5, **client) as c:
            async for ev in c.events():
                seen["async"].append(ev)
                if stop.is_set():
                    return

    def ended(tid: str) -> bool:
        return all(any(e.get("task_id") == tid and e.get("dst") == "succeeded" for e in got) for got in seen.values())

    loop = asyncio.new_event_loop()
    threads = [threading.Thread(target=follow_blocking, daemon=True),
               threading.Thread(target=lambda: loop.run_until_complete(follow_async()), daemon=True)]
    try:
        lab.until(lambda: _counter(probe, "registrations") >= 1, "the worker to register")
        for t in threads:
            t.start()
        lab.until(lambda: _counter(probe, "subscriptions") >= 2, "both streams to subscribe")
        [first] = probe.submit([TaskSpec(capability="echo", inputs={"x": 1.0})])
        lab.until(lambda: ended(first), "both streams to see a first task")

        interrupt(probe)
        if meanwhile is not None:
            meanwhile(probe)
        lab.until(lambda: _counter(probe, "subscriptions") >= subscribed, "both streams to subscribe again")
        [after] = probe.submit([TaskSpec(capability="echo", inputs={"x": 2.0})])
        lab.until(lambda: ended(after), f"both streams to see the task submitted after {what}")
        stop.set()
        [last] = probe.submit([TaskSpec(capability="echo", inputs={"x": 3.0})])  # an event to stop on
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads) and last
        seen["counters"] = [probe.status()["counters"]]
        return seen
    finally:
        stop.set()
        probe.close()
        lab.stop()
        if not any(t.is_alive() for t in threads):
            loop.close()


def _gaps(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("type") == "gap"]


def _restart(lab: _Lab, counter: str, least: int) -> Any:
    """Kill and restart the orchestrator, then wait until its ``counter`` reaches ``least`` (the waits
    asked again, the worker registered again)."""
    def interrupt(probe: PPUClient) -> None:
        lab.restart_orchestrator()  # what was out dies with the one killed
        lab.until(lambda: _counter(probe, counter) >= least, f"{counter} to reach the new orchestrator")
    return interrupt


def test_waits_out_when_the_orchestrator_restarts_are_asked_again_at_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lab = _Lab(tmp_path)
    _waits_go_on(lab, caplog, lab.address, _restart(lab, "waits", 2), "the restart")


def test_event_streams_subscribe_again_when_the_orchestrator_restarts(tmp_path: Path) -> None:
    """A restarted orchestrator knows no subscriber: a dashboard's live feed (the asyncio client's
    ``events``) and a blocking ``events`` loop went silent for good, though every request still worked.
    Now both subscribe again when their connection drops, and see the next task's transitions."""
    lab = _Lab(tmp_path)
    seen = _streams_go_on(lab, lab.address, _restart(lab, "registrations", 1), 2, "the restart")
    for name in ("blocking", "async"):  # the restarted orchestrator's events before it are lost: said once
        [gap] = _gaps(seen[name])
        assert gap["missed"] is None and "restarted" in gap["reason"], (name, gap)


@dataclass
class _SilentLine:
    """A ``silent_line.py`` process carrying TCP from its own port to the lab's orchestrator."""

    lab: _Lab
    state: Path = field(init=False)
    address: str = field(init=False)

    def __post_init__(self) -> None:
        self.state = self.lab.tmp / "line"
        self.state.mkdir()
        port = free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        upstream = self.lab.address.rsplit(":", 1)[1]
        with open(self.lab.log, "ab") as out:
            self.lab.procs["line"] = subprocess.Popen(
                [sys.executable, str(TESTS / "silent_line.py"), str(port), upstream, str(self.state)],
                stdout=out, stderr=subprocess.STDOUT)
        self.lab.until((self.state / "listening").exists, "the line to listen")

    def go_silent(self, _probe: PPUClient | None = None) -> None:
        """Silence the connections the line carries now: the two clients', neither closed."""
        self.lab.procs["line"].send_signal(signal.SIGUSR1)
        self.lab.until((self.state / "silent").exists, "the line to go silent")
        assert int((self.state / "silent").read_text()) == 2


def test_waits_out_when_the_network_goes_silent_are_asked_again_on_a_new_connection(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Both waits go through the line; it goes silent, then the task ends. Each client drops its silent
    connection by its heartbeats, connects again through the line and asks again. Without heartbeats the
    answers and re-asks went into the dead connections, and the waits never came back."""
    lab = _Lab(tmp_path)
    line = _SilentLine(lab)
    _waits_go_on(lab, caplog, line.address, line.go_silent, "the network went silent", heartbeat_s=CLIENT_HB)


def test_event_streams_subscribe_again_when_the_network_goes_silent(tmp_path: Path) -> None:
    """A blocking and an asyncio event stream through the line; it goes silent. Each client drops its
    silent connection by its heartbeats and subscribes again through the line, and both see a task
    submitted after that. Without heartbeats both streams stayed silent for good."""
    lab = _Lab(tmp_path)
    line = _SilentLine(lab)
    seen = _streams_go_on(lab, line.address, line.go_silent, 4, "the network went silent", heartbeat_s=CLIENT_HB)
    for name in ("blocking", "async"):
        assert not _gaps(seen[name]), seen[name]


def test_events_a_stream_missed_while_the_network_was_silent_are_sent_again_once(tmp_path: Path) -> None:
    """The line goes silent and holds new connections while a task runs to its end: none of its events can
    reach the streams. Once the line carries again, each stream subscribes after the last event it took and
    is sent those events again: each stream sees every transition of that task once, and no gap."""
    lab = _Lab(tmp_path)
    line = _SilentLine(lab)
    during: list[str] = []

    def meanwhile(probe: PPUClient) -> None:
        during.extend(probe.submit([TaskSpec(capability="echo", inputs={"x": 9.0})]))
        [task] = probe.wait(during, timeout=60)
        assert task.state is TaskState.succeeded
        (line.state / "hold").unlink()  # the network is back

    def interrupt(probe: PPUClient) -> None:
        (line.state / "hold").touch()  # new connections wait: the streams cannot subscribe again yet
        line.go_silent(probe)

    seen = _streams_go_on(lab, line.address, interrupt, 4, "the network went silent", meanwhile,
                          heartbeat_s=CLIENT_HB)
    for name in ("blocking", "async"):
        events = seen[name]
        moves = [e["dst"] for e in events if e.get("task_id") == during[0] and e.get("type") == "transition"]
        assert moves[:1] == ["pending"] and moves[-1:] == ["succeeded"] and len(moves) == len(set(moves)) >= 4, \
            (name, moves)
        assert not _gaps(events), events
        stamped = [(e.get("task_id"), e.get("type"), e.get("dst"), e.get("at")) for e in events]
        assert len(stamped) == len(set(stamped)), "an event was handed on twice"
    [counters] = seen["counters"]
    assert counters.get("events_replayed", 0) >= 2 * 4, counters  # each stream: at least those 4 moves
