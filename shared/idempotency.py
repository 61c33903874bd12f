"""Idempotency keys for the POSTs that create or change money state (SPEC: Idempotency, issue #10).

    check_key(values)                   the `Idempotency-Key` header: None when absent, 400 unless 1-255 visible ASCII
    fingerprint(body, actor, target)    sha256 of the canonical JSON of what the request asks, and who asks it
    decide(record, fingerprint, now)    Proceed | Replay(response) | Conflict | InProgress            (pure)
    claim / complete                    the asyncpg adapter, in the caller's transaction
    idempotent(request, conn, work)     what a handler calls: `work` runs once per key, later requests replay it
    delete_expired / run_cleanup        expired records deleted in small batches that never wait on a locked row

A record is keyed by (org, route, key): the route is the method and template (`POST /bank-lines`), so label
cardinality is the route table's. Everything else that identifies the request is in the fingerprint: the parsed
body as canonical JSON (so key order and whitespace do not matter), the actor, and the target (path and query),
so one key reused with another body, by another actor or on another resource is a conflict, never a replay.
A body that is not JSON (or no body) is passed as bytes and hashed as it is.

How a claim works. The record is inserted, pending, in the request's transaction before the work
(`INSERT ... ON CONFLICT DO NOTHING`); the work and the answer follow in that transaction, which commits them
together. So nobody ever sees a pending record of a live request: a second request with the key waits on the
unique index until the first transaction ends, then either finds the completed record (a replay) or, if the first
rolled back, inserts its own (READ COMMITTED only, so that the statement after the wait sees that commit:
`claim` refuses another isolation level). That wait is bounded by `lock_timeout` (CLAIM_WAIT_MS): past it the
answer is 409 `idempotency_in_progress` with `Retry-After: 1`. One second because the retry waits up to
CLAIM_WAIT_MS again at the server, so a client that obeys polls at most every four seconds and gets its answer as
soon as it exists. Replays read the record without locking it, so 49 replays do not queue behind each other; the
lock the issue asks for is the row a request inserted or took over (an expired record is taken over by a
conditional UPDATE).

What is stored is the `Response` the work returned, whatever its status. An exception (an `ApiError` 4xx as much as
a 500) rolls the claim back with the work: nothing happened, so the client may correct the request and retry with
the same key. Only REPLAYED_HEADERS are kept; `Set-Cookie`, `x-request-id` and the like are never replayed.
Records expire RECORD_TTL after the claim; an expired one counts as absent even before `run_cleanup` deletes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeAlias
from uuid import UUID

import asyncpg
import orjson
import rfc8785
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from shared.canonical import canonical_json
from shared.db import Database
from shared.errors import ApiError
from shared.log import get_logger
from shared.metrics import route_label
from shared.types import Scope

__all__ = [
    "CLAIM_WAIT_MS",
    "IN_PROGRESS_RETRY_AFTER_S",
    "KEY_HEADER",
    "KEY_MAX_CHARS",
    "MAX_EXACT_INTEGER",
    "RECORD_TTL",
    "REPLAYED_HEADERS",
    "REPLAY_HEADER",
    "REQUIRED_ISOLATION",
    "Conflict",
    "Decision",
    "InProgress",
    "Proceed",
    "Record",
    "RecordKey",
    "Replay",
    "StoredResponse",
    "check_key",
    "claim",
    "complete",
    "decide",
    "delete_expired",
    "fingerprint",
    "idempotent",
    "replay_response",
    "request_target",
    "route_name",
    "run_cleanup",
    "stored_response",
    "uncanonical_body_error",
]

KEY_HEADER = "idempotency-key"
REPLAY_HEADER = "idempotent-replay"
KEY_MAX_CHARS = 255
KEY_PATTERN = re.compile(rf"[!-~]{{1,{KEY_MAX_CHARS}}}")
RECORD_TTL = timedelta(hours=24)
# Below the statement timeout (DB_STATEMENT_TIMEOUT_MS, 5 s), so a long wait ends as "in progress", not as a
# cancelled statement (a 500).
CLAIM_WAIT_MS = 3_000
IN_PROGRESS_RETRY_AFTER_S = 1
# A record deleted by the cleanup or taken over by another request between our statements sends us round again;
# this many rounds without an answer is reported as in progress.
CLAIM_ATTEMPTS = 3
# What a replay repeats: the representation's description and where the created resource is.
REPLAYED_HEADERS = frozenset({"content-type", "content-language", "content-location", "location", "etag"})
# Answers of money routes are small documents; a larger one is a programming error, not something to store.
MAX_STORED_BODY_BYTES = 256 * 1024
CLEANUP_BATCH_ROWS = 500
CLEANUP_INTERVAL_S = 300.0
CLEANUP_ACQUIRE_TIMEOUT_S = 5.0
IN_PROGRESS_CODE = "idempotency_in_progress"
# The largest integer canonical JSON carries exactly (RFC 8785 3.2.2.3); past it the body has no fingerprint.
MAX_EXACT_INTEGER = 2**53 - 1
# The isolation level `claim` needs (the module docstring says why), as `transaction_isolation` spells it.
REQUIRED_ISOLATION = "read committed"

log = get_logger(__name__)


# --- the pure core ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True)
class Record:
    """A stored record as the decision needs it; `response` is None while the claim is pending."""

    fingerprint: bytes
    response: StoredResponse | None
    expires_at: datetime


@dataclass(frozen=True)
class Proceed:
    """No live record: this request does the work."""


@dataclass(frozen=True)
class Replay:
    response: StoredResponse


@dataclass(frozen=True)
class Conflict:
    """The key was used for another request (body, actor or target)."""


@dataclass(frozen=True)
class InProgress:
    """The key's first request has not finished."""


Decision: TypeAlias = Proceed | Replay | Conflict | InProgress


def check_key(values: Sequence[str]) -> str | None:
    """The key from the `Idempotency-Key` header lines: None when there is none; 400 `bad_request` for several
    lines or a value that is not 1-255 visible ASCII characters (0x21-0x7e)."""
    if not values:
        return None
    if len(values) > 1:
        raise ApiError("bad_request", "Send one Idempotency-Key header")
    if KEY_PATTERN.fullmatch(values[0]) is None:
        raise ApiError("bad_request", f"Idempotency-Key must be 1-{KEY_MAX_CHARS} visible ASCII characters (no spaces)")
    return values[0]


def fingerprint(body: object, actor: str, target: str) -> bytes:
    """sha256 of the canonical JSON of {actor, target, body}. `body` is the parsed JSON value or the validated
    pydantic model (taken as its JSON dump); `bytes` for a body that is not JSON, hashed as sent (b"" for none).
    A value canonical JSON refuses raises its error: `TypeError` for a float (money is never a float),
    `ValueError` for an integer beyond +-(2**53 - 1) or a lone surrogate (`idempotent` answers both with 400)."""
    if isinstance(body, bytes):
        shown: dict[str, object] = {"raw_sha256": hashlib.sha256(body).hexdigest()}
    elif isinstance(body, BaseModel):
        shown = {"json": body.model_dump(mode="json")}
    else:
        shown = {"json": body}
    return hashlib.sha256(canonical_json({"actor": actor, "target": target, "body": shown})).digest()


def uncanonical_body_error(exc: TypeError | ValueError) -> ApiError:
    """400 `invalid_body` for a body `fingerprint` cannot hash, naming what in it has no canonical JSON."""
    if isinstance(exc, TypeError):
        problem = "a fractional number (send fractions and amounts as strings)"
    elif isinstance(exc, rfc8785.IntegerDomainError):
        problem = f"an integer beyond +-{MAX_EXACT_INTEGER} (send it as a string)"
    else:
        problem = "text that is not valid Unicode (a lone surrogate)"
    return ApiError("invalid_body", f"The body holds {problem}, so its Idempotency-Key cannot be checked")


def decide(record: Record | None, request_fingerprint: bytes, now: datetime) -> Decision:
    """What a request with `request_fingerprint` does, given its key's record (None when there is none)."""
    if record is None or record.expires_at <= now:
        return Proceed()
    if record.fingerprint != request_fingerprint:
        return Conflict()
    if record.response is None:
        return InProgress()
    return Replay(record.response)


def stored_response(response: Response) -> StoredResponse:
    """What is kept of a handler's answer: status, REPLAYED_HEADERS and body. A streamed answer has no body to
    keep (`TypeError`); one over MAX_STORED_BODY_BYTES is a `ValueError`."""
    body = getattr(response, "body", None)
    if not isinstance(body, bytes | memoryview):
        raise TypeError(f"an idempotent route must answer with a complete body, not {type(response).__qualname__}")
    if len(body) > MAX_STORED_BODY_BYTES:
        raise ValueError(f"an idempotent answer is {len(body)} bytes, more than {MAX_STORED_BODY_BYTES} kept")
    headers = tuple(
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in response.raw_headers
        if name.decode("latin-1") in REPLAYED_HEADERS
    )
    return StoredResponse(response.status_code, headers, bytes(body))


def replay_response(stored: StoredResponse) -> Response:
    """The stored answer again, marked `Idempotent-Replay: true`."""
    return Response(stored.body, status_code=stored.status, headers={**dict(stored.headers), REPLAY_HEADER: "true"})


def route_name(scope: Scope) -> str:
    """The record's route: method and matched route template, `POST /bank-lines/:id/split`."""
    return f"{scope.get('method', '')} {route_label(scope)}"


def request_target(scope: Scope) -> str:
    """Path and query as sent: part of the fingerprint, so one key on two resources of one route conflicts."""
    query = scope.get("query_string", b"").decode("latin-1")
    path = str(scope.get("path", ""))
    return f"{path}?{query}" if query else path


def in_progress_error() -> ApiError:
    return ApiError(
        IN_PROGRESS_CODE,
        "A request with this Idempotency-Key is still in progress; retry shortly",
        headers={"retry-after": str(IN_PROGRESS_RETRY_AFTER_S)},
    )


def conflict_error() -> ApiError:
    return ApiError("idempotency_conflict", "This Idempotency-Key was used with a different request")


# --- the asyncpg adapter ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordKey:
    org_id: UUID
    route: str
    key: str


# Read the setting before changing it: the MATERIALIZED CTE is evaluated before the select list that sets it. The
# same statement reads the isolation level, and changes nothing in a transaction `claim` refuses.
_SET_LOCK_TIMEOUT = """
WITH old AS MATERIALIZED (
    SELECT current_setting('lock_timeout') AS value, current_setting('transaction_isolation') AS isolation
)
SELECT old.value, old.isolation,
       CASE WHEN old.isolation = $2 THEN set_config('lock_timeout', $1, true) END AS lock_timeout
FROM old
"""
_RESTORE_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', $1, true)"
_INSERT = """
INSERT INTO idempotency.records (org_id, route, key, fingerprint, status, expires_at)
VALUES ($1, $2, $3, $4, 'pending', now() + $5::interval)
ON CONFLICT (org_id, route, key) DO NOTHING
RETURNING true
"""
_READ = """
SELECT fingerprint, status, response_status, headers::text AS headers, body, expires_at, now() AS now
FROM idempotency.records WHERE org_id = $1 AND route = $2 AND key = $3
"""
_TAKE_OVER = """
UPDATE idempotency.records
SET fingerprint = $4, status = 'pending', response_status = NULL, headers = NULL, body = NULL,
    created_at = now(), completed_at = NULL, expires_at = now() + $5::interval
WHERE org_id = $1 AND route = $2 AND key = $3 AND expires_at <= now()
RETURNING true
"""
_COMPLETE = """
UPDATE idempotency.records
SET status = 'completed', response_status = $4, headers = $5::text::jsonb, body = $6, completed_at = now()
WHERE org_id = $1 AND route = $2 AND key = $3 AND status = 'pending'
RETURNING true
"""
# SKIP LOCKED: a record a request holds (being taken over) is left for the next round instead of waited for.
_DELETE_EXPIRED = """
DELETE FROM idempotency.records WHERE ctid IN (
    SELECT ctid FROM idempotency.records WHERE expires_at <= now() LIMIT $1 FOR UPDATE SKIP LOCKED
)
"""


async def claim(
    conn: asyncpg.Connection,
    slot: RecordKey,
    request_fingerprint: bytes,
    *,
    ttl: timedelta = RECORD_TTL,
    wait_ms: int = CLAIM_WAIT_MS,
) -> Decision:
    """Claim `slot` in the caller's transaction, waiting at most `wait_ms` for another request holding it.

    Proceed: the caller holds the pending record and must `complete` it in this transaction. After Conflict or
    InProgress the caller must give the transaction up (a wait that timed out has aborted it).

    READ COMMITTED only: a request that waited on the first one's record must then see it committed, which a
    REPEATABLE READ or SERIALIZABLE snapshot taken before that commit does not (PostgreSQL raises a serialization
    failure instead). Another isolation level is a `RuntimeError` (a programming error), found in the statement
    that sets the wait; a serialization failure all the same is InProgress (the client retries)."""
    if not conn.is_in_transaction():
        raise RuntimeError("claim an idempotency key in the transaction that does the work")
    setting = await conn.fetchrow(_SET_LOCK_TIMEOUT, f"{wait_ms}ms", REQUIRED_ISOLATION)
    if setting is None or setting["isolation"] != REQUIRED_ISOLATION:
        isolation = None if setting is None else setting["isolation"]
        raise RuntimeError(f"claim an idempotency key in a {REQUIRED_ISOLATION} transaction, not {isolation}")
    try:
        decision = await _claim(conn, slot, request_fingerprint, ttl)
    except (asyncpg.exceptions.LockNotAvailableError, asyncpg.exceptions.SerializationError):
        return InProgress()
    await conn.fetchval(_RESTORE_LOCK_TIMEOUT, setting["value"])
    return decision


async def _claim(conn: asyncpg.Connection, slot: RecordKey, request_fingerprint: bytes, ttl: timedelta) -> Decision:
    keys = (slot.org_id, slot.route, slot.key)
    for _ in range(CLAIM_ATTEMPTS):
        if await conn.fetchval(_INSERT, *keys, request_fingerprint, ttl):
            return Proceed()
        row = await conn.fetchrow(_READ, *keys)
        if row is None:
            continue  # expired and deleted by the cleanup since the insert saw it
        decision = decide(_record(row), request_fingerprint, row["now"])
        if not isinstance(decision, Proceed) or await conn.fetchval(_TAKE_OVER, *keys, request_fingerprint, ttl):
            return decision
    return InProgress()


def _record(row: asyncpg.Record) -> Record:
    response = None
    if row["status"] == "completed":
        headers = tuple((str(name), str(value)) for name, value in orjson.loads(row["headers"]))
        response = StoredResponse(row["response_status"], headers, bytes(row["body"]))
    return Record(bytes(row["fingerprint"]), response, row["expires_at"])


async def complete(conn: asyncpg.Connection, slot: RecordKey, response: StoredResponse) -> None:
    """Store the answer in the pending record this transaction claimed."""
    headers = orjson.dumps([list(pair) for pair in response.headers]).decode()
    if not await conn.fetchval(_COMPLETE, slot.org_id, slot.route, slot.key, response.status, headers, response.body):
        raise RuntimeError(f"no pending idempotency record for {slot.route} to complete")


async def delete_expired(conn: asyncpg.Connection, limit: int = CLEANUP_BATCH_ROWS) -> int:
    """Delete at most `limit` expired records, skipping any a request has locked; how many were deleted."""
    status = await conn.execute(_DELETE_EXPIRED, limit)
    return int(status.split()[-1])


async def run_cleanup(db: Database, interval_s: float = CLEANUP_INTERVAL_S) -> None:
    """Forever: every `interval_s`, delete expired records in batches of CLEANUP_BATCH_ROWS (one short
    transaction each) until a batch comes back short. A failed round is logged and retried next time. The first
    round waits an interval too, so a starting service does not add to its own start-up (nor log about a
    database still out of reach). Every service with a database runs it (`shared.app.build_runtime`); replicas
    doing it at once skip each other's rows."""
    while True:
        await asyncio.sleep(interval_s)
        deleted = 0
        try:
            while True:
                async with db.pool.acquire(timeout=CLEANUP_ACQUIRE_TIMEOUT_S) as conn:
                    batch = await delete_expired(conn)
                deleted += batch
                if batch < CLEANUP_BATCH_ROWS:
                    break
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("idempotency_cleanup_failed", error=type(exc).__name__, deleted=deleted)
        else:
            if deleted:
                log.info("idempotency_cleanup", deleted=deleted)


# --- what handlers call ----------------------------------------------------------------------------------------


async def idempotent(
    request: Request,
    conn: asyncpg.Connection,
    work: Callable[[], Awaitable[Response]],
    *,
    org_id: UUID,
    actor: str,
    body: object,
    route: str | None = None,
    required: bool = False,
) -> Response:
    """`work()`'s answer, run at most once per Idempotency-Key of `org_id` on this route; inside the caller's
    transaction on `conn`. Without the header `work` simply runs (400 `bad_request` when `required`).

    `body` is what `fingerprint` takes (the validated model, the parsed JSON, or bytes); `route` defaults to
    `route_name(request.scope)`. A replay is the stored answer with `Idempotent-Replay: true`; another request
    under the key is 409 `idempotency_conflict`; one whose first request is still running is 409 with
    `Retry-After`; a body with no canonical JSON (a fraction, an integer beyond +-(2**53 - 1)) is 400
    `invalid_body`. The transaction must be READ COMMITTED (`claim`)."""
    key = check_key(request.headers.getlist(KEY_HEADER))
    if key is None:
        if required:
            raise ApiError("bad_request", "This route needs an Idempotency-Key header")
        return await work()
    slot = RecordKey(org_id, route or route_name(request.scope), key)
    try:
        request_fingerprint = fingerprint(body, actor, request_target(request.scope))
    except (TypeError, ValueError) as exc:
        raise uncanonical_body_error(exc) from None
    decision = await claim(conn, slot, request_fingerprint)
    if isinstance(decision, Replay):
        return replay_response(decision.response)
    if isinstance(decision, Conflict):
        raise conflict_error()
    if isinstance(decision, InProgress):
        raise in_progress_error()
    response = await work()
    await complete(conn, slot, stored_response(response))
    return response
