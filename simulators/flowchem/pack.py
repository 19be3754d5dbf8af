"""The flow-chemistry pack's registration module: the one place its ``ppu.packs`` entry point names.

:func:`pack` declares everything the pack brings (capabilities, backend types by import path, plans,
the world, example files, conformance cases); the orchestrator, workers, CLI, dashboard and flows load it
like any other pack (``packs: [flowchem]`` in a lab file). :func:`register` registers the same things in
this process directly, for scripts that read no lab file. Loading the pack imports neither bluesky, torch
nor a simulator.
"""

from __future__ import annotations

from pathlib import Path

from ppu import capabilities
from ppu.backends.registry import register_type
from ppu.capabilities import Capability
from ppu.drivers.flowchem.models import (
    HPLCInput,
    HPLCOutput,
    ReactInput,
    ReactOutput,
    YieldPredictInput,
    YieldPrediction,
)
from ppu.models import ActionClass
from ppu.packs import Pack

NAME = "flowchem"

CAPABILITIES: tuple[Capability, ...] = (
    Capability(name="react.flow", input_model=ReactInput, output_model=ReactOutput, action=ActionClass.once,
               makes_sample=True, approval_inputs=["recipe"], summary=["recipe.ligand", "recipe.temperature_c"],
               description="run a flow reaction to steady state and collect a fraction"),
    Capability(name="measure.hplc", input_model=HPLCInput, output_model=HPLCOutput, action=ActionClass.once,
               needs_sample=True, description="online HPLC of a fraction: yield, impurity, conversion"),
    Capability(name="predict.yield", input_model=YieldPredictInput, output_model=YieldPrediction,
               action=ActionClass.repeatable, description="kinetic digital twin: predicted yield of a recipe",
               encoder="ppu.drivers.flowchem.coding:encode_recipe"),
)

BACKEND_TYPES: dict[str, str] = {
    "flow_reactor": "ppu.simulators.flowchem.backends:FlowReactorBackend",
    "hplc": "ppu.simulators.flowchem.backends:HPLCBackend",
    "flow_twin": "ppu.simulators.flowchem.twin:FlowTwinBackend",
}

LAB_FILE = "labs/flowchem-sim.yaml"
CAMPAIGN_FILE = "campaigns/flowchem.yaml"
_REPO = Path(__file__).resolve().parents[2]
_CASES = "ppu.simulators.flowchem.conformance"


def pack() -> Pack:
    return Pack(
        name=NAME,
        description="flow chemistry: a flow reactor and an online HPLC; yield/impurity campaigns over process "
                    "parameters and a ligand",
        capabilities=CAPABILITIES,
        backend_types=dict(BACKEND_TYPES),
        plans={"run_flow_reaction": "ppu.drivers.flowchem.plans:run_flow_reaction",
               "measure_hplc": "ppu.drivers.flowchem.plans:measure_hplc"},
        worlds={"kinetic": "ppu.simulators.flowchem.world:FlowWorld"},
        labs=tuple(p for p in (_REPO / LAB_FILE,) if p.exists()),
        campaigns=tuple(p for p in (_REPO / CAMPAIGN_FILE,) if p.exists()),
        objectives={"measure.hplc": "product_yield"},
        conformance={"flow_reactor": f"{_CASES}:FlowReactor", "hplc": f"{_CASES}:HPLC", "flow_twin": f"{_CASES}:Twin"},
        campaign_lab="ppu.simulators.flowchem.campaign:campaign_lab",
        campaign_truth="ppu.simulators.flowchem.campaign:truth",
    )


def register() -> None:
    """Register the pack's capabilities and backend types in this process."""
    for cap in CAPABILITIES:
        capabilities.register(cap)
    for name, path in BACKEND_TYPES.items():
        register_type(name, path)
