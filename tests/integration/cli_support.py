"""Running the `apgms` CLI in a test against a real database (tests/integration/test_cli_*.py, test_seed_*.py).

    pytestmark = pytest.mark.usefixtures("no_project_dotenv")      # tests/integration/conftest.py
    code, out, err = await run_cli(database_url, "seed", APGMS_DEMO_PASSWORD="...")

`run_cli` invokes the Typer app in a worker thread (each command runs its own event loop) with DATABASE_URL,
APGMS_ENV=test and no APGMS_DEMO_PASSWORD unless the caller names it; a keyword set to None unsets the variable.
"""

from __future__ import annotations

import asyncio

from typer.testing import CliRunner

from apgms.cli import app

__all__ = ["run_cli"]


async def run_cli(database_url: str, *args: str, **env: str | None) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `apgms <args>`, with `env` over the defaults above."""
    environment = {"DATABASE_URL": database_url, "APGMS_ENV": "test", "APGMS_DEMO_PASSWORD": None, **env}
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args), env=environment)
    return result.exit_code, result.stdout, result.stderr
