"""A campaign as one YAML file a scientist can read (STYLE.md §7): world, goal, budget, pace.

    world:     {seed: 0, pool_size: 300}          # kind: mof74, or csv: path/to/measurements.csv
    objective: {maximise: co2_uptake, constraint: {purity_min: 0.9}}
    budget:    {max_syntheses: 24, instrument_hours: 400, rounds: 6}
    parallel:  {synthesis_robots: 2}
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from ppu.config import load_yaml_model
from ppu.models import Autonomy, Strict


class WorldSpec(Strict):
    kind: Literal["sweet-spots", "mof74"] = Field("sweet-spots", description="which analytic world (no csv)")
    seed: int = Field(0, description="seeds the analytic world (its sweet spots, its metal-pair synergies)")
    csv: str | None = Field(None, description="a table of real measurements; builds a table world")
    pool_size: int = Field(300, ge=10, le=100_000, description="candidates in the discrete search pool")
    pool_seed: int = Field(0, description="which candidates of the grid make the pool")


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
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    screening: ScreeningSpec = Field(default_factory=ScreeningSpec)
    parallel: ParallelSpec = Field(default_factory=ParallelSpec)
    simulated: bool = Field(True, description="false: the real lab (backends from lab_config)")
    instruments: Literal["simulated", "epics"] = Field(
        "simulated", description="simulated: Ophyd devices on simulated signals in the workers; epics: the same "
        "twins served as EPICS IOCs by a `ppu ioc` process and driven over Channel Access (the real-mode path)")
    lab_config: str | None = Field(None, description="lab YAML with the real backends (simulated: false)")


def load_campaign(path: str | Path) -> CampaignConfig:
    return load_yaml_model(path, CampaignConfig, "campaign config", "see campaigns/demo.yaml")
