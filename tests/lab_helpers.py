"""A simulated instrument's lab-file entry and an asyncio wait for a condition, for in-process lab tests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any


def phys(tmp_path: Path, type_: str, name: str, lab: str = "humans", **kw: Any) -> dict[str, Any]:
    return {"type": type_, "name": name, "simulated": True, "time_scale": 1e4, "run_dir": str(tmp_path / "run"),
            "lab": lab, "world": {"seed": 5}, "seed": 1, **kw}


async def until(cond: Any, timeout: float = 15.0) -> None:
    t0 = asyncio.get_running_loop().time()
    while not cond():
        if asyncio.get_running_loop().time() - t0 > timeout:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)
