"""`POST /bank-lines/import` (admin, finance): many bank lines in one request, all or none.

An import first takes one of the process's import slots (`services.core.deps.ImportSlots`: 2 at once by default,
CORE_MAX_CONCURRENT_IMPORTS), before it reads a byte of the body; one that finds none free within
CORE_IMPORT_WAIT_S (2 s) answers 503 `service_unavailable` with `Retry-After`, having read and written nothing. Each
running import holds its file, parsed rows and sealed values (about 25 MB for 10,000 rows, most of it released as
soon as the next stage has what it needs: the body once parsed, the plaintext rows once sealed), so the bound is
what keeps core's memory and its other requests' latency in hand under a burst of imports.

The body (CSV or JSON lines, at most MAX_BODY_BYTES: 413 as soon as it is known to be larger) is parsed and every
row validated first (`services.core.imports`, in a worker thread so that 10,000 rows do not stall the event loop);
any bad row answers 422 `invalid_rows` with `errors: [{row, field, code, message}]` and `error_count`, more than
MAX_ROWS rows 413, and nothing is written. Then the payees and descriptions are sealed (one key lookup, each value
bound to its line's id) before a pool connection is taken, like POST /bank-lines, and in one transaction: the
idempotency claim (fingerprinted over the body's sha256, so the same file replays and another file under the key
conflicts), a share lock on the org's data key (`PiiCipher.lock_live_key`: 409 when another process destroyed it
while this one had it cached), every line written with one COPY, and one audit record `bank_lines.import` (count,
totals, first and last date: no PII) as the last statement. Any failure before the commit (a row the database
refuses, the audit write) rolls everything back: no line of the file is stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.core import store
from services.core.bank_lines import DESCRIPTION, PAYEE, WRITERS, erased, lock_sealing_keys
from services.core.deps import core_deps
from services.core.evaluation import reevaluate, shortfall_threshold
from services.core.imports import (
    MAX_BODY_BYTES,
    ImportFormat,
    ImportRow,
    Refused,
    TooManyRows,
    import_format,
    parse_import,
)
from services.core.obligations import totals_by_quarter
from services.core.store import BANK_LINES_TABLE
from services.core.store.orgs import hold_org
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
    cipher: PiiCipher, org_id: uuid.UUID, actor: str, rows: Sequence[ImportRow], now: datetime
) -> list[store.SealedLine]:
    """The lines to store, each with a new id and its payee and description sealed bound to it, SEAL_CHUNK_ROWS
    at a time: the first chunk looks the org's key up, the others find it cached, and the event loop serves other
    requests in between. Only the sealed lines are kept: the plaintext rows go once the caller drops them."""
    lines: list[store.SealedLine] = []
    for start in range(0, len(rows), SEAL_CHUNK_ROWS):
        chunk = rows[start : start + SEAL_CHUNK_ROWS]
        ids = [uuid.uuid4() for _ in chunk]
        row_ids = [str(line_id) for line_id in ids]
        payees = await cipher.encrypt_many(org_id, BANK_LINES_TABLE, PAYEE, [r.payee for r in chunk], row_ids=row_ids)
        descriptions = await cipher.encrypt_many(
            org_id, BANK_LINES_TABLE, DESCRIPTION, [r.description for r in chunk], row_ids=row_ids
        )
        lines += (
            store.SealedLine(
                line_id, org_id, row.date, row.amount, row.gst_amount, row.paygw_amount, payee, description, actor, now
            )
            for line_id, row, payee, description in zip(ids, chunk, payees, descriptions, strict=True)
        )
        await asyncio.sleep(0)
    return lines


@dataclass(frozen=True)
class SealedImport:
    """What is left of an accepted file once it is sealed: the lines, the summary written out, and the body's
    sha256 (the idempotency fingerprint's input). The body, its text and the plaintext rows are gone."""

    lines: list[store.SealedLine]
    summary: ImportSummary
    detail: dict[str, object]
    document: dict[str, object]
    body_sha256: bytes


@documented(
    "Import up to 10,000 bank lines from CSV (text/csv) or JSON lines (application/x-ndjson), all or none "
    "(idempotent with Idempotency-Key); 503 with Retry-After while too many imports are running",
    status=201,
    tags=["bank-lines"],
)
@guard(roles=WRITERS)
async def import_lines(request: Request, principal: Principal) -> Response:
    fmt = import_format(request.headers.get("content-type", ""))
    if fmt is None:
        raise ApiError("unsupported_media_type", "Send text/csv, application/x-ndjson or application/jsonl (UTF-8)")
    # The slot is taken before the body is read: what an import costs is held from its first byte to its answer.
    async with core_deps(request).imports.slot():
        sealed = await _read_and_seal(request, principal, fmt)
        return await _store(request, principal, sealed)


async def _read_and_seal(request: Request, principal: Principal, fmt: ImportFormat) -> SealedImport:
    """The body read, parsed, validated and sealed; 413/422 for a file refused. Everything but the sealed lines is
    local to this function, so it is freed when it returns, before the transaction."""
    body = await read_body(request, MAX_BODY_BYTES)
    body_sha256 = hashlib.sha256(body).digest()
    parsed = await run_in_threadpool(parse_import, body, fmt)
    del body
    if isinstance(parsed, TooManyRows):
        raise ApiError("payload_too_large", f"An import takes at most {parsed.limit} rows; split the file")
    if isinstance(parsed, Refused):
        raise refused_error(parsed)
    org_id = uuid.UUID(principal.org_id)
    # Written out before a connection is taken: nothing that can fail on the request's values runs inside the
    # transaction but the database's own work.
    summary = summarise(uuid.uuid4(), parsed.rows)
    # Sealed before a pool connection is taken (as POST /bank-lines does): the org's first use of its key reads or
    # creates it through a connection of its own, which requests each holding one could wait for forever. A replay
    # has sealed for nothing (about 0.2 s for 10,000 rows); replays are rare.
    try:
        lines = await _seal(
            core_deps(request).cipher, org_id, audit.actor_of(principal), parsed.rows, datetime.now(UTC)
        )
    except KeyDestroyed:
        raise erased() from None
    return SealedImport(lines, summary, summary.detail(), summary.document(), body_sha256)


async def _store(request: Request, principal: Principal, sealed: SealedImport) -> Response:
    runtime = request.app.state.runtime
    cipher = core_deps(request).cipher
    org_id = uuid.UUID(principal.org_id)
    actor = audit.actor_of(principal)
    lines, summary, detail, document = sealed.lines, sealed.summary, sealed.detail, sealed.document
    async with runtime.db.pool.acquire() as conn, conn.transaction():
        await hold_org(conn, org_id)

        async def work() -> Response:
            await lock_sealing_keys(cipher, conn, org_id, _sealed_values(lines))
            await store.copy_lines(conn, lines)
            await reevaluate(
                conn,
                org_id,
                actor,
                now=datetime.now(UTC),
                threshold=shortfall_threshold(request),
                written=totals_by_quarter(lines),
            )
            await audit.append(
                conn,
                org_id=org_id,
                actor=actor,
                action=IMPORT_ACTION,
                target=f"bank_line_import:{summary.import_id}",
                detail=detail,
            )
            return JSONResponse(document, status_code=201)

        # The body's digest stands for the body: the same file replays, another conflicts, and 5 MB are not held.
        return await idempotent(request, conn, work, org_id=org_id, actor=actor, body=sealed.body_sha256)


def _sealed_values(lines: Sequence[store.SealedLine]) -> Iterator[bytes]:
    for line in lines:
        yield line.payee
        yield line.description
