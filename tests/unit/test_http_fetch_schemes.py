"""A URL of another scheme (ftp://, file://) is answered like a malformed one: "<url> is not a valid http(s) URL",
by the commands' fetch helper and by `apgms smoke regulator` (exit 1, one [fail] line, no traceback)."""

from __future__ import annotations

import subprocess
import sys

import aiohttp
import pytest

from apgms.http_fetch import FetchError, fetch_json

ORG = "0b4f7c3e-1d2a-4e5f-8a9b-0c1d2e3f4a5b"


@pytest.mark.parametrize("url", ["ftp://x/keys.json", "file:///etc/passwd", "not a url"])
async def test_fetch_names_a_url_that_is_not_http(url: str) -> None:
    with pytest.raises(FetchError) as caught:
        await fetch_json(url)
    assert str(caught.value).endswith("is not a valid http(s) URL"), caught.value
    assert issubclass(aiohttp.NonHttpUrlClientError, aiohttp.ClientError)


@pytest.mark.parametrize("base_url", ["ftp://x", "not a url"])
def test_smoke_regulator_says_the_base_url_is_not_http(base_url: str) -> None:
    command = ["smoke", "regulator", "--base-url", base_url, "--access-code", "rgc.x.y", "--org", ORG]
    result = subprocess.run(
        [sys.executable, "-m", "apgms", *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "[fail] health:" in output and "is not a valid http(s) URL" in output, output
    assert "Traceback" not in output
