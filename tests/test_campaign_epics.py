"""The closed loop with every instrument an EPICS IOC (`ppu ioc`, a process of its own), driven over Channel
Access. Its own module: two IOC servers on one loopback port would split the searches between them."""

from __future__ import annotations

from pathlib import Path

from ppu.campaign import CampaignConfig
from ppu.campaign.report import run_campaign_cli
from ppu.store import Store, sqlite_url


def test_closed_loop_campaign_over_channel_access(tmp_path: Path) -> None:
    """The closed loop (propose, synthesise, XRD, isotherm, learn) with every instrument an IOC."""
    from rich.console import Console

    cfg = CampaignConfig.model_validate({
        "name": "ca", "seed": 1, "time_scale": 20_000, "instruments": "epics",
        "world": {"seed": 0, "pool_size": 60}, "budget": {"max_syntheses": 4, "instrument_hours": 2000},
        "screening": {"enabled": False}, "parallel": {"synthesis_robots": 2, "queue_ahead": 1, "n_init": 2}})
    run_dir = tmp_path / "run"
    with (tmp_path / "out.txt").open("w") as fh:
        summary = run_campaign_cli("unused.yaml", run_dir, Console(file=fh), config=cfg)
    assert summary["physical_experiments"] == 4
    assert "IOCs of lab ca" in (run_dir / "ioc.log").read_text()
    # every physical result came from an EPICS device (its PV prefix), none from a simulated one
    store = Store(sqlite_url(run_dir / "ppu.sqlite"))
    try:
        results = [store.final_result(t.id) for t in store.list_tasks(limit=10_000)]
    finally:
        store.close()
    devices = {r.provenance.device for r in results if r is not None and r.provenance.device}
    assert devices and all(d.endswith(":") for d in devices), devices  # PV prefixes, never "simulated"
