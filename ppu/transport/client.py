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
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from ppu import errors
from ppu import protocol as p
from ppu.artifacts import check_columns, load_npz, verify
from ppu.models import Artifact, AuditEntry, Result, Sample, Task, TaskSpec, new_id
from ppu.transport.security import CurveKeys

SpecLike = TaskSpec | dict[str, Any]


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
    errors.PPUError.__init__(exc, msg.message, hint=msg.hint, field=msg.field)
    if cls is errors.PPUError or cls.code != msg.code:
        exc.code = msg.code
    return exc


def _specs(specs: SpecLike | list[SpecLike]) -> list[TaskSpec]:
    items = specs if isinstance(specs, list) else [specs]
    return [s if isinstance(s, TaskSpec) else TaskSpec.model_validate(s) for s in items]


def _submits(specs: SpecLike | list[SpecLike]) -> list[p.Submit]:
    """A submission as requests of at most MAX_SUBMIT_TASKS specs (each accepted all or none)."""
    items = _specs(specs)
    n = p.MAX_SUBMIT_TASKS
    return [p.Submit(tasks=items[i:i + n]) for i in range(0, len(items), n)] or [p.Submit(tasks=items)]


DEFAULT_BLOCK_ROWS = 131_072  # rows per columnar task: big enough to amortise a task, small enough to overlap


def _block_submits(capability: str, columns: dict[str, np.ndarray], block_rows: int,
                   spec: dict[str, Any]) -> list[p.Submit]:
    """Columns as columnar tasks of at most ``block_rows`` rows, one submit (and its blobs) each."""
    rows = check_columns(columns, "columns")
    if block_rows < 1:
        raise errors.ValidationFailed("block_rows must be >= 1", field="block_rows")
    out = []
    for lo in range(0, rows, block_rows):
        part = {name: col[lo:lo + block_rows] for name, col in columns.items()}
        n = len(next(iter(part.values())))
        task = TaskSpec.model_validate({**spec, "capability": capability,
                                        "block": {"rows": n, "columns": list(part)}})
        out.append(p.Submit(tasks=[task]).carrying({f"0:{name}": col for name, col in part.items()}))
    return out


def _artifact_columns(reply: p.Reply, sha: str) -> dict[str, np.ndarray]:
    data = reply.arrays().get("npz")
    if data is None:
        raise errors.PPUError("the orchestrator's get_artifact reply carried no file")
    raw = data.tobytes()
    verify(raw, sha)
    return load_npz(raw)


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not parts:
        return {}
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _wait_chunks(task_ids: str | list[str]) -> list[list[str]]:
    ids = [task_ids] if isinstance(task_ids, str) else list(task_ids)
    n = p.MAX_WAIT_IDS
    return [ids[i:i + n] for i in range(0, len(ids), n)] or [ids]


def _task_pages(state: str | None, campaign: str | None, capability: str | None, limit: int) -> Iterator[p.Tasks]:
    """Requests for the newest ``limit`` tasks, a page of at most MAX_LIST_ROWS each."""
    for offset in range(0, limit, p.MAX_LIST_ROWS):
        yield p.Tasks(state=state, campaign=campaign, capability=capability,
                      limit=min(p.MAX_LIST_ROWS, limit - offset), offset=offset)


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _partly_accepted(exc: errors.PPUError, accepted: list[str], total: int) -> errors.PPUError:
    """A later request of a split submission failed: say which tasks the earlier ones made real."""
    if accepted:
        exc.message += (f" (the submission of {total} tasks went out in requests of {p.MAX_SUBMIT_TASKS}; "
                        f"the first {len(accepted)} were accepted and will run)")
        exc.data["accepted"] = list(accepted)
    return exc


def _not_answering(address: str, timeout: float) -> p.NotAnswering:
    return p.NotAnswering(f"the orchestrator at {address} did not answer within {timeout:g}s",
                          hint="start it with `ppu orchestrator --config lab.yaml` (or check --connect)")


def _socket(ctx: zmq.Context[Any], address: str, curve: CurveKeys | None) -> Any:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, f"client-{uuid.uuid4().hex[:12]}".encode())
    if curve is not None:
        sock.curve_publickey = curve.public
        sock.curve_secretkey = curve.secret
        sock.curve_serverkey = curve.server_public
    sock.connect(address)
    return sock


def _unpack(name: str, data: Any) -> Any:
    """Turn reply data into models, by request."""
    if name in ("wait", "tasks"):
        return [Task.model_validate(t) for t in data]
    if name == "task":
        return Task.model_validate(data)
    if name == "result":
        return Result.model_validate(data) if data is not None else None
    if name == "samples":
        return [Sample.model_validate(s) for s in data]
    if name == "audit":
        return [AuditEntry.model_validate(a) for a in data]
    return data


class PPUClient:
    """Blocking client (CLI, notebooks, Prefect tasks). Not thread-safe: one per thread."""

    def __init__(self, address: str, *, timeout: float = 10.0, curve: CurveKeys | None = None,
                 actor: str | None = None):
        self.address = address
        self.timeout = timeout
        self.curve = curve
        self.actor = actor
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._sock = _socket(self._ctx, address, curve)
        self._events: collections.deque[dict[str, Any]] = collections.deque()

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> PPUClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, msg: Any, timeout: float | None = None, *, whole: bool = False) -> Any:
        """The reply's data (``whole``: the Reply itself, with any arrays it carries)."""
        msg.req = msg.req or p.new_req()
        if self.actor and getattr(msg, "actor", "x") is None:
            msg.actor = self.actor
        t = self.timeout if timeout is None else timeout
        self._sock.send_multipart(p.encode(msg))
        deadline = time.monotonic() + t
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(left * 1000, zmq.POLLIN):
                self._sock.close(linger=0)
                self._sock = _socket(self._ctx, self.address, self.curve)
                raise _not_answering(self.address, t)
            reply = p.decode(self._sock.recv_multipart())
            if isinstance(reply, p.Event):
                self._events.append(reply.event)
            elif isinstance(reply, p.Error) and reply.req in (msg.req, ""):
                raise error_from(reply)
            elif isinstance(reply, p.Reply) and reply.req == msg.req:
                return reply if whole else reply.data

    def ping(self, timeout: float = 1.0) -> bool:
        """Does an orchestrator answer at this address?"""
        try:
            self.request(p.Status(), timeout)
            return True
        except p.NotAnswering:
            return False

    # ---- the API ---------------------------------------------------------------------------

    def submit(self, specs: SpecLike | list[SpecLike]) -> list[str]:
        """Submit specs; more than ``MAX_SUBMIT_TASKS`` go out as several requests, in order."""
        ids: list[str] = []
        msgs = _submits(specs)
        for msg in msgs:
            try:
                ids += self.request(msg)
            except errors.PPUError as exc:
                raise _partly_accepted(exc, ids, sum(len(m.tasks) for m in msgs)) from None
        return ids

    submit_many = submit

    def submit_block(self, capability: str, columns: dict[str, np.ndarray], *,
                     block_rows: int = DEFAULT_BLOCK_ROWS, **spec: Any) -> list[str]:
        """Submit rows as columnar tasks (binary frames) of at most ``block_rows`` rows each."""
        return [tid for msg in _block_submits(capability, columns, block_rows, spec) for tid in self.request(msg)]

    def artifact(self, ref: Artifact | str) -> dict[str, np.ndarray]:
        """The columns of a block or block result, fetched and checked against its sha256."""
        sha = ref if isinstance(ref, str) else ref.sha256
        return _artifact_columns(self.request(p.GetArtifact(sha256=sha), whole=True), sha)

    def wait(self, task_ids: str | list[str], timeout: float | None = None) -> list[Task]:
        """Wait for tasks to end (``timeout`` in seconds for all of them); any number, in requests of
        at most ``MAX_WAIT_IDS``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out: list[Task] = []
        for chunk in _wait_chunks(task_ids):
            left = _left(deadline)
            out += _unpack("wait", self.request(p.Wait(task_ids=chunk, timeout=left),
                                                1e9 if left is None else left + self.timeout))
        return out

    def run(self, specs: SpecLike | list[SpecLike], timeout: float | None = None) -> list[Task]:
        """Submit and wait."""
        return self.wait(self.submit(specs), timeout)

    def cancel(self, task_id: str, reason: str = "") -> None:
        self.request(p.Cancel(task_id=task_id, reason=reason))

    def approve(self, task_id: str, note: str = "") -> None:
        self.request(p.Approve(task_id=task_id, note=note))

    def reject(self, task_id: str, reason: str = "") -> None:
        self.request(p.Reject(task_id=task_id, reason=reason))

    def review(self, task_id: str, decision: str, reason: str = "",
               outputs: dict[str, Any] | None = None) -> None:
        self.request(p.Review(task_id=task_id, decision=decision, reason=reason,  # type: ignore[arg-type]
                              outputs=outputs))

    def hold(self, backend: str | None = None, held: bool = True, now: bool = False) -> dict[str, str]:
        """Stop (held) or resume; returns each backend's state in words."""
        states: dict[str, str] = self.request(p.Hold(backend=backend, held=held, now=now))
        return states

    def stop(self, backend: str | None = None, now: bool = False) -> dict[str, str]:
        return self.hold(backend, True, now)

    def resume(self, backend: str | None = None) -> dict[str, str]:
        return self.hold(backend, False)

    def approvals(self) -> list[dict[str, Any]]:
        return list(self.request(p.Approvals()))

    def reviews(self) -> list[dict[str, Any]]:
        return list(self.request(p.Reviews()))

    def busy(self, since: float = 0.0) -> list[dict[str, Any]]:
        """Closed busy intervals {backend, start, end, batch} ending at or after ``since``."""
        return list(self.request(p.BusyLog(since=since)))

    def sample(self, sample_id: str) -> dict[str, Any]:
        return dict(self.request(p.SampleShow(sample_id=sample_id)))

    def set_autonomy(self, level: str, backend: str | None = None, capability: str | None = None) -> None:
        self.request(p.SetAutonomy(level=level, backend=backend, capability=capability))  # type: ignore[arg-type]

    def status(self) -> dict[str, Any]:
        st: dict[str, Any] = self.request(p.Status())
        return st

    def tasks(self, state: str | None = None, campaign: str | None = None, capability: str | None = None,
              limit: int = 1000) -> list[Task]:
        """The newest ``limit`` tasks, newest first (paged in requests of at most MAX_LIST_ROWS)."""
        out: list[Task] = []
        for page in _task_pages(state, campaign, capability, limit):
            rows = _unpack("tasks", self.request(page))
            out += rows
            if len(rows) < page.limit:
                break
        return out

    def task(self, task_id: str) -> Task:
        t: Task = _unpack("task", self.request(p.GetTask(task_id=task_id)))
        return t

    def result(self, task_id: str) -> Result | None:
        r: Result | None = _unpack("result", self.request(p.GetResult(task_id=task_id)))
        return r

    def samples(self, campaign: str | None = None) -> list[Sample]:
        return list(_unpack("samples", self.request(p.Samples(campaign=campaign))))

    def audit(self, since: float = 0.0) -> list[AuditEntry]:
        return list(_unpack("audit", self.request(p.Audit(since=since))))

    def events(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Subscribe and yield events (transitions, progress); stops after ``timeout`` s of silence."""
        self.request(p.Subscribe())
        try:
            while True:
                while self._events:
                    yield self._events.popleft()
                if not self._sock.poll(None if timeout is None else timeout * 1000, zmq.POLLIN):
                    return
                msg = p.decode(self._sock.recv_multipart())
                if isinstance(msg, p.Event):
                    self._events.append(msg.event)
        finally:
            with contextlib.suppress(errors.PPUError):
                self.request(p.Unsubscribe(), 1.0)


class AsyncPPUClient:
    """The same API for asyncio code (flows, the embedded lab, tests); every call is a coroutine."""

    def __init__(self, address: str, *, timeout: float = 10.0, curve: CurveKeys | None = None,
                 actor: str | None = None):
        self.address = address
        self.timeout = timeout
        self.curve = curve
        self.actor = actor
        self._ctx = zmq.asyncio.Context()
        self._sock: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._futs: dict[str, asyncio.Future[Any]] = {}
        self._queues: list[asyncio.Queue[dict[str, Any]]] = []

    def _ensure(self) -> None:
        if self._sock is None:
            self._sock = _socket(self._ctx, self.address, self.curve)
            self._reader = asyncio.get_running_loop().create_task(self._read(self._sock))

    async def _drop_socket(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    async def close(self) -> None:
        await self._drop_socket()
        for f in self._futs.values():
            f.cancel()
        self._ctx.term()

    async def __aenter__(self) -> AsyncPPUClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _read(self, sock: Any) -> None:
        while True:
            frames = await sock.recv_multipart()
            try:
                msg = p.decode(frames)
            except p.ProtocolError:
                continue
            if isinstance(msg, p.Event):
                for q in self._queues:
                    q.put_nowait(msg.event)
            elif isinstance(msg, p.Reply | p.Error):
                fut = self._futs.pop(msg.req, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)

    async def request(self, msg: Any, timeout: float | None = None, *, whole: bool = False) -> Any:
        """The reply's data (``whole``: the Reply itself, with any arrays it carries)."""
        self._ensure()
        msg.req = msg.req or p.new_req()
        if self.actor and getattr(msg, "actor", "x") is None:
            msg.actor = self.actor
        t = self.timeout if timeout is None else timeout
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futs[msg.req] = fut
        await self._sock.send_multipart(p.encode(msg))
        try:
            reply = await asyncio.wait_for(fut, t)
        except TimeoutError:
            self._futs.pop(msg.req, None)
            await self._drop_socket()
            raise _not_answering(self.address, t) from None
        if isinstance(reply, p.Error):
            raise error_from(reply)
        return reply if whole else reply.data

    async def ping(self, timeout: float = 1.0) -> bool:
        try:
            await self.request(p.Status(), timeout)
            return True
        except p.NotAnswering:
            return False

    # ---- the API ---------------------------------------------------------------------------

    async def submit(self, specs: SpecLike | list[SpecLike]) -> list[str]:
        ids: list[str] = []
        msgs = _submits(specs)
        for msg in msgs:
            try:
                ids += await self.request(msg)
            except errors.PPUError as exc:
                raise _partly_accepted(exc, ids, sum(len(m.tasks) for m in msgs)) from None
        return ids

    submit_many = submit

    async def submit_block(self, capability: str, columns: dict[str, np.ndarray], *,
                           block_rows: int = DEFAULT_BLOCK_ROWS, **spec: Any) -> list[str]:
        """Submit rows as columnar tasks (binary frames) of at most ``block_rows`` rows each."""
        ids: list[str] = []
        for msg in _block_submits(capability, columns, block_rows, spec):
            ids += await self.request(msg, max(self.timeout, 60.0))
        return ids

    async def artifact(self, ref: Artifact | str) -> dict[str, np.ndarray]:
        """The columns of a block or block result, fetched and checked against its sha256."""
        sha = ref if isinstance(ref, str) else ref.sha256
        return _artifact_columns(await self.request(p.GetArtifact(sha256=sha), max(self.timeout, 60.0),
                                                    whole=True), sha)

    async def screen(self, capability: str, columns: dict[str, np.ndarray], *,
                     block_rows: int = DEFAULT_BLOCK_ROWS, timeout: float | None = None,
                     **spec: Any) -> tuple[dict[str, np.ndarray], list[Result]]:
        """Run rows through a capability as columnar tasks: (output columns in row order, one result per block).

        Blocks are fetched as each one ends, so fetching overlaps the blocks still running. A block
        that failed raises :class:`~ppu.errors.BackendError` naming it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ids = await self.submit_block(capability, columns, block_rows=block_rows, **spec)
        parts, results = [], []
        for tid in ids:
            [task] = await self.wait([tid], _left(deadline))
            res = await self.result(tid)
            if res is None or res.artifact is None:
                why = res.error if res is not None else task.state.value
                raise errors.BackendError(f"columnar task {tid} ({capability}) ended {task.state.value}: {why}",
                                          hint=f"ppu task {tid} shows its attempts")
            parts.append(await self.artifact(res.artifact))
            results.append(res)
        return _concat(parts), results

    async def wait(self, task_ids: str | list[str], timeout: float | None = None) -> list[Task]:
        deadline = None if timeout is None else time.monotonic() + timeout
        out: list[Task] = []
        for chunk in _wait_chunks(task_ids):
            left = _left(deadline)
            out += _unpack("wait", await self.request(p.Wait(task_ids=chunk, timeout=left),
                                                      1e9 if left is None else left + self.timeout))
        return out

    async def run(self, specs: SpecLike | list[SpecLike], timeout: float | None = None) -> list[Task]:
        """Submit and wait. A submission of one request sends its wait right behind it (ids chosen
        here), so that both travel in one round trip; the submission's error, if any, is raised."""
        items = _specs(specs)
        if len(items) > min(p.MAX_SUBMIT_TASKS, p.MAX_WAIT_IDS):
            return await self.wait(await self.submit(list[SpecLike](items)), timeout)
        items = [s if s.id else s.model_copy(update={"id": new_id()}) for s in items]
        ids = [s.id for s in items if s.id]
        loop = asyncio.get_running_loop()
        # Tasks start in the order they were made, so the submit leaves first (DEALER keeps order).
        submitted = loop.create_task(self.request(p.Submit(tasks=items)))
        waited = loop.create_task(self.request(p.Wait(task_ids=ids, timeout=timeout),
                                               1e9 if timeout is None else timeout + self.timeout))
        try:
            await submitted
        except BaseException:
            waited.cancel()
            with contextlib.suppress(BaseException):
                await waited
            raise
        return list(_unpack("wait", await waited))

    async def cancel(self, task_id: str, reason: str = "") -> None:
        await self.request(p.Cancel(task_id=task_id, reason=reason))

    async def approve(self, task_id: str, note: str = "") -> None:
        await self.request(p.Approve(task_id=task_id, note=note))

    async def reject(self, task_id: str, reason: str = "") -> None:
        await self.request(p.Reject(task_id=task_id, reason=reason))

    async def review(self, task_id: str, decision: str, reason: str = "",
                     outputs: dict[str, Any] | None = None) -> None:
        await self.request(p.Review(task_id=task_id, decision=decision, reason=reason,  # type: ignore[arg-type]
                                    outputs=outputs))

    async def hold(self, backend: str | None = None, held: bool = True, now: bool = False) -> dict[str, str]:
        states: dict[str, str] = await self.request(p.Hold(backend=backend, held=held, now=now))
        return states

    async def stop(self, backend: str | None = None, now: bool = False) -> dict[str, str]:
        return await self.hold(backend, True, now)

    async def resume(self, backend: str | None = None) -> dict[str, str]:
        return await self.hold(backend, False)

    async def approvals(self) -> list[dict[str, Any]]:
        return list(await self.request(p.Approvals()))

    async def reviews(self) -> list[dict[str, Any]]:
        return list(await self.request(p.Reviews()))

    async def busy(self, since: float = 0.0) -> list[dict[str, Any]]:
        return list(await self.request(p.BusyLog(since=since)))

    async def sample(self, sample_id: str) -> dict[str, Any]:
        return dict(await self.request(p.SampleShow(sample_id=sample_id)))

    async def set_autonomy(self, level: str, backend: str | None = None, capability: str | None = None) -> None:
        await self.request(p.SetAutonomy(level=level, backend=backend, capability=capability))  # type: ignore[arg-type]

    async def status(self) -> dict[str, Any]:
        st: dict[str, Any] = await self.request(p.Status())
        return st

    async def tasks(self, state: str | None = None, campaign: str | None = None,
                    capability: str | None = None, limit: int = 1000) -> list[Task]:
        out: list[Task] = []
        for page in _task_pages(state, campaign, capability, limit):
            rows = _unpack("tasks", await self.request(page))
            out += rows
            if len(rows) < page.limit:
                break
        return out

    async def task(self, task_id: str) -> Task:
        t: Task = _unpack("task", await self.request(p.GetTask(task_id=task_id)))
        return t

    async def result(self, task_id: str) -> Result | None:
        r: Result | None = _unpack("result", await self.request(p.GetResult(task_id=task_id)))
        return r

    async def samples(self, campaign: str | None = None) -> list[Sample]:
        return list(_unpack("samples", await self.request(p.Samples(campaign=campaign))))

    async def audit(self, since: float = 0.0) -> list[AuditEntry]:
        return list(_unpack("audit", await self.request(p.Audit(since=since))))

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Subscribe and yield events until the consumer stops iterating."""
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._queues.append(q)
        try:
            await self.request(p.Subscribe())
            while True:
                yield await q.get()
        finally:
            self._queues.remove(q)
            if not self._queues and self._sock is not None:
                with contextlib.suppress(errors.PPUError):
                    await self.request(p.Unsubscribe(), 1.0)
