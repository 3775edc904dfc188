from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import StaticCluster


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[StaticCluster]:
    """Three real nodes, rf=3, static membership."""
    cluster = StaticCluster(tmp_path, size=3, rf=3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
