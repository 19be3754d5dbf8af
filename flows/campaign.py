"""The closed-loop campaign as a Prefect 3 flow: screen -> (propose -> synthesise -> characterise -> learn).

    python -m ppu.flows.campaign campaigns/demo.yaml [--run-dir runs/campaign]

Retries only where work is repeatable: screening, proposing and learning are digital and safe to
run again (retries=2); synthesis and characterisation are ``once`` work (consume material, change
the world) and never retried here (retries=0; the orchestrator sends an interrupted one to review).

The flow talks to the lab only through the PPU client (an EmbeddedLab over loopback ZMQ for the
simulated lab).

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
import json  # noqa: E402
import logging  # noqa: E402
from typing import Any  # noqa: E402

from prefect import flow, tags, task  # noqa: E402
from prefect.artifacts import acreate_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.client.schemas.objects import FlowRun, State  # noqa: E402
from prefect.context import FlowRunContext  # noqa: E402
from prefect.states import Cancelled  # noqa: E402

from ppu.campaign.config import CampaignConfig, load_campaign  # noqa: E402
from ppu.campaign.handover import wind_down  # noqa: E402
from ppu.campaign.optimizer import Decision  # noqa: E402
from ppu.campaign.report import summary_table, write_report  # noqa: E402
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
                        on_review: Any = None, attempts: int = 1) -> tuple[Task, dict[str, Any]]:
    """One declared workflow step (physical ones consume material: never retried by Prefect)."""
    return await CampaignLoop.do_step(loop, step, capability, inputs, on_review, attempts)


@task(name="learn", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
async def learn(loop: CampaignLoop) -> None:
    await loop.learn()


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
                      attempts: int = 1) -> tuple[Task, dict[str, Any]]:
        return await workflow_step(self, step, capability, inputs, on_review, attempts)

    async def do_learn(self) -> None:
        await learn(self)


# Progress callbacks of whoever runs the flow in this process (the CLI's progress bar). They are
# not flow parameters: Prefect validates and records parameters, and a callback is neither.
_HOOKS: dict[str, Any] = {}
# The address of each campaign lab running in this process, by run folder: the hooks wind a live
# lab down through it; without one they open the lab's store offline.
_LIVE: dict[str, str] = {}
_LOOPS: dict[str, CampaignLoop] = {}
CANCEL_POLL_S = 1.0  # how often a directly started flow run looks whether it was cancelled


async def wind_down_hook(flow: Any, flow_run: FlowRun, state: State) -> None:
    """``on_cancellation`` / ``on_crashed``: cancel or hand over the campaign's tasks; write summary.json."""
    params = flow_run.parameters or {}
    cfg = (CampaignConfig.model_validate(params["campaign"]) if params.get("campaign")
           else load_campaign(params.get("config_path", "campaigns/demo.yaml")))
    out = Path(params.get("run_dir", "runs/campaign")).resolve()
    reason = f"Prefect flow run {flow_run.name} {(state.name or state.type.value).lower()}"
    from ppu.transport.client import AsyncPPUClient

    report: dict[str, Any]
    try:
        address = _LIVE.get(str(out))
        if address is not None:  # the lab is up in this process: running plans are aborted now
            async with AsyncPPUClient(address, timeout=30) as client:
                report = await wind_down(client, cfg.name, reason)
        else:  # the lab went down with the run: its store, offline, through the same client
            from ppu.transport.serve import private_orchestrator

            lab = lab_config(cfg, out)
            grace = lab.orchestrator.restart_grace_s + 2 * lab.orchestrator.heartbeat_s * \
                lab.orchestrator.missed_heartbeats
            with private_orchestrator(lab) as address:
                async with AsyncPPUClient(address, timeout=30) as client:
                    report = await wind_down(client, cfg.name, reason, wait_s=grace + 5)
    except PPUError as exc:
        report = {"reason": reason, "error": f"{exc}" + (f" ({exc.hint})" if exc.hint else "")}
    summary = {"campaign": cfg.name, "ended": state.name, "flow_run": str(flow_run.id), **report}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    log.warning("campaign %s wound down (%s): %d task(s) cancelled, %d handed over; see %s", cfg.name,
                reason, len(report.get("cancelled", [])), len(report.get("handed_over", [])), out / "summary.json")


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


def summary_markdown(summary: dict[str, Any], run_dir: Path) -> str:
    """The summary as a markdown table, with the plots' paths (a Prefect artifact)."""
    rows = [f"| {k.replace('_', ' ')} | {v:.4g} |" if isinstance(v, float) else f"| {k.replace('_', ' ')} | {v} |"
            for k, v in summary.items() if isinstance(v, int | float | str) and not isinstance(v, bool)]
    plots = sorted(p.name for p in run_dir.glob("*.png"))
    return "\n".join([f"# Campaign {summary.get('campaign')}", "", "| figure | value |", "|---|---|", *rows, "",
                      "Plots in " + str(run_dir.resolve()) + ": " + ", ".join(plots)])


@flow(name="closed-loop-campaign", log_prints=False, persist_result=True, on_cancellation=[wind_down_hook],
      on_crashed=[wind_down_hook])
async def closed_loop(config_path: str = "campaigns/demo.yaml", run_dir: str = "runs/campaign",
                      campaign: CampaignConfig | None = None) -> Any:
    """Run a campaign; returns the summary (also in ``run_dir/summary.json`` and a markdown artifact).

    ``campaign``: the campaign itself (a typed form with every field described); when given, it is
    run instead of the file at ``config_path``. Task runs are tagged ``campaign:NAME``.
    """
    cfg = campaign or load_campaign(config_path)
    out = Path(run_dir).resolve()
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
        with tags("ppu", f"campaign:{cfg.name}"):
            result = await run_campaign(cfg, out, loop_class=FlowLoop, on_progress=_HOOKS.get("progress"),
                                        on_stage=_HOOKS.get("stage"), on_lab=on_lab)
        summary = write_report(result, out)
        await acreate_markdown_artifact(markdown=summary_markdown(summary, out), key=f"campaign-{cfg.name.lower()}"
                                        .replace("_", "-").replace(".", "-"), description=f"campaign {cfg.name}")
        return summary

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
        _LOOPS.pop(str(out), None)


def run_with_progress(config_path: str | Path, run_dir: str | Path, console: Any = None,
                      dashboard: bool = False) -> dict[str, Any]:
    """Run the flow here with a progress bar (and the live dashboard); print the summary; return it."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ppu.campaign.report import LiveDashboard

    console = console or Console()
    cfg = load_campaign(config_path)
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
    if not state.is_completed():
        ended = json.loads((Path(run_dir) / "summary.json").read_text()) if (Path(run_dir) / "summary.json").exists() \
            else {}
        raise PPUError(f"the campaign's flow run ended {state.name}: {len(ended.get('cancelled', []))} task(s) "
                       f"cancelled, {len(ended.get('handed_over', []))} handed over",
                       hint=f"see {Path(run_dir) / 'summary.json'} (ppu review lists what waits for a person)")
    summary: dict[str, Any] = state.result()
    console.print(summary_table(summary))
    console.print(f"run folder: {run_dir}  (decisions.jsonl, summary.json, best_vs_experiments.png, gantt.png, "
                  "parity.png)")
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
