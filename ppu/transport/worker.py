"""A worker process: hosts backends behind a DEALER connected to the orchestrator.

The backends run in the same :class:`~ppu.host.BackendHost` the in-process ``LocalWorker`` uses,
so there is one code path for running work. This module only carries messages: register (with
the tasks it still holds and the results not yet acknowledged), heartbeats, assignments in,
started / progress / results out, results re-sent with backoff until acknowledged (a block result
always as a result message with its columns as binary frames: never inside a registration). When the
orchestrator is silent for ``heartbeat_s * missed_heartbeats`` (killed, restarted, network),
the worker throws its socket away, connects a new one and registers again (zguide's Paranoid
Pirate). One coroutine owns the socket, so replacing it needs no locks.

It registers ONCE per connection, as the connection's first message; to register again (the
orchestrator answered ``not_registered`` to a message sent after the registration was answered,
or refused the registration) it opens a new connection. Each heartbeat carries, per backend,
the attempts it runs and has not had acknowledged, and the highest assignment number it received
under its registration, so the orchestrator can re-send an assignment that never arrived and abort
work it no longer expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import zmq

from ppu import protocol as p
from ppu.backends.base import Backend
from ppu.heap import freeze_once
from ppu.host import BackendHost
from ppu.models import Result, ResultStatus
from ppu.transport.aiosock import AsyncSocket
from ppu.transport.security import CurveKeys

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, connect: str, backends: list[Backend], *, name: str | None = None,
                 heartbeat_s: float = 1.0, missed_heartbeats: int = 3, curve: CurveKeys | None = None,
                 resend_max_s: float = 10.0):
        if not backends:
            raise ValueError("a worker needs at least one backend")
        self.connect_to = connect
        self.name = name or "worker-" + uuid.uuid4().hex[:6]
        self.heartbeat_s = heartbeat_s
        self.missed = missed_heartbeats
        self.curve = curve
        self.resend_max_s = resend_max_s
        self.hosts = {b.name: BackendHost(b, self._reporter(b.name)) for b in backends}
        self.registered = False
        self.reconnects = 0
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._sock: AsyncSocket | None = None
        self._last_heard = 0.0
        self._last_register = 0.0
        self._resend_at: dict[tuple[str, int], tuple[float, float]] = {}  # -> (when, backoff)
        self._main: asyncio.Task[None] | None = None
        self._side: set[asyncio.Task[Any]] = set()
        self._register_req = ""
        self._limits: tuple[int, int] | None = None  # the orchestrator's (max_message_bytes, max_blob_bytes)
        self._register_sent_at = 0.0  # when the registration now awaiting an answer was sent (0: none)
        self.boot = uuid.uuid4().hex  # this process; tells the orchestrator "the same worker came back"
        self._seq: dict[str, int] = {}  # backend -> highest assignment number under the registration
        self.registrations = 0
        self._silence_s = heartbeat_s * missed_heartbeats
        self._refused_at = 0.0
        self._refusal = ""  # why the last registration was refused, until one is accepted
        self._carried: set[tuple[str, int]] = set()  # the results carried by the registration awaiting its answer
        self._blocks: set[tuple[str, int]] = set()  # attempts of columnar runs, until their result is acked

    # ---- life cycle ------------------------------------------------------------------------

    async def start(self, errors_of: Callable[[str], contextlib.AbstractContextManager[Any]] | None = None) -> None:
        """Start every backend, then connect. ``errors_of(name)``: a context around each backend's start,
        e.g. the lab file's :meth:`~ppu.config.LabConfig.backend_errors`, so that an error names its entry."""
        for name, host in self.hosts.items():
            with errors_of(name) if errors_of is not None else contextlib.nullcontext():
                await host.start()
        freeze_once()  # modules and models live as long as the process: no full collection rescans them
        self._open()
        self._main = asyncio.get_running_loop().create_task(self._loop())

    async def wait_registered(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.registered:
            if time.monotonic() > deadline:
                raise p.NotAnswering(
                    f"the orchestrator at {self.connect_to} did not register us within {timeout:g}s",
                    hint="is it running? is this worker's key allowed?")
            await asyncio.sleep(0.01)

    async def run_forever(self) -> None:
        if self._main is None:
            await self.start()
        assert self._main is not None
        await self._main

    async def close(self) -> None:
        tasks = [t for t in [self._main, *self._side] if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._main = None
        for host in self.hosts.values():
            await host.close()
        self._close_socket()
        self._ctx.term()

    def _open(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, f"{self.name}-{uuid.uuid4().hex[:8]}".encode())
        if self.curve is not None:
            sock.curve_publickey = self.curve.public
            sock.curve_secretkey = self.curve.secret
            sock.curve_serverkey = self.curve.server_public
        sock.connect(self.connect_to)
        self._sock = AsyncSocket(sock)
        self.registered = False
        self._last_heard = time.monotonic()
        self._send_register()

    def _reconnect(self) -> None:
        """Register again on a NEW connection. Whatever the old one still had on its way in is
        dropped unread with it, so the new registration's list of held work is exact: an
        assignment the orchestrator sent before processing it never reached this worker."""
        self.reconnects += 1
        self._close_socket()
        self._open()

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    # ---- sending ---------------------------------------------------------------------------

    def _send(self, msg: Any) -> bool:
        return self._send_frames(p.encode(msg))

    def _send_frames(self, frames: list[Any]) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.send_nowait(frames)
            return True
        except zmq.ZMQError:  # not connected yet or queue full: heartbeats and re-sends cover it
            return False

    def _send_register(self) -> None:
        self._register_req = p.new_req()
        self._last_register = self._register_sent_at = time.monotonic()
        self._seq = {}
        self.registered = False
        self.registrations += 1
        specs = [h.backend.spec() for h in self.hosts.values()]
        pending = _pending_within(self.hosts, RESULTS_MESSAGE_BYTES)
        self._carried = {(r.task_id, r.attempt) for rs in pending.values() for r in rs}
        self._send(p.Register(req=self._register_req, worker=self.name, boot=self.boot, backends=specs,
                              in_flight={n: h.in_flight() for n, h in self.hosts.items()}, pending=pending))

    def _reporter(self, backend: str) -> Any:
        async def report(kind: str, payload: dict[str, Any]) -> None:
            if kind == "started":
                self._send(p.Started(backend=backend, runs=payload["runs"]))
            elif kind == "progress":
                attempt = self.hosts[backend].attempt_of.get(payload["task_id"])
                self._send(p.Progress(backend=backend, task_id=payload["task_id"], attempt=attempt,
                                      fraction=min(1.0, max(0.0, float(payload["fraction"]))),
                                      message=str(payload["message"])[:4096]))
            elif kind == "results":
                # the host keeps the Result objects (with a block result's columns) until they are acked
                results = self._vetted(self.hosts[backend], payload["results"])
                hb, at = self.heartbeat_s, time.monotonic() + self.heartbeat_s
                for r in results:
                    self._resend_at[(r.task_id, r.attempt)] = (at, hb)
                for frames in _result_msgs(backend, results, self._limits):
                    self._send_frames(frames)
        return report

    def _vetted(self, host: BackendHost, results: list[Result]) -> list[Result]:
        """A block's success without output columns (a backend's bug) becomes its failure here, where the
        columns are known to be missing: the orchestrator refuses such a result, so re-sending it would go on
        for ever. Retryable: another backend may answer the block properly."""
        out = []
        for r in results:
            key = (r.task_id, r.attempt)
            if key in self._blocks and r.status is ResultStatus.succeeded and not r.columns():
                r = r.model_copy(update={"status": ResultStatus.failed, "outputs": {}, "error": (
                    f"backend {host.name} answered block task {r.task_id} without output columns")})
                if key in host.unacked:
                    host.unacked[key] = r
            out.append(r)
        return out

    # ---- the loop --------------------------------------------------------------------------

    async def _loop(self) -> None:
        tick = self.heartbeat_s
        next_beat = time.monotonic()
        while True:
            sock = self._sock
            assert sock is not None
            timeout = max(0.0, next_beat - time.monotonic())
            if await sock.poll(timeout * 1000):
                # Everything already queued is handled in one go (acks come one per result): a message
                # costs a decode, not two trips through the event loop.
                for _ in range(256):
                    frames = sock.recv_nowait()
                    if frames is None:
                        break  # nothing more waiting
                    try:
                        # bounded by what a lab may set, as a client's replies are: an assignment of a
                        # batch of large tasks passes the default limit, and the lab has set its own
                        self._on_message(p.decode(frames, p.MAX_REPLY_BYTES, p.MAX_REPLY_BLOB_BYTES))
                    except p.ProtocolError as exc:
                        log.warning("ignored a malformed message from the orchestrator: %s", exc)
                    if self._sock is not sock:
                        break  # replaced (a new connection)
                continue
            now = time.monotonic()
            next_beat = now + tick
            if now - self._last_heard > self._silence_s:
                log.warning("orchestrator at %s silent for %.1fs: reconnecting", self.connect_to,
                            now - self._last_heard)
                self.reconnects += 1
                # back off while it stays away (Paranoid Pirate); a new socket's registration waits
                # in its queue and leaves the moment the orchestrator is back
                self._silence_s = min(self._silence_s * 2, max(tick * self.missed, 30.0))
                self._close_socket()
                self._open()
                continue
            if self._refused_at and now - self._refused_at > tick * self.missed:
                self._refused_at = 0.0
                self._reconnect()  # refused while another live connection held a backend: try again
            self._send(self._heartbeat())
            if self.registered:
                self._resend(now)

    def _heartbeat(self) -> p.Heartbeat:
        if not self.registered:
            return p.Heartbeat()
        inv = {}
        for name, host in self.hosts.items():
            running, unacked = host.holding()
            inv[name] = p.Holding(seq=self._seq.get(name, 0), running=running, unacked=unacked)
        return p.Heartbeat(reg=self._register_req, inventory=inv)

    def _resend(self, now: float) -> None:
        for name, host in self.hosts.items():
            due = []
            for r in host.pending_results():
                key = (r.task_id, r.attempt)
                when, backoff = self._resend_at.get(key, (now, self.heartbeat_s))
                if when <= now:
                    due.append(r)
                    backoff = min(backoff * 2, self.resend_max_s)
                    self._resend_at[key] = (now + backoff, backoff)
            for frames in _result_msgs(name, due, self._limits):  # re-sent as they were sent: a batch's in few messages
                self._send_frames(frames)

    def _resend_uncarried(self) -> None:
        """Registered: the unacknowledged results the registration did not carry (a block result's columns
        travel only as a result message's binary frames; others past its size) leave now, not after the
        backoff a dead orchestrator's silence grew."""
        now = time.monotonic()
        for host in self.hosts.values():
            for r in host.pending_results():
                key = (r.task_id, r.attempt)
                if key not in self._carried:
                    self._resend_at[key] = (now, self.heartbeat_s)
        self._resend(now)

    def _on_message(self, msg: Any) -> None:
        self._last_heard = time.monotonic()
        self._silence_s = self.heartbeat_s * self.missed
        match msg:
            case p.Heartbeat():
                pass
            case p.RegisterOk():
                if msg.req != self._register_req:
                    return  # the answer to an earlier registration
                self.registered = True
                self._register_sent_at = 0.0
                self._limits = (msg.max_message_bytes, msg.max_blob_bytes)
                log.info("registered %s at %s%s", ", ".join(msg.backends), self.connect_to,
                         " (refused until now)" if self._refusal else "")
                self._refusal = ""
                self._resend_uncarried()
            case p.Assign():
                host = self.hosts.get(msg.backend)
                if host is not None:
                    if msg.reg == self._register_req:
                        self._seq[msg.backend] = max(self._seq.get(msg.backend, 0), msg.seq)
                    arrays = msg.arrays()
                    runs = [r if r.block is None else r.with_columns(
                        {c: arrays[f"{r.task_id}:{c}"] for c in r.block.columns if f"{r.task_id}:{c}" in arrays})
                        for r in msg.runs]
                    if host.assign(msg.batch_id, runs):
                        self._blocks.update((r.task_id, r.attempt) for r in runs
                                            if r.block is not None and host.attempt_of.get(r.task_id) == r.attempt)
            case p.Ack():
                host = self.hosts.get(msg.backend)
                for task_id, attempt in msg.runs:
                    if host is not None:
                        host.ack(task_id, attempt)
                    self._resend_at.pop((task_id, attempt), None)
                    self._blocks.discard((task_id, attempt))
            case p.Abort():
                host = self.hosts.get(msg.backend)
                if host is not None:
                    self._spawn(host.abort(msg.task_id, msg.attempt))
            case p.Pause() | p.Resume():
                host = self.hosts.get(msg.backend)
                if host is not None:
                    self._spawn(self._pause(host, msg))
            case p.Error():
                if msg.code == p.NotRegistered.code:
                    # Register once: while a registration awaits its answer, a not_registered is
                    # the answer to a message sent before it (e.g. queued while the orchestrator
                    # restarted), not a reason to register again.
                    if not self._register_sent_at:
                        self._reconnect()
                elif msg.code == "not_allowed" and msg.req.startswith("result:"):
                    # refused for good (not this attempt's holder): keeping it would re-send forever
                    _, n, task_id = msg.req.split(":", 2)
                    log.error("the orchestrator refused our result for %s attempt %s: %s", task_id, n, msg.message)
                    attempt = int(n) if n.isdigit() else -1
                    for host in self.hosts.values():
                        host.ack(task_id, attempt)
                    self._resend_at.pop((task_id, attempt), None)
                    self._blocks.discard((task_id, attempt))
                elif msg.req and msg.req == self._register_req:
                    # said once, not at every try: a standby worker is refused until the holder goes quiet
                    said = log.error if msg.message != self._refusal else log.debug
                    said("the orchestrator refused the registration: %s (%s); trying again every %.3g s",
                         msg.message, msg.hint, self.heartbeat_s * self.missed)
                    self._refusal = msg.message
                    self._refused_at = time.monotonic()
                else:
                    log.warning("orchestrator error: %s: %s", msg.code, msg.message)
            case _:
                log.warning("ignored an unexpected %s message", msg.type)

    async def _pause(self, host: BackendHost, msg: p.Pause | p.Resume) -> None:
        detail = await (host.backend.pause(msg.defer) if isinstance(msg, p.Pause) else host.backend.resume())
        self._send(p.Done(req=msg.req, detail=detail))

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._side.add(t)
        t.add_done_callback(self._side.discard)


RESULTS_PER_MESSAGE = 256
RESULTS_MESSAGE_BYTES = 1 << 20  # a results message larger than this is split (the orchestrator's limit is 16 MiB)


def _pending_within(hosts: dict[str, BackendHost], budget: int) -> dict[str, list[Result]]:
    """The unacknowledged results a registration carries: as many as fit in ``budget`` bytes of JSON, and
    never a block result (a registration has no binary frames: its summary would arrive without its
    columns). The others are named among its in_flight tasks, so the orchestrator waits for them, and they
    follow as re-sent results (a registration over the orchestrator's limit would be refused, again and
    again)."""
    out: dict[str, list[Result]] = {}
    for name, host in hosts.items():
        for r in host.pending_results():
            if r.columns():
                continue
            budget -= len(r.model_dump_json())
            if budget < 0:
                return out
            out.setdefault(name, []).append(r)
    return out


def _result_msgs(backend: str, results: list[Result], limits: tuple[int, int] | None = None) -> list[list[Any]]:
    """A batch's results, encoded, in as few messages as fit: block results (binary frames) one
    each, the others together, split where a message would grow large (a big result goes alone).

    ``limits``: the orchestrator's (max_message_bytes, max_blob_bytes), known once registered. A result
    over them goes as the failure of its attempt (not retryable), which the orchestrator records and
    acks: sent as it is, it would be refused at every re-send and hold its backend's slot for ever."""
    max_json, max_blob = limits or (p.MAX_REPLY_BYTES, p.MAX_REPLY_BLOB_BYTES)
    out = [_within(_result_msg(backend, r), max_json, max_blob) for r in results if r.columns()]
    plain = [r for r in results if not r.columns()]
    todo = [plain[i:i + RESULTS_PER_MESSAGE] for i in range(0, len(plain), RESULTS_PER_MESSAGE)]
    while todo:
        chunk = todo.pop(0)
        if len(chunk) == 1:
            out.append(_within(_result_msg(backend, chunk[0]), max_json, max_blob))
            continue
        frames = p.encode(p.Results(backend=backend, results=chunk))
        if len(frames[1]) > min(RESULTS_MESSAGE_BYTES, max_json):
            half = len(chunk) // 2
            todo[:0] = [chunk[:half], chunk[half:]]
            continue
        out.append(frames)
    return out


def _within(msg: p.ResultMsg, max_json: int, max_blob: int) -> list[Any]:
    """One result's frames, or those of its failure when they are over the orchestrator's limits."""
    frames = p.encode(msg)
    blob = sum(len(f) for f in frames[2:])
    if blob <= max_blob and len(frames[1]) <= max_json:
        return frames
    failed = (p.result_too_large(msg, blob, max_blob, columns=True) if blob > max_blob
              else p.result_too_large(msg, len(frames[1]), max_json, columns=False))
    log.error("result of %s attempt %d is too large to send; sent as its failure: %s", msg.result.task_id,
              msg.result.attempt, failed.result.error)
    return p.encode(failed)


def _result_msg(backend: str, r: Result) -> p.ResultMsg:
    """A result, with a block result's columns as binary frames (the orchestrator stores them)."""
    msg = p.ResultMsg(backend=backend, result=r)
    cols = r.columns()
    return msg.carrying(cols) if cols else msg
