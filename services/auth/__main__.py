from services.auth.app import create_app
from shared.config import load_settings
from shared.runner import run_service

# The auth service seals TOTP secrets and signing keys: it needs APGMS_MASTER_KEY in every environment.
run_service("auth", create_app, lambda: load_settings("auth", master_key_required=True))
