"""Password and secret hashing: argon2id, with a dummy hash so unknown accounts cost the same as known ones."""

from __future__ import annotations

import hashlib
import hmac
import os

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


def hash_password(password: str) -> str:
    return HASHER.hash(password)


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
