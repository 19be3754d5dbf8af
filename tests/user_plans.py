"""A scientist's own plan, as a lab would keep it in its own module (used by test_user_plans.py)."""

from __future__ import annotations

from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
from bluesky.utils import MsgGenerator


def repeat_pattern(xrd: Any, sample_id: str, num: int = 2, md: dict[str, Any] | None = None) -> MsgGenerator[Any]:
    """Measure one sample's diffraction pattern `num` times (drift check)."""
    yield from bps.mv(xrd.sample_id, sample_id)
    return (yield from bp.count([xrd], num=num, md={**(md or {}), "sample_id": sample_id, "purpose": "drift check"}))
