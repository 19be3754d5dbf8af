"""Running the dashboard: :func:`serve` (blocking, for ``ppu dashboard``) and :class:`DashboardThread`.

Thin glue (STYLE.md §6): a uvicorn server on a socket we bind ourselves (so port 0 works and the
real URL is known before the first request) around :func:`~ppu.dashboard.app.create_app`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from typing import Any

import uvicorn
from starlette.applications import Starlette

from ppu.config import LabConfig
from ppu.dashboard.app import Hub, create_app
from ppu.dashboard.settings import DashboardSettings, checked, settings_from
from ppu.errors import ConfigError
from ppu.transport.client import AsyncPPUClient
from ppu.transport.security import CurveKeys, peer_keys

# Longer than the client's timeout (5 s): an action in flight when the server stops still gets its answer.
GRACE_S = 10


class _Server(uvicorn.Server):
    """uvicorn, ending the dashboard's event streams first when it shuts down (Ctrl-C, the end of a
    campaign): an open page would otherwise hold its connection past the graceful timeout, and
    uvicorn would cancel it with a CancelledError traceback."""

    def __init__(self, app: Starlette):
        super().__init__(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=GRACE_S))
        self.hub: Hub = app.state.hub

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.hub.close()
        await super().shutdown(sockets)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog from now on: the URL is printed before uvicorn runs
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class DashboardThread:
    """The dashboard on its own loop in a background thread (tests, notebooks next to a LabThread).

    ``with DashboardThread(address, settings) as d: d.url, d.token``
    """

    def __init__(self, address: str, settings: DashboardSettings | None = None, *, curve: CurveKeys | None = None,
                 lab_name: str = "lab"):
        self.settings, self.generated = checked(settings or DashboardSettings(port=0))
        self.address = address
        self.curve = curve
        self.lab_name = lab_name
        self.url = ""
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._app: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def token(self) -> str:
        assert self.settings.token is not None
        return self.settings.token

    def start(self) -> DashboardThread:
        self._sock = _bind(self.settings.host, self.settings.port)
        self.url = _url(self._sock, self.settings.host)
        self._thread = threading.Thread(target=self._main, name="ppu-dashboard", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            self.stop()
            raise self._error
        return self

    def _main(self) -> None:
        async def body() -> None:
            self._loop = asyncio.get_running_loop()
            client = AsyncPPUClient(self.address, curve=self.curve, timeout=5.0)
            self._app = create_app(client, self.settings, self.lab_name)
            self._server = _Server(self._app)
            serving = asyncio.ensure_future(self._server.serve(sockets=[self._sock]))  # type: ignore[list-item]
            while not self._server.started and not serving.done():
                await asyncio.sleep(0.01)
            self._ready.set()
            await serving
        try:
            asyncio.run(body())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    def stop(self) -> None:
        if self._loop is not None and self._server is not None and self._thread is not None:
            def shut() -> None:
                assert self._server is not None
                self._server.should_exit = True  # its shutdown ends the event streams first
            self._loop.call_soon_threadsafe(shut)
            self._thread.join(30)
        self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> DashboardThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(lab: LabConfig | None = None, *, connect: str | None = None, host: str | None = None,
          port: int | None = None, token: str | None = None, user: str | None = None) -> None:
    """Serve the dashboard until Ctrl-C; prints the URL (with its token) like Jupyter does.

    ``connect`` is the orchestrator's address (default: the lab's ``orchestrator.bind``); with
    ``security.curve`` the dashboard uses the key pair named by ``$PPU_KEY`` (default ``client``),
    which must be one of the lab's admins for actions to pass. Arguments left None come from
    ``PPU_DASHBOARD_*`` settings. Raises :class:`~ppu.errors.ConfigError` for a non-loopback
    ``host`` without a configured token, or a port it cannot listen on.
    """
    lab = lab or LabConfig()
    overrides: dict[str, Any] = {k: v for k, v in {"host": host, "port": port, "token": token, "user": user}.items()
                 if v is not None}
    settings, generated = checked(settings_from(**overrides))
    address = connect or lab.orchestrator.bind
    curve = peer_keys(lab.security, os.environ.get("PPU_KEY", "client")) if lab.security.curve else None
    try:
        sock = _bind(settings.host, settings.port)
    except OSError as exc:
        raise ConfigError(f"cannot serve the dashboard on {settings.host}:{settings.port}: {exc.strerror}",
                          field="port", hint="pick another --port (0: any free one)") from None
    url = _url(sock, settings.host)
    print(f"PPU dashboard for lab {lab.name!r} (orchestrator {address})")
    print(f"    {url}/?token={settings.token}" if generated else f"    {url}/  (token: the configured one)")
    print("  reads are open on loopback; approving needs the token. Ctrl-C stops.", flush=True)

    async def main() -> None:
        client = AsyncPPUClient(address, curve=curve, timeout=5.0)
        await _Server(create_app(client, settings, lab.name)).serve(sockets=[sock])

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
