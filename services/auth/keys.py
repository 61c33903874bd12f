"""Signing keys: one active Ed25519 key signs; it and every retiring key verify.

Rotation (`apgms keys rotate`) publishes a new key at once but lets it sign only `PUBLISH_AHEAD_S` later, so
every verifier (which refetches the JWKS at most every few seconds, on an unknown `kid`) already has it by the
time the first token it signed arrives. Until then the old key keeps signing; it is then retiring and stays in
the JWKS until every token it signed has expired. No request fails during a rotation.
Private keys are sealed with the master key at rest.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
from joserfc.jwk import OKPKey

from services.auth import store
from shared.crypto import SecretBox
from shared.tokens import ACCESS_TOKEN_TTL_S, JWKS_REFETCH_INTERVAL_S, LEEWAY_S, SIGNING_ALGORITHM

KEY_CACHE_TTL_S = 5.0
# Longer than a verifier's JWKS refetch throttle plus this service's key cache, with margin.
PUBLISH_AHEAD_S = JWKS_REFETCH_INTERVAL_S + KEY_CACHE_TTL_S + 2.0
RETIRE_AFTER_S = PUBLISH_AHEAD_S + ACCESS_TOKEN_TTL_S + 2 * LEEWAY_S
# Any fixed number; serialises "create the first key" between replicas starting together.
FIRST_KEY_LOCK = 0x41_50_47_4B_45_59


def new_kid() -> str:
    return f"{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(4)}"


def published_jwk(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored public key as the JWKS shows it: keys created before the switch to `EdDSA` were stored with
    `alg: Ed25519`, a name PyJWT and most gateways do not know (their key is the same Ed25519 key)."""
    return {**stored, "alg": SIGNING_ALGORITHM}


async def add_active_key(conn: asyncpg.Connection, box: SecretBox, signs_after_s: float = 0) -> str:
    kid = new_kid()
    key = OKPKey.generate_key("Ed25519", parameters={"kid": kid, "use": "sig", "alg": SIGNING_ALGORITHM})
    sealed = box.seal(key.as_pem(private=True), associated=kid.encode())
    await store.insert_active_key(conn, kid, key.as_dict(private=False), sealed, signs_after_s)
    return kid


async def rotate(conn: asyncpg.Connection, box: SecretBox) -> tuple[str | None, str]:
    """Retire the active key and add a new one, atomically; returns (old kid, new kid)."""
    async with conn.transaction():
        old = await store.retire_active_key(conn, RETIRE_AFTER_S)
        new = await add_active_key(conn, box, signs_after_s=PUBLISH_AHEAD_S if old else 0)
    return old, new


class SigningKeys:
    """The keys as the auth service uses them, re-read from the database every few seconds so that a rotation
    done by another process (the CLI, another replica) is picked up without a restart."""

    def __init__(self, pool: asyncpg.Pool, box: SecretBox) -> None:
        self._pool = pool
        self._box = box
        self._loaded_at = -1e9
        self._rows: list[store.SigningKeyRow] = []
        self._opened: dict[str, OKPKey] = {}
        self._public: list[dict[str, Any]] = []

    async def ensure_active(self) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", FIRST_KEY_LOCK)
            if not any(row.status == "active" for row in await store.verification_keys(conn)):
                await add_active_key(conn, self._box)

    async def _load(self) -> None:
        if time.monotonic() - self._loaded_at < KEY_CACHE_TTL_S and self._rows:
            return
        async with self._pool.acquire() as conn:
            rows = await store.verification_keys(conn)
        if not any(row.status == "active" for row in rows):
            await self.ensure_active()
            return await self._load()
        self._rows = rows
        self._public = [published_jwk(row.public_jwk) for row in rows]
        self._loaded_at = time.monotonic()

    async def signing_key(self) -> OKPKey:
        """The newest key allowed to sign now: the active one once its `signs_from` has passed."""
        await self._load()
        now = datetime.now(UTC)
        row = next(row for row in self._rows if row.signs_from <= now or row is self._rows[-1])
        if row.kid not in self._opened:
            pem = self._box.open(row.private_sealed, associated=row.kid.encode())
            self._opened[row.kid] = OKPKey.import_key(pem, {"kid": row.kid})
        return self._opened[row.kid]

    async def jwks(self) -> dict[str, Any]:
        await self._load()
        return {"keys": list(self._public)}

    def invalidate(self) -> None:
        self._loaded_at = -1e9
