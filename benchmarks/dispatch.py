"""Dispatch overhead: client -> orchestrator -> worker -> result through PPU, against baselines.

PPU runs as a real deployment in miniature (EmbeddedLab: ROUTER server, DEALER worker and client
over loopback tcp, SQLite store), echo backend with duration 0. Baselines, measured in the same
run: a raw pyzmq DEALER/ROUTER round trip on loopback; a raw relay over the same sockets, client ->
server -> worker -> server -> client with nothing done at any stop (the four one-way hops one task's
way cannot do without, against the round trip's two); one store commit on the same disk (the
store's own write of a task row and a journal row, in a transaction, with the lab's durability
settings), and plain Prefect tasks (in a subprocess, as Prefect starts its own runtime; null when
Prefect is unavailable).

The floor of one durable task at a time is the raw round trip plus the two commits it cannot skip:
accepted before the submit is acknowledged, result before it is acknowledged (issue 17.4). One
task at a time runs twice: with the default durability ``power`` (every commit fsynced) against
that floor, and with ``process`` (WAL without an fsync per commit) against the raw round trip.
The last line is one JSON object with the figures (keys as issues 3 and 17 name them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from ppu.config import parse_lab
from ppu.events import Submit
from ppu.models import Task
from ppu.scheduler import Scheduler
from ppu.store import Store
from ppu.transport import EmbeddedLab

# Settings: each one an option, its default from the environment (set by main() from the options)
N_LATENCY = 200  # --latency-n, $PPU_BENCH_LATENCY_N
N_THROUGHPUT = 8000  # --n, $PPU_BENCH_N; ~2 s: 2,000 (0.5 s) drowned in this machine's noise
SUBMIT_CHUNK = 100
BATCH = 100
N_RAW = 5000
N_PREFECT = 50  # --prefect-n, $PPU_BENCH_PREFECT_N; 0 skips Prefect


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (as the option, or in the "
                                         "environment variable it defaults to)") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n} is below 0")
    return n


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, each defaulting to its environment variable (and then to the figure above)."""
    env = os.environ
    ap = argparse.ArgumentParser(
        prog="benchmarks/dispatch.py",
        description="Dispatch overhead per task and tasks/s through PPU, against a raw pyzmq round trip, a raw "
                    "relay, the store's commits and plain Prefect tasks. Prints a table; the last line is one "
                    "JSON object with the figures.",
        epilog="Each option's default comes from the environment variable named, when it is set.")
    ap.add_argument("--n", type=_count, default=env.get("PPU_BENCH_N", str(N_THROUGHPUT)), metavar="N",
                    help=f"tasks put in flight for the throughput figure ($PPU_BENCH_N; default {N_THROUGHPUT})")
    ap.add_argument("--latency-n", type=_count, default=env.get("PPU_BENCH_LATENCY_N", str(N_LATENCY)),
                    metavar="N", help=f"tasks run one at a time for the latency figures, per durability "
                    f"($PPU_BENCH_LATENCY_N; default {N_LATENCY})")
    ap.add_argument("--prefect-n", type=_count, default=env.get("PPU_BENCH_PREFECT_N", str(N_PREFECT)),
                    metavar="N", help=f"Prefect task runs for its baseline; 0 skips it ($PPU_BENCH_PREFECT_N; "
                    f"default {N_PREFECT})")
    args = ap.parse_args(argv)
    for name in ("n", "latency_n"):
        if getattr(args, name) < 1:
            ap.error(f"argument --{name.replace('_', '-')}: at least 1")
    return args


async def raw_zmq_roundtrip_us() -> list[float]:
    """Microseconds per DEALER -> ROUTER -> DEALER echo, one sample per round trip."""
    ctx = zmq.asyncio.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for s in (router, dealer):
        s.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")

    async def echo() -> None:
        while True:
            frames = await router.recv_multipart()
            await router.send_multipart(frames)

    server = asyncio.create_task(echo())
    msg = [b"PPU1", json.dumps({"type": "status", "req": "0123456789abcdef"}).encode()]
    for _ in range(200):  # warm up
        await dealer.send_multipart(msg)
        await dealer.recv_multipart()
    samples = []
    for _ in range(N_RAW):
        t0 = time.perf_counter()
        await dealer.send_multipart(msg)
        await dealer.recv_multipart()
        samples.append((time.perf_counter() - t0) * 1e6)
    server.cancel()
    router.close()
    dealer.close()
    ctx.term()
    return samples


async def relay_us() -> list[float]:
    """Microseconds per client -> server -> worker -> server -> client relay on loopback: the four
    one-way hops one task's way cannot do without (its submit, its assignment, its result, the
    answer to its wait), with nothing done at any stop. The same sockets as the raw round trip,
    on one event loop as ``EmbeddedLab`` runs the three parties."""
    ctx = zmq.asyncio.Context()
    server, client, worker = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    for s in (server, client, worker):
        s.setsockopt(zmq.LINGER, 0)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    client.connect(f"tcp://127.0.0.1:{port}")
    worker.connect(f"tcp://127.0.0.1:{port}")
    await worker.send_multipart([b"PPU1", b"{}"])  # the worker says hello: the server learns its identity
    worker_id = (await server.recv_multipart())[0]

    async def serve() -> None:  # a request goes to the worker, the worker's answer back to whoever asked
        asked: list[bytes] = []
        while True:
            sender, *frames = await server.recv_multipart()
            if sender == worker_id:
                await server.send_multipart([asked.pop(0), *frames])
            else:
                asked.append(sender)
                await server.send_multipart([worker_id, *frames])

    async def work() -> None:
        while True:
            await worker.send_multipart(await worker.recv_multipart())

    tasks = [asyncio.create_task(serve()), asyncio.create_task(work())]
    msg = [b"PPU1", json.dumps({"type": "submit", "req": "0123456789abcdef"}).encode()]
    samples = []
    for i in range(200 + N_RAW):  # 200 to warm up
        t0 = time.perf_counter()
        await client.send_multipart(msg)
        await client.recv_multipart()
        if i >= 200:
            samples.append((time.perf_counter() - t0) * 1e6)
    for t in tasks:
        t.cancel()
    for s in (server, client, worker):
        s.close()
    ctx.term()
    return samples


class Commits:
    """Times store commits of one task's change (two journal rows and its task row), as the
    orchestrator writes them: the same Store, the same disk, the lab's durability settings."""

    def __init__(self, tmp: Path, durability: str):
        self.store = Store(f"sqlite:///{tmp / f'commit-{durability}.sqlite'}", durability)
        self.sched = Scheduler()
        self.n = 0
        self.samples: list[float] = []

    def one(self) -> None:
        self.n += 1
        task = Task(id=f"t-{self.n}", capability="echo", inputs={"x": self.n}, action="repeatable")
        rows = self.store.prepare([self.sched.handle(Submit(task, time.time()))])  # submitted -> ready
        t0 = time.perf_counter()
        self.store.write(rows)
        if self.n > 20:  # warm up
            self.samples.append((time.perf_counter() - t0) * 1e6)

    def close(self) -> None:
        self.store.close()


def _median_us(fn: Any, n: int = 2000) -> float:
    for _ in range(50):
        fn()
    xs = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        xs.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(xs)


def step_costs(tmp: Path) -> dict[str, float]:
    """What the pieces of one task's way cost on their own (median microseconds), in this process."""
    from ppu import protocol as p
    from ppu.backends.base import TaskRun
    from ppu.events import Finished, RegisterBackend
    from ppu.models import BackendSpec, Result, ResultStatus, TaskSpec

    submit = p.encode(p.Submit(req="0123456789abcdef", tasks=[TaskSpec(capability="echo", inputs={"x": 1})]))
    result = Result(task_id="t-0123456789abcdef", attempt=1, status=ResultStatus.succeeded, outputs={"y": 2.0})
    result_frames = p.encode(p.ResultMsg(backend="echo-1", result=result))
    run = TaskRun(task_id="t-0123456789abcdef", attempt=1, capability="echo", inputs={"x": 1})
    sched = Scheduler()
    sched.handle(RegisterBackend(BackendSpec(name="b", kind="digital", capabilities=[{"name": "echo"}],
                                             slots=10_000), 0.0, (), 1e12))
    n = [0]

    def schedule() -> None:  # accepted, queued, assigned; then its result
        n[0] += 1
        tid = f"t-{n[0]}"
        sched.handle(Submit(Task(id=tid, capability="echo", inputs={"x": 1}, action="repeatable"), 1.0))
        sched.handle(Finished(Result(task_id=tid, attempt=1, status=ResultStatus.succeeded, outputs={"y": 2}),
                              2.0, "b"))

    store = Store(f"sqlite:///{tmp / 'steps.sqlite'}")
    probe = Scheduler()
    step = probe.handle(Submit(Task(id="t-x", capability="echo", inputs={"x": 1}, action="repeatable"), 1.0))
    costs = {
        "decode a submit of one task": _median_us(lambda: p.decode(submit)),
        "task model at the door (Task(...))": _median_us(
            lambda: Task(id="t-1", capability="echo", inputs={"x": 1}, action="repeatable")),
        "scheduler: submit -> assigned, then result": _median_us(schedule),
        "journal rows of one step (store.prepare)": _median_us(lambda: store.prepare([step])),
        "encode an assign of one task": _median_us(
            lambda: p.encode(p.Assign(backend="echo-1", batch_id="b", runs=[run], reg="r", seq=1))),
        "decode a result message": _median_us(lambda: p.decode(result_frames)),
        "encode an ack": _median_us(lambda: p.encode(p.Ack(backend="echo-1", runs=[("t-1", 1)]))),
    }
    store.close()
    return costs


def _lab(tmp: Path, name: str, durability: str = "power", **echo: Any) -> Any:
    return parse_lab({"name": name, "run_dir": str(tmp / name),
                      "store": {"url": f"sqlite:///{tmp / name / 'ppu.sqlite'}", "durability": durability},
                      "backends": [{"type": "echo", "name": "echo-1", "duration_s": 0.0, **echo}]})


async def one_at_a_time(tmp: Path, durability: str, commits: Commits) -> list[float]:
    """Microseconds per submit + wait of one task, nothing else in flight. A store commit on the same
    disk is timed between two tasks, so that the floor is measured under the same conditions."""
    # A backend that takes single tasks (batching would only add its wait).
    async with EmbeddedLab(_lab(tmp, f"latency-{durability}", durability, slots=8)) as client:
        for i in range(20):  # warm up
            await client.run({"capability": "echo", "inputs": {"x": i}}, timeout=30)
            commits.one()
        latencies = []
        for i in range(N_LATENCY):
            t0 = time.perf_counter()
            await client.run({"capability": "echo", "inputs": {"x": i}}, timeout=30)
            latencies.append((time.perf_counter() - t0) * 1e6)
            commits.one()
    return latencies


async def ppu_figures(tmp: Path) -> dict[str, Any]:
    power, process = Commits(tmp, "power"), Commits(tmp, "process")
    try:
        latencies = await one_at_a_time(tmp, "power", power)
        latencies_process = await one_at_a_time(tmp, "process", process)
    finally:
        power.close()
        process.close()
    # Many in flight: the scheduler hands the worker batches of up to BATCH tasks (issue 2's
    # digital batching), so assignment, results and the journal move in bursts.
    async with EmbeddedLab(_lab(tmp, "throughput", slots=4, batch_size=BATCH, batch_wait_s=0.002)) as client:
        await client.wait(await client.submit([{"capability": "echo", "inputs": {"x": i}} for i in range(200)]),
                          timeout=60)  # warm up
        t0 = time.perf_counter()
        ids: list[str] = []
        for start in range(0, N_THROUGHPUT, SUBMIT_CHUNK):
            ids += await client.submit([{"capability": "echo", "inputs": {"x": i}}
                                        for i in range(start, min(N_THROUGHPUT, start + SUBMIT_CHUNK))])
        done = await client.wait(ids, timeout=600)
        throughput = len(done) / (time.perf_counter() - t0)
        assert all(t.state.value == "succeeded" for t in done)
    return {"latencies_us": latencies, "latencies_process_us": latencies_process, "tasks_per_s": throughput,
            "commits_us": power.samples, "commits_process_us": process.samples}


PREFECT_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from prefect import flow, task

    @task
    def echo(x):
        return 2 * x

    @flow
    def many(n):
        per = []
        for i in range(n):
            t0 = time.perf_counter()
            echo(i)
            per.append((time.perf_counter() - t0) * 1e6)
        return per

    many(2)  # start the runtime first
    n = int(sys.argv[1])
    t0 = time.perf_counter()
    per = many(n)
    print(json.dumps({"tasks_per_s": n / (time.perf_counter() - t0), "per_task_us": per}))
""")


def prefect_tasks(tmp: Path) -> tuple[dict[str, Any] | None, str]:
    script = tmp / "prefect_bench.py"
    script.write_text(PREFECT_SCRIPT)
    env = dict(os.environ, PREFECT_HOME=str(tmp / "prefect"), PREFECT_LOGGING_LEVEL="ERROR",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    try:
        out = subprocess.run([sys.executable, str(script), str(N_PREFECT)], capture_output=True, text=True,
                             timeout=180, env=env)
    except subprocess.TimeoutExpired:
        return None, "prefect timed out"
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line), f"{N_PREFECT} sequential task runs in one flow"
    return None, "prefect failed: " + (out.stderr.strip().splitlines() or ["?"])[-1][:200]


def pct(xs: list[float], q: float) -> float:
    return float(statistics.quantiles(xs, n=100, method="inclusive")[q - 1]) if len(xs) > 1 else xs[0]


def main(argv: list[str] | None = None) -> None:
    global N_LATENCY, N_THROUGHPUT, N_PREFECT
    args = parse_args(argv)
    N_LATENCY, N_THROUGHPUT, N_PREFECT = args.latency_n, args.n, args.prefect_n
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        raw = asyncio.run(raw_zmq_roundtrip_us())
        relay = asyncio.run(relay_us())
        ppu = asyncio.run(ppu_figures(tmp))
        steps = step_costs(tmp)
        prefect, prefect_note = (None, "skipped (--prefect-n 0)") if N_PREFECT <= 0 else prefect_tasks(tmp)
    raw50, raw99 = pct(raw, 50), pct(raw, 99)
    relay50 = pct(relay, 50)
    lat = ppu["latencies_us"]
    p50, p99 = pct(lat, 50), pct(lat, 99)
    lat_proc = ppu["latencies_process_us"]
    pp50, pp99 = pct(lat_proc, 50), pct(lat_proc, 99)
    commits, commits_process = ppu["commits_us"], ppu["commits_process_us"]
    c50, c99 = pct(commits, 50), pct(commits, 99)
    cp50 = pct(commits_process, 50)
    floor = raw50 + 2 * c50
    relay_floor = relay50 + 2 * cp50  # the hops and commits of one task with durability process, nothing else
    relay_floor_power = relay50 + 2 * c50
    pf50 = None if prefect is None else pct(prefect["per_task_us"], 50)
    rows: list[tuple[str, str, str]] = [
        ("raw pyzmq DEALER/ROUTER round trip", f"{raw50:.0f} / {raw99:.0f} us", f"{1e6 / raw50:,.0f} round trips/s"),
        ("raw relay client -> server -> worker -> server -> client", f"{relay50:.0f} / {pct(relay, 99):.0f} us",
         f"{1e6 / relay50:,.0f} relays/s"),
        ("store commit, durability power (synchronous=FULL)", f"{c50:,.0f} / {c99:,.0f} us",
         f"{1e6 / c50:,.0f} commits/s"),
        ("store commit, durability process (synchronous=NORMAL)", f"{cp50:,.0f} / {pct(commits_process, 99):,.0f} us",
         f"{1e6 / cp50:,.0f} commits/s"),
        ("floor of a durable task: round trip + 2 commits", f"{floor:,.0f} us", f"{1e6 / floor:,.0f} tasks/s"),
        ("PPU submit+wait, one task at a time (power)", f"{p50:,.0f} / {p99:,.0f} us", f"{1e6 / p50:,.0f} tasks/s"),
        ("PPU submit+wait, one task at a time (process)", f"{pp50:,.0f} / {pp99:,.0f} us",
         f"{1e6 / pp50:,.0f} tasks/s"),
        ("  the hops and commits alone (process): relay + 2 commits", f"{relay_floor:,.0f} us",
         f"{1e6 / relay_floor:,.0f} tasks/s"),
        (f"PPU {N_THROUGHPUT} tasks in flight (chunks of {SUBMIT_CHUNK}, batches <= {BATCH})",
         f"{1e6 / ppu['tasks_per_s']:,.0f} us/task", f"{ppu['tasks_per_s']:,.0f} tasks/s"),
        (f"Prefect: {prefect_note}", "-" if prefect is None
         else f"{pf50:,.0f} / {pct(prefect['per_task_us'], 99):,.0f} us",
         "-" if prefect is None else f"{prefect['tasks_per_s']:,.0f} tasks/s"),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"{'path':<{w}}  {'p50 / p99':>20}  {'rate':>20}")
    for name, per, rate in rows:
        print(f"{name:<{w}}  {per:>20}  {rate:>20}")
    print("One task at a time pays two commits on its path: accepted (with its assignment) and its result; "
          "the start of repeatable work rides with the next commit.")
    print(f"targets: one at a time <= 1.3x the floor (now {p50 / floor:.2f}x); with durability process <= 3x the "
          f"raw round trip (now {pp50 / raw50:.1f}x); >= 20x lower than Prefect "
          f"(now {'-' if pf50 is None else f'{pf50 / p50:.1f}x'}); >= 5,000 tasks/s in flight "
          f"(now {ppu['tasks_per_s']:,.0f})")
    print(f"A task's way has four one-way hops (the relay: {relay50:.0f} us, {relay50 / raw50:.1f}x the raw round "
          f"trip) and, with durability process, two commits ({2 * cp50:.0f} us): {relay_floor:,.0f} us, "
          f"{relay_floor / raw50:.1f}x the raw round trip, before any of PPU's own work; one task at a time "
          f"(process) is {pp50 / relay_floor:.1f}x that. With durability power the hops and commits alone are "
          f"{relay_floor_power:,.0f} us, {relay_floor_power / floor:.2f}x the floor; one task at a time (power) is "
          f"{p50 / relay_floor_power:.1f}x that.")
    print()
    print("per step (median, this process):")
    for name, us in [("raw pyzmq one-way hop (half a round trip)", raw50 / 2),
                     ("store commit, power (fsync)", c50), ("store commit, process (no fsync)", cp50),
                     *steps.items()]:
        print(f"  {name:<48} {us:>9,.1f} us")
    figures: dict[str, Any] = {
        "raw_rtt_us_p50": round(raw50, 1),
        "ppu_overhead_us_p50": round(p50, 1),
        "ppu_overhead_us_p99": round(p99, 1),
        "prefect_overhead_us_p50": None if pf50 is None else round(pf50, 1),
        "ppu_tasks_per_s": round(ppu["tasks_per_s"], 1),
        "ratio_vs_raw": round(p50 / raw50, 2),
        "commit_us_p50": round(c50, 1),
        "commit_process_us_p50": round(cp50, 1),
        "floor_us": round(floor, 1),
        "overhead_over_floor": round(p50 / floor, 3),
        "ppu_process_us_p50": round(pp50, 1),
        "ratio_vs_raw_process_durability": round(pp50 / raw50, 2),
        "relay_us_p50": round(relay50, 1),
        "relay_floor_process_us": round(relay_floor, 1),
        "relay_floor_power_us": round(relay_floor_power, 1),
        "ratio_vs_relay_floor_process": round(pp50 / relay_floor, 2),
        "ratio_prefect_vs_ppu": None if pf50 is None else round(pf50 / p50, 3),
        "steps_us": {k: round(v, 1) for k, v in steps.items()},
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
