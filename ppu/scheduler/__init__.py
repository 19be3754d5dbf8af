"""The scheduler: a pure state machine (``handle(event) -> Step``) and the state it keeps.

:mod:`.scheduler` turns events into moves, :mod:`.placement` keeps the live tasks and backends and
places ready tasks, :mod:`.records` holds their compact records.
"""

from ppu.scheduler.placement import TRANSITIONS, SchedulerConfig
from ppu.scheduler.scheduler import Scheduler

__all__ = ["TRANSITIONS", "Scheduler", "SchedulerConfig"]
