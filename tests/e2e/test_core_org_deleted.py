"""A write that races its org's deletion answers 410 `gone`, not 500, through real auth and core processes.

The race is set up deterministically: the org's tombstone is written straight into the database, as an admin's
deletion commits it, while the org's users still hold valid access tokens (auth's part of a deletion comes after
core's commit, and a token already issued is checked by signature). Every insert into the org's tables then meets
migration 0008's trigger (SQLSTATE AP410); core answers 410 with a problem document, keeps nothing of the write, and
logs no unhandled error. Another org is untouched.
"""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest
from auth_support import Org, call
from core_support import connect, line_count, new_line, post_line, role_tokens, start_core

from services.core.designated import account_id
from services.core.store import orgs
from shared.errors import PROBLEM_MEDIA_TYPE

pytestmark = pytest.mark.e2e


async def bury(database_url: str, org: Org) -> None:
    """What an admin's deletion leaves in core: the org's tombstone (its rows, here none, already gone)."""
    async with connect(database_url) as conn:
        await orgs.insert_tombstone(conn, org.id, "user:deleting-admin", {})


def assert_gone(status: int, body: Any, headers: Any) -> None:
    assert status == 410, body
    assert headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    assert (body["code"], body["status"], body["detail"]) == ("gone", 410, "This organisation has been deleted")


async def test_writes_after_the_orgs_deletion_answer_410_and_keep_nothing(
    start_service: Any, database_url: str, org: Org, other_org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_core(start_service, database_url)
    tokens = await role_tokens(http, stack, org)
    others = await role_tokens(http, stack, other_org)
    await bury(database_url, org)

    # A bank line: its row needs no trigger, but the BAS cycle its write re-evaluates does, so it rolls back.
    status, body, headers = await post_line(http, stack, tokens["finance"], new_line(), key="after-deletion-1")
    assert_gone(status, body, headers)
    assert await line_count(database_url) == 0
    # The same key again is not a replay of anything: the first attempt stored no answer.
    assert_gone(*await post_line(http, stack, tokens["finance"], new_line(), key="after-deletion-1"))

    paygw = account_id(org.id, "PAYGW")
    deposit = {"amount": "100.00", "source": "ANZ-123", "reference": "after deletion"}
    assert_gone(
        *await call(
            http,
            "POST",
            f"{stack.core.url}/org/designated-accounts/{paygw}/deposits",
            token=tokens["admin"],
            json=deposit,
            headers={"idempotency-key": f"deposit-{uuid.uuid4()}"},
        )
    )
    # A refused withdrawal commits a HIGH alert on its own: that insert is refused too.
    assert_gone(
        *await call(
            http,
            "POST",
            f"{stack.core.url}/org/designated-accounts/{paygw}/withdrawals",
            token=tokens["finance"],
            json={"amount": "10.00"},
            headers={"idempotency-key": f"withdrawal-{uuid.uuid4()}"},
        )
    )

    async with connect(database_url) as conn:
        for table in orgs.DELETION_ORDER:
            count = await conn.fetchval(f"SELECT count(*) FROM core.{table} WHERE org_id = $1", org.id)  # noqa: S608
            assert count == 0, table
        assert await conn.fetchval("SELECT count(*) FROM idempotency.records WHERE org_id = $1", org.id) == 0

    # The other org writes as before.
    status, body, _ = await post_line(http, stack, others["finance"], new_line(), key="other-org-1")
    assert status == 201, body
    assert await line_count(database_url) == 1

    events = [record.get("event") for record in stack.core.log_lines()]
    assert "unhandled_error" not in events
