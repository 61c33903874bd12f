"""All SQL of the auth service. Functions take a connection so callers choose the transaction.

Lock order. A transaction that locks more than one of these takes them in this order, skipping any it does not
need, and never one earlier in the list after one later:

1. user rows (`lock_users` FOR UPDATE for a change to the user; `role_for_new_tokens` and `refresh_token_for_update`
   FOR SHARE for whatever mints or ends the user's tokens), several users in id order;
2. the refresh family's advisory lock (`refresh_token_for_update`, `session_is_live`);
3. refresh-token rows (FOR UPDATE / FOR SHARE, or the UPDATEs that rotate and revoke them);
4. the org's audit-chain lock (`shared.audit.append`, the last statement of any audited transaction).

Erasing an org (`erase_org`) locks its `auth.orgs` row FOR UPDATE before all of these: a user or client being
inserted into the org holds that row FOR KEY SHARE (its foreign key) and waits, so the erasure sees every one.

A path that took them in another order deadlocked with one that kept it: a refresh held its token row and waited
for the user row to mint, while a disable held the user row and waited to revoke that token row, and PostgreSQL
aborted one of them (a 500). Revoking all of a user's tokens (disable, MFA reset) holds the user row FOR UPDATE,
so no refresh, logout or step-up of that user is between its family lock and its commit meanwhile, and its
UPDATE, a statement begun after that lock, sees every token they minted: an MFA reset that locked no user row
missed the token a concurrent refresh minted, which outlived the reset (docs/decisions.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from services.auth.emails import canonical_email, email_key

# The two-key advisory locks are a space apart from the one-key ones (migrations, the first signing key); this
# class number keeps refresh families apart from any other two-key lock.
REFRESH_FAMILY_LOCK_CLASS = 0x52_46_41_4D
# An address may have accounts in several orgs; a login checks the password against at most this many of them
# (each check is one argon2 verification). Past it, the org is named in the login.
MAX_ACCOUNTS_PER_EMAIL = 10


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    org_id: uuid.UUID
    email: str
    # services/auth/emails.py's key of `email`: what lookups, uniqueness and the login lockout go by.
    email_key: str
    role: str
    password_hash: str
    created_at: datetime
    mfa_enrolled: bool


@dataclass(frozen=True)
class RefreshToken:
    id: uuid.UUID
    family_id: uuid.UUID
    user_id: uuid.UUID
    amr: list[str]
    auth_time: int
    expires_at: datetime
    rotated_at: datetime | None
    revoked_at: datetime | None
    family_started_at: datetime


@dataclass(frozen=True)
class SigningKeyRow:
    kid: str
    public_jwk: dict[str, Any]
    private_sealed: str
    status: str
    signs_from: datetime
    retire_after: datetime | None


@dataclass(frozen=True)
class OAuthClient:
    client_id: str
    org_id: uuid.UUID
    name: str
    secret_hash: str
    scopes: list[str]


_USER_COLUMNS = """
    u.id, u.org_id, u.email, u.email_key, u.role, u.password_hash, u.created_at,
    EXISTS (SELECT 1 FROM auth.totp_credentials t WHERE t.user_id = u.id AND t.confirmed_at IS NOT NULL)
        AS mfa_enrolled
"""


def _user(row: asyncpg.Record | None) -> User | None:
    return User(**dict(row)) if row is not None else None


# --- orgs and users ---------------------------------------------------------------------------------------------


async def create_org(conn: asyncpg.Connection, name: str, org_id: uuid.UUID | None = None) -> uuid.UUID:
    new_id = org_id or uuid.uuid4()
    await conn.execute("INSERT INTO auth.orgs (id, name) VALUES ($1, $2)", new_id, name)
    return new_id


async def org_exists(conn: asyncpg.Connection, org_id: uuid.UUID) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM auth.orgs WHERE id = $1)", org_id))


async def create_user(
    conn: asyncpg.Connection, org_id: uuid.UUID, email: str, password_hash: str, role: str
) -> User | None:
    """The new user, or None when the org already has a user with this address (by `email_key`); the address is
    stored in its canonical form. Other orgs' users do not matter: an address is unique per org."""
    row = await conn.fetchrow(
        """
        INSERT INTO auth.users (id, org_id, email, email_key, password_hash, role) VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (org_id, email_key) DO NOTHING
        RETURNING id, org_id, email, email_key, role, password_hash, created_at, false AS mfa_enrolled
        """,
        uuid.uuid4(),
        org_id,
        canonical_email(email),
        email_key(email),
        password_hash,
        role,
    )
    return _user(row)


async def users_by_email(
    conn: asyncpg.Connection, email: str, *, org_id: uuid.UUID | None = None, limit: int = MAX_ACCOUNTS_PER_EMAIL
) -> list[User]:
    """The enabled users with this address (by `email_key`), in every org or only in `org_id`, oldest first."""
    rows = await conn.fetch(
        f"""
        SELECT {_USER_COLUMNS} FROM auth.users u
        WHERE u.email_key = $1 AND ($2::uuid IS NULL OR u.org_id = $2) AND u.disabled_at IS NULL
        ORDER BY u.created_at, u.id
        LIMIT $3
        """,
        email_key(email),
        org_id,
        limit,
    )
    return [User(**dict(row)) for row in rows]


async def password_hash_of_address(conn: asyncpg.Connection, email: str) -> str | None:
    """The password hash of the oldest account with this address (by `email_key`) in any org, or None."""
    password_hash: str | None = await conn.fetchval(
        "SELECT password_hash FROM auth.users WHERE email_key = $1 ORDER BY created_at, id LIMIT 1", email_key(email)
    )
    return password_hash


async def org_names(conn: asyncpg.Connection, org_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    rows = await conn.fetch("SELECT id, name FROM auth.orgs WHERE id = ANY($1::uuid[])", list(org_ids))
    return {row["id"]: row["name"] for row in rows}


async def user_by_id(conn: asyncpg.Connection, user_id: uuid.UUID) -> User | None:
    row = await conn.fetchrow(
        f"SELECT {_USER_COLUMNS} FROM auth.users u WHERE u.id = $1 AND u.disabled_at IS NULL", user_id
    )
    return _user(row)


async def list_users(
    conn: asyncpg.Connection, org_id: uuid.UUID, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[User]:
    """One page of the org's users, oldest first, after the keyset cursor `after`."""
    rows = await conn.fetch(
        f"""
        SELECT {_USER_COLUMNS} FROM auth.users u
        WHERE u.org_id = $1 AND ($2::timestamptz IS NULL OR (u.created_at, u.id) > ($2, $3))
        ORDER BY u.created_at, u.id
        LIMIT $4
        """,
        org_id,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [User(**dict(row)) for row in rows]


@dataclass(frozen=True)
class UserState:
    id: uuid.UUID
    org_id: uuid.UUID
    role: str
    disabled: bool


async def lock_users(conn: asyncpg.Connection, org_id: uuid.UUID, user_ids: Sequence[uuid.UUID]) -> list[UserState]:
    """The states of those of `user_ids` that are in `org_id`, their rows locked for update until the transaction
    ends. Always locked in id order, so two transactions locking the same two users (two admins changing each
    other) queue instead of deadlocking."""
    rows = await conn.fetch(
        """
        SELECT id, org_id, role, disabled_at IS NOT NULL AS disabled FROM auth.users
        WHERE id = ANY($1::uuid[]) AND org_id = $2 ORDER BY id FOR UPDATE
        """,
        list(user_ids),
        org_id,
    )
    return [UserState(**dict(row)) for row in rows]


async def update_user(
    conn: asyncpg.Connection, org_id: uuid.UUID, user_id: uuid.UUID, role: str | None, disabled: bool | None
) -> UserState | None:
    """Change a user's role and/or disabled state (None: unchanged); None when no such user is in `org_id`."""
    row = await conn.fetchrow(
        """
        UPDATE auth.users SET
            role = coalesce($3, role),
            disabled_at = CASE WHEN $4::boolean IS NULL THEN disabled_at
                               WHEN $4 THEN coalesce(disabled_at, now()) END
        WHERE id = $1 AND org_id = $2
        RETURNING id, org_id, role, disabled_at IS NOT NULL AS disabled
        """,
        user_id,
        org_id,
        role,
        disabled,
    )
    return UserState(**dict(row)) if row is not None else None


async def role_for_new_tokens(conn: asyncpg.Connection, user_id: uuid.UUID) -> str | None:
    """The user's current role, the row share-locked until the transaction ends; None when disabled or gone.

    Read when tokens are minted, not when the login began: a role change or a disable waits for this transaction,
    so the revocation it then writes covers the tokens minted here, and a login that began before it (then spent
    its argon2 time) cannot mint a token with the old role after it (issue #9, finding 7)."""
    role: str | None = await conn.fetchval(
        "SELECT role FROM auth.users WHERE id = $1 AND disabled_at IS NULL FOR SHARE", user_id
    )
    return role


async def session_is_live(conn: asyncpg.Connection, family_id: uuid.UUID) -> bool:
    """Whether the refresh family `family_id` still has an unrevoked token, those rows share-locked until the
    transaction ends: a logout, a reuse, a disable or an MFA reset revoking them waits for it (then its
    revocation covers what was minted in it), and one that committed first is seen (issue #9, finding 7). The caller
    holds the user's row (`role_for_new_tokens`): the lock order in the module docstring."""
    # The family lock first (module docstring): share-locking the family's rows one by one while a logout held
    # one and revoked the others deadlocked.
    await _lock_family(conn, family_id)
    rows = await conn.fetch(
        "SELECT id FROM auth.refresh_tokens WHERE family_id = $1 AND revoked_at IS NULL FOR SHARE", family_id
    )
    return bool(rows)


async def revoke_user_refresh_tokens(conn: asyncpg.Connection, user_id: uuid.UUID) -> int:
    """Revoke every refresh family of a user (disabled: re-enabling them must not revive their old sessions). Call
    holding the user's row FOR UPDATE (`lock_users`, `reset_mfa`): the lock order in the module docstring."""
    result: str = await conn.execute(
        "UPDATE auth.refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL", user_id
    )
    return int(result.split()[-1])


# The values an erased user keeps: no address (its key `erased:<id>` is a value the address rule never produces,
# since it has no `@`, so no login or salt lookup finds it) and no password hash that any password matches.
ERASED_PREFIX = "erased:"
ERASED_PASSWORD_HASH = "!erased"  # noqa: S105 (a marker no hash function produces, not a secret)
ERASED_NAME = "(erased)"


@dataclass(frozen=True)
class OrgErasure:
    """What `erase_org` did: every user of the org (now disabled), every API client (now revoked), and how many
    refresh tokens it revoked. Ids only: the caller revokes their access tokens and audits the counts."""

    org_id: uuid.UUID
    user_ids: list[uuid.UUID]
    client_ids: list[str]
    refresh_tokens_revoked: int


async def erase_org(conn: asyncpg.Connection, org_id: uuid.UUID) -> OrgErasure | None:
    """Disable every user of the org and erase their personal data (address, password hash, authenticator,
    recovery codes), revoke their refresh tokens and the org's API clients, and blank the org's and clients'
    names; ids, roles and times stay, so the audit chain's actors still name a row. None when there is no such
    org. Call in a transaction: the org row, then its users in id order, are locked until it ends (the module's
    lock order). Erasing an erased org again changes nothing and answers the same ids."""
    if await conn.fetchval("SELECT id FROM auth.orgs WHERE id = $1 FOR UPDATE", org_id) is None:
        return None
    user_ids = [
        row["id"]
        for row in await conn.fetch("SELECT id FROM auth.users WHERE org_id = $1 ORDER BY id FOR UPDATE", org_id)
    ]
    await conn.execute(
        """
        UPDATE auth.users SET email = $2 || id::text, email_key = $2 || id::text, password_hash = $3,
                              disabled_at = coalesce(disabled_at, now())
        WHERE org_id = $1
        """,
        org_id,
        ERASED_PREFIX,
        ERASED_PASSWORD_HASH,
    )
    await conn.execute("DELETE FROM auth.totp_credentials WHERE user_id = ANY($1::uuid[])", user_ids)
    await conn.execute("DELETE FROM auth.recovery_codes WHERE user_id = ANY($1::uuid[])", user_ids)
    revoked: str = await conn.execute(
        "UPDATE auth.refresh_tokens SET revoked_at = now() WHERE user_id = ANY($1::uuid[]) AND revoked_at IS NULL",
        user_ids,
    )
    clients = await conn.fetch(
        """
        UPDATE auth.oauth_clients SET revoked_at = coalesce(revoked_at, now()), name = $2
        WHERE org_id = $1 RETURNING client_id
        """,
        org_id,
        ERASED_NAME,
    )
    await conn.execute("UPDATE auth.orgs SET name = $2 WHERE id = $1", org_id, ERASED_NAME)
    return OrgErasure(
        org_id=org_id,
        user_ids=user_ids,
        client_ids=sorted(row["client_id"] for row in clients),
        refresh_tokens_revoked=int(revoked.split()[-1]),
    )


# --- refresh tokens ---------------------------------------------------------------------------------------------


async def insert_refresh_token(
    conn: asyncpg.Connection,
    *,
    family_id: uuid.UUID,
    user_id: uuid.UUID,
    token_hash: bytes,
    amr: Sequence[str],
    auth_time: int,
    expires_at: datetime,
    family_started_at: datetime,
) -> None:
    await conn.execute(
        """
        INSERT INTO auth.refresh_tokens
            (id, family_id, user_id, token_hash, amr, auth_time, expires_at, family_started_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        """,
        uuid.uuid4(),
        family_id,
        user_id,
        token_hash,
        list(amr),
        auth_time,
        expires_at,
        family_started_at,
    )


async def _lock_family(conn: asyncpg.Connection, family_id: uuid.UUID) -> None:
    await conn.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2::uuid::text))", REFRESH_FAMILY_LOCK_CLASS, family_id
    )


async def refresh_token_for_update(conn: asyncpg.Connection, token_hash: bytes) -> RefreshToken | None:
    """The token row, read after its user's row is share-locked and its whole family locked for the rest of the
    transaction, in the lock order of the module docstring.

    Every change to a family (rotate, revoke on reuse, logout) happens under the family lock, so a revocation sees
    every token minted before it and a rotation after it sees the revocation: locking only the presented row let a
    concurrent rotation mint a token the revoking UPDATE's snapshot could not see (issue #9, finding 3). The user's
    row comes first because minting share-locks it (`role_for_new_tokens`) and a disable locks it before revoking
    the token rows."""
    # A token's family and user never change: read them without a lock to know what to lock.
    owner = await conn.fetchrow("SELECT family_id, user_id FROM auth.refresh_tokens WHERE token_hash = $1", token_hash)
    if owner is None:
        return None
    await conn.execute("SELECT 1 FROM auth.users WHERE id = $1 FOR SHARE", owner["user_id"])
    await _lock_family(conn, owner["family_id"])
    # A new statement after the locks: in READ COMMITTED it sees what the previous holder committed.
    row = await conn.fetchrow(
        """
        SELECT id, family_id, user_id, amr, auth_time, expires_at, rotated_at, revoked_at, family_started_at
        FROM auth.refresh_tokens WHERE token_hash = $1 FOR UPDATE
        """,
        token_hash,
    )
    return RefreshToken(**dict(row)) if row is not None else None


async def mark_rotated(conn: asyncpg.Connection, token_id: uuid.UUID) -> None:
    await conn.execute("UPDATE auth.refresh_tokens SET rotated_at = now() WHERE id = $1", token_id)


async def revoke_family(conn: asyncpg.Connection, family_id: uuid.UUID) -> int:
    result: str = await conn.execute(
        "UPDATE auth.refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL", family_id
    )
    return int(result.split()[-1])


# --- signing keys -----------------------------------------------------------------------------------------------


def _key(row: asyncpg.Record) -> SigningKeyRow:
    return SigningKeyRow(
        kid=row["kid"],
        public_jwk=orjson.loads(row["public_jwk"]),
        private_sealed=row["private_sealed"],
        status=row["status"],
        signs_from=row["signs_from"],
        retire_after=row["retire_after"],
    )


async def verification_keys(conn: asyncpg.Connection) -> list[SigningKeyRow]:
    """The active key and every retiring key whose tokens may still be alive."""
    rows = await conn.fetch(
        """
        SELECT kid, public_jwk::text AS public_jwk, private_sealed, status, signs_from, retire_after
        FROM auth.signing_keys
        WHERE status = 'active' OR (status = 'retiring' AND retire_after > now())
        ORDER BY created_at DESC
        """
    )
    return [_key(row) for row in rows]


async def insert_active_key(
    conn: asyncpg.Connection, kid: str, public_jwk: dict[str, Any], private_sealed: str, signs_after_s: float = 0
) -> None:
    await conn.execute(
        """
        INSERT INTO auth.signing_keys (kid, alg, public_jwk, private_sealed, status, signs_from)
        VALUES ($1, 'EdDSA', $2::text::jsonb, $3, 'active', now() + make_interval(secs => $4))
        """,
        kid,
        orjson.dumps(public_jwk).decode(),
        private_sealed,
        signs_after_s,
    )


async def retire_active_key(conn: asyncpg.Connection, retire_after_s: float) -> str | None:
    """Mark the active key retiring (it verifies for `retire_after_s` more seconds); returns its kid."""
    kid: str | None = await conn.fetchval(
        """
        UPDATE auth.signing_keys SET status = 'retiring', retire_after = now() + make_interval(secs => $1)
        WHERE status = 'active' RETURNING kid
        """,
        retire_after_s,
    )
    await conn.execute(
        "UPDATE auth.signing_keys SET status = 'retired' WHERE status = 'retiring' AND retire_after <= now()"
    )
    return kid


# --- OAuth clients ----------------------------------------------------------------------------------------------


async def insert_client(
    conn: asyncpg.Connection, client_id: str, org_id: uuid.UUID, name: str, secret_hash: str, scopes: Sequence[str]
) -> None:
    await conn.execute(
        "INSERT INTO auth.oauth_clients (client_id, org_id, name, secret_hash, scopes) VALUES ($1, $2, $3, $4, $5)",
        client_id,
        org_id,
        name,
        secret_hash,
        list(scopes),
    )


async def client_by_id(conn: asyncpg.Connection, client_id: str) -> OAuthClient | None:
    row = await conn.fetchrow(
        """
        SELECT client_id, org_id, name, secret_hash, scopes FROM auth.oauth_clients
        WHERE client_id = $1 AND revoked_at IS NULL
        """,
        client_id,
    )
    return OAuthClient(**dict(row)) if row is not None else None


# --- MFA --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TotpCredential:
    secret_sealed: str
    confirmed: bool
    last_step: int | None
    # A replacement for the confirmed secret, begun but not confirmed yet.
    pending_sealed: str | None


async def totp_credential(conn: asyncpg.Connection, user_id: uuid.UUID) -> TotpCredential | None:
    row = await conn.fetchrow(
        "SELECT secret_sealed, confirmed_at IS NOT NULL AS confirmed, last_step, "
        "pending_secret_sealed AS pending_sealed FROM auth.totp_credentials WHERE user_id = $1",
        user_id,
    )
    return TotpCredential(**dict(row)) if row is not None else None


async def begin_totp(conn: asyncpg.Connection, user_id: uuid.UUID, secret_sealed: str) -> bool:
    """Store a new unconfirmed secret; False (nothing changed) when the user already has a confirmed one."""
    result: str = await conn.execute(
        """
        INSERT INTO auth.totp_credentials (user_id, secret_sealed) VALUES ($1, $2)
        ON CONFLICT (user_id) DO UPDATE SET secret_sealed = EXCLUDED.secret_sealed, last_step = NULL,
            created_at = now()
        WHERE auth.totp_credentials.confirmed_at IS NULL
        """,
        user_id,
        secret_sealed,
    )
    return result.endswith(" 1")


async def begin_totp_replacement(conn: asyncpg.Connection, user_id: uuid.UUID, secret_sealed: str) -> bool:
    """Store a new secret beside the confirmed one, which keeps working until this one is confirmed; False
    (nothing changed) when the user has no confirmed secret."""
    result: str = await conn.execute(
        """
        UPDATE auth.totp_credentials SET pending_secret_sealed = $2, pending_since = now()
        WHERE user_id = $1 AND confirmed_at IS NOT NULL
        """,
        user_id,
        secret_sealed,
    )
    return result.endswith(" 1")


async def confirm_totp_replacement(
    conn: asyncpg.Connection, user_id: uuid.UUID, pending_sealed: str, step: int
) -> bool:
    """Make the pending secret `pending_sealed` the user's secret, with `step` used; False when it is no longer
    the pending one (confirmed already, or begun again meanwhile)."""
    row = await conn.fetchval(
        """
        UPDATE auth.totp_credentials
        SET secret_sealed = pending_secret_sealed, pending_secret_sealed = NULL, pending_since = NULL,
            confirmed_at = now(), last_step = greatest(last_step, $3)
        WHERE user_id = $1 AND pending_secret_sealed = $2
        RETURNING user_id
        """,
        user_id,
        pending_sealed,
        step,
    )
    return row is not None


async def reset_mfa(conn: asyncpg.Connection, org_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    """Remove the user's authenticator and recovery codes (they enrol again); False when `org_id` has no such
    user. Call in a transaction: the user's row stays locked until it ends, so the caller's revocation of the
    user's refresh tokens sees every token minted before it and none is minted after (the module's lock order)."""
    if not await lock_users(conn, org_id, [user_id]):
        return False
    await conn.execute("DELETE FROM auth.totp_credentials WHERE user_id = $1", user_id)
    await conn.execute("DELETE FROM auth.recovery_codes WHERE user_id = $1", user_id)
    return True


async def confirm_totp(conn: asyncpg.Connection, user_id: uuid.UUID, secret_sealed: str, step: int) -> bool:
    """Confirm a first enrolment of the secret `secret_sealed` with `step` used; False when it is no longer the
    user's unconfirmed secret (confirmed already, or begun again meanwhile: the user never saw the newer one) or
    the step was already accepted."""
    row = await conn.fetchval(
        """
        UPDATE auth.totp_credentials SET last_step = $3, confirmed_at = now()
        WHERE user_id = $1 AND secret_sealed = $2 AND confirmed_at IS NULL AND (last_step IS NULL OR last_step < $3)
        RETURNING user_id
        """,
        user_id,
        secret_sealed,
        step,
    )
    return row is not None


async def accept_totp_step(conn: asyncpg.Connection, user_id: uuid.UUID, step: int) -> bool:
    """Record `step` of the confirmed secret as used, atomically; False when it (or a later step) was already
    accepted: no replay."""
    row = await conn.fetchval(
        """
        UPDATE auth.totp_credentials SET last_step = $2
        WHERE user_id = $1 AND (last_step IS NULL OR last_step < $2) AND confirmed_at IS NOT NULL
        RETURNING user_id
        """,
        user_id,
        step,
    )
    return row is not None


@dataclass(frozen=True)
class RecoveryCode:
    id: uuid.UUID
    salt: bytes
    code_hash: bytes


async def replace_recovery_codes(
    conn: asyncpg.Connection, user_id: uuid.UUID, codes: Sequence[tuple[bytes, bytes]]
) -> None:
    """Drop the user's recovery codes and store new (salt, hash) pairs."""
    await conn.execute("DELETE FROM auth.recovery_codes WHERE user_id = $1", user_id)
    await conn.executemany(
        "INSERT INTO auth.recovery_codes (id, user_id, salt, code_hash) VALUES ($1, $2, $3, $4)",
        [(uuid.uuid4(), user_id, salt, code_hash) for salt, code_hash in codes],
    )


async def unused_recovery_codes(conn: asyncpg.Connection, user_id: uuid.UUID) -> list[RecoveryCode]:
    rows = await conn.fetch(
        "SELECT id, salt, code_hash FROM auth.recovery_codes WHERE user_id = $1 AND used_at IS NULL", user_id
    )
    return [RecoveryCode(**dict(row)) for row in rows]


async def use_recovery_code(conn: asyncpg.Connection, code_id: uuid.UUID) -> bool:
    """Mark a recovery code used, atomically; False when someone used it first."""
    return (
        await conn.fetchval(
            "UPDATE auth.recovery_codes SET used_at = now() WHERE id = $1 AND used_at IS NULL RETURNING id", code_id
        )
        is not None
    )
