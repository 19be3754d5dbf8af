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
from ppu.backends.registry import build_backend
from ppu.conformance import ConformanceCase
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

    def make_slow_backend(self, tmp_path: Path) -> Backend:
        """The same backend with runs that last seconds (abort and pause land mid-run)."""
        return self.make_backend(tmp_path)

    async def long_run(self, backend: Backend) -> TaskRun | None:
        """A run on the slow backend that an abort can interrupt; None: runs are too short to abort."""
        return None

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

    def test_progress_is_sane(self, tmp_path: Path) -> None:
        """Progress names the task, stays in [0, 1] and never goes back; a physical run reports some."""
        seen: dict[str, list[float]] = {}

        def record(task_id: str, fraction: float, message: str) -> None:
            seen.setdefault(task_id, []).append(fraction)

        async def body(b: Backend) -> tuple[list[TaskRun], list[Result]]:
            runs = await self.good_runs(b)
            return runs, await b.run(runs, record)

        runs, results = self.drive(tmp_path, body)
        ids = {r.task_id for r in runs}
        assert set(seen) <= ids, f"progress for tasks not in the batch: {set(seen) - ids}"
        for tid, fractions in seen.items():
            assert all(0.0 <= f <= 1.0 for f in fractions), (tid, fractions)
            assert fractions == sorted(fractions), f"progress of {tid} went back: {fractions}"
        if results and results[0].provenance and results[0].provenance.kind == "physical":
            assert ids <= set(seen), f"a physical run reports progress; silent: {ids - set(seen)}"

    def test_abort_interrupts_a_run_and_nothing_else(self, tmp_path: Path) -> None:
        """Abort mid-run: that run ends failed and interrupted, not retried blindly; the backend goes on."""

        async def main() -> None:
            backend = self.make_slow_backend(tmp_path)
            await backend.start()
            try:
                run = await self.long_run(backend)
                if run is None:  # runs too short to abort: an abort of nothing is harmless
                    await backend.abort("no-such-task")
                    return
                started = asyncio.Event()

                def on_progress(task_id: str, fraction: float, message: str) -> None:
                    if task_id == run.task_id:
                        started.set()

                fut = asyncio.ensure_future(backend.run([run], on_progress))
                await asyncio.wait_for(started.wait(), self.timeout_s)
                for _ in range(int(self.timeout_s / 0.1)):  # the plan may not have reached its engine yet
                    await backend.abort(run.task_id)
                    done, _pending = await asyncio.wait([fut], timeout=0.1)
                    if done:
                        break
                [res] = await asyncio.wait_for(fut, self.timeout_s)
                assert res.status == ResultStatus.failed and res.interrupted, res
                assert res.retryable is False  # a once task goes to a person, never re-run silently
            finally:
                await backend.close()

        asyncio.run(main())

    def test_pause_and_resume_answer_in_words(self, tmp_path: Path) -> None:
        """A lab-wide stop reaches every backend: pause and resume return what state it is in."""

        async def body(b: Backend) -> list[Result]:
            paused = await b.pause(True)
            resumed = await b.resume()
            assert isinstance(paused, str) and paused and isinstance(resumed, str) and resumed
            return await b.run(await self.good_runs(b), no_progress)  # still works after a resume

        results = self.drive(tmp_path, body)
        assert all(r.status == ResultStatus.succeeded for r in results), [r.error for r in results]

    def test_close_is_clean(self, tmp_path: Path) -> None:
        async def main() -> None:
            backend = self.make_backend(tmp_path)
            await backend.start()
            await backend.close()
            await backend.close()  # twice is fine

        asyncio.run(main())


class CaseContract(BackendContract):
    """The contract for one backend type of a pack, driven by the pack's conformance case."""

    case: ConformanceCase

    def make_backend(self, tmp_path: Path) -> Backend:
        self._tmp = tmp_path
        return build_backend(self.case.config(tmp_path))

    def make_slow_backend(self, tmp_path: Path) -> Backend:
        self._tmp = tmp_path
        return build_backend(self.case.config(tmp_path, slow=True))

    async def good_runs(self, backend: Backend) -> list[TaskRun]:
        return await self.case.good_runs(backend, self._tmp)

    def bad_run(self) -> TaskRun:
        return self.case.bad_run()

    async def long_run(self, backend: Backend) -> TaskRun | None:
        return await self.case.long_run(backend, self._tmp)


def run_now(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


__all__ = ["BackendContract", "CaseContract", "no_progress", "pytest"]
