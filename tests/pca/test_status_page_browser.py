"""The status page in a real browser: Debian's chromium, headless, driven by Selenium through chromium-driver.

A real ``pca serve`` (admin API over TLS, the certificate pca issued itself: chromium is told to trust
exactly that key), a few certificates issued and revoked through the API, then the page opened as a
user would: refused without signing in, signed in with an auditor token, the chart and the numbers
rendered, and nothing in the browser's console.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from revocation.admin.tokens import add_token
from tests.support.processes import ServerProcess, running_server

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")
if CHROMIUM is None or DRIVER is None:
    pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)", allow_module_level=True)

from selenium import webdriver  # noqa: E402 - only once the browser is known to be there
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _spki_hash(pem_file: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of the admin listener's certificate, as chromium's flag wants it."""
    cert = x509.load_pem_x509_certificates(pem_file.read_bytes())[0]
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServerProcess, list[str]]]:
    with running_server(tmp_path / "ca", tls=True) as srv, srv.admin() as api:
        [issuing] = [i for i in api.get("/v1/issuers").json()["issuers"] if i["issuer_id"] == "issuing-ca"]
        assert issuing["certificates"] == {"total": 1, "revoked": 0}  # the admin listener's own certificate
        serials = []
        for name in ("web1", "web2", "web3"):
            resp = api.post("/v1/certificates", json={"subject": f"CN={name}", "dns": [f"{name}.internal"]})
            assert resp.status_code == 201, resp.text
            serials.append(resp.json()["serial"])
        for serial, reason in zip(serials[:2], ("keyCompromise", "superseded"), strict=True):
            assert api.post(f"/v1/certificates/{serial}/revoke", json={"reason": reason}).status_code == 201
        deadline = time.monotonic() + 60  # both reach every responder and a CRL (2 s debounce)
        while time.monotonic() < deadline:
            timelines = [api.get(f"/v1/certificates/{s}/propagation").json() for s in serials[:2]]
            if all(t["ocsp_all_responders"] and t["crl"] for t in timelines):
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"the revocations did not propagate: {timelines}")
        yield srv, serials


@pytest.fixture
def browser(served: tuple[ServerProcess, list[str]], tmp_path: Path) -> Iterator[webdriver.Chrome]:
    srv, _ = served
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium'}")
    options.add_argument(
        f"--ignore-certificate-errors-spki-list={_spki_hash(srv.config.data_dir / 'keys/admin-tls.pem')}"
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER or ""))
    try:
        yield driver
    finally:
        driver.quit()


def _severe(driver: webdriver.Chrome) -> list[str]:
    return [str(entry["message"]) for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_the_status_page_signs_in_and_renders_the_chart_and_numbers(
    served: tuple[ServerProcess, list[str]], browser: webdriver.Chrome
) -> None:
    srv, serials = served
    auditor = add_token(srv.config.tokens_db, "browser", "auditor")
    url = srv.admin_url + "/status"
    assert url.startswith("https://")

    # Without signing in: the form, no data (and a plain client is refused with 401 too).
    assert httpx.get(url, verify=srv.verify).status_code == 401
    browser.get(url)
    assert browser.find_elements(By.CSS_SELECTOR, "form[action='/status/login'] input[type=password]")
    assert not browser.find_elements(By.CSS_SELECTOR, "table, svg")
    unauthenticated_logs = browser.get_log("browser")  # the 401 itself may be noted; read and set aside

    browser.find_element(By.NAME, "token").send_keys(auditor)
    browser.find_element(By.CSS_SELECTOR, "form[action='/status/login'] button").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "svg[data-testid=propagation-chart]"))

    # The numbers: issuing-ca holds 4 certificates (the admin listener's and 3), 2 revoked, both in the last hour.
    row = browser.find_element(By.XPATH, "//table[@data-testid='issuers']//tr[td[1]='issuing-ca']")
    cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
    assert cells[-2:] == ["4", "2"], cells
    assert browser.find_element(By.CSS_SELECTOR, "[data-testid=window-revocations]").text == "2"
    listed = [td.text for td in browser.find_elements(By.XPATH, "//table[@data-testid='revocations']//tr/td[3]")]
    assert sorted(listed) == sorted(serials[:2])
    shard = browser.find_element(By.XPATH, "//table[@data-testid='crls']//tr[td[1]='issuing-ca']")
    assert shard.find_elements(By.TAG_NAME, "td")[-1].text == "fresh"
    responder = browser.find_element(By.XPATH, "//table[@data-testid='responders']//tbody/tr")
    assert responder.find_elements(By.TAG_NAME, "td")[-1].text == "up"

    # The chart: one bar per bucket and channel, drawn by the server; its counts add up to the revocations.
    bars = browser.find_elements(By.CSS_SELECTOR, "svg[data-testid=propagation-chart] rect.bar")
    assert len(bars) == 22
    for channel in ("ocsp", "crl"):
        counts = [int(b.get_attribute("data-count") or 0) for b in bars if b.get_attribute("data-channel") == channel]
        assert sum(counts) == 2, (channel, counts)
    drawn = [b for b in bars if int(b.get_attribute("data-count") or 0) > 0]
    assert drawn and all(b.size["height"] > 0 for b in drawn)  # rendered with a height, not only in the markup

    # The session cookie: HttpOnly, Secure, SameSite=Strict, never the token.
    [cookie] = [c for c in browser.get_cookies() if c["name"] == "pca_status"]
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert auditor not in cookie["value"]
    assert browser.execute_script("return document.cookie") == ""

    assert _severe(browser) == [], unauthenticated_logs

    # Signing out ends the session: the form again.
    browser.find_element(By.CSS_SELECTOR, "form[action='/status/logout'] button").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.NAME, "token"))
    assert not browser.find_elements(By.CSS_SELECTOR, "svg")
