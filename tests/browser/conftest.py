"""The browser for the console's tests (see `consolepage.py`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from consolepage import chromium, find_chromium


@pytest.fixture
def browser() -> Iterator[object]:
    with chromium(*find_chromium()) as driver:
        yield driver


@pytest.fixture(scope="session")
def screenshots() -> Path | None:
    """Where to save the screenshots docs/CONSOLE.md shows (`make screenshots`), if asked."""
    where = os.environ.get("RINGKV_CONSOLE_SCREENSHOTS")
    if not where:
        return None
    path = Path(where)
    path.mkdir(parents=True, exist_ok=True)
    return path
