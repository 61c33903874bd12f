"""The core service's settings: the shared ones, and the key-encryption key provider that unwraps each org's PII
data key (`shared.kek`: APGMS_KEK_FILE or APGMS_KEK, the dev-only default outside production).

Core reads no master key (only auth does); it calls the other services as `service-core` with its own
SERVICE_CLIENT_SECRET, like every calling service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from shared.config import Settings, environ_with_dotenv, load_settings
from shared.kek import KekProvider, kek_provider_from_env

__all__ = ["SERVICE_NAME", "CoreSettings", "load_core_settings"]

SERVICE_NAME = "core"


@dataclass(frozen=True)
class CoreSettings(Settings):
    # Wraps and unwraps the orgs' PII data keys; it holds KEKs, and its repr shows none.
    kek_provider: KekProvider


def load_core_settings(environ: Mapping[str, str] | None = None) -> CoreSettings:
    """Core's settings from `environ` (default: the process environment and `.env`); `ConfigError` names the first
    bad variable."""
    merged = environ_with_dotenv(environ)
    base = load_settings(SERVICE_NAME, merged, service_client=True)
    return CoreSettings(
        **{f.name: getattr(base, f.name) for f in fields(Settings)},
        kek_provider=kek_provider_from_env(merged),
    )
