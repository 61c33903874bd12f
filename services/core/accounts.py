"""The designated accounts' routes: money goes in, never out.

    GET  /org/designated-accounts                       finance, admin: both accounts, balances, 5 newest transfers
    POST /org/designated-accounts/{id}/deposits         finance, admin; idempotent: {amount, source, reference}
    POST /org/designated-accounts/{id}/withdrawals      finance, admin: always refused (the route exists to say so)
    GET  /org/designated-accounts/{id}/sources          finance, admin: the account's whitelist
    PUT  /org/designated-accounts/{id}/sources          admin with a recent step-up: {sources: [...]}, the new list

Both accounts exist from the org's start: their ids are derived from the org (`services.core.designated`), so the
GET names them and answers 0.00 without writing (its one write is its audit record); the first PUT of sources
inserts the row. Another org's account id, or any other id, is 404.

A refused attempt (a debit, a zero amount, an unlisted source, `direction: "out"`, any withdrawal) is not an
exception: the handler raises the HIGH DESIGNATED_WITHDRAWAL_ATTEMPT alert with the actor, writes the audit record
and returns the 422 `designated_withdrawal_refused` problem as its answer, so the transaction commits the alert and
the record together (an ApiError would roll them back). Under an Idempotency-Key the 422 is what is stored, so a
retried attempt is answered again without a second alert. A body that is not a deposit at all is 400 as usual.

A deposit holds the account row (`store.accounts.lock_account`), reads the whitelist, appends the transfer,
re-evaluates the org's current BAS cycle (`services.core.evaluation.reevaluate`, which may raise the org's
SUSPICIOUS_TAX_GAP) and writes `designated.deposit` last.

Audit details carry ids and amounts, never a source's or a reference's text: a source may be a person's name and
account number, and the audit chain outlives the org. A source is named by its tag (`PiiCipher.tag` for
SOURCE_TAG_PURPOSE: the same text gives the same tag within the org, so a deposit's record can be matched to the
whitelisting that admitted it) and the tag dies with the org's data key. The texts are in the transfer, the
whitelist and the refused attempt's alert (which also carries the tag), rows deleted with the org.

Every write takes the org's deletion lock first (`store.orgs.hold_org`): a deposit must not lock the account row
before it, or it deadlocks with the org's deletion.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

import asyncpg
import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from services.core.deps import core_deps
from services.core.designated import (
    MAX_SOURCES,
    NEWEST_TRANSFERS,
    Attempt,
    Direction,
    Reference,
    Refusal,
    Source,
    Tax,
    account_ids,
    claimed_amount,
    refusal,
    refusal_message,
    tax_of,
)
from services.core.evaluation import reevaluate, shortfall_threshold
from services.core.store import accounts as store
from services.core.store.alerts import DESIGNATED_WITHDRAWAL_ATTEMPT, raise_alert
from services.core.store.orgs import hold_org
from shared import audit
from shared.authz import guard
from shared.contracts.core import DesignatedTotals, Total
from shared.errors import ApiError, problem_response
from shared.idempotency import idempotent
from shared.money import Money, format_money, format_total
from shared.negotiation import JSON_MEDIA_TYPE
from shared.openapi import documented
from shared.pii import KeyDestroyed, PiiCipher
from shared.roles import Role
from shared.tokens import Principal
from shared.validation import MAX_JSON_BODY_BYTES, parse_body, path_uuid, read_body
from shared.views import view_of

__all__ = [
    "READERS",
    "SOURCE_EDITORS",
    "WRITERS",
    "deposit",
    "list_accounts",
    "list_sources",
    "replace_sources",
    "withdraw",
]

READERS: tuple[Role, ...] = ("admin", "finance")
WRITERS: tuple[Role, ...] = ("admin", "finance")
SOURCE_EDITORS: tuple[Role, ...] = ("admin",)
REFUSED = "designated_withdrawal_refused"
# What a source's tag is made for (shared.pii: a tag differs per purpose).
SOURCE_TAG_PURPOSE = "designated_source"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewDeposit(Strict):
    """`POST /org/designated-accounts/{id}/deposits`. `direction` exists so a client that sends "out" is told no
    (and alerted on) rather than 400 for an unknown field."""

    amount: Money
    source: Source
    reference: Reference
    direction: Direction = "in"


def _unique(sources: list[str]) -> list[str]:
    if len(set(sources)) != len(sources):
        raise ValueError("each source may be listed once")
    return sources


class SourceList(Strict):
    """`PUT /org/designated-accounts/{id}/sources`: the whole whitelist (an empty list refuses every deposit)."""

    sources: Annotated[list[Source], Field(max_length=MAX_SOURCES), AfterValidator(_unique)]


class TransferView(BaseModel):
    id: uuid.UUID
    account_id: uuid.UUID
    amount: Money
    source: str
    reference: str
    created_at: datetime
    created_by: str

    @classmethod
    def of(cls, transfer: store.Transfer) -> TransferView:
        return view_of(cls, transfer)


class DesignatedAccount(BaseModel):
    id: uuid.UUID
    tax: Tax
    balance: Total
    transfers: list[TransferView] = Field(description="The newest transfers, newest first")


class DesignatedAccounts(BaseModel):
    accounts: list[DesignatedAccount]
    totals: DesignatedTotals


class DepositMade(BaseModel):
    transfer: TransferView
    balance: Total


class SourceView(BaseModel):
    source: str
    added_at: datetime
    added_by: str


class DesignatedSources(BaseModel):
    account_id: uuid.UUID
    tax: Tax
    sources: list[SourceView]


async def _source_tags(cipher: PiiCipher, org_id: uuid.UUID, sources: list[str]) -> dict[str, str]:
    """Each source's tag. Asked before a connection is held where it can be (a cold key lookup takes one of its
    own); a destroyed key means the org was deleted: 410."""
    try:
        return {source: await cipher.tag(org_id, SOURCE_TAG_PURPOSE, source) for source in sources}
    except KeyDestroyed:
        raise ApiError("gone", "This organisation has been deleted") from None


def _account(request: Request, principal: Principal) -> tuple[uuid.UUID, uuid.UUID, Tax]:
    """(org, account, tax) of the path's account; 404 unless it is one of the principal's org's two."""
    org_id = uuid.UUID(principal.org_id)
    account = path_uuid(request, "account_id")
    tax = tax_of(org_id, account)
    if tax is None:
        raise ApiError("not_found")
    return org_id, account, tax


async def _refuse(
    conn: asyncpg.Connection,
    *,
    org_id: uuid.UUID,
    account: uuid.UUID,
    tax: Tax,
    reason: Refusal,
    actor: str,
    amount: Decimal | None,
    source: str | None,
    source_tag: str | None,
) -> Response:
    """Raise the alert and write the audit record of a refused attempt in the caller's transaction, and answer the
    422 as a response (not an exception) so that the transaction commits them."""
    message = refusal_message(reason, tax)
    shown = {"account_id": str(account), "tax": tax, "reason": reason.value}
    if amount is not None:
        shown["amount"] = format_money(amount)
    alert = await raise_alert(
        conn,
        org_id=org_id,
        type=DESIGNATED_WITHDRAWAL_ATTEMPT,
        severity="HIGH",
        message=message,
        detail={
            **shown,
            **({"source": source, "source_tag": source_tag} if source is not None else {}),
            "actor": actor,
        },
        actor=actor,
    )
    assert alert is not None  # only SUSPICIOUS_TAX_GAP is ever declined
    await audit.append(
        conn,
        org_id=org_id,
        actor=actor,
        action="designated.withdrawal_refused",
        target=f"designated_account:{account}",
        detail={**shown, "alert_id": str(alert.id)},
    )
    return problem_response(REFUSED, message, reason=reason.value, account_id=str(account), alert_id=str(alert.id))


@documented(
    "The org's PAYGW and GST designated accounts: balances and newest transfers",
    response=DesignatedAccounts,
    tags=["designated-accounts"],
)
@guard(roles=READERS)
async def list_accounts(request: Request, principal: Principal) -> Response:
    org_id = uuid.UUID(principal.org_id)
    ids = account_ids(org_id)
    async with request.app.state.runtime.db.pool.acquire() as conn, conn.transaction():
        balances = await store.balances(conn, org_id, list(ids.values()))
        newest = await store.newest_transfers(conn, org_id, list(ids.values()), NEWEST_TRANSFERS)
        await audit.append(
            conn,
            org_id=org_id,
            actor=audit.actor_of(principal),
            action="designated_accounts.read",
            target="designated_accounts",
            detail={f"{tax.lower()}_balance": format_total(balances[account]) for tax, account in ids.items()},
        )
    body = DesignatedAccounts(
        accounts=[
            DesignatedAccount(
                id=account,
                tax=tax,
                balance=balances[account],
                transfers=[TransferView.of(t) for t in newest[account]],
            )
            for tax, account in ids.items()
        ],
        totals=DesignatedTotals(paygw=balances[ids["PAYGW"]], gst=balances[ids["GST"]]),
    )
    return Response(body.model_dump_json(), media_type=JSON_MEDIA_TYPE)


@documented(
    "Deposit into a designated account from a whitelisted source (idempotent with Idempotency-Key); anything else "
    "is refused with 422 designated_withdrawal_refused and a HIGH alert",
    request=NewDeposit,
    response=DepositMade,
    status=201,
    tags=["designated-accounts"],
)
@guard(roles=WRITERS)
async def deposit(request: Request, principal: Principal) -> Response:
    org_id, account, tax = _account(request, principal)
    body = await parse_body(request, NewDeposit)
    actor = audit.actor_of(principal)
    threshold = shortfall_threshold(request)
    source_tag = (await _source_tags(core_deps(request).cipher, org_id, [body.source]))[body.source]
    async with request.app.state.runtime.db.pool.acquire() as conn, conn.transaction():
        await hold_org(conn, org_id)

        async def work() -> Response:
            held = await store.lock_account(conn, org_id, account)
            listed = [entry.source for entry in await store.sources(conn, org_id, account)] if held else []
            reason = refusal(Attempt(body.amount, body.source, body.direction), listed)
            if reason is not None:
                source = body.source if reason is Refusal.UNLISTED_SOURCE else None
                return await _refuse(
                    conn,
                    org_id=org_id,
                    account=account,
                    tax=tax,
                    reason=reason,
                    actor=actor,
                    amount=body.amount,
                    source=source,
                    source_tag=None if source is None else source_tag,
                )
            transfer = await store.insert_transfer(
                conn,
                org_id=org_id,
                account_id=account,
                amount=body.amount,
                source=body.source,
                reference=body.reference,
                actor=actor,
            )
            balance = (await store.balances(conn, org_id, [account]))[account]
            await reevaluate(conn, org_id, actor, now=datetime.now(UTC), threshold=threshold)
            await audit.append(
                conn,
                org_id=org_id,
                actor=actor,
                action="designated.deposit",
                target=f"designated_transfer:{transfer.id}",
                detail={
                    "id": str(transfer.id),
                    "account_id": str(account),
                    "tax": tax,
                    "amount": format_money(transfer.amount),
                    "source_tag": source_tag,
                    "balance": format_total(balance),
                },
            )
            made = DepositMade(transfer=TransferView.of(transfer), balance=balance)
            return Response(made.model_dump_json(), status_code=201, media_type=JSON_MEDIA_TYPE)

        return await idempotent(request, conn, work, org_id=org_id, actor=actor, body=body)


@documented(
    "Always refused: money never leaves a designated account (422 designated_withdrawal_refused, a HIGH alert)",
    tags=["designated-accounts"],
)
@guard(roles=WRITERS)
async def withdraw(request: Request, principal: Principal) -> Response:
    org_id, account, tax = _account(request, principal)
    raw = await read_body(request, MAX_JSON_BODY_BYTES)
    actor = audit.actor_of(principal)
    try:
        asked: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        asked = None
    async with request.app.state.runtime.db.pool.acquire() as conn, conn.transaction():
        await hold_org(conn, org_id)

        async def work() -> Response:
            return await _refuse(
                conn,
                org_id=org_id,
                account=account,
                tax=tax,
                reason=Refusal.WITHDRAWAL,
                actor=actor,
                amount=claimed_amount(asked),
                source=None,
                source_tag=None,
            )

        return await idempotent(request, conn, work, org_id=org_id, actor=actor, body=raw)


def _sources_view(account: uuid.UUID, tax: Tax, entries: list[store.SourceEntry]) -> Response:
    body = DesignatedSources(
        account_id=account,
        tax=tax,
        sources=[SourceView(source=e.source, added_at=e.added_at, added_by=e.added_by) for e in entries],
    )
    return Response(body.model_dump_json(), media_type=JSON_MEDIA_TYPE)


@documented(
    "The sources a designated account accepts deposits from", response=DesignatedSources, tags=["designated-accounts"]
)
@guard(roles=READERS)
async def list_sources(request: Request, principal: Principal) -> Response:
    org_id, account, tax = _account(request, principal)
    async with request.app.state.runtime.db.pool.acquire() as conn, conn.transaction():
        entries = await store.sources(conn, org_id, account)
        await audit.append(
            conn,
            org_id=org_id,
            actor=audit.actor_of(principal),
            action="designated_sources.read",
            target=f"designated_account:{account}",
            detail={"account_id": str(account), "tax": tax, "count": len(entries)},
        )
    return _sources_view(account, tax, entries)


@documented(
    "Replace a designated account's source whitelist (admin, recent step-up)",
    request=SourceList,
    response=DesignatedSources,
    tags=["designated-accounts"],
)
@guard(roles=SOURCE_EDITORS, step_up=True)
async def replace_sources(request: Request, principal: Principal) -> Response:
    org_id, account, tax = _account(request, principal)
    body = await parse_body(request, SourceList)
    actor = audit.actor_of(principal)
    cipher = core_deps(request).cipher
    tags = await _source_tags(cipher, org_id, body.sources)  # also warms the org's key for the removed ones
    async with request.app.state.runtime.db.pool.acquire() as conn, conn.transaction():
        await hold_org(conn, org_id)
        await store.ensure_account(conn, org_id, account, tax)
        await store.lock_account(conn, org_id, account)
        change = await store.replace_sources(conn, org_id, account, body.sources, actor)
        entries = await store.sources(conn, org_id, account)
        tags |= await _source_tags(cipher, org_id, [source for source in change.removed if source not in tags])
        await audit.append(
            conn,
            org_id=org_id,
            actor=actor,
            action="designated_sources.replace",
            target=f"designated_account:{account}",
            detail={
                "account_id": str(account),
                "tax": tax,
                "added": [tags[source] for source in change.added],
                "removed": [tags[source] for source in change.removed],
                "count": len(entries),
            },
        )
    return _sources_view(account, tax, entries)
