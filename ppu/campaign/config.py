"""A campaign as one YAML file a scientist can read (STYLE.md §7): world, problem, budget, pace.

    world:     {seed: 0, pool_size: 300}          # kind: mof74, or csv: path/to/measurements.csv
    problem:                                      # gest-api's VOCS (ppu.campaign.problem)
      objectives:  {co2_uptake: MAXIMIZE}
      constraints: {purity: [GREATER_THAN, 0.9]}
    budget:    {max_syntheses: 24, instrument_hours: 400, rounds: 6}
    parallel:  {synthesis_robots: 2}

A replay campaign (``world: {replay: {csv: table.csv}}``) runs the generic loop on the table's own
rows with any declared problem (variables, one or several objectives, constraints); the MOF lab's
loop takes its candidates from the world, so its ``problem`` declares only the objective and the
constraint that loop measures. The older ``objective: {maximise: co2_uptake, purity_min: 0.9}`` still
reads; a declared ``problem`` takes precedence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ppu.campaign.generators import GeneratorSpec
from ppu.campaign.problem import Problem
from ppu.campaign.replay import ReplayTable
from ppu.campaign.workflow import Workflow
from ppu.config import load_yaml_model
from ppu.models import Autonomy, Strict

# What the MOF lab's loop measures: the one objective it can maximise and the one constraint it checks.
MOF_OBJECTIVE, MOF_CONSTRAINT = "co2_uptake", "purity"


class WorldSpec(Strict):
    kind: Literal["sweet-spots", "mof74"] = Field("sweet-spots", description="which analytic world (no csv)")
    seed: int = Field(0, description="seeds the analytic world (its sweet spots, its metal-pair synergies)")
    csv: str | None = Field(None, description="a table of real measurements; builds a table world")
    pool_size: int = Field(300, ge=10, le=100_000, description="candidates in the discrete search pool")
    pool_seed: int = Field(0, description="which candidates of the grid make the pool")
    replay: ReplayTable | None = Field(None, description="a table of measurements replayed as the lab: the pool "
                                       "is its rows, a measurement returns the recorded value (needs `problem`)")


class ObjectiveSpec(Strict):
    maximise: Literal["co2_uptake"] = Field("co2_uptake", description="the measured property to maximise")
    purity_min: float = Field(0.9, ge=0, le=1, description="constraint: XRD phase purity at least this")


class BudgetSpec(Strict):
    max_syntheses: int = Field(24, ge=1, le=100_000, description="physical experiments (syntheses) allowed")
    instrument_hours: float = Field(1000.0, gt=0, description="lab time the campaign may take, in hours")
    rounds: int = Field(100, ge=1, description="how many times the surrogate is retrained (learn steps) at most")


class ScreeningSpec(Strict):
    enabled: bool = Field(True, description="screen the whole pool on the digital twin first")
    top_k: int = Field(60, ge=1, description="the shortlist: the top-k screened candidates")
    outside_weight: float = Field(0.1, ge=0, le=1, description="once the GP proposes, a candidate off the "
                                  "shortlist competes at this times its acquisition (0: shortlist only)")
    prior_points: int = Field(40, ge=3, description="size of the prior data set the screening model learnt from")
    prior_noise: float = Field(0.8, ge=0, description="noise std of that prior data (mmol/g): it is low fidelity")
    prior_csv: str | None = Field(None, description="earlier measurements the screening model trains on instead "
                                  "of the simulated prior: one column per element (fractions), optional "
                                  "anneal_temperature_c and anneal_time_h, and co2_uptake_mmol_g and purity")


class ParallelSpec(Strict):
    synthesis_robots: int = Field(2, ge=1, le=64, description="syntheses in flight (the bottleneck instrument)")
    queue_ahead: int = Field(1, ge=0, le=64, description="syntheses queued beyond the robots, so a robot never "
                             "waits for the optimiser (proposal latency is hours of lab time at a high time scale)")
    n_init: int = Field(3, ge=1, le=100, description="measured points before the GP takes over from the screen")
    learn_every: int = Field(4, ge=1, description="publish a new surrogate version every this many measurements")


class CampaignConfig(Strict):
    name: str = Field("campaign", pattern=r"^[A-Za-z0-9_.\-]+$", description="campaign name (task tag)")
    seed: int = Field(0, description="seeds the optimiser and the simulated instruments")
    time_scale: float = Field(20_000.0, gt=0, le=1e9, description="simulated lab time runs this much faster")
    autonomy: Autonomy = Field(Autonomy.autonomous, description="autonomy level for the physical backends")
    world: WorldSpec = Field(default_factory=WorldSpec)
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    problem: Problem | None = Field(None, validate_default=True, description="the declared problem (gest-api "
                                    "VOCS): variables, objectives, constraints, constants, observables")
    optimiser: GeneratorSpec = Field(default_factory=GeneratorSpec)
    workflow: Workflow | None = Field(None, description="per candidate: which capabilities run in which order, "
                                      "output -> input wiring, gates, costs (default: the MOF lab's synthesise, "
                                      "XRD, isotherm only if pure)")
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    screening: ScreeningSpec = Field(default_factory=ScreeningSpec)
    parallel: ParallelSpec = Field(default_factory=ParallelSpec)
    simulated: bool = Field(True, description="false: the real lab (backends from lab_config)")
    instruments: Literal["simulated", "epics"] = Field(
        "simulated", description="simulated: Ophyd devices on simulated signals in the workers; epics: the same "
        "twins served as EPICS IOCs by a `ppu ioc` process and driven over Channel Access (the real-mode path)")
    lab_config: str | None = Field(None, description="lab YAML of the running lab (simulated: false): its "
                                   "orchestrator address and security")
    connect: str | None = Field(None, description="address of the running lab's orchestrator (simulated: false; "
                                "default: lab_config's orchestrator.bind)")

    @model_validator(mode="after")
    def _real_lab(self) -> CampaignConfig:
        if not self.simulated and self.lab_config is None:
            raise ValueError("lab_config: a campaign on a running lab (simulated: false) needs the lab YAML "
                             "(its orchestrator address and keys)")
        return self


    @field_validator("problem", mode="before")
    @classmethod
    def _problem_shape(cls, v: Any, info: ValidationInfo) -> Any:
        world = info.data.get("world")
        replay = world is not None and world.replay is not None
        if replay and v is None:
            raise ValueError("a replay world needs the problem declared: which columns are objectives (and "
                             "constraints, observables), e.g. {objectives: {yield: MAXIMIZE}}")
        if v is None or not isinstance(v, dict):
            return v
        if not replay:
            _check_mof_problem(v)
        elif "variables" not in v:
            v = {**v, "variables": {}}  # inferred from the table's columns when the world is built
        return v

    @model_validator(mode="after")
    def _sync_objective(self) -> CampaignConfig:
        if self.problem is not None and self.world.replay is None and MOF_CONSTRAINT in self.problem.constraints:
            c = self.problem.constraints[MOF_CONSTRAINT]
            self.__dict__["objective"] = ObjectiveSpec(purity_min=float(c.value or 0.0))
        if self.world.replay is None:
            if self.workflow is None:
                self.__dict__["workflow"] = mof_workflow(self.objective.purity_min)
            missing = [o for o in (MOF_OBJECTIVE, MOF_CONSTRAINT) if o not in self.workflow.outputs]  # type: ignore[union-attr]
            if missing:
                raise ValueError(f"workflow.outputs lacks {missing}: the MOF loop reads {MOF_OBJECTIVE} and "
                                 f"{MOF_CONSTRAINT} from the steps (e.g. {MOF_CONSTRAINT}: xrd.purity)")
        return self


def mof_workflow(purity_min: float) -> Workflow:
    """The MOF lab's default per-candidate workflow, as data: costs are the declared lab hours."""
    return Workflow.model_validate({
        "steps": [
            {"name": "synthesise", "capability": "synthesize", "inputs": {"recipe": "$candidate"}, "cost": 4.5,
             "frees_slot": True},
            {"name": "xrd", "capability": "characterize.xrd", "inputs": {"sample_id": "$synthesise.sample_id"},
             "cost": 0.22},
            {"name": "isotherm", "capability": "measure.co2_uptake",
             "inputs": {"sample_id": "$synthesise.sample_id"}, "when": f"purity >= {purity_min}", "cost": 2.5},
        ],
        "outputs": {"purity": "xrd.purity", "co2_uptake": "isotherm.uptake_mmol_g"}})


def _check_mof_problem(v: dict[str, Any]) -> None:
    """The MOF lab's loop runs one problem; anything else is refused by name, never reinterpreted."""
    if v.get("variables"):
        raise ValueError("variables: the MOF loop takes its candidates from `world` (composition grid x anneal "
                         "temperatures); leave variables out, name a lab file (`lab:`) to run your declared "
                         "problem on it, or use a replay world (world.replay) for your own")
    objs = v.get("objectives") or {}
    for name, sense in objs.items():
        if name != MOF_OBJECTIVE:
            raise ValueError(f"objectives.{name}: the MOF loop measures {MOF_OBJECTIVE} only; other objectives "
                             "need a replay world (world.replay)")
        if str(sense).upper() not in ("MAXIMIZE", "MAXIMISE", "MAX"):
            raise ValueError(f"objectives.{name}: the MOF loop maximises {MOF_OBJECTIVE}; {sense} would be "
                             "scored against a maximised truth, so it is refused rather than negated")
    for name, con in (v.get("constraints") or {}).items():
        kind = con[0] if isinstance(con, list | tuple) and con else None
        if name != MOF_CONSTRAINT or str(kind).upper() != "GREATER_THAN":
            raise ValueError(f"constraints.{name}: the MOF loop checks [GREATER_THAN, x] on {MOF_CONSTRAINT} only")
    v.setdefault("variables", {})


def load_campaign(path: str | Path) -> CampaignConfig:
    return load_yaml_model(path, CampaignConfig, "campaign config", "see campaigns/demo.yaml")
