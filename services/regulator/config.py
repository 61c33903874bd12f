"""The regulator service's settings: the shared ones, where it reads compliance and core (internal APIs, service
token with `core:read compliance:read`), the session lifetime, and whether the portal's cookie may travel over plain
HTTP (dev only).

    COMPLIANCE_URL             compliance, for the report, snapshots and evidence packs
    CORE_URL                   core, for alerts and the bank-line summary
    REGULATOR_SESSION_TTL_S    a session's fixed lifetime from login (3600)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from shared.config import SERVICE_PORTS, Env, Settings, environ_with_dotenv, load_settings

__all__ = ["DEFAULT_SESSION_TTL_S", "SERVICE_NAME", "RegulatorSettings", "load_regulator_settings"]

SERVICE_NAME = "regulator"
DEFAULT_SESSION_TTL_S = 3600.0
MAX_SESSION_TTL_S = 12 * 3600.0


def _local(service: str) -> str:
    return f"http://127.0.0.1:{SERVICE_PORTS[service]}"


@dataclass(frozen=True)
class RegulatorSettings(Settings):
    compliance_url: str
    core_url: str
    session_ttl_s: float = DEFAULT_SESSION_TTL_S

    @property
    def secure_cookies(self) -> bool:
        """The portal's cookies carry `Secure` (and the `__Host-` prefix) everywhere but dev and test, where the
        stack is plain HTTP on loopback."""
        return self.env not in ("dev", "test")


def load_regulator_settings(environ: Mapping[str, str] | None = None) -> RegulatorSettings:
    merged = environ_with_dotenv(environ)
    base = load_settings(SERVICE_NAME, merged, service_client=True)
    env = Env(merged)
    ttl = env.number("REGULATOR_SESSION_TTL_S", DEFAULT_SESSION_TTL_S, minimum=60.0)
    return RegulatorSettings(
        **{f.name: getattr(base, f.name) for f in fields(Settings)},
        compliance_url=env.text("COMPLIANCE_URL", _local("compliance")).rstrip("/"),
        core_url=env.text("CORE_URL", _local("core")).rstrip("/"),
        session_ttl_s=min(ttl, MAX_SESSION_TTL_S),
    )
