"""Dynamic batching: items that arrive one by one leave as one call of a blocking function.

:class:`MicroBatcher` sits between many awaiting coroutines and one blocking ``fn(items) ->
results`` (a forward pass). ``submit`` puts an item on a queue and awaits its own result; one
collector task per event loop takes the first waiting item, then keeps taking until the batch
holds ``max_batch`` items or ``max_wait_s`` has passed since that first item arrived, and runs
``fn`` on the batcher's executor (a dedicated thread), so the event loop never blocks. While
``fn`` runs, new items queue up; items that already waited their full time leave at once with
the next batch.

``fn`` must return one result per item, in order. If it raises, every item of that batch gets
the exception (a whole forward pass failed: e.g. out of memory); per-item checks (featurising a
candidate) belong before ``submit``, so that one bad item never spoils a batch. A cancelled
waiter's item is dropped if it has not left yet, and its result discarded if it has.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741


class MicroBatcher(Generic[I, O]):
    def __init__(self, fn: Callable[[list[I]], Sequence[O]], *, max_batch: int, max_wait_s: float,
                 executor: Executor | None = None):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.executor = executor
        self.batch_sizes: list[int] = []  # every batch handed to fn, for tests and benchmarks
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[I, asyncio.Future[O], float]] | None = None
        self._collector: asyncio.Task[None] | None = None

    def _ensure(self) -> asyncio.Queue[tuple[I, asyncio.Future[O], float]]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._queue is None or self._collector is None or self._collector.done():
            # a new loop (tests, a restarted worker) gets a fresh queue and collector
            self._loop = loop
            self._queue = asyncio.Queue()
            self._collector = loop.create_task(self._collect(self._queue), name="ppu-microbatcher")
        return self._queue

    def put(self, item: I) -> asyncio.Future[O]:
        """Queue ``item`` and return the future of its result (no task is created per item)."""
        queue = self._ensure()
        fut: asyncio.Future[O] = self._loop.create_future()  # type: ignore[union-attr]
        queue.put_nowait((item, fut, time.monotonic()))
        return fut

    async def submit(self, item: I) -> O:
        return await self.put(item)

    async def submit_many(self, items: Sequence[I]) -> list[O | BaseException]:
        """Submit all at once (they may share or span batches); one result or exception per item."""
        return list(await asyncio.gather(*(self.put(x) for x in items), return_exceptions=True))

    async def close(self) -> None:
        if self._collector is not None and not self._collector.done():
            self._collector.cancel()
            try:
                await self._collector
            except asyncio.CancelledError:
                pass
            except RuntimeError:  # the collector belonged to a loop that is gone
                pass
        self._collector = None

    async def _collect(self, queue: asyncio.Queue[tuple[I, asyncio.Future[O], float]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await queue.get()
            batch = [first]
            deadline = first[2] + self.max_wait_s
            while len(batch) < self.max_batch:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), left))
                except TimeoutError:
                    break
            live = [b for b in batch if not b[1].done()]
            if not live:
                continue
            self.batch_sizes.append(len(live))
            items = [b[0] for b in live]
            try:
                results = await loop.run_in_executor(self.executor, self.fn, items)
                if len(results) != len(live):
                    raise RuntimeError(f"batch function gave {len(results)} results for {len(live)} items")
            except Exception as exc:
                for _, fut, _ in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut, _), res in zip(live, results, strict=True):
                if not fut.done():
                    fut.set_result(res)
