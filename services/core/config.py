"""The core service's settings: the shared ones, and the key-encryption key provider that unwraps each org's PII
data key (`shared.kek`: APGMS_KEK_FILE or APGMS_KEK, the dev-only default outside production), and
SHORTFALL_ALERT_THRESHOLD (money text, default 500.00): a money write that leaves the current BAS cycle's total
shortfall above it raises a SUSPICIOUS_TAX_GAP alert (`services.core.evaluation`).

Core reads no master key (only auth does); it calls the other services as `service-core` with its own
SERVICE_CLIENT_SECRET, like every calling service.

Bulk imports are admitted a few at a time (services/core/bulk.py): CORE_MAX_CONCURRENT_IMPORTS at once (default 2),
and one that finds them all taken waits up to CORE_IMPORT_WAIT_S (default 2 s) for a slot before it is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import Decimal

from shared.config import ConfigError, Env, Settings, environ_with_dotenv, load_settings
from shared.kek import KekProvider, kek_provider_from_env
from shared.money import MoneyError, parse_money

__all__ = [
    "DEFAULT_IMPORT_WAIT_S",
    "DEFAULT_MAX_CONCURRENT_IMPORTS",
    "DEFAULT_SHORTFALL_ALERT_THRESHOLD",
    "SERVICE_NAME",
    "CoreSettings",
    "load_core_settings",
]

SERVICE_NAME = "core"
SHORTFALL_ALERT_THRESHOLD_VAR = "SHORTFALL_ALERT_THRESHOLD"
DEFAULT_SHORTFALL_ALERT_THRESHOLD = "500.00"
# An import of 10,000 rows holds about 25 MB while it runs and takes a second or two: two at once keep core well
# under its 250 MB, and the third waits about one import's time before it is told to come back.
DEFAULT_MAX_CONCURRENT_IMPORTS = 2
DEFAULT_IMPORT_WAIT_S = 2.0
MAX_CONCURRENT_IMPORTS_CEILING = 64


@dataclass(frozen=True)
class CoreSettings(Settings):
    # Wraps and unwraps the orgs' PII data keys; it holds KEKs, and its repr shows none.
    kek_provider: KekProvider
    # A total BAS shortfall above this, left by a money write, raises a SUSPICIOUS_TAX_GAP alert.
    shortfall_alert_threshold: Decimal
    # How many bulk imports run at once in this process, and how long another waits for one to end.
    max_concurrent_imports: int = DEFAULT_MAX_CONCURRENT_IMPORTS
    import_wait_s: float = DEFAULT_IMPORT_WAIT_S


def load_core_settings(environ: Mapping[str, str] | None = None) -> CoreSettings:
    """Core's settings from `environ` (default: the process environment and `.env`); `ConfigError` names the first
    bad variable."""
    merged = environ_with_dotenv(environ)
    base = load_settings(SERVICE_NAME, merged, service_client=True)
    env = Env(merged)
    return CoreSettings(
        **{f.name: getattr(base, f.name) for f in fields(Settings)},
        kek_provider=kek_provider_from_env(merged),
        shortfall_alert_threshold=_threshold(
            merged.get(SHORTFALL_ALERT_THRESHOLD_VAR, DEFAULT_SHORTFALL_ALERT_THRESHOLD)
        ),
        max_concurrent_imports=env.integer(
            "CORE_MAX_CONCURRENT_IMPORTS",
            DEFAULT_MAX_CONCURRENT_IMPORTS,
            minimum=1,
            maximum=MAX_CONCURRENT_IMPORTS_CEILING,
        ),
        import_wait_s=env.number("CORE_IMPORT_WAIT_S", DEFAULT_IMPORT_WAIT_S),
    )


def _threshold(text: str) -> Decimal:
    try:
        amount = parse_money(text)
    except MoneyError as exc:
        raise ConfigError(f"{SHORTFALL_ALERT_THRESHOLD_VAR} must be money text like 500.00: {exc}") from None
    if amount < 0:
        raise ConfigError(f"{SHORTFALL_ALERT_THRESHOLD_VAR} cannot be negative")
    return amount
