"""The ray backend's lab-file mistakes, caught with a clear ConfigError (no Ray is started here: ray.init
is replaced where a test would reach it)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from ppu.backends.base import Backend
from ppu.backends.registry import build_backend
from ppu.errors import ConfigError

ray = pytest.importorskip("ray")

CAP = "predict.co2_uptake"


def entry(**kw: Any) -> dict[str, Any]:
    return {"type": "ray", "name": "cluster", "actors": 1,
            "models": {CAP: {"factory": "ppu.digital.nets:mlp", "kwargs": {"n_features": 4}}}, **kw}


class FakeInit:
    """ray.init as a test wants it: recorded, and raising ``error`` when given."""

    def __init__(self, error: BaseException | None = None):
        self.calls: list[dict[str, Any]] = []
        self.error = error

    def __call__(self, **kw: Any) -> None:
        self.calls.append(kw)
        if self.error is not None:
            raise self.error


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> FakeInit:
    """This process as if no Ray were started in it; ray.init recorded, never run."""
    fake = FakeInit(AssertionError("ray.init reached"))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake)
    return fake


def start(cfg: dict[str, Any] | Backend) -> None:
    """Start the backend (or build it from its lab-file entry first), then close it whatever happened."""
    backend = cfg if isinstance(cfg, Backend) else build_backend(cfg)

    async def go() -> None:
        try:
            await backend.start()
        finally:
            await backend.close()

    asyncio.run(go())


@pytest.mark.parametrize("address", ["ray//head:10001", "ray:/head:10001", "http://localhost:8265", "head:99999",
                                     "head:0", "head:", "nowhere", "ray://head", "head:6379/x", ""])
def test_an_address_that_is_not_a_ray_address_is_refused_naming_the_field(address: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_backend(entry(address=address))
    assert "address" in str(err.value) and "ray://host:port" in str(err.value)


@pytest.mark.parametrize("address", ["auto", "head:6379", "10.0.0.1:6379", "ray://head:10001", "[::1]:6379",
                                     "ray-head.lab.example.org:6379"])
def test_a_ray_address_is_accepted(address: str) -> None:
    assert build_backend(entry(address=address)).cfg.address == address  # type: ignore[attr-defined]


def test_a_model_without_an_encoder_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError) as err:
        build_backend({"type": "ray", "name": "cluster",
                       "models": {"echo": {"factory": "ppu.corepack:slow_doubler"}}})
    assert "echo declares no encoder" in str(err.value) and "models.echo.encoder" in str(err.value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_head_that_does_not_answer_fails_the_start_at_once(no_ray: FakeInit) -> None:
    with pytest.raises(ConfigError) as err:
        start(entry(address=f"127.0.0.1:{_closed_port()}"))
    assert err.value.field == "address" and "no Ray head answers" in str(err.value)
    assert not no_ray.calls  # the timeout ended it, not ray.init


def test_auto_with_a_ray_address_that_does_not_answer_fails_at_once(no_ray: FakeInit,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{_closed_port()}")
    with pytest.raises(ConfigError) as err:
        start(entry(address="auto"))
    assert err.value.field == "address" and "no Ray head answers" in str(err.value) and not no_ray.calls


def test_auto_with_a_stale_address_file_from_an_earlier_ray_start_fails_at_once(
        no_ray: FakeInit, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ray._private import services

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # Ray's temp folder, where `ray start` leaves the file
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{_closed_port()}")  # its head is gone
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: [])  # and no other head runs on this machine
    with pytest.raises(ConfigError) as err:
        start(entry(address="auto"))
    assert err.value.field == "address" and "no Ray head answers" in str(err.value)
    assert "auto found it" in str(err.value) and not no_ray.calls


def test_a_head_that_never_answers_fails_within_the_connect_timeout(no_ray: FakeInit,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from ppu.digital import ray_backend

    monkeypatch.setattr(ray_backend, "CONNECT_TIMEOUT_S", 0.5)
    with socket.socket() as listener:  # accepts nothing: a full backlog leaves the connect hanging
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler = socket.create_connection(("127.0.0.1", port), timeout=0.1)
        try:
            with pytest.raises(ConfigError) as err:
                start(entry(address=f"127.0.0.1:{port}"))
        finally:
            filler.close()
    assert err.value.field == "address" and "timed out" in str(err.value)
    assert not no_ray.calls  # the timeout ended it, not ray.init


def test_a_port_that_accepts_but_never_speaks_fails_the_start_naming_the_field(
        no_ray: FakeInit, monkeypatch: pytest.MonkeyPatch) -> None:
    from ppu.digital import ray_backend

    monkeypatch.setattr(ray_backend, "CONNECT_TIMEOUT_S", 0.5)
    with socket.socket() as listener:  # the kernel completes the connection; nobody ever reads it
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        with pytest.raises(ConfigError) as err:
            start(entry(address=f"127.0.0.1:{listener.getsockname()[1]}"))
    assert err.value.field == "address" and "is not a Ray head: no answer within 0.5 s" in str(err.value)
    assert not no_ray.calls  # ray.init would have waited minutes for it


def test_a_web_server_given_as_the_head_fails_the_start_naming_the_field(no_ray: FakeInit) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    web = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)  # a dashboard in the head's place
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ConfigError) as err:
            start(entry(address=f"127.0.0.1:{web.server_address[1]}"))
    finally:
        web.shutdown()
        web.server_close()
    assert err.value.field == "address" and "is not a Ray head" in str(err.value) and "8265" in (err.value.hint or "")
    assert not no_ray.calls


def test_a_real_ray_head_passes_the_check(ray_local: Any) -> None:
    from ppu.digital.ray_backend import _reachable

    gcs = ray_local.get_runtime_context().gcs_address
    host, port = gcs.rsplit(":", 1)
    asyncio.run(_reachable(host, int(port), gcs))  # its GCS answers gRPC: no error


def test_a_ray_client_address_without_ray_client_names_the_extra(no_ray: FakeInit,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "grpc" else find_spec(name, *a))
    with pytest.raises(ConfigError) as err:
        start(entry(address="ray://127.0.0.1:10001"))
    assert err.value.field == "address" and "ray[client]" in str(err.value) and not no_ray.calls


@pytest.mark.parametrize("error", [ConnectionError("Could not find any running Ray instance. Please specify the "
                                                   "one to connect to by setting `--address` flag."),
                                   ValueError("Invalid address format: x")])
def test_ray_refusing_to_start_is_a_config_error(no_ray: FakeInit, error: Exception) -> None:
    no_ray.error = error
    with pytest.raises(ConfigError) as err:
        start(entry(address="auto"))
    assert err.value.field == "address" and str(error).splitlines()[0] in str(err.value)


def test_an_omitted_address_starts_a_ray_of_its_own_and_shuts_it_down_on_close(
        no_ray: FakeInit, monkeypatch: pytest.MonkeyPatch) -> None:
    no_ray.error = None
    shutdowns: list[None] = []
    monkeypatch.setattr(ray, "shutdown", lambda: shutdowns.append(None))
    backend = build_backend(entry(local_cpus=2))

    async def go() -> None:
        await backend._init_ray(ray)  # type: ignore[attr-defined]
        await backend.close()
        await backend.close()

    asyncio.run(go())
    # "local": a new Ray even where `ray start` runs one (plain None would join it and refuse num_cpus)
    assert no_ray.calls == [{"address": "local", "num_cpus": 2, "include_dashboard": False, "log_to_driver": False}]
    assert len(shutdowns) == 1


def test_a_ray_joined_is_left_running_on_close(no_ray: FakeInit, monkeypatch: pytest.MonkeyPatch) -> None:
    no_ray.error = None
    shutdowns: list[None] = []
    monkeypatch.setattr(ray, "shutdown", lambda: shutdowns.append(None))
    backend = build_backend(entry(address="auto"))

    async def go() -> None:
        await backend._init_ray(ray)  # type: ignore[attr-defined]
        await backend.close()

    asyncio.run(go())
    assert no_ray.calls[0]["address"] == "auto" and not shutdowns


def test_weights_that_are_missing_or_do_not_fit_name_the_field_on_torch_too(tmp_path: Path) -> None:
    import torch

    from ppu.digital.nets import mlp

    misfit = tmp_path / "w.pt"
    torch.save(mlp(4, hidden=8).state_dict(), misfit)
    for weights, why in [(tmp_path / "none.pt", "does not exist"), (misfit, "does not fit")]:
        cfg = {"type": "torch", "name": "t", "warmup": False,
               "models": {CAP: {"factory": "ppu.digital.nets:mlp", "kwargs": {"n_features": 4, "hidden": 16},
                                "weights": str(weights)}}}
        with pytest.raises(ConfigError) as err:
            start(cfg)
        assert err.value.field == f"models.{CAP}.weights" and why in str(err.value)


@pytest.mark.parametrize("kind", ["exported", "torchscript"])
def test_a_damaged_model_file_names_the_field_on_torch_too(tmp_path: Path, kind: str) -> None:
    damaged = tmp_path / "model.pt2"
    damaged.write_bytes(b"not a model")
    cfg = {"type": "torch", "name": "t", "warmup": False,
           "models": {CAP: {kind: str(damaged)}}}
    with pytest.raises(ConfigError) as err:
        start(cfg)
    assert err.value.field == f"models.{CAP}.{kind}" and "torch can load" in str(err.value)


def test_a_ray_started_for_the_backend_serves_and_is_shut_down_on_close(tmp_path: Path) -> None:
    """The real thing, in a fresh process (this session's tests share one Ray): no address, so the
    backend starts a local Ray, serves a batch on it, and stops it when it closes."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import asyncio, json, ray
        from ppu.backends.base import TaskRun
        from ppu.backends.registry import build_backend

        async def main():
            model = {"factory": "ppu.corepack:doubler", "encoder": "ppu.corepack:encode_echo",
                     "decoder": "ppu.corepack:decode_echo", "version": "1"}
            b = build_backend({"type": "ray", "name": "own", "actors": 1, "local_cpus": 1, "models": {"echo": model}})
            await b.start()
            up = ray.is_initialized()
            [r] = await b.run([TaskRun(task_id="t1", attempt=1, capability="echo", inputs={"x": 3.0})],
                              lambda *a: None)
            await b.close()
            print(json.dumps({"up": up, "status": r.status.value, "outputs": r.outputs, "after": ray.is_initialized()}))

        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["up"] and not got["after"] and got["status"] == "succeeded", got


# ---- more actors than the Ray has CPUs (or GPUs): refused at once, or after a bounded wait, never a hang ----


def test_more_actors_than_the_local_ray_has_cpus_fails_ppu_worker_at_once(tmp_path: Path) -> None:
    """It used to print "Started a local Ray instance" and wait forever for the second actor."""
    import os
    import subprocess
    import sys

    import yaml

    lab = {"name": "t", "run_dir": str(tmp_path / "run"), "backends": [entry(local_cpus=1, actors=2)]}
    (tmp_path / "lab.yaml").write_text(yaml.safe_dump(lab))
    env = {k: v for k, v in os.environ.items() if k != "PPU_CONFIG"}
    try:  # the timeout only turns a hang into a failure
        proc = subprocess.run([sys.executable, "-m", "ppu.cli", "worker", "-c", str(tmp_path / "lab.yaml")],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"ppu worker hung with 2 actors on 1 CPU: {exc.stdout!r} {exc.stderr!r}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "field: backends.0.actors" in out and "= 2 CPUs needed, the Ray cluster has 1 CPU" in out, out
    assert "local_cpus: 2" in out and "Traceback" not in out, out


def test_more_actors_than_the_session_ray_has_cpus_is_refused_before_any_actor_starts(ray_local: Any) -> None:
    backend = build_backend(entry(actors=3))  # the session's Ray has 2 CPUs, started in this process

    async def go() -> None:
        try:
            await asyncio.wait_for(backend.start(), 120)  # only turns a hang into a failure
        finally:
            await backend.close()

    with pytest.raises(ConfigError) as err:
        asyncio.run(go())
    assert err.value.field == "actors" and "3 CPUs needed, the Ray cluster has 2 CPUs" in str(err.value)
    assert not backend.actors  # type: ignore[attr-defined]


def test_a_joined_cluster_short_of_cpus_fails_after_the_bounded_wait(ray_local: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster joined at an address may autoscale: the start waits ready_timeout_s, then says what is missing."""
    from ppu.digital import ray_backend

    monkeypatch.setattr(ray_backend, "_head_here", lambda: False)  # as if joined: it might grow
    backend = build_backend(entry(actors=3, ready_timeout_s=2))
    with pytest.raises(ConfigError) as err:
        start(backend)
    assert err.value.field in ("actors", "cpus_per_actor")  # as many as were placed by then
    assert "of 3 actors within 2 s (ready_timeout_s)" in str(err.value) and "free now" in str(err.value)
    assert "ready_timeout_s" in (err.value.hint or "") and not backend.actors  # type: ignore[attr-defined]


@pytest.mark.parametrize(("kw", "nodes", "field", "says"), [
    ({"actors": 2}, [{"CPU": 2.0}], None, ""),
    ({"actors": 2, "cpus_per_actor": 1.5}, [{"CPU": 1.0}, {"CPU": 1.0}], "cpus_per_actor", "3 CPUs needed"),
    ({"actors": 3, "cpus_per_actor": 1.5}, [{"CPU": 2.0}, {"CPU": 2.0}], "actors", "2 of 3 actors fit"),
    ({"actors": 1, "gpus_per_actor": 1}, [{"CPU": 8.0}], "gpus_per_actor", "= 1 GPU needed"),
    ({"actors": 2, "gpus_per_actor": 1}, [{"CPU": 8.0, "GPU": 1.0}], "actors", "has 8 CPUs and 1 GPU"),
])
def test_the_shortfall_names_the_field_to_change(kw: dict[str, Any], nodes: list[dict[str, float]],
                                                field: str | None, says: str) -> None:
    from ppu.digital.ray_backend import RayConfig, _shortfall

    cfg = build_backend(entry(**kw)).cfg  # type: ignore[attr-defined]
    assert isinstance(cfg, RayConfig)
    short = _shortfall(cfg, nodes, own=True)
    assert (short.field if short else None) == field
    assert short is None or says in str(short), str(short)


def test_joining_a_head_that_wants_a_token_says_so(ray_local: Any, tmp_path: Path) -> None:
    """Ray 2.59+ turns token authentication on for the clusters it starts locally (the session's Ray is
    one). A worker without RAY_AUTH_MODE=token could not join it and was told only to fix the address."""
    import os
    import subprocess
    import sys

    import yaml

    if os.environ.get("RAY_AUTH_MODE") == "disabled":
        pytest.skip("token authentication is disabled on this machine (RAY_AUTH_MODE=disabled)")
    gcs = ray_local.get_runtime_context().gcs_address
    lab = {"name": "t", "run_dir": str(tmp_path / "run"), "backends": [entry(address=gcs)]}
    (tmp_path / "lab.yaml").write_text(yaml.safe_dump(lab))
    env = {k: v for k, v in os.environ.items() if k not in ("PPU_CONFIG", "RAY_AUTH_MODE")}
    try:  # the timeout only turns a hang into a failure
        proc = subprocess.run([sys.executable, "-m", "ppu.cli", "worker", "-c", str(tmp_path / "lab.yaml")],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    except subprocess.TimeoutExpired as exc:
        if "hosting" in str(exc.stdout):  # joined, and waits for an orchestrator nobody started
            pytest.skip("this Ray joined without a token: its head does not use token authentication")
        pytest.fail(f"ppu worker hung: {exc.stdout!r} {exc.stderr!r}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "field: backends.0.address" in out and "may require a token" in out, out
    assert "RAY_AUTH_MODE=token" in out and "Traceback" not in out, out
