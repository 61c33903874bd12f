"""RFC 9457 problem details from one error table.

    ApiError(code)                 raised by handlers; rendered with the table's status and title
      └─ ValidationFailed          `invalid_body` / `invalid_query` with `errors: [{path, message}]`
    HTTPException (Starlette)      mapped by status: 404 not_found, 405 method_not_allowed, ...
    ClientDisconnect (Starlette)   the client left mid-body: nothing sent, one info line, 499 in the access log
    AuditFailed                    500 audit_failed: the change's audit row was not written, so the change was not
                                   made; one `audit_failed` line and the `audit_failed` security event
    a transaction PostgreSQL       503 service_unavailable with Retry-After: 1 (a deadlock or serialization failure
    aborted to break a conflict    rolled the whole transaction back, so the same request again is safe); one
                                   `transaction_conflict` warning line
    TimeoutError, or a statement   503 service_unavailable with Retry-After: 1 (a pool connection, another service,
    or lock timeout                Redis or PostgreSQL did not answer within its deadline); one `dependency_timeout`
                                   warning line
    a dependency unreachable       503 service_unavailable with Retry-After: 1 (a connection refused or dropped, a
                                   PostgreSQL connection error or shutdown); one `dependency_unreachable` warning line
    any other exception            500 internal_error, logged once with the request ID

Every body carries `type`, `title`, `status`, `detail`, `code` and `request_id`; none carries a stack trace.
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from shared.context import GRACE_PERIOD_OVER, Exchange, current_request_id, watch_response
from shared.log import get_logger
from shared.metrics import record_security_event
from shared.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "ERRORS",
    "EXCEPTION_HANDLERS",
    "PROBLEM_MEDIA_TYPE",
    "PROBLEM_TYPE_BASE",
    "TRANSACTION_CONFLICT_SQLSTATES",
    "UNREACHABLE_SQLSTATES",
    "ApiError",
    "AuditFailed",
    "ErrorBoundaryMiddleware",
    "ErrorKind",
    "FieldError",
    "NotNow",
    "ProblemItem",
    "Responder",
    "audit_failed",
    "client_closed_request",
    "code_for_status",
    "dependency_unreachable",
    "handle_api_error",
    "handle_http_exception",
    "not_now",
    "problem_body",
    "problem_response",
    "transient",
]

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://apgms.example/problems/"
# nginx's status for a request whose client closed the connection first: logged and counted, never sent.
CLIENT_CLOSED_REQUEST = 499
# SQLSTATEs of a transaction PostgreSQL aborted to break a conflict with another (deadlock_detected,
# serialization_failure): nothing of it was kept, so the client is told to retry, not that the server failed.
TRANSACTION_CONFLICT_SQLSTATES = frozenset({"40P01", "40001"})
CONFLICT_RETRY_AFTER_S = 1
# SQLSTATEs of a database that cannot be reached or is going away: class 08 (connection_exception) and 57P01-57P03
# (admin_shutdown, crash_shutdown, cannot_connect_now). The request did not run, or its transaction was lost whole.
UNREACHABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})
UNREACHABLE_SQLSTATE_CLASS = "08"
# SQLSTATEs of a statement PostgreSQL gave up on because it waited too long: 57014 query_canceled (the
# statement_timeout) and 55P03 lock_not_available (a lock_timeout). The database is slow or busy, not broken.
DEADLINE_SQLSTATES = frozenset({"57014", "55P03"})

log = get_logger(__name__)


@dataclass(frozen=True)
class ErrorKind:
    status: int
    title: str


ERRORS: dict[str, ErrorKind] = {
    "bad_request": ErrorKind(400, "Bad request"),
    "bad_host": ErrorKind(400, "Host not served here"),
    "invalid_body": ErrorKind(400, "Request body is invalid"),
    "invalid_query": ErrorKind(400, "Query parameters are invalid"),
    "unauthorized": ErrorKind(401, "Authentication required"),
    "bad_credentials": ErrorKind(401, "Email or password is incorrect"),
    "invalid_token": ErrorKind(401, "Token is invalid or expired"),
    "mfa_required": ErrorKind(401, "Recent multi-factor authentication required"),
    "mfa_invalid": ErrorKind(401, "One-time code is invalid or already used"),
    "access_denied": ErrorKind(401, "Access code, credential or org not accepted"),
    "forbidden": ErrorKind(403, "Not allowed"),
    "cors_forbidden": ErrorKind(403, "Origin not allowed"),
    "csrf_failed": ErrorKind(403, "The form could not be verified; reload the page and try again"),
    "not_found": ErrorKind(404, "Not found"),
    "method_not_allowed": ErrorKind(405, "Method not allowed"),
    "not_acceptable": ErrorKind(406, "Not acceptable"),
    "request_timeout": ErrorKind(408, "Request body not received in time"),
    "conflict": ErrorKind(409, "Conflict"),
    "idempotency_conflict": ErrorKind(409, "Idempotency key reused with a different request"),
    "idempotency_in_progress": ErrorKind(409, "A request with this idempotency key is still in progress"),
    "org_choice_required": ErrorKind(409, "The password matches accounts in several orgs; choose one with org_id"),
    "already_resolved": ErrorKind(409, "The alert is already resolved"),
    "plan_exists": ErrorKind(409, "The BAS cycle already has an open payment plan"),
    "plan_decided": ErrorKind(409, "The payment plan was already approved or rejected"),
    "cycle_not_blocked": ErrorKind(409, "A payment plan is only for a BLOCKED BAS cycle"),
    "bas_cycle_blocked": ErrorKind(409, "The BAS cycle has a shortfall and cannot be lodged"),
    "bas_cycle_lodged": ErrorKind(409, "The BAS cycle is already lodged"),
    "bas_period_open": ErrorKind(409, "The BAS period has not ended and cannot be lodged yet"),
    "bas_earlier_cycle_unlodged": ErrorKind(409, "An earlier BAS cycle with bank lines must be lodged first"),
    "gone": ErrorKind(410, "Gone"),
    "payload_too_large": ErrorKind(413, "Request body too large"),
    "unsupported_media_type": ErrorKind(415, "Unsupported media type"),
    "invalid_rows": ErrorKind(422, "Some rows are invalid"),
    "designated_withdrawal_refused": ErrorKind(422, "Money cannot leave a designated account"),
    "rate_limited": ErrorKind(429, "Too many requests"),
    "internal_error": ErrorKind(500, "Internal server error"),
    "audit_failed": ErrorKind(500, "Audit trail could not be written"),
    "upstream_unavailable": ErrorKind(502, "Upstream service unavailable"),
    "service_unavailable": ErrorKind(503, "Service unavailable"),
    "upstream_busy": ErrorKind(503, "Upstream service busy"),
    "regulator_busy": ErrorKind(503, "The regulator route is at its concurrency limit"),
    "upstream_timeout": ErrorKind(504, "Upstream service timed out"),
}

_CODE_BY_STATUS = {kind.status: code for code, kind in reversed(ERRORS.items())}


class ProblemItem(Protocol):
    """One entry of a problem's `errors` list: a field of a body or query, a row of an import."""

    def document(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def document(self) -> dict[str, Any]:
        return {"path": self.path, "message": self.message}


class ApiError(Exception):
    """An error a client can act on; `code` must be a key of `ERRORS`."""

    def __init__(
        self,
        code: str,
        detail: str | None = None,
        *,
        errors: Sequence[ProblemItem] = (),
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        if code not in ERRORS:
            raise ValueError(f"unknown error code {code!r}")
        self.code = code
        self.kind = ERRORS[code]
        self.detail = detail or self.kind.title
        self.errors = tuple(errors)
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        super().__init__(f"{code}: {self.detail}")


class AuditFailed(Exception):
    """The audit row of a change could not be written (`shared.audit.append`), raised from its cause inside the
    caller's transaction so that the change rolls back with it; the error boundary answers 500 `audit_failed`.
    It names the org and the action, never the detail (which a log line must not carry)."""

    def __init__(self, org_id: str, action: str, actor: str, reason: str) -> None:
        self.org_id = org_id
        self.action = action
        self.actor = actor
        self.reason = reason
        super().__init__(f"audit record {action!r} of org {org_id} not written: {reason}")


def code_for_status(status: int) -> str:
    if status in _CODE_BY_STATUS:
        return _CODE_BY_STATUS[status]
    return "bad_request" if status < 500 else "internal_error"


def problem_body(code: str, detail: str | None = None, *, errors: Sequence[ProblemItem] = (), **extra: Any) -> bytes:
    """The RFC 9457 JSON document for `code`, stamped with the current request ID."""
    kind = ERRORS[code]
    document: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": kind.title,
        "status": kind.status,
        "detail": detail or kind.title,
        "code": code,
        "request_id": current_request_id.get(),
        **extra,
    }
    if errors:
        document["errors"] = [e.document() for e in errors]
    return orjson.dumps(document)


def problem_response(
    code: str,
    detail: str | None = None,
    *,
    errors: Sequence[ProblemItem] = (),
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    return Response(
        problem_body(code, detail, errors=errors, **extra),
        status_code=ERRORS[code].status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=dict(headers or {}),
    )


async def handle_api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return problem_response(exc.code, exc.detail, errors=exc.errors, headers=exc.headers, **exc.extra)


async def handle_http_exception(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = code_for_status(exc.status_code)
    # Starlette fills `detail` with the reason phrase; ours is the title, so only a real explanation is kept.
    detail = exc.detail if exc.detail and exc.detail != HTTPStatus(exc.status_code).phrase else None
    response = problem_response(code, detail, headers=exc.headers)
    response.status_code = exc.status_code
    return response


EXCEPTION_HANDLERS = {ApiError: handle_api_error, HTTPException: handle_http_exception}


def client_closed_request(scope: Scope, exchange: Exchange) -> None:
    """The client closed its connection before its request was complete: nothing can be sent, so the access log
    and the metrics record 499 (not a server error), with one info line."""
    if not exchange.started:
        exchange.status = CLIENT_CLOSED_REQUEST
    log.info("client_disconnected", path=scope.get("path"), method=scope.get("method"))


def audit_failed(scope: Scope, exc: AuditFailed) -> None:
    """Count and log a change refused because its audit row could not be written: the `audit_failed` security
    event, and one `audit_failed` error line with the cause (no detail, so no PII)."""
    record_security_event("audit_failed", org_id=exc.org_id, principal=exc.actor, action=exc.action)
    log.error(
        "audit_failed",
        org_id=exc.org_id,
        action=exc.action,
        reason=exc.reason,
        path=scope.get("path"),
        method=scope.get("method"),
        exc_info=exc,
    )


def _raised_at(exc: BaseException) -> str | None:
    """`file:line in function` of the innermost frame of our own code in `exc`'s traceback (the call whose deadline
    ran out), past the frames of the standard library and installed packages."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "site-packages" not in f.filename and not f.filename.startswith(sys.base_prefix)]
    if not frames:
        return None
    frame = (ours or frames)[-1]
    return f"{frame.filename}:{frame.lineno} in {frame.name}"


def dependency_unreachable(exc: BaseException) -> bool:
    """True for an error that means a dependency could not be reached at all (a refused or reset connection, a
    PostgreSQL connection error or shutdown), as opposed to one that answered with a failure."""
    if isinstance(exc, ConnectionError):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and (
        sqlstate.startswith(UNREACHABLE_SQLSTATE_CLASS) or sqlstate in UNREACHABLE_SQLSTATES
    )


@dataclass(frozen=True)
class NotNow:
    """A failure that says "not now" rather than "wrong", as the boundary answers it: 503 `service_unavailable` with
    Retry-After, `detail` for the client and one warning line named `event`."""

    event: str
    detail: str


def not_now(exc: BaseException) -> NotNow | None:
    """What a deadline that passed (TimeoutError, a statement or lock timeout), an unreachable dependency or a
    transaction conflict is answered; None for any other failure."""
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(exc, TimeoutError):
        # A pool connection, another service or Redis did not answer in time: short of something, not broken.
        return NotNow("dependency_timeout", "Something this request needs did not answer in time; try again shortly")
    if sqlstate in DEADLINE_SQLSTATES:
        # The database is slow or busy (a queue on an org's audit lock); the transaction was rolled back whole.
        return NotNow(
            "dependency_timeout", "The database did not answer in time; nothing was changed, try again shortly"
        )
    if dependency_unreachable(exc):
        # PostgreSQL (or another dependency) is down: a refused connection fails at once, so without this every
        # request during an outage would be a 500 and an alert for a bug that is not there.
        return NotNow("dependency_unreachable", "Something this request needs cannot be reached; try again shortly")
    if sqlstate in TRANSACTION_CONFLICT_SQLSTATES:
        # A deadlock or serialization failure rolled the whole transaction back: the same request again is safe.
        return NotNow(
            "transaction_conflict", "The request conflicted with another one and changed nothing; send it again"
        )
    return None


def transient(exc: BaseException) -> bool:
    """True for a failure `not_now` answers with 503: code that wraps errors (the audit trail's `append`) lets these
    through unwrapped."""
    return not_now(exc) is not None


# How the boundary answers: (scope, code, detail, headers) → the response; a problem document unless a sub-app
# (the regulator's HTML portal) answers in its own format.
Responder = Callable[[Scope, str, "str | None", Mapping[str, str]], Response]


def _problem_answer(_: Scope, code: str, detail: str | None, headers: Mapping[str, str]) -> Response:
    return problem_response(code, detail, headers=headers)


class ErrorBoundaryMiddleware:
    """Turns an unexpected exception into one logged line and a 500 `internal_error` problem, a deadlock or
    serialization failure into a 503 `service_unavailable` with Retry-After (see `not_now`), a request
    cancelled because the shutdown grace period ran out into a 503 `service_unavailable` (the client may retry
    elsewhere; it is not a server error), and a body the client abandoned into a 499 (see `client_closed_request`).

    It sits inside the request-context and metrics middleware, so the 500 is counted and carries `x-request-id`;
    Starlette's own ServerErrorMiddleware would re-raise past them and let the server print a traceback.
    `respond` renders the answer (default: the problem document); a sub-app that answers in HTML wraps itself in
    a boundary of its own with its renderer, so its error pages keep its format and headers.
    """

    def __init__(self, app: ASGIApp, *, respond: Responder | None = None) -> None:
        self.app = app
        self.respond = respond or _problem_answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange, send = watch_response(scope, send)
        respond = self.respond
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError as exc:
            if exc.args != (GRACE_PERIOD_OVER,):
                raise
            started = exchange.started
            log.warning("request_cancelled", path=scope.get("path"), method=scope.get("method"), started=started)
            if started:
                raise  # the server must abort the connection: a cut-off body must not look complete
            if (task := asyncio.current_task()) is not None:
                task.uncancel()  # handled here: nothing further up should see a pending cancellation
            detail = "The server shut down before this request finished"
            await respond(scope, "service_unavailable", detail, {"connection": "close"})(scope, receive, send)
        except ClientDisconnect:
            client_closed_request(scope, exchange)
        except AuditFailed as exc:
            audit_failed(scope, exc)
            if not exchange.started:
                await respond(scope, "audit_failed", None, {})(scope, receive, send)
        except Exception as exc:
            if (answer := not_now(exc)) is not None:
                log.warning(
                    answer.event,
                    path=scope.get("path"),
                    method=scope.get("method"),
                    error=type(exc).__name__,
                    sqlstate=getattr(exc, "sqlstate", None),
                    at=_raised_at(exc),
                )
                if not exchange.started:
                    retry = {"retry-after": str(CONFLICT_RETRY_AFTER_S)}
                    await respond(scope, "service_unavailable", answer.detail, retry)(scope, receive, send)
                return
            log.exception("unhandled_error", path=scope.get("path"), method=scope.get("method"))
            if not exchange.started:
                await respond(scope, "internal_error", None, {})(scope, receive, send)
