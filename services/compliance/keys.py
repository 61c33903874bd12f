"""The evidence signing keys: one active Ed25519 key signs packs and checkpoints; every key ever used stays
published (a pack must verify for as long as anyone keeps it).

Rotation (`apgms evidence rotate-key`) retires the active key and adds a new one in one transaction. Unlike token
keys, nothing needs publishing ahead: a signature is checked when someone asks, against the JWKS as it is then,
and the new key is in it from the moment it signs. Private keys are sealed with the master key
(`shared.crypto.SecretBox`, associated data the kid), like auth's token signing keys.

A key row is trusted only when its sealed private key opens under the master key and matches its public key
(`genuine_keys`). Whoever can write the table but lacks the master key could otherwise insert a key pair of their
own and sign forged packs and checkpoints that `/verify` and `/audit/verify` would accept, and that the JWKS would
publish; such a row (or a genuine row whose public key was altered) is left out of everything, and logged.

Every process re-reads the keys at most every KEY_CACHE_TTL_S, so a rotation made by the CLI or another replica is
picked up without a restart.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from services.compliance.signing import Signed, jwks_keys, public_jwk, sign
from services.compliance.store import keys as store
from shared.crypto import SealError, SecretBox
from shared.errors import ApiError
from shared.log import get_logger

__all__ = ["FIRST_KEY_LOCK", "KEY_CACHE_TTL_S", "EvidenceKeys", "add_active_key", "genuine_keys", "rotate"]

KEY_CACHE_TTL_S = 5.0
# A reload by a caller without a connection of its own waits at most this long for one.
KEY_LOAD_ACQUIRE_TIMEOUT_S = 5.0
UNTRUSTED_KEY_EVENT = "evidence_key_untrusted"

log = get_logger(__name__)
# Any fixed number; serialises "create the first key" between replicas starting together.
FIRST_KEY_LOCK = 0x41_50_47_45_56_4B


def _opened_private(row: store.KeyRow, box: SecretBox) -> Ed25519PrivateKey | None:
    """The row's private key when it opens under the master key and matches the row's public key, else None."""
    try:
        key = Ed25519PrivateKey.from_private_bytes(box.open(row.private_sealed, row.kid.encode()))
    except (SealError, ValueError):
        return None
    return key if public_jwk(key.public_key(), row.kid) == row.public_jwk else None


def genuine_keys(rows: list[store.KeyRow], box: SecretBox) -> tuple[list[store.KeyRow], list[str]]:
    """The rows that are this deployment's own keys (their private key opens under the master key and matches the
    public key they publish), in their order, and the kids of the others."""
    genuine = [row for row in rows if _opened_private(row, box) is not None]
    return genuine, [row.kid for row in rows if row not in genuine]


def new_kid() -> str:
    return f"ev-{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(4)}"


async def add_active_key(conn: asyncpg.Connection, box: SecretBox) -> str:
    kid = new_kid()
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    await store.insert_active_key(conn, kid, public_jwk(key.public_key(), kid), box.seal(raw, kid.encode()))
    return kid


async def rotate(conn: asyncpg.Connection, box: SecretBox) -> tuple[str | None, str]:
    """Retire the active key and add a new one, atomically; returns (old kid or None, new kid)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", FIRST_KEY_LOCK)
        old = await store.retire_active_key(conn)
        new = await add_active_key(conn, box)
    return old, new


class EvidenceKeys:
    """The keys as the service uses them: the active one to sign, all of them to verify and publish."""

    def __init__(self, pool: asyncpg.Pool, box: SecretBox) -> None:
        self._pool = pool
        self._box = box
        self._loaded_at = -1e9
        self._rows: list[store.KeyRow] = []
        self._public: dict[str, Ed25519PublicKey] = {}
        self._opened: dict[str, Ed25519PrivateKey] = {}

    async def _read(self, conn: asyncpg.Connection) -> list[store.KeyRow]:
        rows = await store.all_keys(conn)
        if not any(row.status == "active" for row in rows):
            await self._ensure_active(conn)
            rows = await store.all_keys(conn)
        return rows

    async def _ensure_active(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", FIRST_KEY_LOCK)
            if not any(row.status == "active" for row in await store.all_keys(conn)):
                await add_active_key(conn, self._box)

    async def _load(self, conn: asyncpg.Connection | None = None, *, force: bool = False) -> None:
        """Re-read the keys when the cache is older than KEY_CACHE_TTL_S (or `force`), on `conn` when the caller
        holds one: taking a second pool connection while holding one would, with enough such callers at once,
        leave the pool empty and every one of them waiting for good."""
        if not force and self._rows and time.monotonic() - self._loaded_at < KEY_CACHE_TTL_S:
            return
        if conn is None:
            async with self._pool.acquire(timeout=KEY_LOAD_ACQUIRE_TIMEOUT_S) as own:
                rows = await self._read(own)
        else:
            rows = await self._read(conn)
        genuine, untrusted = genuine_keys(rows, self._box)
        for kid in untrusted:
            log.error("security_event", **{"security.event": UNTRUSTED_KEY_EVENT}, kid=kid)
        self._rows = genuine
        self._public = jwks_keys({"keys": [row.public_jwk for row in genuine]})
        self._loaded_at = time.monotonic()

    async def sign(self, payload: bytes, conn: asyncpg.Connection | None = None) -> Signed:
        """`payload` signed by the active key; 503 when the active row is not one of this deployment's keys (the
        table was tampered with: an operator rotates the key, `apgms evidence rotate-key`, after looking). A caller
        holding a pool connection passes it as `conn`, so that a reload of the keys does not take a second one."""
        await self._load(conn)
        row = next((row for row in self._rows if row.status == "active"), None)
        if row is None:
            raise ApiError("service_unavailable", "The evidence signing key failed its integrity check")
        key = self._opened.get(row.kid)
        if key is None:
            key = self._opened[row.kid] = Ed25519PrivateKey.from_private_bytes(
                self._box.open(row.private_sealed, row.kid.encode())
            )
        return sign(payload, key, row.kid)

    async def public_keys(self, conn: asyncpg.Connection | None = None) -> dict[str, Ed25519PublicKey]:
        """kid → public key of every key, active and retired (a caller holding a connection passes it)."""
        await self._load(conn)
        return dict(self._public)

    async def public_keys_with(
        self, kids: str | Iterable[str], conn: asyncpg.Connection | None = None
    ) -> dict[str, Ed25519PublicKey]:
        """As `public_keys`, re-read at once when one of `kids` is unknown (a key another process added a moment
        ago, such as a rotation made in the last KEY_CACHE_TTL_S)."""
        wanted = {kids} if isinstance(kids, str) else set(kids)
        await self._load(conn)
        if not wanted <= self._public.keys():
            await self._load(conn, force=True)
        return dict(self._public)

    async def jwks(self) -> dict[str, Any]:
        await self._load()
        return {"keys": [row.public_jwk for row in self._rows]}
