"""The demo seed with addresses unique per org only (issue #9, finding 8): another org's user with a demo address
is neither adopted nor in the way."""

from __future__ import annotations

import asyncpg

from apgms.seed import DEMO_ORG_NAME, DEMO_USERS, DEV_DEMO_PASSWORD, seed_demo
from services.auth import store
from services.auth.passwords import hash_password
from shared.config import Secret, new_master_key
from shared.crypto import SecretBox


async def test_a_demo_address_in_another_org_is_left_alone(database_url: str) -> None:
    box = SecretBox(Secret(new_master_key()))
    conn = await asyncpg.connect(database_url)
    try:
        other_org = await store.create_org(conn, "Someone Else Pty Ltd")
        admin_email = DEMO_USERS[0][1]
        lookalike = await store.create_user(conn, other_org, admin_email.upper(), hash_password("x" * 12), "admin")
        assert lookalike is not None

        first = await seed_demo(conn, box, DEV_DEMO_PASSWORD)
        assert first.org_id != other_org
        assert all(login.created for login in first.logins)
        again = await seed_demo(conn, box, DEV_DEMO_PASSWORD)
        assert again.org_id == first.org_id
        assert not any(login.created for login in again.logins)
        assert again.totp_secret == first.totp_secret

        orgs = await conn.fetch("SELECT name FROM auth.orgs ORDER BY name")
        assert [row["name"] for row in orgs] == [DEMO_ORG_NAME, "Someone Else Pty Ltd"]
        admins = await store.users_by_email(conn, admin_email)
        assert sorted(admin.org_id for admin in admins) == sorted([first.org_id, other_org])
        assert await store.totp_credential(conn, lookalike.id) is None
    finally:
        await conn.close()
