"""A TCP line between clients and an orchestrator that can go silent without closing (tests only).

Run as its own process, as a network is: ``python silent_line.py LISTEN_PORT UPSTREAM_PORT STATE_DIR``.
It forwards every connection to the upstream port on loopback. On SIGUSR1 the connections it carries
go silent: nothing more is read or written on either side, and nothing is closed, as when a NAT or
firewall drops a flow's state or a host vanishes without a word. New connections are forwarded as
before, but only once ``STATE_DIR/hold`` does not exist (while it does, they are accepted and wait, as
on a network still down). It writes ``STATE_DIR/listening`` once it accepts, and ``STATE_DIR/silent``
(how many connections it silenced) after each SIGUSR1.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path


class Line:
    def __init__(self, upstream_port: int, state: Path):
        self.upstream_port = upstream_port
        self.state = state
        self.live: dict[int, tuple[list[asyncio.StreamWriter], list[asyncio.Task[None]]]] = {}
        self.silenced: list[asyncio.StreamWriter] = []  # held, so that they are never closed

    async def carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (self.state / "hold").exists():
            await asyncio.sleep(0.05)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        pumps = [asyncio.create_task(_pump(reader, up_writer)), asyncio.create_task(_pump(up_reader, writer))]
        self.live[id(writer)] = ([writer, up_writer], pumps)

    def go_silent(self) -> None:
        for writers, pumps in self.live.values():
            for pump in pumps:
                pump.cancel()
            for w in writers:
                w.transport.pause_reading()
            self.silenced.extend(writers)
        n = len(self.live)
        self.live.clear()
        (self.state / "silent").write_text(str(n))


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()


async def main(listen_port: int, upstream_port: int, state: Path) -> None:
    line = Line(upstream_port, state)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, line.go_silent)
    server = await asyncio.start_server(line.carry, "127.0.0.1", listen_port)
    (state / "listening").write_text("yes")
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])))
