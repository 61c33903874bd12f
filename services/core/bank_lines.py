"""`GET /bank-lines` (a page, newest first), `GET /bank-lines/{id}` and `POST /bank-lines` (idempotent).

Payee and description are sealed with the org's data key (`shared.pii`, bound to `bank_lines`, the column and the
line's id) before the row is written, and opened for the answer with one key lookup per page. Every read of them is
an audit record in the read's own transaction (`bank_lines.read` per page, `bank_line.read` per line: counts and
bounds, never plaintext), and every line created one `bank_line.create`; `audit.append` is each transaction's last
statement but the idempotency record's completion, an update of a row the transaction already holds.

Another org's line is 404 like a line that does not exist, and another org's cursor is 400 like garbage
(`services/core/cursor.py`): nothing a caller sends reaches another org's rows. After the org's data key is destroyed
lines are still listed, with payee and description null and `pii_destroyed: true`; a new line is refused (409).
That holds across processes too: the write's transaction takes `PiiCipher.lock_live_key` on the key its values
were sealed with before it writes, so a destroy committed by another process while this one still has the key
cached refuses the write (409) instead of storing values nobody can open.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from services.core import store
from services.core.cursor import InvalidCursor, decode_cursor, encode_cursor
from services.core.deps import core_deps
from services.core.evaluation import reevaluate, shortfall_threshold
from services.core.models import BankLine, BankLinePage, BankLineQuery, FilterText, NewBankLine
from services.core.obligations import totals_by_quarter
from services.core.store import BANK_LINES_TABLE, LineKey, SealedLine
from services.core.store.orgs import hold_org
from shared import audit
from shared.authz import guard
from shared.errors import ApiError
from shared.idempotency import idempotent
from shared.money import format_money
from shared.negotiation import JSON_MEDIA_TYPE
from shared.openapi import documented
from shared.pagination import bad_cursor
from shared.pii import KeyDestroyed, PiiCipher, sealed_key_id
from shared.roles import Role
from shared.tokens import Principal
from shared.validation import parse_body, parse_query, path_uuid

__all__ = ["READERS", "WRITERS", "create_line", "erased", "get_line", "list_lines", "lock_sealing_keys", "open_page"]

READERS: tuple[Role, ...] = ("admin", "finance", "analyst")
WRITERS: tuple[Role, ...] = ("admin", "finance")
PAYEE, DESCRIPTION = "payee", "description"


async def open_page(
    cipher: PiiCipher, org_id: uuid.UUID, lines: list[SealedLine]
) -> tuple[list[str | None], list[str | None], bool]:
    """Payees and descriptions of `lines` (one key lookup: the second call finds the key cached), or nulls and
    True once the org's key is destroyed. A value that does not open for another reason is a fault (500)."""
    if not lines:
        return [], [], False
    row_ids: list[str | None] = [str(line.id) for line in lines]
    try:
        payees = await cipher.decrypt_many(
            org_id, BANK_LINES_TABLE, PAYEE, [line.payee for line in lines], row_ids=row_ids
        )
        descriptions = await cipher.decrypt_many(
            org_id, BANK_LINES_TABLE, DESCRIPTION, [line.description for line in lines], row_ids=row_ids
        )
    except KeyDestroyed:
        return [None] * len(lines), [None] * len(lines), True
    return list(payees), list(descriptions), False


async def _warm_key(cipher: PiiCipher, org_id: uuid.UUID) -> None:
    """Look the org's key up before a pool connection is taken (a lookup of no values): on a cold cache the lookup
    needs a connection of its own, and requests each holding one while waiting for another would empty the pool.
    Opening the page's values inside the transaction then finds the key cached."""
    await cipher.decrypt_many(org_id, BANK_LINES_TABLE, PAYEE, [])


def erased() -> ApiError:
    """The answer to a write for an org whose data key was destroyed."""
    return ApiError("conflict", "This org's personal data was erased; it cannot record new lines")


async def lock_sealing_keys(
    cipher: PiiCipher, conn: asyncpg.Connection, org_id: uuid.UUID, sealed: Iterable[bytes]
) -> None:
    """In the write's transaction, before it writes: each key the `sealed` values name stays live until the
    transaction ends, or 409 (`erased`) when one was destroyed meanwhile (another process may have, while this one
    had the key cached). In key id order, so two writers lock alike."""
    for key_id in sorted({sealed_key_id(blob) for blob in sealed}):
        if not await cipher.lock_live_key(conn, org_id, key_id):
            raise erased()


@documented("List the org's bank lines, newest first", response=BankLinePage, tags=["bank-lines"])
@guard(roles=READERS)
async def list_lines(request: Request, principal: Principal) -> Response:
    query = parse_query(request.query_params, BankLineQuery)
    org_id = uuid.UUID(principal.org_id)
    deps = core_deps(request)
    filters = query.filters()
    text = FilterText.of(filters)
    await _warm_key(deps.cipher, org_id)
    async with request.app.state.runtime.db.pool.acquire() as conn, conn.transaction():
        key = await deps.cursor_key.get(conn)
        try:
            after = decode_cursor(key, org_id, text.canonical, query.cursor) if query.cursor is not None else None
        except InvalidCursor:
            raise bad_cursor() from None
        lines = await store.page_lines(conn, org_id, filters, after, query.limit + 1)
        page, more = lines[: query.limit], len(lines) > query.limit
        payees, descriptions, destroyed = await open_page(deps.cipher, org_id, page)
        await audit.append(
            conn,
            org_id=org_id,
            actor=audit.actor_of(principal),
            action="bank_lines.read",
            target="bank_lines",
            detail={
                "count": len(page),
                "filters": text.detail,
                "first_page": after is None,
                "pii_destroyed": destroyed,
            },
        )
    last = page[-1] if more else None
    body = BankLinePage(
        items=[
            BankLine.of(line, payee, description)
            for line, payee, description in zip(page, payees, descriptions, strict=True)
        ],
        next_cursor=encode_cursor(key, org_id, text.canonical, LineKey(last.date, last.id)) if last else None,
        pii_destroyed=destroyed,
    )
    return Response(body.model_dump_json(), media_type=JSON_MEDIA_TYPE)


@documented("One of the org's bank lines", response=BankLine, tags=["bank-lines"])
@guard(roles=READERS)
async def get_line(request: Request, principal: Principal) -> Response:
    line_id = path_uuid(request, "line_id")
    org_id = uuid.UUID(principal.org_id)
    deps = core_deps(request)
    await _warm_key(deps.cipher, org_id)
    async with request.app.state.runtime.db.pool.acquire() as conn, conn.transaction():
        line = await store.get_line(conn, org_id, line_id)
        if line is None:
            raise ApiError("not_found")
        payees, descriptions, destroyed = await open_page(deps.cipher, org_id, [line])
        await audit.append(
            conn,
            org_id=org_id,
            actor=audit.actor_of(principal),
            action="bank_line.read",
            target=f"bank_line:{line_id}",
            detail={"id": str(line_id), "pii_destroyed": destroyed},
        )
    return Response(BankLine.of(line, payees[0], descriptions[0]).model_dump_json(), media_type=JSON_MEDIA_TYPE)


@documented(
    "Record a bank line (idempotent with Idempotency-Key)", request=NewBankLine, status=201, tags=["bank-lines"]
)
@guard(roles=WRITERS)
async def create_line(request: Request, principal: Principal) -> Response:
    body = await parse_body(request, NewBankLine)
    org_id = uuid.UUID(principal.org_id)
    actor = audit.actor_of(principal)
    cipher = core_deps(request).cipher
    line_id = uuid.uuid4()
    # Sealed before a pool connection is taken: the org's first use of its key reads it (or creates it) through a
    # connection of its own, and 50 requests each holding one while waiting for the key's would empty the pool.
    # A request that turns out to be a replay has sealed for nothing, which costs microseconds.
    try:
        payee, description = [
            *await cipher.encrypt_many(org_id, BANK_LINES_TABLE, PAYEE, [body.payee], row_ids=[str(line_id)]),
            *await cipher.encrypt_many(
                org_id, BANK_LINES_TABLE, DESCRIPTION, [body.description], row_ids=[str(line_id)]
            ),
        ]
    except KeyDestroyed:
        raise erased() from None
    line = SealedLine(
        id=line_id,
        org_id=org_id,
        date=body.date,
        amount=body.amount,
        gst_amount=body.gst_amount,
        paygw_amount=body.paygw_amount,
        payee=payee,
        description=description,
        created_by=actor,
        created_at=datetime.now(UTC),
    )
    async with request.app.state.runtime.db.pool.acquire() as conn, conn.transaction():
        await hold_org(conn, org_id)

        async def create() -> Response:
            await lock_sealing_keys(cipher, conn, org_id, (payee, description))
            await store.insert_line(conn, line)
            await reevaluate(
                conn,
                org_id,
                actor,
                now=line.created_at,
                threshold=shortfall_threshold(request),
                written=totals_by_quarter([line]),
            )
            await audit.append(
                conn,
                org_id=org_id,
                actor=actor,
                action="bank_line.create",
                target=f"bank_line:{line_id}",
                detail={
                    "id": str(line_id),
                    "date": line.date.isoformat(),
                    "amount": format_money(line.amount),
                    "gst_amount": format_money(line.gst_amount),
                    "paygw_amount": format_money(line.paygw_amount),
                },
            )
            shown = BankLine.of(line, body.payee, body.description)
            return Response(
                shown.model_dump_json(),
                status_code=201,
                media_type=JSON_MEDIA_TYPE,
                headers={"location": f"/bank-lines/{line_id}"},
            )

        return await idempotent(request, conn, create, org_id=org_id, actor=actor, body=body)
