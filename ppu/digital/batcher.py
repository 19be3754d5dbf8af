"""Dynamic batching: items that arrive one by one leave as one call of a blocking function.

:class:`MicroBatcher` sits between many awaiting coroutines and one blocking ``fn(items) ->
results`` (a forward pass). ``submit`` puts an item on a queue and awaits its own result; one
collector task per event loop takes the first waiting item, then keeps taking until the batch
holds ``max_batch`` items or ``max_wait_s`` has passed since that first item arrived, and runs
``fn`` on the batcher's executor (a dedicated thread or several), so the event loop never blocks. While
``fn`` runs, new items queue up; items that already waited their full time leave at once with
the next batch.

Up to ``depth`` batches are out at once (default 1: each batch is answered before the next is
collected). With ``depth=2`` and one executor thread, while one runs the next fills (until full, or
until the running one ends) and is queued on the executor, which starts it the moment the first
ends while the event loop hands the first batch's results out. That pays where ``fn`` waits on
another device (a GPU) and the CPU is free meanwhile. With ``parallel=True`` the executor runs
``depth`` batches side by side (a thread each: the torch backend's model instances), so a batch
leaves as soon as it is full or its first item has waited ``max_wait_s``, whatever else is out.

``fn`` must return one result per item, in order. If it raises, every item of that batch gets
the exception (a whole forward pass failed: e.g. out of memory); so that one bad item never spoils
a batch, ``fn`` answers a bad item with its own outcome instead of raising (the torch backend
encodes a whole batch inside ``fn`` and answers a row that does not encode with a failed Result).
A cancelled waiter's item is dropped if it has not left yet, and its result discarded if it has.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class MicroBatcher(Generic[I, O]):
    def __init__(self, fn: Callable[[list[I]], Sequence[O]], *, max_batch: int, max_wait_s: float,
                 executor: Executor | None = None, depth: int = 1, parallel: bool = False):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.executor = executor
        self.depth = depth
        self.parallel = parallel  # the executor runs `depth` batches at once: a full batch need not wait
        self.batch_sizes: list[int] = []  # every batch handed to fn, for tests and benchmarks
        self._loop: asyncio.AbstractEventLoop | None = None
        # A plain deque and two wake-up futures rather than asyncio.Queue + wait_for: wait_for makes a
        # task per item, which at thousands of items per second costs more than the bookkeeping.
        self._items: deque[tuple[I, asyncio.Future[O], float]] = deque()
        self._arrived: asyncio.Future[None] | None = None  # set when the queue stops being empty
        self._full: asyncio.Future[None] | None = None  # set when a batch's worth has arrived
        self._collector: asyncio.Task[None] | None = None

    def _ensure(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._collector is None or self._collector.done():
            # a new loop (tests, a restarted worker) gets a fresh queue and collector
            self._loop = loop
            self._items = deque()
            self._arrived = self._full = None
            self._collector = loop.create_task(self._collect(), name="ppu-microbatcher")
        return loop

    def put(self, item: I) -> asyncio.Future[O]:
        """Queue ``item`` and return the future of its result (no task is created per item)."""
        loop = self._ensure()
        fut: asyncio.Future[O] = loop.create_future()
        self._items.append((item, fut, time.monotonic()))
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)
        if self._full is not None and not self._full.done() and len(self._items) >= self.max_batch:
            self._full.set_result(None)
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

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        items = self._items
        out: set[asyncio.Future[None]] = set()  # batches handed to fn and not yet answered
        try:
            while True:
                if len(out) >= self.depth:  # as many batches out as allowed: wait for one to end
                    await asyncio.wait(out, return_when=asyncio.FIRST_COMPLETED)
                live = await self._next_batch(loop, items, out)
                if live is None:
                    continue
                done = loop.create_task(self._run(loop, live))
                out.add(done)
                done.add_done_callback(out.discard)
        finally:
            for t in out:  # closing: the batches out are cancelled with the collector
                t.cancel()

    async def _next_batch(self, loop: asyncio.AbstractEventLoop, items: deque[tuple[I, asyncio.Future[O], float]],
                          busy: set[asyncio.Future[None]]) -> list[tuple[I, asyncio.Future[O], float]] | None:
        """The next batch: the first waiting item, then more until full or its time is up (None: all cancelled).
        While a batch is out (``busy``) and the executor runs one at a time, the model cannot take this
        one before it ends: it fills until then."""
        if not items:
            self._arrived = loop.create_future()
            await self._arrived
            self._arrived = None
        if busy and not self.parallel and len(items) < self.max_batch:
            full = self._full = loop.create_future()
            try:
                await asyncio.wait([full, *busy], return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._full = None
        left = items[0][2] + self.max_wait_s - time.monotonic()
        if len(items) < self.max_batch and left > 0:
            full = self._full = loop.create_future()
            timer = loop.call_later(left, _wake, full)
            try:
                await full
            finally:
                timer.cancel()
                self._full = None
        live: list[tuple[I, asyncio.Future[O], float]] = []
        while items and len(live) < self.max_batch:
            entry = items.popleft()
            if not entry[1].done():  # a cancelled waiter's item is dropped
                live.append(entry)
        if not live:
            return None
        self.batch_sizes.append(len(live))
        return live

    async def _run(self, loop: asyncio.AbstractEventLoop, live: list[tuple[I, asyncio.Future[O], float]]) -> None:
        """One batch through ``fn`` on the executor; each waiter gets its result (or the batch's exception)."""
        batch = [b[0] for b in live]
        try:
            results = await loop.run_in_executor(self.executor, self.fn, batch)
            if len(results) != len(live):
                raise RuntimeError(f"batch function gave {len(results)} results for {len(live)} items")
        except Exception as exc:
            for _, fut, _ in live:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut, _), res in zip(live, results, strict=True):
            if not fut.done():
                fut.set_result(res)
