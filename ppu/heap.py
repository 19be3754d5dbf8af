"""Keep the cyclic garbage collector off what a long-running process holds from its start.

An orchestrator or worker imports large libraries (pydantic, SQLAlchemy, torch, Bluesky) and
keeps them for its whole life; every full collection scanned that heap again. On a busy
orchestrator those collections took a fifth of the loop's time (``benchmarks/dispatch.py``,
issue 17.4). :func:`freeze_once` collects what is already garbage, then moves every surviving
object to the permanent generation (``gc.freeze``), once per process: objects made later (tasks,
results, a later lab in the same process) are collected as usual.
"""

from __future__ import annotations

import gc

_frozen = False


def freeze_once() -> None:
    global _frozen
    if _frozen:
        return
    _frozen = True
    gc.collect()
    gc.freeze()
