"""The closed-loop campaign as a Prefect 3 flow: screen -> (propose -> synthesise -> characterise -> learn).

    python -m ppu.flows.campaign campaigns/demo.yaml [--run-dir runs/campaign]

Retries only where work is repeatable: screening, proposing and learning are digital and safe to
run again (retries=2); synthesis and characterisation are ``once`` work (consume material, change
the world) and never retried here (retries=0; the orchestrator sends an interrupted one to review).

The flow talks to the lab only through the PPU client (an EmbeddedLab over loopback ZMQ for the
simulated lab). Prefect runs locally in ephemeral mode with ``PREFECT_HOME`` under the run folder,
so nothing is written to ``~/.prefect`` and nothing needs the network; ``main`` sets that up before
Prefect is imported (it re-executes itself once with the environment in place).
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
from typing import Any  # noqa: E402

from prefect import flow, tags, task  # noqa: E402
from prefect.artifacts import acreate_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from ppu.campaign.config import CampaignConfig, load_campaign  # noqa: E402
from ppu.campaign.optimizer import Decision  # noqa: E402
from ppu.campaign.report import summary_table, write_report  # noqa: E402
from ppu.campaign.runner import CampaignLoop, run_campaign  # noqa: E402
from ppu.models import Task  # noqa: E402


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


def summary_markdown(summary: dict[str, Any], run_dir: Path) -> str:
    """The summary as a markdown table, with the plots' paths (a Prefect artifact)."""
    rows = [f"| {k.replace('_', ' ')} | {v:.4g} |" if isinstance(v, float) else f"| {k.replace('_', ' ')} | {v} |"
            for k, v in summary.items() if isinstance(v, int | float | str) and not isinstance(v, bool)]
    plots = sorted(p.name for p in run_dir.glob("*.png"))
    return "\n".join([f"# Campaign {summary.get('campaign')}", "", "| figure | value |", "|---|---|", *rows, "",
                      "Plots in " + str(run_dir.resolve()) + ": " + ", ".join(plots)])


@flow(name="closed-loop-campaign", log_prints=False, persist_result=True)
async def closed_loop(config_path: str = "campaigns/demo.yaml", run_dir: str = "runs/campaign",
                      campaign: CampaignConfig | None = None) -> dict[str, Any]:
    """Run a campaign; returns the summary (also in ``run_dir/summary.json`` and a markdown artifact).

    ``campaign``: the campaign itself (a typed form with every field described); when given, it is
    run instead of the file at ``config_path``. Task runs are tagged ``campaign:NAME``.
    """
    cfg = campaign or load_campaign(config_path)
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tags("ppu", f"campaign:{cfg.name}"):
        result = await run_campaign(cfg, out, loop_class=FlowLoop, on_progress=_HOOKS.get("progress"),
                                    on_stage=_HOOKS.get("stage"), on_lab=_HOOKS.get("lab"))
    summary = write_report(result, out)
    await acreate_markdown_artifact(markdown=summary_markdown(summary, out), key=f"campaign-{cfg.name.lower()}"
                                    .replace("_", "-").replace(".", "-"), description=f"campaign {cfg.name}")
    return summary


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
            summary: dict[str, Any] = asyncio.run(closed_loop(str(config_path), str(run_dir)))
        finally:
            _HOOKS.clear()
            if live is not None:
                live.stop()
    console.print(summary_table(summary))
    console.print(f"run folder: {run_dir}  (decisions.jsonl, summary.json, best_vs_experiments.png, gantt.png, "
                  "parity.png)")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ppu.flows.campaign", description=__doc__.splitlines()[0])
    ap.add_argument("config", help="campaign YAML, e.g. campaigns/demo.yaml")
    ap.add_argument("--run-dir", default="runs/campaign", help="run folder (store, plots, decisions, Prefect home)")
    args = ap.parse_args(argv)
    run_with_progress(args.config, Path(args.run_dir).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
