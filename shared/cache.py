"""The optional Redis client (redis.asyncio; aioredis cannot be imported on Python 3.11)."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from shared.config import Secret

__all__ = [
    "REDIS_CONNECT_TIMEOUT_S",
    "REDIS_HEALTH_CHECK_INTERVAL_S",
    "REDIS_SOCKET_TIMEOUT_S",
    "create_redis",
    "ping_redis",
]

REDIS_SOCKET_TIMEOUT_S = 2.0
REDIS_CONNECT_TIMEOUT_S = 2.0
# A pooled connection idle for longer is PINGed before use, so one the server or a firewall dropped is replaced
# instead of failing the command that picks it up.
REDIS_HEALTH_CHECK_INTERVAL_S = 30


def create_redis(url: Secret) -> aioredis.Redis:
    """A pooled client; it connects on first use, so start-up never blocks on Redis."""
    return aioredis.Redis.from_url(
        url.reveal(),
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        health_check_interval=REDIS_HEALTH_CHECK_INTERVAL_S,
    )


async def ping_redis(client: aioredis.Redis, timeout_s: float) -> float:
    """PING; returns the round trip in milliseconds, raises on failure or timeout."""
    started = time.perf_counter()
    async with asyncio.timeout(timeout_s):
        await client.ping()
    return (time.perf_counter() - started) * 1000
