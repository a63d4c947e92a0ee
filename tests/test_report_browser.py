"""The HTML report in a real browser (issue 18, item 4): Debian's headless Chromium through selenium.

For a rolled-back rollout and a promoted one (after real reconciles): no console error, no request
leaves the page (it is self-contained: only its own files), every image loads and is not blank as
rendered, the text a user looks for is there (the outcome, the reason, each metric), the page fits
a phone's width without scrolling sideways, and it prints to PDF. Screenshots and the PDFs are kept
in ``test-artifacts/`` (``$CANARIST_ARTIFACTS`` to put them elsewhere).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib import image as mpimg
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from controller.report.page import build_report
from tests.test_report import real_rollout, rolled_back

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("CANARIST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ROLLOUTS: dict[str, Callable[[], dict[str, Any]]] = {"rolled-back": rolled_back, "promoted": real_rollout}


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    assert CHROMIUM and CHROMEDRIVER, "chromium and chromium-driver are not installed: `make test` installs them"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module", params=sorted(ROLLOUTS))
def opened(
    request: pytest.FixtureRequest, browser: webdriver.Chrome, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, dict[str, Any], webdriver.Chrome]:
    name = str(request.param)
    obj = ROLLOUTS[name]()
    report = build_report(obj, tmp_path_factory.mktemp(name))
    browser.set_window_size(1280, 900)
    browser.get_log("browser"), browser.get_log("performance")
    browser.get(report.index.as_uri())
    return name, obj, browser


def requests_made(driver: webdriver.Chrome) -> list[str]:
    import json

    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(str(message["params"]["request"]["url"]))
    return urls


def test_no_console_error_and_no_request_leaves_the_page(opened: tuple[str, dict[str, Any], webdriver.Chrome]) -> None:
    _, _, driver = opened
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == [], errors
    urls = requests_made(driver)
    assert urls and all(u.startswith(("file://", "data:")) for u in urls), urls


def test_every_image_loads_and_is_not_blank_as_rendered(opened: tuple[str, dict[str, Any], webdriver.Chrome]) -> None:
    name, _, driver = opened
    images = driver.find_elements(By.TAG_NAME, "img")
    assert len(images) >= 3
    for element in images:
        loaded = driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", element)
        assert loaded and int(loaded) > 100, element.get_attribute("src")
        driver.execute_script("arguments[0].scrollIntoView()", element)
        pixels = mpimg.imread(io.BytesIO(element.screenshot_as_png), format="png")
        assert pixels.shape[0] > 50 and np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0).shape[0] > 20, (
            element.get_attribute("src")
        )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.execute_script("window.scrollTo(0, 0)")
    assert driver.save_screenshot(str(ARTIFACTS / f"report-{name}.png"))


def test_the_text_a_user_looks_for_is_there(opened: tuple[str, dict[str, Any], webdriver.Chrome]) -> None:
    _, obj, driver = opened
    text = driver.find_element(By.TAG_NAME, "body").text
    status = obj["status"]
    assert status["phase"] in text
    for metric in obj["spec"]["analysis"]["metrics"]:
        assert metric["name"] in text
    for heading in ("Outcome", "Latest metrics", "Canary weight", "Evidence", "Decision log", "Policy"):
        assert heading in text
    reason = next(t["reason"] for t in reversed(status["history"]) if t["action"] in ("Rollback", "Promote"))
    assert reason.split(":")[0] in text


def test_it_reads_on_a_phone_without_scrolling_sideways(opened: tuple[str, dict[str, Any], webdriver.Chrome]) -> None:
    name, _, driver = opened
    driver.set_window_size(390, 844)
    try:
        width, viewport = driver.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert width <= viewport + 1, (width, viewport)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(ARTIFACTS / f"report-{name}-narrow.png"))
    finally:
        driver.set_window_size(1280, 900)


def test_it_prints_to_pdf(opened: tuple[str, dict[str, Any], webdriver.Chrome]) -> None:
    name, _, driver = opened
    printed = driver.execute_cdp_cmd("Page.printToPDF", {"printBackground": True, "preferCSSPageSize": True})
    pdf = base64.b64decode(printed["data"])
    assert pdf.startswith(b"%PDF") and len(pdf) > 20_000
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"report-{name}.pdf").write_bytes(pdf)
