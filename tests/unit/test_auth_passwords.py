"""Password checks for an address with accounts in several orgs cost one argon2 computation (issue #9, finding 8)."""

from __future__ import annotations

from typing import Any

import pytest

from services.auth import passwords
from services.auth.passwords import hash_password, passwords_match, verify_password


class CountingHasher:
    """The real hasher, counting the argon2 computations (a hash or a verification is one each)."""

    def __init__(self, hasher: Any) -> None:
        self.hasher = hasher
        self.computations = 0

    def hash(self, *args: Any, **kwargs: Any) -> str:
        self.computations += 1
        result: str = self.hasher.hash(*args, **kwargs)
        return result

    def verify(self, *args: Any, **kwargs: Any) -> bool:
        self.computations += 1
        result: bool = self.hasher.verify(*args, **kwargs)
        return result


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> CountingHasher:
    hasher = CountingHasher(passwords.HASHER)
    monkeypatch.setattr(passwords, "HASHER", hasher)
    return hasher


def test_accounts_of_one_address_share_a_salt_and_still_their_own_passwords() -> None:
    first = hash_password("first org password")
    second = hash_password("second org password", salt_of=first)
    assert first.split("$")[4] == second.split("$")[4]
    assert verify_password(second, "second org password")
    assert not verify_password(second, "first org password")
    assert hash_password("x" * 12).split("$")[4] != first.split("$")[4], "otherwise a fresh salt"


def test_one_computation_whether_an_address_has_no_account_one_or_three(counting: CountingHasher) -> None:
    first = hash_password("one password")
    others = [hash_password(f"password {n}", salt_of=first) for n in range(2)]
    for hashes, password, expected in (
        ([], "anything", []),
        ([first], "one password", [True]),
        ([first], "wrong", [False]),
        ([first, *others], "password 1", [False, False, True]),
        ([first, *others], "wrong", [False, False, False]),
    ):
        counting.computations = 0
        assert passwords_match(hashes, password) == expected
        assert counting.computations == 1, (len(hashes), password)


def test_hashes_with_other_salts_or_parameters_are_checked_one_by_one(counting: CountingHasher) -> None:
    own_salts = [hash_password("same password"), hash_password("same password")]
    foreign = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$W3dYxWNj3lHvI5Gy9qzZBqdw8S9nAIuKTvYlJ5K7WDM"
    counting.computations = 0
    assert passwords_match([*own_salts, foreign, "not a hash"], "same password") == [True, True, False, False]
    assert counting.computations == 4
