"""The journal: every change is durable before it is carried out or acknowledged (STYLE.md §2, §12).

The orchestrator hands each change (the scheduler's steps, audit entries, samples) to
:meth:`Journal.record`; the journal writes it to the store and only then calls back to carry it out
(assignments, answers, waiters). Group commit: the transport and the clock make their changes
inside :meth:`Journal.grouped`, which journals a burst in ONE transaction, on one journal thread,
in the order groups closed, so the loop never waits for an fsync. With ``durability: process`` a
commit is a write to the page cache, done on the loop, and the fsyncs (checkpoints) stay on the
journal thread. The start of ``repeatable`` work rides with the next commit (see ``_deferrable``).

Crash-only: the scheduler changes memory before the store commits, so a commit that fails leaves
memory ahead of disk. The journal then refuses everything (``JournalFailed``), sets
:attr:`Journal.failed`, and the orchestrator's process ends; a restart rebuilds from the store.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ppu.errors import JournalFailed
from ppu.events import Step
from ppu.models import ActionClass, AuditEntry, Sample, TaskState
from ppu.store import Rows, Store

log = logging.getLogger(__name__)


@dataclass
class _Group:
    """Changes journaled in one transaction; ``durable`` resolves once they are on disk."""

    durable: asyncio.Future[None]
    steps: list[Step] = field(default_factory=list)
    audits: list[AuditEntry] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    users: int = 0
    write: concurrent.futures.Future[None] | None = None  # on the journal thread

    def add(self, steps: list[Step], audits: list[AuditEntry], samples: list[Sample]) -> None:
        self.steps.extend(steps)
        self.audits.extend(audits)
        self.samples.extend(samples)


def _worth_journaling(steps: list[Step], audits: list[AuditEntry], samples: list[Sample]) -> bool:
    return bool(audits or samples or any(s.transitions or s.results or s.changed for s in steps))


# A change that nothing waits on and that a restart can do without: the start of a `repeatable`
# attempt (assigned -> running). It is written with the next commit (the attempt's result, the next
# submission, or the clock's group after DEFER_MAX_S), not in an fsync of its own. Lost in a crash,
# the task is rebuilt as `assigned` on the same backend, which a restart treats exactly like
# `running` (the worker says whether it still holds it; if not, repeatable work is retried). The
# start of `once` work is journaled at once: a reviewer must see that it ran.
DEFER_MAX_S = 0.25
CHECKPOINT_EVERY = 256  # inline commits (durability process) between two WAL checkpoints


def _deferrable(steps: list[Step], audits: list[AuditEntry], samples: list[Sample]) -> bool:
    if audits or samples:
        return False
    for s in steps:
        if s.results or len(s.changed) > len(s.transitions):
            return False
        for tr in s.transitions:
            rec = s.records.get(tr.task_id)
            if tr.dst is not TaskState.running or rec is None or rec.action is not ActionClass.repeatable:
                return False
    return True


class Journal:
    """Writes the orchestrator's changes durably, in order, in groups; carries each out once durable."""

    def __init__(self, store: Store, carry_out: Callable[[list[Step]], None]):
        self.store = store
        self._carry_out_all = carry_out
        self._open: _Group | None = None  # the group that record() adds to (inside grouped())
        self._pending = 0  # groups closed but not yet durable; while > 0 every change queues behind
        self._commit_lock = asyncio.Lock()  # FIFO: groups reach the disk in the order they closed
        self._commits: set[asyncio.Task[None]] = set()
        self._thread: ThreadPoolExecutor | None = None
        self._deferred: list[Step] = []  # journaled with the next commit (see _deferrable)
        # durability process: groups are written on the loop (no fsync per commit); see _close
        self._inline_writes = store.durability == "process"
        self._since_checkpoint = 0
        self._checkpoint: concurrent.futures.Future[None] | None = None
        self._deferred_at = 0.0
        self.fatal: JournalFailed | None = None
        self._poisoned = False  # set on the journal thread when a write failed
        self.failed = asyncio.Event()  # set when a commit failed: the process must end (crash-only)

    def start(self) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="ppu-journal")

    async def close(self) -> None:
        """Let every closed group reach the disk (or fail), write the deferred starts, stop the thread."""
        if self._commits:
            await asyncio.wait(list(self._commits))
        if self._deferred and self._thread is not None and self.fatal is None:
            try:
                self._thread.submit(self._write, self._rows([], [], [])).result()
            except Exception:
                log.exception("could not journal the last deferred starts (a restart rebuilds them as assigned)")
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None

    def check(self) -> None:
        """Raise JournalFailed once a commit failed: nothing may change any more."""
        if self.fatal is not None:
            raise self.fatal

    def record(self, steps: list[Step], audits: list[AuditEntry], samples: list[Sample]) -> None:
        """Journal one change made outside or inside a group, then carry it out: inside
        :meth:`grouped` it joins the open group; otherwise it is written now (or deferred, or needs
        no write) and carried out only once durable. Raises JournalFailed when the write failed."""
        if self._open is not None:  # inside grouped(): journaled and carried out at its end
            self._open.add(steps, audits, samples)
        elif not _worth_journaling(steps, audits, samples):
            self._carry_out_all(steps)
        elif _deferrable(steps, audits, samples):
            self._defer(steps)
            self._carry_out_all(steps)
        elif self._pending:
            # A direct caller (in-process API) while groups are on their way to disk: its return is
            # its acknowledgement, so it waits for its own write, queued behind theirs on the journal
            # thread (rare and short: the transport and the clock use grouped()).
            assert self._thread is not None
            try:
                self._thread.submit(self._write, self._rows(steps, audits, samples)).result()
            except Exception as exc:
                raise self.die(exc) from exc
            self._carry_out_all(steps)
        else:
            # Durable first: nothing below (assignments, answers, waiters) happens before this.
            try:
                self.store.write(self._rows(steps, audits, samples))
            except Exception as exc:
                raise self.die(exc) from exc
            self._carry_out_all(steps)
    @contextlib.asynccontextmanager
    async def grouped(self) -> AsyncIterator[None]:
        """Group commit: every change made inside is journaled in ONE transaction at the end.

        The transport handles a burst of messages inside one group and sends its answers (acks,
        replies) only after the group is durable, so "durable before acknowledged" still holds while
        the store fsyncs once per burst, on the journal thread, not on the loop. Raises
        :class:`~ppu.errors.JournalFailed` when the commit failed: nothing of it may be acknowledged.
        """
        if self.fatal is not None:
            raise self.fatal
        group = self._open or self._new_group()
        self._open = group
        group.users += 1
        try:
            yield
        finally:
            group.users -= 1
            if group.users == 0 and self._open is group:
                self._open = None
                self._close(group)
            await asyncio.shield(group.durable)

    def _new_group(self) -> _Group:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # a failure nobody awaits is no warning
        return _Group(durable=fut)

    def _close(self, group: _Group) -> None:
        """No more changes join this group: snapshot its rows now, write them behind the earlier ones."""
        inline = False  # durable once this returns: nothing ahead of it, and no fsync to wait for
        try:
            worth = _worth_journaling(group.steps, group.audits, group.samples)
            if worth and _deferrable(group.steps, group.audits, group.samples) and not self._deferred_due():
                self._defer(group.steps)  # no write of its own: it rides with the next commit
                inline = not self._pending
            elif worth or self._deferred_due():  # the clock's group writes a start deferred for long enough
                assert self._thread is not None, "start() the journal first"
                rows = self._rows(group.steps, group.audits, group.samples)
                if self._inline_writes and not self._pending:
                    # durability process: a commit is a write to the page cache (tens of microseconds),
                    # cheaper than two thread switches; the fsyncs (checkpoints) stay on the journal thread.
                    self._write(rows)
                    inline = True
                    self._checkpoint_now()
                else:  # queued now, so the journal thread writes groups in the order they closed
                    group.write = self._thread.submit(self._write, rows)
            else:
                inline = not self._pending
        except Exception as exc:
            group.durable.set_exception(self.die(exc))
            return
        if inline:
            self._carry_out_all(group.steps)
            group.durable.set_result(None)
            return
        self._pending += 1
        task = asyncio.get_running_loop().create_task(self._commit(group))
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)

    async def _commit(self, group: _Group) -> None:
        async with self._commit_lock:
            try:
                if self.fatal is not None:
                    raise self.fatal
                if group.write is not None:
                    await asyncio.wrap_future(group.write)
            except asyncio.CancelledError:  # the loop is going away; the thread finishes the write
                self._pending -= 1
                group.durable.cancel()
                raise
            except Exception as exc:
                self._pending -= 1
                group.durable.set_exception(exc if isinstance(exc, JournalFailed) else self.die(exc))
                return
            self._pending -= 1
            self._carry_out_all(group.steps)
            group.durable.set_result(None)

    def _checkpoint_now(self) -> None:
        """Every CHECKPOINT_EVERY inline commits, fold the WAL into the database on the journal thread."""
        self._since_checkpoint += 1
        if self._since_checkpoint < CHECKPOINT_EVERY or (self._checkpoint and not self._checkpoint.done()):
            return
        self._since_checkpoint = 0
        assert self._thread is not None
        self._checkpoint = self._thread.submit(self.store.checkpoint)

    def _defer(self, steps: list[Step]) -> None:
        if not self._deferred:
            self._deferred_at = time.monotonic()
        self._deferred.extend(steps)

    def _deferred_due(self) -> bool:
        return bool(self._deferred) and time.monotonic() - self._deferred_at >= DEFER_MAX_S

    def _rows(self, steps: list[Step], audits: list[AuditEntry], samples: list[Sample]) -> Rows:
        """The rows of the next commit, on the loop: the deferred steps first, then these (in order)."""
        if self._deferred:
            steps, self._deferred = [*self._deferred, *steps], []
        return self.store.prepare(steps, audits, samples)

    def _write(self, rows: Rows) -> None:
        """On the journal thread: once one write failed, none after it may land (memory went on)."""
        if self._poisoned:
            raise JournalFailed("an earlier journal write failed")
        try:
            self.store.write(rows)
        except BaseException:
            self._poisoned = True
            raise

    def die(self, exc: BaseException) -> JournalFailed:
        """A commit failed: memory is ahead of the journal. Refuse everything from now on and stop."""
        if self.fatal is None:
            self.fatal = JournalFailed(
                f"the journal could not be written ({type(exc).__name__}: {exc}); the orchestrator stops "
                "so that nothing unjournaled is acknowledged or carried out",
                hint="fix the store (disk full? read-only? database down?), then start the orchestrator "
                     "again: it rebuilds from the journal")
            log.critical("JOURNAL COMMIT FAILED, stopping (crash-only): %s", exc)
            self.failed.set()
        return self.fatal
