from services.compliance.app import create_app
from shared.runner import run_service

run_service("compliance", create_app)
