"""Fixtures of the e2e tests: skip (with the reason) when no cluster is there; one chart
release per test module, in its own namespace, removed afterwards.

`scripts/e2e.py` (`make e2e`) builds and loads the image, then runs these tests with
RINGKV_E2E_IMAGE / RINGKV_E2E_TAG naming it. Run by hand against any cluster that already
has the image: `RINGKV_E2E_TAG=dev .venv/bin/pytest tests/e2e -m e2e -s`.
Other knobs: RINGKV_E2E_SKIP_REASON (set by scripts/e2e.py when it found no cluster),
RINGKV_E2E_KEEP=1 (leave the release and namespace behind for debugging), RINGKV_E2E_KEYS
(keys loaded before the churn steps of test_kubernetes.py; 20,000).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from e2e.support import Release, find_tool, installed

NODES = 5
RF = 3


@pytest.fixture(scope="session")
def tools() -> tuple[str, str]:
    """(kubectl, helm) once a cluster answers; otherwise every e2e test is skipped, saying why."""
    reason = os.environ.get("RINGKV_E2E_SKIP_REASON")
    if reason:
        pytest.skip(reason)
    kubectl, helm = find_tool("kubectl"), find_tool("helm")
    if kubectl is None or helm is None:
        pytest.skip("kubectl and helm not found in .tools/bin or PATH (run `make tools`)")
    where = os.environ.get("KUBECONFIG") or "~/.kube/config"
    try:
        probe = subprocess.run([kubectl, "version", "--request-timeout=10s"],
                               capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip(f"no Kubernetes cluster reachable (KUBECONFIG={where}): kubectl version timed out")
    if probe.returncode != 0:
        detail = (probe.stderr.strip().splitlines() or ["kubectl version failed"])[-1]
        pytest.skip(f"no Kubernetes cluster reachable (KUBECONFIG={where}): {detail}")
    if not os.environ.get("RINGKV_E2E_TAG"):
        pytest.skip("RINGKV_E2E_TAG is not set: build the image and load it into the cluster "
                    "first (`make e2e` does both)")
    return kubectl, helm


@pytest.fixture(scope="module")
def release(tools: tuple[str, str], request: pytest.FixtureRequest) -> Iterator[Release]:
    """`helm install` of charts/ringkv with the freshly built image (5 nodes, rf=3)."""
    with installed(tools, request, "ringkv-e2e", NODES, RF) as rel:
        yield rel
