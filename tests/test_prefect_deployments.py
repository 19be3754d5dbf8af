"""prefect.yaml: a deployment per shipped campaign, each naming the real flow with parameters it takes, pulled
from a repository named on the worker (no path of the deploying machine); and one runs on a Prefect server.

The fast tests check what `prefect deploy` would accept and what a worker would run, with Prefect's own
loaders and validators; the slow one does it for real: a `prefect server` on loopback, `prefect deploy
--all` from a folder that is not the code's, `prefect deployment run`, and a process worker (`--run-once`)
whose pull step clones a git repository of this working tree and runs a campaign file from the clone.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
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
from ppu.campaign.declared_report import runner_for

ROOT = Path(__file__).parent.parent


def _doc() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return doc


def _flow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, entrypoint: str) -> Any:
    """The flow as a worker loads it: Prefect's loader on the entrypoint, from the code's root."""
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.setenv("PPU_RUN_DIR", str(tmp_path))  # where Prefect's home goes if this import is first
    monkeypatch.chdir(ROOT)
    return load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)


def _campaign_name(path: Path) -> str:
    """Parses the file the way the flow will run it; returns the campaign's name."""
    if runner_for(path) is not None:  # a declared lab campaign: its problem, workflow and lab file check out
        from ppu.campaign.declared import lab_path, load_lab_campaign

        lab_cfg = load_lab_campaign(path)
        assert lab_path(lab_cfg, path).is_file(), path
        return lab_cfg.name
    cfg = load_campaign(path)
    if cfg.world.replay is not None:  # the table is there and fits the declared problem
        from ppu.campaign.replay import ReplaySpec, ReplayWorld

        spec = ReplaySpec(**cfg.world.replay.model_dump(), problem=cfg.problem.model_dump(mode="json"))  # type: ignore[union-attr]
        assert ReplayWorld(spec, base=path.parent).rows
    if cfg.lab_config:
        assert (ROOT / cfg.lab_config).is_file() or cfg.lab_config == "labs/my-lab.yaml", cfg.lab_config
    return cfg.name


def test_every_shipped_campaign_has_a_deployment_of_the_flow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate
    from prefect.utilities.templating import find_placeholders

    text = (ROOT / "prefect.yaml").read_text()
    # Prefect's templating knows {{ $ENV }}, {{ step.output }}, {{ prefect.variables.x }}; nothing else
    # (no Jinja filters): a template it cannot parse would reach a worker verbatim.
    written = set(re.findall(r"\{\{.*?\}\}", text))
    assert written and written == {p.full_match for p in find_placeholders(text)}, "a template Prefect cannot resolve"
    deployments = _doc()["deployments"]
    shipped = {f"campaigns/{p.name}" for p in (ROOT / "campaigns").glob("*.yaml")}
    assert sorted(d["parameters"]["config_path"] for d in deployments) == sorted(shipped)
    assert len({d["name"] for d in deployments}) == len(deployments)
    flows: dict[str, Any] = {}
    for dep in deployments:
        if dep["entrypoint"] not in flows:
            flows[dep["entrypoint"]] = _flow(monkeypatch, tmp_path, dep["entrypoint"])
        flow = flows[dep["entrypoint"]]
        assert flow.name == "closed-loop-campaign"
        # what the server checks a run's parameters against, and what the flow itself validates on entry
        schema = parameter_schema(flow).model_dump_for_openapi()
        validate(dep["parameters"], schema, raise_on_error=True)
        flow.validate_parameters(dep["parameters"])
        assert not Path(dep["parameters"]["run_dir"]).is_absolute(), dep["name"]
        name = _campaign_name(ROOT / dep["parameters"]["config_path"])
        assert name == dep["name"], (name, dep["name"])
        assert {"ppu", f"campaign:{name}"} <= set(dep["tags"]), dep["tags"]
        assert len(dep.get("description", "")) > 80, f"{dep['name']}: describe the campaign for whoever runs it"
        assert dep["work_pool"]["name"] == ("ppu-lab" if "real-lab" in dep["tags"] else "ppu-sim")
    # the parameters are the campaign model itself: a typed form whose fields say what they are
    props = parameter_schema(flow).model_dump_for_openapi()
    campaign = props["definitions"]["CampaignConfig"]["properties"]
    assert {"budget", "world", "problem", "workflow"} <= set(campaign)
    assert all(campaign[k].get("description") for k in ("name", "time_scale", "simulated", "workflow"))


def test_a_campaign_given_as_the_typed_parameter_is_validated_by_the_flow(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    from prefect.exceptions import ParameterTypeError

    flow = _flow(monkeypatch, tmp_path, "flows/campaign.py:closed_loop")
    ok = flow.validate_parameters({"campaign": {"name": "typed", "budget": {"max_syntheses": 3}}})
    assert ok["campaign"].budget.max_syntheses == 3
    with pytest.raises(ParameterTypeError, match="max_syntheses"):
        flow.validate_parameters({"campaign": {"name": "typed", "budget": {"max_syntheses": 0}}})


def test_the_pull_step_clones_a_repository_named_on_the_worker_and_pins_no_path() -> None:
    from prefect.utilities.importtools import import_object

    doc = _doc()
    steps = doc["pull"] + [s for d in doc["deployments"] for s in d.get("pull") or []]
    assert steps and all(len(s) == 1 for s in steps)
    kinds = [next(iter(s)) for s in steps]
    assert "prefect.deployments.steps.git_clone" in kinds
    for step in steps:
        [(path, inputs)] = step.items()
        fn = import_object(path)  # a real Prefect step
        inspect.signature(fn).bind(**inputs)  # that takes these inputs
    clone = steps[kinds.index("prefect.deployments.steps.git_clone")]["prefect.deployments.steps.git_clone"]
    assert clone["repository"] == "{{ $PPU_REPO }}"  # resolved on the worker when the run starts

    def strings(x: Any) -> list[str]:
        if isinstance(x, dict):
            return [s for v in x.values() for s in strings(v)]
        if isinstance(x, list):
            return [s for v in x for s in strings(v)]
        return [x] if isinstance(x, str) else []

    for s in strings({k: v for k, v in doc.items() if k != "prefect-version"}):
        assert not s.startswith(("/", "~")) and ":\\" not in s, f"prefect.yaml pins a path: {s!r}"
        assert str(ROOT) not in s and str(Path.home()) not in s, s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _repository_of_this_tree(dest: Path) -> None:
    """A git repository holding what a worker pulls (the flow, the campaign and lab files, the shipped
    tables) as they are in this working tree, committed, so that uncommitted edits are tested too."""
    for part in ("prefect.yaml", "flows", "campaigns", "labs", "simulators/mof/data"):
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / part)
    # a short replay (the shipped one's table and problem; six Sobol experiments instead of twenty BoTorch ones)
    raw = yaml.safe_load((ROOT / "campaigns/replay-demo-table.yaml").read_text())
    raw.update(budget={"max_syntheses": 6}, optimiser={"generator": "sobol", "n_init": 2, "in_flight": 2})
    (dest / "campaigns/ci-replay.yaml").write_text(yaml.safe_dump(raw))
    git = ["git", "-c", "user.name=ppu-test", "-c", "user.email=ppu@test", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "what the worker pulls"]):
        subprocess.run([*git, *args], cwd=dest, check=True, capture_output=True)


@pytest.mark.slow
def test_a_deployment_runs_from_its_pull_step_on_a_prefect_server(tmp_path: Path) -> None:
    repo, deployer, runs = tmp_path / "repo", tmp_path / "deployer", tmp_path / "runs"
    repo.mkdir()
    _repository_of_this_tree(repo)
    deployer.mkdir()
    shutil.copy2(repo / "prefect.yaml", deployer / "prefect.yaml")  # deploy from a folder without the code
    (deployer / "flows").mkdir()
    shutil.copy2(repo / "flows/campaign.py", deployer / "flows/campaign.py")  # prefect deploy reads the flow
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PPU_"))}
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

        def prefect_cli(*args: str, cwd: Path, extra: dict[str, str] | None = None, timeout: float = 120) -> str:
            proc = subprocess.run([*prefect, "--no-prompt", *args], env={**env, **(extra or {})}, cwd=cwd,
                                  capture_output=True, text=True, timeout=timeout)
            assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-2000:])
            return proc.stdout + proc.stderr

        prefect_cli("work-pool", "create", "ppu-sim", "--type", "process", cwd=deployer)
        prefect_cli("work-pool", "create", "ppu-lab", "--type", "process", cwd=deployer)
        prefect_cli("deploy", "--all", cwd=deployer)
        prefect_cli("deployment", "run", "closed-loop-campaign/replay-demo-table",
                    "--param", "config_path=campaigns/ci-replay.yaml", cwd=deployer)
        # the worker runs elsewhere: the code comes from the repository its environment names
        worker_log = prefect_cli("worker", "start", "--pool", "ppu-sim", "--run-once", cwd=tmp_path,
                                 extra={"PPU_REPO": repo.as_uri(), "PPU_BRANCH": "main", "PPU_RUNS": str(runs)},
                                 timeout=400)
        assert "Finished in state Completed()" in worker_log, worker_log[-3000:]
        assert "Traceback" not in worker_log and "CancelledError" not in worker_log, worker_log[-3000:]
        summary = json.loads((runs / "replay-demo-table" / "summary.json").read_text())
        assert summary["experiments"] == 6 and summary["generator"] == "sobol"
        assert (runs / "replay-demo-table" / "pareto.png").is_file()
        seen = _what_the_server_holds(env)
    finally:
        server.terminate()
        server.wait(timeout=30)
    # nothing of the deploying machine's folders reached the server: the pull step still holds its templates
    for dep in seen["deployments"]:
        assert str(tmp_path) not in json.dumps(dep), dep
        assert dep["pull_steps"] == [{"prefect.deployments.steps.git_clone": {
            "repository": "{{ $PPU_REPO }}", "branch": "{{ $PPU_BRANCH }}"}}], dep["pull_steps"]
    # what a user of Prefect looks for: the deployment's tags on the run, the campaign's tag on its task
    # runs, the summary as a markdown artifact with links to the plots, the flow's result persisted
    [run] = seen["flow_runs"]
    assert run["state"] == "COMPLETED" and run["result"] == summary, run
    assert {"ppu", "campaign:replay-demo-table", "replay"} <= set(run["tags"]), run["tags"]
    assert seen["task_tags"] and all("campaign:replay-demo-table" in t for t in seen["task_tags"]), seen["task_tags"]
    [art] = [a for a in seen["artifacts"] if a["key"] == "campaign-replay-demo-table"]
    assert art["type"] == "markdown" and "| experiments | 6 |" in art["data"], art["data"]
    assert f"[pareto.png]({(runs / 'replay-demo-table' / 'pareto.png').as_uri()})" in art["data"], art["data"]


def _what_the_server_holds(env: dict[str, str]) -> dict[str, Any]:
    probe = """
import asyncio, json
from prefect.client.orchestration import get_client

async def main():
    async with get_client() as c:
        deps = await c.read_deployments()
        runs = await c.read_flow_runs()
        tasks = await c.read_task_runs()
        arts = await c.read_artifacts()
        out = {"deployments": [{"name": d.name, "pull_steps": d.pull_steps, "path": d.path,
                                "entrypoint": d.entrypoint, "parameters": d.parameters} for d in deps],
               "flow_runs": [], "task_tags": [r.tags for r in tasks],
               "artifacts": [{"key": a.key, "type": a.type, "data": str(a.data)} for a in arts]}
        for r in runs:
            # read back from the result storage the worker wrote it to (not the run's memory)
            result = await r.state.aresult() if r.state.data is not None else None
            out["flow_runs"].append({"state": r.state.type.value, "tags": r.tags, "result": result})
        print(json.dumps(out, default=str))

asyncio.run(main())
"""
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return seen
