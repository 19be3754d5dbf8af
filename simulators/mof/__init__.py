"""The simulated lab: a hidden world and instrument models (installed as ppu.simulators)."""

from ppu.simulators.mof.instruments import (
    FaultConfig,
    InstrumentFault,
    IsothermModel,
    SynthesisModel,
    UVVisModel,
    XRDModel,
)
from ppu.simulators.mof.lab import SampleRecord, SimulatedLab, UnknownSampleError
from ppu.simulators.mof.phases import PHASES, REFERENCE_PEAKS, TARGET_PHASE
from ppu.simulators.mof.world import (
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
