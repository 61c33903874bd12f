"""RFC 9457 problem documents from the one error table."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from typing import Any

import asyncpg
import orjson
import pytest
from starlette.exceptions import HTTPException
from starlette.requests import Request

from shared.context import GRACE_PERIOD_OVER, current_request_id
from shared.errors import (
    ERRORS,
    PROBLEM_MEDIA_TYPE,
    ApiError,
    AuditFailed,
    ErrorBoundaryMiddleware,
    FieldError,
    code_for_status,
    handle_http_exception,
    problem_body,
)
from shared.log import capture_logs
from shared.types import ASGIApp, Message, Receive, Scope, Send


@pytest.fixture
def request_id() -> Iterator[str]:
    token = current_request_id.set("req-problem")
    try:
        yield "req-problem"
    finally:
        current_request_id.reset(token)


def test_problem_body_shape(request_id: str) -> None:
    body = orjson.loads(problem_body("idempotency_conflict"))
    assert body == {
        "type": "https://apgms.example/problems/idempotency_conflict",
        "title": "Idempotency key reused with a different request",
        "status": 409,
        "detail": "Idempotency key reused with a different request",
        "code": "idempotency_conflict",
        "request_id": request_id,
    }


def test_problem_body_with_detail_errors_and_extra(request_id: str) -> None:
    errors = [FieldError("items.0.amount", "Input should be a valid integer")]
    body = orjson.loads(problem_body("invalid_body", "Bad shape", errors=errors, retry_after_s=3))
    assert body["detail"] == "Bad shape"
    assert body["status"] == 400
    assert body["errors"] == [{"path": "items.0.amount", "message": "Input should be a valid integer"}]
    assert body["retry_after_s"] == 3
    assert body["request_id"] == request_id


def test_problem_body_outside_a_request_has_a_null_request_id() -> None:
    body = orjson.loads(problem_body("not_found"))
    assert body["request_id"] is None
    assert "errors" not in body


def test_api_error_with_an_unknown_code_raises() -> None:
    with pytest.raises(ValueError, match="no_such_code"):
        ApiError("no_such_code")


def test_api_error_takes_status_and_title_from_the_table() -> None:
    error = ApiError("mfa_required", headers={"www-authenticate": "Bearer"})
    assert error.kind.status == 401
    assert error.detail == "Recent multi-factor authentication required"
    assert error.headers == {"www-authenticate": "Bearer"}
    assert ApiError("forbidden", "Only org admins may resolve alerts").detail == "Only org admins may resolve alerts"


def test_error_table_codes_are_snake_case_client_or_server_errors() -> None:
    for code, kind in ERRORS.items():
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", code), code
        assert 400 <= kind.status <= 599, code
        assert kind.title, code


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "bad_request"),
        (401, "unauthorized"),
        (404, "not_found"),
        (405, "method_not_allowed"),
        (409, "conflict"),
        (413, "payload_too_large"),
        (500, "internal_error"),
        (418, "bad_request"),
        (599, "internal_error"),
    ],
)
def test_code_for_status_picks_the_generic_code(status: int, code: str) -> None:
    assert code_for_status(status) == code


async def test_http_exception_keeps_a_real_detail_but_not_the_reason_phrase() -> None:
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": []})
    explained = await handle_http_exception(request, HTTPException(404, "Alert 7 does not exist"))
    assert explained.media_type == PROBLEM_MEDIA_TYPE
    assert orjson.loads(explained.body)["detail"] == "Alert 7 does not exist"
    plain = await handle_http_exception(request, HTTPException(404))
    assert orjson.loads(plain.body)["detail"] == "Not found"


async def test_error_boundary_does_not_send_a_second_response_after_the_first_started() -> None:
    async def half_sent(_: Scope, __: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("broken mid-stream")

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/stream", "headers": []}
    with capture_logs() as logs:
        await ErrorBoundaryMiddleware(half_sent)(scope, receive, send)
    assert [m["type"] for m in sent] == ["http.response.start"]
    assert [entry["event"] for entry in logs] == ["unhandled_error"]


async def test_error_boundary_turns_an_exception_into_a_500_problem(request_id: str) -> None:
    async def broken(_: Scope, __: Receive, ___: Send) -> None:
        raise KeyError("secret-key-name")

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/x", "headers": []}
    with capture_logs():
        await ErrorBoundaryMiddleware(broken)(scope, receive, send)
    assert sent[0]["status"] == 500
    assert (b"content-type", PROBLEM_MEDIA_TYPE.encode()) in sent[0]["headers"]
    body = orjson.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert body["code"] == "internal_error"
    assert body["request_id"] == request_id
    assert b"secret-key-name" not in b"".join(m.get("body", b"") for m in sent[1:])


async def test_a_failed_audit_write_is_a_500_audit_failed_counted_and_logged_once(request_id: str) -> None:
    from prometheus_client import REGISTRY

    org_id, actor = "7d7a6b0e-5c1f-4a39-9a57-0f3c2b1e8d44", "user:3f2c1b0a-9e8d-4c7b-8a69-5f4e3d2c1b0a"

    async def audited(_: Scope, __: Receive, ___: Send) -> None:
        try:
            raise ConnectionResetError("the database went away")
        except ConnectionResetError as exc:
            raise AuditFailed(org_id, "user.create", actor, "ConnectionResetError: the database went away") from exc

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    def audit_failed_total() -> float:
        return REGISTRY.get_sample_value("security_events_total", {"event": "audit_failed"}) or 0.0

    before = audit_failed_total()
    scope = {"type": "http", "method": "POST", "path": "/users", "headers": []}
    with capture_logs() as logs:
        await ErrorBoundaryMiddleware(audited)(scope, receive, send)
    assert sent[0]["status"] == 500
    body = orjson.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert (body["code"], body["title"], body["request_id"]) == (
        "audit_failed",
        ERRORS["audit_failed"].title,
        request_id,
    )
    assert b"database" not in b"".join(m.get("body", b"") for m in sent[1:])
    assert audit_failed_total() == before + 1
    assert [entry["event"] for entry in logs] == ["security_event", "audit_failed"]
    security, failed = logs
    assert (security["security.event"], security["org_id"], security["action"]) == (
        "audit_failed",
        org_id,
        "user.create",
    )
    assert (failed["log_level"], failed["org_id"], failed["action"]) == ("error", org_id, "user.create")
    assert failed["reason"] == "ConnectionResetError: the database went away"


async def run_until_cancelled(app: ASGIApp, message: str) -> tuple[list[Message], asyncio.Task[None]]:
    """`app` behind the error boundary in its own task, cancelled with `message` once it is waiting."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/slow", "headers": []}
    task = asyncio.create_task(ErrorBoundaryMiddleware(app)(scope, receive, send))
    await asyncio.sleep(0.01)
    task.cancel(message)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return sent, task


async def waits_forever(_: Scope, __: Receive, ___: Send) -> None:
    await asyncio.sleep(3600)


async def streams_then_waits(_: Scope, __: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"part", "more_body": True})
    await asyncio.sleep(3600)


async def test_a_request_cut_off_by_the_grace_period_answers_503_not_500() -> None:
    with capture_logs() as logs:
        sent, task = await run_until_cancelled(waits_forever, GRACE_PERIOD_OVER)
    assert not task.cancelled()
    assert sent[0]["status"] == 503
    assert orjson.loads(sent[1]["body"])["code"] == "service_unavailable"
    assert (b"connection", b"close") in sent[0]["headers"]
    assert [entry["event"] for entry in logs] == ["request_cancelled"]


async def test_a_started_response_cut_off_by_the_grace_period_is_aborted_not_completed() -> None:
    with capture_logs() as logs:
        sent, task = await run_until_cancelled(streams_then_waits, GRACE_PERIOD_OVER)
    assert task.cancelled(), "the server must see the failure and abort the connection"
    assert [m.get("more_body") for m in sent[1:]] == [True]
    assert logs[0]["event"] == "request_cancelled"
    assert logs[0]["started"] is True


async def test_any_other_cancellation_passes_through_untouched() -> None:
    sent, task = await run_until_cancelled(waits_forever, "client went away")
    assert task.cancelled()
    assert sent == []


async def test_an_upload_the_client_abandons_is_one_info_line_and_a_499_not_a_500() -> None:
    from starlette.requests import Request as StarletteRequest

    from shared.context import RequestContextMiddleware
    from shared.metrics import REQUESTS, MetricsMiddleware

    async def reads_the_body(scope: Scope, receive: Receive, _: Send) -> None:
        await StarletteRequest(scope, receive).body()

    messages = iter([{"type": "http.request", "body": b'{"a":', "more_body": True}, {"type": "http.disconnect"}])

    async def receive() -> Message:
        return next(messages)

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    app = RequestContextMiddleware(MetricsMiddleware(ErrorBoundaryMiddleware(reads_the_body)))
    scope = {"type": "http", "method": "POST", "path": "/upload", "headers": [], "client": ("203.0.113.9", 1)}
    before = REQUESTS.values.get(("POST", "unmatched", "499"), 0)
    with capture_logs() as logs:
        await app(scope, receive, send)
    assert sent == []  # nobody is left to answer
    assert [(entry["event"], entry["log_level"]) for entry in logs] == [
        ("client_disconnected", "info"),
        ("request", "info"),
    ]
    assert logs[1]["status"] == 499
    assert REQUESTS.values[("POST", "unmatched", "499")] == before + 1


async def boundary_answer(app: ASGIApp, method: str = "GET") -> tuple[list[Message], list[dict[str, Any]]]:
    """The messages ErrorBoundaryMiddleware sends for `app` on a bodiless request, and the log lines it wrote."""

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": "/x", "headers": []}
    with capture_logs() as logs:
        await ErrorBoundaryMiddleware(app)(scope, receive, send)
    return sent, logs


@pytest.mark.parametrize(
    ("error", "sqlstate"),
    [(asyncpg.DeadlockDetectedError, "40P01"), (asyncpg.SerializationError, "40001")],
)
async def test_a_deadlock_or_serialization_failure_is_a_503_to_retry_not_a_500(
    request_id: str, error: type[asyncpg.PostgresError], sqlstate: str
) -> None:
    async def conflicted(_: Scope, __: Receive, ___: Send) -> None:
        raise error("deadlock detected: Process 1 waits for ShareLock on transaction 2")

    sent, logs = await boundary_answer(conflicted, method="POST")
    assert sent[0]["status"] == 503
    assert (b"retry-after", b"1") in sent[0]["headers"]
    body = orjson.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert (body["code"], body["request_id"]) == ("service_unavailable", request_id)
    assert b"Process" not in b"".join(m.get("body", b"") for m in sent[1:])
    assert [(e["event"], e["log_level"], e["sqlstate"]) for e in logs] == [
        ("transaction_conflict", "warning", sqlstate)
    ]


async def test_a_dependency_deadline_is_a_503_to_retry_not_a_500(request_id: str) -> None:
    async def starved(_: Scope, __: Receive, ___: Send) -> None:
        async with asyncio.timeout(0):
            await asyncio.sleep(1)  # stands in for pool.acquire(timeout=...) finding no connection in time

    sent, logs = await boundary_answer(starved)
    assert sent[0]["status"] == 503
    assert (b"retry-after", b"1") in sent[0]["headers"]
    body = orjson.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert (body["code"], body["request_id"]) == ("service_unavailable", request_id)
    assert [(e["event"], e["log_level"]) for e in logs] == [("dependency_timeout", "warning")]
    assert logs[0]["at"].endswith("in starved")


async def test_a_statement_or_lock_timeout_is_a_503_to_retry_not_a_500(request_id: str) -> None:
    async def slow_database(_: Scope, __: Receive, ___: Send) -> None:
        raise asyncpg.QueryCanceledError("canceling statement due to statement timeout")

    sent, logs = await boundary_answer(slow_database)
    assert sent[0]["status"] == 503
    assert (b"retry-after", b"1") in sent[0]["headers"]
    body = orjson.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert (body["code"], body["request_id"]) == ("service_unavailable", request_id)
    assert [(e["event"], e["sqlstate"]) for e in logs] == [("dependency_timeout", "57014")]


async def test_any_other_database_error_is_still_a_500_unhandled_error(request_id: str) -> None:
    async def broken(_: Scope, __: Receive, ___: Send) -> None:
        raise asyncpg.UniqueViolationError("duplicate key")

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/x", "headers": []}
    with capture_logs() as logs:
        await ErrorBoundaryMiddleware(broken)(scope, receive, send)
    assert sent[0]["status"] == 500
    assert [e["event"] for e in logs] == ["unhandled_error"]
