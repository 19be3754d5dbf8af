"""The MOF lab's simulation (installed as ppu.simulators.mof): a hidden world, instrument models, twins.

Loaded lazily (:mod:`ppu.lazy`): importing the package, as loading its pack does, imports none of
the modules below until one of their names is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ppu.lazy import exports

if TYPE_CHECKING:
    from ppu.drivers.mof.phases import PHASES, REFERENCE_PEAKS, TARGET_PHASE
    from ppu.simulators.mof.devices import (
        GasSorptionAnalyzer,
        SampleTransfer,
        SynthesisRobot,
        UVVisSpectrometer,
        XRDDiffractometer,
        gas_sorption_analyzer,
        sample_transfer,
        synthesis_robot,
        uvvis_spectrometer,
        xrd_diffractometer,
    )
    from ppu.simulators.mof.instruments import (
        FaultConfig,
        InstrumentFault,
        IsothermModel,
        SynthesisModel,
        UVVisModel,
        XRDModel,
    )
    from ppu.simulators.mof.lab import SampleRecord, SimulatedLab, UnknownSampleError
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

_MODULES = {
    "ppu.drivers.mof.phases": ("PHASES", "REFERENCE_PEAKS", "TARGET_PHASE"),
    ".devices": ("GasSorptionAnalyzer", "SampleTransfer", "SynthesisRobot", "UVVisSpectrometer",
        "XRDDiffractometer", "gas_sorption_analyzer", "sample_transfer", "synthesis_robot", "uvvis_spectrometer",
        "xrd_diffractometer"),
    ".instruments": ("FaultConfig", "InstrumentFault", "IsothermModel", "SynthesisModel", "UVVisModel", "XRDModel"),
    ".lab": ("SampleRecord", "SimulatedLab", "UnknownSampleError"),
    ".world": ("DEMO_CSV", "ELEMENTS", "MOF74World", "TableWorld", "TrueProperties", "World", "WorldConfig",
        "candidate_id", "candidate_pool"),
}
__getattr__, __dir__ = exports(__name__, _MODULES)

__all__ = ["DEMO_CSV", "ELEMENTS", "PHASES", "REFERENCE_PEAKS", "TARGET_PHASE", "FaultConfig",
    "GasSorptionAnalyzer", "InstrumentFault", "IsothermModel", "MOF74World", "SampleRecord", "SampleTransfer",
    "SimulatedLab", "SynthesisModel", "SynthesisRobot", "TableWorld", "TrueProperties", "UVVisModel",
    "UVVisSpectrometer", "UnknownSampleError", "World", "WorldConfig", "XRDDiffractometer", "XRDModel",
    "candidate_id", "candidate_pool", "gas_sorption_analyzer", "sample_transfer", "synthesis_robot",
    "uvvis_spectrometer", "xrd_diffractometer"]
