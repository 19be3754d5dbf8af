"""The simulated flow-chemistry lab (installed as ppu.simulators.flowchem).

A kinetic world (``world``), instrument models that turn it into raw signals (``instruments``),
the fraction register shared by one lab's devices (``lab``), simulator hooks for the drivers'
simulated builds (``devices``), the physical backends (``backends``), the digital twin (``twin``),
the closed loop (``campaign``) and the pack's registration (``pack.register``).

Loaded lazily (:mod:`ppu.lazy`): importing the package, as loading its pack does, imports none of
the modules below until one of their names is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ppu.lazy import exports

if TYPE_CHECKING:
    from ppu.simulators.flowchem.instruments import FaultConfig, FlowReactorModel, HPLCModel, InstrumentFault
    from ppu.simulators.flowchem.lab import FlowLab, FractionRecord, UnknownFractionError
    from ppu.simulators.flowchem.pack import register
    from ppu.simulators.flowchem.world import FlowWorld, FlowWorldConfig, ReactionOutcome, recipe_from

_MODULES = {
    ".instruments": ("FaultConfig", "FlowReactorModel", "HPLCModel", "InstrumentFault"),
    ".lab": ("FlowLab", "FractionRecord", "UnknownFractionError"),
    ".pack": ("register",),
    ".world": ("FlowWorld", "FlowWorldConfig", "ReactionOutcome", "recipe_from"),
}
__getattr__, __dir__ = exports(__name__, _MODULES)

__all__ = ["FaultConfig", "FlowLab", "FlowReactorModel", "FlowWorld", "FlowWorldConfig", "FractionRecord",
    "HPLCModel", "InstrumentFault", "ReactionOutcome", "UnknownFractionError", "recipe_from", "register"]
