"""Bottleneck-instrument utilisation and makespan: PPU's asynchronous loop vs a naive loop.

The synthesis robots are the bottleneck (4.5 h per sample vs 13 min XRD and a 2.5 h isotherm only
for pure samples). PPU proposes a new candidate whenever a robot frees up (pending points), so
robots never wait for measurements; the naive loop synthesises one sample, measures it, then
proposes the next. Simulated clock, same optimiser, same world.

- lower bound (issue 6): total bottleneck work / its capacity = ceil(n / r) syntheses back to back;
- bottleneck utilisation: robot busy time / (r x the span from the first synthesis's start to the
  last one's end), i.e. how much of the time the robots had work to do they were doing it;
  utilisation over the whole makespan (which also holds the last sample's XRD and isotherm, which
  no loop can overlap with a synthesis) is printed beside it.

    python benchmarks/utilisation.py [--n 16] [--robots 2]
"""

from __future__ import annotations

import argparse
import json
import math

from ppu.campaign.config import CampaignConfig
from ppu.campaign.runner import build_world
from ppu.campaign.screening import screen_locally
from ppu.campaign.simclock import SYNTH_S, UPTAKE_S, XRD_S, SimRun, simulate


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
    lower = math.ceil(args.n / args.robots) * SYNTH_S

    def robot_figures(run: SimRun) -> tuple[float, float]:
        spans = [iv for iv in run.intervals if str(iv["backend"]).startswith("robot")]
        window = max(float(iv["end"]) for iv in spans) - min(float(iv["start"]) for iv in spans)
        busy = run.busy["robot"]
        return busy / (args.robots * window), busy / (args.robots * run.makespan_s)

    util, util_makespan = robot_figures(ppu)
    naive_util, naive_util_makespan = robot_figures(naive)  # naive leaves the other robots idle
    print(f"{args.n} syntheses, {args.robots} robots (synthesis {SYNTH_S / 3600:.1f} h, XRD {XRD_S / 60:.0f} min, "
          f"isotherm {UPTAKE_S / 3600:.1f} h)")
    print(f"{'loop':30s}{'makespan h':>11s}{'robot utilisation':>19s}{'over makespan':>15s}")
    print(f"{'lower bound (robot work / 2)':30s}{lower / 3600:11.1f}")
    print(f"{'PPU (pending points)':30s}{ppu.makespan_s / 3600:11.1f}{util:19.1%}{util_makespan:15.1%}")
    print(f"{'naive synthesise-then-measure':30s}{naive.makespan_s / 3600:11.1f}{naive_util:19.1%}"
          f"{naive_util_makespan:15.1%}")
    print(f"makespan / lower bound: PPU {ppu.makespan_s / lower:.3f} (target <= 1.10), naive "
          f"{naive.makespan_s / lower:.2f}; robot utilisation target >= 95 %")
    print(json.dumps({"bottleneck_utilisation": round(util, 4),
                      "makespan_over_lower_bound": round(ppu.makespan_s / lower, 4),
                      "naive_makespan_over_lower_bound": round(naive.makespan_s / lower, 4),
                      "bottleneck_utilisation_over_makespan": round(util_makespan, 4),
                      "naive_bottleneck_utilisation": round(naive_util, 4),
                      "makespan_h": round(ppu.makespan_s / 3600, 2), "lower_bound_h": round(lower / 3600, 2),
                      "syntheses": args.n, "robots": args.robots}))


if __name__ == "__main__":
    main()
