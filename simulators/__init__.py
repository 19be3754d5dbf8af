"""Simulated labs, one subpackage per pack (installed as ppu.simulators): worlds and instrument twins.

Simulators depend on drivers (a twin is the driver's device on simulated signals), never the reverse.
"""
