"""A shaped link on loopback: a TCP proxy that adds a one-way delay and a bandwidth cap, for the network cases.

``python -m bench.link --upstream PORT [--delay-ms 25] [--mbit 100]`` prints ``LISTENING <port>`` and forwards
every connection to ``127.0.0.1:PORT``. It models a path across the internet as the client sees it:

* **delay**: every byte reaches the other side ``delay`` after it was sent, in both directions (25 ms each
  way is a 50 ms round trip);
* **bandwidth**: each direction is one link shared by all connections; a chunk occupies it for
  ``bytes / rate`` and waits while it is busy (first come, first served), like a router's queue;
* **connection set-up**: a new connection cannot carry data before one round trip (SYN, SYN-ACK) has
  passed, so a client that opens a connection per request pays for it as it would on a real link;
* **flow control**: at most ``--window`` bytes per direction and connection are in flight; beyond that the
  proxy stops reading, so the sender's writes block as they would on a full TCP window (no unbounded buffer).

It runs in a process of its own so its work never competes with the measured client for the GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass

CHUNK = 64 * 1024


@dataclass
class Link:
    """One direction of the path: busy until ``free_at`` (monotonic seconds)."""

    rate: float  # bytes per second; 0 means no cap
    delay: float  # one-way seconds
    free_at: float = 0.0

    def arrival(self, ready: float, size: int) -> float:
        """When a chunk of ``size`` bytes, ready to go at ``ready``, is fully at the far end."""
        start = max(ready, self.free_at)
        done = start + (size / self.rate if self.rate else 0.0)
        self.free_at = done
        return done + self.delay


class Pipe:
    """Bytes from ``reader`` to ``writer`` through ``link``, not before ``open_at``, ``window`` in flight."""

    def __init__(self, link: Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, open_at: float,
                 window: int) -> None:
        self.link = link
        self.reader = reader
        self.writer = writer
        self.open_at = open_at
        self.window = asyncio.Semaphore(max(1, window // CHUNK))
        self.queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def run(self) -> None:
        sender = asyncio.ensure_future(self._deliver())
        try:
            while True:
                await self.window.acquire()
                data = await self.reader.read(CHUNK)
                if not data:
                    break
                ready = max(time.monotonic(), self.open_at)
                self.queue.put_nowait((self.link.arrival(ready, len(data)), data))
        except (ConnectionError, OSError):
            pass
        finally:
            self.queue.put_nowait((0.0, b""))  # end of stream, after what is in flight
            with contextlib.suppress(ConnectionError, OSError):
                await sender

    async def _deliver(self) -> None:
        try:
            while True:
                at, data = await self.queue.get()
                if not data:
                    if at == 0.0 and self.writer.can_write_eof():
                        # the reader's side closed: let the last bytes arrive, then half-close
                        self.writer.write_eof()
                    return
                wait = at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self.writer.write(data)
                await self.writer.drain()
                self.window.release()
        except (ConnectionError, OSError):
            pass


class Shaper:
    """The proxy: one :class:`Link` per direction, shared by every connection."""

    def __init__(self, upstream: int, delay: float, rate: float, window: int) -> None:
        self.upstream = upstream
        self.delay = delay
        self.window = window
        self.up = Link(rate, delay)
        self.down = Link(rate, delay)

    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        accepted = time.monotonic()
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            client_writer.close()
            return
        # the client may send once the handshake's round trip is over; its first byte then needs one more delay
        up = Pipe(self.up, client_reader, server_writer, accepted + 2 * self.delay, self.window)
        down = Pipe(self.down, server_reader, client_writer, accepted, self.window)
        try:
            await asyncio.gather(up.run(), down.run())
        finally:
            for writer in (server_writer, client_writer):
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()


async def serve(upstream: int, port: int, delay: float, rate: float, window: int) -> None:
    shaper = Shaper(upstream, delay, rate, window)
    server = await asyncio.start_server(shaper.handle, "127.0.0.1", port, reuse_address=True)
    print(f"LISTENING {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.link", description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", type=int, required=True, help="port of the server on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any free one)")
    parser.add_argument("--delay-ms", type=float, default=25.0, help="one-way delay (default 25: a 50 ms RTT)")
    parser.add_argument("--mbit", type=float, default=100.0, help="bandwidth per direction, Mbit/s (0: no cap)")
    parser.add_argument("--window", type=int, default=4 << 20,
                        help="bytes in flight per connection and direction (default 4 MiB)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.upstream, args.port, args.delay_ms / 1000, args.mbit * 1e6 / 8, args.window))


if __name__ == "__main__":
    main()
