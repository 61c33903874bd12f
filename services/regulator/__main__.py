from services.regulator.app import create_app
from services.regulator.config import load_regulator_settings
from shared.runner import run_service

# The regulator reads compliance and core (COMPLIANCE_URL, CORE_URL) besides the shared settings.
run_service("regulator", create_app, load_regulator_settings)
