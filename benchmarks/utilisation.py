"""Bottleneck-instrument utilisation and makespan: PPU's asynchronous loop vs a naive loop.

The synthesis robots are the bottleneck (4.5 h per sample vs 13 min XRD and a 2.5 h isotherm only
for pure samples). PPU proposes a new candidate whenever a robot frees up (pending points), so
robots never wait for measurements; the naive loop synthesises one sample, measures it, then
proposes the next. Lower bound for n syntheses on r robots: ceil(n / r) syntheses back to back
plus the last sample's XRD (its isotherm only if it is pure). Simulated clock, same optimiser, same world.

    python benchmarks/utilisation.py [--n 16] [--robots 2]
"""

from __future__ import annotations

import argparse
import json
import math

from ppu.campaign.config import CampaignConfig
from ppu.campaign.runner import build_world
from ppu.campaign.screening import screen_locally
from ppu.campaign.simclock import SYNTH_S, UPTAKE_S, XRD_S, simulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="syntheses in the campaign")
    ap.add_argument("--robots", type=int, default=2)
    args = ap.parse_args()
    cfg = CampaignConfig.model_validate({"world": {"pool_size": 300}, "budget": {"max_syntheses": args.n},
                                         "parallel": {"synthesis_robots": args.robots}})
    world, pool = build_world(cfg)
    screen = screen_locally(world, pool, cfg)
    ppu = simulate(cfg, world, pool, "ppu", seed=0, screen=screen)
    naive = simulate(cfg, world, pool, "ppu", seed=0, screen=screen, naive=True)
    lower = math.ceil(args.n / args.robots) * SYNTH_S + XRD_S
    util = ppu.busy["robot"] / (args.robots * ppu.makespan_s)
    naive_util = naive.busy["robot"] / (args.robots * naive.makespan_s)  # it leaves the other robots idle
    print(f"{args.n} syntheses, {args.robots} robots (synthesis {SYNTH_S / 3600:.1f} h, XRD {XRD_S / 60:.0f} min, "
          f"isotherm {UPTAKE_S / 3600:.1f} h)")
    print(f"{'loop':28s}{'makespan h':>12s}{'robot utilisation':>20s}")
    print(f"{'lower bound':28s}{lower / 3600:12.1f}{'':>20s}")
    print(f"{'PPU (pending points)':28s}{ppu.makespan_s / 3600:12.1f}{util:20.0%}")
    print(f"{'naive synthesise-then-measure':28s}{naive.makespan_s / 3600:12.1f}{naive_util:20.0%}")
    print(f"makespan / lower bound: PPU {ppu.makespan_s / lower:.3f}, naive {naive.makespan_s / lower:.2f}")
    print(json.dumps({"utilisation": util, "makespan_s": ppu.makespan_s, "lower_bound_s": lower,
                      "naive_makespan_s": naive.makespan_s, "naive_utilisation": naive_util,
                      "syntheses": args.n, "robots": args.robots}))


if __name__ == "__main__":
    main()
