from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ci_skips import pytest_runtest_makereport  # noqa: F401 - the hook: CI=true fails skips
from harness import LocalCluster, StaticCluster


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[StaticCluster]:
    """Three real nodes, rf=3, static membership; a fresh cluster for tests that harm it."""
    cluster = StaticCluster(tmp_path, size=3, rf=3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def shared3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StaticCluster]:
    """Three real nodes shared by a module's tests that leave the nodes running."""
    cluster = StaticCluster(tmp_path_factory.mktemp("shared3"), size=3, rf=3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def local5(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """`ringkv up --nodes 5 --rf 3`: real launcher, controller and node processes. Indirect
    parameters are LocalCluster fields (``{"down_grace": 0}``)."""
    cluster = LocalCluster(tmp_path, nodes=5, rf=3, **getattr(request, "param", {}))
    try:
        yield cluster.start()
    finally:
        cluster.stop()
