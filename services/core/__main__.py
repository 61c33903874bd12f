from services.core.app import create_app
from services.core.config import load_core_settings
from shared.runner import run_service

# Core seals and opens PII: it reads the KEK provider's settings (APGMS_KEK_FILE or APGMS_KEK) besides the shared ones.
run_service("core", create_app, load_core_settings)
