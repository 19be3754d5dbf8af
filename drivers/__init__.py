"""Ophyd device classes and Bluesky plans per instrument type (installed as ppu.drivers)."""
