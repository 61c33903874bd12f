"""Fixtures shared by the integration tests (the database ones, `database_url` and the rest, are in
tests/conftest.py).

    conn               an asyncpg connection to the test's fresh database, closed after the test
    no_project_dotenv  the developer's checkout (its `.env`, its .devdb) hidden from the CLI: not autouse, a CLI
                       test module asks for it with `pytestmark = pytest.mark.usefixtures("no_project_dotenv")`
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from apgms import devstack


@pytest_asyncio.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


@pytest.fixture
def no_project_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A developer's `.env` must not decide what these tests see."""
    monkeypatch.setattr(devstack, "PROJECT_ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)
