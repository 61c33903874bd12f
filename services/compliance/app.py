"""Composition root of the compliance service."""

from starlette.applications import Starlette

from shared.app import build_service_app
from shared.config import Settings


def create_app(settings: Settings) -> Starlette:
    return build_service_app(settings, title="APGMS compliance service")
