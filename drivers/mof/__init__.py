"""Ophyd device classes and Bluesky plans per instrument type (installed as ppu.drivers).

Each instrument module has a simulated class (soft signals backed by ``ppu.simulators``), an EPICS
class with the same component names, a factory with one ``simulated`` switch, and its plans.
"""

from ppu.drivers.mof.analysis import IsothermFit, PhaseFit, fit_langmuir, identify_phases, tauc_band_gap
from ppu.drivers.mof.sorption import (
    EpicsGasSorption,
    GasSorptionAnalyzer,
    gas_sorption_analyzer,
    isotherm_pressures,
    measure_isotherm,
)
from ppu.drivers.mof.synthesis import EpicsSynthesisRobot, SynthesisRobot, synthesis_robot, synthesize
from ppu.drivers.mof.transfer import EpicsSampleTransfer, SampleTransfer, sample_transfer, transfer
from ppu.drivers.mof.uvvis import EpicsUVVis, UVVisSpectrometer, measure_uvvis, uvvis_spectrometer
from ppu.drivers.mof.xrd import EpicsXRD, XRDDiffractometer, measure_xrd, xrd_diffractometer

__all__ = [
    "EpicsGasSorption", "EpicsSampleTransfer", "EpicsSynthesisRobot", "EpicsUVVis", "EpicsXRD",
    "GasSorptionAnalyzer", "IsothermFit", "PhaseFit", "SampleTransfer", "SynthesisRobot", "UVVisSpectrometer",
    "XRDDiffractometer", "fit_langmuir", "gas_sorption_analyzer", "identify_phases", "isotherm_pressures",
    "measure_isotherm", "measure_uvvis", "measure_xrd", "sample_transfer", "synthesis_robot", "synthesize",
    "tauc_band_gap", "transfer", "uvvis_spectrometer", "xrd_diffractometer",
]
