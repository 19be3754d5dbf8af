"""A whole lab in one process over loopback ZMQ: the same server, worker and client as a deployment.

``EmbeddedLab`` is what the demo, campaigns and tests use: there is no in-process shortcut, so
what works here works across machines (DESIGN.md "Never two code paths")::

    async with EmbeddedLab(lab) as client:          # client: AsyncPPUClient
        ids = await client.submit([{"capability": "echo", "inputs": {"x": 1}}])
        [task] = await client.wait(ids)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from ppu.backends.base import Backend
from ppu.config import LabConfig
from ppu.orchestrator import Orchestrator
from ppu.store import Store
from ppu.transport.client import AsyncPPUClient, PPUClient
from ppu.transport.security import CurveKeys, peer_keys
from ppu.transport.server import OrchestratorServer
from ppu.transport.worker import Worker


class EmbeddedLab:
    """Store + Orchestrator + OrchestratorServer + one Worker per group of backends, one loop.

    ``bind`` defaults to a free loopback tcp port; ``ipc:///path`` works too. ``backends`` are
    built from the lab config unless given; ``workers`` groups backend names into worker
    processes-in-miniature (default: one worker hosting them all). With ``security.curve`` the
    worker and client use the key pairs named ``worker_key`` and ``client_key``.
    """

    def __init__(self, lab: LabConfig, bind: str = "tcp://127.0.0.1:0", *,
                 backends: list[Backend] | None = None, workers: list[list[str]] | None = None,
                 worker_key: str = "worker", client_key: str = "client", timeout: float = 10.0):
        self.lab = lab
        self.bind = bind
        self._backends = backends
        self._groups = workers
        self.worker_key = worker_key
        self.client_key = client_key
        self.timeout = timeout
        self.store: Store | None = None
        self.orch: Orchestrator | None = None
        self.server: OrchestratorServer | None = None
        self.workers: list[Worker] = []
        self.client: AsyncPPUClient | None = None
        self.address = ""

    def _keys(self, name: str) -> CurveKeys | None:
        return peer_keys(self.lab.security, name) if self.lab.security.curve else None

    async def start(self) -> AsyncPPUClient:
        try:
            return await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> AsyncPPUClient:
        lab = self.lab
        lab.load_packs()
        self.store = Store(lab.store_url(), lab.store_durability(), lab.store_field())
        self.orch = Orchestrator(self.store, lab.orchestrator, lab.autonomy)
        await self.orch.start()
        self.server = OrchestratorServer(self.orch, self.bind, lab.security)
        self.address = await self.server.start()
        backends = self._backends if self._backends is not None else lab.build_backends()
        by_name = {b.name: b for b in backends}
        groups = self._groups or ([list(by_name)] if by_name else [])
        hb = lab.orchestrator
        for i, names in enumerate(groups):
            w = Worker(self.address, [by_name[n] for n in names], name=f"{lab.name}-w{i}",
                       heartbeat_s=hb.heartbeat_s, missed_heartbeats=hb.missed_heartbeats,
                       curve=self._keys(self.worker_key))
            self.workers.append(w)
            await w.start(lab.backend_errors)
        for w in self.workers:
            await w.wait_registered(self.timeout)
        self.client = AsyncPPUClient(self.address, timeout=self.timeout, curve=self._keys(self.client_key),
                                     max_blob_bytes=lab.orchestrator.max_blob_bytes)
        return self.client

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
        for w in self.workers:
            with contextlib.suppress(Exception):
                await w.close()
        self.workers = []
        if self.server is not None:
            await self.server.close()
            self.server = None
        if self.orch is not None:
            await self.orch.close()
            self.orch = None
        if self.store is not None:
            self.store.close()
            self.store = None

    async def __aenter__(self) -> AsyncPPUClient:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


class LabThread:
    """An :class:`EmbeddedLab` on its own loop in a background thread, for blocking code.

    ``with LabThread(lab) as lab_t: client = lab_t.client()`` gives a :class:`PPUClient` (one per
    thread); the orchestrator, server and workers run until the block ends.
    """

    def __init__(self, lab: LabConfig, bind: str = "tcp://127.0.0.1:0", **kw: Any):
        self.embedded = EmbeddedLab(lab, bind, **kw)
        self.address = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> LabThread:
        self._thread = threading.Thread(target=self._main, name="ppu-lab", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        async def body() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                await self.embedded.start()
                self.address = self.embedded.address
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await self.embedded.close()
        asyncio.run(body())

    def client(self, timeout: float = 10.0) -> PPUClient:
        keys = self.embedded._keys(self.embedded.client_key)
        return PPUClient(self.address, timeout=timeout, curve=keys,
                         max_blob_bytes=self.embedded.lab.orchestrator.max_blob_bytes)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)
            self._thread = None

    def __enter__(self) -> LabThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
