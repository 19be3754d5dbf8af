"""Clients of a running orchestrator: :class:`PPUClient` (blocking) and :class:`AsyncPPUClient`.

Each request carries a request id; the answer with the same id is either data or a typed error,
raised here as the matching :mod:`ppu.errors` class (by its ``code``) with the server's message,
field and hint. A request nobody answers raises :class:`~ppu.protocol.NotAnswering`, and the
socket is replaced so that the unanswered request is not delivered later (zguide's Lazy Pirate).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar, cast

import numpy as np
import zmq
from zmq.utils.monitor import parse_monitor_message

from ppu import errors
from ppu import protocol as p
from ppu.models import Artifact, AuditEntry, Result, Sample, Task, new_id
from ppu.transport import ops
from ppu.transport.aiosock import AsyncSocket
from ppu.transport.feed_position import FeedPosition
from ppu.transport.ops import DEFAULT_BLOCK_ROWS, ColumnsLike, SpecLike
from ppu.transport.security import CurveKeys

T = TypeVar("T")


def _error_classes() -> dict[str, type[errors.PPUError]]:
    out: dict[str, type[errors.PPUError]] = {}
    stack: list[type[errors.PPUError]] = [errors.PPUError]
    while stack:
        cls = stack.pop()
        out.setdefault(cls.code, cls)
        stack.extend(cls.__subclasses__())
    return out


def error_from(msg: p.Error) -> errors.PPUError:
    """The exception a server Error reply stands for (PPUError with the code when it is unknown here)."""
    _ = p.NotAnswering  # make sure the protocol's error classes are imported and found
    cls = _error_classes().get(msg.code, errors.PPUError)
    exc = cls.__new__(cls)
    errors.PPUError.__init__(exc, msg.message, hint=msg.hint, field=msg.field,
                             **({"reason": msg.reason} if msg.reason else {}))
    if cls is errors.PPUError or cls.code != msg.code:
        exc.code = msg.code
    return exc


_POLL_SLICE_S = 3600.0
HEARTBEAT_S = 1.0  # a client's ZMQ heartbeat (PING) interval: see _socket
MISSED_HEARTBEATS = 5  # a connection with no traffic back for this many intervals is dropped


def _not_answering(address: str, timeout: float) -> p.NotAnswering:
    return p.NotAnswering(f"the orchestrator at {address} did not answer within {timeout:g}s",
                          hint=f"is one running and listening at {address}? check the address and port "
                               "(--connect, or orchestrator.bind in the lab file); else start it with "
                               "`ppu orchestrator --config lab.yaml`")


def _decode(frames: list[Any]) -> Any:
    """A message from the orchestrator. Its replies are bounded by the lab's max_message_bytes and
    max_blob_bytes (a long answer comes in parts), which may be larger than the defaults: they are
    read against the most any lab may set, so that a client takes whatever its lab may send."""
    return p.decode(frames, p.MAX_REPLY_BYTES, p.MAX_REPLY_BLOB_BYTES)


def _dropped(address: str) -> p.ConnectionDropped:
    return p.ConnectionDropped(f"the connection to the orchestrator at {address} dropped while a request was out",
                               hint="it stopped or restarted; a wait asks again by itself once it is back")


def _watch(sock: Any) -> Any:
    """A socket that gets a message each time ``sock``'s connection drops (see :func:`_drops`)."""
    return sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)


def _unwatch(sock: Any, monitor: Any) -> None:
    with contextlib.suppress(zmq.ZMQError):
        sock.disable_monitor()
    monitor.close(linger=0)


def _is_drop(frames: list[Any]) -> bool:
    return parse_monitor_message(frames)["event"] == zmq.EVENT_DISCONNECTED


def _socket(ctx: zmq.Context[Any], address: str, curve: CurveKeys | None, heartbeat_s: float) -> Any:
    """The DEALER a client talks through. It PINGs the orchestrator every ``heartbeat_s`` (ZMTP
    heartbeats, answered by the orchestrator's ZMQ I/O thread, busy Python or not): a connection that
    goes silent without closing (a network or NAT that drops it, a host gone without a word) is dropped
    after MISSED_HEARTBEATS intervals with nothing back, like a closed one, so the socket monitor sees
    it and a wait out is asked again on a new connection. The TTL asks the orchestrator to drop this
    connection in turn when the PINGs stop coming."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    ivl_ms = max(1, round(heartbeat_s * 1000))
    sock.setsockopt(zmq.HEARTBEAT_IVL, ivl_ms)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, MISSED_HEARTBEATS * ivl_ms)
    sock.setsockopt(zmq.HEARTBEAT_TTL, min(6_553_500, MISSED_HEARTBEATS * ivl_ms))  # at most 6553.5 s
    sock.setsockopt(zmq.ROUTING_ID, f"client-{uuid.uuid4().hex[:12]}".encode())
    if curve is not None:
        sock.curve_publickey = curve.public
        sock.curve_secretkey = curve.secret
        sock.curve_serverkey = curve.server_public
    sock.connect(address)
    return sock


class _Client:
    """What both clients hold (the address, timeouts, keys, actor) and how they stamp a request."""

    def __init__(self, address: str, *, timeout: float = 10.0, curve: CurveKeys | None = None,
                 actor: str | None = None, max_blob_bytes: int = p.MAX_BLOB_BYTES, heartbeat_s: float = HEARTBEAT_S):
        if not heartbeat_s > 0:
            raise errors.ConfigError(f"a client's heartbeat_s must be above 0 seconds, not {heartbeat_s}",
                                     field="heartbeat_s", hint="leave it out for the default of 1 s")
        self.address = address
        self.timeout = timeout
        self.heartbeat_s = heartbeat_s  # see _socket: how soon a silent connection is dropped
        self.max_blob_bytes = max_blob_bytes  # the orchestrator's max_blob_bytes: a bigger message is refused here
        self.curve = curve
        self.actor = actor
        self._open()

    def _open(self) -> None:
        raise NotImplementedError

    def _stamp(self, msg: Any, timeout: float | None) -> float:
        """Give ``msg`` a request id (and this client's actor where it names none); its timeout."""
        msg.req = msg.req or p.new_req()
        if self.actor and getattr(msg, "actor", "x") is None:
            msg.actor = self.actor
        return self.timeout if timeout is None else timeout


class PPUClient(_Client):
    """Blocking client (CLI, notebooks, Prefect tasks). Not thread-safe: one per thread."""

    def _open(self) -> None:
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._connect()
        self._events: collections.deque[p.Event] = collections.deque()
        self._feed = FeedPosition()

    def _connect(self) -> None:
        self._sock = _socket(self._ctx, self.address, self.curve, self.heartbeat_s)
        self._monitor = _watch(self._sock)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)

    def _disconnect(self) -> None:
        _unwatch(self._sock, self._monitor)
        self._sock.close(linger=0)

    def _drops(self) -> int:
        """How often the connection dropped since this was last asked."""
        n = 0
        while self._monitor.poll(0, zmq.POLLIN):
            n += _is_drop(self._monitor.recv_multipart())
        return n

    def close(self) -> None:
        self._disconnect()
        self._ctx.term()

    def __enter__(self) -> PPUClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, msg: Any, timeout: float | None = None, *, whole: bool = False,
                again_on_drop: bool = False) -> Any:
        """The reply's data (``whole``: the Reply itself, with any arrays it carries). ``again_on_drop``:
        raise ConnectionDropped as soon as the connection drops, rather than wait for an answer that a
        restarted orchestrator never gives (for reads the caller asks again)."""
        t = self._stamp(msg, timeout)
        frames = p.encode(msg)
        ops.check_frames(frames, self.max_blob_bytes)
        self._drops()  # drops before this request are not its own
        self._sock.send_multipart(frames)
        deadline = time.monotonic() + t
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._disconnect()
                self._connect()
                raise _not_answering(self.address, t)
            # zmq polls at most 2**31 ms at once: a wait without timeout asks for 1e9 s
            ready = dict(self._poller.poll(int(min(left, _POLL_SLICE_S) * 1000) + 1))
            if self._sock not in ready:
                if self._monitor in ready and self._drops() and again_on_drop:
                    raise _dropped(self.address)
                continue
            reply = _decode(self._sock.recv_multipart())
            if isinstance(reply, p.Event):
                self._events.append(reply)
            elif isinstance(reply, p.Error) and reply.req in (msg.req, ""):
                raise error_from(reply)
            elif isinstance(reply, p.Reply) and reply.req == msg.req:
                return reply if whole else reply.data

    def _drive(self, op: ops.Op[T]) -> T:
        return ops.drive(op, lambda call: self.request(call.msg, call.timeout, whole=call.whole,
                                                       again_on_drop=call.again_on_drop))

    def ping(self, timeout: float = 1.0) -> bool:
        """Does an orchestrator answer at this address?"""
        return self._drive(ops.ping(timeout))

    # ---- the API (each call's messages and replies are in ppu.transport.ops) ----------------

    def submit(self, specs: SpecLike | list[SpecLike]) -> list[str]:
        """Submit specs; more than ``MAX_SUBMIT_TASKS`` go out as several requests, in order."""
        return self._drive(ops.submit(specs))

    submit_many = submit

    def submit_block(self, capability: str, columns: ColumnsLike, *,
                     block_rows: int = DEFAULT_BLOCK_ROWS, **spec: Any) -> list[str]:
        """Submit rows as columnar tasks (binary frames) of at most ``block_rows`` rows each."""
        return self._drive(ops.submit_block(capability, columns, block_rows, spec, None, self.max_blob_bytes))

    def artifact(self, ref: Artifact | str) -> dict[str, np.ndarray]:
        """The columns of a block or block result, fetched and checked against its sha256."""
        return self._drive(ops.artifact(ref, None))

    def screen(self, capability: str, columns: ColumnsLike, *,
               block_rows: int = DEFAULT_BLOCK_ROWS, timeout: float | None = None,
               **spec: Any) -> tuple[dict[str, np.ndarray], list[Result]]:
        """Run rows through a capability as columnar tasks: (output columns in row order, one result per block).

        See :meth:`AsyncPPUClient.screen` for what it refuses, when it gives up and what it cancels."""
        return self._drive(ops.screen(capability, columns, block_rows, timeout, spec, self.timeout, None,
                                      self.max_blob_bytes))

    def wait(self, task_ids: str | list[str], timeout: float | None = None) -> list[Task]:
        """Wait for tasks to end (``timeout`` in seconds for all of them); any number, in requests of
        at most ``MAX_WAIT_IDS``."""
        return self._drive(ops.wait(task_ids, timeout, self.timeout))

    def run(self, specs: SpecLike | list[SpecLike], timeout: float | None = None) -> list[Task]:
        """Submit and wait."""
        return self._drive(ops.run(specs, timeout, self.timeout))

    def cancel(self, task_id: str, reason: str = "") -> None:
        return self._drive(ops.cancel(task_id, reason))

    def approve(self, task_id: str, note: str = "") -> None:
        return self._drive(ops.approve(task_id, note))

    def reject(self, task_id: str, reason: str = "") -> None:
        return self._drive(ops.reject(task_id, reason))

    def review(self, task_id: str, decision: str, reason: str = "",
               outputs: dict[str, Any] | None = None) -> None:
        return self._drive(ops.review(task_id, decision, reason, outputs))

    def hold(self, backend: str | None = None, held: bool = True, now: bool = False) -> dict[str, str]:
        """Stop (held) or resume; returns each backend's state in words."""
        return self._drive(ops.hold(backend, held, now))

    def stop(self, backend: str | None = None, now: bool = False) -> dict[str, str]:
        return self.hold(backend, True, now)

    def resume(self, backend: str | None = None) -> dict[str, str]:
        return self.hold(backend, False)

    def approvals(self) -> list[dict[str, Any]]:
        return self._drive(ops.approvals())

    def reviews(self) -> list[dict[str, Any]]:
        return self._drive(ops.reviews())

    def busy(self, since: float = 0.0) -> list[dict[str, Any]]:
        """Closed busy intervals {backend, start, end, batch} ending at or after ``since``."""
        return self._drive(ops.busy(since))

    def sample(self, sample_id: str) -> dict[str, Any]:
        return self._drive(ops.sample(sample_id))

    def set_autonomy(self, level: str, backend: str | None = None, capability: str | None = None) -> None:
        return self._drive(ops.set_autonomy(level, backend, capability))

    def status(self) -> dict[str, Any]:
        return self._drive(ops.status())

    def tasks(self, state: str | None = None, campaign: str | None = None, capability: str | None = None,
              limit: int = 1000) -> list[Task]:
        """The newest ``limit`` tasks, newest first (paged in requests of at most MAX_LIST_ROWS)."""
        return self._drive(ops.tasks(state, campaign, capability, limit))

    def task(self, task_id: str) -> Task:
        return self._drive(ops.task(task_id))

    def result(self, task_id: str) -> Result | None:
        return self._drive(ops.result(task_id))

    def samples(self, campaign: str | None = None) -> list[Sample]:
        return self._drive(ops.samples(campaign))

    def audit(self, since: float = 0.0) -> list[AuditEntry]:
        return self._drive(ops.audit(since))

    def events(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Subscribe and yield events (transitions, progress) from now on; stops after ``timeout`` s of
        silence. When the connection drops it subscribes again after the last event it took, and is sent
        again what it missed; where that cannot be (the orchestrator restarted, or no longer kept them) it
        yields a ``gap`` event (:class:`ppu.protocol.GapEvent`): read what changed with status / tasks."""
        feed = self._feed
        feed.reset()
        self._events.clear()  # an earlier stream's
        feed.subscribed(self.request(feed.subscribe()))
        try:
            while True:
                while self._events:
                    yield from feed.take(self._events.popleft())
                ready = dict(self._poller.poll(None if timeout is None else int(timeout * 1000) + 1))
                if not ready:
                    return
                if self._sock in ready:
                    msg = _decode(self._sock.recv_multipart())
                    if isinstance(msg, p.Event):
                        self._events.append(msg)
                elif self._drops():
                    back, data = self._drive(ops.subscribe_again(timeout, feed.subscribe))
                    if not back:
                        return  # not back within the stream's silence
                    gap = feed.subscribed(data)
                    if gap is not None:
                        yield gap
        finally:
            with contextlib.suppress(errors.PPUError):
                self.request(p.Unsubscribe(), 1.0)


class AsyncPPUClient(_Client):
    """The same API for asyncio code (flows, the embedded lab, tests); every call is a coroutine."""

    def _open(self) -> None:
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._sock: AsyncSocket | None = None
        self._monitor: AsyncSocket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._futs: dict[str, asyncio.Future[Any]] = {}
        self._droppable: set[str] = set()  # requests given up when the connection drops
        self._resubscribing: asyncio.Task[None] | None = None
        self._queues: list[asyncio.Queue[dict[str, Any]]] = []  # one per events() consumer
        self._feed = FeedPosition()  # where this client's one subscription is in the feed

    def _ensure(self) -> None:
        if self._sock is None:
            sock = _socket(self._ctx, self.address, self.curve, self.heartbeat_s)
            self._sock, self._monitor = AsyncSocket(sock), AsyncSocket(_watch(sock))
            loop = asyncio.get_running_loop()
            self._reader = loop.create_task(self._read(self._sock))
            self._watcher = loop.create_task(self._watch(self._monitor))

    async def _drop_socket(self) -> None:
        for task in (self._reader, self._watcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._reader = self._watcher = None
        if self._sock is not None and self._monitor is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.sock.disable_monitor()
            self._monitor.close(linger=0)
            self._sock.close(linger=0)
            self._sock = self._monitor = None

    async def _watch(self, monitor: AsyncSocket) -> None:
        """Each time the connection drops, the requests out that may be asked again fail with ConnectionDropped."""
        while True:
            if not _is_drop(await monitor.recv_multipart()):
                continue
            for req in list(self._droppable):
                fut = self._futs.pop(req, None)
                if fut is not None and not fut.done():
                    fut.set_exception(_dropped(self.address))
            if self._queues and (self._resubscribing is None or self._resubscribing.done()):
                self._resubscribing = asyncio.get_running_loop().create_task(self._subscribe_again())

    async def _subscribe_again(self) -> None:
        """After a drop, subscribe again for whoever follows events, after the last event taken (see
        :func:`ops.subscribe_again`)."""
        _, data = await self._drive(ops.subscribe_again(None, self._feed.subscribe))
        gap = self._feed.subscribed(data)
        if gap is not None:
            for q in self._queues:
                q.put_nowait(gap)

    async def close(self) -> None:
        if self._resubscribing is not None:
            self._resubscribing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resubscribing
        await self._drop_socket()
        for f in self._futs.values():
            f.cancel()
        self._ctx.term()

    async def __aenter__(self) -> AsyncPPUClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _read(self, sock: AsyncSocket) -> None:
        while True:
            frames = await sock.recv_multipart()
            try:
                msg = _decode(frames)
            except p.ProtocolError as exc:  # the request it answers fails with it, rather than wait in vain
                fut = self._futs.pop(p.guess_req(frames[1]) if len(frames) >= 2 else "", None)
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
                continue
            if isinstance(msg, p.Event):
                for ev in self._feed.take(msg):
                    for q in self._queues:
                        q.put_nowait(ev)
            elif isinstance(msg, p.Reply | p.Error):
                fut = self._futs.pop(msg.req, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)

    async def request(self, msg: Any, timeout: float | None = None, *, whole: bool = False,
                      again_on_drop: bool = False) -> Any:
        """The reply's data (``whole``: the Reply itself, with any arrays it carries); ``again_on_drop``
        as for :meth:`PPUClient.request`."""
        self._ensure()
        t = self._stamp(msg, timeout)
        frames = p.encode(msg)
        ops.check_frames(frames, self.max_blob_bytes)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futs[msg.req] = fut
        if again_on_drop:
            self._droppable.add(msg.req)
        assert self._sock is not None
        try:
            await self._sock.send_multipart(frames)
            reply = await asyncio.wait_for(fut, t)
        except p.ConnectionDropped:  # a TimeoutError too, but the socket is sound: it reconnects by itself
            raise
        except TimeoutError:
            self._futs.pop(msg.req, None)
            await self._drop_socket()
            raise _not_answering(self.address, t) from None
        finally:
            self._droppable.discard(msg.req)
        if isinstance(reply, p.Error):
            raise error_from(reply)
        return reply if whole else reply.data

    async def _drive(self, op: ops.Op[T]) -> T:
        """Run an operation to its end (the async twin of :func:`ppu.transport.ops.drive`)."""
        answer: Any = None
        error: BaseException | None = None
        try:
            while (at := ops.step(op, answer, error)).call is not None:
                try:
                    answer = await self.request(at.call.msg, at.call.timeout, whole=at.call.whole,
                                                again_on_drop=at.call.again_on_drop)
                    error = None
                except BaseException as exc:  # the operation may catch it, as drive does
                    answer, error = None, exc
            return cast(T, at.value)
        finally:
            error = None  # no reference cycle through an error that gets out

    async def ping(self, timeout: float = 1.0) -> bool:
        return await self._drive(ops.ping(timeout))

    # ---- the API (each call's messages and replies are in ppu.transport.ops) ----------------

    async def submit(self, specs: SpecLike | list[SpecLike]) -> list[str]:
        """Submit specs; more than ``MAX_SUBMIT_TASKS`` go out as several requests, in order."""
        return await self._drive(ops.submit(specs))

    submit_many = submit

    async def submit_block(self, capability: str, columns: ColumnsLike, *,
                     block_rows: int = DEFAULT_BLOCK_ROWS, **spec: Any) -> list[str]:
        """Submit rows as columnar tasks (binary frames) of at most ``block_rows`` rows each."""
        return await self._drive(ops.submit_block(capability, columns, block_rows, spec, max(self.timeout, ops.BIG),
                                                  self.max_blob_bytes))

    async def artifact(self, ref: Artifact | str) -> dict[str, np.ndarray]:
        """The columns of a block or block result, fetched and checked against its sha256."""
        return await self._drive(ops.artifact(ref, max(self.timeout, ops.BIG)))

    async def screen(self, capability: str, columns: ColumnsLike, *,
               block_rows: int = DEFAULT_BLOCK_ROWS, timeout: float | None = None,
               **spec: Any) -> tuple[dict[str, np.ndarray], list[Result]]:
        """Run rows through a capability as columnar tasks: (output columns in row order, one result per block).

        ``columns``: a mapping of column name -> 1-d numpy array (or any array-like: a pandas Series, a
        list), or a pandas DataFrame. Blocks are fetched as each one ends, so fetching overlaps the
        blocks still running.

        - Refused before anything is sent (:class:`~ppu.errors.ValidationFailed` naming the argument):
          a bad ``block_rows`` or column, and a block whose binary frames pass the orchestrator's
          ``max_blob_bytes`` (this client's ``max_blob_bytes``; the error says which ``block_rows`` fits).
        - With ``timeout=None`` (wait as long as it takes) it first asks the orchestrator's status and
          raises :class:`~ppu.errors.UnknownCapabilityError` when no backend offers ``capability``,
          rather than wait forever; with a timeout it submits anyway (a worker may still register).
        - All or nothing: the first block that fails raises :class:`~ppu.errors.BackendError` naming it
          in the caller's numbering (``block 3 of 3 (rows 40-49)``; a row number in the backend's error
          counts from that block's first row), and the blocks after it that have not ended are cancelled;
          so are they when ``timeout`` passes (:class:`~ppu.protocol.WaitTimeout`, naming that timeout).
          The message counts the blocks cancelled and those that had already finished; the error's
          ``data`` holds ``task_ids`` (every block's task), ``cancelled``, ``finished`` and ``left``
          (blocks it could not cancel, e.g. the orchestrator stopped answering).
        - Rows the model answered with NaN or inf leave their block succeeded (its result's
          ``non_finite_rows`` counts them) and are named in a warning on the ``ppu.transport.ops``
          logger: mask them (``np.isfinite(out["mean"])``) before ranking."""
        return await self._drive(ops.screen(capability, columns, block_rows, timeout, spec, self.timeout,
                                            max(self.timeout, ops.BIG), self.max_blob_bytes))

    async def wait(self, task_ids: str | list[str], timeout: float | None = None) -> list[Task]:
        """Wait for tasks to end (``timeout`` in seconds for all of them); any number, in requests of
        at most ``MAX_WAIT_IDS``."""
        return await self._drive(ops.wait(task_ids, timeout, self.timeout))

    async def run(self, specs: SpecLike | list[SpecLike], timeout: float | None = None) -> list[Task]:
        """Submit and wait. A submission of one request sends its wait right behind it (ids chosen
        here), so that both travel in one round trip; the submission's error, if any, is raised."""
        items = ops.specs_of(specs)
        if len(items) > min(p.MAX_SUBMIT_TASKS, p.MAX_WAIT_IDS):
            return await self.wait(await self.submit(list[SpecLike](items)), timeout)
        items = [s if s.id else s.model_copy(update={"id": new_id()}) for s in items]
        ids = [s.id for s in items if s.id]
        loop = asyncio.get_running_loop()
        # Tasks start in the order they were made, so the submit leaves first (DEALER keeps order).
        start = time.monotonic()
        part = ops.wait_slice(timeout)
        ops.message(p.Wait, task_ids=ids, timeout=timeout)  # a bad timeout: refused before the submit
        wait = p.Wait(task_ids=ids, timeout=part)
        submitted = loop.create_task(self.request(p.Submit(tasks=items)))
        waited = loop.create_task(self.request(wait, ops.wait_timeout(part, self.timeout), whole=True))
        try:
            await submitted
        except BaseException as exc:
            waited.cancel()
            with contextlib.suppress(BaseException):
                await waited
            if not p.is_oversize(exc):
                raise
            # too large for one message (none was accepted): submitted as submit() does (in parts, or a
            # task too large on its own named as such), then waited for
            return await self.wait(await self.submit(list[SpecLike](items)), timeout)
        done: list[Task] = []
        try:
            reply = await waited
            done = ops.read_tasks(reply.data)
            if reply.next is None:
                return done
        except (p.WaitTimeout, p.NotAnswering) as exc:
            if timeout is not None and timeout <= part:
                if isinstance(exc, p.WaitTimeout):
                    exc.message = ops.timed_out(timeout)
                raise
        # not all ended within the first slice, that wait was lost, or its answer came in parts: the
        # rest as a plain wait (a timeout names the caller's, not what was left of it)
        rest = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
        return done + await self._drive(ops.wait(ids[len(done):], rest, self.timeout, given=timeout))

    async def cancel(self, task_id: str, reason: str = "") -> None:
        return await self._drive(ops.cancel(task_id, reason))

    async def approve(self, task_id: str, note: str = "") -> None:
        return await self._drive(ops.approve(task_id, note))

    async def reject(self, task_id: str, reason: str = "") -> None:
        return await self._drive(ops.reject(task_id, reason))

    async def review(self, task_id: str, decision: str, reason: str = "",
               outputs: dict[str, Any] | None = None) -> None:
        return await self._drive(ops.review(task_id, decision, reason, outputs))

    async def hold(self, backend: str | None = None, held: bool = True, now: bool = False) -> dict[str, str]:
        """Stop (held) or resume; returns each backend's state in words."""
        return await self._drive(ops.hold(backend, held, now))

    async def stop(self, backend: str | None = None, now: bool = False) -> dict[str, str]:
        return await self.hold(backend, True, now)

    async def resume(self, backend: str | None = None) -> dict[str, str]:
        return await self.hold(backend, False)

    async def approvals(self) -> list[dict[str, Any]]:
        return await self._drive(ops.approvals())

    async def reviews(self) -> list[dict[str, Any]]:
        return await self._drive(ops.reviews())

    async def busy(self, since: float = 0.0) -> list[dict[str, Any]]:
        """Closed busy intervals {backend, start, end, batch} ending at or after ``since``."""
        return await self._drive(ops.busy(since))

    async def sample(self, sample_id: str) -> dict[str, Any]:
        return await self._drive(ops.sample(sample_id))

    async def set_autonomy(self, level: str, backend: str | None = None, capability: str | None = None) -> None:
        return await self._drive(ops.set_autonomy(level, backend, capability))

    async def status(self) -> dict[str, Any]:
        return await self._drive(ops.status())

    async def tasks(self, state: str | None = None, campaign: str | None = None, capability: str | None = None,
              limit: int = 1000) -> list[Task]:
        """The newest ``limit`` tasks, newest first (paged in requests of at most MAX_LIST_ROWS)."""
        return await self._drive(ops.tasks(state, campaign, capability, limit))

    async def task(self, task_id: str) -> Task:
        return await self._drive(ops.task(task_id))

    async def result(self, task_id: str) -> Result | None:
        return await self._drive(ops.result(task_id))

    async def samples(self, campaign: str | None = None) -> list[Sample]:
        return await self._drive(ops.samples(campaign))

    async def audit(self, since: float = 0.0) -> list[AuditEntry]:
        return await self._drive(ops.audit(since))

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Subscribe and yield events until the consumer stops iterating; after a drop, as
        :meth:`PPUClient.events` (what was missed is sent again, or a ``gap`` event stands in its place)."""
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        first = not self._queues
        self._queues.append(q)
        try:
            if first:  # a new stream: from now on
                self._feed.reset()
                self._feed.subscribed(await self.request(self._feed.subscribe()))
            else:  # the subscription is there already: asking again is the same as once
                await self.request(p.Subscribe())
            while True:
                yield await q.get()
        finally:
            self._queues.remove(q)
            if not self._queues and self._sock is not None:
                with contextlib.suppress(errors.PPUError):
                    await self.request(p.Unsubscribe(), 1.0)
