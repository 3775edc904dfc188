"""A real Chromium (Debian's `chromium` + `chromium-driver`, installed by `make tools`)
driven by selenium, for the console's tests.

Missing the browser is a skip with the reason, except under CI=true, where it fails: CI
must run these tests, not report them skipped."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--window-size=1500,1650", "--hide-scrollbars")


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """The Chromium binary and its driver."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if None in found:
        reason = ("Chromium or chromedriver is not installed (`make tools` installs Debian's "
                  "chromium and chromium-driver as root)")
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found  # type: ignore[return-value]


@pytest.fixture
def browser(chromium: tuple[str, str]) -> Iterator[webdriver.Chrome]:
    """A fresh headless Chromium with its own profile, quit (and its profile removed) after."""
    profile = tempfile.mkdtemp(prefix="ringkv-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium[0]
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(chromium[1]))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def screenshots() -> Path | None:
    """Where to save the screenshots docs/CONSOLE.md shows (`make screenshots`), if asked."""
    where = os.environ.get("RINGKV_CONSOLE_SCREENSHOTS")
    if not where:
        return None
    path = Path(where)
    path.mkdir(parents=True, exist_ok=True)
    return path
