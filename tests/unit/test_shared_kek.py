"""`shared.kek`: the local KEK provider (wrap under the first KEK, unwrap under any, refuse what does not open) and
its configuration from APGMS_KEK_PROVIDER, APGMS_KEK_FILE and APGMS_KEK."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from shared.config import DEV_ONLY_MARKER, PUBLIC_DEV_MASTER_KEY, ConfigError, Secret
from shared.kek import DEV_KEK, KekUnavailable, LocalKekProvider, WrappedKey, kek_provider_from_env

MATERIAL = bytes(range(32))
KEK_ONE = base64.b64encode(b"k" * 32).decode()
KEK_TWO = base64.b64encode(b"q" * 32).decode()


# --- key material stays hidden -----------------------------------------------------------------------------------


def test_reprs_hide_key_material() -> None:
    provider = LocalKekProvider([Secret(KEK_ONE)])
    wrapped = WrappedKey("kek", b"wrapped-bytes")
    shown = " ".join([repr(provider), str(provider), repr(wrapped)])
    assert "kek" in repr(wrapped)
    for secret in (KEK_ONE, "wrapped-bytes"):
        assert secret not in shown


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
