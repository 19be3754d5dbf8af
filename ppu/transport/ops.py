"""The client's operations, sans IO: what each API call sends and how it reads the answers.

Each operation is a generator that yields the :class:`Call` s it needs, one at a time, is sent each
call's answer (the reply's data, or the Reply itself for ``whole`` calls) or has the call's error
thrown into it, and returns the API call's value. :class:`~ppu.transport.client.PPUClient` and
:class:`~ppu.transport.client.AsyncPPUClient` only carry the calls (:func:`drive` and its async
twin), so that both clients build the same messages and read the same replies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
from pydantic import ValidationError

from ppu import errors
from ppu import protocol as p
from ppu.artifacts import check_columns, load_npz, verify
from ppu.models import MAX_NAME, TERMINAL_STATES, Artifact, AuditEntry, Result, Sample, Task, TaskSpec

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M")
SpecLike = TaskSpec | dict[str, Any]
# Rows as columns: a mapping of column name -> 1-d array-like (numpy array, pandas Series, list), or a
# pandas DataFrame (see as_columns); Any, as pandas may be absent
ColumnsLike = Any

DEFAULT_BLOCK_ROWS = 131_072  # rows per columnar task: big enough to amortise a task, small enough to overlap
BIG = 60.0  # the least seconds an async client gives a request that carries a block (submit_block, artifact)


@dataclass
class Call:
    """One request an operation needs answered: the message, its timeout (None: the client's),
    whether the answer is the whole Reply (with its arrays) rather than its data, and whether the
    client gives it up as soon as its connection drops (a read the operation asks again:
    ConnectionDropped, instead of waiting out a timeout for an answer a restarted orchestrator never
    gives)."""

    msg: Any
    timeout: float | None = None
    whole: bool = False
    again_on_drop: bool = False


Op = Generator[Call, Any, T]


@dataclass
class Step:
    """Where :func:`step` left an operation: the next call to carry, or the operation's value."""

    call: Call | None
    value: Any = None


def step(op: Op[Any], answer: Any, error: BaseException | None) -> Step:
    """Hand an operation the last call's answer (or its error); its next call, or its value."""
    try:
        return Step(op.send(answer) if error is None else op.throw(error))
    except StopIteration as stop:
        return Step(None, stop.value)
    finally:
        error = None  # an error that gets out holds this frame in its traceback: no cycle through it


def drive(op: Op[T], carry: Callable[[Call], Any]) -> T:
    """Run an operation to its end, carrying each call with ``carry`` (a blocking request)."""
    answer: Any = None
    error: BaseException | None = None
    try:
        while (at := step(op, answer, error)).call is not None:
            try:
                answer, error = carry(at.call), None
            except BaseException as exc:  # the operation may catch it (a split submit names what got in)
                answer, error = None, exc
        return cast(T, at.value)
    finally:
        error = None  # as in step: no reference cycle through an error that gets out


def ask(msg: Any, read: Callable[[Any], T], timeout: float | None = None, whole: bool = False) -> Op[T]:
    """An operation of one request: its answer read by ``read``."""
    return read((yield Call(msg, timeout, whole)))


def _none(_: Any) -> None:
    return None


def _as_is(data: Any) -> Any:
    return data


def _dict(data: Any) -> dict[str, Any]:
    return dict(data)


def _rows(data: Any) -> list[dict[str, Any]]:
    return list(data)


def read_tasks(data: Any) -> list[Task]:
    return [Task.model_validate(t) for t in data]


def _result(data: Any) -> Result | None:
    return Result.model_validate(data) if data is not None else None


# ---- requests and their replies ------------------------------------------------------------

def _invalid(exc: ValidationError, what: str, prefix: str = "") -> errors.ValidationFailed:
    """A pydantic error as ValidationFailed naming the first bad field (``prefix`` before it)."""
    def where(loc: tuple[Any, ...]) -> str:
        return prefix + ".".join(str(x) for x in loc) if loc else prefix.rstrip(".")

    text = "; ".join(f"{where(e['loc']) or '(root)'}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
    return errors.ValidationFailed(f"{what} is invalid: {text}", field=where(exc.errors()[0]["loc"]) or None)


def message(cls: Callable[..., M], **fields: Any) -> M:
    """A protocol message built from an API call's arguments; a bad one is ValidationFailed naming it."""
    try:
        return cls(**fields)
    except ValidationError as exc:
        raise _invalid(exc, f"the {getattr(cls, '__name__', 'request')} request") from None


def _count(name: str, value: Any, least: int) -> int:
    """An integer argument (a bool or a float is not one), at least ``least``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
        raise errors.ValidationFailed(f"{name} must be a whole number >= {least}, not {value!r}", field=name)
    return int(value)


def specs_of(specs: SpecLike | list[SpecLike]) -> list[TaskSpec]:
    items = specs if isinstance(specs, list) else [specs]
    out = []
    for i, s in enumerate(items):
        try:
            out.append(s if isinstance(s, TaskSpec) else TaskSpec.model_validate(s))
        except ValidationError as exc:
            raise _invalid(exc, f"task spec {i}", f"tasks.{i}.") from None
    return out


def _submits(specs: SpecLike | list[SpecLike]) -> list[p.Submit]:
    """A submission as requests of at most MAX_SUBMIT_TASKS specs (each accepted all or none)."""
    items = specs_of(specs)
    if not items:
        raise errors.ValidationFailed("a submission needs at least one task spec", field="tasks")
    n = p.MAX_SUBMIT_TASKS
    return [p.Submit(tasks=items[i:i + n]) for i in range(0, len(items), n)]


def _partly_accepted(exc: errors.PPUError, accepted: list[str], total: int) -> errors.PPUError:
    """A later request of a split submission failed: say which tasks the earlier ones made real."""
    if accepted:
        exc.message += (f" (the submission of {total} tasks went out in several requests; "
                        f"the first {len(accepted)} were accepted and will run)")
        exc.data["accepted"] = list(accepted)
    return exc


@dataclass
class Block:
    """One columnar task of a submit_block or screen: its rows ``lo`` to ``hi`` (exclusive) and its submit."""

    index: int
    of: int
    lo: int
    hi: int
    msg: p.Submit

    def __str__(self) -> str:
        return f"block {self.index + 1} of {self.of} (rows {self.lo}-{self.hi - 1})"


def _check_block_size(columns: dict[str, np.ndarray], rows: int, block_rows: int, max_blob_bytes: int) -> None:
    """Refuse, before sending, a block whose binary frames the orchestrator would refuse (or ZMQ drop)."""
    row_bytes = sum(int(col.dtype.itemsize) for col in columns.values())
    n = min(rows, block_rows)
    if n * row_bytes <= max_blob_bytes:
        return
    fit = max_blob_bytes // row_bytes
    raise errors.ValidationFailed(
        f"a block of {n} rows x {len(columns)} columns is {n * row_bytes} bytes ({n * row_bytes / 2**20:.1f} MiB) "
        f"of binary frames, above the orchestrator's limit of {max_blob_bytes} bytes "
        f"({max_blob_bytes / 2**20:.1f} MiB)", field="block_rows",
        hint=f"pass block_rows={fit} or fewer" if fit else "send fewer or narrower columns")


def as_columns(columns: ColumnsLike) -> dict[str, np.ndarray]:
    """Columns as numpy arrays, from a mapping of name -> array-like (numpy arrays, pandas Series,
    lists) or a pandas DataFrame (each column by its ``to_numpy()``); pandas is never imported here.
    What is neither is ValidationFailed naming ``columns``; a column is checked by check_columns."""
    if not (isinstance(columns, Mapping) or (hasattr(columns, "columns") and hasattr(columns, "items")
                                             and hasattr(columns, "to_numpy"))):
        raise errors.ValidationFailed(
            f"columns must be a mapping of column name -> 1-d array, or a pandas DataFrame, not "
            f"{type(columns).__name__}", field="columns", hint="e.g. {'x': np.array([0.1, 0.2])}, or df itself")
    out: dict[str, np.ndarray] = {}
    for name, col in columns.items():
        if name in out:  # a DataFrame may have two columns of one name: a dict keeps one
            raise errors.ValidationFailed(f"two columns are named {name!r}", field=f"columns.{name}",
                                          hint="rename one (df.columns = [...])")
        if isinstance(col, np.ndarray):
            out[name] = col
            continue
        to_numpy = getattr(col, "to_numpy", None)  # a pandas Series (or Index, or a polars Series)
        try:
            out[name] = to_numpy() if callable(to_numpy) else np.asarray(col)
        except (TypeError, ValueError) as exc:
            raise errors.ValidationFailed(f"column {name!r} cannot be read as an array: {exc}",
                                          field=f"columns.{name}",
                                          hint="pass a 1-d numpy array (a pandas Series: .to_numpy())") from None
    return out


def _blocks(capability: str, columns: ColumnsLike, block_rows: int, spec: dict[str, Any],
            max_blob_bytes: int) -> list[Block]:
    """Columns as columnar tasks of at most ``block_rows`` rows, one submit (and its blobs) each."""
    block_rows = _count("block_rows", block_rows, 1)
    columns = as_columns(columns)
    rows = check_columns(columns, "columns")
    for name in columns:
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME:
            shown = repr(name) if len(repr(name)) <= 40 else repr(name)[:36] + "...'"
            raise errors.ValidationFailed(f"a column name is a string of 1 to {MAX_NAME} characters, not {shown} "
                                          f"({len(str(name))} characters)", field="columns")
    _check_block_size(columns, rows, block_rows, max_blob_bytes)
    spans = [(lo, min(lo + block_rows, rows)) for lo in range(0, rows, block_rows)]
    out = []
    for i, (lo, hi) in enumerate(spans):
        try:
            task = TaskSpec.model_validate({**spec, "capability": capability,
                                            "block": {"rows": hi - lo, "columns": list(columns)}})
        except ValidationError as exc:
            raise _invalid(exc, f"the columnar task spec of {capability!r}") from None
        msg = p.Submit(tasks=[task]).carrying({f"0:{name}": col[lo:hi] for name, col in columns.items()})
        out.append(Block(i, len(spans), lo, hi, msg))
    return out


def check_frames(frames: list[Any], max_blob_bytes: int) -> None:
    """Refuse, before sending, a message whose binary frames together pass the orchestrator's limit:
    ZMQ drops one far above it without a word, and the client would wait for an answer in vain."""
    size = sum(memoryview(f).nbytes for f in frames[2:])
    if size > max_blob_bytes:
        raise errors.ValidationFailed(f"the message carries {size} bytes of binary frames, above the "
                                      f"orchestrator's limit of {max_blob_bytes}", field="blobs",
                                      hint="send fewer rows per message (block_rows)")


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


def left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


# One wait request asks for at most this long, then the operation asks again. A wait the orchestrator
# lost when it restarted is asked again as soon as the client sees its connection drop; one lost
# without a drop the client sees (a network that went silent) costs at most this, never the whole wait.
WAIT_SLICE_S = 30.0


def wait_timeout(timeout: float | None, client_timeout: float) -> float:
    """How long a wait request may go unanswered: the wait's own timeout and the client's on top."""
    return 1e9 if timeout is None else timeout + client_timeout


def wait_slice(rest: float | None) -> float:
    """The timeout of the next wait request, of ``rest`` seconds left (None: as long as it takes)."""
    return WAIT_SLICE_S if rest is None else min(rest, WAIT_SLICE_S)


# ---- the operations ------------------------------------------------------------------------

def ping(timeout: float) -> Op[bool]:
    try:
        yield Call(p.Status(), timeout)
        return True
    except p.NotAnswering:
        return False


def _too_large(exc: errors.PPUError, index: int, spec: TaskSpec) -> errors.PPUError:
    """The door's refusal of a one-task submit over the byte limit, said of the task."""
    exc.message = f"task {index} of the submission ({spec.capability}) is too large to send on its own: {exc.message}"
    exc.field = f"tasks.{index}"
    exc.hint = ("keep its bulk data out of inputs: rows as a columnar block (client.submit_block), or a file the "
                "task names; or raise orchestrator.max_message_bytes in the lab file")
    return exc


def submit(specs: SpecLike | list[SpecLike]) -> Op[list[str]]:
    """Submit in requests of at most MAX_SUBMIT_TASKS; a request the orchestrator refuses as over its
    byte limit (it accepted none of it) goes again as two halves, so a submission fits any lab's limit
    but for a task too large on its own."""
    ids: list[str] = []
    todo = _submits(specs)
    total = sum(len(m.tasks) for m in todo)
    while todo:
        msg = todo.pop(0)
        try:
            ids += yield Call(msg)
        except errors.PPUError as exc:
            if p.is_oversize(exc) and len(msg.tasks) > 1:
                half = len(msg.tasks) // 2
                todo[:0] = [p.Submit(tasks=msg.tasks[:half]), p.Submit(tasks=msg.tasks[half:])]
                continue
            if p.is_oversize(exc):
                exc = _too_large(exc, len(ids), msg.tasks[0])
            raise _partly_accepted(exc, ids, total) from None
    return ids


def submit_block(capability: str, columns: ColumnsLike, block_rows: int, spec: dict[str, Any],
                 timeout: float | None, max_blob_bytes: int = p.MAX_BLOB_BYTES) -> Op[list[str]]:
    return (yield from _submit_blocks(_blocks(capability, columns, block_rows, spec, max_blob_bytes), timeout))


def _submit_blocks(blocks: list[Block], timeout: float | None) -> Op[list[str]]:
    """One submit per block, in order; a refused one names its block and the blocks already accepted."""
    ids: list[str] = []
    for b in blocks:
        try:
            ids += yield Call(b.msg, timeout)
        except errors.PPUError as exc:
            exc.message += f" (submitting {b} of the columns"
            exc.message += f"; the {len(ids)} block(s) before it were accepted and will run)" if ids else ")"
            exc.data["accepted"] = list(ids)
            raise
    return ids


def artifact(ref: Artifact | str, timeout: float | None) -> Op[dict[str, np.ndarray]]:
    sha = ref if isinstance(ref, str) else ref.sha256
    msg = message(p.GetArtifact, sha256=sha)
    return _artifact_columns((yield Call(msg, timeout, whole=True)), sha)


def wait(task_ids: str | list[str], timeout: float | None, client_timeout: float,
         given: float | None = None) -> Op[list[Task]]:
    """Until every task has ended (``timeout``: seconds for all of them; None: as long as it takes),
    in requests of at most MAX_WAIT_IDS ids and WAIT_SLICE_S seconds each. A wait is a read, safe to
    repeat: one out when the connection drops (the orchestrator stopped or restarted) is asked again
    at once, to go out when the orchestrator is back; one not answered, or answered "not yet", is
    asked again while time is left. ``given``: the timeout the caller gave, when ``timeout`` is what is left of
    it (the WaitTimeout names the caller's, not what was left)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    given = timeout if given is None else given
    out: list[Task] = []
    for chunk in _wait_chunks(task_ids):
        cursor: str | None = None
        while True:
            rest = left(deadline)
            part = wait_slice(rest)
            msg = message(p.Wait, task_ids=chunk, timeout=part, cursor=cursor)
            try:
                reply = yield Call(msg, wait_timeout(part, client_timeout), whole=True, again_on_drop=True)
                out += read_tasks(reply.data)
                if reply.next is None:
                    break
                cursor = reply.next  # the tasks did not fit in one reply: the rest (all ended) from there
            except p.ConnectionDropped:  # asked again at once: it goes out when the orchestrator is back
                log.warning("the connection to the orchestrator dropped during a wait (restarting, or the network went "
                            "silent?); asking again")
            except (p.WaitTimeout, p.NotAnswering) as exc:
                if rest is not None and rest <= part:  # the caller's own time is up
                    if isinstance(exc, p.WaitTimeout):
                        exc.message = timed_out(given)
                    raise
                if isinstance(exc, p.NotAnswering):
                    log.warning("the orchestrator did not answer a wait (restarting?); asking again")
    return out


def subscribe_again(timeout: float | None, subscribe: Callable[[], p.Subscribe]) -> Op[tuple[bool, Any]]:
    """Subscribe again after the connection dropped (a restarted orchestrator knows no subscriber), asking
    ``subscribe()`` (after the last event taken) until it answers: (True, the reply's data), or (False, None)
    when ``timeout`` seconds pass first (None: as long as it takes)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            data = yield Call(subscribe(), None if deadline is None else max(0.1, deadline - time.monotonic()),
                              again_on_drop=True)
            log.info("subscribed again after the connection dropped")
            return True, data
        except p.ConnectionDropped:
            continue  # dropped again before the answer: asked again, it goes out when the orchestrator is back
        except p.NotAnswering:  # not back yet (the client replaced its socket): ask again while time is left
            if deadline is not None and time.monotonic() >= deadline:
                return False, None


def timed_out(given: float | None) -> str:
    """What a WaitTimeout says: the timeout the caller gave (never the seconds that were left of it)."""
    return f"the tasks did not all end within the {given:g} s given" if given is not None else \
        "the tasks did not all end in time"


def run(specs: SpecLike | list[SpecLike], timeout: float | None, client_timeout: float) -> Op[list[Task]]:
    return (yield from wait((yield from submit(specs)), timeout, client_timeout))


def _offered(capability: str, status: dict[str, Any]) -> None:
    """Refuse a screen that would wait forever: no backend the orchestrator knows offers ``capability``."""
    backends = status.get("backends", [])
    if any(capability in b.get("capabilities", []) for b in backends):
        return
    offered = sorted({c for b in backends for c in b.get("capabilities", [])})
    raise errors.UnknownCapabilityError(
        f"no backend of the lab offers {capability!r}, so its blocks would wait forever "
        f"(offered now: {', '.join(offered) or 'nothing'}; nothing was submitted)", field="capability",
        hint="start a worker hosting a backend that offers it, or pass timeout= to submit anyway and wait "
             "that long for one")


def _failed(block: Block, tid: str, capability: str, task: Task, res: Result | None) -> errors.BackendError:
    why = res.error if res is not None else task.error or task.state.value
    return errors.BackendError(
        f"{block} of the columns failed: columnar task {tid} ({capability}) ended {task.state.value}: {why} "
        f"(row numbers in it count from the block's first row, row {block.lo} of the columns)",
        hint=f"`ppu tasks --state {task.state.value}` lists it with its attempts and error; "
                              f"client.task({tid!r}) returns it", task_id=tid, block=block.index)


@dataclass
class LeftBehind:
    """What became of a screen's blocks not yet fetched when it gave up: cancelled (they had not
    ended), already finished (nothing to cancel), or left as they were (``why``)."""

    cancelled: list[str]
    finished: list[str]
    left: list[str]
    why: str = ""

    def said(self, of: str) -> str:
        """``; of the 3 block(s) after it, 2 not yet ended were cancelled, 1 had already finished``."""
        n = len(self.cancelled) + len(self.finished) + len(self.left)
        if not n:
            return ""
        parts = []
        if self.cancelled:
            parts.append(f"{len(self.cancelled)} not yet ended {'was' if len(self.cancelled) == 1 else 'were'} "
                         "cancelled")
        if self.finished:
            parts.append(f"{'all ' if len(self.finished) == n > 1 else ''}{len(self.finished)} had already "
                         f"finished{', so none was cancelled' if len(self.finished) == n else ''}")
        if self.left:
            parts.append(f"{len(self.left)} could not be cancelled ({self.why}): their ids are in the error's "
                         "data['left']; `ppu cancel ID` cancels one")
        return f"; of the {n} block(s) {of}, " + ", ".join(parts)


def _cancel_rest(ids: list[str], reason: str) -> Op[LeftBehind]:
    """Cancel the blocks of ``ids`` that have not ended; those that ended are only counted (cancelling
    one would be refused, and counted as an error by the orchestrator)."""
    out = LeftBehind([], [], [])
    for k, tid in enumerate(ids):
        try:
            state = (yield from task(tid)).state
            if state in TERMINAL_STATES:
                out.finished.append(tid)
                continue
            yield from cancel(tid, reason)
            out.cancelled.append(tid)
        except p.NotAnswering:  # the orchestrator went away: the error the caller gets says what was left
            out.left += ids[k:]
            out.why = "the orchestrator did not answer"
            break
        except errors.NotAllowed as exc:  # it ended meanwhile, or this client may not cancel it
            ended = "already ended" in exc.message
            (out.finished if ended else out.left).append(tid)
            out.why = out.why or ("" if ended else exc.message)
        except errors.PPUError as exc:
            out.left.append(tid)
            out.why = out.why or exc.message
    return out


def screen(capability: str, columns: ColumnsLike, block_rows: int, timeout: float | None,
           spec: dict[str, Any], client_timeout: float, big: float | None,
           max_blob_bytes: int = p.MAX_BLOB_BYTES) -> Op[tuple[dict[str, np.ndarray], list[Result]]]:
    deadline = None if timeout is None else time.monotonic() + timeout
    blocks = _blocks(capability, columns, block_rows, spec, max_blob_bytes)
    if timeout is None:
        _offered(capability, (yield Call(p.Status())))
    ids = yield from _submit_blocks(blocks, big)
    parts, results = [], []
    done = 0
    try:
        for block, tid in zip(blocks, ids, strict=True):
            [t] = yield from wait([tid], left(deadline), client_timeout, given=timeout)
            res = yield from result(tid)
            if res is None or res.artifact is None:
                raise _failed(block, tid, capability, t, res)
            parts.append((yield from artifact(res.artifact, big)))
            results.append(res)
            done += 1
    except (errors.BackendError, p.WaitTimeout) as exc:
        # All or nothing: the caller gets no columns, so the blocks not yet ended are cancelled.
        out_of_time = isinstance(exc, p.WaitTimeout)
        rest = ids[done:] if out_of_time else ids[done + 1:]
        why = "timed out" if out_of_time else "failed"
        behind = yield from _cancel_rest(rest, f"screen of {capability}: {blocks[done]} {why}")
        if out_of_time:
            exc.message = f"{timed_out(timeout).replace('tasks', 'blocks')} (waiting for {blocks[done]})"
            exc.hint = "screen again with a longer timeout, or timeout=None to wait as long as it takes"
        exc.message += behind.said("not yet fetched" if out_of_time else "after it")
        exc.data.update(task_ids=list(ids), cancelled=behind.cancelled, finished=behind.finished,
                        left=behind.left)
        raise
    bad = {str(b): int(r.outputs.get("non_finite_rows") or 0) for b, r in zip(blocks, results, strict=True)}
    if any(bad.values()):  # a model's NaN is no error of the task's, but argmax would pick it
        log.warning("screen of %s: %d row(s) came back non-finite (NaN or inf): %s; mask them, e.g. "
                    "np.isfinite(out['mean'])", capability, sum(bad.values()),
                    ", ".join(f"{n} in {b}" for b, n in bad.items() if n))
    return _concat(parts), results


def cancel(task_id: str, reason: str) -> Op[None]:
    return ask(message(p.Cancel, task_id=task_id, reason=reason), _none)


def approve(task_id: str, note: str) -> Op[None]:
    return ask(message(p.Approve, task_id=task_id, note=note), _none)


def reject(task_id: str, reason: str) -> Op[None]:
    return ask(message(p.Reject, task_id=task_id, reason=reason), _none)


def review(task_id: str, decision: str, reason: str, outputs: dict[str, Any] | None) -> Op[None]:
    return ask(message(p.Review, task_id=task_id, decision=decision, reason=reason, outputs=outputs), _none)


def hold(backend: str | None, held: bool, now: bool) -> Op[dict[str, str]]:
    return ask(message(p.Hold, backend=backend, held=held, now=now), _as_is)


def parts(msg: Any, read: Callable[[Any], list[T]], *, limit: int | None = None,
          older: bool = False) -> Op[list[T]]:
    """An answer that may come in parts (docs/protocol.md "Long answers"): the same request again,
    from each reply's ``next``, until a reply has none or ``limit`` records are in. ``older``: each
    part holds older records than the last, each in oldest-first order (samples, audit)."""
    out: list[T] = []
    while True:
        reply = yield Call(msg, whole=True)
        rows = read(reply.data)
        out = rows + out if older else out + rows
        if reply.next is None or (limit is not None and len(out) >= limit):
            return out
        msg = msg.model_copy(update={"req": "", "cursor": reply.next})
        if limit is not None:
            msg.limit = min(p.MAX_LIST_ROWS, limit - len(out))


def approvals() -> Op[list[dict[str, Any]]]:
    return parts(p.Approvals(), _rows)


def reviews() -> Op[list[dict[str, Any]]]:
    return parts(p.Reviews(), _rows)


def busy(since: float) -> Op[list[dict[str, Any]]]:
    return parts(message(p.BusyLog, since=since), _rows)


def sample(sample_id: str) -> Op[dict[str, Any]]:
    """A sample's detail; its measurements may come in several replies (each with its task's outputs)."""
    msg = message(p.SampleShow, sample_id=sample_id)
    detail: dict[str, Any] = {}
    while True:
        reply = yield Call(msg, whole=True)
        measured = list(reply.data.get("measurements", []))
        detail = detail or dict(reply.data, measurements=[])
        detail["measurements"] += measured
        if reply.next is None:
            return detail
        msg = msg.model_copy(update={"req": "", "cursor": reply.next})


def set_autonomy(level: str, backend: str | None, capability: str | None) -> Op[None]:
    return ask(message(p.SetAutonomy, level=level, backend=backend, capability=capability), _none)


def status() -> Op[dict[str, Any]]:
    return ask(p.Status(), _as_is)


def tasks(state: str | None, campaign: str | None, capability: str | None, limit: int) -> Op[list[Task]]:
    """The newest ``limit`` tasks, in pages of at most MAX_LIST_ROWS (and max_message_bytes) that go on
    below the last task of the page before (by key, so tasks submitted meanwhile shift nothing: no task
    twice, none missed that was there when the listing began)."""
    limit = _count("limit", limit, 1)
    first = message(p.Tasks, state=state, campaign=campaign, capability=capability,
                    limit=min(p.MAX_LIST_ROWS, limit))
    return (yield from parts(first, read_tasks, limit=limit))


def task(task_id: str) -> Op[Task]:
    return ask(message(p.GetTask, task_id=task_id), Task.model_validate)


def result(task_id: str) -> Op[Result | None]:
    return ask(message(p.GetResult, task_id=task_id), _result)


def samples(campaign: str | None) -> Op[list[Sample]]:
    """The newest MAX_LIST_ROWS samples, oldest change first."""
    return parts(message(p.Samples, campaign=campaign), lambda data: [Sample.model_validate(s) for s in data],
                 limit=p.MAX_LIST_ROWS, older=True)


def audit(since: float) -> Op[list[AuditEntry]]:
    """The newest MAX_LIST_ROWS entries at or after ``since``, oldest first."""
    return parts(message(p.Audit, since=since), lambda data: [AuditEntry.model_validate(a) for a in data],
                 limit=p.MAX_LIST_ROWS, older=True)
