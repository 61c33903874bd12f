"""Helpers for end-to-end tests of the regulator service: real auth, core, compliance and regulator processes over
one test database, and regulator credentials written straight into it.

    stack = start_regulator(start_service, database_url)           # auth, core, compliance, then regulator
    code = await create_credential(database_url, [org.id])          # the access code, shown once
    session = await regulator_login(http, stack, code, org.id)      # {"token": ..., "session": {...}}
    status, body, headers = await call(http, "GET", f"{stack.regulator.url}/regulator/alerts", token=session["token"])

The regulator is given AUTH_URL, CORE_URL and COMPLIANCE_URL of the processes started here, and compliance the
regulator's REGULATOR_URL (its snapshots call it). `org`/`other_org`/`http` fixtures are in tests/e2e/conftest.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
from auth_support import call
from compliance_support import ComplianceStack, start_compliance
from core_support import CoreStack, StartService

from apgms.devservers import free_port
from services.regulator import codes, store
from shared.passwords import HASHER


@dataclass(frozen=True)
class RegulatorStack:
    auth: Any  # ServiceProcess
    core: Any
    compliance: Any
    regulator: Any
    database_url: str

    @property
    def core_stack(self) -> CoreStack:
        return CoreStack(auth=self.auth, core=self.core, database_url=self.database_url)

    @property
    def compliance_stack(self) -> ComplianceStack:
        return ComplianceStack(
            auth=self.auth, core=self.core, compliance=self.compliance, database_url=self.database_url
        )

    @property
    def url(self) -> str:
        """The regulator's base URL (its routes are under /regulator)."""
        return str(self.regulator.url)


def start_regulator(
    start_service: StartService,
    database_url: str,
    env: Mapping[str, str | None] | None = None,
    *,
    compliance_env: Mapping[str, str | None] | None = None,
    core_env: Mapping[str, str | None] | None = None,
) -> RegulatorStack:
    """Auth, core and compliance (`start_compliance`), then a regulator process on a port chosen first, so
    compliance can be told where it is; `env` overrides the regulator's environment."""
    port = free_port()
    regulator_url = f"http://127.0.0.1:{port}"
    stack = start_compliance(
        start_service, database_url, {"REGULATOR_URL": regulator_url, **(compliance_env or {})}, core_env=core_env
    )
    regulator = start_service(
        "regulator",
        {
            "PORT": str(port),
            "AUTH_URL": stack.auth.url,
            "CORE_URL": stack.core.url,
            "COMPLIANCE_URL": stack.compliance.url,
            **(env or {}),
        },
    )
    return RegulatorStack(
        auth=stack.auth,
        core=stack.core,
        compliance=stack.compliance,
        regulator=regulator,
        database_url=database_url,
    )


def start_proxy_for(start_service: StartService, stack: RegulatorStack, **env: str) -> Any:
    """The proxy (test_proxy.start_proxy: fast health checks) in front of the stack's four services."""
    from test_proxy import start_proxy

    upstreams = {
        "auth": [stack.auth.url],
        "core": [stack.core.url],
        "compliance": [stack.compliance.url],
        "regulator": [stack.url],
    }
    return start_proxy(start_service, upstreams, **env)


async def create_credential(
    database_url: str,
    org_ids: Sequence[uuid.UUID],
    *,
    name: str | None = None,
    expires_in: timedelta = timedelta(days=90),
    revoked: bool = False,
) -> str:
    """A credential for `org_ids` written straight into the database (no audit record): its access code. The
    name is `reg-<random>` unless given; `expires_in` may be negative (an expired credential)."""
    code = codes.new_access_code()
    connection = await asyncpg.connect(database_url)
    try:
        credential = await store.insert_credential(
            connection,
            name=name or f"reg-{uuid.uuid4().hex[:12]}",
            lookup=code.lookup,
            code_hash=HASHER.hash(code.text),
            org_ids=org_ids,
            created_by="system",
            expires_at=datetime.now(UTC) + expires_in,
        )
        assert credential is not None, "the credential's name is taken"
        if revoked:
            await store.revoke(connection, credential.id)
    finally:
        await connection.close()
    return code.text


async def regulator_login(
    http: aiohttp.ClientSession, stack: RegulatorStack, access_code: str, org_id: uuid.UUID
) -> dict[str, Any]:
    """`POST /regulator/login`, asserting 200: `{token, token_type, session: {id, org_id, credential, ...}}`."""
    status, body, _ = await call(
        http, "POST", f"{stack.url}/regulator/login", json={"access_code": access_code, "org_id": str(org_id)}
    )
    assert status == 200, body
    return dict(body)
