"""The orchestrator: the asyncio shell around the IO-free scheduler, and its parts.

:class:`Orchestrator` carries every change through the journal and out to the workers; its door
(:mod:`.door`), waits (:mod:`.waits`), event feed (:mod:`.feed`), sample registry changes
(:mod:`.samples`) and read views (:mod:`.view`) are its parts; :mod:`.links` is how it reaches the
workers, in-process (:class:`LocalWorker`) or over ZMQ (``ppu.transport``).
"""

from ppu.orchestrator.links import LocalWorker, WorkerLink
from ppu.orchestrator.orchestrator import Orchestrator

__all__ = ["LocalWorker", "Orchestrator", "WorkerLink"]
