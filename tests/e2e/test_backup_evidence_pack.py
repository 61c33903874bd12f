"""`apgms backup evidence-pack` against real auth, core, compliance and proxy processes: one whole file that
`apgms evidence verify` accepts, and clean failures (bad token, no step-up, another org, nothing listening) that
leave no file behind. The CLI runs as a subprocess, as a user runs it."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest
from auth_support import Org, call
from compliance_support import start_compliance
from core2_support import stepped_up
from core_support import CoreStack, StartService, new_line, post_line, role_tokens

from apgms.devservers import free_port
from apgms.evidence_files import BACKUP_FORMAT

pytestmark = pytest.mark.e2e

CLI_TIMEOUT_S = 60.0
KEYS_PATH = "/compliance/.well-known/evidence-keys.json"


async def apgms(cwd: Path, *args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr (whitespace folded) of `python -m apgms <args>` run in `cwd`."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "apgms",
        *args,
        cwd=cwd,
        env={**os.environ, "APGMS_ENV": "test", "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_S)
    assert process.returncode is not None
    text = out.decode() + err.decode()
    assert "Traceback" not in text, text
    return process.returncode, out.decode(), " ".join(err.decode().split())


def start_stack(start_service: StartService, database_url: str) -> tuple[str, CoreStack]:
    """Auth, core and compliance behind one proxy process: the proxy's URL, and auth and core for the helpers."""
    stack = start_compliance(start_service, database_url)
    proxy = start_service(
        "api-gateway",
        {
            "UPSTREAM_AUTH_URLS": stack.auth.url,
            "UPSTREAM_CORE_URLS": stack.core.url,
            "UPSTREAM_COMPLIANCE_URLS": stack.compliance.url,
            "UPSTREAM_REGULATOR_URLS": f"http://127.0.0.1:{free_port()}",
        },
        module="proxy",
    )
    return proxy.url, stack.core_stack


def backup_args(base_url: str, org: Org, token: str, *more: str) -> tuple[str, ...]:
    return ("backup", "evidence-pack", "--base-url", base_url, "--org", str(org.id), "--token", token, *more)


async def test_a_backup_writes_one_whole_file_that_verifies_offline(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    proxy, core = start_stack(start_service, database_url)
    tokens = await role_tokens(http, core, org)
    status, line, _ = await post_line(http, core, tokens["finance"], new_line())
    assert status == 201, line
    admin = await stepped_up(http, core.auth.url, org.email("admin"))

    code, out, err = await apgms(tmp_path, *backup_args(proxy, org, admin.token))
    assert code == 0, err
    backups = tmp_path / "artifacts" / "backups"
    (path,) = list(backups.iterdir())  # one file, no temporary file left beside it
    assert path.name.startswith(f"evidence-pack_{org.id}_") and path.name.endswith("Z.json")
    assert str(path.relative_to(tmp_path)) in out
    assert f"{path.stat().st_size:,} bytes" in out
    # Without a terminal the progress display is one line per finished step, on stderr.
    for step in ("core's admin export", "the compliance report", "a new evidence pack", "the signed pack"):
        assert f"done: {step} (" in err, err

    document = orjson.loads(path.read_bytes())
    assert (document["format"], document["org_id"], document["base_url"]) == (BACKUP_FORMAT, str(org.id), proxy)
    assert document["export"]["org_id"] == str(org.id)
    assert [row["id"] for row in document["export"]["bank_lines"]] == [line["id"]]
    assert document["report"]["org_id"] == str(org.id)
    evidence = document["evidence"]
    assert (evidence["org_id"], evidence["tag"]) == (str(org.id), "backup")
    assert evidence["key_id"] in {key["kid"] for key in document["evidence_keys"]["keys"]}
    status, page, _ = await call(http, "GET", f"{proxy}/compliance/evidence", token=tokens["auditor"])
    assert status == 200, page
    assert evidence["id"] in [item["id"] for item in page["items"]]

    code, out, err = await apgms(tmp_path, "evidence", "verify", str(path))
    assert code == 1 and "--recorded-keys" in err, err  # the file's own keys are not used unless asked for
    code, out, err = await apgms(tmp_path, "evidence", "verify", str(path), "--recorded-keys")
    assert code == 0, err
    assert "The file is whole: every check holds" in out
    assert "recorded in the file at backup time" in out
    code, out, err = await apgms(tmp_path, "evidence", "verify", str(path), "--keys", f"{proxy}{KEYS_PATH}")
    assert code == 0, err
    assert f"{proxy}{KEYS_PATH}" in out
    assert "The evidence pack verifies: every check holds." in out


async def test_a_refused_or_failed_backup_exits_1_with_the_reason_and_leaves_no_file(
    start_service: StartService,
    database_url: str,
    org: Org,
    other_org: Org,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    proxy, core = start_stack(start_service, database_url)
    out_dir = tmp_path / "out"
    admin = await stepped_up(http, core.auth.url, org.email("admin"))
    tokens = await role_tokens(http, core, org)
    unreachable = f"http://127.0.0.1:{free_port()}"
    cases = {
        "bad token": (backup_args(proxy, org, "not-a-token"), "error: the token was refused: log in again"),
        "no step-up": (
            backup_args(proxy, org, admin.plain_token),
            f"error: core's admin export needs a recent MFA step-up (GET {proxy}/admin/export/{org.id} answered 401",
        ),
        "finance": (
            backup_args(proxy, org, tokens["finance"]),
            "error: the admin export needs an admin token with a recent MFA step-up;",
        ),
        "other org": (
            backup_args(proxy, other_org, admin.token),
            f"error: org {other_org.id} was not found: --org must be the token's own org",
        ),
        "unreachable": (backup_args(unreachable, org, admin.token), f"error: cannot reach {unreachable}/admin/export"),
    }
    for name, (args, message) in cases.items():
        code, out, err = await apgms(tmp_path, *args, "--out", str(out_dir))
        assert code == 1, (name, out, err)
        assert message in err, (name, err)
        assert out == "", name
        assert list(out_dir.iterdir()) == [], name  # no file, no temporary file
    _, _, err = await apgms(tmp_path, *cases["no step-up"][0], "--out", str(out_dir))
    assert f"{core.auth.url}/auth/mfa/step-up" not in err  # the hint names the base URL the user gave
    assert f"{proxy}/auth/login" in err and f"{proxy}/auth/mfa/step-up" in err
    # Nothing was created by the refused runs: no pack was made for the org.
    status, page, _ = await call(http, "GET", f"{proxy}/compliance/evidence", token=tokens["auditor"])
    assert (status, page["items"]) == (200, [])
