"""The wire protocol in one small module (STYLE.md §5, after zguide's Majordomo).

Every message is two frames from a DEALER: ``[PROTOCOL_VERSION, json]``; the orchestrator's
ROUTER prepends the peer's identity. The json is one of the pydantic models below, told apart by
its ``type`` field and decoded through the one module-level :data:`ADAPTER`. Requests from clients
(and the register of a worker) carry ``req``, a request id the answer (:class:`Reply` or
:class:`Error`) echoes. :func:`decode` turns every kind of bad input into a
:class:`~ppu.errors.ProtocolError` whose ``data["reason"]`` names the kind, so that a bad frame
becomes a typed error reply, never a crash. See ``docs/protocol.md``.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError

from ppu.backends.base import TaskRun
from ppu.errors import PPUError, ProtocolError
from ppu.models import BackendSpec, Result, Strict, TaskSpec

PROTOCOL_VERSION = b"PPU1"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # default; the lab config's orchestrator.max_message_bytes wins
# What one request may ask, so that no request holds the orchestrator's loop for long (docs/protocol.md
# "Limits"); the clients split larger submissions and waits into requests of this size.
MAX_SUBMIT_TASKS = 1000  # task specs per submit
MAX_WAIT_IDS = 1000  # task ids per wait
MAX_LIST_ROWS = 1000  # rows per tasks / samples / audit reply



class NotRegistered(ProtocolError):
    """A worker message from a peer the orchestrator does not know (restarted, or declared it lost)."""

    code = "not_registered"


class WaitTimeout(PPUError, TimeoutError):
    code = "timeout"


class NotAnswering(PPUError, TimeoutError):
    """Raised client-side: the orchestrator did not answer in time."""

    code = "not_answering"


def new_req() -> str:
    return uuid.uuid4().hex[:16]


# reasons a frame is refused (ProtocolError.data["reason"], and the server's counter names)
BAD_FRAMES = "bad_frame_count"
BAD_VERSION = "bad_version"
OVERSIZE = "oversize"
BAD_JSON = "bad_json"
UNKNOWN_TYPE = "unknown_type"
BAD_PAYLOAD = "bad_payload"
REASONS = (BAD_FRAMES, BAD_VERSION, OVERSIZE, BAD_JSON, UNKNOWN_TYPE, BAD_PAYLOAD)


class _Msg(Strict):
    pass


class _Req(_Msg):
    req: str = Field("", max_length=64, description="request id the answer echoes")
    actor: str | None = Field(None, max_length=128, description="the person acting, for the audit log")


# ---- worker -> orchestrator -------------------------------------------------------------------


class Register(_Req):
    type: Literal["register"] = "register"
    worker: str = Field("worker", max_length=128)
    backends: list[BackendSpec] = Field(min_length=1)
    in_flight: dict[str, list[str]] = Field(default_factory=dict, description="backend -> task ids it holds")
    pending: dict[str, list[Result]] = Field(default_factory=dict, description="backend -> unacked results")


class Heartbeat(_Msg):
    type: Literal["heartbeat"] = "heartbeat"


class Started(_Msg):
    type: Literal["started"] = "started"
    backend: str
    task_id: str
    attempt: int


class Progress(_Msg):
    type: Literal["progress"] = "progress"
    backend: str
    task_id: str
    fraction: float = Field(ge=0, le=1)
    message: str = Field("", max_length=4096)


class ResultMsg(_Msg):
    type: Literal["result"] = "result"
    backend: str
    result: Result


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


class Assign(_Msg):
    type: Literal["assign"] = "assign"
    backend: str
    batch_id: str
    runs: list[TaskRun]


class Abort(_Msg):
    type: Literal["abort"] = "abort"
    backend: str
    task_id: str


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
    type: Literal["ack"] = "ack"
    backend: str
    task_id: str
    attempt: int


# ---- client -> orchestrator -------------------------------------------------------------------


class Submit(_Req):
    type: Literal["submit"] = "submit"
    tasks: list[TaskSpec] = Field(min_length=1, max_length=MAX_SUBMIT_TASKS)


class Cancel(_Req):
    type: Literal["cancel"] = "cancel"
    task_id: str
    reason: str = ""


class Approve(_Req):
    type: Literal["approve"] = "approve"
    task_id: str
    note: str = ""


class Reject(_Req):
    type: Literal["reject"] = "reject"
    task_id: str
    reason: str = ""


class Review(_Req):
    type: Literal["review"] = "review"
    task_id: str
    decision: Literal["retry", "fail", "result"]
    reason: str = ""
    outputs: dict[str, Any] | None = None


class Hold(_Req):
    """Lab-wide stop (held) or resume; ``backend`` None means every physical backend.

    A stop pauses running plans at their next checkpoint (``now``: at once); the reply maps each
    backend to the state it was left in."""

    type: Literal["hold"] = "hold"
    backend: str | None = None
    held: bool = True
    now: bool = False


class Approvals(_Req):
    """Tasks waiting for a person's approval, with the reason and what they would do."""

    type: Literal["approvals"] = "approvals"


class Reviews(_Req):
    """Interrupted physical tasks (needs_review), with what is known about them."""

    type: Literal["reviews"] = "reviews"


class BusyLog(_Req):
    """Backends' closed busy intervals ending at or after ``since`` (for Gantt charts)."""

    type: Literal["busy"] = "busy"
    since: float = 0.0


class SampleShow(_Req):
    type: Literal["sample"] = "sample"
    sample_id: str


class SetAutonomy(_Req):
    type: Literal["set_autonomy"] = "set_autonomy"
    level: Literal["manual", "supervised", "autonomous"]
    backend: str | None = None
    capability: str | None = None


class Status(_Req):
    type: Literal["status"] = "status"


class Tasks(_Req):
    type: Literal["tasks"] = "tasks"
    state: str | None = None
    campaign: str | None = None
    capability: str | None = None
    limit: int = Field(MAX_LIST_ROWS, ge=1, le=MAX_LIST_ROWS)
    offset: int = Field(0, ge=0, description="skip this many of the newest first (paging)")


class GetTask(_Req):
    type: Literal["get_task"] = "get_task"
    task_id: str


class GetResult(_Req):
    type: Literal["get_result"] = "get_result"
    task_id: str


class Wait(_Req):
    type: Literal["wait"] = "wait"
    task_ids: list[str] = Field(min_length=1, max_length=MAX_WAIT_IDS)
    timeout: float | None = Field(None, ge=0)


class Subscribe(_Req):
    type: Literal["subscribe"] = "subscribe"


class Unsubscribe(_Req):
    type: Literal["unsubscribe"] = "unsubscribe"


class Samples(_Req):
    type: Literal["samples"] = "samples"
    campaign: str | None = None
    limit: int = Field(MAX_LIST_ROWS, ge=1, le=MAX_LIST_ROWS, description="the newest this many")


class Audit(_Req):
    type: Literal["audit"] = "audit"
    since: float = 0.0
    limit: int = Field(MAX_LIST_ROWS, ge=1, le=MAX_LIST_ROWS, description="the newest this many")


# ---- orchestrator -> client -------------------------------------------------------------------


class Reply(_Msg):
    type: Literal["reply"] = "reply"
    req: str = ""
    ok: bool = True
    data: Any = None


class Error(_Msg):
    type: Literal["error"] = "error"
    req: str = ""
    code: str
    message: str
    field: str | None = None
    hint: str | None = None

    @classmethod
    def of(cls, exc: PPUError, req: str = "") -> Error:
        return cls(req=req, **exc.to_dict())


class Event(_Msg):
    """A pushed change (task transition or progress) for a subscribed client."""

    type: Literal["event"] = "event"
    event: dict[str, Any]


Message = Annotated[
    Register | Heartbeat | Started | Progress | ResultMsg | Done
    | RegisterOk | Assign | Abort | Pause | Resume | Ack
    | Submit | Cancel | Approve | Reject | Review | Hold | Status | Tasks | GetTask | GetResult | Wait
    | Subscribe | Unsubscribe | Samples | Audit | Approvals | Reviews | SampleShow | SetAutonomy | BusyLog
    | Reply | Error | Event,
    Field(discriminator="type"),
]
ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)
TYPES: frozenset[str] = frozenset(ADAPTER.json_schema()["discriminator"]["mapping"])

WORKER_MESSAGES = (Register, Heartbeat, Started, Progress, ResultMsg, Done)
CLIENT_REQUESTS = (Submit, Cancel, Approve, Reject, Review, Hold, Status, Tasks, GetTask, GetResult, Wait,
                   Subscribe, Unsubscribe, Samples, Audit, Approvals, Reviews, SampleShow, SetAutonomy,
                   BusyLog)
ADMIN_REQUESTS = (Approve, Reject, Review, Hold, SetAutonomy)


def encode(msg: _Msg) -> list[bytes]:
    return [PROTOCOL_VERSION, msg.model_dump_json(exclude_none=False).encode()]


def _bad(reason: str, message: str, field: str | None = None, hint: str | None = None) -> ProtocolError:
    return ProtocolError(message, field=field, hint=hint, reason=reason)


def decode(frames: list[bytes], max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Frames after the identity -> a message; every failure is a ProtocolError naming its reason."""
    if len(frames) != 2:
        raise _bad(BAD_FRAMES, f"expected 2 frames [version, json], got {len(frames)}",
                   hint="send [b'PPU1', json] from a DEALER socket")
    version, body = frames
    if version != PROTOCOL_VERSION:
        raise _bad(BAD_VERSION, f"unsupported protocol version {bytes(version[:16])!r}",
                   hint=f"this orchestrator speaks {PROTOCOL_VERSION.decode()}")
    if len(body) > max_bytes:
        raise _bad(OVERSIZE, f"message of {len(body)} bytes is above the limit of {max_bytes}",
                   hint="submit fewer tasks per message or raise orchestrator.max_message_bytes")
    try:
        return ADAPTER.validate_json(body)
    except ValidationError as exc:
        errs = exc.errors()
        e = errs[0]
        kind = e["type"]
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
