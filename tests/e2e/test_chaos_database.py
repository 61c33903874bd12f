"""Chaos drill 1 (docs/ops/chaos.md): PostgreSQL down, then up again, under a running core.

Core reaches the test's database through a TCP forwarder the test cuts (connections refused, live ones dropped)
and restores; auth keeps its own direct connection, so tokens are still issued and only core loses its database.
While the database is down core's /ready is 503 naming the postgres check, and the API answers 503 problems
within a bound instead of hanging or failing with a 500; once it is back /ready is 200 again and the POST that
failed, retried with the same Idempotency-Key, creates exactly one line. The second drill is the harder outage: a
database that accepts connections and never answers (a network partition), where only deadlines end the wait.
"""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import pytest
from auth_support import Org, call
from chaos_support import TcpForwarder, timed, wait_for
from core_support import StartService, get_lines, line_count, new_line, post_line, role_tokens, start_core

pytestmark = pytest.mark.e2e

# /ready's checks time out after READY_CHECK_TIMEOUT_S (1 s); the drill allows a few of its polls.
READY_FLIPS_WITHIN_S = 5.0
# What an API call may take while the database is down: a refused connection fails at once, and the pool's connect
# timeout (DB_CONNECT_TIMEOUT_S, 3 s) bounds one that hangs.
DOWN_ANSWER_WITHIN_S = 6.0


@pytest.fixture
def db_forwarder(database_url: str) -> Iterator[TcpForwarder]:
    forwarder = TcpForwarder.for_url(database_url)
    yield forwarder
    forwarder.close()


async def ready_status(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, object]]:
    status, body, _ = await call(http, "GET", f"{url}/ready")
    return status, body


async def test_database_down_then_up(
    start_service: StartService,
    database_url: str,
    db_forwarder: TcpForwarder,
    org: Org,
    http: aiohttp.ClientSession,
) -> None:
    stack = start_core(start_service, database_url, {"DATABASE_URL": db_forwarder.url_for(database_url)})
    tokens = await role_tokens(http, stack, org)
    finance = tokens["finance"]
    await wait_for(lambda: _is(http, stack.core.url, 200), READY_FLIPS_WITHIN_S, "core ready before the cut")
    status, body, _ = await post_line(http, stack, finance, new_line(payee="Before the outage"))
    assert status == 201, body
    assert db_forwarder.connections_accepted > 0  # core really talks to PostgreSQL through the forwarder

    db_forwarder.cut()
    await wait_for(lambda: _is(http, stack.core.url, 503), READY_FLIPS_WITHIN_S, "core /ready 503 after the cut")
    status, body = await ready_status(http, stack.core.url)
    assert status == 503 and body["checks"]["postgres"]["status"] == "fail", body  # type: ignore[index]

    # The API answers quickly, with a problem a client can act on (retry later), and changes nothing.
    (status, body, headers), took = await timed(get_lines(http, stack, finance))
    assert took < DOWN_ANSWER_WITHIN_S, took
    assert (status, body["code"]) == (503, "service_unavailable"), body
    assert headers["content-type"].startswith("application/problem+json"), headers
    assert "retry-after" in headers, headers

    key = "chaos-db-outage-1"
    line = new_line(payee="During the outage", amount="-22.00", gst_amount="-2.00")
    (status, body, headers), took = await timed(post_line(http, stack, finance, line, key=key))
    assert took < DOWN_ANSWER_WITHIN_S, took
    assert (status, body["code"]) == (503, "service_unavailable"), body
    assert "retry-after" in headers, headers
    logged = await stack.core.wait_for_log_async(lambda line: line.get("event") == "dependency_unreachable")
    assert logged["level"] == "warning", logged

    db_forwarder.restore()
    await wait_for(lambda: _is(http, stack.core.url, 200), READY_FLIPS_WITHIN_S, "core /ready 200 after the restore")

    # The retry creates the line once; a second retry replays the same answer.
    status, created, _ = await post_line(http, stack, finance, line, key=key)
    assert status == 201, created
    status, replayed, headers = await post_line(http, stack, finance, line, key=key)
    assert (status, replayed["id"]) == (201, created["id"]), replayed
    assert await line_count(database_url) == 2  # the one from before the outage and the retried one: none lost
    status, page, _ = await get_lines(http, stack, finance)
    assert status == 200, page
    assert sorted(item["payee"] for item in page["items"]) == ["Before the outage", "During the outage"], page


async def _is(http: aiohttp.ClientSession, url: str, expected: int) -> bool:
    status, _ = await ready_status(http, url)
    return status == expected


async def test_database_that_hangs_answers_503_within_the_bound(
    start_service: StartService,
    database_url: str,
    db_forwarder: TcpForwarder,
    org: Org,
    http: aiohttp.ClientSession,
) -> None:
    stack = start_core(start_service, database_url, {"DATABASE_URL": db_forwarder.url_for(database_url)})
    finance = (await role_tokens(http, stack, org))["finance"]
    status, page, _ = await get_lines(http, stack, finance)  # the pool holds a connection from now on
    assert status == 200, page

    db_forwarder.stall()
    await wait_for(lambda: _is(http, stack.core.url, 503), READY_FLIPS_WITHIN_S, "core /ready 503 while stalled")
    # Both a pooled connection that stops answering (the statement deadline) and a new one that never completes
    # (the connect deadline) end in a 503 problem, not a hang.
    for attempt in range(2):
        key = f"chaos-db-stall-{attempt}"
        (status, body, headers), took = await timed(
            post_line(http, stack, finance, new_line(payee="During the stall"), key=key)
        )
        assert took < DOWN_ANSWER_WITHIN_S, (attempt, took)
        assert (status, body["code"]) == (503, "service_unavailable"), body
        assert "retry-after" in headers, headers

    db_forwarder.restore()
    await wait_for(lambda: _is(http, stack.core.url, 200), READY_FLIPS_WITHIN_S, "core /ready 200 after the stall")
    assert await line_count(database_url) == 0  # nothing of the refused POSTs was written
    status, created, _ = await post_line(
        http, stack, finance, new_line(payee="During the stall"), key="chaos-db-stall-0"
    )
    assert status == 201, created
    assert await line_count(database_url) == 1
