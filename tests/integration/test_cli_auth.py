"""`apgms seed`, `apgms keys rotate` and `apgms clients add` against a real database."""

from __future__ import annotations

import base64
import os
import re
import time
import uuid

import asyncpg
import pyotp
import pytest
from cli_support import run_cli
from joserfc.jwk import KeySet

from apgms.seed import DEMO_DEPOSIT_SOURCE, DEMO_ORG_NAME, DEMO_USERS, DEV_DEMO_PASSWORD
from services.auth import store
from services.auth.keys import SigningKeys, add_active_key
from services.auth.passwords import verify_password
from shared import audit
from shared.config import Secret, new_master_key
from shared.crypto import SecretBox
from shared.tokens import USER_AUDIENCE, access_claims, sign, verify

ISSUER = "urn:apgms:auth"

pytestmark = pytest.mark.usefixtures("no_project_dotenv")


def dev_box() -> SecretBox:
    return SecretBox(Secret(os.environ["APGMS_MASTER_KEY"]))  # the session's key (tests/conftest.py)


def printed_totp_secret(output: str) -> str:
    match = re.search(r"Admin TOTP: secret (\S+)\s+URI (otpauth://\S+)", output)
    assert match, output
    assert match.group(2).startswith("otpauth://totp/APGMS:admin%40demo.apgms.example?secret=" + match.group(1))
    return match.group(1)


async def test_seed_is_idempotent_and_enrols_the_admin_in_totp(database_url: str, conn: asyncpg.Connection) -> None:
    code, first, err = await run_cli(database_url, "seed")
    assert (code, err) == (0, ""), first
    assert "Created 3 demo user(s)." in first
    for _, email in DEMO_USERS:
        assert email in first
    assert f"Password (all demo users): {DEV_DEMO_PASSWORD}" in first
    secret = printed_totp_secret(first)

    code, second, _ = await run_cli(database_url, "seed")
    assert code == 0, second
    assert "Demo org already seeded; nothing created." in second
    assert printed_totp_secret(second) == secret, "the sealed secret is re-read, not replaced"

    orgs = await conn.fetch("SELECT id, name FROM auth.orgs")
    assert [row["name"] for row in orgs] == [DEMO_ORG_NAME]
    users = await conn.fetch("SELECT email, role, org_id, password_hash FROM auth.users ORDER BY email")
    assert sorted((row["role"], row["email"]) for row in users) == sorted(DEMO_USERS)
    assert {row["org_id"] for row in users} == {orgs[0]["id"]}
    assert all(verify_password(row["password_hash"], DEV_DEMO_PASSWORD) for row in users)

    [admin] = await store.users_by_email(conn, DEMO_USERS[0][1])
    assert admin.mfa_enrolled
    credential = await store.totp_credential(conn, admin.id)
    assert credential is not None and credential.confirmed
    assert dev_box().open(credential.secret_sealed, associated=admin.id.bytes).decode() == secret
    step = int(time.time()) // 30
    assert await store.accept_totp_step(conn, admin.id, step), "the admin's current code is usable"
    assert pyotp.TOTP(secret).now()

    # Both designated accounts take deposits from the demo source, added once (and audited once) over two runs.
    sources = await conn.fetch(
        "SELECT a.tax, s.source FROM core.designated_sources s JOIN core.designated_accounts a ON a.id = s.account_id "
        "WHERE a.org_id = $1 ORDER BY a.tax",
        orgs[0]["id"],
    )
    assert [(row["tax"], row["source"]) for row in sources] == [
        ("GST", DEMO_DEPOSIT_SOURCE),
        ("PAYGW", DEMO_DEPOSIT_SOURCE),
    ]
    added = await conn.fetch(
        "SELECT actor, detail::text FROM audit.records WHERE org_id = $1 AND action = 'designated.sources.add'",
        orgs[0]["id"],
    )
    assert [row["actor"] for row in added] == ["system", "system"]
    assert (await audit.verify_org(conn, orgs[0]["id"])).ok


async def test_seed_takes_the_password_from_the_environment_and_refuses_the_default_in_production(
    database_url: str, conn: asyncpg.Connection
) -> None:
    production_key = new_master_key()
    code, _, err = await run_cli(database_url, "seed", APGMS_ENV="production", APGMS_MASTER_KEY=production_key)
    assert code == 1
    assert err.strip() == "error: APGMS_DEMO_PASSWORD is required when APGMS_ENV=production"
    code, _, err = await run_cli(
        database_url,
        "seed",
        APGMS_ENV="production",
        APGMS_MASTER_KEY=production_key,
        APGMS_DEMO_PASSWORD="x-dev-only-x",
    )
    assert (code, "dev-only password" in err) == (1, True)
    assert await conn.fetchval("SELECT count(*) FROM auth.users") == 0

    code, out, _ = await run_cli(database_url, "seed", APGMS_DEMO_PASSWORD="a long demo password")
    assert code == 0 and "a long demo password" in out
    row = await conn.fetchrow("SELECT password_hash FROM auth.users WHERE email = $1", DEMO_USERS[1][1])
    assert verify_password(row["password_hash"], "a long demo password")


async def test_keys_rotate_keeps_the_old_key_verifying(database_url: str, conn: asyncpg.Connection) -> None:
    old_kid = await add_active_key(conn, dev_box())
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        keys = SigningKeys(pool, dev_box())
        old_key = await keys.signing_key()
        claims = access_claims(
            issuer=ISSUER,
            audience=USER_AUDIENCE,
            subject=str(uuid.uuid4()),
            kind="user",
            org_id=str(uuid.uuid4()),
            role="admin",
            scopes=(),
            amr=["pwd"],
            auth_time=int(time.time()),
            now=time.time(),
        )
        token = sign(claims, old_key)

        code, out, err = await run_cli(database_url, "keys", "rotate")
        assert (code, err) == (0, ""), out
        match = re.search(r"Retired key (\S+) .* New signing key: (\S+) \(published now, signs in", out)
        assert match and match.group(1) == old_kid, out
        new_kid = match.group(2)

        keys.invalidate()
        jwks = await keys.jwks()
        assert {key["kid"] for key in jwks["keys"]} == {old_kid, new_kid}
        assert (await keys.signing_key()).kid == old_kid, "the new key is published before it signs"
        principal = verify(token, KeySet.import_key_set(jwks), issuer=ISSUER, audience=USER_AUDIENCE)  # type: ignore[arg-type]
        assert principal.subject == claims["sub"], "a token of the retired key still verifies"
    finally:
        await pool.close()


async def test_clients_add_prints_a_working_secret_once(database_url: str, conn: asyncpg.Connection) -> None:
    org_id = await store.create_org(conn, "Client Org")
    code, out, err = await run_cli(
        database_url, "clients", "add", "--org", str(org_id), "--name", "core export", "--scope", "users:read",
        "--scope", "reports:read",
    )  # fmt: skip
    assert (code, err) == (0, ""), out
    client_id = re.search(r"client_id\s+│\s+(\S+)", out)
    secret = re.search(r"client_secret\s+│\s+(\S+)", out)
    assert client_id and secret, out
    assert "not shown again" in out

    client = await store.client_by_id(conn, client_id.group(1))
    assert client is not None
    assert (client.org_id, client.name, client.scopes) == (org_id, "core export", ["users:read", "reports:read"])
    assert len(base64.urlsafe_b64decode(secret.group(1) + "==")) >= 32
    assert verify_password(client.secret_hash, secret.group(1))
    assert secret.group(1) not in client.secret_hash


async def test_clients_add_refuses_an_unknown_org_and_bad_scopes(database_url: str, conn: asyncpg.Connection) -> None:
    unknown = uuid.uuid4()
    code, _, err = await run_cli(database_url, "clients", "add", "--org", str(unknown), "--name", "x", "--scope", "a:b")
    assert (code, err.strip()) == (1, f"error: there is no org {unknown}")
    org_id = await store.create_org(conn, "Client Org")
    code, _, err = await run_cli(database_url, "clients", "add", "--org", str(org_id), "--name", "x", "--scope", 'a"b')
    assert (code, err.strip()) == (1, "error: not a valid OAuth scope: 'a\"b'")
    assert await conn.fetchval("SELECT count(*) FROM auth.oauth_clients") == 0
