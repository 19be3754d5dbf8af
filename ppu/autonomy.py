"""Does a task need a person's approval before it may run? A pure function of the lab's policy.

``manual``: always. ``supervised``: when its cost is above the threshold, when a ``once`` task's
declared approval inputs (``Capability.approval_inputs``, e.g. a pack's process parameters) have
not yet run successfully, or when a setpoint lies within a margin of a safe limit. ``autonomous``:
never. The level is the strictest of the capability's and the candidate
backends' levels (a task not yet placed could land on any backend that offers it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ppu import capabilities
from ppu.config import AutonomyConfig
from ppu.models import ActionClass, Autonomy, BackendSpec, lookup_path

_ORDER = {Autonomy.autonomous: 0, Autonomy.supervised: 1, Autonomy.manual: 2}


def approval_key(view: dict[str, Any] | None) -> str | None:
    """A comparable key for a capability's declared approval inputs (None: nothing declared)."""
    return json.dumps(view, sort_keys=True) if view else None


def process_key(capability: str, inputs: dict[str, Any]) -> str | None:
    """The key of what a supervised policy compares for this task (its declared approval inputs)."""
    return approval_key(capabilities.get(capability).approval_view(inputs))


def level_for(capability: str, backends: Iterable[str], cfg: AutonomyConfig) -> Autonomy:
    levels = [cfg.capabilities.get(capability, cfg.default)]
    levels += [cfg.backends[b] for b in backends if b in cfg.backends]
    return max(levels, key=_ORDER.__getitem__)


def approval_reason(
    capability: str,
    action: ActionClass,
    inputs: dict[str, Any],
    candidates: list[BackendSpec],
    cfg: AutonomyConfig,
    known_processes: set[str],
) -> str | None:
    """Why this task must wait for a person, or None when it may run on its own."""
    level = level_for(capability, [b.name for b in candidates], cfg)
    if level is Autonomy.autonomous:
        return None
    if level is Autonomy.manual:
        return f"{capability} is under manual autonomy: every task needs approval"
    costs = [o.cost for b in candidates if (o := b.offer(capability))]
    if costs and min(costs) > cfg.cost_threshold:
        return f"cost {min(costs):g} is above the supervised threshold {cfg.cost_threshold:g}"
    key = process_key(capability, inputs)
    if action is ActionClass.once and key is not None and key not in known_processes:
        names = ", ".join(capabilities.get(capability).approval_inputs)
        return f"{names} outside the set already run successfully"
    for b in candidates:
        for path, lim in b.safe_limits.items():
            v = lookup_path(inputs, path)
            if not isinstance(v, int | float) or lim.min is None or lim.max is None:
                continue
            margin = cfg.limit_margin * (lim.max - lim.min)
            if v < lim.min + margin or v > lim.max - margin:
                return f"{path}={v} is within {cfg.limit_margin:.0%} of {b.name}'s safe limit"
    return None
