"""The flow-chemistry lab as one pack: everything it contributes, registered by :func:`register`.

Uses today's mechanisms: :func:`ppu.capabilities.register` for the capabilities and
:func:`ppu.backends.registry.register_type` for the backend types (import paths, so nothing heavy
loads until a lab uses them). Calling it twice is harmless. A process that serves or submits
flow-chemistry tasks (orchestrator, workers, CLI) must call it before it reads a flow lab file.
"""

from __future__ import annotations

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

NAME = "flowchem"

CAPABILITIES: tuple[Capability, ...] = (
    Capability(name="react.flow", input_model=ReactInput, output_model=ReactOutput, action=ActionClass.once,
               makes_sample=True, description="run a flow reaction to steady state and collect a fraction"),
    Capability(name="measure.hplc", input_model=HPLCInput, output_model=HPLCOutput, action=ActionClass.once,
               needs_sample=True, description="online HPLC of a fraction: yield, impurity, conversion"),
    Capability(name="predict.yield", input_model=YieldPredictInput, output_model=YieldPrediction,
               action=ActionClass.repeatable, description="kinetic digital twin: predicted yield of a recipe"),
)

BACKEND_TYPES: dict[str, str] = {
    "flow_reactor": "ppu.simulators.flowchem.backends:FlowReactorBackend",
    "hplc": "ppu.simulators.flowchem.backends:HPLCBackend",
    "flow_twin": "ppu.simulators.flowchem.twin:FlowTwinBackend",
}

LAB_FILE = "labs/flowchem-sim.yaml"
CAMPAIGN_FILE = "campaigns/flowchem.yaml"


def register() -> None:
    """Register the pack's capabilities and backend types in this process."""
    for cap in CAPABILITIES:
        capabilities.register(cap)
    for name, path in BACKEND_TYPES.items():
        register_type(name, path)
