"""Helpers of the regulator portal's tests: the proxy in front of a regulator stack, and the cookie names."""

from __future__ import annotations

from core_support import StartService
from regulator_support import RegulatorStack

# Dev and test: no Secure, so no __Host- prefix (RegulatorSettings.secure_cookies).
SESSION_COOKIE = "apgms_regulator"
CSRF_COOKIE = "apgms_regulator_csrf"


def start_proxy(start_service: StartService, stack: RegulatorStack) -> str:
    """The proxy (api-gateway) routing to the four services of `stack`: its base URL."""
    proxy = start_service(
        "api-gateway",
        {
            "UPSTREAM_AUTH_URLS": stack.auth.url,
            "UPSTREAM_CORE_URLS": stack.core.url,
            "UPSTREAM_COMPLIANCE_URLS": stack.compliance.url,
            "UPSTREAM_REGULATOR_URLS": stack.url,
        },
        module="proxy",
    )
    return str(proxy.url)
