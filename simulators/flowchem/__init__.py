"""The simulated flow-chemistry lab (installed as ppu.simulators.flowchem).

A kinetic world (``world``), instrument models that turn it into raw signals (``instruments``),
the fraction register shared by one lab's devices (``lab``), simulator hooks for the drivers'
simulated builds (``devices``), the physical backends (``backends``), the digital twin (``twin``),
the closed loop (``campaign``) and the pack's registration (``pack.register``).
"""

from ppu.simulators.flowchem.instruments import FaultConfig, FlowReactorModel, HPLCModel, InstrumentFault
from ppu.simulators.flowchem.lab import FlowLab, FractionRecord, UnknownFractionError
from ppu.simulators.flowchem.pack import register
from ppu.simulators.flowchem.world import FlowWorld, FlowWorldConfig, ReactionOutcome, recipe_from

__all__ = [
    "FaultConfig", "FlowLab", "FlowReactorModel", "FlowWorld", "FlowWorldConfig", "FractionRecord", "HPLCModel",
    "InstrumentFault", "ReactionOutcome", "UnknownFractionError", "recipe_from", "register",
]
