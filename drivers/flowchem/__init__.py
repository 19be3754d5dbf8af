"""Drivers of the flow-chemistry lab (installed as ppu.drivers.flowchem).

Ophyd devices (a flow reactor with a fraction collector, an online HPLC) in EPICS and simulated
builds, their Bluesky plans, the HPLC method (reference retention times and response factors) and
the chromatogram analysis. Nothing here imports a simulator.

Loaded lazily (:mod:`ppu.lazy`): importing the package, as loading its pack does, imports none of
the modules below until one of their names is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ppu.lazy import exports

if TYPE_CHECKING:
    from ppu.drivers.flowchem.analysis import ChromatogramError, ChromatogramResult, Peak, analyse_chromatogram
    from ppu.drivers.flowchem.devices import HPLC, FlowReactor, SimulatorHook, flow_reactor, hplc
    from ppu.drivers.flowchem.method import METHOD, Species
    from ppu.drivers.flowchem.models import (
        LIGANDS,
        PROCESS_BOX,
        FlowRecipe,
        HPLCInput,
        HPLCOutput,
        ReactInput,
        ReactOutput,
        YieldPredictInput,
        YieldPrediction,
    )
    from ppu.drivers.flowchem.plans import measure_hplc, run_flow_reaction

_MODULES = {
    ".analysis": ("ChromatogramError", "ChromatogramResult", "Peak", "analyse_chromatogram"),
    ".devices": ("HPLC", "FlowReactor", "SimulatorHook", "flow_reactor", "hplc"),
    ".method": ("METHOD", "Species"),
    ".models": ("LIGANDS", "PROCESS_BOX", "FlowRecipe", "HPLCInput", "HPLCOutput", "ReactInput", "ReactOutput",
        "YieldPredictInput", "YieldPrediction"),
    ".plans": ("measure_hplc", "run_flow_reaction"),
}
__getattr__, __dir__ = exports(__name__, _MODULES)

__all__ = ["HPLC", "LIGANDS", "METHOD", "PROCESS_BOX", "ChromatogramError", "ChromatogramResult", "FlowReactor",
    "FlowRecipe", "HPLCInput", "HPLCOutput", "Peak", "ReactInput", "ReactOutput", "SimulatorHook", "Species",
    "YieldPredictInput", "YieldPrediction", "analyse_chromatogram", "flow_reactor", "hplc", "measure_hplc",
    "run_flow_reaction"]
