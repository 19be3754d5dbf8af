"""The dashboard's web app: Starlette routes, a server-sent-event hub, and the loop that feeds it.

It reaches the orchestrator only through :class:`~ppu.transport.client.AsyncPPUClient` (the same
API a flow or the CLI uses). One background task follows the client's event stream; another
gathers a snapshot after every burst of events (and at least every ``refresh_s``) and pushes it to
every open page as an SSE ``state`` message; each orchestrator event also goes out as ``task``.

Reads are open on loopback; acting (approve, reject, review) needs the token, sent as the
``ppu_token`` cookie (set by visiting ``/?token=...``, which redirects to ``/`` so the token leaves
the address bar) or an ``Authorization: Bearer`` header, a body of exactly ``Content-Type:
application/json``, and, from a browser, an ``Origin`` that is the dashboard's own address (a
cross-site page can forge neither). The audit log records ``dashboard:<user>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from ppu import errors
from ppu import protocol as p
from ppu.dashboard.settings import DashboardSettings, is_loopback
from ppu.dashboard.view import LIVE, LabView, Raw
from ppu.models import Result, Task
from ppu.transport.client import AsyncPPUClient

log = logging.getLogger(__name__)
COOKIE = "ppu_token"
ACTIONS = ("approve", "reject", "retry", "fail", "result")
_STATUS = {"unknown_task": 404, "validation_failed": 422, "not_allowed": 409, "not_answering": 503}


def _static(name: str) -> str:
    return resources.files("ppu.dashboard").joinpath("static", name).read_text(encoding="utf-8")


class Hub:
    """Fan-out of SSE messages to every open page; a slow page only ever misses old snapshots."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[tuple[str, Any] | None]] = set()
        self.latest: dict[str, Any] | None = None
        self.closed = False

    def publish(self, kind: str, data: Any) -> None:
        if kind == "state":
            self.latest = data
        for q in self.queues:
            if q.qsize() > 200:  # a stalled page: drop its backlog, the next snapshot is whole
                while not q.empty():
                    q.get_nowait()
            q.put_nowait((kind, data))

    def close(self) -> None:
        """End every open stream, and every one opened from now on (the server is shutting down)."""
        self.closed = True
        for q in self.queues:
            q.put_nowait(None)

    async def stream(self, request: Request) -> AsyncIterator[str]:
        q: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue()
        if self.closed:  # a page reconnecting while the server shuts down: end at once
            q.put_nowait(None)
        self.queues.add(q)
        try:
            yield "retry: 2000\n\n"
            if self.latest is not None:
                yield _sse("state", self.latest)
            while True:
                try:
                    item = await asyncio.wait_for(q.get(), 15.0)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if item is None:
                    return
                yield _sse(*item)
        finally:
            self.queues.discard(q)


def _sse(kind: str, data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n"


class Feed:
    """Follows the orchestrator through the client and keeps the hub's snapshot fresh."""

    def __init__(self, client: AsyncPPUClient, settings: DashboardSettings, hub: Hub):
        self.client = client
        self.settings = settings
        self.hub = hub
        self.view = LabView(settings.objectives, settings.maximize, settings.gantt_window_s)
        self.dirty = asyncio.Event()
        self.connected = False
        self.error: str | None = None
        self._results: dict[str, Result] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._events: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._refresh_loop()))

    async def close(self) -> None:
        for t in [*self._tasks, *([self._events] if self._events else [])]:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    async def _follow(self) -> None:
        try:
            async for ev in self.client.events():
                self.view.apply_event(ev)
                self.hub.publish("task", ev)
                self.dirty.set()
        except errors.PPUError as exc:  # the next refresh subscribes again
            log.info("event stream ended: %s", exc)

    async def _refresh_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.dirty.wait(), self.settings.refresh_s)
            self.dirty.clear()
            await self.refresh()
            await asyncio.sleep(0.1)  # at most ~10 snapshots a second, however busy the lab

    async def refresh(self) -> dict[str, Any]:
        try:
            if self._events is None or self._events.done():  # (re)subscribe after a lost orchestrator
                self._events = asyncio.get_running_loop().create_task(self._follow())
            raw = await self.gather()
            snap = self.view.snapshot(raw)
            self.connected, self.error = True, None
        except errors.PPUError as exc:
            if self._events is not None:
                self._events.cancel()
                self._events = None
            self.connected, self.error = False, exc.message
            snap = dict(self.hub.latest or {})
        except Exception as exc:  # keep serving the last picture; say what went wrong
            log.exception("dashboard refresh failed")
            self.connected, self.error = False, f"{type(exc).__name__}: {exc}"
            snap = dict(self.hub.latest or {})
        snap.update(connected=self.connected, error=self.error, address=self.client.address)
        self.hub.publish("state", snap)
        return snap

    async def gather(self) -> Raw:
        c = self.client
        now = time.time()
        status = await c.status()
        live: list[Task] = []
        for state in LIVE:
            live += await c.tasks(state=state, limit=5000)
        approvals = await c.approvals()
        reviews = await c.reviews()
        busy = await c.busy(now - self.settings.gantt_window_s)
        samples = await c.samples()
        measured: list[tuple[Task, Result]] = []
        for cap in self.settings.objectives:
            for t in await c.tasks(state="succeeded", capability=cap, limit=5000):
                if not t.campaign:
                    continue
                r = self._results.get(t.id)
                if r is None:
                    r = await c.result(t.id)
                    if r is None:
                        continue
                    self._results[t.id] = r  # a succeeded result never changes: fetch it once
                measured.append((t, r))
        return Raw(now=now, status=status, live=live, approvals=approvals, reviews=reviews, busy=busy,
                   samples=samples, measured=measured)


# ---- auth ------------------------------------------------------------------------------------


def _tokens(settings: DashboardSettings) -> dict[str, str]:
    out = {tok: user for user, tok in settings.users.items()}
    if settings.token:
        out[settings.token] = settings.user
    return out


def _user(request: Request) -> str | None:
    """The person behind the request's token, or None."""
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip() \
        or request.headers.get("x-ppu-token", "") or request.cookies.get(COOKIE, "")
    if not given:
        return None
    for tok, user in _tokens(request.app.state.settings).items():
        if secrets.compare_digest(given.encode(), tok.encode()):
            return user
    return ""


def _reads_open(request: Request) -> bool:
    return is_loopback(request.app.state.settings.host) or bool(_user(request))


def _refuse(who: str | None) -> JSONResponse:
    if who is None:
        return JSONResponse({"code": "not_authenticated", "message": "acting needs the dashboard token",
                             "hint": "open the URL printed by `ppu dashboard` (it carries ?token=...)"}, 401)
    return JSONResponse({"code": "forbidden", "message": "that token is not valid for this dashboard"}, 403)


def _is_json(content_type: str) -> bool:
    """Exactly ``application/json`` (``; charset=utf-8`` allowed): a cross-site form can send neither,
    and ``text/plain; charset=application/json`` is not JSON."""
    media, *params = [x.strip().lower() for x in content_type.split(";")]
    return media == "application/json" and all(x in ("", "charset=utf-8") for x in params)


def _cross_site(request: Request) -> str | None:
    """Why an action comes from another site, or None. A browser sends ``Origin`` with every POST;
    it must be the address this page was served from (the ``Host`` the request came to, which on
    loopback TrustedHostMiddleware already limits to loopback names). A client without a browser
    sends no Origin and is judged by its token alone."""
    origin = request.headers.get("origin")
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {request.headers['sec-fetch-site']})"
    if origin is None:
        return None
    served = f"{request.url.scheme}://{request.headers.get('host', '')}".lower()
    if origin.lower() != served:
        return f"request from {origin} refused: this dashboard is served at {served}"
    return None


# ---- routes ----------------------------------------------------------------------------------


async def index(request: Request) -> Response:
    settings: DashboardSettings = request.app.state.settings
    token = request.query_params.get("token")
    if token is not None:
        if not any(secrets.compare_digest(token.encode(), t.encode()) for t in _tokens(settings)):
            return HTMLResponse("<h1>403</h1><p>that token is not valid for this dashboard</p>", 403)
        resp: Response = RedirectResponse("/", 303)  # drop the token from the address bar
        resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", max_age=30 * 86400)
        return resp
    if not _reads_open(request):
        return HTMLResponse("<h1>401</h1><p>open the URL printed by <code>ppu dashboard</code></p>", 401)
    who = _user(request)
    snap = request.app.state.hub.latest or {}
    boot = {"user": who or None, "lab": request.app.state.lab_name, "state": snap}
    page = _static("index.html").replace("{{CSS}}", _static("dashboard.css")) \
        .replace("{{JS}}", _static("dashboard.js")) \
        .replace("{{BOOT}}", json.dumps(boot, default=str).replace("</", "<\\/")) \
        .replace("{{LAB}}", html.escape(request.app.state.lab_name))
    return HTMLResponse(page, headers={"Cache-Control": "no-store"})


async def state(request: Request) -> Response:
    if not _reads_open(request):
        return _refuse(_user(request))
    snap = request.app.state.hub.latest
    if snap is None or request.query_params.get("fresh"):
        snap = await request.app.state.feed.refresh()
    return JSONResponse(json.loads(json.dumps(snap, default=str)))


async def stream(request: Request) -> Response:
    if not _reads_open(request):
        return _refuse(_user(request))
    return StreamingResponse(request.app.state.hub.stream(request), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def whoami(request: Request) -> Response:
    who = _user(request)
    return JSONResponse({"user": who or None, "can_act": bool(who)})


async def act(request: Request) -> Response:
    who = _user(request)
    if not who:
        return _refuse(who)
    refused = _cross_site(request)
    if refused is not None:
        return JSONResponse({"code": "forbidden", "message": refused,
                             "hint": "act from the dashboard's own page, or without an Origin header"}, 403)
    if not _is_json(request.headers.get("content-type", "")):
        return JSONResponse({"code": "bad_request", "message": "send a JSON body with Content-Type: application/json",
                             "field": "content-type"}, 415)
    action, task_id = request.path_params["action"], request.path_params["task_id"]
    if action not in ACTIONS:
        return JSONResponse({"code": "bad_request", "message": f"unknown action {action!r}",
                             "hint": f"one of {', '.join(ACTIONS)}"}, 404)
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return JSONResponse({"code": "bad_request", "message": "the body is a JSON object"}, 400)
    actor = f"dashboard:{who}"
    text = str(body.get("reason") or body.get("note") or "")[:2000]
    msg: Any
    if action == "approve":
        msg = p.Approve(task_id=task_id, note=text, actor=actor)
    elif action == "reject":
        msg = p.Reject(task_id=task_id, reason=text, actor=actor)
    elif action == "result":
        outputs = body.get("outputs")
        if not isinstance(outputs, dict):
            return JSONResponse({"code": "validation_failed", "field": "outputs",
                                 "message": "a manual result needs outputs: a JSON object"}, 422)
        msg = p.Review(task_id=task_id, decision="result", reason=text, outputs=outputs, actor=actor)
    else:
        msg = p.Review(task_id=task_id, decision=action, reason=text, actor=actor)
    feed: Feed = request.app.state.feed
    try:
        await feed.client.request(msg)
    except errors.PPUError as exc:
        return JSONResponse(exc.to_dict(), _STATUS.get(exc.code, 400))
    feed.dirty.set()
    return JSONResponse({"ok": True, "task_id": task_id, "action": action, "actor": actor})


def create_app(client: AsyncPPUClient, settings: DashboardSettings, lab_name: str = "lab") -> Starlette:
    """The dashboard as an ASGI app around a client (which it closes on shutdown)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.feed.start()
        try:
            yield
        finally:
            app.state.hub.close()
            await app.state.feed.close()
            await client.close()

    # On loopback, refuse other Host names: a web page cannot read the lab through DNS rebinding.
    hosts = ["127.0.0.1", "localhost", "::1", "[::1]"] if is_loopback(settings.host) else ["*"]
    app = Starlette(middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)], routes=[
        Route("/", index),
        Route("/api/state", state),
        Route("/api/stream", stream),
        Route("/api/whoami", whoami),
        Route("/api/tasks/{task_id}/{action}", act, methods=["POST"]),
    ], lifespan=lifespan)
    hub = Hub()
    app.state.settings = settings
    app.state.hub = hub
    app.state.feed = Feed(client, settings, hub)
    app.state.lab_name = lab_name
    return app
