"""The revocation rules and the per-process snapshot, without Redis (a stand-in client fails or answers)."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from shared.revocation import (
    ENTRY_LIFETIME_S,
    REDIS_FAILURES,
    Revocations,
    not_before,
    prune,
    refused,
    session_entry,
    user_entry,
)
from shared.tokens import Principal

NOW = 1_800_000_000.4


def principal(issued_at: int, session_id: str | None = "family-1", subject: str = "user-1") -> Principal:
    return Principal(
        subject=subject,
        kind="user",
        org_id="org-1",
        role="admin",
        scopes=frozenset(),
        amr=("pwd",),
        auth_time=issued_at,
        token_id="jti",
        audience="urn:apgms:api",
        issued_at=issued_at,
        session_id=session_id,
    )


def test_a_token_issued_before_its_users_or_sessions_not_before_is_refused() -> None:
    cut = not_before(NOW)
    assert cut == int(NOW) + 1, "a token issued in the revocation's own second is refused too"
    by_user = {user_entry("user-1"): cut}
    by_session = {session_entry("family-1"): cut}
    for entries in (by_user, by_session):
        assert refused(entries, principal(int(NOW)))
        assert not refused(entries, principal(cut))
    assert not refused(by_session, principal(int(NOW), session_id="family-2")), "another session of the user"
    assert not refused(by_session, principal(int(NOW), session_id=None))
    assert not refused(by_user, principal(int(NOW), subject="user-2"))
    assert not refused({}, principal(0))


def test_prune_drops_entries_no_live_token_can_predate_and_keeps_the_newest() -> None:
    entries = {"old": int(NOW - ENTRY_LIFETIME_S - 1), "live": int(NOW - ENTRY_LIFETIME_S + 5), "new": int(NOW)}
    assert prune(entries, NOW) == {"live": entries["live"], "new": entries["new"]}
    assert prune(entries, NOW, max_entries=1) == {"new": entries["new"]}


async def test_without_redis_a_revocation_holds_in_this_process_at_once() -> None:
    revocations = Revocations(None, clock=lambda: NOW)
    await revocations.revoke(session_id="family-1")
    assert revocations.refuses(principal(int(NOW)))
    assert not revocations.refuses(principal(int(NOW), session_id="family-2"))


class FakeRedis:
    """Answers `zrevrangebyscore` with `rows`, or raises `error`."""

    def __init__(self, rows: list[tuple[bytes, float]]) -> None:
        self.rows = rows
        self.error: Exception | None = None

    async def zrevrangebyscore(self, *_: Any, **__: Any) -> list[tuple[bytes, float]]:
        if self.error is not None:
            raise self.error
        return self.rows

    def pipeline(self, **_: Any) -> Any:
        assert self.error is not None, "only the failing write is exercised here"
        raise self.error


async def test_the_snapshot_follows_redis_and_survives_an_outage() -> None:
    client = FakeRedis([(b"user:user-1", float(not_before(NOW)))])
    revocations = Revocations(client, clock=lambda: NOW)  # type: ignore[arg-type]
    await revocations.refresh()
    assert revocations.refuses(principal(int(NOW), session_id=None))

    failures = REDIS_FAILURES.labels(op="read")._value.get()
    client.error = aioredis.ConnectionError("down")
    await revocations.refresh()
    await revocations.refresh()
    assert REDIS_FAILURES.labels(op="read")._value.get() == failures + 2
    assert revocations.refuses(principal(int(NOW), session_id=None)), "the last snapshot stays in force"

    client.error = None
    client.rows = []
    await revocations.refresh()
    assert not revocations.refuses(principal(int(NOW), session_id=None))


async def test_a_failed_write_is_counted_and_holds_in_the_writing_process() -> None:
    client = FakeRedis([])
    client.error = aioredis.ConnectionError("down")
    revocations = Revocations(client, clock=lambda: NOW)  # type: ignore[arg-type]
    failures = REDIS_FAILURES.labels(op="write")._value.get()
    await revocations.revoke(user_id="user-1")
    assert REDIS_FAILURES.labels(op="write")._value.get() == failures + 1
    assert revocations.refuses(principal(int(NOW), session_id=None))
