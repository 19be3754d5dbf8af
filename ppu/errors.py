"""Every error PPU raises on purpose: what failed, and what to do next (STYLE.md §8).

Errors carry data (``field``, ``hint``) so that the transport can turn them into typed error
replies and the CLI can print them without parsing strings.
"""

from __future__ import annotations

from typing import Any


class PPUError(Exception):
    """Base class. ``code`` is stable and goes on the wire; ``hint`` says what to do next."""

    code = "ppu_error"

    def __init__(self, message: str, *, hint: str | None = None, field: str | None = None, **data: Any):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.field = field
        self.data = data

    def __str__(self) -> str:
        text = self.message
        if self.field:
            text = f"{self.field}: {text}"
        if self.hint:
            text = f"{text} ({self.hint})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "field": self.field, "hint": self.hint}


class ConfigError(PPUError):
    code = "config_error"


class ModelMisfit(ConfigError):
    """A model that does not fit its capability: it takes rows of another width or a batch size fixed when
    it was exported, or returns outputs the decoder cannot read. Every batch fails the same way: at run time
    the attempt fails as not retryable."""


class UnknownCapabilityError(PPUError):
    code = "unknown_capability"


class ValidationFailed(PPUError):
    """A payload failed its capability's input or output model."""

    code = "validation_failed"


class SafeLimitError(PPUError):
    """A setpoint lies outside every eligible backend's safe limits; nothing moved."""

    code = "safe_limit"


class UnknownTaskError(PPUError):
    code = "unknown_task"


class NotFound(PPUError):
    """Something asked for by name or checksum is not there (an artifact)."""

    code = "not_found"


class UnknownBackendError(PPUError):
    code = "unknown_backend"


class IllegalTransition(PPUError):
    """A task was asked to go from one state to another that the transition table forbids."""

    code = "illegal_transition"

    def __init__(self, task_id: str, src: str, dst: str):
        super().__init__(
            f"task {task_id} cannot go from {src!r} to {dst!r}",
            hint="see ppu.scheduler.TRANSITIONS for the allowed moves",
        )
        self.task_id, self.src, self.dst = task_id, src, dst


class DependencyError(PPUError):
    code = "dependency_error"


class NotAllowed(PPUError):
    """The peer is not authorised for this action, or the task is not in a state that allows it."""

    code = "not_allowed"


class BackendError(PPUError):
    """A backend failed to execute a task. ``retryable`` says whether running it again is safe."""

    code = "backend_error"

    def __init__(self, message: str, *, retryable: bool = True, **kw: Any):
        super().__init__(message, **kw)
        self.retryable = retryable


class StoreError(PPUError):
    code = "store_error"


class StoreHeld(StoreError):
    """Another orchestrator holds the store's single-writer lease."""

    code = "store_held"


class JournalFailed(StoreError):
    """A commit to the journal failed: the orchestrator stops (crash-only) and rebuilds on restart."""

    code = "journal_failed"


class ProtocolError(PPUError):
    """A malformed, oversize or unknown message; the peer gets this back as an error reply."""

    code = "protocol_error"
