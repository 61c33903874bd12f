"""The auth service's settings: the shared ones, the master key (it seals signing keys and TOTP secrets), and the
secrets of the service clients it issues service tokens to.

Each other service calls the others as the OAuth client `service-<name>` with the secret in its own
SERVICE_CLIENT_SECRET; auth knows the same secret as SERVICE_CLIENT_SECRET_<NAME>. Service clients are
configuration, not rows in `auth.oauth_clients`: they belong to the deployment, not to an org, and a deployment
that sets both variables from one generated value (`make run`, the test harness, compose's `.env`) needs no step
that writes them into the database first. A service whose secret is not given gets no token (`invalid_client`);
in production every one is required.

What each service may call is code, not configuration: `SERVICE_SCOPES` gives each one the scopes its part of the
architecture needs, and its service token carries exactly those.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from shared.config import (
    CALLING_SERVICES,
    Env,
    Secret,
    Settings,
    environ_with_dotenv,
    load_settings,
    service_client_id,
    service_client_secret_variable,
)

SERVICE_NAME = "auth"

# The scopes of each calling service's token, checked by the internal routes it calls (`guard(scopes=...)`):
# compliance's report reads core's bank-line sums, the regulator's read-only views read core and compliance, and
# core's admin export reads the org's users from auth and its admin deletion erases them. A scope names the
# service whose internal routes it opens.
SERVICE_SCOPES: Mapping[str, tuple[str, ...]] = {
    "core": ("auth:read", "auth:admin"),
    "compliance": ("core:read",),
    "regulator": ("core:read", "compliance:read"),
}
# The same, by the OAuth client id the token endpoint sees.
SERVICE_CLIENT_SCOPES: Mapping[str, tuple[str, ...]] = {
    service_client_id(name): scopes for name, scopes in SERVICE_SCOPES.items()
}


@dataclass(frozen=True)
class AuthSettings(Settings):
    # Service client id → its secret.
    service_clients: Mapping[str, Secret]


def load_auth_settings(environ: Mapping[str, str] | None = None) -> AuthSettings:
    merged = environ_with_dotenv(environ)
    base = load_settings(SERVICE_NAME, merged, master_key_required=True)
    env = Env(merged)
    clients = {
        service_client_id(name): env.client_secret(service_client_secret_variable(name), required=True)
        for name in CALLING_SERVICES
    }
    return AuthSettings(
        **{f.name: getattr(base, f.name) for f in fields(Settings)},
        service_clients={client_id: secret for client_id, secret in clients.items() if secret is not None},
    )
