"""The MOF lab's drivers (installed as ppu.drivers.mof): EPICS device classes, Bluesky plans, analysis.

Each instrument module has an EPICS class and its plans; the simulated twins with the same
component names, and the factories with the one ``simulated`` switch, are in
``ppu.simulators.mof.devices``. Nothing here imports a simulator.

Loaded lazily (:mod:`ppu.lazy`): importing the package, as loading its pack does, imports none of
the modules below until one of their names is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ppu.lazy import exports

if TYPE_CHECKING:
    from ppu.drivers.mof.analysis import IsothermFit, PhaseFit, fit_langmuir, identify_phases, tauc_band_gap
    from ppu.drivers.mof.sorption import EpicsGasSorption, isotherm_pressures, measure_isotherm
    from ppu.drivers.mof.synthesis import EpicsSynthesisRobot, synthesize
    from ppu.drivers.mof.transfer import EpicsSampleTransfer, transfer
    from ppu.drivers.mof.uvvis import EpicsUVVis, measure_uvvis
    from ppu.drivers.mof.xrd import EpicsXRD, measure_xrd

_MODULES = {
    ".analysis": ("IsothermFit", "PhaseFit", "fit_langmuir", "identify_phases", "tauc_band_gap"),
    ".sorption": ("EpicsGasSorption", "isotherm_pressures", "measure_isotherm"),
    ".synthesis": ("EpicsSynthesisRobot", "synthesize"),
    ".transfer": ("EpicsSampleTransfer", "transfer"),
    ".uvvis": ("EpicsUVVis", "measure_uvvis"),
    ".xrd": ("EpicsXRD", "measure_xrd"),
}
__getattr__, __dir__ = exports(__name__, _MODULES)

__all__ = ["EpicsGasSorption", "EpicsSampleTransfer", "EpicsSynthesisRobot", "EpicsUVVis", "EpicsXRD",
    "IsothermFit", "PhaseFit", "fit_langmuir", "identify_phases", "isotherm_pressures", "measure_isotherm",
    "measure_uvvis", "measure_xrd", "synthesize", "tauc_band_gap", "transfer"]
