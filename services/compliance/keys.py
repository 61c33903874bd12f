"""The evidence signing keys: one active Ed25519 key signs packs and checkpoints; every key ever used stays
published (a pack must verify for as long as anyone keeps it).

Rotation (`apgms evidence rotate-key`) retires the active key and adds a new one in one transaction. Unlike token
keys, nothing needs publishing ahead: a signature is checked when someone asks, against the JWKS as it is then,
and the new key is in it from the moment it signs. Private keys are sealed with the master key
(`shared.crypto.SecretBox`, associated data the kid), like auth's token signing keys. Every process re-reads the
keys at most every KEY_CACHE_TTL_S, so a rotation made by the CLI or another replica is picked up without a restart.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from services.compliance.signing import Signed, jwks_keys, public_jwk, sign
from services.compliance.store import keys as store
from shared.crypto import SecretBox

__all__ = ["FIRST_KEY_LOCK", "KEY_CACHE_TTL_S", "EvidenceKeys", "add_active_key", "rotate"]

KEY_CACHE_TTL_S = 5.0
# Any fixed number; serialises "create the first key" between replicas starting together.
FIRST_KEY_LOCK = 0x41_50_47_45_56_4B


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

    async def _ensure_active(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", FIRST_KEY_LOCK)
            if not any(row.status == "active" for row in await store.all_keys(conn)):
                await add_active_key(conn, self._box)

    async def _load(self, *, force: bool = False) -> None:
        if not force and self._rows and time.monotonic() - self._loaded_at < KEY_CACHE_TTL_S:
            return
        async with self._pool.acquire() as conn:
            rows = await store.all_keys(conn)
            if not any(row.status == "active" for row in rows):
                await self._ensure_active(conn)
                rows = await store.all_keys(conn)
        self._rows = rows
        self._public = jwks_keys({"keys": [row.public_jwk for row in rows]})
        self._loaded_at = time.monotonic()

    async def sign(self, payload: bytes) -> Signed:
        """`payload` signed by the active key."""
        await self._load()
        row = next(row for row in self._rows if row.status == "active")
        key = self._opened.get(row.kid)
        if key is None:
            raw = self._box.open(row.private_sealed, row.kid.encode())
            key = self._opened[row.kid] = Ed25519PrivateKey.from_private_bytes(raw)
        return sign(payload, key, row.kid)

    async def public_keys(self) -> dict[str, Ed25519PublicKey]:
        """kid → public key of every key, active and retired."""
        await self._load()
        return dict(self._public)

    async def public_keys_with(self, kid: str) -> dict[str, Ed25519PublicKey]:
        """As `public_keys`, re-read at once when `kid` is unknown (a key another process added a moment ago)."""
        await self._load()
        if kid not in self._public:
            await self._load(force=True)
        return dict(self._public)

    async def jwks(self) -> dict[str, Any]:
        await self._load()
        return {"keys": [row.public_jwk for row in self._rows]}
