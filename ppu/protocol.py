"""The wire protocol in one small module (STYLE.md §5, after zguide's Majordomo).

Every message is two frames from a DEALER: ``[PROTOCOL_VERSION, json]``; the orchestrator's
ROUTER prepends the peer's identity. A message that carries columnar rows (a submit of block
tasks, an assignment of them, a block result, the reply to ``get_artifact``) adds one binary
frame per array, each described in the json's ``blobs`` (name, dtype, shape) and checked
against it at the door (:func:`decode`). The json is one of the pydantic models below, told apart by
its ``type`` field and decoded through the one module-level :data:`ADAPTER`. Requests from clients
(and the register of a worker) carry ``req``, a request id the answer (:class:`Reply` or
:class:`Error`) echoes. :func:`decode` turns every kind of bad input into a
:class:`~ppu.errors.ProtocolError` whose ``data["reason"]`` names the kind, so that a bad frame
becomes a typed error reply, never a crash. See ``docs/protocol.md``.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, PrivateAttr, TypeAdapter, ValidationError

from ppu.backends.base import TaskRun
from ppu.errors import PPUError, ProtocolError
from ppu.models import (
    MAX_ACTOR,
    MAX_NAME,
    MAX_TEXT,
    BackendSpec,
    JsonDict,
    Result,
    ResultStatus,
    Strict,
    TaskSpec,
    TaskState,
)

PROTOCOL_VERSION = b"PPU1"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # default; the lab config's orchestrator.max_message_bytes wins
# What one request may ask, so that no request holds the orchestrator's loop for long (docs/protocol.md
# "Limits"); the clients split larger submissions and waits into requests of this size. The byte limit
# above bounds everything else.
MAX_REQ = 64  # characters of a request id
MAX_SUBMIT_TASKS = 1000  # task specs per submit
MAX_WAIT_IDS = 1000  # task ids per wait
MAX_LIST_ROWS = 1000  # rows per tasks / samples / audit reply
MAX_BLOBS = 4096  # binary frames after the json (columns of blocks)
MAX_BLOB_BYTES = 512 * 1024 * 1024  # default bound on a message's binary frames together (orchestrator.max_blob_bytes)
# The most a lab may set those two to (ppu.config.OrchestratorConfig's upper bounds). The orchestrator never
# sends a reply over its own max_message_bytes (a long answer comes in parts, docs/protocol.md "Long
# answers"), so a client decodes replies against these: it takes whatever the lab it talks to may send.
MAX_REPLY_BYTES = 1024**3
MAX_REPLY_BLOB_BYTES = 8 * 1024**3
MAX_CURSOR = 256  # characters of a reply's ``next`` (and so of a request's ``cursor``)

Name = Annotated[str, Field(max_length=MAX_NAME)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]


class NotRegistered(ProtocolError):
    """A worker message from a peer the orchestrator does not know (restarted, or declared it lost)."""

    code = "not_registered"


class WaitTimeout(PPUError, TimeoutError):
    code = "timeout"


class NotAnswering(PPUError, TimeoutError):
    """Raised client-side: the orchestrator did not answer in time."""

    code = "not_answering"


class ConnectionDropped(NotAnswering):
    """Raised client-side: the connection to the orchestrator dropped while a read that may be asked
    again was out (the orchestrator stopped or restarted, and its answer will never come)."""

    code = "connection_dropped"


class ReplyTooLarge(PPUError):
    """An answer the orchestrator cannot send within its ``max_message_bytes``, even cut into parts:
    one record of it (a task, a result, a sample's measurement) is larger than that on its own."""

    code = "reply_too_large"


def new_req() -> str:
    return uuid.uuid4().hex[:16]


def result_req(r: Result) -> str:
    """The ``req`` of an error that refuses a result: the worker stops re-sending that attempt."""
    return f"result:{r.attempt}:{r.task_id}"


# reasons a frame is refused (ProtocolError.data["reason"], and the server's counter names)
BAD_FRAMES = "bad_frame_count"
BAD_VERSION = "bad_version"
OVERSIZE = "oversize"
BAD_JSON = "bad_json"
UNKNOWN_TYPE = "unknown_type"
BAD_PAYLOAD = "bad_payload"
BAD_NUMBER = "bad_number"
BAD_BLOB = "bad_blob"
REASONS = (BAD_FRAMES, BAD_VERSION, OVERSIZE, BAD_JSON, UNKNOWN_TYPE, BAD_PAYLOAD, BAD_NUMBER, BAD_BLOB)


class _Msg(Strict):
    pass


BlobDtype = Literal["float32", "float64", "int32", "int64", "uint8", "bool"]


class Blob(Strict):
    """One binary frame after the json: a C-ordered, little-endian 1-d array of ``shape[0]`` items."""

    name: str = Field(min_length=1, max_length=2 * MAX_NAME + 1, description="'<task id or index>:<column>'")
    dtype: BlobDtype
    shape: list[int] = Field(min_length=1, max_length=1, description="[rows]")

    @property
    def nbytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize) * self.shape[0]


class _Carrier(_Msg):
    """A message that may carry arrays in binary frames after its json."""

    blobs: list[Blob] = Field(default_factory=list, max_length=MAX_BLOBS,
                              description="the binary frames that follow the json, in order")
    _data: dict[str, np.ndarray] = PrivateAttr(default_factory=dict)

    def carrying(self, arrays: dict[str, np.ndarray]) -> Any:
        """This message with ``arrays`` as its binary frames (1-d; converted to little-endian)."""
        data: dict[str, np.ndarray] = {}
        specs = []
        for name, a in arrays.items():
            a = np.ascontiguousarray(a)
            if a.ndim != 1:
                raise ValueError(f"array {name!r} must be 1-d")
            if a.dtype.byteorder == ">":
                a = a.astype(a.dtype.newbyteorder("<"))
            specs.append(Blob(name=name, dtype=a.dtype.name, shape=[len(a)]))  # type: ignore[arg-type]
            data[name] = a
        self.blobs = specs
        self._data = data
        return self

    def arrays(self) -> dict[str, np.ndarray]:
        return self._data


class _Req(_Msg):
    req: str = Field("", max_length=MAX_REQ, description="request id the answer echoes")
    actor: str | None = Field(None, max_length=MAX_ACTOR, description="the person acting, for the audit log")


class _Paged(_Req):
    """A request whose answer may come in parts (docs/protocol.md "Long answers")."""

    cursor: str | None = Field(None, max_length=MAX_CURSOR,
                               description="the `next` of the previous reply to this same request: the answer "
                                           "goes on from there (null: from its start)")


# ---- worker -> orchestrator -------------------------------------------------------------------


class Register(_Req):
    """Sent once per connection (again only when told ``not_registered`` or left unanswered)."""

    type: Literal["register"] = "register"
    worker: str = Field("worker", max_length=MAX_NAME)
    boot: str = Field("", max_length=64, description="random id of the worker process (not shown anywhere)")
    backends: list[BackendSpec] = Field(min_length=1)
    in_flight: dict[str, list[str]] = Field(default_factory=dict, description="backend -> task ids it holds")
    pending: dict[str, list[Result]] = Field(
        default_factory=dict,
        description="backend -> unacked results, as many as fit in 1 MiB of JSON; the others are in in_flight and "
                    "re-sent as results")


RunKey = tuple[str, int]  # (task id, attempt)
MAX_RUNS_PER_MESSAGE = 10_000  # attempts named in one started / results / ack message


class Holding(_Msg):
    """One backend's inventory in a heartbeat."""

    seq: int = Field(0, ge=0, description="highest assignment number received under ``reg``")
    running: list[RunKey] = Field(default_factory=list, max_length=100_000)
    unacked: list[RunKey] = Field(default_factory=list, max_length=100_000)


class Heartbeat(_Msg):
    type: Literal["heartbeat"] = "heartbeat"
    reg: str = Field("", max_length=64, description="the worker's registration (its Register's req)")
    inventory: dict[str, Holding] | None = Field(None, description="backend -> what it holds (workers only)")


class Started(_Msg):
    """The attempts of one assignment that began to run (one message per batch, not per task)."""

    type: Literal["started"] = "started"
    backend: str
    runs: list[RunKey] = Field(min_length=1, max_length=MAX_RUNS_PER_MESSAGE)


class Progress(_Msg):
    type: Literal["progress"] = "progress"
    backend: str
    task_id: str
    attempt: int | None = None
    fraction: float = Field(ge=0, le=1)
    message: str = Field("", max_length=4096)


class ResultMsg(_Carrier):
    """One result; a block result's columns travel as its binary frames."""

    type: Literal["result"] = "result"
    backend: str
    result: Result


class Results(_Msg):
    """Several results of one backend (a batch's), each recorded on its own; no binary frames."""

    type: Literal["results"] = "results"
    backend: str
    results: list[Result] = Field(min_length=1, max_length=MAX_RUNS_PER_MESSAGE)


class Done(_Msg):
    """A worker's answer to Pause/Resume: the state the device was left in."""

    type: Literal["done"] = "done"
    req: str
    detail: str = ""


# ---- orchestrator -> worker -------------------------------------------------------------------


class RegisterOk(_Msg):
    type: Literal["register_ok"] = "register_ok"
    req: str = ""
    backends: list[str]
    heartbeat_s: float
    max_message_bytes: int = Field(MAX_MESSAGE_BYTES, ge=1, description=(
        "the orchestrator's limit on a message's json: the worker fails a result over it (not retryable) "
        "rather than send it"))
    max_blob_bytes: int = Field(MAX_BLOB_BYTES, ge=0, description=(
        "the orchestrator's limit on a message's binary frames: the worker fails a block result whose "
        "columns are over it"))


class Assign(_Carrier):
    """Each run carries its (task id, attempt): the worker runs an attempt at most once."""

    type: Literal["assign"] = "assign"
    backend: str
    batch_id: str = Field(description="a label for logs; it can repeat (never used to deduplicate)")
    runs: list[TaskRun]
    reg: str = Field("", description="the registration this assignment was made under")
    seq: int = Field(0, ge=0, description="its number under that registration")


class Abort(_Msg):
    type: Literal["abort"] = "abort"
    backend: str
    task_id: str
    attempt: int = Field(0, ge=0, description="the attempt to stop; 0: whichever runs")


class Pause(_Msg):
    type: Literal["pause"] = "pause"
    req: str
    backend: str
    defer: bool = True  # at the plan's next checkpoint; False: now


class Resume(_Msg):
    type: Literal["resume"] = "resume"
    req: str
    backend: str


class Ack(_Msg):
    """The results of these attempts are durable: the worker may forget them."""

    type: Literal["ack"] = "ack"
    backend: str
    runs: list[RunKey] = Field(min_length=1, max_length=MAX_RUNS_PER_MESSAGE)


# ---- client -> orchestrator -------------------------------------------------------------------


class Submit(_Req, _Carrier):
    """New tasks, accepted all together or not at all; the reply is their ids in order."""

    type: Literal["submit"] = "submit"
    tasks: list[TaskSpec] = Field(min_length=1, max_length=MAX_SUBMIT_TASKS)


class Cancel(_Req):
    """Cancel a task (a client: only a task it submitted)."""

    type: Literal["cancel"] = "cancel"
    task_id: Name
    reason: Text = ""


class Approve(_Req):
    type: Literal["approve"] = "approve"
    task_id: Name
    note: Text = ""


class Reject(_Req):
    type: Literal["reject"] = "reject"
    task_id: Name
    reason: Text = ""


class Review(_Req):
    """A person's decision on a needs_review task: run it again, fail it, or enter its result."""

    type: Literal["review"] = "review"
    task_id: Name
    decision: Literal["retry", "fail", "result"]
    reason: Text = ""
    outputs: JsonDict | None = None


class Hold(_Req):
    """Lab-wide stop (held) or resume; ``backend`` None means every physical backend.

    A stop pauses running plans at their next checkpoint (``now``: at once); the reply maps each
    backend to the state it was left in."""

    type: Literal["hold"] = "hold"
    backend: Name | None = None
    held: bool = True
    now: bool = False


class Approvals(_Paged):
    """Tasks waiting for a person's approval, with the reason and what they would do."""

    type: Literal["approvals"] = "approvals"


class Reviews(_Paged):
    """Interrupted physical tasks (needs_review), with what is known about them."""

    type: Literal["reviews"] = "reviews"


class BusyLog(_Paged):
    """Backends' closed busy intervals ending at or after ``since`` (for Gantt charts)."""

    type: Literal["busy"] = "busy"
    since: float = Field(0.0, description="epoch seconds")


class SampleShow(_Paged):
    type: Literal["sample"] = "sample"
    sample_id: Name


class SetAutonomy(_Req):
    type: Literal["set_autonomy"] = "set_autonomy"
    level: Literal["manual", "supervised", "autonomous"]
    backend: Name | None = Field(None, description="a registered backend")
    capability: Name | None = Field(None, description="a known capability")


class Status(_Req):
    type: Literal["status"] = "status"


class Tasks(_Paged):
    type: Literal["tasks"] = "tasks"
    state: TaskState | None = None
    campaign: Name | None = None
    capability: Name | None = None
    limit: int = Field(MAX_LIST_ROWS, ge=1, le=MAX_LIST_ROWS)
    offset: int = Field(0, ge=0, description="skip this many more (old clients' paging, which repeats and "
                                             "misses tasks while tasks are submitted: page with cursor)")


class GetTask(_Req):
    type: Literal["get_task"] = "get_task"
    task_id: Name


class GetResult(_Req):
    type: Literal["get_result"] = "get_result"
    task_id: Name


class GetArtifact(_Req):
    """The npz file of a block or a block result (its sha256 from the task or the result).

    The reply's data is the :class:`~ppu.models.Artifact`'s sha256 and size; the file comes as one
    uint8 binary frame named ``npz``. Check its sha256 before use."""

    type: Literal["get_artifact"] = "get_artifact"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Wait(_Paged):
    type: Literal["wait"] = "wait"
    task_ids: list[Name] = Field(min_length=1, max_length=MAX_WAIT_IDS)
    timeout: float | None = Field(None, ge=0, description="seconds; None waits until they all end")


class Subscribe(_Req):
    type: Literal["subscribe"] = "subscribe"
    epoch: Name | None = Field(None, description=(
        "the orchestrator run the client's last event came from (its event's epoch); with after, the "
        "subscription goes on from there"))
    after: int | None = Field(None, ge=0, description=(
        "the seq of the last event the client took (of run epoch): the events after it that the orchestrator "
        "still keeps are sent again first; the reply's missed counts those it no longer keeps"))


class Unsubscribe(_Req):
    type: Literal["unsubscribe"] = "unsubscribe"


class Samples(_Paged):
    type: Literal["samples"] = "samples"
    campaign: Name | None = None
    limit: int = Field(MAX_LIST_ROWS, ge=1, le=MAX_LIST_ROWS, description="the newest this many")


class Audit(_Paged):
    type: Literal["audit"] = "audit"
    since: float = Field(0.0, description="epoch seconds")
    limit: int = Field(MAX_LIST_ROWS, ge=1, le=MAX_LIST_ROWS, description="the newest this many")


# ---- orchestrator -> client -------------------------------------------------------------------


class Reply(_Carrier):
    type: Literal["reply"] = "reply"
    req: str = ""
    ok: bool = True
    data: Any = None
    next: str | None = Field(None, max_length=MAX_CURSOR,
                             description="left out when the reply is the whole answer; else data holds whole "
                                         "records of its first part: send the same request again with cursor "
                                         "set to this for the rest")


class Error(_Msg):
    type: Literal["error"] = "error"
    req: str = ""
    code: str
    message: str
    field: str | None = None
    hint: str | None = None
    reason: str | None = Field(None, max_length=MAX_NAME, description=(
        "of a protocol_error: why the door refused the message (oversize, bad_json, ...; docs/protocol.md)"))

    @classmethod
    def of(cls, exc: PPUError, req: str = "") -> Error:
        reason = exc.data.get("reason") if isinstance(exc, ProtocolError) else None
        return cls(req=req, **exc.to_dict(), reason=str(reason) if reason else None)


class Event(_Msg):
    """A pushed change (task transition or progress) for a subscribed client."""

    type: Literal["event"] = "event"
    event: dict[str, Any]
    epoch: Name = Field("", description="the orchestrator run it comes from (a new one each time it starts)")
    seq: int = Field(0, ge=0, description=(
        "its number in its run, one more than the event before: a jump means the subscriber missed events"))


class TransitionEvent(Strict):
    """``Event.event`` when a task changes state (documentation and tests; the orchestrator sends a dict)."""

    type: Literal["transition"] = "transition"
    task_id: str
    src: TaskState | None = Field(description="the state it left; null when it was just submitted")
    dst: TaskState = Field(description="the state it entered")
    at: float = Field(description="epoch seconds, the orchestrator's clock")
    reason: str = Field(description="why, in words (e.g. 'cancelled by alice: ...')")
    backend: str | None = Field(description="the backend it is on or was last on")
    capability: str | None
    campaign: str | None


class GapEvent(Strict):
    """What our clients' ``events`` yield where the stream has a hole (they make it; the orchestrator never
    sends one): read what changed meanwhile with ``status`` / ``tasks``."""

    type: Literal["gap"] = "gap"
    missed: int | None = Field(description="how many events were missed; null when unknown (a restart)")
    reason: str = Field(description="why, in words")


class ProgressEvent(Strict):
    """``Event.event`` when a worker reports progress on a running task."""

    type: Literal["progress"] = "progress"
    task_id: str
    fraction: float = Field(ge=0, le=1)
    message: str


Message = Annotated[
    Register | Heartbeat | Started | Progress | ResultMsg | Results | Done
    | RegisterOk | Assign | Abort | Pause | Resume | Ack
    | Submit | Cancel | Approve | Reject | Review | Hold | Status | Tasks | GetTask | GetResult | GetArtifact | Wait
    | Subscribe | Unsubscribe | Samples | Audit | Approvals | Reviews | SampleShow | SetAutonomy | BusyLog
    | Reply | Error | Event,
    Field(discriminator="type"),
]
ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)
TYPES: frozenset[str] = frozenset(ADAPTER.json_schema()["discriminator"]["mapping"])

WORKER_MESSAGES = (Register, Heartbeat, Started, Progress, ResultMsg, Results, Done)
CLIENT_REQUESTS = (Submit, Cancel, Approve, Reject, Review, Hold, Status, Tasks, GetTask, GetResult, GetArtifact,
                   Wait,
                   Subscribe, Unsubscribe, Samples, Audit, Approvals, Reviews, SampleShow, SetAutonomy,
                   BusyLog)



class RawReply:
    """A :class:`Reply` whose data is a list of values already serialised as JSON (the task records
    the orchestrator keeps serialised for the store): it encodes to the same message as
    ``Reply(req=req, data=[json.loads(i) for i in items], next=next)`` without a model per item.

    ``head`` and ``tail`` wrap the items instead of ``[`` and ``]`` (a list inside an object)."""

    __slots__ = ("head", "items", "next", "req", "tail")

    def __init__(self, req: str, items: list[str], next: str | None = None, head: str = "[", tail: str = "]"):
        self.req = req
        self.items = items
        self.next = next
        self.head = head
        self.tail = tail

    def envelope(self) -> int:
        """Bytes of the body besides the items and the commas between them."""
        return len(self._open()) + len(self._close())

    def _open(self) -> bytes:
        return ('{"blobs":[],"type":"reply","req":' + json.dumps(self.req) + ',"ok":true,"data":'
                + self.head).encode()

    def _close(self) -> bytes:
        return (self.tail + ("" if self.next is None else ',"next":' + json.dumps(self.next)) + "}").encode()

    def body(self) -> bytes:
        return self._open() + ",".join(self.items).encode() + self._close()


_NO_NEXT: set[str] = {"next"}


def encode(msg: _Msg | RawReply) -> list[Any]:
    """Frames of a message: version, json, then one buffer per blob (zero-copy memoryviews).

    A reply that is the whole answer leaves ``next`` out (a client older than it decodes it)."""
    if isinstance(msg, RawReply):
        return [PROTOCOL_VERSION, msg.body()]
    whole = isinstance(msg, Reply) and msg.next is None
    frames: list[Any] = [PROTOCOL_VERSION, msg.model_dump_json(exclude_none=False,
                                                               exclude=_NO_NEXT if whole else None).encode()]
    if isinstance(msg, _Carrier) and msg.blobs:
        frames.extend(memoryview(msg._data[b.name]).cast("B") for b in msg.blobs)  # type: ignore[arg-type]
    return frames


def _bad(reason: str, message: str, field: str | None = None, hint: str | None = None) -> ProtocolError:
    return ProtocolError(message, field=field, hint=hint, reason=reason)


def oversize(size: int, limit: int) -> ProtocolError:
    """A message body over the limit. The door does not parse it, so the hint covers both ways there: the
    Python clients then say which it was (:func:`ppu.transport.ops.submit`)."""
    return _bad(OVERSIZE, f"a message of {size} bytes is above the orchestrator's limit of {limit} bytes "
                "(orchestrator.max_message_bytes)",
                hint="split a submit of several tasks into smaller ones (the Python clients do); a single "
                     "task this large cannot travel: keep its bulk data out of inputs (a columnar block, or "
                     "a file the task names) or raise orchestrator.max_message_bytes in the lab file")


def is_oversize(exc: BaseException) -> bool:
    """Is ``exc`` the door's refusal of a message body over the limit (:func:`oversize`)? Told by the
    error's ``reason``, never by its words."""
    return isinstance(exc, ProtocolError) and exc.data.get("reason") == OVERSIZE


_REQ_AT = re.compile(rb'"req"\s*:\s*"([^"\\]{0,64})"')


def guess_req(body: Any) -> str:
    """The request id of a message that could not be decoded, so that its sender can match the error.

    A body of up to 1 MB is parsed; a larger one (over the limit, say) is searched for ``req`` in its
    first 4 KiB, before any task (where our clients put it), never parsed."""
    try:
        raw = bytes(body[:1_000_000])
        if len(body) < 1_000_000:
            req = json.loads(raw).get("req", "")
            return req if isinstance(req, str) and len(req) <= MAX_REQ else ""
        head = raw[:4096].split(b'"tasks"', 1)[0]
        m = _REQ_AT.search(head)
        return m.group(1).decode() if m else ""
    except Exception:
        return ""


class _NonFinite:
    """Marks a non-finite number where json.loads found it."""

    def __init__(self, token: str):
        self.token = token


def _float_or_mark(text: str) -> float | _NonFinite:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def _non_finite(body: bytes) -> tuple[str, str] | None:
    """(dotted path, token) of the first NaN/Infinity constant or overflowing number in the body, else None.

    JSON has no such numbers; Python's and pydantic's parsers accept them. Called only for a body
    that mentions NaN or Infinity, or that failed a model's finite-number check, so the common case
    pays two substring scans."""
    try:
        obj = json.loads(body, parse_constant=_NonFinite, parse_float=_float_or_mark)
    except (ValueError, RecursionError):
        return None  # not JSON: the model parser says so
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, _NonFinite):
            return path, v.token
        if isinstance(v, dict):
            stack.extend((f"{path}.{k}" if path else str(k), x) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((f"{path}.{i}" if path else str(i), x) for i, x in enumerate(v))
    return None


def _refuse_non_finite(body: bytes) -> None:
    bad = _non_finite(body)
    if bad is not None:
        path, token = bad
        raise _bad(BAD_NUMBER, f"{token[:32]} is not a finite number: JSON numbers must be finite "
                   "(NaN, Infinity and numbers beyond +-1.8e308 are refused)", field=path or None,
                   hint="send a finite number, or null where the field allows it")


def _is_finite_error(e: Any) -> bool:
    return bool(e["type"] == "finite_number" or (e["type"] == "value_error" and "not a finite number" in e["msg"]))


def decode(frames: list[Any], max_bytes: int = MAX_MESSAGE_BYTES, max_blob_bytes: int = MAX_BLOB_BYTES) -> Message:
    """Frames after the identity -> a message; every failure is a ProtocolError naming its reason.

    Frames after the second are binary arrays: at most :data:`MAX_BLOBS` of them and
    ``max_blob_bytes`` together, each matching (dtype, shape) the blob the json declares for it."""
    if len(frames) < 2 or len(frames) > 2 + MAX_BLOBS:
        raise _bad(BAD_FRAMES, f"expected 2 frames [version, json] (and binary frames its blobs declare), "
                   f"got {len(frames)}", hint="send [b'PPU1', json] from a DEALER socket")
    version, body = frames[0], frames[1]
    extra = frames[2:]
    if extra and b'"blobs"' not in bytes(body[:max_bytes + 1]):
        raise _bad(BAD_FRAMES, f"expected 2 frames [version, json], got {len(frames)}: the json declares no "
                   "blobs for the binary frames", hint="send [b'PPU1', json] from a DEALER socket")
    if extra:
        blob_bytes = sum(len(f) for f in extra)
        if blob_bytes > max_blob_bytes:
            raise _bad(OVERSIZE, f"binary frames of {blob_bytes} bytes are above the limit of {max_blob_bytes}",
                       field="blobs", hint="send fewer rows per block or raise orchestrator.max_blob_bytes")
    msg = _decode_json(version, body, max_bytes)
    _attach(msg, extra)
    return msg


def result_over_limit(frames: list[Any], max_bytes: int = MAX_MESSAGE_BYTES) -> ResultMsg | None:
    """The ``result`` whose binary frames :func:`decode` refused as over the limit, read without them; None
    for any other message (or one whose json fails too). Its attempt can then be ended, not re-sent forever:
    the columns would be as large every time."""
    if len(frames) < 3:
        return None
    try:
        msg = _decode_json(frames[0], frames[1], max_bytes)
    except ProtocolError:
        return None
    return msg if isinstance(msg, ResultMsg) and msg.blobs else None


def result_too_large(msg: ResultMsg, size: int, limit: int, columns: bool | None = None) -> ResultMsg:
    """A result over the orchestrator's limits as the failure of its attempt: ``size`` bytes of binary
    frames (a block's output columns) over ``limit`` (max_blob_bytes) when ``columns`` (by default: when
    it carries any), else ``size`` bytes of json over ``limit`` (max_message_bytes). Not retryable:
    another attempt's outputs would be as large. Acked like any result, so the worker stops re-sending it
    and the backend's slot is free."""
    if msg.blobs if columns is None else columns:
        rows = max(b.shape[0] for b in msg.blobs)
        per_row = max(1, sum(b.nbytes for b in msg.blobs) // max(1, rows))
        fit = limit // per_row
        why = (f"the block's output columns ({', '.join(b.name for b in msg.blobs)}: {rows} rows, {size} bytes) "
               f"are above the orchestrator's limit of {limit} bytes (orchestrator.max_blob_bytes) and cannot be "
               "sent back; " + (f"submit blocks of at most {fit} rows (block_rows={fit} in screen / submit_block)"
                                if fit else "submit it row by row")
               + " or raise orchestrator.max_blob_bytes in the lab file")
    else:
        why = (f"its result is {size} bytes of json, above the orchestrator's limit of {limit} bytes "
               "(orchestrator.max_message_bytes), and cannot be sent back; have the backend return bulk data "
               "as a columnar block's output columns or as a file its outputs name, or raise "
               "orchestrator.max_message_bytes in the lab file")
    failed = msg.result.model_copy(update={"status": ResultStatus.failed, "outputs": {}, "error": why,
                                           "retryable": False, "artifact": None})
    return ResultMsg(backend=msg.backend, result=failed)


def _attach(msg: Message, extra: list[Any]) -> None:
    """Check the binary frames against the blobs the json declares and attach them as arrays."""
    specs: list[Blob] = msg.blobs if isinstance(msg, _Carrier) else []
    if len(specs) != len(extra):
        raise _bad(BAD_FRAMES, f"the message declares {len(specs)} blob(s) and carries {len(extra)} binary "
                   "frame(s)", field="blobs", hint="send one binary frame per entry of blobs, in order")
    if not specs:
        return
    assert isinstance(msg, _Carrier)
    data: dict[str, np.ndarray] = {}
    for i, (spec, frame) in enumerate(zip(specs, extra, strict=True)):
        if spec.shape[0] < 0:
            raise _bad(BAD_BLOB, f"blob {spec.name!r} has a negative shape", field=f"blobs.{i}.shape")
        if len(frame) != spec.nbytes:
            raise _bad(BAD_BLOB, f"blob {spec.name!r} declares {spec.shape[0]} x {spec.dtype} "
                       f"({spec.nbytes} bytes) but its frame has {len(frame)} bytes", field=f"blobs.{i}",
                       hint="the frame must hold exactly shape[0] little-endian items of dtype")
        if spec.name in data:
            raise _bad(BAD_BLOB, f"blob name {spec.name!r} is used twice", field=f"blobs.{i}.name")
        data[spec.name] = np.frombuffer(frame, dtype=np.dtype(spec.dtype).newbyteorder("<"))
    msg._data = data


def _decode_json(version: Any, body: Any, max_bytes: int) -> Message:
    body = bytes(body)
    if version != PROTOCOL_VERSION:
        raise _bad(BAD_VERSION, f"unsupported protocol version {bytes(version[:16])!r}",
                   hint=f"this orchestrator speaks {PROTOCOL_VERSION.decode()}")
    if len(body) > max_bytes:
        raise oversize(len(body), max_bytes)
    if b"NaN" in body or b"Infinity" in body:  # not JSON, though Python's parsers take them
        _refuse_non_finite(body)
    try:
        return ADAPTER.validate_json(body)
    except ValidationError as exc:
        errs = exc.errors()
        e = errs[0]
        kind = e["type"]
        if any(_is_finite_error(x) for x in errs):  # an overflowing literal such as 1e400: say where
            _refuse_non_finite(body)
        if kind == "json_invalid":
            raise _bad(BAD_JSON, f"not valid JSON: {e['msg']}") from None
        if kind == "union_tag_not_found":
            raise _bad(UNKNOWN_TYPE, "the message has no 'type'", field="type",
                       hint=f"known types: {', '.join(sorted(TYPES))}") from None
        if kind == "union_tag_invalid":
            tag = (e.get("ctx") or {}).get("tag")
            raise _bad(UNKNOWN_TYPE, f"unknown message type {str(tag)[:64]!r}", field="type",
                       hint=f"known types: {', '.join(sorted(TYPES))}") from None
        if not e["loc"]:
            raise _bad(BAD_PAYLOAD, "a message is a JSON object with a 'type' field") from None
        loc = ".".join(str(x) for x in e["loc"][1:])  # drop the union tag
        raise _bad(BAD_PAYLOAD, e["msg"], field=loc or None) from None
