"""Answers in parts (docs/protocol.md "Long answers"): a reply never passes the orchestrator's
``max_message_bytes``; it holds the whole records that fit and a ``next`` cursor, which the client sends
back as ``cursor`` to the same request. The server's half: cutting a reply, and reading cursors back."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pydantic_core import to_json

from ppu import protocol as p
from ppu.errors import ValidationFailed

T = TypeVar("T")

CURSOR_HINT = "pass the next of the previous reply to this same request, unchanged"
_TOO_LARGE_HINT = ("raise orchestrator.max_message_bytes in the lab file; keep bulk data out of task inputs and "
                   "outputs (a columnar block, or a file the task names)")


def too_large(what: str, size: int, limit: int) -> p.ReplyTooLarge:
    return p.ReplyTooLarge(f"{what} is {size} bytes as JSON, more than one reply may hold: the orchestrator's "
                           f"max_message_bytes is {limit}", hint=_TOO_LARGE_HINT)


_ENVELOPE = len(p.RawReply("", [], None, "", "").body())  # a reply's body besides req, head, items and tail


def _nbytes(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode())  # isascii is a flag lookup: no copy for ASCII text


def page(req: str, items: Iterable[str], limit: int, cursor_of: Callable[[int], str], what: Callable[[int], str],
         *, more: bool = False, head: str = "[", tail: str = "]", reverse: bool = False) -> p.RawReply:
    """A reply whose body takes at most ``limit`` bytes: the leading ``items`` (records as JSON) that fit.

    When some are left (or ``more``: records follow the last item) its ``next`` is ``cursor_of(k)``,
    ``k`` the number of items it holds: the client asks again from there. At least one item goes,
    else :class:`~ppu.protocol.ReplyTooLarge` names it (``what(0)``; ``what(-1)``: the reply without
    items, when that alone is too large). ``reverse``: the chosen items in the opposite order (a
    listing whose pages go newest first but read oldest first)."""
    if isinstance(items, list) and not more and (4 * (sum(map(len, items)) + len(head) + len(tail)) + len(items)
                                                 + 6 * len(req) + _ENVELOPE <= limit):
        return p.RawReply(req, items[::-1] if reverse else items, None, head, tail)  # surely fits: nothing measured
    envelope = p.RawReply(req, [], None, head, tail).envelope()
    if envelope > limit:
        raise too_large(what(-1), envelope, limit)
    room = limit - envelope
    taken: list[str] = []
    ends: list[int] = []  # ends[i]: bytes of the first i + 1 items with the commas between them
    used = -1
    left = more
    for item in items:
        used += 1 + _nbytes(item)
        if used > room:
            if not taken:
                raise too_large(what(0), _nbytes(item), limit)
            left = True
            break
        taken.append(item)
        ends.append(used)
    k = len(taken)
    if left:  # the cursor takes room too: give back items until it fits
        while k and ends[k - 1] + len(',"next":') + len(json.dumps(cursor_of(k))) > room:
            k -= 1
        if not k:
            raise too_large(what(0), ends[0], limit)
    chosen = taken[:k]
    return p.RawReply(req, chosen[::-1] if reverse else chosen, cursor_of(k) if left else None, head, tail)


def cursor(msg: Any, parse: Callable[[str], T]) -> T | None:
    """A request's ``cursor`` read back (it is the ``next`` of a reply to the same kind of request)."""
    if msg.cursor is None:
        return None
    try:
        return parse(msg.cursor)
    except (ValueError, TypeError):
        raise ValidationFailed(f"cursor {msg.cursor[:64]!r} is not one a {msg.type} reply gives", field="cursor",
                               hint=CURSOR_HINT) from None


def seq_id(cursor: str) -> tuple[int, str]:
    seq, tid = cursor.split(":", 1)
    return int(seq), tid


def at_id(cursor: str) -> tuple[float, str]:
    at, sid = cursor.split(":", 1)
    if not math.isfinite(float(at)):
        raise ValueError(at)
    return float(at), sid


def as_json(value: Any) -> str:
    """A reply's record as JSON, as the Reply model would write it inside data."""
    return to_json(value).decode()
