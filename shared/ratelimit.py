"""Rate limiting and login lockout over a counter backend shared by every replica (Redis) or one process (memory).

    Backend                        increment / acquire / ttl_ms / delete on namespaced keys
      ├─ RedisBackend              atomic (one Lua script per increment); keys expire by themselves
      ├─ MemoryBackend             one process only; expired keys swept, at most MEMORY_MAX_KEYS kept
      └─ FallbackBackend           Redis, and this process's memory while Redis cannot be reached
    RateLimiter(limit, window_s)   `hit(key)` → Decision
    LoginGuard                     per-address limit, per-account failure count and temporary lockout

Windows are fixed, not sliding: a window starts at the first hit on a key and the key expires with it. That is one
INCR per hit and one small integer per key, atomic across replicas with no read-modify-write, and a count reaches
a threshold exactly once per window (which the lockout and the anomaly detector rely on to act once). The price is
that a client can spend up to twice the limit around a window boundary; for login throttling the lockout, not the
per-address window, is what stops a password guesser, so that burst is acceptable.

Every key is a SHA-256 digest of what the caller passed (account names are case-folded and stripped first), so
emails and addresses never sit in Redis in clear and a client cannot make keys arbitrarily long.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import redis.asyncio as aioredis
import redis.exceptions

from shared.errors import ApiError
from shared.log import get_logger
from shared.metrics import record_security_event

__all__ = [
    "ACCOUNT_LOG_DIGITS",
    "BUSY_RETRY_AFTER_S",
    "LOGIN_FAILURE_WINDOW_S",
    "LOGIN_LOCKOUT_S",
    "LOGIN_MAX_FAILURES",
    "LOGIN_PER_ADDRESS_LIMIT",
    "LOGIN_PER_ADDRESS_WINDOW_S",
    "MEMORY_MAX_KEYS",
    "REDIS_KEY_PREFIX",
    "REDIS_RETRY_S",
    "Backend",
    "Decision",
    "FallbackBackend",
    "LoginGuard",
    "MemoryBackend",
    "RateLimiter",
    "RedisBackend",
    "WindowCount",
    "account_digest",
    "key_digest",
    "make_backend",
    "rate_limited_error",
    "retry_after_s",
    "shared_backend",
    "to_window_ms",
]

log = get_logger(__name__)
_T = TypeVar("_T")

REDIS_KEY_PREFIX = "apgms:"
MEMORY_MAX_KEYS = 100_000
LOGIN_MAX_FAILURES = 5
LOGIN_FAILURE_WINDOW_S = 900.0
LOGIN_LOCKOUT_S = 900.0
LOGIN_PER_ADDRESS_LIMIT = 30
LOGIN_PER_ADDRESS_WINDOW_S = 60.0
# Retry-After for an attempt refused because `max_failures` others on the same account are still being checked.
BUSY_RETRY_AFTER_S = 1
# The log line names a locked account by this many hex digits of its digest: enough to correlate, not to store.
ACCOUNT_LOG_DIGITS = 16
# While Redis cannot be reached, one call in this many seconds tries it again (the others use memory at once), so a
# Redis that hangs costs one request its socket timeout now and then, not every login.
REDIS_RETRY_S = 5.0
# What "Redis cannot be reached" looks like: refused or dropped connections, and a socket timeout.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
    TimeoutError,
)

# INCR, then start the window if the key has no expiry yet (-1: just created). PTTL is read back so the caller can
# say how long until the window ends without a second round trip.
_INCREMENT_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    remaining: int
    retry_after_s: int


@dataclass(frozen=True)
class WindowCount:
    count: int
    ttl_ms: int


class Backend(Protocol):
    async def increment(self, key: str, window_ms: int) -> WindowCount:
        """Add one to `key`'s count; a new key's window of `window_ms` starts now and is never extended."""
        ...

    async def acquire(self, key: str, ttl_ms: int) -> bool:
        """Create `key` for `ttl_ms` unless it exists; True when this call created it."""
        ...

    async def count(self, key: str) -> int:
        """The current count of `key`, 0 when absent or expired."""
        ...

    async def ttl_ms(self, key: str) -> int:
        """Milliseconds until `key` expires; 0 when it does not exist."""
        ...

    async def delete(self, key: str) -> None: ...


class RedisBackend:
    """Counters in Redis, shared by every replica that uses the same Redis and prefix."""

    def __init__(self, redis: aioredis.Redis, prefix: str = REDIS_KEY_PREFIX) -> None:
        self.redis = redis
        self.prefix = prefix
        self._increment = redis.register_script(_INCREMENT_SCRIPT)

    async def increment(self, key: str, window_ms: int) -> WindowCount:
        count, ttl_ms = await self._increment(keys=[self.prefix + key], args=[window_ms])
        return WindowCount(int(count), int(ttl_ms))

    async def acquire(self, key: str, ttl_ms: int) -> bool:
        return bool(await self.redis.set(self.prefix + key, 1, px=ttl_ms, nx=True))

    async def count(self, key: str) -> int:
        value = await self.redis.get(self.prefix + key)
        return int(value) if value is not None else 0

    async def ttl_ms(self, key: str) -> int:
        # PTTL answers -2 for a missing key and -1 for one without expiry; ours always expire.
        return max(int(await self.redis.pttl(self.prefix + key)), 0)

    async def delete(self, key: str) -> None:
        await self.redis.delete(self.prefix + key)


@dataclass
class _Entry:
    value: int
    expires_at: float


class MemoryBackend:
    """Counters in this process, for a single replica without Redis; not thread-safe (one event loop).

    Expired keys are swept from a heap of expiry times on every write; when `max_keys` live keys exist the oldest
    key is dropped, so a flood of distinct clients costs bounded memory (at worst it forgets the oldest counter).
    """

    def __init__(self, *, max_keys: int = MEMORY_MAX_KEYS, clock: Callable[[], float] = time.monotonic) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._expiries: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._entries)

    async def increment(self, key: str, window_ms: int) -> WindowCount:
        now = self._sweep()
        entry = self._live(key, now)
        if entry is None:
            entry = self._insert(key, now + window_ms / 1000)
        entry.value += 1
        return WindowCount(entry.value, _remaining_ms(entry, now))

    async def acquire(self, key: str, ttl_ms: int) -> bool:
        now = self._sweep()
        if self._live(key, now) is not None:
            return False
        self._insert(key, now + ttl_ms / 1000).value = 1
        return True

    async def count(self, key: str) -> int:
        entry = self._live(key, self._clock())
        return 0 if entry is None else entry.value

    async def ttl_ms(self, key: str) -> int:
        now = self._clock()
        entry = self._live(key, now)
        return 0 if entry is None else _remaining_ms(entry, now)

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)

    def _live(self, key: str, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= now:
            del self._entries[key]
            return None
        return entry

    def _sweep(self) -> float:
        now = self._clock()
        while self._expiries and self._expiries[0][0] <= now:
            _, key = heapq.heappop(self._expiries)
            # The heap may hold a stale time for a key deleted and created again since; only its own time counts.
            entry = self._entries.get(key)
            if entry is not None and entry.expires_at <= now:
                del self._entries[key]
        return now

    def _insert(self, key: str, expires_at: float) -> _Entry:
        while len(self._entries) >= self.max_keys:
            self._entries.popitem(last=False)
        entry = self._entries[key] = _Entry(0, expires_at)
        heapq.heappush(self._expiries, (expires_at, key))
        if len(self._expiries) > 2 * self.max_keys:
            # Evicted and deleted keys leave their times behind; rebuild before the heap outgrows the entries.
            self._expiries = [(item.expires_at, name) for name, item in self._entries.items()]
            heapq.heapify(self._expiries)
        return entry


def _remaining_ms(entry: _Entry, now: float) -> int:
    return max(math.ceil((entry.expires_at - now) * 1000), 0)


class FallbackBackend:
    """`primary` (Redis) while it answers; this process's memory for any call it cannot answer.

    A limiter must never turn a Redis outage into a failed login (a 500): for as long as Redis is unreachable the
    counts are kept per process, as they are for a service run without Redis, and the health and readiness checks
    (which read Redis itself, see `shared_backend`) report the outage. One `ratelimit_fallback` line is logged
    when Redis is lost and one when it answers again. Counts made in memory are not carried over to Redis.
    """

    def __init__(
        self,
        primary: Backend,
        *,
        fallback: Backend | None = None,
        retry_s: float = REDIS_RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.fallback = fallback if fallback is not None else MemoryBackend()
        self.retry_s = retry_s
        self._clock = clock
        self._down = False
        self._retry_at = 0.0

    @property
    def degraded(self) -> bool:
        """True while the counts are kept in this process because Redis could not be reached."""
        return self._down

    async def increment(self, key: str, window_ms: int) -> WindowCount:
        return await self._call(lambda backend: backend.increment(key, window_ms))

    async def acquire(self, key: str, ttl_ms: int) -> bool:
        return await self._call(lambda backend: backend.acquire(key, ttl_ms))

    async def count(self, key: str) -> int:
        return await self._call(lambda backend: backend.count(key))

    async def ttl_ms(self, key: str) -> int:
        return await self._call(lambda backend: backend.ttl_ms(key))

    async def delete(self, key: str) -> None:
        await self._call(lambda backend: backend.delete(key))

    async def _call(self, operation: Callable[[Backend], Awaitable[_T]]) -> _T:
        if self._down:
            now = self._clock()
            if now < self._retry_at:
                return await operation(self.fallback)
            # This call tries Redis; the calls that arrive while it waits keep using memory.
            self._retry_at = now + self.retry_s
        try:
            result = await operation(self.primary)
        except _UNREACHABLE as exc:
            if not self._down:
                self._down = True
                self._retry_at = self._clock() + self.retry_s
                log.warning("ratelimit_fallback", state="down", error=type(exc).__name__, retry_s=self.retry_s)
            return await operation(self.fallback)
        if self._down:
            self._down = False
            log.warning("ratelimit_fallback", state="up")
        return result


def make_backend(redis: aioredis.Redis | None) -> Backend:
    """Redis when the service has a client (counts shared by replicas, this process's memory while Redis is
    unreachable), else this process's memory."""
    return FallbackBackend(RedisBackend(redis)) if redis is not None else MemoryBackend()


def shared_backend(backend: Backend) -> Backend:
    """The store the counts are meant to live in: Redis behind a `FallbackBackend` (which always answers), for a
    health check that must fail while Redis is unreachable."""
    return backend.primary if isinstance(backend, FallbackBackend) else backend


def key_digest(value: str) -> str:
    """The form in which a client-supplied value becomes part of a key: never in clear, always 64 characters."""
    return hashlib.sha256(value.encode()).hexdigest()


def account_digest(account: str) -> str:
    """`key_digest` of the normalised account, so `Ann@Example.com ` and `ann@example.com` count together."""
    return key_digest(account.strip().casefold())


def retry_after_s(ttl_ms: int) -> int:
    """Whole seconds a refused client should wait: rounded up, never below 1."""
    return max(math.ceil(ttl_ms / 1000), 1)


def to_window_ms(seconds: float) -> int:
    """A window length in whole milliseconds (rounded up); refuses windows of zero or less."""
    if seconds <= 0:
        raise ValueError("a window must be longer than zero seconds")
    return max(math.ceil(seconds * 1000), 1)


class RateLimiter:
    """At most `limit` hits per key in each fixed window of `window_s`; `name` keeps limiters' keys apart."""

    def __init__(self, backend: Backend, *, limit: int, window_s: float, name: str) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.backend = backend
        self.limit = limit
        self.window_s = window_s
        self.name = name
        self._window_ms = to_window_ms(window_s)

    async def hit(self, key: str) -> Decision:
        """Count one hit on `key`; refused hits count too, and each refusal is a `rate_limited` security event."""
        decision = await self._count(key)
        if not decision.allowed:
            record_security_event("rate_limited", limiter=self.name)
        return decision

    async def _count(self, key: str) -> Decision:
        counted = await self.backend.increment(f"rl:{self.name}:{key_digest(key)}", self._window_ms)
        if counted.count <= self.limit:
            return Decision(True, self.limit - counted.count, 0)
        return Decision(False, 0, retry_after_s(counted.ttl_ms))


class LoginGuard:
    """Per-address attempt limit plus a temporary lockout of an account after repeated failures.

    Every attempt is counted as a failure *before* the password (or code) is checked, and forgiven by
    `record_success`: a burst of concurrent guesses therefore gets at most `max_failures` checks, not as many as
    arrive before the first failures are recorded. `name` keeps two guards on one backend apart (user login,
    MFA codes, regulator login).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        max_failures: int = LOGIN_MAX_FAILURES,
        failure_window_s: float = LOGIN_FAILURE_WINDOW_S,
        lockout_s: float = LOGIN_LOCKOUT_S,
        per_address_limit: int = LOGIN_PER_ADDRESS_LIMIT,
        per_address_window_s: float = LOGIN_PER_ADDRESS_WINDOW_S,
        name: str = "login",
    ) -> None:
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        self.backend = backend
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self.name = name
        self._failure_window_ms = to_window_ms(failure_window_s)
        self._lockout_ms = to_window_ms(lockout_s)
        self._per_address = RateLimiter(
            backend, limit=per_address_limit, window_s=per_address_window_s, name=f"{name}-address"
        )

    async def check(self, account: str, address: str | None) -> Decision:
        """Admit one attempt, reserving it as a failure; refused while the account is locked, when the account
        already has `max_failures` unforgiven attempts, or when the address is over its limit.

        `remaining` is the attempts left to the address in its window. Each refusal is one `rate_limited` event.
        """
        by_address = await self._per_address._count(address) if address is not None else None
        locked_ms = await self.backend.ttl_ms(self._lock_key(account))
        reasons = []
        waits = []
        if locked_ms > 0:
            reasons.append("account_locked")
            waits.append(retry_after_s(locked_ms))
        if by_address is not None and not by_address.allowed:
            reasons.append("address_limit")
            waits.append(by_address.retry_after_s)
        if not reasons:
            reserved = await self.backend.increment(
                self._failures_key(account_digest(account)), self._failure_window_ms
            )
            if reserved.count <= self.max_failures:
                remaining = by_address.remaining if by_address is not None else self._per_address.limit
                return Decision(True, remaining, 0)
            # `max_failures` attempts are already in flight or failed. Refusing is enough: only real failures
            # start a lock, so a burst of correct logins (many workers of one integration) never locks anyone.
            reasons.append("too_many_attempts")
            waits.append(BUSY_RETRY_AFTER_S)
        record_security_event("rate_limited", limiter=self.name, reason=",".join(reasons), address=address)
        return Decision(False, 0, max(waits))

    async def check_address(self, address: str | None) -> Decision:
        """The per-address limit alone, for credentials that must not be lockable (API client ids are known to
        others, and their 256-bit secrets need no lockout against guessing)."""
        if address is None:
            return Decision(True, self._per_address.limit, 0)
        decision = await self._per_address._count(address)
        if not decision.allowed:
            record_security_event("rate_limited", limiter=self.name, reason="address_limit", address=address)
        return decision

    async def record_failure(self, account: str, address: str | None) -> bool:
        """The attempt admitted by `check` failed (it is already counted); the `max_failures`-th unforgiven one
        locks the account. True when this call started the lock."""
        failures = await self.backend.count(self._failures_key(account_digest(account)))
        if failures < self.max_failures:
            return False
        return await self._start_lock(account, address, failures)

    async def _start_lock(self, account: str, address: str | None, failures: int) -> bool:
        # SET NX: of several replicas seeing the threshold at once, exactly one starts the lock and reports it.
        if not await self.backend.acquire(self._lock_key(account), self._lockout_ms):
            return False
        digest = account_digest(account)
        # Once the lock ends the account starts again from zero failures.
        await self.backend.delete(self._failures_key(digest))
        record_security_event(
            "auth.lockout",
            limiter=self.name,
            account=digest[:ACCOUNT_LOG_DIGITS],
            address=address,
            failures=failures,
            lockout_s=self.lockout_s,
        )
        return True

    async def record_success(self, account: str) -> None:
        """Forget the account's failures (a lock in force stays: `check` refuses before a password is tried)."""
        await self.backend.delete(self._failures_key(account_digest(account)))

    def _failures_key(self, digest: str) -> str:
        return f"{self.name}:failures:{digest}"

    def _lock_key(self, account: str) -> str:
        return f"{self.name}:locked:{account_digest(account)}"


def rate_limited_error(decision: Decision) -> ApiError:
    """The 429 `rate_limited` problem for a refusal, with `Retry-After` in whole seconds."""
    wait_s = max(decision.retry_after_s, 1)
    return ApiError("rate_limited", f"Too many attempts; retry in {wait_s} s.", headers={"retry-after": str(wait_s)})
