"""Prefect flows for campaigns (installed as ppu.flows)."""
