"""The dashboard's doors: actions only from its own page (Origin, exact JSON), and a clean end with a
page still open (issue 13, items 4 and 11). Real lab over loopback, real uvicorn, real HTTP client."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from test_dashboard_api import lab, lab_and_dashboard, synth

from ppu.dashboard.app import Hub, _is_json
from ppu.transport import LabThread

FORGED = [  # (headers besides the token cookie, expected status): each a cross-site browser's try
    ({"Origin": "https://evil.example", "Content-Type": "text/plain; charset=application/json"}, 403),
    ({"Origin": "https://evil.example", "Content-Type": "application/json"}, 403),
    ({"Origin": "null", "Content-Type": "application/json"}, 403),  # a sandboxed frame or a file: page
    ({"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"}, 403),
    ({"Sec-Fetch-Site": "same-site", "Content-Type": "application/json"}, 403),  # another port of this host
    ({"Content-Type": "text/plain; charset=application/json"}, 415),
    ({"Content-Type": "text/plain"}, 415),
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
    ({"Content-Type": "application/json; charset=application/json"}, 415),
]


def test_forged_actions_are_refused_and_the_own_page_may_act(tmp_path: Path):
    with lab_and_dashboard(tmp_path) as (client, dash), httpx.Client(base_url=dash.url) as http:
        [tid] = client.submit(synth())
        assert http.get(f"/?token={dash.token}").status_code == 303  # the cookie; the token leaves the URL
        url = f"/api/tasks/{tid}/approve"
        for headers, status in FORGED:
            r = http.post(url, content=b'{"note": "forged"}', headers=headers)
            assert r.status_code == status, (headers, r.status_code, r.text)
            assert r.json()["message"]
        assert client.task(tid).approval.value == "waiting"  # nothing got through
        own = http.post(url, json={"note": "from the page"},
                        headers={"Origin": dash.url, "Sec-Fetch-Site": "same-origin"})
        assert own.status_code == 200, own.text
        assert client.task(tid).approval.value == "approved"


def test_exactly_json():
    assert _is_json("application/json") and _is_json("Application/JSON; charset=UTF-8")
    for bad in ("", "text/plain; charset=application/json", "application/json-patch+json",
                "application/json; boundary=x", "text/json"):
        assert not _is_json(bad), bad


def test_a_stream_opened_after_the_hub_closed_ends_at_once():
    """A page that reconnects while the server shuts down must not hold the shutdown up."""
    async def main() -> list[str]:
        hub = Hub()
        hub.close()
        return [chunk async for chunk in hub.stream(None)]  # type: ignore[arg-type]
    assert asyncio.run(main()) == ["retry: 2000\n\n"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _hold_stream(url: str, first_state: threading.Event, ended: list[str]) -> None:
    try:
        with httpx.Client(base_url=url, timeout=None) as http, http.stream("GET", "/api/stream") as resp:
            for line in resp.iter_lines():
                if line.startswith("event: state"):
                    first_state.set()
        ended.append("closed by the server")
    except httpx.HTTPError as exc:
        ended.append(repr(exc))


def test_ctrl_c_with_a_page_open_ends_without_a_traceback(tmp_path: Path):
    """``ppu dashboard`` as a real process, a client holding the event stream open, then SIGINT: the
    stream is ended by the server, the process exits 0, and nothing like a traceback is printed
    (it used to print uvicorn's "CancelledError: Task cancelled, timeout graceful shutdown exceeded")."""
    port = _free_port()
    with LabThread(lab(tmp_path)) as lt:
        env = {k: v for k, v in os.environ.items() if k not in ("PPU_CONFIG", "PPU_DASHBOARD_TOKEN")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "ppu.cli", "dashboard", "--connect", lt.address, "--port", str(port),
             "--token", "t0ken-for-tests"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=tmp_path, env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            assert proc.stdout is not None
            assert "PPU dashboard" in proc.stdout.readline()  # printed once the port is bound
            first_state, ended = threading.Event(), []
            holder = threading.Thread(target=_hold_stream, args=(url, first_state, ended), daemon=True)
            holder.start()
            assert first_state.wait(60), "no state event on the stream"
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        holder.join(30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Exception in ASGI" not in err and "CancelledError" not in err, err
    assert "timeout graceful shutdown" not in err, err
    assert ended == ["closed by the server"]  # a whole chunked response, not a cut connection


def test_stopping_the_dashboard_thread_with_a_page_open_is_quiet(tmp_path: Path, capfd: pytest.CaptureFixture[str]):
    """The ``make demo`` path: the campaign's lab ends, then its DashboardThread, with a page open."""
    with lab_and_dashboard(tmp_path) as (_client, dash):
        first_state, ended = threading.Event(), []
        holder = threading.Thread(target=_hold_stream, args=(dash.url, first_state, ended), daemon=True)
        holder.start()
        assert first_state.wait(30)
        dash.stop()
        holder.join(30)
        assert ended == ["closed by the server"]
        with pytest.raises(httpx.ConnectError):  # and the page's reconnection finds the door shut
            httpx.get(f"{dash.url}/api/stream", timeout=5)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception in ASGI" not in err, err
