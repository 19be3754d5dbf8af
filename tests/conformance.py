"""The backend contract as one abstract test suite (STYLE.md §4), subclassed once per backend.

A subclass says how to build its backend (``make_backend``), which runs must succeed
(``good_runs``, a coroutine so it may prepare, e.g. synthesise a sample first) and one run that
must fail (``bad_run``). Every backend, digital or physical, real or simulated, passes it.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ppu import capabilities
from ppu.backends.base import Backend, TaskRun
from ppu.models import BackendSpec, Result, ResultStatus

T = TypeVar("T")


def no_progress(task_id: str, fraction: float, message: str) -> None:
    return None


class BackendContract(abc.ABC):
    timeout_s: float = 30.0

    @abc.abstractmethod
    def make_backend(self, tmp_path: Path) -> Backend:
        """A fresh backend (not yet started)."""

    @abc.abstractmethod
    async def good_runs(self, backend: Backend) -> list[TaskRun]:
        """Runs that must succeed (at least two), prepared against the started backend."""

    @abc.abstractmethod
    def bad_run(self) -> TaskRun:
        """A run that must fail (bad input, unknown sample, a setpoint outside safe limits...)."""

    # ---- helpers ---------------------------------------------------------------------------

    def drive(self, tmp_path: Path, body: Callable[[Backend], Awaitable[T]]) -> T:
        async def main() -> T:
            backend = self.make_backend(tmp_path)
            await backend.start()
            try:
                return await asyncio.wait_for(body(backend), self.timeout_s)
            finally:
                await backend.close()

        return asyncio.run(main())

    # ---- the contract ------------------------------------------------------------------------

    def test_spec_is_valid(self, tmp_path: Path) -> None:
        backend = self.make_backend(tmp_path)
        spec = BackendSpec.model_validate(backend.spec().model_dump())
        assert spec.name == backend.name
        assert spec.kind == backend.kind
        for offer in spec.capabilities:
            capabilities.get(offer.name)  # every offered capability is known

    def test_results_one_per_run_in_order(self, tmp_path: Path) -> None:
        async def body(b: Backend) -> tuple[list[TaskRun], list[Result]]:
            runs = await self.good_runs(b)
            return runs, await b.run(runs, no_progress)

        runs, results = self.drive(tmp_path, body)
        assert len(results) == len(runs) >= 2
        for run, res in zip(runs, results, strict=True):
            assert (res.task_id, res.attempt) == (run.task_id, run.attempt)
            assert res.status == ResultStatus.succeeded, res.error
            assert res.provenance is not None and res.provenance.backend

    def test_outputs_validate(self, tmp_path: Path) -> None:
        async def body(b: Backend) -> tuple[list[TaskRun], list[Result]]:
            runs = await self.good_runs(b)
            return runs, await b.run(runs, no_progress)

        runs, results = self.drive(tmp_path, body)
        for run, res in zip(runs, results, strict=True):
            capabilities.validate_outputs(run.capability, res.outputs)

    def test_bad_item_fails_only_itself(self, tmp_path: Path) -> None:
        async def body(b: Backend) -> tuple[list[TaskRun], list[Result]]:
            good = await self.good_runs(b)
            runs = [good[0], self.bad_run(), good[1]]
            return runs, await b.run(runs, no_progress)

        runs, results = self.drive(tmp_path, body)
        assert [r.task_id for r in results] == [r.task_id for r in runs]
        assert [r.status for r in results] == [ResultStatus.succeeded, ResultStatus.failed, ResultStatus.succeeded]
        assert results[1].error

    def test_close_is_clean(self, tmp_path: Path) -> None:
        async def main() -> None:
            backend = self.make_backend(tmp_path)
            await backend.start()
            await backend.close()
            await backend.close()  # twice is fine

        asyncio.run(main())


def run_now(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


__all__ = ["BackendContract", "no_progress", "pytest"]
