"""The orchestrator's ROUTER: one socket, one loop, around one :class:`~ppu.orchestrator.Orchestrator`.

Thin glue (STYLE.md §6): frames in -> :func:`ppu.protocol.decode` -> one orchestrator call ->
frames out. Bad input never ends the loop: a malformed frame is answered with a typed
:class:`~ppu.protocol.Error` and counted in ``orchestrator.counters`` (``ppu status`` shows them);
a :class:`~ppu.errors.PPUError` from the orchestrator becomes an Error reply; anything else is
logged and answered as ``internal_error``.

Liveness is judged in one place, the scheduler (STYLE.md §12): the server only sends Heartbeat
to every worker each ``heartbeat_s`` and forwards the workers' heartbeats (with their
inventories). When the scheduler declares a backend lost, the orchestrator calls
:meth:`RemoteLink.forget`: the server drops the backend's connection and tells its worker to
register again; any message from a worker whose backend is not registered gets ``not_registered``.
A registration may not take a backend over from another connection while that backend is alive,
unless it comes from the same worker process (its boot id): a worker back from a stall.
Starts, progress and results are accepted only from the connection that holds the backend and,
in the scheduler, only for the attempt that backend holds; the rest is refused, counted, audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from ppu import protocol as p
from ppu.artifacts import ArtifactStore
from ppu.backends.base import TaskRun
from ppu.config import SecurityConfig
from ppu.errors import (
    ConfigError,
    JournalFailed,
    NotAllowed,
    NotFound,
    PPUError,
    UnknownTaskError,
    ValidationFailed,
)
from ppu.models import AuditEntry, Result, TaskSpec
from ppu.orchestrator import Orchestrator
from ppu.orchestrator.feed import Stamped
from ppu.transport.aiosock import AsyncSocket
from ppu.transport.paging import CURSOR_HINT, as_json, at_id, cursor, page, seq_id, too_large
from ppu.transport.security import OWN_ONLY, Authorizer, authorise, check_bind, load_keypair

log = logging.getLogger(__name__)


@dataclass
class _Peer:
    """A registered worker as the server sees it."""

    identity: bytes
    key: str | None
    backends: set[str] = field(default_factory=set)
    last_seen: float = field(default_factory=time.monotonic)
    boot: str = ""


class RemoteLink:
    """The :class:`~ppu.orchestrator.WorkerLink` for workers behind the ROUTER."""

    def __init__(self, server: OrchestratorServer):
        self.server = server

    async def assign(self, backend: str, batch_id: str, runs: list[TaskRun], reg: str = "", seq: int = 0) -> None:
        arrays: dict[str, np.ndarray] = {}
        if any(r.block is not None for r in runs):  # columnar tasks: their rows go along as binary frames
            arrays, unreadable = await self.server.block_arrays(runs)
            for run, exc in unreadable:  # the task's own input is gone or damaged: it fails, alone
                self.server.orch.unrunnable(backend, run, f"its input block cannot be read: {exc}")
            if unreadable:
                gone = {run.task_id for run, _ in unreadable}
                runs = [r for r in runs if r.task_id not in gone]
                if not runs:
                    return
        msg = p.Assign(backend=backend, batch_id=batch_id, runs=runs, reg=reg, seq=seq)
        if arrays:
            msg.carrying(arrays)
        await self.server.send_to_backend(backend, msg)

    async def abort(self, backend: str, task_id: str, attempt: int = 0) -> None:
        await self.server.send_to_backend(backend, p.Abort(backend=backend, task_id=task_id, attempt=attempt))

    def forget(self, backend: str, reason: str) -> None:
        self.server.forget(backend, reason)

    async def pause(self, backend: str, defer: bool = True) -> str:
        return await self.server.ask_worker(backend, p.Pause(req=p.new_req(), backend=backend, defer=defer))

    async def resume(self, backend: str) -> str:
        return await self.server.ask_worker(backend, p.Resume(req=p.new_req(), backend=backend))


class OrchestratorServer:
    def __init__(self, orch: Orchestrator, bind: str | None = None, security: SecurityConfig | None = None,
                 *, insecure: bool = False, artifacts: ArtifactStore | str | Path | None = None):
        self.orch = orch
        # columnar blocks and block results; default: next to a SQLite journal, else none (blocks refused)
        if artifacts is None and orch.store.url.startswith("sqlite:///") and ":memory:" not in orch.store.url:
            artifacts = Path(orch.store.url.split("///", 1)[1]).parent / "artifacts"
        self.artifacts = artifacts if isinstance(artifacts, ArtifactStore | None) else ArtifactStore(artifacts)
        self.cfg = orch.cfg
        self.bind_to = bind or orch.cfg.bind
        self.security = security or SecurityConfig()
        self.auth = Authorizer(self.security)
        check_bind(self.bind_to, self.security.curve, insecure)
        self.address = ""
        self.link = RemoteLink(self)
        self.peers: dict[bytes, _Peer] = {}
        self.backend_peer: dict[str, bytes] = {}
        self._ctx: zmq.Context[Any] | None = None
        self._sock: AsyncSocket | None = None
        self._zap: AsyncioAuthenticator | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._main: list[asyncio.Task[None]] = []
        self._asks: dict[str, asyncio.Future[str]] = {}
        self._subs: dict[bytes, asyncio.Task[None]] = {}
        self._sub_queues: dict[bytes, asyncio.Queue[Stamped]] = {}
        self._outbox: list[tuple[bytes, Any]] | None = None
        self.burst = 256  # most messages handled in one group commit
        self.burst_bytes = 1 << 20  # and most bytes: a burst of big submits is cut short

    # ---- life cycle ------------------------------------------------------------------------

    async def start(self) -> str:
        """Bind and start serving; returns the bound address (a tcp port 0 becomes the real one)."""
        # The key pair first: a missing key must fail here, before a ZAP authenticator or a socket
        # exists that would keep the process alive (it used to hang with no output).
        keys = load_keypair(self.security.keys_dir, self.security.server_key) if self.security.curve else None
        self._ctx = ctx = zmq.Context()
        sock: zmq.Socket[Any] | None = None
        try:
            sock = ctx.socket(zmq.ROUTER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            # A peer that connects again under its routing id takes over from its old connection, which
            # may still look open here (a network gone silent: the old one ends by heartbeat TTL later);
            # without this the new connection would be refused while the old one lingers.
            sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
            # Messages a little over the limit get a typed error from decode(); far over it, ZMQ drops them.
            sock.setsockopt(zmq.MAXMSGSIZE, 2 * self.cfg.max_message_bytes + self.cfg.max_blob_bytes + 4096)
            if keys is not None:
                self._zap = AsyncioAuthenticator(zmq.asyncio.Context.shadow(ctx.underlying))
                self._zap.start()
                self._zap.configure_curve_callback("*", credentials_provider=self.auth)
                sock.curve_server = True
                sock.curve_publickey, sock.curve_secretkey = keys
            try:
                sock.bind(self.bind_to)
            except zmq.ZMQError as exc:
                raise PPUError(f"cannot bind {self.bind_to}: {exc}",
                               hint="is another orchestrator running? choose another port with --bind") from None
            self._sock = AsyncSocket(sock)
        except BaseException:
            if sock is not None and self._sock is None:
                sock.close(linger=0)
            await self.close()
            raise
        self.address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        loop = asyncio.get_running_loop()
        self._main = [loop.create_task(self._serve()), loop.create_task(self._liveness())]
        log.info("orchestrator serving on %s%s", self.address, " (CURVE)" if self.security.curve else "")
        return self.address

    async def close(self) -> None:
        for t in [*self._main, *self._tasks, *self._subs.values()]:
            t.cancel()
        for t in [*self._main, *self._tasks, *self._subs.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._main, self._tasks, self._subs = [], set(), {}
        for q in list(self._sub_queues.values()):
            self.orch.feed.unsubscribe(q)
        self._sub_queues.clear()
        if self._zap is not None:
            self._zap.stop()
            self._zap = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # ---- sending ---------------------------------------------------------------------------

    async def send(self, identity: bytes, msg: Any) -> bool:
        """Send one message; False (and a counter) when the peer is gone or not keeping up."""
        if self._outbox is not None:  # inside a group commit: sent once the burst is durable
            self._outbox.append((identity, msg))
            return True
        if self._sock is None:
            return False
        frames = p.encode(msg)
        if isinstance(msg, p.Reply | p.RawReply) and len(frames[1]) > self.cfg.max_message_bytes:
            # One record too large to cut (a get_task, get_result, status...): said, never sent over the limit.
            self.orch.counters["error_" + p.ReplyTooLarge.code] += 1
            frames = p.encode(p.Error.of(too_large("the answer", len(frames[1]), self.cfg.max_message_bytes),
                                         msg.req))
        try:
            self._sock.send_nowait([identity, *frames])
            return True
        except zmq.ZMQError as exc:
            self.orch.counters["unroutable" if exc.errno == zmq.EHOSTUNREACH else "send_dropped"] += 1
            return False

    async def send_to_backend(self, backend: str, msg: Any) -> None:
        """Send to the backend's worker at once; PPUError when it provably did not leave."""
        identity = self.backend_peer.get(backend)
        if identity is None:
            raise PPUError(f"backend {backend} has no connected worker")
        if self._sock is None:
            raise PPUError("the orchestrator's socket is closed")
        try:  # never through the group-commit outbox: the caller must know whether it left
            self._sock.send_nowait([identity, *p.encode(msg)])
        except zmq.ZMQError as exc:
            self.orch.counters["unroutable" if exc.errno == zmq.EHOSTUNREACH else "send_dropped"] += 1
            raise PPUError(f"backend {backend}: the message could not be sent ({exc.strerror})") from None

    def forget(self, backend: str, reason: str) -> None:
        """The scheduler declared ``backend`` lost: drop its connection and ask its worker back."""
        identity = self.backend_peer.pop(backend, None)
        peer = self.peers.get(identity) if identity is not None else None
        if peer is None or identity is None:
            return
        peer.backends.discard(backend)
        t = asyncio.get_running_loop().create_task(self.send(identity, p.Error.of(p.NotRegistered(
            f"backend {backend} was declared lost ({reason})", hint="register again"))))
        self._tasks.add(t)  # keep a reference until it is done (asyncio holds weak ones)
        t.add_done_callback(self._tasks.discard)

    async def ask_worker(self, backend: str, msg: p.Pause | p.Resume) -> str:
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._asks[msg.req] = fut
        try:
            await self.send_to_backend(backend, msg)
            return await asyncio.wait_for(fut, self.cfg.heartbeat_s * self.cfg.missed_heartbeats)
        finally:
            self._asks.pop(msg.req, None)

    # ---- the loop --------------------------------------------------------------------------

    async def _serve(self) -> None:
        assert self._sock is not None
        sock = self._sock
        while True:
            first = await sock.recv_multipart(copy=False)
            burst, size = [first], sum(len(f) for f in first)
            # A burst is bounded by count and by bytes, so that handling it never holds the loop long.
            while len(burst) < self.burst and size < self.burst_bytes:
                more = sock.recv_nowait(copy=False)
                if more is None:
                    break
                burst.append(more)
                size += sum(len(f) for f in more)
            # Group commit: one store transaction for the burst; answers leave after it is durable.
            self._outbox = []
            try:
                async with self.orch.grouped():
                    for frames in burst:
                        try:
                            await self._on_frames(frames)
                        except JournalFailed:
                            raise
                        except Exception:  # never let one message end the loop
                            self.orch.counters["internal_errors"] += 1
                            log.exception("error while handling a message")
            except JournalFailed as exc:
                # Nothing of this burst is durable: no ack, and every reply becomes the error.
                log.error("could not journal a burst of %d messages: %s", len(burst), exc)
                self._outbox = [(i, p.Error.of(exc, m.req) if isinstance(m, p.Reply | p.RawReply) else m)
                                for i, m in self._outbox if not isinstance(m, p.Ack | p.RegisterOk)]
            finally:
                outbox, self._outbox = self._outbox, None
            for identity, msg in _merge_acks(outbox or []):
                await self.send(identity, msg)

    async def _on_frames(self, frames: list[zmq.Frame]) -> None:
        identity = frames[0].bytes
        key: str | None = None
        if self.security.curve:
            with contextlib.suppress(Exception):
                key = str(frames[-1].get("User-Id"))
        body: list[Any] = [f.bytes for f in frames[1:3]] + [f.buffer for f in frames[3:]]  # arrays: no copy
        try:
            msg = p.decode(body, self.cfg.max_message_bytes, self.cfg.max_blob_bytes)
        except p.ProtocolError as exc:
            reason = str(exc.data.get("reason", "bad"))
            self.orch.counters["protocol_" + reason] += 1
            log.info("refused a malformed message from %s: %s", identity.hex(), exc)
            await self.send(identity, p.Error.of(exc, p.guess_req(body[1]) if len(body) >= 2 else ""))
            big = (p.result_over_limit(body, self.cfg.max_message_bytes)
                   if reason == p.OVERSIZE and identity in self.peers else None)  # from a registered worker
            if big is not None:  # a block's output columns: as large at every re-send, so its attempt ends here
                failed = p.result_too_large(big, sum(len(f) for f in body[2:]), self.cfg.max_blob_bytes)
                log.warning("result of %s attempt %d from %s refused: %s", failed.result.task_id,
                            failed.result.attempt, big.backend, failed.result.error)
                await self._on_worker(identity, key, self.peers.get(identity), failed)
            return
        peer = self.peers.get(identity)
        if peer is not None:
            peer.last_seen = time.monotonic()
        if isinstance(msg, p.WORKER_MESSAGES):
            await self._on_worker(identity, key, peer, msg)
        elif isinstance(msg, p.CLIENT_REQUESTS):
            await self._on_request(identity, key, msg)
        else:
            self.orch.counters["protocol_unexpected_type"] += 1
            await self.send(identity, p.Error(
                code=p.ProtocolError.code, field="type",
                message=f"the orchestrator does not accept {msg.type!r} messages"))

    # ---- workers ---------------------------------------------------------------------------

    async def _on_worker(self, identity: bytes, key: str | None, peer: _Peer | None, msg: Any) -> None:
        if isinstance(msg, p.Register):
            await self._register(identity, key, msg)
            return
        if isinstance(msg, p.Done):
            fut = self._asks.get(msg.req)
            if fut is not None and not fut.done():
                fut.set_result(msg.detail)
            return
        if peer is None or (not isinstance(msg, p.Heartbeat) and msg.backend not in peer.backends):
            if not isinstance(msg, p.Heartbeat):
                self._refused(identity, key, msg, "the sending connection does not hold this backend")
            self.orch.counters["not_registered"] += 1
            await self.send(identity, p.Error.of(p.NotRegistered(
                "this worker is not registered (the orchestrator restarted or declared it lost)",
                hint="register again")))
            return
        try:
            if isinstance(msg, p.Heartbeat):
                inventory = msg.inventory or {}
                gone = [b for b in sorted(peer.backends)
                        if not self.orch.heartbeat(b, _holding(msg.reg, inventory.get(b)))]
                if gone:  # the scheduler no longer has them: forget them here and ask the worker back
                    for b in gone:
                        peer.backends.discard(b)
                        if self.backend_peer.get(b) == identity:
                            self.backend_peer.pop(b)
                    await self.send(identity, p.Error.of(p.NotRegistered(
                        f"backend(s) {', '.join(gone)} are not registered", hint="register again")))
            elif isinstance(msg, p.Started):
                for task_id, attempt in msg.runs:  # each start on its own: one refused is not all refused
                    try:
                        self.orch.started(task_id, attempt, msg.backend)
                    except NotAllowed as exc:
                        self._refused(identity, key, msg, str(exc), task_id, attempt)
                        await self.send(identity, p.Error.of(exc))
            elif isinstance(msg, p.Progress):
                self.orch.progress(msg.task_id, msg.fraction, msg.message, msg.backend, msg.attempt)
            elif isinstance(msg, p.ResultMsg | p.Results):
                await self._results(identity, key, msg)
        except NotAllowed as exc:
            self._refused(identity, key, msg, str(exc))
            await self.send(identity, p.Error.of(exc))

    def _refused(self, identity: bytes, key: str | None, msg: Any, why: str, task_id: str | None = None,
                 attempt: int | None = None) -> None:
        """A start, progress or result from a peer that does not hold that attempt: count and audit."""
        self.orch.counters[f"refused_{msg.type}"] += 1
        if isinstance(msg, p.Progress):
            return  # counted only: a flood of progress must not grow the audit log
        if isinstance(msg, p.ResultMsg):
            task_id, attempt = msg.result.task_id, msg.result.attempt
        self.orch.audit(AuditEntry(
            actor=f"peer:{identity.hex()[:16]}" + (f"[{key[:8]}]" if key else ""), action=f"refused_{msg.type}",
            target=task_id, detail={"backend": getattr(msg, "backend", None), "attempt": attempt, "why": why}))

    async def _results(self, identity: bytes, key: str | None, msg: p.ResultMsg | p.Results) -> None:
        """Record each result on its own; one ack names every one that is recorded (sent once durable)."""
        results = [msg.result] if isinstance(msg, p.ResultMsg) else msg.results
        columns = msg.arrays() if isinstance(msg, p.ResultMsg) and msg.blobs else None
        recorded: list[tuple[str, int]] = []
        for result in results:
            try:
                if await self._result(identity, msg.backend, result, columns):
                    recorded.append((result.task_id, result.attempt))
            except NotAllowed as exc:
                self._refused(identity, key, msg, str(exc), result.task_id, result.attempt)
                await self.send(identity, p.Error.of(exc, p.result_req(result)))
        for i in range(0, len(recorded), p.MAX_RUNS_PER_MESSAGE):
            await self.send(identity, p.Ack(backend=msg.backend, runs=recorded[i:i + p.MAX_RUNS_PER_MESSAGE]))

    async def _result(self, identity: bytes, backend: str, result: Result,
                      columns: dict[str, Any] | None) -> bool:
        """Record one result (journaled with the burst); False when it is refused for a reason to tell."""
        try:
            if columns:  # a block result: its rows go to the artifact store, the journal keeps the reference
                result = result.model_copy(update={"artifact": await self._store_columns(columns, "blobs")})
            self.orch.finished(result, backend)
        except NotAllowed:
            raise
        except PPUError as exc:
            self.orch.counters["result_errors"] += 1
            await self.send(identity, p.Error.of(exc))
            return False
        return True

    async def _register(self, identity: bytes, key: str | None, msg: p.Register) -> None:
        refused = [s.name for s in msg.backends if not self.auth.may_register(key, s.name)]
        now = self.orch.clock()
        held = [s.name for s in msg.backends
                if (holder := self.peers.get(self.backend_peer.get(s.name, b""))) is not None
                and holder.identity != identity and self.orch.sched.is_alive(s.name, now)
                and (not msg.boot or holder.boot != msg.boot)]
        if held and not refused:
            self.orch.counters["refused_takeover"] += 1
            self.orch.audit(AuditEntry(
                actor=f"peer:{identity.hex()[:16]}" + (f"[{key[:8]}]" if key else ""), action="refused_register",
                target=",".join(held), detail={"worker": msg.worker, "why": "held by a live connection"}))
            await self.send(identity, p.Error.of(NotAllowed(
                f"backend(s) {', '.join(held)} are held by another live connection", field="backends",
                hint="stop the other worker, or wait until it has missed its heartbeats"), msg.req))
            return
        if refused:
            self.orch.counters["refused_register"] += 1
            log.warning("worker %s (key %s) may not register %s", msg.worker, key, refused)
            await self.send(identity, p.Error.of(NotAllowed(
                f"this worker's key may not register backend(s) {', '.join(refused)}", field="backends",
                hint="list the backend under security.workers for this key in the lab config"), msg.req))
            return
        peer = self.peers.setdefault(identity, _Peer(identity, key))
        peer.boot = msg.boot
        for spec in msg.backends:
            old = self.backend_peer.get(spec.name)
            if old is not None and old != identity and old in self.peers:
                self.peers[old].backends.discard(spec.name)
            self.backend_peer[spec.name] = identity
            peer.backends.add(spec.name)
            self.orch.register(spec, self.link, msg.in_flight.get(spec.name, []), boot=msg.boot, reg=msg.req)
        for backend, results in msg.pending.items():
            if backend in peer.backends and results:
                # validated as part of the Register; a worker may hold more than one message's worth
                await self._results(identity, key, p.Results.model_construct(backend=backend, results=results))
        self.orch.counters["registrations"] += 1
        await self.send(identity, p.RegisterOk(req=msg.req, backends=sorted(peer.backends),
                                               heartbeat_s=self.cfg.heartbeat_s,
                                               max_message_bytes=self.cfg.max_message_bytes,
                                               max_blob_bytes=self.cfg.max_blob_bytes))

    async def _liveness(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.heartbeat_s)
            try:
                await self._check_peers()
            except Exception:
                log.exception("liveness check failed")

    async def _check_peers(self) -> None:
        """Heartbeat every worker; let go of connections that hold no backend and went silent.

        Whether a backend is alive is the scheduler's call (it declares it lost and the
        orchestrator calls :meth:`forget`); this only bounds the table of connections.
        """
        now = time.monotonic()
        deadline = self.cfg.heartbeat_s * self.cfg.missed_heartbeats
        for identity, peer in list(self.peers.items()):
            peer.backends = {b for b in peer.backends if self.backend_peer.get(b) == identity}
            if not peer.backends and now - peer.last_seen > deadline:
                self.peers.pop(identity)
                continue
            await self.send(identity, p.Heartbeat())

    # ---- clients ---------------------------------------------------------------------------

    async def _on_request(self, identity: bytes, key: str | None, msg: Any) -> None:
        try:  # authorisation, in this one place: the role of the key against the request (and its task)
            task = self.orch.view.get_task(msg.task_id) if msg.type in OWN_ONLY else None
            authorise(self.auth.role(key), msg.type, task, key)
        except NotAllowed as exc:
            self.orch.counters["refused_request"] += 1
            log.warning("refused %s from key %s: %s", msg.type, key, exc)
            await self.send(identity, p.Error.of(exc, msg.req))
            return
        actor = msg.actor or "client"
        if key:
            actor = f"{actor}[{key[:8]}]"
        if isinstance(msg, p.Wait | p.Hold | p.GetArtifact) or (
                isinstance(msg, p.Submit) and any(t.block is not None for t in msg.tasks)):
            # These await workers, results or the disk: served off the receive loop so it never blocks.
            coro = (self._wait(identity, msg) if isinstance(msg, p.Wait)
                    else self._get_artifact(identity, msg) if isinstance(msg, p.GetArtifact)
                    else self._submit(identity, msg, actor, key) if isinstance(msg, p.Submit)
                    else self._hold(identity, msg, actor))
            t = asyncio.get_running_loop().create_task(coro)
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
            return
        try:
            data = self._call(identity, msg, actor, key)
            reply: Any = data if isinstance(data, p.RawReply) else p.Reply(req=msg.req, data=data)
        except PPUError as exc:
            self.orch.counters["error_" + exc.code] += 1
            reply = p.Error.of(exc, msg.req)
        except Exception as exc:
            self.orch.counters["internal_errors"] += 1
            log.exception("request %s failed", msg.type)
            reply = p.Error(req=msg.req, code="internal_error", message=f"{type(exc).__name__}: {exc}",
                            hint="see the orchestrator's log")
        await self.send(identity, reply)

    # ---- columnar blocks --------------------------------------------------------------------

    def _store(self) -> ArtifactStore:
        if self.artifacts is None:
            raise ConfigError("this orchestrator has no artifact store, so it takes no columnar blocks",
                              field="blobs", hint="run it with a SQLite store under a run_dir, or give it artifacts=")
        return self.artifacts

    async def _store_columns(self, columns: dict[str, np.ndarray], field: str) -> Any:
        store = self._store()
        return await asyncio.to_thread(store.put, columns)  # hashing and fsync off the loop

    async def block_arrays(self, runs: list[TaskRun]) -> tuple[dict[str, np.ndarray], list[tuple[TaskRun, PPUError]]]:
        """The binary frames of an assignment (``<task id>:<column>`` for each columnar run), and the
        runs whose block cannot be read (gone from the store, or bytes that fail their sha256)."""
        out: dict[str, np.ndarray] = {}
        unreadable: list[tuple[TaskRun, PPUError]] = []
        store = self._store()
        for r in runs:
            if r.block is not None:
                try:
                    cols = await asyncio.to_thread(store.load, r.block.sha256)
                except (NotFound, ValidationFailed) as exc:
                    unreadable.append((r, exc))
                    continue
                out.update({f"{r.task_id}:{name}": col for name, col in cols.items()})
        return out, unreadable

    async def _submit_blocks(self, msg: p.Submit) -> list[TaskSpec]:
        """Store each columnar task's rows (blobs named ``<index>:<column>``) and point its block at them."""
        arrays = msg.arrays()
        used: set[str] = set()
        tasks = list(msg.tasks)
        blocks: dict[int, dict[str, np.ndarray]] = {}  # every block checked before the first is stored
        for i, spec in enumerate(tasks):
            if spec.block is None:
                continue
            cols: dict[str, np.ndarray] = blocks.setdefault(i, {})
            for name in spec.block.columns:
                key = f"{i}:{name}"
                if key not in arrays:
                    raise ValidationFailed(f"task {i} declares column {name!r} but no blob {key!r} came with it",
                                           field=f"tasks.{i}.block.columns", hint="send one blob per column")
                cols[name] = arrays[key]
                used.add(key)
            bad = [n for n, c in cols.items() if len(c) != spec.block.rows]
            if bad:
                raise ValidationFailed(f"task {i}: column {bad[0]!r} has {len(cols[bad[0]])} rows, the block "
                                       f"declares {spec.block.rows}", field=f"tasks.{i}.block.rows")
        extra = sorted(set(arrays) - used)
        if extra:
            raise ValidationFailed(f"blob {extra[0]!r} belongs to no column of a block task", field="blobs",
                                   hint="name blobs '<task index>:<column>' after a task's block.columns")
        for i, cols in blocks.items():
            stored = await self._store_columns(cols, f"tasks.{i}.block")
            tasks[i] = tasks[i].model_copy(update={"block": stored})
        return tasks

    async def _get_artifact(self, identity: bytes, msg: p.GetArtifact) -> None:
        try:
            data = await asyncio.to_thread(self._store().read_bytes, msg.sha256)
            reply: Any = p.Reply(req=msg.req, data={"sha256": msg.sha256, "bytes": len(data)}).carrying(
                {"npz": np.frombuffer(data, dtype=np.uint8)})
        except PPUError as exc:
            self.orch.counters["error_" + exc.code] += 1
            reply = p.Error.of(exc, msg.req)
        await self.send(identity, reply)

    async def _submit(self, identity: bytes, msg: p.Submit, actor: str, key: str | None) -> None:
        """A submit that carries blocks: stored off the loop, then accepted in one durable group."""
        try:
            self.orch.check(msg.tasks, actor=actor, key=key)  # refused before any rows are stored
            tasks = await self._submit_blocks(msg)
            async with self.orch.grouped():
                ids = self.orch.submit(tasks, actor=actor, key=key)
            reply: Any = p.Reply(req=msg.req, data=ids)
        except PPUError as exc:
            self.orch.counters["error_" + exc.code] += 1
            reply = p.Error.of(exc, msg.req)
        await self.send(identity, reply)

    def _call(self, identity: bytes, msg: Any, actor: str, key: str | None = None) -> Any:
        o = self.orch
        match msg:
            case p.Submit():
                if any(t.block is not None for t in msg.tasks):
                    raise ValidationFailed("columnar tasks are submitted with their blobs", field="tasks.block")
                return o.submit(msg.tasks, actor=actor, key=key)
            case p.Cancel():
                o.cancel(msg.task_id, actor, msg.reason)
            case p.Approve():
                o.approve(msg.task_id, actor, msg.note)
            case p.Reject():
                o.reject(msg.task_id, actor, msg.reason)
            case p.Review():
                o.review(msg.task_id, msg.decision, actor, msg.reason, msg.outputs)
            case p.Approvals() | p.Reviews():
                after = cursor(msg, int)
                listing = o.view.approvals if isinstance(msg, p.Approvals) else o.view.reviews
                rows = listing(-1 if after is None else after)
                return self._page(msg.req, [as_json(r) for r in rows], lambda k: str(rows[k - 1]["seq"]),
                                  lambda k: f"task {rows[k]['task_id']}'s entry")
            case p.BusyLog():
                kept = o.busy.since(msg.since, cursor(msg, int) or 0)  # positions stay as old ones go
                return self._page(msg.req, (as_json(iv) for _, iv in kept), lambda k: str(kept[k - 1][0] + 1),
                                  lambda k: "a busy interval")
            case p.SampleShow():
                return self._sample(msg)
            case p.SetAutonomy():
                o.controls.set_autonomy(msg.level, actor, msg.backend, msg.capability)
            case p.Status():
                st = o.view.status()
                st["workers"] = len(self.peers)
                return st
            case p.Tasks():
                found, more = o.view.task_rows(msg.state, msg.campaign, msg.capability, msg.limit, msg.offset,
                                          cursor(msg, seq_id))
                return self._page(msg.req, [body for _, _, body in found],
                                  lambda k: f"{found[k - 1][0]}:{found[k - 1][1]}",
                                  lambda k: f"task {found[k][1]}'s record", more=more)
            case p.GetTask():
                t = o.view.get_task(msg.task_id)
                if t is None:
                    raise UnknownTaskError(f"unknown task {msg.task_id!r}", hint="ppu tasks lists the tasks")
                return t.model_dump(mode="json")
            case p.GetResult():
                if o.view.get_task(msg.task_id) is None:
                    raise UnknownTaskError(f"unknown task {msg.task_id!r}", hint="ppu tasks lists the tasks")
                r = o.store.final_result(msg.task_id)
                return r.model_dump(mode="json") if r else None
            case p.Samples():  # the newest first, each page oldest first (as a whole listing is)
                samples = o.store.sample_rows(msg.campaign, msg.limit + 1, cursor(msg, at_id))
                more = len(samples) > msg.limit
                del samples[msg.limit:]
                return self._page(msg.req, [s.model_dump_json() for _, s in samples],
                                  lambda k: "{!r}:{}".format(*samples[k - 1][0]),
                                  lambda k: f"sample {samples[k][1].id}", more=more, reverse=True)
            case p.Audit():
                entries = o.store.audit_rows(msg.since, msg.limit + 1, cursor(msg, int))
                more = len(entries) > msg.limit
                del entries[msg.limit:]
                return self._page(msg.req, [e.model_dump_json() for _, e in entries],
                                  lambda k: str(entries[k - 1][0]), lambda k: "an audit entry", more=more,
                                  reverse=True)
            case p.Subscribe():
                return self._subscribe(identity, msg)
            case p.Unsubscribe():
                self._unsubscribe(identity)
        return None

    async def _hold(self, identity: bytes, msg: p.Hold, actor: str) -> None:
        try:
            if msg.held:
                data = await self.orch.controls.stop(msg.backend, actor, now=msg.now)
            else:
                data = await self.orch.controls.resume(msg.backend, actor)
            async with self.orch.grouped():  # an empty group: durable once all that came before is
                pass
            reply: Any = p.Reply(req=msg.req, data=data)
        except PPUError as exc:
            self.orch.counters["error_" + exc.code] += 1
            reply = p.Error.of(exc, msg.req)
        await self.send(identity, reply)

    def _page(self, req: str, items: Iterable[str], cursor_of: Callable[[int], str], what: Callable[[int], str],
              *, more: bool = False, head: str = "[", tail: str = "]", reverse: bool = False) -> p.RawReply:
        """The reply of as many leading items as fit in ``max_message_bytes`` (see :func:`page`)."""
        return page(req, items, self.cfg.max_message_bytes, cursor_of, what, more=more, head=head, tail=tail,
                    reverse=reverse)

    def _sample(self, msg: p.SampleShow) -> p.RawReply:
        """A sample's detail; its measurements (each with its task's outputs) in parts when they do not
        fit: a later part holds only ``measurements``."""
        view = self.orch.view
        skip = cursor(msg, int) or 0
        s = view.sample_record(msg.sample_id)
        head = '{"measurements":['
        if not skip:
            head = f'{{"sample":{s.model_dump_json()},"made_by":{as_json(view.sample_task(s.made_by))},"measurements":['
        tids = s.measurements[skip:]
        return self._page(msg.req, (as_json(view.sample_task(tid)) for tid in tids), lambda k: str(skip + k),
                          lambda k: f"sample {s.id}'s measurement by task {tids[k]}" if k >= 0
                          else f"sample {s.id} with the task that made it", head=head, tail="]}")

    async def _wait(self, identity: bytes, msg: p.Wait) -> None:
        self.orch.counters["waits"] += 1
        try:
            skip = cursor(msg, int) or 0
            if not 0 <= skip < len(msg.task_ids):
                raise ValidationFailed(f"cursor {skip} is past the {len(msg.task_ids)} task ids", field="cursor",
                                       hint=CURSOR_HINT)
            ids = msg.task_ids[skip:]
            reply: Any = self._page(msg.req, await self.orch.waits.wait_json(ids, msg.timeout), lambda k: str(skip + k),
                                    lambda k: f"task {ids[k]}'s record")
        except TimeoutError:
            reply = p.Error.of(p.WaitTimeout(f"the tasks did not all end within {msg.timeout}s",
                                             hint="wait again, or check them with ppu tasks"), msg.req)
        except PPUError as exc:
            reply = p.Error.of(exc, msg.req)
        await self.send(identity, reply)

    def _subscribe(self, identity: bytes, msg: p.Subscribe) -> dict[str, Any]:
        """Start (or go on with) pushing events to ``identity``; answers where the feed is now."""
        feed = self.orch.feed
        self.orch.counters["subscriptions"] += 1  # asked: a client on a new connection asks again
        if identity in self._subs:
            if msg.after is None:  # subscribing twice is the same as once
                return {"epoch": feed.epoch, "seq": feed.seq, "missed": 0}
            # Its connection was handed over (ROUTER_HANDOVER): what went into the old one may be lost, so
            # the subscription starts again after the last event the client took.
            self._unsubscribe(identity)
        q, missed = feed.subscribe(msg.epoch, msg.after)
        self._sub_queues[identity] = q
        self._subs[identity] = asyncio.get_running_loop().create_task(self._forward(identity, q))
        return {"epoch": feed.epoch, "seq": feed.seq, "missed": missed}

    def _unsubscribe(self, identity: bytes) -> None:
        t = self._subs.pop(identity, None)
        if t is not None:
            t.cancel()
        q = self._sub_queues.pop(identity, None)
        if q is not None:
            self.orch.feed.unsubscribe(q)

    async def _forward(self, identity: bytes, q: asyncio.Queue[Stamped]) -> None:
        epoch = self.orch.feed.epoch
        while True:
            seq, ev = await q.get()
            if not await self.send(identity, p.Event(event=ev, epoch=epoch, seq=seq)):
                if self._sock is not None and identity not in self.peers:
                    # the subscriber went away (or stopped reading): end its subscription
                    self._subs.pop(identity, None)
                    self._sub_queues.pop(identity, None)
                    self.orch.feed.unsubscribe(q)
                    return


def _holding(reg: str, h: p.Holding | None) -> tuple[str, int, list[Any], list[Any]] | None:
    """A heartbeat's inventory of one backend, as plain data for the orchestrator."""
    return None if h is None else (reg, h.seq, list(h.running), list(h.unacked))


def _merge_acks(outbox: list[tuple[bytes, Any]]) -> list[tuple[bytes, Any]]:
    """One ack per worker and backend for a burst (where the first one was), not one per result."""
    out: list[tuple[bytes, Any]] = []
    first: dict[tuple[bytes, str], p.Ack] = {}
    for identity, msg in outbox:
        if isinstance(msg, p.Ack):
            held = first.get((identity, msg.backend))
            if held is not None and len(held.runs) + len(msg.runs) <= p.MAX_RUNS_PER_MESSAGE:
                held.runs.extend(msg.runs)
                continue
            msg = msg.model_copy(update={"runs": list(msg.runs)})
            first[(identity, msg.backend)] = msg
        out.append((identity, msg))
    return out
