"""The simulated lab: a hidden world and instrument models (installed as ppu.simulators)."""
