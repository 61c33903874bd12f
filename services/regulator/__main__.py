from services.regulator.app import create_app
from shared.runner import run_service

run_service("regulator", create_app)
