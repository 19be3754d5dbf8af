"""One Bluesky RunEngine on a thread of its own, driven from an asyncio loop.

Where the loops live (three threads per physical backend):

- the worker's asyncio loop (the caller): :meth:`RunEngineHost.submit` returns a
  ``concurrent.futures.Future`` that the backend awaits with ``asyncio.wrap_future``, so the worker
  loop never blocks and keeps heartbeating while a plan runs for hours;
- the *RE thread* (``ppu-re-<name>``), created here: it builds the RunEngine (inside itself, with
  ``context_managers=[]`` because the default SIGINT handler can only be installed on the main
  thread) and then takes plans from a queue one at a time; ``RE(plan)`` blocks this thread;
- the RunEngine's own asyncio loop, on the ``bluesky-run-engine`` thread the RunEngine starts, where
  Bluesky actually processes messages and waits on device statuses.

Pause/resume/abort are thread-safe: ``request_pause`` and ``abort`` go to the RunEngine's loop via
its own ``run_coroutine_threadsafe`` calls; ``resume`` (which blocks until the plan ends) is handed
to the RE thread, which waits for it while the RunEngine is paused.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bluesky import RunEngine
from bluesky.suspenders import SuspenderBase
from bluesky.utils import DuringTask, Msg, RunEngineInterrupted

Document = tuple[str, dict[str, Any]]
log = logging.getLogger(__name__)


@dataclass
class PlanOutcome:
    """How one plan ended, with every document it emitted."""

    exit_status: str  # "success", "abort", "fail", or "halt"
    run_uids: list[str] = field(default_factory=list)
    documents: list[Document] = field(default_factory=list)
    error: str | None = None
    interrupted: bool = False
    messages: int = 0

    @property
    def ok(self) -> bool:
        return self.exit_status == "success" and not self.interrupted and self.error is None


@dataclass
class _Job:
    key: str
    plan: Callable[[], Iterable[Msg]]
    future: concurrent.futures.Future[PlanOutcome]
    docs: list[Document] = field(default_factory=list)
    aborted: str | None = None
    on_document: Callable[[str, dict[str, Any]], None] | None = None  # streams each document as it comes


class LabScanIds:
    """``scan_id`` continuous across every RunEngine of a lab (and across restarts): one counter file under the
    lab's run folder, advanced under an exclusive file lock, so the lab's documents go 1, 2, 3, ... rather than
    1, 1, 2, 2 (one counter per RunEngine). Instruments on other machines share it through that folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __call__(self, md: MutableMapping[str, Any] | None = None) -> int:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            text = fh.read().strip()
            n = (int(text) if text.isdigit() else 0) + 1
            fh.seek(0)
            fh.truncate()
            fh.write(str(n))
            fh.flush()
            os.fsync(fh.fileno())
        return n


class RunEngineHost:
    def __init__(self, name: str, *, md: dict[str, Any] | None = None,
                 scan_ids: Callable[[MutableMapping[str, Any]], int] | None = None,
                 suspenders: Iterable[SuspenderBase] = ()):
        self.name = name
        self._suspenders = list(suspenders)
        self._md = md or {}
        self._scan_ids = scan_ids
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._control: queue.Queue[tuple[str, str]] = queue.Queue()
        self._ready = threading.Event()
        self._current: _Job | None = None
        self._lock = threading.Lock()
        self.RE: RunEngine | None = None
        self.messages_sent = 0  # every Msg the RunEngine processed (safe-limit tests check it stays 0)
        self._thread = threading.Thread(target=self._main, name=f"ppu-re-{name}", daemon=True)
        self._startup_error: BaseException | None = None

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        if self._thread.is_alive():
            return
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"RunEngine thread of {self.name} did not start within {timeout} s")
        if self._startup_error:
            raise RuntimeError(f"RunEngine of {self.name} failed to start: {self._startup_error}")

    def close(self, timeout: float = 10.0) -> None:
        if not self._thread.is_alive():
            return
        with self._lock:
            job = self._current
        if job is not None:
            self.abort(job.key, "backend closing")
        self._jobs.put(None)
        self._thread.join(timeout)
        if self.RE is not None:  # stop and close the RunEngine's own loop, or it leaks sockets
            self.RE.log.logger.removeFilter(self._quiet_requested_abort)
            loop = self.RE.loop
            loop.call_soon_threadsafe(loop.stop)
            self.RE._th.join(timeout)
            if not loop.is_running():
                loop.close()

    # ---- the RE thread ----------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self.RE = RunEngine(dict(self._md), context_managers=[], during_task=DuringTask())
            if self._scan_ids is not None:
                self.RE.scan_id_source = self._scan_ids

            def count(msg: Msg) -> None:
                self.messages_sent += 1

            self.RE.msg_hook = count  # type: ignore[assignment]
            self.RE.subscribe(self._on_document)
            self.RE.log.logger.addFilter(self._quiet_requested_abort)
            for sus in self._suspenders:
                self.RE.install_suspender(sus)
        except BaseException as exc:  # reported by start()
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if job.future.set_running_or_notify_cancel():
                self._execute(job)

    def _quiet_requested_abort(self, record: logging.LogRecord) -> bool:
        """An abort we asked for is no error: Bluesky's "Run aborted" traceback becomes one info line."""
        job = self._current
        if (getattr(record, "RE", None) is self.RE and record.getMessage() == "Run aborted"
                and job is not None and job.aborted is not None):
            log.info("plan of %s aborted on %s: %s", job.key, self.name, job.aborted)
            return False
        return True

    def _on_document(self, name: str, doc: dict[str, Any]) -> None:
        job = self._current
        if job is not None:
            job.docs.append((name, doc))
            if job.on_document is not None:
                try:
                    job.on_document(name, doc)
                except Exception:  # keeping documents never fails the plan (the stream logs its own)
                    pass

    def _execute(self, job: _Job) -> None:
        assert self.RE is not None
        RE = self.RE
        with self._lock:
            self._current = job
        start_count = self.messages_sent
        error: str | None = None
        interrupted = False
        never_started = job.aborted is not None
        try:
            if not never_started:
                try:
                    RE(job.plan())
                except RunEngineInterrupted:
                    interrupted = not self._wait_while_paused(job)
        except Exception as exc:  # a device fault or a plan error: the run closed with exit_status 'fail'
            cause = exc.__cause__ or exc.__context__  # FailedStatus hides the device's own error
            error = f"{type(exc).__name__}: {exc}" + (f" caused by {type(cause).__name__}: {cause}" if cause else "")
        finally:
            with self._lock:
                self._current = None
        stops = [d for n, d in job.docs if n == "stop"]
        status = "success"
        for s in stops:
            if s.get("exit_status") != "success":
                status = s.get("exit_status", "fail")
                error = error or s.get("reason") or None
        if never_started:
            job.future.set_result(PlanOutcome(exit_status="abort", error=f"aborted before it started ({job.aborted});"
                                              " nothing moved"))
            return
        if job.aborted is not None:
            status, interrupted = "abort", True
            error = error or f"aborted: {job.aborted}"
        if error and status == "success":
            status = "fail"
        job.future.set_result(PlanOutcome(
            exit_status=status, run_uids=[d["uid"] for n, d in job.docs if n == "start"], documents=job.docs,
            error=error, interrupted=interrupted or status != "success", messages=self.messages_sent - start_count))

    def _wait_while_paused(self, job: _Job) -> bool:
        """The RunEngine paused: wait here (on the RE thread) for resume or abort. True: resumed to the end."""
        assert self.RE is not None
        RE = self.RE
        while RE.state == "paused":
            try:
                cmd, reason = self._control.get(timeout=0.05)
            except queue.Empty:
                continue
            if cmd == "resume":
                try:
                    RE.resume()
                except RunEngineInterrupted:
                    continue
                return job.aborted is None
            if cmd == "abort":
                job.aborted = job.aborted or reason
                try:
                    RE.abort(reason)
                except RunEngineInterrupted:
                    pass
                return False
        return False

    # ---- the caller's side (any thread) -----------------------------------------------------

    def submit(self, key: str, plan: Callable[[], Iterable[Msg]],
               on_document: Callable[[str, dict[str, Any]], None] | None = None,
               ) -> concurrent.futures.Future[PlanOutcome]:
        """Queue ``plan()`` (built on the RE thread) under ``key`` (the task id).

        ``on_document(name, doc)`` is called on the RunEngine's thread for every document as it is
        emitted (a :class:`~ppu.backends.documents.DocumentStream`), so a crash mid-plan leaves the
        partial run wherever it streams to."""
        if not self._thread.is_alive():
            raise RuntimeError(f"RunEngine thread of {self.name} is not running (start() it first)")
        fut: concurrent.futures.Future[PlanOutcome] = concurrent.futures.Future()
        self._jobs.put(_Job(key=key, plan=plan, future=fut, on_document=on_document))
        return fut

    def running(self) -> str | None:
        """The key of the plan the RunEngine is on now (None: idle)."""
        with self._lock:
            return self._current.key if self._current is not None else None

    def suspension(self) -> list[str]:
        """Why plans here wait: the messages of the suspenders tripped now (empty: none is)."""
        return [str(s._tripped_message or s) for s in self._suspenders if s.tripped]

    @property
    def state(self) -> str:
        return str(self.RE.state) if self.RE is not None else "not started"

    def request_pause(self, defer: bool = False) -> str:
        """Pause the running plan.

        ``defer=False``: now; on resume the plan rewinds to its last checkpoint (a plan without
        one, like a long hold already under way, aborts). ``defer=True``: at the plan's next
        checkpoint, so a step that cannot be interrupted safely finishes first.
        """
        if self.RE is None or self.RE.state != "running":
            return f"nothing to pause (RunEngine {self.state})"
        with self._lock:
            job = self._current
        try:
            self.RE.request_pause(defer=defer)
        except Exception as exc:  # TransitionError: the plan ended meanwhile
            return f"pause not possible: {exc}"
        where = " at the next checkpoint" if defer else ""
        return f"pause requested{where}" + (f" (running {job.key})" if job is not None else "")

    def resume(self) -> str:
        if self.RE is None or self.RE.state != "paused":
            return f"nothing to resume (RunEngine {self.state})"
        self._control.put(("resume", ""))
        return "resume requested"

    def abort(self, key: str, reason: str = "aborted by request") -> bool:
        """Abort the plan running under ``key`` (or drop it if it has not started). True if found."""
        with self._lock:
            job = self._current
        if job is not None and job.key == key:
            job.aborted = reason
            if self.RE is not None and self.RE.state == "paused":
                self._control.put(("abort", reason))
            elif self.RE is not None and self.RE.state == "running":
                try:
                    self.RE.abort(reason)
                except Exception:  # the plan ended or paused meanwhile
                    if self.RE.state == "paused":
                        self._control.put(("abort", reason))
            return True
        with self._jobs.mutex:
            for queued in self._jobs.queue:
                if queued is not None and queued.key == key:
                    queued.aborted = reason
                    return True
        return False
