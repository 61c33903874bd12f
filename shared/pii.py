"""PII at rest: envelope encryption with one data key (DEK) per org, wrapped by a key-encryption key (KEK).

    KekProvider (shared.kek)       wraps and unwraps DEKs under KEKs; LocalKekProvider, kek_provider_from_env
    DataKeyCache                   unwrapped DEKs by org: at most DEK_CACHE_MAX_ORGS, each for DEK_CACHE_TTL_S
    PiiCipher(pool, provider)      encrypt / decrypt (and *_many, one key lookup), destroy(org), forget(org),
                                   lock_live_key(conn, org, key_id) before writing what was sealed,
                                   tag(org, purpose, text): a keyed tag of a text, unlinkable once the key is gone
    sealed_key_id(blob)            the key id a sealed value names
    rotate_kek(conn, provider)     re-wrap every DEK under the current KEK; kek_usage(conn) shows what is left
    PiiError                       CiphertextInvalid, KeyDestroyed, PlaintextInvalid
    KekUnavailable (shared.kek)    not a PiiError: the provider's, passed through when a DEK's KEK is missing

A sealed value (bytea in the caller's table) is

    offset  size    field
    0       1       version, VERSION (1)
    1       4       key_id: which of the org's DEKs sealed it, unsigned big-endian (the first DEK is 1)
    5       12      nonce, random
    17      n + 16  AES-256-GCM ciphertext of the UTF-8 plaintext (n bytes), then the 16-byte tag

so a value costs HEADER_BYTES + 16 = 33 bytes more than its text. The associated data is the 5-byte header, then
b"apgms-pii", the org id (16 bytes), table, NUL, column, NUL and the row id if the caller gave one (else nothing;
an empty row id is refused): a value moved to another org, table, column or row, or given another key id, fails
its tag. Every failure to open is `CiphertextInvalid`, whatever the cause, so callers need not tell them apart.

DEKs live in `pii.data_keys`, wrapped. An org's first encryption creates its DEK in a transaction of its own
(committed before any row uses it, so a caller's rollback cannot leave rows sealed under a key that was never
stored). `destroy(org)` deletes the wrapped DEKs, keeping a tombstone row: afterwards opening the org's values
raises `KeyDestroyed`, and so does encrypting for it (a deleted org gets no new key). Another process may keep
using a DEK it cached for up to DEK_CACHE_TTL_S after a destroy. A writer closes that window with
`lock_live_key(conn, org, key_id)` in the transaction that stores sealed values, before it writes them: it takes a
share lock on the key's row if the key is still live, which conflicts with destroy's UPDATE of that row, so the two
serialise: a destroy that committed first makes it return False (the writer refuses, as for KeyDestroyed, and this
process forgets the org's keys), and one that comes later waits for the writer's commit and then destroys the key
of the values just written, like any earlier ones'.

The process that destroys forgets the DEK at once, and never caches it again, whatever its lookups are doing:

    - a lookup caches what it read only if no destroy began since it started reading (a counter of destroys,
      one for all orgs: destroys are rare, and a lookup that loses the race only skips the cache);
    - `destroy(org)` on its own transaction evicts the org after committing;
    - `destroy(org, conn=...)` runs in the caller's transaction, whose commit this module cannot see (asyncpg has
      no on-commit hook). Until the caller says the transaction is over with `forget(org)` (after its commit or
      its rollback), the org is pending: its keys are read from the table on every use and never cached, so a
      lookup before the commit opens values with the still-committed key and one after it gets KeyDestroyed.
      A caller that never calls `forget` costs the org its cache in this process (and the pending set one id),
      never correctness.

The rejected alternatives: evicting only (what a lookup already running puts back stays 60 s), and treating the org
as destroyed as soon as `destroy` is called (wrong, and stuck so, when the caller's transaction rolls back).

A tag (`PiiCipher.tag`) names a text where the text itself must not be kept, such as a deposit source in an audit
record that outlives the org: HMAC-SHA256 over the org id, the purpose and the text, under a key derived (HKDF-
SHA256, info TAG_KEY_INFO) from the org's FIRST data key when it is unwrapped, the first TAG_HEX_CHARS hex digits.
The same text gives the same tag for one org and purpose (so records can be compared), another elsewhere, and once
`destroy(org)` has run nobody can compute a tag again, so a tag cannot be linked to a text by trying candidates.
The first key, not the current one: the org's tags stay the same when a later key is added.

Random 96-bit nonces bound a DEK to 2**32 values (NIST SP 800-38D 8.3); a new key_id per org is the way past
that, and the format already carries it.

KEK rotation (the KEK order and its configuration are in shared.kek): put the new KEK first in APGMS_KEK_FILE
(the old ones after it), then `rotate_kek` (the CLI's `apgms pii rotate-kek`) re-wraps every DEK not under the
current KEK, RE_WRAP_BATCH_SIZE rows per transaction; sealed values are untouched (their DEKs are the same bytes).
`kek_usage` says when an old KEK wraps nothing any more and can be removed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.crypto import NONCE_BYTES
from shared.kek import KekProvider, WrappedKey

__all__ = [
    "DEK_CACHE_MAX_ORGS",
    "DEK_CACHE_TTL_S",
    "HEADER_BYTES",
    "TAG_HEX_CHARS",
    "VERSION",
    "Binding",
    "CiphertextInvalid",
    "DataKey",
    "DataKeyCache",
    "KekRotation",
    "KeyDestroyed",
    "OrgKeys",
    "PiiCipher",
    "PiiError",
    "PlaintextInvalid",
    "kek_usage",
    "open_value",
    "rotate_kek",
    "seal_value",
    "sealed_key_id",
]

VERSION = 1
DEK_BYTES = 32  # AES-256
_HEADER = struct.Struct(">BI")  # version, key_id
HEADER_BYTES = _HEADER.size
TAG_BYTES = 16
FIRST_KEY_ID = 1
MAX_KEY_ID = 2**32 - 1
DOMAIN = b"apgms-pii"
# Table and column names as PostgreSQL spells an unquoted identifier: no NUL, so the associated data is unambiguous.
IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Long enough for a burst of a page's or an import's values, short enough that a destroy or a KEK removal done by
# another process reaches this one within a minute.
DEK_CACHE_TTL_S = 60.0
DEK_CACHE_MAX_ORGS = 1_000
RE_WRAP_BATCH_SIZE = 500
# Tags: the HKDF info that separates the tag key from the DEK's other uses, and how many hex digits of the HMAC
# are kept (128 bits: collisions among an org's texts are out of reach).
TAG_KEY_INFO = b"apgms-pii-tag-v1"
TAG_KEY_BYTES = 32
TAG_HEX_CHARS = 32
# A cache miss takes a pool connection while the caller may hold one; waiting longer would only hide exhaustion.
POOL_ACQUIRE_TIMEOUT_S = 5.0


class PiiError(Exception):
    """A PII value could not be sealed or opened. Callers decide what a client sees; none of these is a 500 by
    itself, and no message contains plaintext or key material."""


class CiphertextInvalid(PiiError):
    """Malformed, tampered with, of an unknown version or key, or bound to another org, table, column or row."""


class KeyDestroyed(PiiError):
    """The org's data key was destroyed (crypto-shredded): its values cannot be opened, nor new ones sealed."""


class PlaintextInvalid(PiiError):
    """The plaintext is not text that can be stored: it has no UTF-8 form (a lone surrogate)."""


# --- pure core: keys, binding, format ----------------------------------------------------------------------------


class DataKey:
    """An unwrapped DEK, ready to use, and the tag key derived from it. Its repr names the key id only."""

    __slots__ = ("_aead", "_tag_key", "key_id")

    def __init__(self, key_id: int, material: bytes) -> None:
        if len(material) != DEK_BYTES:
            raise ValueError(f"a data key is {DEK_BYTES} bytes")
        self.key_id = key_id
        self._aead = AESGCM(material)
        self._tag_key = HKDF(hashes.SHA256(), TAG_KEY_BYTES, salt=None, info=TAG_KEY_INFO).derive(material)

    def tag(self, org_id: uuid.UUID, purpose: str, text: str) -> str:
        """The keyed tag of `text` for `purpose` (a lower-case identifier) in the org (module docstring)."""
        if not IDENTIFIER.fullmatch(purpose):
            raise ValueError(f"purpose must be a lower-case identifier, got {purpose!r}")
        try:
            encoded = text.encode()
        except UnicodeEncodeError:
            raise PlaintextInvalid("the text is not valid Unicode text (it holds a lone surrogate)") from None
        message = b"".join((DOMAIN, org_id.bytes, purpose.encode(), b"\0", encoded))
        return hmac.new(self._tag_key, message, hashlib.sha256).hexdigest()[:TAG_HEX_CHARS]

    def seal(self, nonce: bytes, plaintext: bytes, associated: bytes) -> bytes:
        return self._aead.encrypt(nonce, plaintext, associated)

    def open(self, nonce: bytes, sealed: bytes, associated: bytes) -> bytes:
        """Raises `cryptography.exceptions.InvalidTag` when `sealed` or `associated` is not what was sealed."""
        return self._aead.decrypt(nonce, sealed, associated)

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key_id}, material=<hidden>)"

    __str__ = __repr__


@dataclass(frozen=True)
class OrgKeys:
    """An org's usable DEKs by key id (the highest seals), or `destroyed` with none."""

    org_id: uuid.UUID
    keys: Mapping[int, DataKey]
    destroyed: bool = False

    @property
    def current(self) -> DataKey:
        """The key that seals: the highest key id."""
        return self.keys[max(self._live_ids())]

    @property
    def first(self) -> DataKey:
        """The key tags are made with: the lowest key id (the same while later keys are added)."""
        return self.keys[min(self._live_ids())]

    def _live_ids(self) -> Collection[int]:
        if self.destroyed:
            raise KeyDestroyed(f"the data key of org {self.org_id} was destroyed")
        if not self.keys:
            raise PiiError(f"org {self.org_id} has no data key")
        return self.keys.keys()


@dataclass(frozen=True)
class Binding:
    """Where a value belongs; part of its associated data."""

    org_id: uuid.UUID
    table: str
    column: str
    row_id: str | None = None

    def __post_init__(self) -> None:
        for name, value in (("table", self.table), ("column", self.column)):
            if not IDENTIFIER.fullmatch(value):
                raise ValueError(f"{name} must be a lower-case SQL identifier, got {value!r}")
        if self.row_id == "":
            raise ValueError("row_id must be non-empty when given")

    def associated(self, header: bytes) -> bytes:
        row = b"" if self.row_id is None else self.row_id.encode()
        return b"".join(
            (header, DOMAIN, self.org_id.bytes, self.table.encode(), b"\0", self.column.encode(), b"\0", row)
        )


def seal_value(key: DataKey, binding: Binding, plaintext: str) -> bytes:
    """The sealed form of `plaintext` under `key`, bound to `binding` (layout in the module docstring);
    `PlaintextInvalid` when `plaintext` has no UTF-8 form."""
    try:
        encoded = plaintext.encode()
    except UnicodeEncodeError:
        raise PlaintextInvalid("the plaintext is not valid Unicode text (it holds a lone surrogate)") from None
    header = _HEADER.pack(VERSION, key.key_id)
    nonce = os.urandom(NONCE_BYTES)
    return header + nonce + key.seal(nonce, encoded, binding.associated(header))


def sealed_key_id(blob: bytes) -> int:
    """The id of the org's DEK that sealed `blob` (read from its header, not authenticated until it is opened);
    `CiphertextInvalid` when it is too short or of another version."""
    if len(blob) < HEADER_BYTES:
        raise CiphertextInvalid("sealed value is truncated")
    version, key_id = _HEADER.unpack_from(blob)
    if version != VERSION:
        raise CiphertextInvalid(f"sealed value has unknown version {version}")
    return int(key_id)


def open_value(keys: OrgKeys, binding: Binding, blob: bytes) -> str:
    """The plaintext of a sealed value; `KeyDestroyed` for a destroyed org, else `CiphertextInvalid` on any fault."""
    if keys.destroyed:
        raise KeyDestroyed(f"the data key of org {keys.org_id} was destroyed")
    if len(blob) < HEADER_BYTES + NONCE_BYTES + TAG_BYTES:
        raise CiphertextInvalid("sealed value is truncated")
    key_id = sealed_key_id(blob)
    key = keys.keys.get(key_id)
    if key is None:
        raise CiphertextInvalid(f"sealed value names key {key_id}, which org {keys.org_id} does not have")
    nonce = blob[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES]
    try:
        plaintext = key.open(nonce, blob[HEADER_BYTES + NONCE_BYTES :], binding.associated(blob[:HEADER_BYTES]))
    except InvalidTag:
        raise CiphertextInvalid(
            "sealed value was tampered with or is bound to another org, table, column or row"
        ) from None
    return plaintext.decode()


class DataKeyCache:
    """Unwrapped DEKs by org, least recently used dropped past `max_orgs`, each entry read again after `ttl_s`."""

    def __init__(
        self,
        max_orgs: int = DEK_CACHE_MAX_ORGS,
        ttl_s: float = DEK_CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_orgs = max_orgs
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[uuid.UUID, tuple[float, OrgKeys]] = OrderedDict()

    def get(self, org_id: uuid.UUID) -> OrgKeys | None:
        entry = self._entries.get(org_id)
        if entry is None:
            return None
        expires_at, keys = entry
        if self._clock() >= expires_at:
            del self._entries[org_id]
            return None
        self._entries.move_to_end(org_id)
        return keys

    def put(self, keys: OrgKeys) -> None:
        self._entries[keys.org_id] = (self._clock() + self.ttl_s, keys)
        self._entries.move_to_end(keys.org_id)
        while len(self._entries) > self.max_orgs:
            self._entries.popitem(last=False)

    def evict(self, org_id: uuid.UUID) -> None:
        self._entries.pop(org_id, None)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"DataKeyCache(orgs={len(self)}, max_orgs={self.max_orgs}, ttl_s={self.ttl_s})"


# --- storage: pii.data_keys (all SQL of this module) -----------------------------------------------------------


@dataclass(frozen=True)
class DataKeyRow:
    org_id: uuid.UUID
    key_id: int
    wrapped: WrappedKey | None  # None once destroyed
    created_at: datetime
    destroyed_at: datetime | None


def _row(record: asyncpg.Record) -> DataKeyRow:
    wrapped = None if record["wrapped"] is None else WrappedKey(record["kek_id"], bytes(record["wrapped"]))
    return DataKeyRow(record["org_id"], record["key_id"], wrapped, record["created_at"], record["destroyed_at"])


async def _data_keys(conn: asyncpg.Connection, org_id: uuid.UUID) -> list[DataKeyRow]:
    rows = await conn.fetch(
        "SELECT org_id, key_id, kek_id, wrapped, created_at, destroyed_at FROM pii.data_keys "
        "WHERE org_id = $1 ORDER BY key_id",
        org_id,
    )
    return [_row(r) for r in rows]


async def _insert_first_key(conn: asyncpg.Connection, org_id: uuid.UUID, wrapped: WrappedKey) -> None:
    # Two processes creating the org's first key at once: the second waits for the first and inserts nothing.
    await conn.execute(
        "INSERT INTO pii.data_keys (org_id, key_id, kek_id, wrapped) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        org_id,
        FIRST_KEY_ID,
        wrapped.kek_id,
        wrapped.blob,
    )


async def _share_live_key(conn: asyncpg.Connection, org_id: uuid.UUID, key_id: int) -> bool:
    # FOR SHARE, not FOR KEY SHARE: destroy's UPDATE changes no key column, so only a share lock conflicts with it.
    live = await conn.fetchval(
        "SELECT 1 FROM pii.data_keys WHERE org_id = $1 AND key_id = $2 AND wrapped IS NOT NULL FOR SHARE",
        org_id,
        key_id,
    )
    return live is not None


async def _destroy(conn: asyncpg.Connection, org_id: uuid.UUID) -> int:
    # The tombstone first: an org that never had a key gets one destroyed key, so no encryption creates one later
    # (a concurrent first encryption waits on this row and then finds it destroyed).
    await conn.execute(
        "INSERT INTO pii.data_keys (org_id, key_id, destroyed_at) VALUES ($1, $2, now()) ON CONFLICT DO NOTHING",
        org_id,
        FIRST_KEY_ID,
    )
    shredded = await conn.fetch(
        "UPDATE pii.data_keys SET wrapped = NULL, kek_id = NULL, destroyed_at = now() "
        "WHERE org_id = $1 AND destroyed_at IS NULL RETURNING key_id",
        org_id,
    )
    return len(shredded)


async def _rows_to_rewrap(conn: asyncpg.Connection, current_kek_id: str, limit: int) -> list[DataKeyRow]:
    rows = await conn.fetch(
        "SELECT org_id, key_id, kek_id, wrapped, created_at, destroyed_at FROM pii.data_keys "
        "WHERE wrapped IS NOT NULL AND kek_id <> $1 ORDER BY org_id, key_id LIMIT $2 FOR UPDATE",
        current_kek_id,
        limit,
    )
    return [_row(r) for r in rows]


async def _set_wrapped(conn: asyncpg.Connection, row: DataKeyRow, wrapped: WrappedKey) -> None:
    await conn.execute(
        "UPDATE pii.data_keys SET kek_id = $3, wrapped = $4, rewrapped_at = now() WHERE org_id = $1 AND key_id = $2",
        row.org_id,
        row.key_id,
        wrapped.kek_id,
        wrapped.blob,
    )


async def kek_usage(conn: asyncpg.Connection) -> dict[str, int]:
    """How many live DEKs each KEK wraps; a KEK absent here can be removed from the provider."""
    rows = await conn.fetch(
        "SELECT kek_id, count(*) AS keys FROM pii.data_keys WHERE wrapped IS NOT NULL GROUP BY kek_id ORDER BY kek_id"
    )
    return {r["kek_id"]: r["keys"] for r in rows}


@dataclass(frozen=True)
class KekRotation:
    rewrapped: int
    batches: int
    kek_usage: dict[str, int]  # after the rotation: only the current KEK, unless rows were added meanwhile


async def rotate_kek(
    conn: asyncpg.Connection, provider: KekProvider, *, batch_size: int = RE_WRAP_BATCH_SIZE
) -> KekRotation:
    """Re-wrap every live DEK not under `provider`'s current KEK, `batch_size` rows per transaction on `conn`;
    sealed values and cached DEKs stay valid (the DEKs are the same bytes)."""
    current = provider.current_kek_id
    rewrapped = batches = 0
    while True:
        async with conn.transaction():
            rows = await _rows_to_rewrap(conn, current, batch_size)
            for row in rows:
                if row.wrapped is not None:  # always: the query selects live keys only
                    await _set_wrapped(conn, row, await provider.wrap(await provider.unwrap(row.wrapped)))
        if not rows:
            return KekRotation(rewrapped, batches, await kek_usage(conn))
        rewrapped += len(rows)
        batches += 1


# --- the adapter -------------------------------------------------------------------------------------------------


class PiiCipher:
    """Seals and opens an org's PII values, reading (and on first use creating) its DEK through `pool`."""

    def __init__(self, pool: asyncpg.Pool, provider: KekProvider, cache: DataKeyCache | None = None) -> None:
        self._pool = pool
        self._provider = provider
        self._cache = DataKeyCache() if cache is None else cache
        # Destroys begun in this process, and the orgs whose destroy ran in a caller's transaction not yet over
        # (the module docstring says how they keep a destroyed DEK out of the cache).
        self._destroys = 0
        self._pending_destroys: set[uuid.UUID] = set()

    def __repr__(self) -> str:
        return f"PiiCipher(provider={self._provider!r}, cache={self._cache!r})"

    async def encrypt(
        self, org_id: uuid.UUID, table: str, column: str, plaintext: str, *, row_id: str | None = None
    ) -> bytes:
        """`plaintext` sealed for org/table/column(/row); `KeyDestroyed` once the org's key is destroyed."""
        binding = Binding(org_id, table, column, row_id)
        return seal_value((await self._keys(org_id, create=True)).current, binding, plaintext)

    async def decrypt(
        self, org_id: uuid.UUID, table: str, column: str, blob: bytes, *, row_id: str | None = None
    ) -> str:
        """The plaintext of a value `encrypt` sealed with the same org/table/column(/row); `CiphertextInvalid` or
        `KeyDestroyed` otherwise."""
        binding = Binding(org_id, table, column, row_id)
        return open_value(await self._keys(org_id, create=False), binding, blob)

    async def encrypt_many(
        self,
        org_id: uuid.UUID,
        table: str,
        column: str,
        plaintexts: Sequence[str],
        *,
        row_ids: Sequence[str | None] | None = None,
    ) -> list[bytes]:
        """`encrypt` for each value, with one key lookup; `row_ids`, when given, pairs with `plaintexts`."""
        bindings = _bindings(org_id, table, column, len(plaintexts), row_ids)
        key = (await self._keys(org_id, create=True)).current
        return [seal_value(key, binding, text) for binding, text in zip(bindings, plaintexts, strict=True)]

    async def decrypt_many(
        self,
        org_id: uuid.UUID,
        table: str,
        column: str,
        blobs: Sequence[bytes],
        *,
        row_ids: Sequence[str | None] | None = None,
    ) -> list[str]:
        """`decrypt` for each value, with one key lookup; the first that fails raises."""
        bindings = _bindings(org_id, table, column, len(blobs), row_ids)
        keys = await self._keys(org_id, create=False)
        return [open_value(keys, binding, blob) for binding, blob in zip(bindings, blobs, strict=True)]

    async def tag(self, org_id: uuid.UUID, purpose: str, text: str) -> str:
        """A keyed tag naming `text` for `purpose` in the org, to record where the text must not be kept (the
        module docstring); creates the org's key on first use, `KeyDestroyed` once it is destroyed."""
        return (await self._keys(org_id, create=True)).first.tag(org_id, purpose, text)

    async def destroy(self, org_id: uuid.UUID, *, conn: asyncpg.Connection | None = None) -> int:
        """Delete the org's wrapped DEKs (crypto-shredding) and forget them here; returns how many were destroyed
        (0 when already destroyed or never created). With `conn`, in the caller's transaction: the caller must
        call `forget(org_id)` once that transaction has committed or rolled back (the module docstring says why);
        until then the org's keys are never cached here."""
        if conn is not None:
            self._pending_destroys.add(org_id)
            self._forget(org_id)
            return await _destroy(conn, org_id)
        self._forget(org_id)
        async with self._pool.acquire(timeout=POOL_ACQUIRE_TIMEOUT_S) as own, own.transaction():
            destroyed = await _destroy(own, org_id)
        self._forget(org_id)
        return destroyed

    async def lock_live_key(self, conn: asyncpg.Connection, org_id: uuid.UUID, key_id: int) -> bool:
        """In the caller's transaction, before it writes values sealed under the org's key `key_id`
        (`sealed_key_id`): True when the key is live, and then it stays live until that transaction ends (a
        destroy waits for it); False when it was destroyed, here or in another process, and this process forgets
        the org's keys at once (the caller refuses the write: values sealed under a destroyed key are lost)."""
        if await _share_live_key(conn, org_id, key_id):
            return True
        self._forget(org_id)
        return False

    def forget(self, org_id: uuid.UUID) -> None:
        """The transaction of a `destroy(org_id, conn=...)` is over (committed or rolled back): drop what this
        process holds of the org's keys; the next use reads them from the table, and caches them again."""
        self._pending_destroys.discard(org_id)
        self._forget(org_id)

    def _forget(self, org_id: uuid.UUID) -> None:
        # The count first: a lookup that read the keys before this point no longer caches what it read.
        self._destroys += 1
        self._cache.evict(org_id)

    async def _keys(self, org_id: uuid.UUID, *, create: bool) -> OrgKeys:
        cached = self._cache.get(org_id)
        if cached is not None:
            return cached
        destroys = self._destroys
        async with self._pool.acquire(timeout=POOL_ACQUIRE_TIMEOUT_S) as conn:
            rows = await _data_keys(conn, org_id)
            if not rows and create:
                await _insert_first_key(conn, org_id, await self._provider.wrap(os.urandom(DEK_BYTES)))
                rows = await _data_keys(conn, org_id)
        if not rows:
            # Never cached: the org's first encryption, here or in another process, would make it stale.
            return OrgKeys(org_id, {})
        opened = {
            row.key_id: DataKey(row.key_id, await self._provider.unwrap(row.wrapped))
            for row in rows
            if row.wrapped is not None
        }
        keys = OrgKeys(org_id, opened, destroyed=not opened)
        if self._destroys == destroys and org_id not in self._pending_destroys:
            self._cache.put(keys)
        return keys


def _bindings(
    org_id: uuid.UUID, table: str, column: str, count: int, row_ids: Sequence[str | None] | None
) -> list[Binding]:
    if row_ids is None:
        return [Binding(org_id, table, column)] * count
    if len(row_ids) != count:
        raise ValueError(f"{len(row_ids)} row ids for {count} values")
    return [Binding(org_id, table, column, row_id) for row_id in row_ids]
