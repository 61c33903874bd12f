"""The pure half of `shared.pii`: the sealed-value format and its binding, and the DEK cache. The database half
(key table, destroy, rotation) is in tests/integration/test_pii_keys.py, the KEK provider in test_shared_kek.py."""

from __future__ import annotations

import base64
import os
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.pii import (
    HEADER_BYTES,
    VERSION,
    Binding,
    CiphertextInvalid,
    DataKey,
    DataKeyCache,
    KeyDestroyed,
    OrgKeys,
    PiiError,
    PlaintextInvalid,
    open_value,
    seal_value,
)

ORG_A = uuid.UUID("00000000-0000-4000-8000-00000000000a")
ORG_B = uuid.UUID("00000000-0000-4000-8000-00000000000b")
MATERIAL = bytes(range(32))
KEY = DataKey(1, MATERIAL)
KEYS_A = OrgKeys(ORG_A, {1: KEY})
PAYEE_A = Binding(ORG_A, "bank_lines", "payee")


def sealed(text: str = "Acme Pty Ltd", binding: Binding = PAYEE_A) -> bytes:
    return seal_value(KEY, binding, text)


# --- format and binding ------------------------------------------------------------------------------------------


@given(st.text())
def test_any_text_round_trips(text: str) -> None:
    blob = sealed(text)
    assert open_value(KEYS_A, PAYEE_A, blob) == text
    assert len(blob) == HEADER_BYTES + 12 + len(text.encode()) + 16


def test_layout_is_version_key_id_nonce_then_ciphertext() -> None:
    blob = sealed("x")
    assert blob[0] == VERSION
    assert int.from_bytes(blob[1:5], "big") == KEY.key_id
    assert len(blob) == 1 + 4 + 12 + 1 + 16
    assert sealed("x")[5:17] != blob[5:17], "a fresh nonce per value"
    assert b"Acme Pty Ltd" not in sealed("Acme Pty Ltd")


def test_a_value_of_org_a_does_not_open_as_org_b_even_with_the_same_key() -> None:
    blob = sealed()
    with pytest.raises(CiphertextInvalid):
        open_value(OrgKeys(ORG_B, {1: KEY}), Binding(ORG_B, "bank_lines", "payee"), blob)


@pytest.mark.parametrize(
    "other",
    [
        Binding(ORG_A, "bank_lines", "description"),
        Binding(ORG_A, "exports", "payee"),
        Binding(ORG_A, "bank_lines", "payee", row_id="42"),
    ],
    ids=["other column", "other table", "with a row id"],
)
def test_a_value_does_not_open_in_another_place(other: Binding) -> None:
    with pytest.raises(CiphertextInvalid, match="tampered with or is bound to another"):
        open_value(KEYS_A, other, sealed())


def test_a_value_bound_to_a_row_opens_only_at_that_row() -> None:
    blob = sealed(binding=Binding(ORG_A, "bank_lines", "payee", row_id="42"))
    assert open_value(KEYS_A, Binding(ORG_A, "bank_lines", "payee", row_id="42"), blob) == "Acme Pty Ltd"
    for other in (Binding(ORG_A, "bank_lines", "payee", row_id="43"), PAYEE_A):
        with pytest.raises(CiphertextInvalid):
            open_value(KEYS_A, other, blob)


def test_every_flipped_byte_is_refused() -> None:
    blob = sealed()
    for index in range(len(blob)):
        tampered = bytearray(blob)
        tampered[index] ^= 0x01
        with pytest.raises(CiphertextInvalid):
            open_value(KEYS_A, PAYEE_A, bytes(tampered))


@pytest.mark.parametrize("length", [0, 1, HEADER_BYTES, HEADER_BYTES + 12, HEADER_BYTES + 12 + 15])
def test_a_truncated_value_is_refused(length: int) -> None:
    with pytest.raises(CiphertextInvalid, match="truncated"):
        open_value(KEYS_A, PAYEE_A, sealed()[:length])


def test_a_shortened_value_fails_its_tag() -> None:
    with pytest.raises(CiphertextInvalid, match="tampered"):
        open_value(KEYS_A, PAYEE_A, sealed("a longer payee name")[:-3])


def test_an_unknown_version_is_refused_by_name() -> None:
    blob = bytes([VERSION + 1]) + sealed()[1:]
    with pytest.raises(CiphertextInvalid, match="unknown version 2"):
        open_value(KEYS_A, PAYEE_A, blob)


def test_a_key_id_the_org_does_not_have_is_refused() -> None:
    blob = seal_value(DataKey(7, MATERIAL), PAYEE_A, "x")
    with pytest.raises(CiphertextInvalid, match="names key 7"):
        open_value(KEYS_A, PAYEE_A, blob)


def test_the_newest_key_seals_and_older_ones_still_open() -> None:
    newer = DataKey(2, os.urandom(32))
    keys = OrgKeys(ORG_A, {1: KEY, 2: newer})
    assert keys.current is newer
    assert open_value(keys, PAYEE_A, sealed()) == "Acme Pty Ltd"


def test_a_destroyed_org_neither_seals_nor_opens() -> None:
    destroyed = OrgKeys(ORG_A, {}, destroyed=True)
    with pytest.raises(KeyDestroyed):
        _ = destroyed.current
    with pytest.raises(KeyDestroyed):
        open_value(destroyed, PAYEE_A, sealed())


@pytest.mark.parametrize("text", ["\ud800", "Acme \udfff Pty Ltd", "\U0001f600\udc00"])
def test_text_with_no_utf8_form_is_refused_as_a_pii_error(text: str) -> None:
    with pytest.raises(PlaintextInvalid, match="lone surrogate") as raised:
        seal_value(KEY, PAYEE_A, text)
    assert isinstance(raised.value, PiiError)
    assert text not in str(raised.value)


@pytest.mark.parametrize(
    ("table", "column", "row_id"),
    [("Bank_Lines", "payee", None), ("bank_lines", "pay\0ee", None), ("", "payee", None), ("t", "c", "")],
)
def test_a_binding_refuses_names_that_would_make_it_ambiguous(table: str, column: str, row_id: str | None) -> None:
    with pytest.raises(ValueError, match="must be"):
        Binding(ORG_A, table, column, row_id)


# --- key material stays hidden -----------------------------------------------------------------------------------


def test_reprs_hide_key_material() -> None:
    cache = DataKeyCache()
    cache.put(KEYS_A)
    shown = " ".join([repr(KEY), str(KEY), repr(KEYS_A), repr(cache)])
    assert "material=<hidden>" in repr(KEY)
    for secret in (MATERIAL.hex(), repr(MATERIAL), base64.b64encode(MATERIAL).decode()):
        assert secret not in shown


# --- the DEK cache -----------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def org_keys(n: int) -> OrgKeys:
    return OrgKeys(uuid.UUID(int=n), {1: KEY})


def test_the_cache_keeps_at_most_max_orgs_dropping_the_least_recently_used() -> None:
    cache = DataKeyCache(max_orgs=3, ttl_s=60, clock=Clock())
    for n in range(3):
        cache.put(org_keys(n))
    assert cache.get(uuid.UUID(int=0)) is not None  # now the most recently used
    cache.put(org_keys(3))
    assert len(cache) == 3
    assert cache.get(uuid.UUID(int=1)) is None
    assert [cache.get(uuid.UUID(int=n)) is not None for n in (0, 2, 3)] == [True, True, True]
    for n in range(4, 100):
        cache.put(org_keys(n))
    assert len(cache) == 3


def test_a_cache_entry_expires_after_its_ttl() -> None:
    clock = Clock()
    cache = DataKeyCache(max_orgs=10, ttl_s=60, clock=clock)
    cache.put(KEYS_A)
    clock.now += 59.9
    assert cache.get(ORG_A) is KEYS_A
    clock.now += 0.1
    assert cache.get(ORG_A) is None
    assert len(cache) == 0, "an expired entry is dropped, not kept"


def test_a_cache_hit_does_not_extend_the_ttl() -> None:
    clock = Clock()
    cache = DataKeyCache(max_orgs=10, ttl_s=60, clock=clock)
    cache.put(KEYS_A)
    for _ in range(5):
        clock.now += 10
        assert cache.get(ORG_A) is KEYS_A, "a hit inside the ttl"
    clock.now += 10
    assert cache.get(ORG_A) is None


def test_evict_forgets_one_org() -> None:
    cache = DataKeyCache(clock=Clock())
    cache.put(KEYS_A)
    keys_b = OrgKeys(ORG_B, {1: KEY})
    cache.put(keys_b)
    cache.evict(ORG_A)
    cache.evict(ORG_A)
    assert cache.get(ORG_A) is None
    assert cache.get(ORG_B) is not None
    assert cache.get(ORG_B) is keys_b
    assert len(cache) == 1


# --- tags --------------------------------------------------------------------------------------------------------


@given(st.text())
def test_a_tag_is_stable_per_org_and_purpose_and_is_32_hex_digits(text: str) -> None:
    tag = KEY.tag(ORG_A, "deposit_source", text)
    assert tag == DataKey(1, MATERIAL).tag(ORG_A, "deposit_source", text)
    assert len(tag) == 32 and int(tag, 16) >= 0


def test_a_tag_differs_across_orgs_purposes_texts_and_keys() -> None:
    tags = {
        KEY.tag(ORG_A, "deposit_source", "BSB 062-000 1234"),
        KEY.tag(ORG_B, "deposit_source", "BSB 062-000 1234"),
        KEY.tag(ORG_A, "other_purpose", "BSB 062-000 1234"),
        KEY.tag(ORG_A, "deposit_source", "BSB 062-000 1235"),
        DataKey(1, bytes(32)).tag(ORG_A, "deposit_source", "BSB 062-000 1234"),
    }
    assert len(tags) == 5


def test_a_tag_is_made_with_the_first_key_so_a_later_key_changes_no_tag() -> None:
    two = OrgKeys(ORG_A, {1: KEY, 2: DataKey(2, bytes(32))})
    assert two.current.key_id == 2
    assert two.first.tag(ORG_A, "deposit_source", "x") == KEY.tag(ORG_A, "deposit_source", "x")


def test_a_tag_is_refused_for_a_destroyed_org_a_bad_purpose_or_text_without_utf8() -> None:
    with pytest.raises(KeyDestroyed):
        _ = OrgKeys(ORG_A, {}, destroyed=True).first
    with pytest.raises(ValueError, match="purpose"):
        KEY.tag(ORG_A, "Deposit Source", "x")
    with pytest.raises(PlaintextInvalid):
        KEY.tag(ORG_A, "deposit_source", "\ud800")
    assert "MATERIAL" not in repr(KEY) and MATERIAL.hex() not in repr(KEY)
