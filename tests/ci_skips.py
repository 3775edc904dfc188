"""Under `CI=true` a skipped test is a failed test.

A skip says something the suite needed was missing (a tool, root, a cluster); locally that
is worth a line in the summary, but a CI run that skipped would report green for tests that
never ran. `make test` installs every tool the suite needs (scripts/fetch_tools.py, and
`python -m ringkv.local.system_tools`), so in CI a skip means the set-up is broken.
Loaded by tests/conftest.py; `-p ci_skips` loads it into any pytest run.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest


def ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which counts as a failure: {reason}"
