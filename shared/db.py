"""The asyncpg pool every service uses.

The pool is created without connecting (min_size=0), so a service starts, answers `/health` and reports
`/ready` 503 while PostgreSQL is unreachable, instead of crash-looping. A background task retries with backoff
and logs once the database answers; after an outage the pool reconnects on its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import asyncpg
import orjson

from shared.config import Secret, Settings
from shared.log import get_logger

__all__ = ["CONNECTION_LOST", "Database", "backoff_delays", "init_connection"]

CONNECT_BACKOFF_INITIAL_S = 0.5
CONNECT_BACKOFF_MAX_S = 10.0
POOL_MAX_INACTIVE_S = 60.0
# What a graceful pool close may take (connections finishing their queries) before they are terminated.
POOL_CLOSE_TIMEOUT_S = 5.0
# Backoff doubles after each failed attempt, up to CONNECT_BACKOFF_MAX_S.
BACKOFF_FACTOR = 2

log = get_logger(__name__)

# Errors that mean "the connection is gone", after which one immediate retry gets a fresh connection.
CONNECTION_LOST = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    ConnectionError,
)


def backoff_delays(
    initial_s: float = CONNECT_BACKOFF_INITIAL_S, cap_s: float = CONNECT_BACKOFF_MAX_S
) -> Iterator[float]:
    """0.5, 1, 2, 4, 8, 10, 10, ... seconds."""
    delay = initial_s
    while True:
        yield delay
        delay = min(delay * BACKOFF_FACTOR, cap_s)


async def init_connection(connection: asyncpg.Connection) -> None:
    """json and jsonb columns read and write Python values (orjson), not strings."""
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(
            type_name, encoder=lambda value: orjson.dumps(value).decode(), decoder=orjson.loads, schema="pg_catalog"
        )


class Database:
    """A lazily connecting asyncpg pool with a readiness probe."""

    def __init__(
        self,
        dsn: Secret,
        *,
        connect_timeout_s: float,
        statement_timeout_ms: int,
        max_size: int,
    ) -> None:
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        self._statement_timeout_ms = statement_timeout_ms
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._abandoned: set[asyncio.Future[None]] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        assert settings.database_url is not None
        return cls(
            settings.database_url,
            connect_timeout_s=settings.db_connect_timeout_s,
            statement_timeout_ms=settings.db_statement_timeout_ms,
            max_size=settings.db_pool_max_size,
        )

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("Database.start() has not been called")
        return self._pool

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._dsn.reveal(),
            min_size=0,
            max_size=self._max_size,
            timeout=self._connect_timeout_s,
            command_timeout=self._statement_timeout_ms / 1000,
            max_inactive_connection_lifetime=POOL_MAX_INACTIVE_S,
            server_settings={"statement_timeout": str(self._statement_timeout_ms)},
            init=init_connection,
        )
        self._watcher = asyncio.create_task(self._wait_until_reachable())

    async def _wait_until_reachable(self) -> None:
        for delay in backoff_delays():
            try:
                await self.ping(self._connect_timeout_s)
            except Exception as exc:
                log.warning("database_unreachable", error=type(exc).__name__, retry_in_s=delay)
                await asyncio.sleep(delay)
            else:
                log.info("database_connected")
                return

    async def _select_one(self) -> None:
        try:
            await self.pool.fetchval("SELECT 1")
        except CONNECTION_LOST:
            await self.pool.fetchval("SELECT 1")

    async def ping(self, timeout_s: float) -> float:
        """Run `SELECT 1`; returns the round trip in milliseconds, raises on failure or within `timeout_s`.

        The query runs in a task the probe stops waiting for: cancelling it in place would make the probe wait
        for the pool to reset the connection, which against a hung server takes the statement timeout (5 s).
        """
        started = time.perf_counter()
        probe = asyncio.ensure_future(self._select_one())
        done, _ = await asyncio.wait({probe}, timeout=timeout_s)
        if not done:
            probe.cancel()
            self._abandoned.add(probe)
            probe.add_done_callback(self._forget)
            raise TimeoutError
        probe.result()
        return (time.perf_counter() - started) * 1000

    def _forget(self, probe: asyncio.Future[None]) -> None:
        self._abandoned.discard(probe)
        if not probe.cancelled():
            probe.exception()  # retrieved, so asyncio does not report it as never retrieved

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), timeout=POOL_CLOSE_TIMEOUT_S)
            except TimeoutError:
                self._pool.terminate()
