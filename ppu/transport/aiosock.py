"""A ZeroMQ socket on the asyncio loop in the fewest steps: the server's, the worker's and the client's.

``zmq.asyncio`` makes a future, registers interest and walks ``zmq.Event`` flag enums on every
send and receive; at one task at a time (8 messages, each a send and a receive) that was over half
of the event loop's CPU per task (``benchmarks/dispatch.py``, profiled). :class:`AsyncSocket` keeps
a plain ``zmq.Socket`` and does only what asyncio needs:

- sends and receives are tried at once with ``NOBLOCK`` (nearly always they succeed); only when
  they would block does a coroutine wait, on a future woken by the socket's ``ZMQ_FD``;
- ``ZMQ_FD`` signals that the socket's state may have changed, not that a message is there, and any
  call into the socket (a send, a receive, even reading ``ZMQ_EVENTS``) may take in a change
  without the FD signalling again (the rule of the ZMQ reference for ``ZMQ_FD``). So after every
  such call, failed sends included, ``ZMQ_EVENTS`` is read and every coroutine waiting for what it
  shows is woken: a send that failed for one peer must not leave a message from another unread.

One coroutine receives on a socket at a time (each user has one reader loop); any may send.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import zmq

_EVENTS = int(zmq.EVENTS)
_FD = int(zmq.FD)
POLLIN = int(zmq.POLLIN)
POLLOUT = int(zmq.POLLOUT)
_NOBLOCK = int(zmq.NOBLOCK)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class AsyncSocket:
    """``sock`` (configured, bound or connected) driven by the running loop; see the module docstring."""

    def __init__(self, sock: zmq.Socket[Any]):
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._fd = int(sock.getsockopt(_FD))
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # (POLLIN or POLLOUT, woken when it holds)
        self._loop.add_reader(self._fd, self._on_fd)
        self.closed = False

    # ---- readiness ---------------------------------------------------------------------------

    def events(self) -> int:
        """ZMQ_EVENTS now; whoever waits for what it shows is woken (the read may have taken in a change)."""
        ev = int(self.sock.getsockopt(_EVENTS))
        if ev and self._waiters:
            keep = []
            for flag, fut in self._waiters:
                if flag & ev:
                    _wake(fut)
                else:
                    keep.append((flag, fut))
            self._waiters = keep
        return ev

    def _on_fd(self) -> None:
        if not self.closed:
            self.events()  # takes in what changed, clears the FD's signal, wakes who can go on

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, []
        for _, fut in waiters:
            _wake(fut)

    async def wait(self, flag: int, timeout: float | None = None) -> bool:
        """Until ``flag`` (POLLIN / POLLOUT) holds; False when ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.closed:
                raise zmq.ZMQError(zmq.ENOTSOCK, "socket closed")
            if self.events() & flag:
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            fut = self._loop.create_future()
            entry = (flag, fut)
            self._waiters.append(entry)
            timer = None if left is None else self._loop.call_later(left, _wake, fut)
            try:
                await fut
            finally:
                if timer is not None:
                    timer.cancel()
                if entry in self._waiters:
                    self._waiters.remove(entry)

    async def poll(self, timeout_ms: float | None = None) -> bool:
        """True when a message can be received (``timeout_ms``: how long to wait for one)."""
        return await self.wait(POLLIN, None if timeout_ms is None else timeout_ms / 1000)

    # ---- receiving ---------------------------------------------------------------------------

    def recv_nowait(self, copy: bool = True) -> list[Any] | None:
        """The next message, or None when none is waiting (asked of ZMQ_EVENTS: no exception raised)."""
        if not self.events() & POLLIN:
            return None
        try:
            return self.sock.recv_multipart(_NOBLOCK, copy=copy)
        except zmq.Again:
            return None
        finally:
            if self._waiters:
                self.events()

    async def recv_multipart(self, copy: bool = True) -> list[Any]:
        while True:
            frames = self.recv_nowait(copy)
            if frames is not None:
                return frames
            await self.wait(POLLIN)

    # ---- sending -----------------------------------------------------------------------------

    def send_nowait(self, frames: list[Any], copy: bool = True) -> None:
        """Send now or raise (``zmq.Again`` when the queue is full, ``EHOSTUNREACH`` for an unknown peer)."""
        try:
            self.sock.send_multipart(frames, _NOBLOCK, copy=copy)
        finally:  # sent or not, the call may have taken in a change that the FD will not signal again
            if self._waiters:
                self.events()

    async def send_multipart(self, frames: list[Any], copy: bool = True) -> None:
        """Send, waiting while the queue is full."""
        while True:
            try:
                self.send_nowait(frames, copy)
                return
            except zmq.Again:
                await self.wait(POLLOUT)

    # ---- the rest ----------------------------------------------------------------------------

    def getsockopt(self, option: int) -> Any:
        return self.sock.getsockopt(option)

    def close(self, linger: int = 0) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._loop.remove_reader(self._fd)
        except Exception:  # the loop is closed already: nothing to unregister
            pass
        self._wake_all()
        self.sock.close(linger=linger)
