"""How the orchestrator reaches the workers that host backends: the :class:`WorkerLink` every worker
answers to, and :class:`LocalWorker`, the in-process one (tests, CLI one-shots, the demo). The ZMQ
worker's link is the server's (``ppu.transport.server``). Both host backends with the same
:class:`~ppu.host.BackendHost` and call the same methods of the orchestrator.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, Protocol

from ppu.backends.base import Backend, TaskRun
from ppu.errors import NotAllowed
from ppu.host import BackendHost

if TYPE_CHECKING:
    from ppu.orchestrator.orchestrator import Orchestrator


class WorkerLink(Protocol):
    """How the orchestrator reaches the worker that hosts a backend."""

    async def assign(self, backend: str, batch_id: str, runs: list[TaskRun], reg: str = "", seq: int = 0) -> None:
        """Send an assignment; raise PPUError when it provably cannot leave (it is requeued)."""

    async def abort(self, backend: str, task_id: str, attempt: int = 0) -> None: ...

    async def pause(self, backend: str, defer: bool = True) -> str: ...

    async def resume(self, backend: str) -> str: ...


class LocalWorker:
    """An in-process worker: hosts backends on the orchestrator's loop and links them directly."""

    def __init__(self, orch: Orchestrator, backends: list[Backend]):
        self.orch = orch
        self.hosts: dict[str, BackendHost] = {}
        for b in backends:
            self.hosts[b.name] = BackendHost(b, self._reporter(b.name))
        self._hb: asyncio.Task[None] | None = None

    def _reporter(self, name: str) -> Any:
        async def report(kind: str, payload: dict[str, Any]) -> None:
            if kind == "started":
                for task_id, attempt in payload["runs"]:
                    self.orch.started(task_id, attempt, name)
            elif kind == "progress":
                with contextlib.suppress(NotAllowed):  # progress of an attempt no longer expected
                    self.orch.progress(payload["task_id"], payload["fraction"], payload["message"], name)
            elif kind == "results":
                for r in payload["results"]:
                    self.orch.finished(r, name)
                    self.hosts[name].ack(r.task_id, r.attempt)
        return report

    async def start(self) -> None:
        for host in self.hosts.values():
            await host.start()
            self.orch.register(host.backend.spec(), self, host.in_flight())
        self._hb = asyncio.get_running_loop().create_task(self._heartbeat())

    async def _heartbeat(self) -> None:
        while True:
            for name in self.hosts:
                self.orch.heartbeat(name)
            await asyncio.sleep(self.orch.cfg.heartbeat_s)

    async def close(self) -> None:
        if self._hb:
            self._hb.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._hb
        for host in self.hosts.values():
            await host.close()

    async def assign(self, backend: str, batch_id: str, runs: list[TaskRun], reg: str = "", seq: int = 0) -> None:
        self.hosts[backend].assign(batch_id, runs)

    async def abort(self, backend: str, task_id: str, attempt: int = 0) -> None:
        await self.hosts[backend].abort(task_id, attempt)

    def forget(self, backend: str, reason: str) -> None:
        """The scheduler declared the backend lost (a stalled loop): register it again."""
        host = self.hosts.get(backend)
        if host is not None:
            asyncio.get_running_loop().call_soon(
                lambda: self.orch.register(host.backend.spec(), self, host.in_flight()))

    async def pause(self, backend: str, defer: bool = True) -> str:
        return await self.hosts[backend].backend.pause(defer)

    async def resume(self, backend: str) -> str:
        return await self.hosts[backend].backend.resume()
