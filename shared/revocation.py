"""Access tokens revoked within seconds on every service, without a query per request (issue #9, finding 7).

The auth service writes a "not before" time when a session ends (logout, or a refresh token reused: the refresh
family, carried in access tokens as `sid`) and when a user is disabled or changes role (the user, `sub`). A token
issued (`iat`) before the not-before time of its user or its session is refused.

Where the times live: one Redis sorted set, member `user:<id>` or `session:<id>`, score the not-before epoch
second. An entry is useless once every token it can refuse has expired (`ENTRY_LIFETIME_S`), so the set holds only
the last ~16 minutes of revocations and is pruned on each write. Every process keeps a snapshot of the whole set,
re-read every `REFRESH_INTERVAL_S` in the background: one Redis read per interval per process, one dict lookup per
request (`make bench-auth` measures it). A revocation is therefore in force everywhere within the interval plus a
read, and at once in the process that wrote it.

Without Redis (`REDIS_URL` unset: `make run` on a machine without redis-server) the times live in the process that
wrote them: the auth service enforces its own, other services cannot see them. When Redis cannot be read, the last
snapshot stays in force (fail open: a Redis outage must not log everybody out), with a warning line per outage and
`revocation_redis_failures_total{op="read"}`; a token then lives at most its 15 minutes, as before this check existed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import cast

import redis.asyncio as aioredis
from prometheus_client import Counter

from shared.log import get_logger
from shared.tokens import ACCESS_TOKEN_TTL_S, LEEWAY_S, Principal

__all__ = [
    "ENTRY_LIFETIME_S",
    "MAX_ENTRIES",
    "REDIS_FAILURES",
    "REDIS_KEY",
    "REDIS_TIMEOUT_S",
    "REFRESH_INTERVAL_S",
    "Revocations",
    "not_before",
    "prune",
    "refused",
    "session_entry",
    "user_entry",
]

REDIS_KEY = "apgms:revoked"
REFRESH_INTERVAL_S = 1.0
REDIS_TIMEOUT_S = 1.0
# A token issued before the entry's time expires at most ACCESS_TOKEN_TTL_S later and is accepted LEEWAY_S beyond.
ENTRY_LIFETIME_S = ACCESS_TOKEN_TTL_S + 2 * LEEWAY_S
# Ten thousand logouts in 16 minutes is far beyond our traffic; past it the oldest entries are dropped (logged).
MAX_ENTRIES = 100_000

REDIS_FAILURES = Counter(
    "revocation_redis_failures_total",
    "Failed reads (the last snapshot stays in force) and writes (held in the writing process only) of revocations.",
    ["op"],
)
for _op in ("read", "write"):
    REDIS_FAILURES.labels(op=_op)
log = get_logger(__name__)


def user_entry(user_id: str) -> str:
    return f"user:{user_id}"


def session_entry(session_id: str) -> str:
    return f"session:{session_id}"


def not_before(now: float) -> int:
    """The first whole second whose tokens were surely issued after `now`: `iat` has a one-second resolution, so a
    token issued in the same second as the revocation is refused too (the client refreshes or logs in again)."""
    return int(now) + 1


def refused(entries: Mapping[str, int], principal: Principal) -> bool:
    """Whether a revocation covers this token: its user's or its session's not-before time is after its `iat`."""
    if not entries:
        return False
    issued = principal.issued_at
    if entries.get(user_entry(principal.subject), 0) > issued:
        return True
    return principal.session_id is not None and entries.get(session_entry(principal.session_id), 0) > issued


def prune(entries: dict[str, int], now: float, max_entries: int = MAX_ENTRIES) -> dict[str, int]:
    """The entries still able to refuse a token, at most `max_entries` of them (the newest)."""
    live = {key: when for key, when in entries.items() if when > now - ENTRY_LIFETIME_S}
    if len(live) > max_entries:
        log.warning("revocation_list_truncated", entries=len(live), kept=max_entries)
        live = dict(sorted(live.items(), key=lambda item: item[1])[-max_entries:])
    return live


class Revocations:
    """The not-before times as one process sees them: the last snapshot from Redis merged with its own writes."""

    def __init__(
        self,
        redis: aioredis.Redis | None,
        *,
        refresh_interval_s: float = REFRESH_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._refresh_interval_s = refresh_interval_s
        self._clock = clock
        self._own: dict[str, int] = {}
        self._shared: dict[str, int] = {}
        self.entries: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def refuses(self, principal: Principal) -> bool:
        return refused(self.entries, principal)

    async def revoke(self, *, user_id: str | None = None, session_id: str | None = None) -> None:
        """Refuse every token of the user and/or the session issued until now. In force in this process at once,
        everywhere else after the next refresh; a failed Redis write is logged and counted, never raised (the change
        that caused the revocation is already committed)."""
        now = self._clock()
        when = not_before(now)
        keys = [user_entry(user_id)] if user_id else []
        keys += [session_entry(session_id)] if session_id else []
        for key in keys:
            self._own[key] = max(self._own.get(key, 0), when)
        self._own = prune(self._own, now)
        self._merge()
        if self._redis is None or not keys:
            return
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.zadd(REDIS_KEY, dict.fromkeys(keys, when), gt=True)
                    pipe.zremrangebyscore(REDIS_KEY, "-inf", now - ENTRY_LIFETIME_S)
                    pipe.expire(REDIS_KEY, ENTRY_LIFETIME_S + 60)
                    await pipe.execute()
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            REDIS_FAILURES.labels(op="write").inc()
            log.error("revocation_write_failed", error=type(exc).__name__, entries=keys)

    async def refresh(self) -> None:
        """Re-read the shared list; on failure keep the last snapshot (fail open), warn once per outage."""
        if self._redis is None:
            return
        now = self._clock()
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                rows = cast(
                    list[tuple[bytes, float]],
                    await self._redis.zrevrangebyscore(
                        REDIS_KEY, "+inf", now - ENTRY_LIFETIME_S, start=0, num=MAX_ENTRIES, withscores=True
                    ),
                )
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            REDIS_FAILURES.labels(op="read").inc()
            if not self._failing:
                log.warning("revocation_refresh_failed", error=type(exc).__name__, kept_entries=len(self.entries))
            self._failing = True
            return
        if self._failing:
            log.info("revocation_refresh_recovered")
        self._failing = False
        self._shared = {member.decode(): int(score) for member, score in rows}
        self._own = prune(self._own, now)
        self._merge()

    def _merge(self) -> None:
        merged = dict(self._shared)
        for key, when in self._own.items():
            merged[key] = max(merged.get(key, 0), when)
        # One assignment: a request on the event loop sees the old snapshot or the new one, never half of either.
        self.entries = merged

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_interval_s)
            try:
                await self.refresh()
            except Exception:
                # Whatever went wrong, the loop must go on: a dead loop would freeze the snapshot silently.
                REDIS_FAILURES.labels(op="read").inc()
                log.exception("revocation_refresh_crashed")

    async def start(self) -> None:
        if self._redis is not None and self._task is None:
            await self.refresh()
            self._task = asyncio.create_task(self._run(), name="revocation-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
