"""Password and secret hashing: argon2id, with a dummy hash so unknown accounts cost the same as known ones."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Sequence

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

# One verification costs about 69 ms of CPU on the reference machine (measured: t=2 with 32/46/64 MiB gave
# 47/69/103 ms; bench/auth.py reports it). 46 MiB is OWASP's argon2id memory figure; parallelism 1 keeps a
# login on one core.
ARGON2_TIME_COST = 2
ARGON2_MEMORY_KIB = 46 * 1024
ARGON2_PARALLELISM = 1
MIN_PASSWORD_CHARS = 12

HASHER = PasswordHasher(time_cost=ARGON2_TIME_COST, memory_cost=ARGON2_MEMORY_KIB, parallelism=ARGON2_PARALLELISM)
# Verified against when the account does not exist, so "unknown user" and "wrong password" take the same time.
_DUMMY_HASH = HASHER.hash(os.urandom(16).hex())


# What every hash made by HASHER starts with: `$argon2id$v=19$m=47104,t=2,p=1`.
_HASHER_PARAMETERS = "$".join(_DUMMY_HASH.split("$")[:4])


def hash_password(password: str, *, salt_of: str | None = None) -> str:
    """An argon2id hash; with `salt_of` (the hash of another account with the same email address) made with its
    salt, so that `passwords_match` checks the accounts of one address with a single argon2 computation."""
    return HASHER.hash(password, salt=_salt(salt_of) if salt_of else None)


def _salt(encoded: str) -> bytes | None:
    """The salt of a hash made with HASHER's parameters; None for any other hash."""
    parts = encoded.split("$")  # "", "argon2id", "v=19", "m=...,t=...,p=...", salt, hash
    if len(parts) != 6 or "$".join(parts[:4]) != _HASHER_PARAMETERS:
        return None
    try:
        return base64.b64decode(parts[4] + "=" * (-len(parts[4]) % 4), validate=True)
    except binascii.Error:
        return None


def passwords_match(password_hashes: Sequence[str], password: str) -> list[bool]:
    """Whether `password` is the password of each hash. Hashes with one salt (the accounts of one address in
    several orgs) cost one argon2 computation together, so the time does not tell how many accounts an address
    has; without hashes one dummy check is made, the cost of a wrong password."""
    if not password_hashes:
        verify_password(None, password)
        return []
    computed: dict[bytes, str] = {}
    matches = []
    for encoded in password_hashes:
        salt = _salt(encoded)
        if salt is None:
            matches.append(verify_password(encoded, password))
            continue
        if salt not in computed:
            computed[salt] = HASHER.hash(password, salt=salt)
        matches.append(hmac.compare_digest(computed[salt].encode(), encoded.encode()))
    return matches


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when `password` matches; with `password_hash=None` it spends the same time and returns False."""
    try:
        return HASHER.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def token_hash(token: str) -> bytes:
    """Refresh tokens are 256-bit random values: a fast hash is enough, and lets us look them up by hash."""
    return hashlib.sha256(token.encode()).digest()


def salted_hash(code: str, salt: bytes) -> bytes:
    """Recovery codes: short, so each gets its own salt and a slow-ish PBKDF2 (codes are checked rarely)."""
    return hashlib.pbkdf2_hmac("sha256", code.encode(), salt, 100_000)


def salted_matches(code: str, salt: bytes, expected: bytes) -> bool:
    return hmac.compare_digest(salted_hash(code, salt), expected)
