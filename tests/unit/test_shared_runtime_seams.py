"""What `build_runtime` wires from the settings: a verifier per audience and, for a calling service, its
`ServiceClient`; and `guard`'s default kinds per audience. No server, no I/O."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shared.app import IDEMPOTENCY_CLEANUP_TASK, build_runtime
from shared.config import Secret, load_settings, new_service_client_secret
from shared.tokens import REGULATOR_AUDIENCE, SERVICE_AUDIENCE, USER_AUDIENCE

SECRET = new_service_client_secret()


@pytest.fixture(autouse=True)
def empty_workdir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no developer's .env


def test_a_calling_service_gets_a_service_client_for_its_own_client_id() -> None:
    environ = {"APGMS_ENV": "test", "SERVICE_CLIENT_SECRET": SECRET, "AUTH_URL": "http://auth.test:3001/"}
    runtime = build_runtime(load_settings("core", environ, database_required=False, service_client=True))
    client = runtime.require_service_client()
    assert client.client_id == "service-core"
    assert client.token_url == "http://auth.test:3001/auth/oauth/token"
    assert client._secret == Secret(SECRET)


def test_without_a_secret_there_is_no_service_client_and_the_error_names_the_variable() -> None:
    runtime = build_runtime(load_settings("core", {"APGMS_ENV": "test"}, database_required=False, service_client=True))
    assert runtime.service_client is None
    with pytest.raises(RuntimeError, match="SERVICE_CLIENT_SECRET"):
        runtime.require_service_client()


def test_user_and_service_tokens_have_a_verifier_each_over_one_jwks_cache() -> None:
    runtime = build_runtime(load_settings("core", {"APGMS_ENV": "test"}, database_required=False))
    user, service = runtime.verifier_for(USER_AUDIENCE), runtime.verifier_for(SERVICE_AUDIENCE)
    assert (user.audience, service.audience) == (USER_AUDIENCE, SERVICE_AUDIENCE)
    assert user.jwks is service.jwks
    with pytest.raises(RuntimeError, match=REGULATOR_AUDIENCE):
        runtime.verifier_for(REGULATOR_AUDIENCE)


def cleanup_tasks() -> list[asyncio.Task[object]]:
    return [task for task in asyncio.all_tasks() if task.get_name() == IDEMPOTENCY_CLEANUP_TASK]


async def test_a_service_with_a_database_cleans_expired_idempotency_records_from_start_to_shutdown() -> None:
    environ = {"APGMS_ENV": "test", "DATABASE_URL": "postgresql://apgms@127.0.0.1:9/apgms"}
    runtime = build_runtime(load_settings("core", environ))
    for hook in runtime.on_startup:
        await hook(runtime)
    [task] = cleanup_tasks()
    assert not task.done()
    await runtime.close()
    assert task.cancelled()
    assert cleanup_tasks() == []


async def test_a_service_without_a_database_runs_no_cleanup() -> None:
    runtime = build_runtime(load_settings("core", {"APGMS_ENV": "test"}, database_required=False))
    for hook in runtime.on_startup:
        await hook(runtime)
    assert cleanup_tasks() == []
    await runtime.close()
