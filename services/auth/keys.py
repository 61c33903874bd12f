"""Signing keys: one active Ed25519 key signs; it and every retiring key verify.

Rotation (`apgms keys rotate`) adds a new active key and marks the old one retiring: it signs no more, but stays
in the JWKS until every token it signed has expired (access-token lifetime plus leeway), so no request fails.
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
from shared.tokens import ACCESS_TOKEN_TTL_S, LEEWAY_S

KEY_CACHE_TTL_S = 5.0
RETIRE_AFTER_S = ACCESS_TOKEN_TTL_S + 2 * LEEWAY_S
# Any fixed number; serialises "create the first key" between replicas starting together.
FIRST_KEY_LOCK = 0x41_50_47_4B_45_59


def new_kid() -> str:
    return f"{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(4)}"


async def add_active_key(conn: asyncpg.Connection, box: SecretBox) -> str:
    kid = new_kid()
    key = OKPKey.generate_key("Ed25519", parameters={"kid": kid, "use": "sig", "alg": "Ed25519"})
    sealed = box.seal(key.as_pem(private=True), associated=kid.encode())
    await store.insert_active_key(conn, kid, key.as_dict(private=False), sealed)
    return kid


async def rotate(conn: asyncpg.Connection, box: SecretBox) -> tuple[str | None, str]:
    """Retire the active key and add a new one, atomically; returns (old kid, new kid)."""
    async with conn.transaction():
        old = await store.retire_active_key(conn, RETIRE_AFTER_S)
        new = await add_active_key(conn, box)
    return old, new


class SigningKeys:
    """The keys as the auth service uses them, re-read from the database every few seconds so that a rotation
    done by another process (the CLI, another replica) is picked up without a restart."""

    def __init__(self, pool: asyncpg.Pool, box: SecretBox) -> None:
        self._pool = pool
        self._box = box
        self._loaded_at = -1e9
        self._signing: OKPKey | None = None
        self._public: list[dict[str, Any]] = []

    async def ensure_active(self) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", FIRST_KEY_LOCK)
            if not any(row.status == "active" for row in await store.verification_keys(conn)):
                await add_active_key(conn, self._box)

    async def _load(self) -> None:
        if time.monotonic() - self._loaded_at < KEY_CACHE_TTL_S and self._signing is not None:
            return
        async with self._pool.acquire() as conn:
            rows = await store.verification_keys(conn)
        active = next((row for row in rows if row.status == "active"), None)
        if active is None:
            await self.ensure_active()
            return await self._load()
        pem = self._box.open(active.private_sealed, associated=active.kid.encode())
        self._signing = OKPKey.import_key(pem, {"kid": active.kid})
        self._public = [row.public_jwk for row in rows]
        self._loaded_at = time.monotonic()

    async def signing_key(self) -> OKPKey:
        await self._load()
        assert self._signing is not None
        return self._signing

    async def jwks(self) -> dict[str, Any]:
        await self._load()
        return {"keys": list(self._public)}

    def invalidate(self) -> None:
        self._loaded_at = -1e9
