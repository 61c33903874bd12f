"""Fixtures shared by the unit tests."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
import structlog

from shared.log import configure_logging, reset_logging


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """JSON log lines written to a string for the test, and the logging setup restored afterwards."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    stream = io.StringIO()
    configure_logging("auth", "info", stream)
    try:
        yield stream
    finally:
        reset_logging()
        structlog.contextvars.clear_contextvars()
        root.handlers = handlers
        root.setLevel(level)
        logging.getLogger("hypercorn.access").disabled = False
        for noisy in ("asyncio", "hypercorn.error"):
            logging.getLogger(noisy).setLevel(logging.NOTSET)
