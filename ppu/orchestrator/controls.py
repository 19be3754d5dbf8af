"""A person's controls over the lab: a lab-wide or one backend's stop and resume, a backend's state,
the autonomy levels. Each change is journaled through the orchestrator and recorded in the audit log;
the stops (holds) and autonomy levels are kept in the store, so they outlive a restart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ppu import capabilities
from ppu.errors import UnknownBackendError
from ppu.events import Hold, SetBackendState
from ppu.models import MAX_NAME, AuditEntry, Autonomy, BackendKind, BackendState

if TYPE_CHECKING:
    from ppu.orchestrator.orchestrator import Orchestrator


class Controls:
    def __init__(self, orch: Orchestrator):
        self._orch = orch
        self.holds: dict[str, bool] = {}  # backends a person stopped (held: they take nothing new)

    def load(self) -> None:
        """Read the holds back from the store (at start)."""
        self.holds.update(self._orch.store.get_meta("holds", {}) or {})

    def hold(self, backend: str | None, held: bool, actor: str = "local") -> list[str]:
        """Lab-wide stop/resume of physical backends (or one backend): they take nothing new."""
        o = self._orch
        names = [backend] if backend else [n for n, s in o.specs.items() if s.kind is BackendKind.physical]
        for n in names:
            if n not in o.specs:
                raise UnknownBackendError(f"unknown backend {n[:MAX_NAME]!r}", field="backend",
                                          hint="ppu status lists the backends")
        if not names:
            return []  # no physical backend: nothing to stop, nothing to record
        self.holds.update({n: held for n in names})
        o.store.set_meta("holds", self.holds)
        o.apply([Hold(n, held, o.clock()) for n in names],
                [AuditEntry(actor=actor, action="stop" if held else "resume", target=backend or "lab",
                            detail={"backends": names})])
        return names

    async def stop(self, backend: str | None = None, actor: str = "local", now: bool = False) -> dict[str, str]:
        """Lab-wide stop: physical backends take nothing new and pause their running plans.

        The pause is deferred to each plan's next checkpoint unless ``now`` (a long step already
        under way finishes first). Returns, per backend, the state it was left in. Digital work goes on.
        """
        o = self._orch
        names = self.hold(backend, True, actor)
        if not names:
            return {}
        states: dict[str, str] = {}
        for name in names:
            link = o.links.get(name)
            if link is None:
                states[name] = "not connected; it will take nothing new when it comes back"
                continue
            try:
                states[name] = await link.pause(name, defer=not now)
            except Exception as exc:
                states[name] = f"could not be reached to pause ({type(exc).__name__}); it takes nothing new"
        o.store.add_audit(AuditEntry(actor=actor, action="paused", target=backend or "lab", detail=states))
        return states

    async def resume(self, backend: str | None = None, actor: str = "local") -> dict[str, str]:
        """Undo a stop: resume paused plans, then let the backends take work again."""
        o = self._orch
        names = [backend] if backend else [n for n, held in self.holds.items() if held]
        states: dict[str, str] = {}
        for name in names:
            link = o.links.get(name)
            try:
                states[name] = await link.resume(name) if link is not None else "not connected"
            except Exception as exc:
                states[name] = f"could not be reached to resume ({type(exc).__name__})"
        if backend:
            self.hold(backend, False, actor)
        else:
            for name in names:
                self.hold(name, False, actor)
        return states

    def set_backend_state(self, backend: str, state: BackendState, actor: str = "local") -> None:
        o = self._orch
        o.apply([SetBackendState(backend, state, o.clock())],
                [AuditEntry(actor=actor, action="backend_state", target=backend, detail={"state": state.value})])

    def set_autonomy(self, level: str, actor: str, backend: str | None = None,
                     capability: str | None = None) -> None:
        """Change an autonomy level at run time (recorded in the audit log)."""
        o = self._orch
        new = Autonomy(level)
        if backend and backend not in o.specs and backend not in o.autonomy.backends:
            raise UnknownBackendError(f"unknown backend {backend[:MAX_NAME]!r}", field="backend",
                                      hint="ppu status lists the backends (a worker must have registered it)")
        if capability and not backend:
            capabilities.get(capability)  # UnknownCapabilityError naming the field
        if backend:
            o.autonomy.backends[backend] = new
        elif capability:
            o.autonomy.capabilities[capability] = new
        else:
            o.autonomy.default = new
        o.store.set_meta("autonomy", o.autonomy.model_dump(mode="json"))
        o.store.add_audit(AuditEntry(actor=actor, action="autonomy", target=backend or capability or "default",
                                     detail={"level": new.value}))
