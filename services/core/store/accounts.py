"""Designated accounts' SQL: the account rows, their append-only transfers and their whitelisted sources.

An account's balance is the sum of its transfers, computed when read (there is no balance column to drift), and a
transfer is never changed or removed (the `designated_transfers_append_only` trigger), so a balance never falls.
The ids are derived from the org (`services.core.designated.account_id`): reads name both accounts whether or not
their rows exist yet, and `ensure_account` inserts a row the first time a write needs it.

Locking: a deposit and a change of the whitelist both hold the account row (`lock_account`, FOR UPDATE) from
before they read the whitelist until they commit, so a deposit never lands from a source being removed at that
moment, and two deposits to one account each see the other's transfer in the balance they answer with. Both take
it before anything else they lock (K1's cycle, the audit chain), so no other order meets it.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from services.core.designated import Tax

__all__ = [
    "SourceChange",
    "SourceEntry",
    "Transfer",
    "add_sources",
    "balances",
    "ensure_account",
    "insert_transfer",
    "lock_account",
    "newest_transfers",
    "replace_sources",
    "sources",
]

ZERO = Decimal("0.00")
TRANSFER_COLUMNS = "id, org_id, account_id, amount, source, reference, created_at, created_by"


@dataclass(frozen=True)
class Transfer:
    id: uuid.UUID
    org_id: uuid.UUID
    account_id: uuid.UUID
    amount: Decimal
    source: str
    reference: str
    created_at: datetime
    created_by: str


@dataclass(frozen=True)
class SourceEntry:
    source: str
    added_at: datetime
    added_by: str


@dataclass(frozen=True)
class SourceChange:
    """What `replace_sources` did, each list sorted."""

    added: tuple[str, ...]
    removed: tuple[str, ...]


async def ensure_account(conn: asyncpg.Connection, org_id: uuid.UUID, account_id: uuid.UUID, tax: Tax) -> None:
    """Insert the account's row unless it exists (its id is derived, so concurrent writers insert the same row)."""
    await conn.execute(
        "INSERT INTO core.designated_accounts (id, org_id, tax) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        account_id,
        org_id,
        tax,
    )


async def lock_account(conn: asyncpg.Connection, org_id: uuid.UUID, account_id: uuid.UUID) -> bool:
    """Hold the account's row until the transaction ends; False when the row does not exist (no write has needed
    it yet, so it has no sources and no transfers)."""
    found = await conn.fetchval(
        "SELECT true FROM core.designated_accounts WHERE id = $1 AND org_id = $2 FOR UPDATE", account_id, org_id
    )
    return found is True


async def sources(conn: asyncpg.Connection, org_id: uuid.UUID, account_id: uuid.UUID) -> list[SourceEntry]:
    """The account's whitelist, in the order of the sources' text."""
    rows = await conn.fetch(
        "SELECT source, added_at, added_by FROM core.designated_sources "
        'WHERE account_id = $1 AND org_id = $2 ORDER BY source COLLATE "C"',
        account_id,
        org_id,
    )
    return [SourceEntry(**dict(row)) for row in rows]


async def replace_sources(
    conn: asyncpg.Connection, org_id: uuid.UUID, account_id: uuid.UUID, wanted: Collection[str], actor: str
) -> SourceChange:
    """Make the whitelist exactly `wanted`: sources kept keep when and by whom they were added. The caller holds
    the account row (`ensure_account`, then `lock_account`)."""
    removed = await conn.fetch(
        "DELETE FROM core.designated_sources WHERE account_id = $1 AND org_id = $2 AND NOT (source = ANY($3::text[])) "
        "RETURNING source",
        account_id,
        org_id,
        list(wanted),
    )
    return SourceChange(
        added=await add_sources(conn, org_id, account_id, wanted, actor),
        removed=tuple(sorted(row["source"] for row in removed)),
    )


async def add_sources(
    conn: asyncpg.Connection, org_id: uuid.UUID, account_id: uuid.UUID, wanted: Collection[str], actor: str
) -> tuple[str, ...]:
    """Add `wanted` to the whitelist, keeping every source already on it (the demo seed's use: run on every start,
    it must not undo an admin's changes); the sources it added, sorted. The account row must exist."""
    added = await conn.fetch(
        "INSERT INTO core.designated_sources (account_id, org_id, source, added_by) "
        "SELECT $1, $2, s, $4 FROM unnest($3::text[]) AS s ON CONFLICT DO NOTHING RETURNING source",
        account_id,
        org_id,
        list(wanted),
        actor,
    )
    return tuple(sorted(row["source"] for row in added))


async def insert_transfer(
    conn: asyncpg.Connection,
    *,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    amount: Decimal,
    source: str,
    reference: str,
    actor: str,
) -> Transfer:
    record = await conn.fetchrow(
        "INSERT INTO core.designated_transfers (id, org_id, account_id, amount, source, reference, created_by) "
        f"VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {TRANSFER_COLUMNS}",
        uuid.uuid4(),
        org_id,
        account_id,
        amount,
        source,
        reference,
        actor,
    )
    assert record is not None
    return Transfer(**dict(record))


async def balances(
    conn: asyncpg.Connection, org_id: uuid.UUID, accounts: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Decimal]:
    """Each of `accounts`' balance, the sum of its transfers (0.00 for an account with none, or no row)."""
    rows = await conn.fetch(
        "SELECT account_id, sum(amount) AS balance FROM core.designated_transfers "
        "WHERE account_id = ANY($1::uuid[]) AND org_id = $2 GROUP BY account_id",
        list(accounts),
        org_id,
    )
    found: Mapping[uuid.UUID, Decimal] = {row["account_id"]: row["balance"] for row in rows}
    return {account: found.get(account, ZERO) for account in accounts}


async def newest_transfers(
    conn: asyncpg.Connection, org_id: uuid.UUID, accounts: Sequence[uuid.UUID], limit: int
) -> dict[uuid.UUID, list[Transfer]]:
    """Each of `accounts`' `limit` newest transfers, newest first (one index range scan per account)."""
    rows = await conn.fetch(
        "SELECT t.* FROM unnest($1::uuid[]) AS a(id) CROSS JOIN LATERAL ("
        f"  SELECT {TRANSFER_COLUMNS} FROM core.designated_transfers "
        "  WHERE account_id = a.id AND org_id = $2 ORDER BY created_at DESC, id DESC LIMIT $3"
        ") AS t",
        list(accounts),
        org_id,
        limit,
    )
    # Each account's rows come out of its LATERAL scan in the scan's order; sorted again here so that no plan
    # change can reorder them.
    found: dict[uuid.UUID, list[Transfer]] = {account: [] for account in accounts}
    for row in rows:
        found[row["account_id"]].append(Transfer(**dict(row)))
    return {
        account: sorted(transfers, key=lambda t: (t.created_at, t.id), reverse=True)
        for account, transfers in found.items()
    }
