from services.auth.app import create_app
from services.auth.config import load_auth_settings
from shared.runner import run_service

# The auth service seals TOTP secrets and signing keys: it needs APGMS_MASTER_KEY in every environment.
run_service("auth", create_app, load_auth_settings)
