"""Helpers for the chaos drills (docs/ops/chaos.md): a TCP forwarder between the services and PostgreSQL or Redis
that a drill can cut, restore and slow down, and the small timing helpers the drills share.

    forwarder = TcpForwarder.start("127.0.0.1", 5432)   # listens on a free loopback port, in a thread of its own
    core = start_service("core", {"DATABASE_URL": forwarder.url_for(database_url)})
    forwarder.cut()        # refuse new connections, drop live ones: the server is down, as far as core can tell
    forwarder.stall()      # accept and keep connections but pass nothing on: a server that hangs (a partition)
    forwarder.restore()    # listen again on the same port (after a stall: the stalled connections dropped)
    forwarder.delay_s = 0.3   # every chunk from the server reaches the client 300 ms late (one round trip + 300 ms)

The forwarder runs its own event loop in a daemon thread, so a test that blocks its loop (`start_service` waits
for /health with sleeps) never stalls the connections of the processes behind it. The session's PostgreSQL and
Redis are shared by every test: a drill takes them "down" only for the processes it points at its forwarder.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from apgms.devservers import free_port
from apgms.replicas import BackgroundLoop, pipe

_T = TypeVar("_T")

# How long a drill polls for a state (readiness, a route that comes back) before it fails.
POLL_INTERVAL_S = 0.1


class TcpForwarder:
    """Forwards each connection on 127.0.0.1:`port` to `target_host`:`target_port`, byte for byte.

    `cut()` closes the listener and aborts every live connection (a client sees ECONNREFUSED, as for a stopped
    server); `restore()` listens again on the same port. `delay_s` delays every chunk going from the server to the
    client by that much, kept in order (a queue of due times per direction, so the delay adds latency without
    also throttling throughput).
    """

    def __init__(self, target_host: str, target_port: int, port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = port
        self.delay_s = 0.0
        self.connections_accepted = 0
        # Chunks the server sent, each one reply of a round trip or part of one: what `delay_s` is paid for.
        self.server_chunks = 0
        self._background: BackgroundLoop | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._stalled = False

    @classmethod
    def start(cls, target_host: str, target_port: int, port: int | None = None) -> TcpForwarder:
        """Listening on `port` (a free one when None), in a thread of its own."""
        forwarder = cls(target_host, target_port, port or free_port())
        forwarder._background = BackgroundLoop(f"forwarder-{forwarder.port}")
        forwarder._call(forwarder._listen)
        return forwarder

    @classmethod
    def for_url(cls, url: str) -> TcpForwarder:
        """A forwarder to the host and port of a postgresql:// or redis:// URL."""
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None, url
        return cls.start(parts.hostname, parts.port)

    def url_for(self, url: str) -> str:
        """`url` with its host and port replaced by the forwarder's (user, password, path and query kept)."""
        parts = urlsplit(url)
        credentials, _, _ = parts.netloc.rpartition("@")
        netloc = f"{credentials}@127.0.0.1:{self.port}" if credentials else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def cut(self) -> None:
        self._call(self._cut)

    def stall(self) -> None:
        """Nothing passes either way and new connections are held unanswered, until `restore`."""
        self._stalled = True

    def restore(self) -> None:
        self._call(self._restore)

    def close(self) -> None:
        self._call(self._cut)
        assert self._background is not None
        self._background.close()

    def _call(self, make: Callable[[], Awaitable[_T]]) -> _T:
        assert self._background is not None, "TcpForwarder.start makes the forwarder"
        return self._background.call(make)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def _restore(self) -> None:
        if self._stalled:
            # Stalled connections stopped mid-conversation; their clients must reconnect.
            self._stalled = False
            for writer in list(self._writers):
                writer.transport.abort()
        await self._listen()

    async def _until_flowing(self) -> None:
        while self._stalled:
            await asyncio.sleep(POLL_INTERVAL_S)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        if self._stalled:
            self._writers.add(client_writer)
            await self._until_flowing()
            self._writers.discard(client_writer)
            client_writer.transport.abort()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_writer.transport.abort()
            return
        pair = {client_writer, server_writer}
        self._writers |= pair
        try:
            await asyncio.gather(
                pipe(client_reader, server_writer, before_write=self._until_flowing),
                pipe(
                    server_reader,
                    client_writer,
                    delay=lambda: self.delay_s,
                    before_write=self._until_flowing,
                    on_chunk=self._count_server_chunk,
                ),
                return_exceptions=True,
            )
        except asyncio.CancelledError:
            pass  # `close` ends what is left; asyncio would log a cancelled connection handler as an error
        finally:
            for writer in pair:
                writer.transport.abort()
            self._writers -= pair

    def _count_server_chunk(self) -> None:
        self.server_chunks += 1


async def timed(call: Awaitable[_T]) -> tuple[_T, float]:
    """The result of `call` and how many seconds it took."""
    started = time.monotonic()
    result = await call
    return result, time.monotonic() - started


async def wait_for(
    check: Callable[[], Awaitable[Any]], within_s: float, what: str, interval_s: float = POLL_INTERVAL_S
) -> float:
    """Poll `check` every `interval_s` until it returns something true; the seconds it took. Fails the test after
    `within_s`."""
    started = time.monotonic()
    last: Any = None
    while time.monotonic() - started < within_s:
        last = await check()
        if last:
            return time.monotonic() - started
        await asyncio.sleep(interval_s)
    raise AssertionError(f"{what}: not within {within_s} s (last: {last!r})")


async def in_rotation(http: aiohttp.ClientSession, proxy_url: str, service: str, value: float) -> bool:
    """The proxy's apgms_proxy_upstream_up for `service`'s one instance is `value` (1 in rotation, 0 out)."""
    async with http.get(f"{proxy_url}/metrics") as response:
        text = await response.text()
    samples = [
        line.rsplit(" ", 1)[1]
        for line in text.splitlines()
        if line.startswith("apgms_proxy_upstream_up{") and f'service="{service}"' in line
    ]
    return [float(sample) for sample in samples] == [value]


def main(argv: list[str] | None = None) -> None:
    """`python -m tests.e2e.chaos_support --target HOST:PORT [--port N] [--delay-ms MS]`: a forwarder for the
    drills by hand (docs/ops/chaos.md), until Ctrl+C. Stopping it is the cut; starting it again the restore."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.e2e.chaos_support", description=main.__doc__)
    parser.add_argument("--target", required=True, help="HOST:PORT of the server (PostgreSQL, Redis)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on, 127.0.0.1 (default: a free one)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="delay of every chunk from the server")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    forwarder = TcpForwarder.start(host or "127.0.0.1", int(port), args.port or None)
    forwarder.delay_s = args.delay_ms / 1000
    print(f"forwarding 127.0.0.1:{forwarder.port} -> {args.target}, +{args.delay_ms:g} ms per chunk; Ctrl+C stops")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        forwarder.close()


if __name__ == "__main__":
    main()
