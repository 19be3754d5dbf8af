"""prefect.yaml: its deployments name the real flow with parameters it takes, and one runs on a Prefect server.

The fast test checks what `prefect deploy` would accept and what a worker would run; the slow one does
it for real: a `prefect server` on loopback, `prefect deploy --all`, `prefect deployment run`, and a
process worker (`--run-once`) that runs the simulated campaign to its summary.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from ppu.campaign.config import load_campaign

ROOT = Path(__file__).parent.parent


def _deployments() -> list[dict[str, Any]]:
    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments: list[dict[str, Any]] = doc["deployments"]
    return deployments


def test_every_deployment_names_the_flow_with_parameters_it_takes(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    from prefect.utilities.templating import find_placeholders

    monkeypatch.setenv("PPU_RUN_DIR", str(tmp_path))  # where Prefect's home goes if this import is first
    text = (ROOT / "prefect.yaml").read_text()
    # Prefect's templating knows {{ $ENV }}, {{ step.output }}, {{ prefect.variables.x }}; nothing else
    # (no Jinja filters): a template it cannot parse would reach a worker verbatim.
    assert text.count("{{") == len(find_placeholders(text)), "prefect.yaml has a template Prefect cannot resolve"
    names = [d["name"] for d in _deployments()]
    assert names == ["simulated-campaign", "mof74-campaign", "real-lab-campaign"]
    for dep in _deployments():
        path, func = dep["entrypoint"].split(":")
        assert (ROOT / path).is_file(), dep["entrypoint"]
        module = importlib.import_module("ppu." + path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, func)
        assert flow.name == "closed-loop-campaign"
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(dep["parameters"]) <= accepted, (dep["name"], set(dep["parameters"]) - accepted)
        cfg = load_campaign(ROOT / dep["parameters"]["config_path"])  # the file exists and validates
        assert cfg.simulated is (dep["name"] != "real-lab-campaign")
        assert dep["work_pool"]["name"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.slow
def test_the_simulated_deployment_runs_on_a_prefect_server(tmp_path: Path) -> None:
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_API_URL=api)
    prefect = [sys.executable, "-m", "prefect"]
    server = subprocess.Popen([*prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2) as r:
                    if json.load(r) is True:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "prefect server did not answer within 120 s"
            time.sleep(0.5)

        def prefect_cli(*args: str, timeout: float = 120) -> str:
            proc = subprocess.run([*prefect, "--no-prompt", *args], env=env, cwd=ROOT, capture_output=True,
                                  text=True, timeout=timeout)
            assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-2000:])
            return proc.stdout + proc.stderr

        prefect_cli("work-pool", "create", "ppu-sim", "--type", "process")
        prefect_cli("work-pool", "create", "ppu-lab", "--type", "process")
        prefect_cli("deploy", "--all")
        small = tmp_path / "small.yaml"
        small.write_text("name: deployed\ntime_scale: 100000\nworld: {pool_size: 60}\nbudget: {max_syntheses: 4}\n"
                         "screening: {top_k: 20, prior_points: 20}\n")
        run_dir = tmp_path / "run"
        prefect_cli("deployment", "run", "closed-loop-campaign/simulated-campaign",
                    "--param", f"config_path={small}", "--param", f"run_dir={run_dir}")
        worker_log = prefect_cli("worker", "start", "--pool", "ppu-sim", "--run-once", timeout=400)
        assert "Finished in state Completed()" in worker_log, worker_log[-3000:]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["physical_experiments"] == 4
    finally:
        server.terminate()
        server.wait(timeout=30)
