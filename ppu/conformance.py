"""What a pack ships so that the one backend contract (tests/conformance.py) runs on its backend types.

A pack names, per backend type, a *conformance case* (``Pack.conformance``: type ->
``"module:Class"``). The contract builds the backend from :meth:`ConformanceCase.config`, runs
:meth:`good_runs` (which must succeed), :meth:`bad_run` (which must fail alone), and
:meth:`long_run` (one that lasts long enough to be aborted mid-way; ``None`` for backends whose
runs are too short to abort). ``requires`` names optional modules; without them the case skips.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ppu.backends.base import Backend, TaskRun


class ConformanceCase:
    requires: tuple[str, ...] = ()

    def config(self, tmp_path: Path, *, slow: bool = False) -> dict[str, Any]:
        """The backend entry, as in a lab file; ``slow``: runs take seconds (for abort and pause)."""
        raise NotImplementedError

    async def good_runs(self, backend: Backend, tmp_path: Path) -> list[TaskRun]:
        """At least two runs that must succeed (may prepare, e.g. make a sample first)."""
        raise NotImplementedError

    def bad_run(self) -> TaskRun:
        """A run that must fail (bad input, unknown sample, a setpoint outside safe limits...)."""
        raise NotImplementedError

    async def long_run(self, backend: Backend, tmp_path: Path) -> TaskRun | None:
        """A run on a ``slow`` backend that an abort can interrupt (None: runs are too short to abort)."""
        return None
