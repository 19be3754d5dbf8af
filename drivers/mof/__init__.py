"""The MOF lab's drivers (installed as ppu.drivers.mof): EPICS device classes, Bluesky plans, analysis.

Each instrument module has an EPICS class and its plans; the simulated twins with the same
component names, and the factories with the one ``simulated`` switch, are in
``ppu.simulators.mof.devices``. Nothing here imports a simulator.
"""

from ppu.drivers.mof.analysis import IsothermFit, PhaseFit, fit_langmuir, identify_phases, tauc_band_gap
from ppu.drivers.mof.sorption import EpicsGasSorption, isotherm_pressures, measure_isotherm
from ppu.drivers.mof.synthesis import EpicsSynthesisRobot, synthesize
from ppu.drivers.mof.transfer import EpicsSampleTransfer, transfer
from ppu.drivers.mof.uvvis import EpicsUVVis, measure_uvvis
from ppu.drivers.mof.xrd import EpicsXRD, measure_xrd

__all__ = [
    "EpicsGasSorption", "EpicsSampleTransfer", "EpicsSynthesisRobot", "EpicsUVVis", "EpicsXRD", "IsothermFit",
    "PhaseFit", "fit_langmuir", "identify_phases", "isotherm_pressures", "measure_isotherm", "measure_uvvis",
    "measure_xrd", "synthesize", "tauc_band_gap", "transfer",
]
