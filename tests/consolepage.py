"""The console (`/ui/`) in a real headless Chromium, and what tests read off the page.

Debian's `chromium` and `chromium-driver` (installed by `make tools`), driven by selenium
with the system browser, each session with a fresh profile. Shared by the browser tests
(`tests/browser/`) and the e2e suite (the console through `kubectl port-forward`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from harness import wait_for
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--window-size=1500,1650", "--hide-scrollbars")


def find_chromium() -> tuple[str, str]:
    """The Chromium binary and its driver; a missing one skips the test with the reason,
    except under CI=true, where it fails: CI must run these tests, not skip them."""
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        reason = ("Chromium or chromedriver is not installed (`make tools` installs Debian's "
                  "chromium and chromium-driver as root)")
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return binary, driver


@contextlib.contextmanager
def chromium(binary: str, driver: str) -> Iterator[webdriver.Chrome]:
    """A fresh headless Chromium with its own profile, quit (and the profile removed) after."""
    profile = tempfile.mkdtemp(prefix="ringkv-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(driver))
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


def run(browser: Any, script: str, *args: Any) -> Any:
    return browser.execute_script(script, *args)


def open_console(browser: Any, url: str, token: str) -> None:
    """Load `url`/ui/ and type the token into the form, as a person would."""
    browser.get(f"{url}/ui/")
    wait_for(lambda: run(browser, "return !document.getElementById('gate').hidden"), 60,
             "the token form")
    browser.find_element("id", "token").send_keys(token)
    browser.find_element("css selector", "#gate-form button").click()


def members(browser: Any) -> dict[str, str]:
    """Member name -> the state the page shows."""
    return dict(run(browser, """return [...document.querySelectorAll('tr.member')]
        .map(r => [r.dataset.member, r.querySelector('.state').textContent])"""))


def summary(browser: Any) -> tuple[int, str]:
    """The epoch and "settled" or "rebalancing", as the header shows them."""
    return tuple(run(browser, """const e = document.getElementById('epoch');
        return e ? [Number(e.textContent), document.getElementById('settled').textContent] : [0, '']"""))


def progress(browser: Any) -> dict[str, tuple[float, float, bool]]:
    """Member -> (value, max, active) of its re-replication bar."""
    return {name: (value, top, active) for name, value, top, active in run(browser, """
        return [...document.querySelectorAll('.bar-row')].map(r => [r.dataset.member,
            r.querySelector('progress').value, r.querySelector('progress').max,
            r.classList.contains('active')])""")}


def timeline(browser: Any) -> list[str]:
    """The membership changes listed, newest first."""
    return run(browser, "return [...document.querySelectorAll('#timeline .change-text')]"
                        ".map(e => e.textContent)")
