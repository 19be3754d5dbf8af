"""Declared per-candidate workflows: steps, output -> input wiring, gates, costs (issue 15, item 2)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from ppu.campaign.config import CampaignConfig, load_campaign
from ppu.campaign.workflow import Step, Workflow, run_workflow
from ppu.errors import ConfigError

WF = {
    "steps": [
        {"name": "make", "capability": "make.sample", "inputs": {"spec": "$candidate", "batch": 3}, "cost": 4.0},
        {"name": "check", "capability": "measure.quick", "inputs": {"sample_id": "$make.sample_id",
                                                                    "x": "$candidate.x"}, "cost": 0.5},
        {"name": "full", "capability": "measure.full", "inputs": {"sample_id": "$make.sample_id"},
         "when": "quality >= 0.9", "cost": 3.0},
    ],
    "outputs": {"quality": "check.score", "value": "full.value"},
}


class Bench:
    """A stand-in lab at the edge of the workflow engine: records calls, answers from a table."""

    def __init__(self, score: float, fail: str | None = None):
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.score = score
        self.fail = fail

    async def __call__(self, step: Step, inputs: dict[str, Any], on_review: Callable[[], None] | None
                       ) -> tuple[str, dict[str, Any]]:
        self.calls.append((step.capability, inputs))
        if step.name == self.fail:
            return "failed", {}
        return "succeeded", {"make": {"sample_id": "s-1"}, "check": {"score": self.score},
                             "full": {"value": 7.5}}[step.name]


def _run(wf: Workflow, bench: Bench) -> tuple[Any, list[str]]:
    freed: list[str] = []
    run = asyncio.run(run_workflow(wf, {"x": 0.25, "label": "a"}, bench, lambda: freed.append(str(len(bench.calls)))))
    return run, freed


def test_outputs_feed_inputs_and_a_passing_gate_runs_the_costly_step() -> None:
    wf = Workflow.model_validate(WF)
    run, freed = _run(wf, Bench(score=0.95))
    assert [c for c, _ in run_calls(run, wf)] == ["make.sample", "measure.quick", "measure.full"]
    bench = Bench(score=0.95)
    run, freed = _run(wf, bench)
    assert bench.calls[0][1] == {"spec": {"x": 0.25, "label": "a"}, "batch": 3}
    assert bench.calls[1][1] == {"sample_id": "s-1", "x": 0.25}
    assert bench.calls[2][1] == {"sample_id": "s-1"}
    assert run.outputs == {"quality": 0.95, "value": 7.5} and run.cost == 7.5
    assert freed == ["1"]  # the first step frees the slot, once, as soon as it ends


def run_calls(run: Any, wf: Workflow) -> list[tuple[str, str]]:
    return [(s.capability, run.states[s.name]) for s in wf.steps if run.states[s.name] == "succeeded"]


def test_a_failing_gate_skips_the_costly_step() -> None:
    bench = Bench(score=0.5)
    run, _ = _run(Workflow.model_validate(WF), bench)
    assert [c for c, _ in bench.calls] == ["make.sample", "measure.quick"]
    assert run.states["full"] == "skipped: gate quality >= 0.9 not met"
    assert run.outputs == {"quality": 0.5, "value": None} and run.cost == 4.5


def test_a_failed_step_skips_what_needs_its_outputs_and_still_frees_the_slot() -> None:
    bench = Bench(score=0.95, fail="make")
    run, freed = _run(Workflow.model_validate(WF), bench)
    assert [c for c, _ in bench.calls] == ["make.sample"]
    assert run.states["check"].startswith("skipped: make did not succeed")
    assert freed == ["1"]


def test_a_failure_declared_an_outcome_is_a_result_and_any_other_stays_a_failure() -> None:
    wf = Workflow.model_validate({**WF, "steps": [{**WF["steps"][0], "on_error": [  # type: ignore[dict-item]
        {"match": "clogged", "outputs": {"value": 0.0}}]}, *WF["steps"][1:]]})  # type: ignore[misc]

    async def fails(why: str) -> Any:
        async def step(s: Step, inputs: dict[str, Any], on_review: Any) -> tuple[str, dict[str, Any]]:
            return "failed", {"error": why}
        return await run_workflow(wf, {"x": 0.25}, step)

    clogged = asyncio.run(fails("no fraction collected: coil clogged"))
    assert clogged.outcome == "clogged" and clogged.outputs == {"quality": None, "value": 0.0}
    other = asyncio.run(fails("pump stalled"))
    assert other.outcome is None and other.outputs == {"quality": None, "value": None}


@pytest.mark.parametrize(("change", "where"), [
    ({2: {"when": "quality is high"}}, "steps.2.when"),
    ({2: {"when": "nothing >= 1"}}, "steps.2.when"),
    ({1: {"inputs": {"sample_id": "$full.sample_id"}}}, "steps.1.inputs.sample_id"),
    ({1: {"inputs": {"sample_id": "$make"}}}, "steps.1.inputs.sample_id"),
    ({1: {"name": "make"}}, "steps.1.name"),
])
def test_every_workflow_error_names_the_step_and_field(change: dict, where: str) -> None:
    raw = {"steps": [dict(s) for s in WF["steps"]], "outputs": dict(WF["outputs"])}  # type: ignore[call-overload]
    for k, fields in change.items():
        raw["steps"][k].update(fields)
    with pytest.raises(ValidationError) as err:
        Workflow.model_validate(raw)
    assert where in str(err.value).replace("\n", " "), str(err.value)


def test_outputs_must_name_a_declared_step() -> None:
    with pytest.raises(ValidationError, match=r"outputs\.value"):
        Workflow.model_validate({**WF, "outputs": {"quality": "check.score", "value": "nowhere.value"}})


def test_the_mof_loop_needs_its_outputs_from_the_workflow(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    outputs = {"quality": "check.score", "purity": "check.score"}
    path.write_text(yaml.safe_dump({"workflow": {**WF, "outputs": outputs}}))
    with pytest.raises(ConfigError, match=r"workflow\.outputs lacks \['co2_uptake'\]"):
        load_campaign(path)


def test_the_demo_declares_its_workflow_and_the_default_is_the_same() -> None:
    demo = load_campaign(Path(__file__).parent.parent / "campaigns" / "demo.yaml")
    default = CampaignConfig.model_validate({})
    assert demo.workflow == default.workflow
    assert [s.capability for s in demo.workflow.steps] == ["synthesize", "characterize.xrd",  # type: ignore[union-attr]
                                                           "measure.co2_uptake"]


def test_the_lab_loop_follows_a_declared_gate(tmp_path: Path) -> None:
    """Through the real lab: a gate no sample can pass means no costly measurement is ever submitted."""
    from rich.console import Console

    from ppu.campaign.report import run_campaign_cli

    wf = CampaignConfig.model_validate({}).workflow.model_dump()  # type: ignore[union-attr]
    wf["steps"][2]["when"] = "purity >= 1.5"
    cfg = CampaignConfig.model_validate({"name": "gate", "time_scale": 100_000, "world": {"pool_size": 40},
                                         "budget": {"max_syntheses": 3}, "screening": {"top_k": 10,
                                                                                         "prior_points": 10},
                                         "workflow": wf})
    with (tmp_path / "out.txt").open("w") as fh:
        summary = run_campaign_cli("unused.yaml", tmp_path / "run", Console(file=fh), config=cfg)
    assert summary["physical_experiments"] == 3 and summary["uptake_measurements"] == 0


def test_the_flow_chemistry_campaign_runs_its_declared_workflow(tmp_path: Path) -> None:
    from ppu.campaign.declared import load_lab_campaign

    shipped = load_lab_campaign(Path(__file__).parent.parent / "campaigns" / "flowchem.yaml")
    assert [s.capability for s in shipped.workflow.steps] == ["react.flow", "measure.hplc"]
    assert shipped.workflow.steps[0].on_error[0].outputs == {"yield": 0.0, "impurity": 0.0}
    bad = tmp_path / "fc.yaml"
    raw = yaml.safe_load((Path(__file__).parent.parent / "campaigns" / "flowchem.yaml").read_text())
    raw["workflow"]["outputs"].pop("yield")
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"steps\.0\.on_error\.0\.outputs: \['yield'\] are not among"):
        load_lab_campaign(bad)
    raw["workflow"]["steps"][0].pop("on_error")
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"workflow.*outputs lacks \['yield'\]"):
        load_lab_campaign(bad)
