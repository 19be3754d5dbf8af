"""The simulated lab: a hidden world and instrument models (installed as ppu.simulators)."""

from ppu.simulators.instruments import (
    FaultConfig,
    InstrumentFault,
    IsothermModel,
    SynthesisModel,
    UVVisModel,
    XRDModel,
)
from ppu.simulators.lab import SampleRecord, SimulatedLab, UnknownSampleError
from ppu.simulators.phases import PHASES, REFERENCE_PEAKS, TARGET_PHASE
from ppu.simulators.world import (
    DEMO_CSV,
    ELEMENTS,
    MOF74World,
    TableWorld,
    TrueProperties,
    World,
    WorldConfig,
    candidate_id,
    candidate_pool,
)

__all__ = [
    "DEMO_CSV", "ELEMENTS", "PHASES", "REFERENCE_PEAKS", "TARGET_PHASE", "FaultConfig", "InstrumentFault",
    "IsothermModel", "MOF74World", "SampleRecord", "SimulatedLab", "SynthesisModel", "TableWorld", "TrueProperties",
    "UVVisModel", "UnknownSampleError", "World", "WorldConfig", "XRDModel", "candidate_id", "candidate_pool",
]
