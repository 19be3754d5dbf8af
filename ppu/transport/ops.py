"""The client's operations, sans IO: what each API call sends and how it reads the answers.

Each operation is a generator that yields the :class:`Call` s it needs, one at a time, is sent each
call's answer (the reply's data, or the Reply itself for ``whole`` calls) or has the call's error
thrown into it, and returns the API call's value. :class:`~ppu.transport.client.PPUClient` and
:class:`~ppu.transport.client.AsyncPPUClient` only carry the calls (:func:`drive` and its async
twin), so that both clients build the same messages and read the same replies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np

from ppu import errors
from ppu import protocol as p
from ppu.artifacts import check_columns, load_npz, verify
from ppu.models import Artifact, AuditEntry, Result, Sample, Task, TaskSpec

T = TypeVar("T")
SpecLike = TaskSpec | dict[str, Any]

DEFAULT_BLOCK_ROWS = 131_072  # rows per columnar task: big enough to amortise a task, small enough to overlap
BIG = 60.0  # the least seconds an async client gives a request that carries a block (submit_block, artifact)


@dataclass
class Call:
    """One request an operation needs answered: the message, its timeout (None: the client's) and
    whether the answer is the whole Reply (with its arrays) rather than its data."""

    msg: Any
    timeout: float | None = None
    whole: bool = False


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

def specs_of(specs: SpecLike | list[SpecLike]) -> list[TaskSpec]:
    items = specs if isinstance(specs, list) else [specs]
    return [s if isinstance(s, TaskSpec) else TaskSpec.model_validate(s) for s in items]


def _submits(specs: SpecLike | list[SpecLike]) -> list[p.Submit]:
    """A submission as requests of at most MAX_SUBMIT_TASKS specs (each accepted all or none)."""
    items = specs_of(specs)
    n = p.MAX_SUBMIT_TASKS
    return [p.Submit(tasks=items[i:i + n]) for i in range(0, len(items), n)] or [p.Submit(tasks=items)]


def _partly_accepted(exc: errors.PPUError, accepted: list[str], total: int) -> errors.PPUError:
    """A later request of a split submission failed: say which tasks the earlier ones made real."""
    if accepted:
        exc.message += (f" (the submission of {total} tasks went out in requests of {p.MAX_SUBMIT_TASKS}; "
                        f"the first {len(accepted)} were accepted and will run)")
        exc.data["accepted"] = list(accepted)
    return exc


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


def left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def wait_timeout(timeout: float | None, client_timeout: float) -> float:
    """How long a wait request may go unanswered: the wait's own timeout and the client's on top."""
    return 1e9 if timeout is None else timeout + client_timeout


# ---- the operations ------------------------------------------------------------------------

def ping(timeout: float) -> Op[bool]:
    try:
        yield Call(p.Status(), timeout)
        return True
    except p.NotAnswering:
        return False


def submit(specs: SpecLike | list[SpecLike]) -> Op[list[str]]:
    ids: list[str] = []
    msgs = _submits(specs)
    for msg in msgs:
        try:
            ids += yield Call(msg)
        except errors.PPUError as exc:
            raise _partly_accepted(exc, ids, sum(len(m.tasks) for m in msgs)) from None
    return ids


def submit_block(capability: str, columns: dict[str, np.ndarray], block_rows: int, spec: dict[str, Any],
                 timeout: float | None) -> Op[list[str]]:
    ids: list[str] = []
    for msg in _block_submits(capability, columns, block_rows, spec):
        ids += yield Call(msg, timeout)
    return ids


def artifact(ref: Artifact | str, timeout: float | None) -> Op[dict[str, np.ndarray]]:
    sha = ref if isinstance(ref, str) else ref.sha256
    return _artifact_columns((yield Call(p.GetArtifact(sha256=sha), timeout, whole=True)), sha)


def wait(task_ids: str | list[str], timeout: float | None, client_timeout: float) -> Op[list[Task]]:
    deadline = None if timeout is None else time.monotonic() + timeout
    out: list[Task] = []
    for chunk in _wait_chunks(task_ids):
        rest = left(deadline)
        out += read_tasks((yield Call(p.Wait(task_ids=chunk, timeout=rest), wait_timeout(rest, client_timeout))))
    return out


def run(specs: SpecLike | list[SpecLike], timeout: float | None, client_timeout: float) -> Op[list[Task]]:
    return (yield from wait((yield from submit(specs)), timeout, client_timeout))


def screen(capability: str, columns: dict[str, np.ndarray], block_rows: int, timeout: float | None,
           spec: dict[str, Any], client_timeout: float,
           big: float | None) -> Op[tuple[dict[str, np.ndarray], list[Result]]]:
    deadline = None if timeout is None else time.monotonic() + timeout
    ids = yield from submit_block(capability, columns, block_rows, spec, big)
    parts, results = [], []
    for tid in ids:
        [task] = yield from wait([tid], left(deadline), client_timeout)
        res = yield from result(tid)
        if res is None or res.artifact is None:
            why = res.error if res is not None else task.state.value
            raise errors.BackendError(f"columnar task {tid} ({capability}) ended {task.state.value}: {why}",
                                      hint=f"ppu task {tid} shows its attempts")
        parts.append((yield from artifact(res.artifact, big)))
        results.append(res)
    return _concat(parts), results


def cancel(task_id: str, reason: str) -> Op[None]:
    return ask(p.Cancel(task_id=task_id, reason=reason), _none)


def approve(task_id: str, note: str) -> Op[None]:
    return ask(p.Approve(task_id=task_id, note=note), _none)


def reject(task_id: str, reason: str) -> Op[None]:
    return ask(p.Reject(task_id=task_id, reason=reason), _none)


def review(task_id: str, decision: str, reason: str, outputs: dict[str, Any] | None) -> Op[None]:
    return ask(p.Review(task_id=task_id, decision=decision, reason=reason,  # type: ignore[arg-type]
                        outputs=outputs), _none)


def hold(backend: str | None, held: bool, now: bool) -> Op[dict[str, str]]:
    return ask(p.Hold(backend=backend, held=held, now=now), _as_is)


def approvals() -> Op[list[dict[str, Any]]]:
    return ask(p.Approvals(), _rows)


def reviews() -> Op[list[dict[str, Any]]]:
    return ask(p.Reviews(), _rows)


def busy(since: float) -> Op[list[dict[str, Any]]]:
    return ask(p.BusyLog(since=since), _rows)


def sample(sample_id: str) -> Op[dict[str, Any]]:
    return ask(p.SampleShow(sample_id=sample_id), _dict)


def set_autonomy(level: str, backend: str | None, capability: str | None) -> Op[None]:
    return ask(p.SetAutonomy(level=level, backend=backend, capability=capability),  # type: ignore[arg-type]
               _none)


def status() -> Op[dict[str, Any]]:
    return ask(p.Status(), _as_is)


def tasks(state: str | None, campaign: str | None, capability: str | None, limit: int) -> Op[list[Task]]:
    """The newest ``limit`` tasks, in pages of at most MAX_LIST_ROWS; stops at a short page."""
    out: list[Task] = []
    for offset in range(0, limit, p.MAX_LIST_ROWS):
        page = p.Tasks(state=state, campaign=campaign, capability=capability,
                       limit=min(p.MAX_LIST_ROWS, limit - offset), offset=offset)
        rows = read_tasks((yield Call(page)))
        out += rows
        if len(rows) < page.limit:
            break
    return out


def task(task_id: str) -> Op[Task]:
    return ask(p.GetTask(task_id=task_id), Task.model_validate)


def result(task_id: str) -> Op[Result | None]:
    return ask(p.GetResult(task_id=task_id), _result)


def samples(campaign: str | None) -> Op[list[Sample]]:
    return ask(p.Samples(campaign=campaign), lambda data: [Sample.model_validate(s) for s in data])


def audit(since: float) -> Op[list[AuditEntry]]:
    return ask(p.Audit(since=since), lambda data: [AuditEntry.model_validate(a) for a in data])
