"""Soak: a simulated MOF campaign while the orchestrator and the workers are SIGKILLed at random.

Issue 12, "what to deliver". Separate OS processes (``ppu orchestrator``, three ``ppu worker``),
the MOF pack's simulated lab (real Bluesky RunEngines on Ophyd devices, time-scaled), a campaign
driven through the client as a flow would drive it: syntheses, an XRD on every sample made, and
bursts of digital echo work. A seeded schedule SIGKILLs one of the four processes every few
seconds and starts it again. Afterwards four independent records are read back:

- the store (tasks table and journal): every accepted task is there and ended in exactly one
  terminal state (the journal holds exactly one transition into a terminal state per task);
- the simulated lab's sample register (``samples.jsonl``): no synthesis made two samples;
- the Bluesky documents streamed by the workers: no `once` plan ran twice for a task;
- all three together: no task went to review without having started (a `running` transition,
  a document or a register entry of its own), unless its worker was killed between its
  assignment and its review (then nobody can know whether it started, and review is right).

Tasks that went to review are decided by the test as the operator would (`fail`), so that every
task ends. The short version runs in the default suite; ``-m slow`` runs at least 20 kills.
Figures are printed (kills, tasks, lost, duplicated, wrongly reviewed, worst loop stall).
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from transport_helpers import free_port

from ppu.errors import NotAllowed, PPUError
from ppu.models import TERMINAL_STATES, TaskState
from ppu.simulators.mof import candidate_pool
from ppu.store import Store
from ppu.transport.client import PPUClient

TESTS = Path(__file__).parent
ONCE_PLANS = {"synthesize": "synthesize", "characterize.xrd": "measure_xrd"}
WORKERS = {"w-lab": ["robot-1", "xrd"], "w-robot": ["robot-2"], "w-digital": ["echo"]}
LIVE_ORDER = [TaskState.pending, TaskState.ready, TaskState.assigned, TaskState.running, TaskState.needs_review]


@dataclass
class SoakPlan:
    syntheses: int
    echo: int
    kills: int
    seed: int
    every_s: tuple[float, float] = (2.0, 4.0)  # seconds between kills (seeded uniform)


@dataclass
class Proc:
    name: str
    args: list[str]
    logs: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
        self.starts += 1
        log = (self.logs / f"{self.name}-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "ppu.cli", *self.args], env=env,
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()
            return None


@dataclass
class Campaign:
    """The campaign as a client drives it: explicit task ids, so a submit whose answer was lost
    (the orchestrator died after journaling it) is sent again and recognised as accepted."""

    plan: SoakPlan
    rng: random.Random
    submitted: dict[str, dict[str, Any]] = field(default_factory=dict)  # every spec ever sent, by id
    accepted: set[str] = field(default_factory=set)
    to_send: list[list[dict[str, Any]]] = field(default_factory=list)
    states: dict[str, TaskState] = field(default_factory=dict)
    running_on: set[str | None] = field(default_factory=set)
    quiet_rounds: int = 0
    followed: set[str] = field(default_factory=set)
    synth_launched: int = 0
    echo_launched: int = 0

    def __post_init__(self) -> None:
        self.pool = candidate_pool(max(60, self.plan.syntheses), seed=self.plan.seed)

    def queue(self, specs: list[dict[str, Any]]) -> None:
        for s in specs:
            self.submitted[s["id"]] = s
        self.to_send.append(specs)

    def step(self, client: PPUClient) -> None:
        """One round: send what is unsent, read the states, follow up, launch more work."""
        while self.to_send:
            batch = self.to_send[0]
            try:
                client.submit(batch)
            except NotAllowed as exc:  # all or none: the batch was accepted before its answer was lost
                if exc.field != "id":
                    raise
            self.accepted.update(s["id"] for s in batch)
            self.to_send.pop(0)
        # Only what is still live, listed in the order tasks move (a task moving on is seen in a later
        # list), and the succeeded syntheses: a light poll, as a campaign would do it.
        live = [t for st in LIVE_ORDER for t in client.tasks(state=st.value, campaign="soak", limit=100_000)]
        ended = {t.id for t in client.tasks(state="succeeded", campaign="soak", capability="synthesize",
                                            limit=100_000)}
        self.states = {t: TaskState.succeeded for t in ended} | {t.id: t.state for t in live}
        busy = [t for t in live if t.state is not TaskState.needs_review]
        self.quiet_rounds = self.quiet_rounds + 1 if not busy else 0
        self.running_on = {t.backend for t in live if t.state is TaskState.running}
        for tid in ended:
            if tid.startswith("syn-") and tid not in self.followed:
                res = client.result(tid)
                assert res is not None, tid
                self.queue([{"id": "xrd-" + tid[4:], "capability": "characterize.xrd", "campaign": "soak",
                             "inputs": {"sample_id": res.outputs["sample_id"]}, "max_attempts": 1}])
                self.followed.add(tid)
        busy_ids = {t.id for t in live if t.state is not TaskState.needs_review}  # review frees the robot
        in_flight = sum(1 for t in self.accepted if t.startswith("syn-") and t in busy_ids)
        while in_flight < 4 and self.synth_launched < self.plan.syntheses:
            i = self.synth_launched
            recipe = self.pool[i].model_dump(mode="json")
            self.queue([{"id": f"syn-{i}", "capability": "synthesize", "campaign": "soak",
                         "inputs": {"recipe": recipe}, "max_attempts": 1}])
            self.synth_launched += 1
            in_flight += 1
        if self.echo_launched < self.plan.echo:
            n = min(self.rng.randint(10, 60), self.plan.echo - self.echo_launched)
            k = self.echo_launched
            self.queue([{"id": f"echo-{k + j}", "capability": "echo", "campaign": "soak",
                         "inputs": {"x": k + j}} for j in range(n)])
            self.echo_launched += n

    def finished(self) -> bool:
        # step() follows up every succeeded synthesis in the round that sees it, so nothing is unsent here
        # nothing live but what waits for a person, two rounds running (a task moving back, as a requeue
        # does, could hide from one round's lists)
        waiting = all(s is TaskState.needs_review for s in self.states.values() if s not in TERMINAL_STATES)
        return (not self.to_send and self.synth_launched == self.plan.syntheses
                and self.echo_launched == self.plan.echo and waiting and self.quiet_rounds >= 2)


def _lab(tmp: Path, port: int, seed: int) -> Path:
    phys = {"simulated": True, "time_scale": 10_000.0, "lab": "soak", "run_dir": str(tmp / "lab"),
            "world": {"seed": seed}, "seed": seed}
    raw = {"name": "soak", "run_dir": str(tmp), "store": f"sqlite:///{tmp / 'ppu.sqlite'}", "packs": ["mof"],
           "orchestrator": {"bind": f"tcp://127.0.0.1:{port}", "heartbeat_s": 0.2, "missed_heartbeats": 3,
                            "backoff_base_s": 0.0, "restart_grace_s": 1.5},
           "autonomy": {"default": "autonomous"},
           "backends": [{"type": "synthesis_robot", "name": "robot-1", **phys},
                        {"type": "synthesis_robot", "name": "robot-2", **phys},
                        {"type": "xrd", "name": "xrd", **phys},
                        {"type": "echo", "name": "echo", "duration_s": 0.01, "batch_size": 32, "slots": 2}]}
    path = tmp / "lab.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _documents(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Start documents of the once plans, by task id, with whether their run has a stop document."""
    out: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for path in folder.glob("*.jsonl"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("]")]
        if not lines or lines[0][0] != "start":
            continue
        start = lines[0][1]
        if start.get("plan_name") in ONCE_PLANS.values():
            out[start["task_id"]].append({**start, "stopped": any(n == "stop" for n, _ in lines)})
    return out


def _register(path: Path) -> collections.Counter[str]:
    """Samples the simulated robots made, counted by the task id in their label (S-<task id>)."""
    made: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines() if path.exists() else []:
        entry = json.loads(line)
        if entry.get("op") == "made":
            made[entry["sample"]["sample_id"].removeprefix("S-")] += 1
    return made


def soak(tmp: Path, plan: SoakPlan) -> dict[str, Any]:
    rng = random.Random(plan.seed)
    port = free_port()
    cfg = _lab(tmp, port, plan.seed)
    logs = tmp / "logs"
    logs.mkdir()
    procs = {"orchestrator": Proc("orchestrator", ["orchestrator", "--config", str(cfg)], logs)}
    for name, backends in WORKERS.items():
        procs[name] = Proc(name, ["worker", "--config", str(cfg), *[a for b in backends for a in ("-b", b)]], logs)
    kills: list[tuple[float, str]] = []
    victims: list[str] = []
    worst_stall_ms = 0
    campaign = Campaign(plan, random.Random(plan.seed + 1))  # its own stream: the kill schedule stays put
    t0 = time.monotonic()
    deadline = t0 + 120 + plan.kills * 15 + plan.syntheses * 3 + plan.echo / 50
    for p in procs.values():
        p.start()
    client = PPUClient(f"tcp://127.0.0.1:{port}", timeout=2.0)
    try:
        while True:  # everything up before the first kill
            try:
                if len(client.status()["backends"]) == sum(map(len, WORKERS.values())):
                    break
            except PPUError:
                pass
            assert time.monotonic() < deadline, "the lab did not come up"
            time.sleep(0.2)
        next_kill = time.monotonic() + rng.uniform(*plan.every_s)
        while True:
            assert time.monotonic() < deadline, f"not settled: {collections.Counter(campaign.states.values())}"
            if not victims:  # rounds of the four processes in a seeded order: every kind gets killed
                victims = rng.sample(sorted(procs), len(procs))
            # a worker of instruments is killed mid-plan when it can be (a few seconds at most)
            busy = victims[-1] not in WORKERS or not {"robot-1", "robot-2", "xrd"} & set(WORKERS[victims[-1]]) \
                or bool(set(WORKERS[victims[-1]]) & campaign.running_on) or time.monotonic() > next_kill + 3
            if len(kills) < plan.kills and time.monotonic() >= next_kill and busy:
                victim = victims.pop()
                procs[victim].kill()
                kills.append((time.time(), victim))
                time.sleep(rng.uniform(0.0, 0.5))
                procs[victim].start()
                next_kill = time.monotonic() + rng.uniform(*plan.every_s)
            try:
                campaign.step(client)
                worst_stall_ms = max(worst_stall_ms, int(client.status()["counters"].get("loop_stall_max_ms", 0)))
            except PPUError:  # the orchestrator is down or restarting: the client tries again
                time.sleep(0.2)
                continue
            if len(kills) >= plan.kills and campaign.finished():
                break
            time.sleep(0.3)
        # the operator decides what went to review (here: fail it), so that every task ends
        reviewed = [r["task_id"] for r in client.reviews()]
        for tid in reviewed:
            client.review(tid, "fail", reason="soak: decided by the operator")
        ids = sorted(campaign.accepted)
        final = client.wait(ids, timeout=60)
        assert all(t.state in TERMINAL_STATES for t in final)
    finally:
        client.close()
        codes = {name: p.stop() for name, p in procs.items()}
    last_log = logs / f"orchestrator-{procs['orchestrator'].starts}.log"
    assert codes["orchestrator"] == 0, last_log.read_text()[-3000:]

    # ---- read back the four records -------------------------------------------------------------
    store = Store(f"sqlite:///{tmp / 'ppu.sqlite'}")
    try:
        tasks = {t.id: t for t in store.list_tasks(campaign="soak", limit=1_000_000)}
        journal: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for row in store.iter_journal():
            journal[row["task_id"]].append(row)
        registered: dict[str, list[float]] = collections.defaultdict(list)  # when each backend (re)registered
        for e in store.audit_entries():
            if e.action == "register" and e.target:
                registered[e.target].append(e.at)
    finally:
        store.close()
    docs = _documents(tmp / "lab" / "documents")
    made = _register(tmp / "lab" / "soak" / "samples.jsonl")

    lost = sorted(campaign.accepted - set(tasks))
    unknown = sorted(set(tasks) - set(campaign.submitted))
    not_ended = sorted(t for t, task in tasks.items() if task.state not in TERMINAL_STATES)
    terminal_counts = {t: sum(1 for r in journal[t] if TaskState(r["dst"]) in TERMINAL_STATES) for t in tasks}
    twice_terminal = sorted(t for t, n in terminal_counts.items() if n != 1)
    once = [t for t, task in tasks.items() if task.capability in ONCE_PLANS]
    ran_twice = sorted(t for t in once if len(docs.get(t, [])) > 1 or made.get(t, 0) > 1)
    unknown_samples = sorted(t for t in made if t not in tasks)
    for t in once:  # a succeeded once task ran exactly once, completely, and says so in every record
        if tasks[t].state is TaskState.succeeded:
            assert len(docs[t]) == 1 and docs[t][0]["stopped"], (t, docs.get(t))
            if tasks[t].capability == "synthesize":
                assert made[t] == 1, t

    hosts = {b: w for w, bs in WORKERS.items() for b in bs}
    wrongly_reviewed, reviewed_unknown_start = [], []
    for t, rows in journal.items():
        for i, row in enumerate(rows):
            if row["dst"] != TaskState.needs_review.value:
                continue
            assigned = next((r for r in reversed(rows[:i]) if r["dst"] == TaskState.assigned.value), None)
            started = (any(r["dst"] == TaskState.running.value for r in rows[:i]) or t in docs or made.get(t, 0) > 0)
            if started:
                continue
            backend = (assigned or {}).get("reason", "").removeprefix("on ")
            # The worker process the assignment went to died before the review: whether it started is
            # unknown. That process is the one that registered last before the assignment, so a kill from
            # then on counts, even one a moment before the assignment: the orchestrator learns of a death
            # by missed heartbeats, and a send into the dead peer's connection before its socket has seen
            # the connection close leaves without an error (the one after it is refused, and requeued).
            if assigned is not None:
                since = max((at for at in registered[backend] if at <= assigned["at"]), default=0.0)
            killed = assigned is not None and any(
                victim == hosts.get(backend) and since <= at <= row["at"] for at, victim in kills)
            (reviewed_unknown_start if killed else wrongly_reviewed).append((t, row["reason"]))

    figures = {"kills": len(kills), "kills_by_process": dict(collections.Counter(v for _, v in kills)),
               "tasks": len(tasks), "once_tasks": len(once), "lost": len(lost) + len(not_ended),
               "duplicated": len(ran_twice) + len(twice_terminal), "wrongly_reviewed": len(wrongly_reviewed),
               "reviewed": len(reviewed), "reviewed_start_unknown": len(reviewed_unknown_start),
               "samples_made": sum(made.values()), "worst_loop_stall_ms": worst_stall_ms,
               "wall_s": round(time.monotonic() - t0, 1)}
    print("\nsoak:", json.dumps(figures))
    assert not lost and not not_ended, (lost, not_ended)
    assert not unknown and not unknown_samples, (unknown, unknown_samples)
    assert not twice_terminal, [(t, journal[t]) for t in twice_terminal[:3]]
    assert not ran_twice, [(t, docs.get(t), made.get(t)) for t in ran_twice[:3]]
    assert not wrongly_reviewed, wrongly_reviewed[:5]
    assert len(kills) == plan.kills
    return figures


def test_soak_short(tmp_path: Path):
    """Three kills, a small campaign: in the default suite."""
    f = soak(tmp_path, SoakPlan(syntheses=4, echo=150, kills=3, seed=7, every_s=(1.5, 3.0)))
    assert f["tasks"] >= 4 + 150


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_soak_24_kills(tmp_path: Path):
    f = soak(tmp_path, SoakPlan(syntheses=40, echo=1500, kills=24, seed=2026))
    assert f["kills"] >= 20
