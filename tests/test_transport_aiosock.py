"""The lean asyncio ZMQ socket (ppu/transport/aiosock.py) on real loopback sockets: order, bursts,
timeouts, a full queue that waits instead of dropping, and closing while a coroutine waits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import zmq

from ppu.transport.aiosock import AsyncSocket


@contextlib.asynccontextmanager
async def _pair(hwm: int = 1000) -> AsyncIterator[tuple[AsyncSocket, AsyncSocket]]:
    """A ROUTER and a DEALER (routing id d1) connected on loopback, closed afterwards."""
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for s in (router, dealer):
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, hwm)
        s.setsockopt(zmq.RCVHWM, hwm)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.setsockopt(zmq.ROUTING_ID, b"d1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    pair = AsyncSocket(router), AsyncSocket(dealer)
    try:
        yield pair
    finally:
        for sock in pair:
            sock.close()
        ctx.term()


def test_messages_arrive_in_order_and_replies_find_their_sender() -> None:
    async def main() -> None:
        async with _pair() as (router, dealer):
            for i in range(500):
                dealer.send_nowait([b"m", str(i).encode()])
            got: list[int] = []
            while len(got) < 500:
                frames = await router.recv_multipart()
                assert frames[0] == b"d1"
                got.append(int(frames[2]))
            assert got == list(range(500))
            assert router.recv_nowait() is None  # nothing more waiting: None, no exception
            await router.send_multipart([b"d1", b"pong"])
            assert await dealer.recv_multipart() == [b"pong"]

    asyncio.run(main())


def test_poll_times_out_then_wakes_for_a_message_sent_meanwhile() -> None:
    async def main() -> None:
        async with _pair() as (router, dealer):
            assert await dealer.poll(50) is False
            waiter = asyncio.ensure_future(router.recv_multipart(copy=False))
            await asyncio.sleep(0.05)
            assert not waiter.done()
            dealer.send_nowait([b"late"])
            frames = await asyncio.wait_for(waiter, 5)
            assert frames[1].bytes == b"late"

    asyncio.run(main())


def test_a_full_queue_makes_a_sender_wait_and_unknown_peers_raise() -> None:
    """With no peer reading, a blocking send waits (never drops), send_nowait raises zmq.Again; a ROUTER
    with ROUTER_MANDATORY raises EHOSTUNREACH for an identity it does not know."""
    async def main() -> None:
        async with _pair(hwm=5) as (router, dealer):
            router.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            with pytest.raises(zmq.ZMQError) as err:
                router.send_nowait([b"nobody", b"x"])
            assert err.value.errno == zmq.EHOSTUNREACH
            sent = 0
            with pytest.raises(zmq.Again):
                for _ in range(100_000):
                    dealer.send_nowait([b"x" * 1000])
                    sent += 1
            blocked = asyncio.ensure_future(dealer.send_multipart([b"last"]))  # waits for room, never drops
            got = 0
            while True:
                frames = await asyncio.wait_for(router.recv_multipart(), 10)
                got += 1
                if frames[1] == b"last":
                    break
            await asyncio.wait_for(blocked, 10)
            assert got == sent + 1  # every message arrived, the waiting one last

    asyncio.run(main())


def test_closing_wakes_a_waiting_reader_with_an_error() -> None:
    async def main() -> None:
        async with _pair() as (router, _):
            reader = asyncio.ensure_future(router.recv_multipart())
            await asyncio.sleep(0.05)
            router.close()  # closing twice (here, then by _pair) is harmless
            with pytest.raises(zmq.ZMQError):
                await asyncio.wait_for(reader, 5)

    asyncio.run(main())


def test_a_failed_send_that_takes_in_a_message_still_wakes_the_reader() -> None:
    """The flood that found it: a ROUTER's send to a peer that is gone fails, and in failing takes in a
    message another peer sent meanwhile, so the FD will not signal it. The reader must still get it."""
    import time as _time

    async def main() -> None:
        async with _pair() as (router, dealer):
            router.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            dealer.send_nowait([b"hello"])  # connects the peer
            assert (await asyncio.wait_for(router.recv_multipart(), 5))[1] == b"hello"
            reader = asyncio.ensure_future(router.recv_multipart())
            await asyncio.sleep(0.05)  # the reader waits on the FD
            dealer.send_nowait([b"second"])
            _time.sleep(0.2)  # the loop is held: the message reaches the router's queue, the FD is signalled
            with pytest.raises(zmq.ZMQError):
                router.send_nowait([b"gone-peer", b"x"])  # fails, and takes the signal in
            frames = await asyncio.wait_for(reader, 5)
            assert frames[1] == b"second"

    asyncio.run(main())
