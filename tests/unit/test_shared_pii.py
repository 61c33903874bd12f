"""The pure half of `shared.pii`: the sealed-value format and its binding, the DEK cache, the local KEK provider and
its configuration. The database half (key table, destroy, rotation) is in tests/integration/test_pii_keys.py."""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.config import DEV_ONLY_MARKER, PUBLIC_DEV_MASTER_KEY, ConfigError, Secret
from shared.pii import (
    DEV_KEK,
    HEADER_BYTES,
    VERSION,
    Binding,
    CiphertextInvalid,
    DataKey,
    DataKeyCache,
    KekUnavailable,
    KeyDestroyed,
    LocalKekProvider,
    OrgKeys,
    WrappedKey,
    kek_provider_from_env,
    open_value,
    seal_value,
)

ORG_A = uuid.UUID("00000000-0000-4000-8000-00000000000a")
ORG_B = uuid.UUID("00000000-0000-4000-8000-00000000000b")
MATERIAL = bytes(range(32))
KEY = DataKey(1, MATERIAL)
KEYS_A = OrgKeys(ORG_A, {1: KEY})
PAYEE_A = Binding(ORG_A, "bank_lines", "payee")
KEK_ONE = base64.b64encode(b"k" * 32).decode()
KEK_TWO = base64.b64encode(b"q" * 32).decode()


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


@pytest.mark.parametrize(
    ("table", "column", "row_id"),
    [("Bank_Lines", "payee", None), ("bank_lines", "pay\0ee", None), ("", "payee", None), ("t", "c", "")],
)
def test_a_binding_refuses_names_that_would_make_it_ambiguous(table: str, column: str, row_id: str | None) -> None:
    with pytest.raises(ValueError, match="must be"):
        Binding(ORG_A, table, column, row_id)


# --- key material stays hidden -----------------------------------------------------------------------------------


def test_reprs_hide_key_material() -> None:
    provider = LocalKekProvider([Secret(KEK_ONE)])
    wrapped = WrappedKey("kek", b"wrapped-bytes")
    cache = DataKeyCache()
    cache.put(KEYS_A)
    shown = " ".join([repr(KEY), str(KEY), repr(KEYS_A), repr(provider), str(provider), repr(wrapped), repr(cache)])
    assert "material=<hidden>" in repr(KEY)
    for secret in (MATERIAL.hex(), repr(MATERIAL), KEK_ONE, "wrapped-bytes", base64.b64encode(MATERIAL).decode()):
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
    for _ in range(6):
        clock.now += 10
        cache.get(ORG_A)
    assert cache.get(ORG_A) is None


def test_evict_forgets_one_org() -> None:
    cache = DataKeyCache(clock=Clock())
    cache.put(KEYS_A)
    cache.put(OrgKeys(ORG_B, {1: KEY}))
    cache.evict(ORG_A)
    cache.evict(ORG_A)
    assert cache.get(ORG_A) is None
    assert cache.get(ORG_B) is not None


# --- the local KEK provider --------------------------------------------------------------------------------------


async def test_local_provider_wraps_under_the_first_key_and_unwraps_under_any() -> None:
    old = LocalKekProvider([Secret(KEK_ONE)])
    wrapped_old = await old.wrap(MATERIAL)
    rotated = LocalKekProvider([Secret(KEK_TWO), Secret(KEK_ONE)])
    wrapped_new = await rotated.wrap(MATERIAL)
    assert wrapped_old.kek_id == old.current_kek_id != rotated.current_kek_id == wrapped_new.kek_id
    assert MATERIAL not in wrapped_new.blob
    assert await rotated.unwrap(wrapped_old) == MATERIAL
    assert await rotated.unwrap(wrapped_new) == MATERIAL
    with pytest.raises(KekUnavailable, match="no KEK"):
        await old.unwrap(wrapped_new)


async def test_a_tampered_wrapped_key_is_refused() -> None:
    provider = LocalKekProvider([Secret(KEK_ONE)])
    wrapped = await provider.wrap(MATERIAL)
    tampered = WrappedKey(wrapped.kek_id, wrapped.blob[:-2] + (b"AA" if wrapped.blob[-2:] != b"AA" else b"BB"))
    with pytest.raises(KekUnavailable, match="does not open"):
        await provider.unwrap(tampered)


def test_the_same_kek_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        LocalKekProvider([Secret(KEK_ONE), Secret(KEK_ONE)])


# --- configuration -----------------------------------------------------------------------------------------------


def kek_error(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        kek_provider_from_env(environ)
    return str(caught.value)


def test_outside_production_the_dev_default_kek_is_used() -> None:
    for environ in ({}, {"APGMS_ENV": "dev"}, {"APGMS_ENV": "test"}):
        provider = kek_provider_from_env(environ)
        assert provider.current_kek_id == LocalKekProvider([Secret(DEV_KEK)]).current_kek_id
    assert DEV_ONLY_MARKER.encode() in base64.b64decode(DEV_KEK)


def test_production_refuses_a_missing_kek_and_the_dev_default() -> None:
    assert "APGMS_KEK_FILE or APGMS_KEK is required" in kek_error({"APGMS_ENV": "production"})
    message = kek_error({"APGMS_ENV": "production", "APGMS_KEK": DEV_KEK})
    assert "dev-only" in message
    assert DEV_KEK not in message


def test_production_accepts_a_real_kek() -> None:
    provider = kek_provider_from_env({"APGMS_ENV": "production", "APGMS_KEK": KEK_ONE})
    assert provider.current_kek_id == LocalKekProvider([Secret(KEK_ONE)]).current_kek_id


def test_the_published_dev_master_key_is_refused_as_a_kek_everywhere() -> None:
    assert "refused everywhere" in kek_error({"APGMS_KEK": PUBLIC_DEV_MASTER_KEY})


@pytest.mark.parametrize("value", ["not base64!", base64.b64encode(b"short").decode()])
def test_a_malformed_kek_is_refused_without_echoing_it(value: str) -> None:
    message = kek_error({"APGMS_KEK": value})
    assert "APGMS_KEK" in message and "32 bytes" in message
    assert value not in message


def test_apgms_kek_lists_the_current_key_first() -> None:
    provider = kek_provider_from_env({"APGMS_KEK": f"{KEK_TWO}, {KEK_ONE}"})
    assert isinstance(provider, LocalKekProvider)
    assert provider.current_kek_id == LocalKekProvider([Secret(KEK_TWO)]).current_kek_id
    assert len(provider.kek_ids) == 2


def test_the_kek_file_holds_current_and_retired_keys(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    path.write_text(f"# rotated 2025-01-01\n{KEK_TWO}\n\n  {KEK_ONE}  \n")
    provider = kek_provider_from_env({"APGMS_ENV": "production", "APGMS_KEK_FILE": str(path)})
    assert isinstance(provider, LocalKekProvider)
    assert provider.kek_ids == (
        LocalKekProvider([Secret(KEK_TWO)]).current_kek_id,
        LocalKekProvider([Secret(KEK_ONE)]).current_kek_id,
    )


def test_kek_file_problems_name_the_variable(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    assert "APGMS_KEK_FILE" in kek_error({"APGMS_KEK_FILE": str(missing)})
    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n")
    assert "holds no key" in kek_error({"APGMS_KEK_FILE": str(empty)})
    twice = tmp_path / "twice"
    twice.write_text(f"{KEK_ONE}\n{KEK_ONE}\n")
    assert "twice" in kek_error({"APGMS_KEK_FILE": str(twice)})
    assert "not both" in kek_error({"APGMS_KEK_FILE": str(twice), "APGMS_KEK": KEK_ONE})


def test_an_unknown_provider_is_refused() -> None:
    assert "APGMS_KEK_PROVIDER must be one of local" in kek_error({"APGMS_KEK_PROVIDER": "vault"})
