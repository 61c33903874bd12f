"""Helpers for end-to-end tests that need orgs, users and tokens (fixtures live in conftest.py)."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg

from services.auth import store
from services.auth.passwords import hash_password
from shared.roles import ROLES

PASSWORD = "correct horse battery staple"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass
class Org:
    """One org with one user per role, all with password `PASSWORD`."""

    id: uuid.UUID
    users: dict[str, store.User] = field(default_factory=dict)

    def email(self, role: str) -> str:
        return self.users[role].email


async def create_org(database_url: str, name: str = "Test Org") -> Org:
    connection = await asyncpg.connect(database_url)
    try:
        org = Org(await store.create_org(connection, name))
        password_hash = hash_password(PASSWORD)
        for role in ROLES:
            email = f"{role}.{org.id.hex[:8]}@example.com"
            user = await store.create_user(connection, org.id, email, password_hash, role)
            assert user is not None
            org.users[role] = user
        return org
    finally:
        await connection.close()


async def call(
    http: aiohttp.ClientSession, method: str, url: str, *, token: str | None = None, **kwargs: Any
) -> tuple[int, Any, Any]:
    """(status, JSON body or None, headers) of one request, with an optional bearer token."""
    headers = dict(kwargs.pop("headers", {}))
    if token:
        headers["authorization"] = f"Bearer {token}"
    async with http.request(method, url, headers=headers, **kwargs) as response:
        text = await response.text()
        try:
            body = await response.json(content_type=None) if text else None
        except ValueError:
            body = text
        return response.status, body, response.headers.copy()


async def login(http: aiohttp.ClientSession, base_url: str, email: str, password: str = PASSWORD) -> dict[str, Any]:
    status, body, _ = await call(http, "POST", f"{base_url}/auth/login", json={"email": email, "password": password})
    assert status == 200, body
    return dict(body)


async def create_user(
    http: aiohttp.ClientSession, base_url: str, admin_token: str, email: str, role: str
) -> dict[str, Any]:
    """`POST /users` as `admin_token` (an admin's, stepped up), with password `PASSWORD`: the new user's JSON."""
    status, created, _ = await call(
        http, "POST", f"{base_url}/users", token=admin_token, json={"email": email, "password": PASSWORD, "role": role}
    )
    assert status == 201, created
    return created
