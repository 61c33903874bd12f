"""The compliance service's settings: the shared ones, the master key (it seals the evidence signing keys, as auth
seals its token signing keys), where the services it reads are, and the checkpoint schedule.

    CORE_URL                       core, for the report's inputs (internal API, service token with `core:read`)
    REGULATOR_URL                  the regulator service, whose /metrics a snapshot reads like the others'
    AUDIT_CHECKPOINT_INTERVAL_S    seconds between scheduled checkpoints of every org's audit chain head (3600;
                                   0 turns the schedule off: checkpoints are then taken on demand only)
    METRICS_SAMPLE_INTERVAL_S      seconds between readings of the services' request counters (30)

Compliance calls core as `service-compliance` with its SERVICE_CLIENT_SECRET and never writes to core.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from shared.config import SERVICE_PORTS, Env, Settings, environ_with_dotenv, load_settings

__all__ = [
    "DEFAULT_CHECKPOINT_INTERVAL_S",
    "DEFAULT_SAMPLE_INTERVAL_S",
    "SERVICE_NAME",
    "ComplianceSettings",
    "load_compliance_settings",
]

SERVICE_NAME = "compliance"
DEFAULT_CHECKPOINT_INTERVAL_S = 3600.0
DEFAULT_SAMPLE_INTERVAL_S = 30.0


def _local(service: str) -> str:
    return f"http://127.0.0.1:{SERVICE_PORTS[service]}"


@dataclass(frozen=True)
class ComplianceSettings(Settings):
    core_url: str
    regulator_url: str
    # 0: no scheduled checkpoints.
    checkpoint_interval_s: float = DEFAULT_CHECKPOINT_INTERVAL_S
    sample_interval_s: float = DEFAULT_SAMPLE_INTERVAL_S

    @property
    def metric_sources(self) -> dict[str, str]:
        """Service name → base URL of each service whose /metrics a snapshot reads (compliance's own included)."""
        return {
            "auth": self.auth_url,
            "core": self.core_url,
            "compliance": f"http://127.0.0.1:{self.port}",
            "regulator": self.regulator_url,
        }


def load_compliance_settings(environ: Mapping[str, str] | None = None) -> ComplianceSettings:
    """Compliance's settings from `environ` (default: the process environment and `.env`); `ConfigError` names the
    first bad variable."""
    merged = environ_with_dotenv(environ)
    base = load_settings(SERVICE_NAME, merged, master_key_required=True, service_client=True)
    env = Env(merged)
    return ComplianceSettings(
        **{f.name: getattr(base, f.name) for f in fields(Settings)},
        core_url=env.text("CORE_URL", _local("core")).rstrip("/"),
        regulator_url=env.text("REGULATOR_URL", _local("regulator")).rstrip("/"),
        checkpoint_interval_s=env.number("AUDIT_CHECKPOINT_INTERVAL_S", DEFAULT_CHECKPOINT_INTERVAL_S),
        sample_interval_s=env.number("METRICS_SAMPLE_INTERVAL_S", DEFAULT_SAMPLE_INTERVAL_S, minimum=1.0),
    )
