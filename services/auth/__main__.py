from services.auth.app import create_app
from shared.runner import run_service

run_service("auth", create_app)
