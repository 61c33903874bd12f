"""Two `apgms backup evidence-pack` runs for one org in the same second keep both files: the second is named
`..._<timestamp>-2.json` (then -3, ...) instead of replacing the first."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pytest
from typer.testing import CliRunner

from apgms import backup
from apgms.cli import app
from apgms.evidence_files import backup_file_name

pytestmark = pytest.mark.usefixtures("no_project_dotenv")

ORG = uuid.UUID("1f7c3b9a-4e2d-4a6b-8c5e-9d0f2a1b3c4d")
MOMENT = datetime(2026, 11, 28, 3, 15, 0, tzinfo=UTC)


class FrozenClock(datetime):
    @classmethod
    def now(cls, tz: Any = None) -> FrozenClock:  # type: ignore[override]
        return cls.fromtimestamp(MOMENT.timestamp(), tz)


def test_two_backups_in_one_second_never_overwrite_each_other(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = iter(range(1, 10))

    async def take(_target: Any, out: IO[bytes], _taken_at: datetime, _progress: Any) -> None:
        out.write(b'{"run": %d}' % next(runs))

    monkeypatch.setattr(backup, "take", take)
    monkeypatch.setattr(backup, "datetime", FrozenClock)
    args = ["backup", "evidence-pack", "--base-url", "http://127.0.0.1:9", "--org", str(ORG), "--token", "t"]
    args += ["--out", str(tmp_path)]
    for _ in range(3):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.stdout + result.stderr
    name = backup_file_name(ORG, MOMENT)
    stem = name.removesuffix(".json")
    files = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    assert files == {name: b'{"run": 1}', f"{stem}-2.json": b'{"run": 2}', f"{stem}-3.json": b'{"run": 3}'}
