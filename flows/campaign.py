"""The closed-loop campaign as a Prefect 3 flow: screen -> (propose -> synthesise -> characterise -> learn).

    python -m ppu.flows.campaign campaigns/demo.yaml [--run-dir runs/campaign]

Retries only where work is repeatable: screening, proposing and learning are digital and safe to
run again (retries=2); synthesis and characterisation are ``once`` work (consume material, change
the world) and never retried here (retries=0; the orchestrator sends an interrupted one to review).

The flow talks to the lab only through the PPU client (an EmbeddedLab over loopback ZMQ for the
simulated lab). It runs every kind of campaign file ``ppu campaign run`` runs: a lab campaign (the loop
above, on a world), a replay campaign (``world: {replay: ...}``: a table answers, no lab) and a campaign
that declares its variables and names its lab (``lab:``, :mod:`ppu.campaign.declared`). Each ends with its
summary as the flow's persisted result, in ``summary.json``, and as a markdown artifact
(``campaign-NAME``: the figures and links to the plots); task runs are tagged ``campaign:NAME``.
Deployments (``prefect.yaml``): one per shipped campaign; a relative ``run_dir`` lies under
``$PPU_RUNS`` on the worker when that is set.

Stopping early: the flow's ``on_cancellation`` and ``on_crashed`` hooks wind the campaign down
(:func:`ppu.campaign.handover.wind_down`): every live task of the campaign is cancelled (running
plans are aborted by their workers), tasks waiting for a person are handed over, and
``summary.json`` says what was done and what is left. Prefect calls the hooks itself when a
runner or worker enforces the cancellation (deployments) and when the run crashes (SIGTERM,
Ctrl-C); the hook then reaches the lab's store offline, through the same client. A flow run
started directly (``python -m ppu.flows.campaign``) has no such monitor (Prefect documents that
cancellation needs one), so the flow watches its own state and, when ``prefect flow-run cancel``
moves it to Cancelling, runs the same ``on_cancellation`` hooks while the lab is still up, stops
the loop and ends Cancelled. ``flow_run.json`` in the run folder names the flow run to cancel.

Prefect runs locally in ephemeral mode with ``PREFECT_HOME`` under the run folder, so nothing is
written to ``~/.prefect`` and nothing needs the network; ``main`` sets that up before Prefect is
imported (it re-executes itself once with the environment in place).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _run_dir_arg(argv: list[str]) -> Path:
    for i, a in enumerate(argv):
        if a == "--run-dir" and i + 1 < len(argv):
            return Path(argv[i + 1]).resolve()
        if a.startswith("--run-dir="):
            return Path(a.split("=", 1)[1]).resolve()
    return Path("runs/campaign").resolve()


if __name__ == "__main__" and os.environ.get("PPU_RUN_DIR") != str(_run_dir_arg(sys.argv[1:])):
    # Prefect reads its settings when it is imported: start again with them under the run folder,
    # before anything imports Prefect.
    os.environ["PPU_RUN_DIR"] = str(_run_dir_arg(sys.argv[1:]))
    for _k in ("PREFECT_HOME",):
        os.environ.pop(_k, None)
    os.execv(sys.executable, [sys.executable, "-m", "ppu.flows.campaign", *sys.argv[1:]])

_RUN_DIR = Path(os.environ.get("PPU_RUN_DIR", "runs/campaign"))
_PREFECT_ENV = {
    "PREFECT_HOME": str((_RUN_DIR / "prefect-home").resolve()),
    "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_UI_ENABLED": "false",
    # The ephemeral server is a subprocess; Prefect waits 20 s for it by default, which a loaded machine
    # (CI, a laptop building torch) can miss: `make demo` then failed before the campaign began.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}
if "prefect" not in sys.modules:
    # Only when we are first to load Prefect (the CLI entry, tests): a deployment's worker has
    # configured Prefect already and its settings are left as they are.
    for _k, _v in _PREFECT_ENV.items():
        os.environ.setdefault(_k, _v)
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402
from prefect import flow, tags, task  # noqa: E402
from prefect.artifacts import acreate_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.client.schemas.objects import FlowRun, State  # noqa: E402
from prefect.context import FlowRunContext  # noqa: E402
from prefect.states import Cancelled  # noqa: E402

from ppu.campaign.config import CampaignConfig, load_campaign  # noqa: E402
from ppu.campaign.declared import LabLoop  # noqa: E402
from ppu.campaign.declared_report import run_lab_campaign_report, runner_for  # noqa: E402
from ppu.campaign.handover import wind_down  # noqa: E402
from ppu.campaign.optimizer import Decision  # noqa: E402
from ppu.campaign.report import run_replay_cli, summary_table, write_report  # noqa: E402
from ppu.campaign.runner import CampaignLoop, lab_config, run_campaign  # noqa: E402
from ppu.errors import PPUError  # noqa: E402
from ppu.models import Task  # noqa: E402

log = logging.getLogger(__name__)


@task(name="screen", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
async def screen(loop: CampaignLoop, capability: str) -> tuple[list[float], str]:
    return await loop.screen(capability)


@task(name="propose", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
async def propose(loop: CampaignLoop, pending: list[str]) -> Decision:
    return await CampaignLoop.do_propose(loop, pending)


@task(name="workflow-step", task_run_name="{step}", retries=0, cache_policy=NO_CACHE)
async def workflow_step(loop: CampaignLoop, step: str, capability: str, inputs: dict[str, Any],
                        on_review: Any = None, attempts: int = 1) -> tuple[Task | None, dict[str, Any]]:
    """One declared workflow step (physical ones consume material: never retried by Prefect)."""
    return await CampaignLoop.do_step(loop, step, capability, inputs, on_review, attempts)


@task(name="learn", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
async def learn(loop: CampaignLoop) -> None:
    await loop.learn()


@task(name="replay", retries=0, cache_policy=NO_CACHE)
async def replay(cfg: CampaignConfig, config_path: str | None, out: Path) -> dict[str, Any]:
    """A replay campaign: the generic loop on the table's rows (no lab: the table answers)."""
    # relative table paths are read from the campaign file's folder; a campaign given as a model has no
    # file, so from the working directory (a deployment's pulled code)
    where = Path(config_path) if config_path else Path("campaign.yaml")
    summary: dict[str, Any] = await asyncio.to_thread(run_replay_cli, cfg, where, out, _console())
    return summary


@task(name="screen", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
async def lab_screen(loop: LabLoop) -> None:
    await LabLoop.do_screen(loop)


@task(name="propose", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
async def lab_propose(loop: LabLoop) -> dict[str, Any]:
    return await LabLoop.do_propose(loop)


@task(name="workflow-step", task_run_name="{step}", retries=0, cache_policy=NO_CACHE)
async def lab_step(loop: LabLoop, step: str, capability: str, inputs: dict[str, Any],
                   tasks: list[str]) -> tuple[str, dict[str, Any]]:
    """One step of a declared lab campaign's workflow (physical ones consume material: never retried)."""
    return await LabLoop.do_step(loop, step, capability, inputs, tasks)


class FlowLabLoop(LabLoop):
    """A declared lab campaign's loop with its screen, proposals and workflow steps as Prefect task runs."""

    async def do_screen(self) -> None:
        await lab_screen(self)

    async def do_propose(self) -> dict[str, Any]:
        return await lab_propose(self)

    async def do_step(self, step: str, capability: str, inputs: dict[str, Any],
                      tasks: list[str]) -> tuple[str, dict[str, Any]]:
        return await lab_step(self, step, capability, inputs, tasks)


async def lab_campaign(config_path: str, out: Path) -> dict[str, Any]:
    """A campaign file that declares its variables and names its lab runs its loop
    (:mod:`ppu.campaign.declared`), as ``ppu campaign run`` does, with each step a task run.

    The lab's store and files start empty in a folder of their own (the run folder holds this flow's
    files and, run locally, Prefect's home), whose contents then join the run folder."""
    stage = out / STAGE
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)

    def on_lab(client: Any, loop: LabLoop) -> None:
        _CLIENTS[str(out)] = client
        _LOOPS[str(out)] = loop

    summary = await run_lab_campaign_report(config_path, stage, _console(), loop_class=FlowLabLoop, on_lab=on_lab)
    _CLIENTS.pop(str(out), None)
    for item in stage.iterdir():
        dest = out / item.name
        if dest.is_dir():
            shutil.rmtree(dest)
        elif dest.exists():
            dest.unlink()
        shutil.move(str(item), str(dest))
    stage.rmdir()
    _console().print(f"(moved into the run folder {out})")
    return summary


def _console() -> Any:
    """Where a declared lab campaign or a replay prints: the caller's console (the CLI), else nowhere."""
    from rich.console import Console

    return _HOOKS.get("console") or Console(file=io.StringIO(), width=120)


STAGE = ".lab-run"  # where a declared lab campaign runs before its files join the run folder


def file_campaign_name(config_path: str | Path) -> str:
    """The name of the campaign in a campaign file (its tag), without its loader."""
    raw = yaml.safe_load(Path(config_path).read_text())
    return str(raw.get("name") or Path(config_path).stem)


class FlowLoop(CampaignLoop):
    """The campaign loop with every step run as a Prefect task (same order, same client)."""

    def __init__(self, client: Any, cfg: Any, pool: Any, run_dir: Path, on_progress: Any):
        super().__init__(client, cfg, pool, run_dir, on_progress)
        _LOOPS[str(Path(run_dir).resolve())] = self  # so that a cancellation can stop it

    async def do_screen(self, capability: str) -> tuple[list[float], str]:
        return await screen(self, capability)

    async def do_propose(self, pending: list[str]) -> Decision:
        return await propose(self, pending)

    async def do_step(self, step: str, capability: str, inputs: dict[str, Any], on_review: Any = None,
                      attempts: int = 1) -> tuple[Task | None, dict[str, Any]]:
        return await workflow_step(self, step, capability, inputs, on_review, attempts)

    async def do_learn(self) -> None:
        await learn(self)


# Progress callbacks of whoever runs the flow in this process (the CLI's progress bar). They are
# not flow parameters: Prefect validates and records parameters, and a callback is neither.
_HOOKS: dict[str, Any] = {}
# The address of each campaign lab running in this process, by run folder: the hooks wind a live
# lab down through it; without one they open the lab's store offline.
_LIVE: dict[str, str] = {}
_CLIENTS: dict[str, Any] = {}  # a declared lab campaign's live client, by run folder
_LOOPS: dict[str, CampaignLoop | LabLoop] = {}
CANCEL_POLL_S = 1.0  # how often a directly started flow run looks whether it was cancelled


async def wind_down_hook(flow: Any, flow_run: FlowRun, state: State) -> None:
    """``on_cancellation`` / ``on_crashed``: cancel or hand over the campaign's tasks; write summary.json."""
    params = flow_run.parameters or {}
    out = run_folder(params.get("run_dir", "runs/campaign"))
    reason = f"Prefect flow run {flow_run.name} {(state.name or state.type.value).lower()}"
    config_path = params.get("config_path", "campaigns/demo.yaml")
    if not params.get("campaign") and runner_for(config_path) is not None:
        await _wind_down_declared(Path(config_path), out, flow_run, state, reason)
        return
    cfg = (CampaignConfig.model_validate(params["campaign"]) if params.get("campaign")
           else load_campaign(config_path))
    from ppu.transport.client import AsyncPPUClient

    report: dict[str, Any]
    if cfg.world.replay is not None:  # the table answers: no lab, nothing live to cancel or hand over
        _write_summary(out, {"campaign": cfg.name, "ended": state.name, "flow_run": str(flow_run.id),
                             "reason": reason, "cancelled": [], "handed_over": []})
        return
    try:
        address = _LIVE.get(str(out))
        if address is not None:  # the lab is up in this process: running plans are aborted now
            async with AsyncPPUClient(address, timeout=30) as client:
                report = await wind_down(client, cfg.name, reason)
        else:  # the lab went down with the run: its store, offline, through the same client
            report = await _wind_down_offline(lab_config(cfg, out), cfg.name, reason)
    except PPUError as exc:
        report = {"reason": reason, "error": f"{exc}" + (f" ({exc.hint})" if exc.hint else "")}
    _wound_down(out, cfg.name, flow_run, state, report)


def _wound_down(out: Path, campaign: str, flow_run: FlowRun, state: State, report: dict[str, Any]) -> None:
    """What a wind-down did, in summary.json and the log."""
    _write_summary(out, {"campaign": campaign, "ended": state.name, "flow_run": str(flow_run.id), **report})
    log.warning("campaign %s wound down (%s): %d task(s) cancelled, %d handed over; see %s", campaign,
                report.get("reason"), len(report.get("cancelled", [])), len(report.get("handed_over", [])),
                out / "summary.json")


async def _wind_down_offline(lab: Any, campaign: str, reason: str) -> dict[str, Any]:
    """A lab that went down with the run: its store opened by a private orchestrator, through a client;
    tasks that were running wait out the lab's restart grace before they can be settled."""
    from ppu.transport.client import AsyncPPUClient
    from ppu.transport.serve import private_orchestrator

    grace = lab.orchestrator.restart_grace_s + 2 * lab.orchestrator.heartbeat_s * lab.orchestrator.missed_heartbeats
    with private_orchestrator(lab) as address:
        async with AsyncPPUClient(address, timeout=30) as client:
            return await wind_down(client, campaign, reason, wait_s=grace + 5)


async def _wind_down_declared(config_path: Path, out: Path, flow_run: FlowRun, state: State, reason: str) -> None:
    """The same wind-down for a declared lab campaign: through its live client while the lab is up; else
    its simulated lab's store offline (in the stage folder), or the running lab it drove."""
    from ppu.campaign.declared import lab_client, lab_config, load_lab_campaign

    cfg = load_lab_campaign(config_path)
    report: dict[str, Any]
    try:
        client = _CLIENTS.get(str(out))
        if client is not None:
            report = await wind_down(client, cfg.name, reason)
        elif cfg.simulated:  # its lab went down with the run: the store, offline
            report = await _wind_down_offline(lab_config(cfg, out / STAGE, config_path), cfg.name, reason)
        else:
            async with lab_client(cfg, out / STAGE, config_path) as remote:
                report = await wind_down(remote, cfg.name, reason)
    except PPUError as exc:
        report = {"reason": reason, "error": f"{exc}" + (f" ({exc.hint})" if exc.hint else "")}
    _wound_down(out, cfg.name, flow_run, state, report)


def run_folder(run_dir: str | Path) -> Path:
    """A relative run folder lies under ``$PPU_RUNS`` where that is set (a deployment's worker: its runs
    start in a temporary clone of the code, deleted after the run), else under the working directory."""
    path = Path(run_dir)
    base = os.environ.get("PPU_RUNS")
    return (Path(base) / path if base and not path.is_absolute() else path).resolve()


def _write_summary(out: Path, summary: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


async def _cancel_requested(flow_run_id: Any) -> State:
    """Returns once the flow run is Cancelling (``prefect flow-run cancel``) or Cancelled."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        while True:
            await asyncio.sleep(CANCEL_POLL_S)
            try:
                state = (await client.read_flow_run(flow_run_id)).state
            except Exception:  # the API is busy or restarting: look again
                continue
            if state is not None and (state.is_cancelling() or state.is_cancelled()):
                return state


def artifact_key(name: str) -> str:
    """Prefect's artifact keys take lower-case letters, digits and dashes only."""
    return "campaign-" + "".join(c if c.isalnum() else "-" for c in name.lower())


def summary_markdown(summary: dict[str, Any], run_dir: Path, since: float = 0.0) -> str:
    """The summary as a markdown table, with links to the plots written since ``since`` (a Prefect artifact)."""
    rows = [f"| {k.replace('_', ' ')} | {v:.4g} |" if isinstance(v, float) else f"| {k.replace('_', ' ')} | {v} |"
            for k, v in summary.items() if isinstance(v, int | float | str) and not isinstance(v, bool)]
    plots = [f"[{p.name}]({p.resolve().as_uri()})" for p in sorted(run_dir.glob("*.png")) if p.stat().st_mtime >= since]
    return "\n".join([f"# Campaign {summary.get('campaign')}", "", "| figure | value |", "|---|---|", *rows, "",
                      f"Plots (on the machine that ran it, in {run_dir.resolve()}): " + ", ".join(plots)])


@flow(name="closed-loop-campaign", log_prints=False, persist_result=True, on_cancellation=[wind_down_hook],
      on_crashed=[wind_down_hook])
async def closed_loop(config_path: str = "campaigns/demo.yaml", run_dir: str = "runs/campaign",
                      campaign: CampaignConfig | None = None) -> Any:
    """Run a campaign; returns the summary (also in ``run_dir/summary.json`` and a markdown artifact).

    ``campaign``: the campaign itself (a typed form with every field described); when given, it is
    run instead of the file at ``config_path``. Task runs are tagged ``campaign:NAME``.

    Three kinds of campaign file run here, as ``ppu campaign run`` runs them: a lab campaign (the
    closed loop on a simulated world or a running lab), a declared lab campaign (``lab:``: the
    generic loop on the lab it names), each step of either a task run, and a replay campaign
    (``world: {replay: ...}``: the table answers, no lab). The hooks wind the first two down; a
    replay has no lab to stop.
    """
    runner = runner_for(config_path) if campaign is None else None
    cfg = None if runner is not None else campaign or load_campaign(config_path)
    name = cfg.name if cfg is not None else file_campaign_name(config_path)
    out = run_folder(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = FlowRunContext.get()
    flow_run = ctx.flow_run if ctx is not None else None
    if flow_run is not None:
        (out / "flow_run.json").write_text(json.dumps({"id": str(flow_run.id), "name": flow_run.name}))

    def on_lab(address: str) -> None:
        _LIVE[str(out)] = address
        if _HOOKS.get("lab"):
            _HOOKS["lab"](address)

    async def campaign_run() -> dict[str, Any]:
        summary: dict[str, Any]
        t0 = time.time() - 1.0  # file times are coarse on some filesystems
        with tags("ppu", f"campaign:{name}"):
            if cfg is None:
                summary = await lab_campaign(str(config_path), out)
            elif cfg.world.replay is not None:
                summary = await replay(cfg, None if campaign is not None else str(config_path), out)
            else:
                result = await run_campaign(cfg, out, loop_class=FlowLoop, on_progress=_HOOKS.get("progress"),
                                            on_stage=_HOOKS.get("stage"), on_lab=on_lab)
                summary = write_report(result, out)
        await acreate_markdown_artifact(markdown=summary_markdown({"campaign": name, **summary}, out, t0),
                                        key=artifact_key(name), description=f"campaign {name}")
        return summary

    if cfg is not None and cfg.world.replay is not None:  # the table answers: nothing to stop early, no watch
        return await campaign_run()
    work = asyncio.ensure_future(campaign_run())
    watch = asyncio.ensure_future(_cancel_requested(flow_run.id)) if flow_run is not None else None
    try:
        await asyncio.wait([w for w in (work, watch) if w is not None], return_when=asyncio.FIRST_COMPLETED)
        if work.done() or watch is None:
            return await work
        # Cancelled through the API with no runner to enforce it: do what Prefect does on Cancelling
        # (its on_cancellation hooks) while the lab is still up. The loop starts nothing new; what is
        # in flight ends (its tasks cancelled), and the partial campaign's report joins the summary.
        state = watch.result()
        assert flow_run is not None
        loop = _LOOPS.get(str(out))
        async with loop.lab_in_use if loop is not None else contextlib.nullcontext():  # the lab stays up meanwhile
            if loop is not None:
                loop.stopping = True
            for hook in closed_loop.on_cancellation_hooks:
                result = hook(closed_loop, flow_run, state)
                if asyncio.iscoroutine(result):
                    await result
        # what the hooks wrote, read before the loop's own report (written when it ends) replaces it
        wound = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
        done, _ = await asyncio.wait([work], timeout=120)
        if work in done and work.exception() is None:  # the partial campaign's report, and the wind-down
            (out / "summary.json").write_text(json.dumps({**work.result(), **wound}, indent=2, default=str))
        return Cancelled(message="cancelled through the Prefect API; the campaign was wound down (summary.json)")
    finally:
        for w in (watch, work):
            if w is not None and not w.done():
                w.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await w
        _LIVE.pop(str(out), None)
        _CLIENTS.pop(str(out), None)
        _LOOPS.pop(str(out), None)


def run_with_progress(config_path: str | Path, run_dir: str | Path, console: Any = None,
                      dashboard: bool = False) -> dict[str, Any]:
    """Run the flow here with a progress bar (and the live dashboard); print the summary; return it."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ppu.campaign.report import LiveDashboard

    console = console or Console()
    cfg = None if runner_for(config_path) is not None else load_campaign(config_path)
    if cfg is None or cfg.world.replay is not None:  # a declared lab campaign or a replay: its own progress
        _HOOKS["console"] = console
        try:
            return _ended(asyncio.run(closed_loop(str(config_path), str(run_dir), return_state=True)),  # type: ignore[arg-type]
                          run_dir)
        finally:
            _HOOKS.clear()
    live = LiveDashboard(console, cfg.name) if dashboard else None
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("best {task.fields[best]:.2f}"), TimeElapsedColumn(), console=console) as bar:
        job = bar.add_task("syntheses", total=cfg.budget.max_syntheses, best=0.0)
        _HOOKS["progress"] = lambda n, best: bar.update(job, completed=n, best=best)
        _HOOKS["stage"] = console.log
        if live is not None:
            _HOOKS["lab"] = live
        try:
            state: State = asyncio.run(closed_loop(str(config_path), str(run_dir), return_state=True))  # type: ignore[arg-type]
        finally:
            _HOOKS.clear()
            if live is not None:
                live.stop()
    summary = _ended(state, run_dir)
    console.print(summary_table(summary))
    console.print(f"run folder: {run_dir}  (decisions.jsonl, summary.json, best_vs_experiments.png, gantt.png, "
                  "parity.png)")
    return summary


def _ended(state: State, run_dir: str | Path) -> dict[str, Any]:
    """The summary of a completed flow run; a PPUError saying what was wound down otherwise."""
    if not state.is_completed():
        ended = json.loads((Path(run_dir) / "summary.json").read_text()) if (Path(run_dir) / "summary.json").exists() \
            else {}
        raise PPUError(f"the campaign's flow run ended {state.name}: {len(ended.get('cancelled', []))} task(s) "
                       f"cancelled, {len(ended.get('handed_over', []))} handed over",
                       hint=f"see {Path(run_dir) / 'summary.json'} (ppu review lists what waits for a person)")
    summary: dict[str, Any] = state.result()
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ppu.flows.campaign", description=__doc__.splitlines()[0])
    ap.add_argument("config", help="campaign YAML, e.g. campaigns/demo.yaml")
    ap.add_argument("--run-dir", default="runs/campaign", help="run folder (store, plots, decisions, Prefect home)")
    args = ap.parse_args(argv)
    from prefect.exceptions import TerminationSignal

    try:
        run_with_progress(args.config, Path(args.run_dir).resolve())
    except PPUError as exc:
        print(f"error: {exc}" + (f"\n  hint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return 1
    except TerminationSignal as exc:  # SIGTERM: Prefect ran the on_crashed hook (the wind-down) already
        print(f"error: stopped by signal {exc.signal}; the campaign was wound down "
              f"(see {Path(args.run_dir).resolve() / 'summary.json'})", file=sys.stderr)
        return 128 + int(exc.signal)
    return 0


if __name__ == "__main__":
    sys.exit(main())
