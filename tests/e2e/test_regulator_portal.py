"""The regulator portal in a real browser: Debian's Chromium, headless, driven by Selenium through chromedriver,
on http://localhost:<proxy port> in front of real auth, core, compliance and regulator processes.

Signs in through the form, reads the dashboard's figures, opens the alerts, bank-line and evidence pages, opens a
pack created beforehand through the compliance API and sees it verified, downloads its payload (the bytes hash to
the pack's sha256), reads the dashboard at a phone's width, signs out and is refused. A screenshot of each page is
saved under the test's tmp_path (printed); with APGMS_UPDATE_SCREENSHOTS=1 the dashboard's is copied to
docs/images/regulator-portal-dashboard.png for the README.

Chromium and chromedriver are installed by `apgms.devservers.ensure_browser` when missing (root + apt-get); when
they cannot be, the test fails saying so (it never passes by skipping).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path

import aiohttp
import pytest
from auth_support import Org, call
from core2_support import insert_alert
from core_support import StartService, new_line, post_line, role_tokens
from portal_support import SESSION_COOKIE, start_proxy
from regulator_support import create_credential, start_regulator
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from apgms.devservers import DevServerError, ensure_browser

PORTAL = "/regulator/portal"
REPO = Path(__file__).resolve().parents[2]
README_SCREENSHOT = REPO / "docs" / "images" / "regulator-portal-dashboard.png"
WAIT_S = 15
HIGH_ALERT = "Designated GST account short of the quarter's obligation"


@contextmanager
def chromium(downloads: Path) -> Iterator[WebDriver]:
    try:
        browser = ensure_browser()
    except DevServerError as error:
        pytest.fail(f"The portal's browser test needs Chromium and chromedriver: {error}")
    options = webdriver.ChromeOptions()
    options.binary_location = str(browser.chromium)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(browser.chromedriver)))
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def shoot(driver: WebDriver, directory: Path, name: str) -> Path:
    path = directory / f"{name}.png"
    assert driver.save_screenshot(str(path)), path
    print(f"screenshot: {path}")
    return path


def heading(driver: WebDriver) -> str:
    headings = driver.find_elements(By.TAG_NAME, "h1")
    assert len(headings) == 1
    return str(headings[0].text)


def open_nav(driver: WebDriver, label: str) -> None:
    driver.find_element(By.CSS_SELECTOR, "nav.site-nav").find_element(By.LINK_TEXT, label).click()


def downloaded(directory: Path) -> bytes:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        done = [p for p in directory.glob("*.json") if not p.name.endswith(".crdownload")]
        if done:
            return done[0].read_bytes()
        time.sleep(0.1)
    raise AssertionError(f"nothing was downloaded into {directory}")


@pytest.mark.timeout(300)
async def test_sign_in_read_verify_download_and_sign_out_in_chromium(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    stack = start_regulator(start_service, database_url)
    proxy = start_proxy(start_service, stack)
    tokens = await role_tokens(http, stack.core_stack, org)
    status, line, _ = await post_line(
        http,
        stack.core_stack,
        tokens["finance"],
        new_line(amount="-220.00", date=str(date.today() - timedelta(days=1))),
    )
    assert status == 201, line
    await insert_alert(database_url, org.id, severity="HIGH", message=HIGH_ALERT)
    status, pack, _ = await call(
        http, "POST", f"{proxy}/compliance/evidence", token=tokens["admin"], json={"tag": "2025-Q3 inspection"}
    )
    assert status == 201, pack
    code = await create_credential(database_url, [org.id], name="asic-inspector")
    base = proxy.replace("127.0.0.1", "localhost")
    shots = tmp_path / "screenshots"
    downloads = tmp_path / "downloads"
    shots.mkdir()
    downloads.mkdir()

    with chromium(downloads) as driver:
        wait = WebDriverWait(driver, WAIT_S)
        driver.get(f"{base}{PORTAL}/")
        assert driver.current_url == f"{base}{PORTAL}/login"
        assert heading(driver) == "Sign in"
        shoot(driver, shots, "login")

        # A wrong code first: the error in the page, still signed out.
        driver.find_element(By.ID, "access_code").send_keys(code + "x")
        driver.find_element(By.ID, "org_id").send_keys(str(org.id))
        driver.find_element(By.CSS_SELECTOR, "main button[type=submit]").click()
        refusal = wait.until(expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, ".error-summary")))
        assert "was not accepted" in refusal.text
        assert driver.get_cookie(SESSION_COOKIE) is None
        shoot(driver, shots, "login-refused")

        driver.find_element(By.ID, "access_code").send_keys(code)
        org_field = driver.find_element(By.ID, "org_id")
        org_field.clear()
        org_field.send_keys(str(org.id))
        driver.find_element(By.CSS_SELECTOR, "main button[type=submit]").click()
        wait.until(expected_conditions.url_to_be(f"{base}{PORTAL}/dashboard"))
        assert heading(driver) == "Compliance dashboard"
        cookie = driver.get_cookie(SESSION_COOKIE)
        assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        cards = {
            card.find_element(By.TAG_NAME, "dt").text: card.find_element(By.TAG_NAME, "dd").text
            for card in driver.find_elements(By.CSS_SELECTOR, ".card")
        }
        assert cards["Open HIGH alerts"] == "1"
        assert cards["BAS status"] in {"READY", "BLOCKED"}
        assert "asic-inspector" in driver.find_element(By.CSS_SELECTOR, ".who").text
        assert HIGH_ALERT in driver.page_source
        dashboard_shot = shoot(driver, shots, "dashboard")
        if os.environ.get("APGMS_UPDATE_SCREENSHOTS") == "1":
            README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(dashboard_shot, README_SCREENSHOT)
            print(f"README screenshot updated: {README_SCREENSHOT}")

        open_nav(driver, "Alerts")
        assert heading(driver) == "Alerts"
        assert HIGH_ALERT in driver.find_element(By.TAG_NAME, "table").text
        shoot(driver, shots, "alerts")

        open_nav(driver, "Bank lines")
        assert heading(driver) == "Bank lines by month"
        totals = driver.find_element(By.CSS_SELECTOR, "tfoot tr").text
        assert "1" in totals.split() and "220.00" in totals
        shoot(driver, shots, "bank-lines")

        open_nav(driver, "Evidence")
        assert heading(driver) == "Evidence library"
        row = driver.find_element(By.XPATH, f"//tr[td/code[text()='{pack['sha256']}']]")
        assert "verified" in row.text and "2025-Q3 inspection" in row.text
        shoot(driver, shots, "evidence")
        row.find_element(By.CSS_SELECTOR, "td a").click()
        assert heading(driver) == "Evidence pack 2025-Q3 inspection"
        assert driver.find_element(By.ID, "verdict").text == "verified"
        assert driver.find_element(By.ID, "sha256").text == pack["sha256"]
        shoot(driver, shots, "evidence-pack")
        driver.find_element(By.ID, "download-payload").click()
        assert hashlib.sha256(downloaded(downloads)).hexdigest() == pack["sha256"]

        # A phone's width: the dashboard fits without scrolling sideways.
        driver.set_window_size(390, 844)
        open_nav(driver, "Dashboard")
        assert heading(driver) == "Compliance dashboard"
        assert driver.execute_script(
            "return document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        )
        shoot(driver, shots, "dashboard-phone")
        driver.set_window_size(1280, 900)

        # No page broke the CSP (the browser logs each refused inline script or style).
        violations = [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
        assert violations == []

        driver.find_element(By.CSS_SELECTOR, ".who button[type=submit]").click()
        wait.until(expected_conditions.url_contains(f"{PORTAL}/login"))
        assert "You have signed out" in driver.find_element(By.CSS_SELECTOR, ".notice").text
        assert driver.get_cookie(SESSION_COOKIE) is None
        driver.get(f"{base}{PORTAL}/evidence")
        assert driver.current_url == f"{base}{PORTAL}/login"
        shoot(driver, shots, "signed-out")

    # The session's cookie, replayed after logout, is refused by the API too.
    async with aiohttp.ClientSession(cookies={SESSION_COOKIE: str(cookie["value"])}) as replay:
        async with replay.get(f"{proxy}/regulator/compliance/report") as response:
            assert response.status == 401
        async with replay.get(f"{proxy}{PORTAL}/dashboard", allow_redirects=False) as response:
            assert (response.status, response.headers["location"]) == (303, f"{PORTAL}/login")
