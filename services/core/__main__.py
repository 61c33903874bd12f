from services.core.app import create_app
from shared.runner import run_service

run_service("core", create_app)
