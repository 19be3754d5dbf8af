"""Winding a campaign down when its driver stops early (a cancelled or crashed flow run).

Through the client only, so it works on a live lab and on a store opened offline alike. Every
live task of the campaign is cancelled (a running plan is aborted by its worker; ``once`` work
that was interrupted goes to review as always) except tasks that already wait for a person
(``needs_review``): those are handed over, never decided here. What could not be brought to an end
within ``wait_s`` is handed over too, with its state and backend, so that the report says exactly
what is left and who has it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

from ppu.errors import NotAllowed
from ppu.models import TERMINAL_STATES, Task, TaskState
from ppu.protocol import MAX_LIST_ROWS


async def _campaign_tasks(client: Any, campaign: str) -> list[Task]:
    return list(await client.tasks(campaign=campaign, limit=100 * MAX_LIST_ROWS))


async def wind_down(client: Any, campaign: str, reason: str, wait_s: float = 30.0) -> dict[str, Any]:
    """Cancel the campaign's live tasks, wait up to ``wait_s`` for them to end, report what was done."""
    asked: list[str] = []
    deadline = time.monotonic() + wait_s
    while True:
        after = {t.id: t for t in await _campaign_tasks(client, campaign)}
        live = [t for t in after.values() if t.state not in TERMINAL_STATES and t.state is not TaskState.needs_review]
        for t in live:  # and anything the driver submitted meanwhile
            if t.id in asked:
                continue
            try:
                await client.cancel(t.id, reason)
                asked.append(t.id)
            except NotAllowed:  # it ended meanwhile: reported below by its state
                pass
        if not live or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    return {
        "reason": reason,
        "cancel_requested": len(asked),
        "cancelled": sorted(t for t in asked if after.get(t) and after[t].state is TaskState.cancelled),
        "ended_otherwise": {t: after[t].state.value for t in asked
                            if t in after and after[t].state in TERMINAL_STATES
                            and after[t].state is not TaskState.cancelled},
        "handed_over": [{"task_id": t.id, "capability": t.capability, "state": t.state.value, "backend": t.backend,
                         "why": t.error or ("waits for a person: ppu review " + t.id
                                            if t.state is TaskState.needs_review else "still in flight")}
                        for t in after.values() if t.state not in TERMINAL_STATES],
        "tasks_by_state": dict(collections.Counter(t.state.value for t in after.values())),
        "tasks_by_capability": {cap: dict(collections.Counter(t.state.value for t in after.values()
                                                              if t.capability == cap))
                                for cap in sorted({t.capability for t in after.values()})},
    }
