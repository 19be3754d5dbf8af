"""Closed-loop campaigns (issue 6): screen on the digital twin, then BO with pending points on the lab.

Public surface: :class:`CampaignConfig` / :func:`load_campaign`, :class:`PoolOptimizer`,
:class:`LabCampaign` / :func:`load_lab_campaign` / :func:`run_lab_campaign` (a declared problem on a lab file),
:func:`run_campaign` (async, through the PPU client), :func:`run_campaign_cli` (progress bar,
summary table, plots) and :func:`simulate` (the same loop on a simulated clock, for baselines).
Loaded lazily: reading a campaign config does not import BoTorch or matplotlib.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ppu.lazy import exports

_MODULES = {
    ".config": ("CampaignConfig", "load_campaign"),
    ".optimizer": ("Decision", "PoolOptimizer"),
    ".report": ("run_campaign_cli",),
    ".runner": ("CampaignLoop", "CampaignResult", "run_campaign"),
    ".simclock": ("simulate",),
    ".declared": ("LabCampaign", "load_lab_campaign", "run_lab_campaign"),
}
__all__ = ["CampaignConfig", "CampaignLoop", "CampaignResult", "Decision", "LabCampaign", "PoolOptimizer",
           "load_campaign", "load_lab_campaign", "run_campaign", "run_campaign_cli", "run_lab_campaign", "simulate"]

if TYPE_CHECKING:
    from ppu.campaign.config import CampaignConfig, load_campaign
    from ppu.campaign.declared import LabCampaign, load_lab_campaign, run_lab_campaign
    from ppu.campaign.optimizer import Decision, PoolOptimizer
    from ppu.campaign.report import run_campaign_cli
    from ppu.campaign.runner import CampaignLoop, CampaignResult, run_campaign
    from ppu.campaign.simclock import simulate


__getattr__, __dir__ = exports(__name__, _MODULES)
