"""Helpers for end-to-end tests of the compliance service: real auth, core and compliance processes over one test
database, compliance reading core with its service token.

    stack = start_compliance(start_service, database_url)   # auth, core (SESSION_KEK), then compliance
    tokens = await role_tokens(http, stack.core_stack, org)  # {"admin": ..., "finance": ..., ...}
    status, body, headers = await call(http, "GET", f"{stack.compliance.url}/compliance/report", token=tokens["admin"])

Compliance is given CORE_URL and AUTH_URL of the processes started here, a REGULATOR_URL nothing listens on (a
snapshot reports that service unreachable, which is what it is), and no scheduled checkpoints unless `env` asks
(AUDIT_CHECKPOINT_INTERVAL_S). `org`/`other_org`/`http` fixtures are in tests/e2e/conftest.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core_support import CoreStack, StartService, start_core

from apgms.devservers import free_port


@dataclass(frozen=True)
class ComplianceStack:
    auth: Any  # ServiceProcess
    core: Any
    compliance: Any
    database_url: str

    @property
    def core_stack(self) -> CoreStack:
        return CoreStack(auth=self.auth, core=self.core, database_url=self.database_url)


def start_compliance(
    start_service: StartService,
    database_url: str,
    env: Mapping[str, str | None] | None = None,
    *,
    core_env: Mapping[str, str | None] | None = None,
) -> ComplianceStack:
    core = start_core(start_service, database_url, core_env)
    compliance = start_service(
        "compliance",
        {
            "AUTH_URL": core.auth.url,
            "CORE_URL": core.core.url,
            "REGULATOR_URL": f"http://127.0.0.1:{free_port()}",
            "AUDIT_CHECKPOINT_INTERVAL_S": "0",
            **(env or {}),
        },
    )
    return ComplianceStack(auth=core.auth, core=core.core, compliance=compliance, database_url=database_url)
