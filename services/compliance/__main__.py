from services.compliance.app import create_app
from services.compliance.config import load_compliance_settings
from shared.runner import run_service

# Compliance seals its evidence signing keys: it reads the master key besides the shared settings, and CORE_URL.
run_service("compliance", create_app, load_compliance_settings)
