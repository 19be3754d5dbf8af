"""A client's place in the orchestrator's event feed, so that a stream goes on where it was.

Each event comes numbered (``seq``) within the orchestrator's run (``epoch``). After a drop the
client subscribes again *after* the last event it took: the orchestrator sends again what it still
keeps, and what arrives twice is dropped here. Where the stream has a hole (the orchestrator no
longer kept the missed events, the client fell too far behind, or the orchestrator restarted), the
stream yields one ``gap`` event (:class:`ppu.protocol.GapEvent`) in its place, so that a consumer
knows to read what changed with ``status`` / ``tasks``.
"""

from __future__ import annotations

from typing import Any

from ppu import protocol as p

_RESTARTED = "the orchestrator restarted: the events since the last one taken are lost"


def _gap(missed: int | None, why: str) -> dict[str, Any]:
    return {"type": "gap", "missed": missed, "reason": why}


class FeedPosition:
    def __init__(self) -> None:
        self.epoch: str | None = None  # the run the last event came from
        self.seq = 0  # the last event taken
        self._asked = 0  # the last event taken when the client last subscribed

    def reset(self) -> None:
        """A new stream: it starts from now, not after the last one's events."""
        self.epoch, self.seq = None, 0

    def subscribe(self) -> p.Subscribe:
        """The subscribe request that goes on after the last event taken (or starts from now)."""
        if self.epoch is None:
            return p.Subscribe()
        self._asked = self.seq
        return p.Subscribe(epoch=self.epoch, after=self.seq)

    def subscribed(self, data: Any) -> dict[str, Any] | None:
        """Take the reply to a subscribe; a gap event when it says that events were missed."""
        if not isinstance(data, dict) or not isinstance(data.get("epoch"), str):
            return None  # an orchestrator that numbers no events
        epoch, seq, missed = data["epoch"], int(data.get("seq") or 0), data.get("missed")
        if self.epoch is None:
            self.epoch, self.seq = epoch, seq
            return None
        if epoch != self.epoch:  # its events since the last one taken are not known to the new run
            self.epoch, self.seq = epoch, seq
            return _gap(None, _RESTARTED)
        if missed and self.seq == self._asked:  # else an event past the hole came first, with its gap
            self.seq = self._asked + int(missed)  # the next one sent is right after the hole
            return _gap(int(missed), f"{missed} events were missed: the orchestrator no longer kept them")
        return None

    def take(self, msg: p.Event) -> list[dict[str, Any]]:
        """What to hand on for an event that arrived: nothing for one taken already, a gap event before it
        when events were missed."""
        if not msg.epoch:  # an orchestrator that numbers no events
            return [msg.event]
        if msg.epoch != self.epoch:
            out = [] if self.epoch is None else [_gap(None, _RESTARTED)]
            self.epoch, self.seq = msg.epoch, msg.seq
            return [*out, msg.event]
        if msg.seq <= self.seq:
            return []  # sent again after a drop, and taken before it
        out = [] if msg.seq == self.seq + 1 else [
            _gap(msg.seq - self.seq - 1, f"{msg.seq - self.seq - 1} events were missed: this client fell too "
                 "far behind (or the orchestrator no longer kept them)")]
        self.seq = msg.seq
        return [*out, msg.event]
