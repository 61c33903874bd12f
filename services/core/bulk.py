"""`POST /bank-lines/import` (admin, finance): many bank lines in one request, all or none.

The body (CSV or JSON lines, at most MAX_BODY_BYTES: 413 as soon as it is known to be larger) is parsed and every
row validated first (`services.core.imports`, in a worker thread so that 10,000 rows do not stall the event loop);
any bad row answers 422 `invalid_rows` with `errors: [{row, field, code, message}]` and `error_count`, more than
MAX_ROWS rows 413, and nothing is written. Then the payees and descriptions are sealed (one key lookup, each value
bound to its line's id) before a pool connection is taken, like POST /bank-lines, and in one transaction: the
idempotency claim (fingerprinted over the body's bytes, so the same file replays and another file under the key
conflicts), a share lock on the org's data key (`PiiCipher.lock_live_key`: 409 when another process destroyed it
while this one had it cached), every line written with one COPY, and one audit record `bank_lines.import` (count,
totals, first and last date: no PII) as the last statement. Any failure before the commit (a row the database
refuses, the audit write) rolls everything back: no line of the file is stored.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.core import store
from services.core.bank_lines import DESCRIPTION, PAYEE, WRITERS, erased, lock_sealing_keys
from services.core.deps import core_deps
from services.core.imports import (
    MAX_BODY_BYTES,
    Accepted,
    ImportRow,
    Refused,
    TooManyRows,
    import_format,
    parse_import,
)
from services.core.store import BANK_LINES_TABLE
from shared import audit
from shared.authz import guard
from shared.errors import ApiError
from shared.idempotency import idempotent
from shared.money import format_total
from shared.openapi import documented
from shared.pii import KeyDestroyed, PiiCipher
from shared.tokens import Principal
from shared.validation import read_body

__all__ = ["IMPORT_ACTION", "ImportSummary", "import_lines", "summarise"]

IMPORT_ACTION = "bank_lines.import"
# Sealing both columns of 10,000 rows takes about 0.2 s of CPU; in chunks of this many rows (about 10 ms each) the
# event loop never waits longer than that for other requests.
SEAL_CHUNK_ROWS = 500


@dataclass(frozen=True)
class ImportSummary:
    """What an import stored, without PII: the answer's body and the audit record's detail."""

    import_id: uuid.UUID
    count: int
    amount: Decimal
    gst_amount: Decimal
    paygw_amount: Decimal
    first_date: date
    last_date: date

    def detail(self) -> dict[str, object]:
        """The audit record's detail: counts, sums and dates only. A sum is written with `format_total`: each line
        is within twelve integer digits, but 10,000 of them need not add up to that."""
        return {
            "count": self.count,
            "totals": {
                "amount": format_total(self.amount),
                "gst_amount": format_total(self.gst_amount),
                "paygw_amount": format_total(self.paygw_amount),
            },
            "first_date": self.first_date.isoformat(),
            "last_date": self.last_date.isoformat(),
        }

    def document(self) -> dict[str, object]:
        """The 201 answer: `imported` (the count), the import's id (the audit record's target), totals, dates."""
        detail = self.detail()
        return {"import_id": str(self.import_id), "imported": detail.pop("count"), **detail}


def summarise(import_id: uuid.UUID, rows: tuple[ImportRow, ...]) -> ImportSummary:
    """Count, sums and date range of a non-empty batch of rows."""
    dates = [row.date for row in rows]
    return ImportSummary(
        import_id=import_id,
        count=len(rows),
        amount=sum((row.amount for row in rows), Decimal("0.00")),
        gst_amount=sum((row.gst_amount for row in rows), Decimal("0.00")),
        paygw_amount=sum((row.paygw_amount for row in rows), Decimal("0.00")),
        first_date=min(dates),
        last_date=max(dates),
    )


def refused_error(refused: Refused) -> ApiError:
    shown = len(refused.errors)
    more = f"; the first {shown} are listed" if shown < refused.total else ""
    return ApiError(
        "invalid_rows",
        f"{refused.total} problem(s) found, nothing was imported{more}",
        errors=refused.errors,
        extra={"error_count": refused.total},
    )


async def _seal(
    cipher: PiiCipher, org_id: uuid.UUID, rows: Sequence[ImportRow], row_ids: Sequence[str]
) -> tuple[list[bytes], list[bytes]]:
    """Payees and descriptions sealed, each bound to its line's id, SEAL_CHUNK_ROWS at a time: the first chunk
    looks the org's key up, the others find it cached, and the event loop serves other requests in between."""
    payees: list[bytes] = []
    descriptions: list[bytes] = []
    for start in range(0, len(rows), SEAL_CHUNK_ROWS):
        chunk, ids = rows[start : start + SEAL_CHUNK_ROWS], list(row_ids[start : start + SEAL_CHUNK_ROWS])
        payees += await cipher.encrypt_many(org_id, BANK_LINES_TABLE, PAYEE, [r.payee for r in chunk], row_ids=ids)
        descriptions += await cipher.encrypt_many(
            org_id, BANK_LINES_TABLE, DESCRIPTION, [r.description for r in chunk], row_ids=ids
        )
        await asyncio.sleep(0)
    return payees, descriptions


@documented(
    "Import up to 10,000 bank lines from CSV (text/csv) or JSON lines (application/x-ndjson), all or none "
    "(idempotent with Idempotency-Key)",
    status=201,
    tags=["bank-lines"],
)
@guard(roles=WRITERS)
async def import_lines(request: Request, principal: Principal) -> Response:
    fmt = import_format(request.headers.get("content-type", ""))
    if fmt is None:
        raise ApiError("unsupported_media_type", "Send text/csv, application/x-ndjson or application/jsonl (UTF-8)")
    body = await read_body(request, MAX_BODY_BYTES)
    parsed = await run_in_threadpool(parse_import, body, fmt)
    if isinstance(parsed, TooManyRows):
        raise ApiError("payload_too_large", f"An import takes at most {parsed.limit} rows; split the file")
    if isinstance(parsed, Refused):
        raise refused_error(parsed)
    return await _store(request, principal, parsed, body)


async def _store(request: Request, principal: Principal, accepted: Accepted, body: bytes) -> Response:
    runtime = request.app.state.runtime
    cipher = core_deps(request).cipher
    org_id = uuid.UUID(principal.org_id)
    actor = audit.actor_of(principal)
    rows = accepted.rows
    ids = [uuid.uuid4() for _ in rows]
    # Sealed before a pool connection is taken (as POST /bank-lines does): the org's first use of its key reads or
    # creates it through a connection of its own, which requests each holding one could wait for forever. A replay
    # has sealed for nothing (about 0.2 s for 10,000 rows); replays are rare.
    try:
        payees, descriptions = await _seal(cipher, org_id, rows, [str(line_id) for line_id in ids])
    except KeyDestroyed:
        raise erased() from None
    now = datetime.now(UTC)
    lines = [
        store.SealedLine(
            id=line_id,
            org_id=org_id,
            date=row.date,
            amount=row.amount,
            gst_amount=row.gst_amount,
            paygw_amount=row.paygw_amount,
            payee=payee,
            description=description,
            created_by=actor,
            created_at=now,
        )
        for line_id, row, payee, description in zip(ids, rows, payees, descriptions, strict=True)
    ]
    # Written out before a connection is taken: nothing that can fail on the request's values runs inside the
    # transaction but the database's own work.
    summary = summarise(uuid.uuid4(), rows)
    detail, document = summary.detail(), summary.document()
    async with runtime.db.pool.acquire() as conn, conn.transaction():

        async def work() -> Response:
            await lock_sealing_keys(cipher, conn, org_id, itertools.chain(payees, descriptions))
            await store.copy_lines(conn, lines)
            await audit.append(
                conn,
                org_id=org_id,
                actor=actor,
                action=IMPORT_ACTION,
                target=f"bank_line_import:{summary.import_id}",
                detail=detail,
            )
            return JSONResponse(document, status_code=201)

        return await idempotent(request, conn, work, org_id=org_id, actor=actor, body=body)
