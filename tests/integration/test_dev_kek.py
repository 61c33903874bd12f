"""The checkout's own PII KEK (`.devdb/pii.kek`): made once, private, in the format shared.kek reads, used unless a
KEK is configured, never in production; `apgms pii rotate-kek` finds the same file that `make run` gives the
services."""

from __future__ import annotations

import asyncio
import stat
import threading
import uuid
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner

from apgms import devstack
from apgms.cli import app
from apgms.devstack import KEK_FILE, dev_kek_file, with_dev_kek
from shared.config import Secret
from shared.kek import LocalKekProvider, kek_provider_from_env, new_kek
from shared.pii import PiiCipher


def kek_id(path: Path) -> str:
    return kek_provider_from_env({"APGMS_KEK_FILE": str(path)}).current_kek_id


def test_the_kek_file_is_created_once_private_and_random(tmp_path: Path) -> None:
    path = dev_kek_file(tmp_path / "a")
    assert path == tmp_path / "a" / KEK_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = kek_id(path)
    assert kek_id(dev_kek_file(tmp_path / "a")) == first, "the same checkout reuses its KEK"
    assert kek_id(dev_kek_file(tmp_path / "b")) != first, "another checkout gets another KEK"
    path.chmod(0o644)
    assert kek_id(dev_kek_file(tmp_path / "a")) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, "a loosened file is closed"
    assert [entry.name for entry in (tmp_path / "a").iterdir()] == [KEK_FILE], "no draft left behind"
    kek_provider_from_env({"APGMS_ENV": "production", "APGMS_KEK_FILE": str(path)})  # a real key, no dev marker


def test_commands_starting_at_once_agree_on_one_kek(tmp_path: Path) -> None:
    ids: list[str] = []
    start = threading.Barrier(8)

    def create() -> None:
        start.wait()
        ids.append(kek_id(dev_kek_file(tmp_path)))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 8 and len(set(ids)) == 1


def test_the_checkouts_kek_is_used_only_when_none_is_configured(tmp_path: Path) -> None:
    dev = {"APGMS_DEV_DIR": str(tmp_path)}
    assert with_dev_kek(dev)["APGMS_KEK_FILE"] == str(tmp_path / KEK_FILE)
    for configured in ({"APGMS_KEK_FILE": "/etc/apgms/kek"}, {"APGMS_KEK": new_kek()}):
        assert with_dev_kek({**dev, **configured}) == {**dev, **configured}
    production = {**dev, "APGMS_ENV": "production"}
    assert with_dev_kek(production) == production, "production names its KEK itself"
    assert [entry.name for entry in tmp_path.iterdir()] == [KEK_FILE], "made only for the first, dev, one"


async def test_rotate_kek_finds_the_checkouts_kek_file(
    database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(devstack, "PROJECT_ROOT", tmp_path)  # a developer's `.env` must not decide the KEK
    for variable in ("APGMS_KEK_FILE", "APGMS_KEK", "APGMS_KEK_PROVIDER"):
        monkeypatch.delenv(variable, raising=False)
    old = Secret(new_kek())
    org = uuid.uuid4()
    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as pool:
        blob = await PiiCipher(pool, LocalKekProvider([old])).encrypt(org, "bank_lines", "payee", "Acme Pty Ltd")
        # The checkout's KEK, made as `make run` makes it, with the retiring KEK listed after it.
        path = dev_kek_file(tmp_path / ".devdb")
        path.write_text(f"{path.read_text().strip()}\n{old.reveal()}\n")
        current = kek_id(path)
        environment = {"DATABASE_URL": database_url, "APGMS_ENV": "test", "APGMS_DEV_DIR": str(tmp_path / ".devdb")}

        result = await asyncio.to_thread(CliRunner().invoke, app, ["pii", "rotate-kek"], env=environment)

        assert result.exit_code == 0, result.output
        assert f"Re-wrapped 1 data key(s) under KEK {current}" in result.stdout
        new_only = LocalKekProvider([Secret(path.read_text().splitlines()[0])])
        assert await PiiCipher(pool, new_only).decrypt(org, "bank_lines", "payee", blob) == "Acme Pty Ltd"
    assert path.read_text().splitlines()[0] not in result.output and old.reveal() not in result.output
