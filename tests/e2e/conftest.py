"""Fixtures for end-to-end tests of the auth service and everything that needs tokens.

Helpers (`call`, `login`, `PASSWORD`, `Org`) are in `auth_support.py`: import them from there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest_asyncio
from auth_support import Org, create_org


@pytest_asyncio.fixture
async def org(database_url: str) -> Org:
    return await create_org(database_url)


@pytest_asyncio.fixture
async def other_org(database_url: str) -> Org:
    return await create_org(database_url, "Other Org")


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session
