"""A small closed-loop campaign end to end through the PPU client (EmbeddedLab over loopback ZMQ)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from ppu.campaign.config import CampaignConfig, load_campaign
from ppu.campaign.report import run_campaign_cli
from ppu.errors import ConfigError

# purity_min 0.85: the demo's 0.9 sits at the edge of what the world can make (max true purity
# ~0.91), so a 6-sample test would pass or fail on sample scatter; the loop is the same.
SMALL = {"name": "t", "time_scale": 100_000, "world": {"pool_size": 60}, "objective": {"purity_min": 0.85},
         "budget": {"max_syntheses": 6}, "screening": {"top_k": 20, "prior_points": 20}}


def test_shipped_configs_load_and_unknown_keys_are_refused(tmp_path: Path) -> None:
    cfg = load_campaign(Path(__file__).parent.parent / "campaigns" / "demo.yaml")
    assert cfg.objective.purity_min == 0.9 and cfg.objective.maximise == "co2_uptake"
    bad = tmp_path / "bad.yaml"
    bad.write_text("budget: {max_synthesis: 3}\n")
    with pytest.raises(ConfigError, match="max_synthesis"):
        load_campaign(bad)


def test_small_campaign_end_to_end(tmp_path: Path) -> None:
    from rich.console import Console

    cfg = CampaignConfig.model_validate(SMALL)
    run_dir = tmp_path / "run"
    with (tmp_path / "out.txt").open("w") as fh:
        summary = run_campaign_cli("unused.yaml", run_dir, Console(file=fh), config=cfg)
    assert summary["physical_experiments"] == 6
    assert summary["best_found"] > summary["pool_median"]
    assert summary["best_found"] <= summary["true_optimum"]  # scored on the same truth as the bar
    decisions = [json.loads(line) for line in (run_dir / "decisions.jsonl").read_text().splitlines()]
    assert len(decisions) == 6
    assert len({d["candidate_id"] for d in decisions}) == 6
    for d in decisions:
        assert {"candidate_id", "acquisition", "mean", "std", "model_version", "why", "pending"} <= set(d)
    assert any(d["pending"] for d in decisions)  # proposals were made while others were in flight
    for png in ("best_vs_experiments.png", "gantt.png", "parity.png"):
        assert (run_dir / png).stat().st_size > 5_000
    assert 0 < summary["robot_utilisation"] <= 1
    saved = json.loads((run_dir / "summary.json").read_text())
    assert np.isclose(saved["true_optimum"], summary["true_optimum"])


def test_interrupted_synthesis_frees_the_robot_and_waits_for_a_person(tmp_path: Path) -> None:
    import asyncio

    from ppu.campaign.runner import CampaignLoop, lab_config
    from ppu.models import TaskState
    from ppu.simulators.mof.world import candidate_pool
    from ppu.transport.lab import EmbeddedLab

    cfg = CampaignConfig.model_validate(SMALL)
    lab = lab_config(cfg, tmp_path)
    for b in lab.backends:
        if b["type"] == "synthesis_robot":
            b["faults"] = {"fail_on": [1], "message": "furnace thermocouple open"}
    pool = candidate_pool(10, seed=0)

    async def body() -> None:
        async with EmbeddedLab(lab) as client:
            loop = CampaignLoop(client, cfg, pool, tmp_path, None)
            loop.review_poll_s = 0.2
            freed = asyncio.Event()
            first = cfg.workflow.steps[0]  # type: ignore[union-attr]
            job = asyncio.create_task(loop.do_step(first.name, first.capability,
                                                   {"recipe": pool[0].model_dump(mode="json")}, freed.set))
            await asyncio.wait_for(freed.wait(), 20)  # the robot slot is handed back while a person decides
            assert not job.done()
            (waiting,) = await client.reviews()
            assert "furnace thermocouple open" in waiting["why"]
            await client.review(waiting["task_id"], "fail", "crucible discarded")
            task, outputs = await asyncio.wait_for(job, 20)
            assert task.state is TaskState.failed and outputs == {}
            loop.decisions.close()

    asyncio.run(body())


def _core_campaign_files() -> list[Path]:
    """Every shipped campaign file: the core's loops run them all (none is a pack's own)."""
    return sorted((Path(__file__).parent.parent / "campaigns").glob("*.yaml"))


@pytest.mark.parametrize("path", _core_campaign_files(), ids=lambda p: p.name)
def test_every_shipped_campaign_file_validates_and_builds_its_world(path: Path, tmp_path: Path) -> None:
    from ppu.campaign.declared import is_lab_campaign, lab_config, load_lab_campaign
    from ppu.campaign.runner import build_world

    if is_lab_campaign(yaml.safe_load(path.read_text())):  # declared variables, run on the lab file it names
        lab = lab_config(load_lab_campaign(path), tmp_path, path)
        assert lab.backends and lab.run_dir == str(tmp_path)
        return
    cfg = load_campaign(path)
    if cfg.world.replay is not None:  # a replay campaign: the pool is the table's rows
        from ppu.campaign.replay import ReplaySpec, ReplayWorld

        spec = ReplaySpec(**cfg.world.replay.model_dump(), problem=cfg.problem.model_dump(mode="json"))  # type: ignore[union-attr]
        assert ReplayWorld(spec, base=path.parent).pool
        return
    world, pool = build_world(cfg)
    assert len(pool) == cfg.world.pool_size
    expected = "table" if cfg.world.csv else {"sweet-spots": "analytic", "mof74": "mof74"}[cfg.world.kind]
    assert world.kind == expected
