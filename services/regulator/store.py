"""All SQL of the regulator service (schema `regulator`). Functions take a connection so callers choose the
transaction; rows come back as the frozen types of `services.regulator.models` or of this module.

A session is valid by one indexed query (`live_session`): not ended, not expired, its credential neither revoked
nor expired, and its org still among the credential's. Logout, revocation and removing an org from a credential
are therefore visible to the next request on every replica, with nothing cached.

Lock order: a credential row (FOR UPDATE to revoke it or change its orgs, FOR SHARE to open a session on it), then
session rows, then the org's audit-chain lock (`shared.audit.append`, the last statement).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.regulator.models import Credential, RegulatorSession

__all__ = [
    "CredentialListing",
    "add_org",
    "credential_by_id",
    "credential_by_lookup",
    "credential_by_name",
    "credential_for_session",
    "credentials",
    "end_session",
    "end_sessions",
    "insert_credential",
    "insert_session",
    "live_session",
    "lock_credential",
    "remove_org",
    "replace_code_hash",
    "revoke",
]

_CREDENTIAL_COLUMNS = "id, name, lookup, code_hash, org_ids, created_at, created_by, expires_at, revoked_at"

_LIVE_SESSION = """
SELECT s.id, s.credential_id, c.name, s.org_id, s.expires_at
FROM regulator.sessions s JOIN regulator.credentials c ON c.id = s.credential_id
WHERE s.token_hash = $1 AND s.ended_at IS NULL AND s.expires_at > now()
  AND c.revoked_at IS NULL AND c.expires_at > now() AND s.org_id = ANY (c.org_ids)
"""


@dataclass(frozen=True)
class CredentialListing:
    """A credential as listed (never its hash), with its live sessions."""

    credential: Credential
    live_sessions: int


def _credential(row: asyncpg.Record | None) -> Credential | None:
    if row is None:
        return None
    return Credential(
        id=row["id"],
        name=row["name"],
        lookup=row["lookup"],
        code_hash=row["code_hash"],
        org_ids=tuple(row["org_ids"]),
        created_at=row["created_at"],
        created_by=row["created_by"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )


async def credential_by_lookup(conn: asyncpg.Connection, lookup: str) -> Credential | None:
    row = await conn.fetchrow(f"SELECT {_CREDENTIAL_COLUMNS} FROM regulator.credentials WHERE lookup = $1", lookup)
    return _credential(row)


async def credential_by_name(conn: asyncpg.Connection, name: str) -> Credential | None:
    row = await conn.fetchrow(f"SELECT {_CREDENTIAL_COLUMNS} FROM regulator.credentials WHERE name = $1", name)
    return _credential(row)


async def credential_by_id(conn: asyncpg.Connection, credential_id: uuid.UUID) -> Credential | None:
    row = await conn.fetchrow(f"SELECT {_CREDENTIAL_COLUMNS} FROM regulator.credentials WHERE id = $1", credential_id)
    return _credential(row)


async def lock_credential(conn: asyncpg.Connection, credential_id: uuid.UUID) -> Credential | None:
    """The credential's row FOR UPDATE (a revocation or an org removal), in the caller's transaction."""
    row = await conn.fetchrow(
        f"SELECT {_CREDENTIAL_COLUMNS} FROM regulator.credentials WHERE id = $1 FOR UPDATE", credential_id
    )
    return _credential(row)


async def credential_for_session(
    conn: asyncpg.Connection, credential_id: uuid.UUID, org_id: uuid.UUID
) -> Credential | None:
    """The credential FOR SHARE when it may still open a session for `org_id` (not revoked, not expired, the org
    among its own): a revocation that committed while the code was being checked is not outlived by a session."""
    row = await conn.fetchrow(
        f"""SELECT {_CREDENTIAL_COLUMNS} FROM regulator.credentials
        WHERE id = $1 AND revoked_at IS NULL AND expires_at > now() AND $2 = ANY (org_ids) FOR SHARE""",
        credential_id,
        org_id,
    )
    return _credential(row)


async def insert_credential(
    conn: asyncpg.Connection,
    *,
    name: str,
    lookup: str,
    code_hash: str,
    org_ids: Sequence[uuid.UUID],
    created_by: str,
    expires_at: datetime,
) -> Credential | None:
    """The new credential; None when the name is taken."""
    row = await conn.fetchrow(
        f"""INSERT INTO regulator.credentials (id, name, lookup, code_hash, org_ids, created_by, expires_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING RETURNING {_CREDENTIAL_COLUMNS}""",
        uuid.uuid4(),
        name,
        lookup,
        code_hash,
        list(org_ids),
        created_by,
        expires_at,
    )
    return _credential(row)


async def replace_code_hash(
    conn: asyncpg.Connection, credential_id: uuid.UUID, *, lookup: str, code_hash: str, expires_at: datetime
) -> None:
    """A new code for the credential (the demo credential after the master key changed), valid until
    `expires_at`; its sessions opened with the old code end."""
    await conn.execute(
        """UPDATE regulator.credentials SET lookup = $2, code_hash = $3, expires_at = $4, revoked_at = NULL
        WHERE id = $1""",
        credential_id,
        lookup,
        code_hash,
        expires_at,
    )
    await end_sessions(conn, credential_id)


async def credentials(
    conn: asyncpg.Connection, org_id: uuid.UUID | None = None, *, limit: int | None = None
) -> list[CredentialListing]:
    """Every credential (or those that include `org_id`), by name, at most `limit`, with their live sessions (of
    `org_id` only when given)."""
    rows = await conn.fetch(
        f"""SELECT {", ".join("c." + column for column in _CREDENTIAL_COLUMNS.split(", "))},
            (SELECT count(*) FROM regulator.sessions s
             WHERE s.credential_id = c.id AND s.ended_at IS NULL AND s.expires_at > now()
               AND ($1::uuid IS NULL OR s.org_id = $1)) AS live_sessions
        FROM regulator.credentials c WHERE $1::uuid IS NULL OR $1 = ANY (c.org_ids) ORDER BY c.name LIMIT $2""",
        org_id,
        limit,
    )
    listings = []
    for row in rows:
        credential = _credential(row)
        assert credential is not None
        listings.append(CredentialListing(credential, row["live_sessions"]))
    return listings


async def revoke(conn: asyncpg.Connection, credential_id: uuid.UUID) -> int:
    """Revoke the credential (its sessions fail at once by the validity rule) and end its live sessions; how many
    were live."""
    await conn.execute(
        "UPDATE regulator.credentials SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", credential_id
    )
    return await end_sessions(conn, credential_id)


async def remove_org(conn: asyncpg.Connection, credential_id: uuid.UUID, org_id: uuid.UUID) -> None:
    """Take `org_id` out of a credential that has other orgs too, and end its sessions for that org."""
    await conn.execute(
        "UPDATE regulator.credentials SET org_ids = array_remove(org_ids, $2) WHERE id = $1", credential_id, org_id
    )
    await end_sessions(conn, credential_id, org_id)


async def add_org(conn: asyncpg.Connection, credential_id: uuid.UUID, org_id: uuid.UUID) -> None:
    """Add `org_id` to the credential's orgs unless it is among them."""
    await conn.execute(
        """UPDATE regulator.credentials SET org_ids = array_append(org_ids, $2)
        WHERE id = $1 AND NOT $2 = ANY (org_ids)""",
        credential_id,
        org_id,
    )


async def end_sessions(conn: asyncpg.Connection, credential_id: uuid.UUID, org_id: uuid.UUID | None = None) -> int:
    """End the credential's live sessions (of `org_id` only when given); how many were live."""
    status: str = await conn.execute(
        """UPDATE regulator.sessions SET ended_at = now()
        WHERE credential_id = $1 AND ended_at IS NULL AND ($2::uuid IS NULL OR org_id = $2)""",
        credential_id,
        org_id,
    )
    return int(status.split()[-1])


async def insert_session(
    conn: asyncpg.Connection,
    *,
    credential: Credential,
    org_id: uuid.UUID,
    token_hash: bytes,
    expires_at: datetime,
) -> RegulatorSession:
    session_id = uuid.uuid4()
    await conn.execute(
        """INSERT INTO regulator.sessions (id, credential_id, org_id, token_hash, expires_at)
        VALUES ($1, $2, $3, $4, $5)""",
        session_id,
        credential.id,
        org_id,
        token_hash,
        expires_at,
    )
    return RegulatorSession(session_id, credential.id, credential.name, org_id, expires_at)


async def live_session(conn: asyncpg.Connection, token_hash: bytes) -> RegulatorSession | None:
    """The session whose token hashes to `token_hash` when it is valid now (the module docstring's rule)."""
    row = await conn.fetchrow(_LIVE_SESSION, token_hash)
    if row is None:
        return None
    return RegulatorSession(row["id"], row["credential_id"], row["name"], row["org_id"], row["expires_at"])


async def end_session(conn: asyncpg.Connection, session_id: uuid.UUID) -> bool:
    """End a live session; False when it had already ended."""
    status: str = await conn.execute(
        "UPDATE regulator.sessions SET ended_at = now() WHERE id = $1 AND ended_at IS NULL", session_id
    )
    return status.endswith(" 1")
