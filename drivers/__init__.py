"""Ophyd devices, Bluesky plans and analysis, one subpackage per pack (installed as ppu.drivers).

Drivers never import ``ppu.simulators``: a real lab installs and runs them with no simulation.
"""
