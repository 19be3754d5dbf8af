"""The flow lab's campaign on the core's loop, from its YAML alone (issue 15, items 2 and 3): its lab and
campaign files, config errors by field, the closed loop end to end, and a device fault left to a person."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ppu.backends.registry import build_backend
from ppu.campaign.declared import LabCampaign, LabLoop, lab_config, load_lab_campaign, run_lab_campaign
from ppu.campaign.declared_report import truth_of, write_report
from ppu.campaign.problem import CategoricalVariable, ContinuousVariable
from ppu.config import load_lab
from ppu.drivers.flowchem.models import LIGANDS, PROCESS_BOX
from ppu.errors import ConfigError
from ppu.simulators.flowchem import pack

ROOT = Path(__file__).resolve().parent.parent
CAMPAIGN = ROOT / "campaigns" / "flowchem.yaml"


def _raw() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(CAMPAIGN.read_text())
    return raw


def _fast(**over: Any) -> LabCampaign:
    """The shipped campaign, small and fast: the same problem, workflow and screen."""
    raw = _raw()
    raw.update({"time_scale": 1e6, "lab": str(ROOT / "labs" / "flowchem-sim.yaml")}, **over)
    return LabCampaign.model_validate(raw)


def test_lab_file_builds_every_backend(tmp_path: Path) -> None:
    pack.register()
    lab = load_lab(ROOT / "labs" / "flowchem-sim.yaml")
    kinds = {}
    for raw in lab.backends:
        backend = build_backend({**raw, "run_dir": str(tmp_path)} if raw["type"] != "flow_twin" else raw)
        kinds[raw["type"]] = backend.spec()
    assert set(kinds) == {"flow_reactor", "hplc", "flow_twin"}
    assert kinds["flow_reactor"].safe_limits["recipe.temperature_c"].max == 170


def test_the_campaign_file_declares_the_recipe_space_and_points_its_lab_at_the_run(tmp_path: Path) -> None:
    cfg = load_lab_campaign(CAMPAIGN)
    v = cfg.problem.variables
    assert isinstance(v["ligand"], CategoricalVariable) and tuple(v["ligand"].values) == LIGANDS
    for name, (lo, hi, _unit) in PROCESS_BOX.items():  # the process box the pack's recipes allow
        assert isinstance(v[name], ContinuousVariable) and v[name].domain == (lo, hi)
    assert cfg.problem.objectives == {"yield": "MAXIMIZE"} and cfg.screening is not None
    assert cfg.optimiser.generator == "botorch" and cfg.budget.experiments >= 10
    lab = lab_config(cfg, tmp_path, CAMPAIGN)
    phys = [b for b in lab.backends if b["type"] in ("flow_reactor", "hplc")]
    assert len(phys) == 2 and all(b["run_dir"] == str(tmp_path / "lab") and b["world"]["seed"] == cfg.world["seed"]
                                  and b["time_scale"] == cfg.time_scale for b in phys)
    assert lab.store is None and lab.run_dir == str(tmp_path)
    # the lab file asks approval for every new recipe; the campaign's autonomy governs its physical steps
    assert lab.autonomy.capabilities["react.flow"].value == "autonomous"


@pytest.mark.parametrize(("change", "where"), [
    ({"budget": {"experiments": 0}}, r"budget\.experiments"),
    ({"problem": {"variables": {}, "objectives": {"yield": "MAXIMIZE"}}}, r"problem\.variables"),
    ({"optimiser": {"generator": "genetic"}}, r"optimiser\.generator"),
    ({"screening": {"capability": "predict.yield", "inputs": {}, "size": 0}}, r"screening\.size"),
    ({"workflow": {"steps": [{"name": "react", "capability": "react.flow", "inputs": {"recipe": "$candidate"}}],
                   "outputs": {"impurity": "react.x"}}}, r"workflow\.outputs lacks \['yield'\]"),
    ({"workflow": {"steps": [{"name": "react", "capability": "react.flow", "inputs": {"recipe": "$candidate"},
                              "on_error": [{"match": "clogged", "outputs": {"purity": 0}}]}],
                   "outputs": {"yield": "react.y"}}}, r"steps\.0\.on_error\.0\.outputs"),
    ({"flavour": "spicy"}, r"flavour"),
])
def test_a_bad_campaign_field_is_named(tmp_path: Path, change: dict[str, Any], where: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**_raw(), **change}))
    with pytest.raises(ConfigError, match=where):
        load_lab_campaign(bad)


def test_the_cli_names_a_missing_lab_file_and_shows_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**_raw(), "lab": "labs/nowhere.yaml"}))
    out = subprocess.run([str(Path(sys.executable).parent / "ppu"), "campaign", "run", str(bad), "--run-dir",
                          str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "lab file labs/nowhere.yaml does not exist" in text, text
    assert "lab" in text and "Traceback" not in text


def test_a_running_lab_that_does_not_answer_is_named(tmp_path: Path) -> None:
    lab = yaml.safe_load((ROOT / "labs" / "flowchem-sim.yaml").read_text())
    lab["orchestrator"]["bind"] = "tcp://127.0.0.1:1"  # nobody listens on port 1
    (tmp_path / "lab.yaml").write_text(yaml.safe_dump(lab))
    cfg = _fast(lab=str(tmp_path / "lab.yaml"), simulated=False)
    with pytest.raises(ConfigError, match=r"no orchestrator answers at tcp://127\.0\.0\.1:1") as err:
        asyncio.run(run_lab_campaign(cfg, tmp_path / "run"))
    assert err.value.field == "lab"


def test_the_closed_loop_on_the_generic_runner_beats_random_search(tmp_path: Path) -> None:
    """Seeded: twin screen, then qLogNEI over the box once per ligand; each experiment a reaction and an
    HPLC through the orchestrator, two in flight."""
    cfg = _fast(budget={"experiments": 8}, optimiser={"generator": "botorch", "n_init": 3, "in_flight": 2},
                screening={**_raw()["screening"], "size": 128})
    result = asyncio.run(run_lab_campaign(cfg, tmp_path))
    assert len(result.experiments) == 8 and sorted(e.index for e in result.experiments) == list(range(8))
    assert result.screened == 128 and result.screened_as == "columnar"  # one block task, not 128 tasks
    summary = write_report(result, tmp_path, truth_of(cfg, None))
    assert set(summary["statuses"]) <= {"measured", "clogged"}  # nothing lost, nothing sent to review
    for e in result.experiments:
        assert len(e.tasks) == (2 if e.status == "measured" else 1)
        assert 0 <= e.outputs["yield"] <= 1 and (e.status == "measured" or e.outputs["yield"] == 0)
    # better than random search over the same space with the same budget (median of 20 seeded runs)
    assert summary["best_true"] > summary["random_baseline_curve"][7] + 0.05
    assert summary["best_measured"] == pytest.approx(summary["true_value_of_best_measured"], abs=0.06)
    by_index = sorted(result.experiments, key=lambda e: e.index)
    assert all("best screened point" in e.why for e in by_index[:3])
    # once n_init (3) results are in, the GP proposes over the box x ligand (from the 5th proposal at the
    # latest: two are in flight); only while every result is alike does it wait
    assert all("optimize_acqf_mixed" in e.why or "alike" in e.why for e in by_index[4:]), [e.why for e in by_index]
    assert "optimize_acqf_mixed" in by_index[-1].why and summary["gp_proposals"] >= 3
    assert any(e.pending for e in by_index[1:])  # the other experiment in flight was passed as pending
    lines = [json.loads(x) for x in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and {"point", "why", "model_version", "pending", "status", "outputs"} <= set(lines[0])
    for png in ("best_vs_experiments.png", "objective_vs_variables.png"):
        assert (tmp_path / png).stat().st_size > 10_000


def test_a_device_fault_waits_for_a_person_and_is_never_rerun(tmp_path: Path) -> None:
    """The reactor faults on its 2nd reaction: the task goes to review, a person fails it, the loop goes on."""
    lab = yaml.safe_load((ROOT / "labs" / "flowchem-sim.yaml").read_text())
    lab["backends"][0]["faults"] = {"fail_on": [2], "message": "pump B stalled"}
    (tmp_path / "lab.yaml").write_text(yaml.safe_dump(lab))
    cfg = _fast(lab=str(tmp_path / "lab.yaml"), budget={"experiments": 4},
                optimiser={"generator": "botorch", "n_init": 4, "in_flight": 1},
                screening={**_raw()["screening"], "size": 32})
    told: list[str] = []
    decided: list[str] = []
    tasks: list[asyncio.Task[None]] = []

    def person(client: Any, loop: LabLoop) -> None:
        loop.review_poll_s = 0.3

        async def answer() -> None:
            while not decided:
                for item in await client.reviews():
                    await client.review(item["task_id"], "fail", reason="pump B serviced; not repeating")
                    decided.append(item["task_id"])
                await asyncio.sleep(0.2)

        tasks.append(asyncio.get_running_loop().create_task(answer()))

    result = asyncio.run(run_lab_campaign(cfg, tmp_path / "run", on_review=lambda tid, cap: told.append(tid),
                                          on_lab=person))
    assert len(decided) == 1 and set(told) <= set(decided)  # the loop may see it first, or the person may
    by_index = sorted(result.experiments, key=lambda e: e.index)
    assert [e.status for e in by_index].count("failed") == 1
    failed = next(e for e in by_index if e.status == "failed")
    assert failed.tasks == decided and failed.error  # only the reaction: no HPLC, no second reaction
    assert failed.outputs.get("yield") is None and len(result.experiments) == 4  # left out of the data
