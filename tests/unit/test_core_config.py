"""Core's settings: the shared ones plus the KEK provider from APGMS_KEK_FILE / APGMS_KEK (shared.kek), required in
production, never printed."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from services.core.config import CoreSettings, load_core_settings
from shared.config import ConfigError
from shared.kek import DEV_KEK, kek_provider_from_env

KEK = base64.b64encode(os.urandom(32)).decode()
BASE = {"DATABASE_URL": "postgresql://core@127.0.0.1/apgms", "APGMS_ENV": "test"}


def test_core_reads_its_kek_from_apgms_kek(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no developer .env
    settings = load_core_settings({**BASE, "APGMS_KEK": KEK})
    assert isinstance(settings, CoreSettings)
    assert settings.service == "core" and settings.port == 3002
    assert settings.service_client_id == "service-core"
    assert settings.kek_provider.current_kek_id == kek_provider_from_env({"APGMS_KEK": KEK}).current_kek_id
    assert KEK not in repr(settings)


def test_core_reads_its_kek_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "pii.kek"
    path.write_text(f"# current first\n{KEK}\n")
    settings = load_core_settings({**BASE, "APGMS_KEK_FILE": str(path)})
    assert settings.kek_provider.current_kek_id == kek_provider_from_env({"APGMS_KEK": KEK}).current_kek_id


def test_outside_production_core_falls_back_to_the_dev_only_kek(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_core_settings(BASE)
    assert settings.kek_provider.current_kek_id == kek_provider_from_env({"APGMS_KEK": DEV_KEK}).current_kek_id


def test_production_core_without_a_kek_names_the_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    environ = {
        **BASE,
        "APGMS_ENV": "production",
        "SERVICE_CLIENT_SECRET": base64.urlsafe_b64encode(os.urandom(32)).decode(),
    }
    with pytest.raises(ConfigError, match="APGMS_KEK_FILE or APGMS_KEK"):
        load_core_settings(environ)


def test_a_malformed_kek_is_refused_without_echoing_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="APGMS_KEK") as caught:
        load_core_settings({**BASE, "APGMS_KEK": "not-a-key-at-all"})
    assert "not-a-key-at-all" not in str(caught.value)


def test_imports_are_admitted_two_at_a_time_with_a_two_second_wait_unless_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_core_settings({**BASE, "APGMS_KEK": KEK})
    assert (settings.max_concurrent_imports, settings.import_wait_s) == (2, 2.0)
    settings = load_core_settings(
        {**BASE, "APGMS_KEK": KEK, "CORE_MAX_CONCURRENT_IMPORTS": "4", "CORE_IMPORT_WAIT_S": "0.5"}
    )
    assert (settings.max_concurrent_imports, settings.import_wait_s) == (4, 0.5)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CORE_MAX_CONCURRENT_IMPORTS", "0"),
        ("CORE_MAX_CONCURRENT_IMPORTS", "two"),
        ("CORE_MAX_CONCURRENT_IMPORTS", "65"),
        ("CORE_IMPORT_WAIT_S", "-1"),
        ("CORE_IMPORT_WAIT_S", "nan"),
    ],
)
def test_a_bad_import_bound_is_refused_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=name):
        load_core_settings({**BASE, "APGMS_KEK": KEK, name: value})
