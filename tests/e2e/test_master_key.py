"""The review read `auth.signing_keys` off a published database port and opened the private key with the dev master
key from the repository. No key is built in any more: the auth service needs one, and the published one is refused
by every process in every environment."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg
import pytest

from shared.config import PUBLIC_DEV_MASTER_KEY, Secret
from shared.crypto import SealError, SecretBox

pytestmark = pytest.mark.e2e

StartService = Callable[..., Any]  # tests/conftest.py: start_service(name) -> ServiceProcess


async def test_the_signing_key_of_a_running_auth_service_does_not_open_with_the_published_key(
    start_service: StartService, http: aiohttp.ClientSession, database_url: str
) -> None:
    auth = start_service("auth")  # the session's random key (tests/conftest.py), as `make run` has the checkout's
    async with http.get(f"{auth.url}/auth/.well-known/jwks.json") as response:
        assert response.status == 200
    connection = await asyncpg.connect(database_url)
    try:
        row = await connection.fetchrow("SELECT kid, private_sealed FROM auth.signing_keys WHERE status = 'active'")
    finally:
        await connection.close()
    assert row is not None
    with pytest.raises(SealError):
        SecretBox(Secret(PUBLIC_DEV_MASTER_KEY)).open(row["private_sealed"], associated=row["kid"].encode())


@pytest.mark.parametrize("env", ["dev", "test"])
def test_a_service_given_the_published_key_refuses_to_start(start_service: StartService, env: str) -> None:
    """Auth, the one service that reads the master key (it seals); the others never read it, see below."""
    process = start_service("auth", {"APGMS_ENV": env, "APGMS_MASTER_KEY": PUBLIC_DEV_MASTER_KEY}, wait=False)
    assert process.wait_exit() == 2
    assert process.stderr_lines() == [
        "auth: configuration error: APGMS_MASTER_KEY is the dev key published in earlier versions, refused everywhere"
    ]


def test_a_service_that_seals_nothing_never_reads_the_master_key(start_service: StartService) -> None:
    # Each process reads only the settings it uses: core starts with any master key, or none.
    for key in (PUBLIC_DEV_MASTER_KEY, None):
        core = start_service("core", {"APGMS_ENV": "dev", "APGMS_MASTER_KEY": key})
        assert core.returncode is None and core.stderr_lines() == []


def test_the_auth_service_without_a_key_refuses_to_start(start_service: StartService) -> None:
    process = start_service("auth", {"APGMS_ENV": "dev", "APGMS_MASTER_KEY": None}, wait=False)
    assert process.wait_exit() == 2
    [line] = process.stderr_lines()
    assert line.startswith("auth: configuration error: APGMS_MASTER_KEY is required but not set")
    assert "make run" in line
