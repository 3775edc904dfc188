"""Fixtures of the e2e tests: skip (with the reason) when no cluster is there; one chart
release per test module, in its own namespace, removed afterwards.

`scripts/e2e.py` (`make e2e`) builds and loads the image, then runs these tests with
RINGKV_E2E_IMAGE / RINGKV_E2E_TAG naming it. Run by hand against any cluster that already
has the image: `RINGKV_E2E_TAG=dev .venv/bin/pytest tests/e2e -m e2e -s`.
Other knobs: RINGKV_E2E_SKIP_REASON (set by scripts/e2e.py when it found no cluster),
RINGKV_E2E_KEEP=1 (leave the release and namespace behind for debugging).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
from e2e.support import CHART, ROOT, Kube, Release, find_tool, say

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
    """`helm install` of charts/ringkv with the freshly built image, waited for; uninstalled,
    with its namespace and PVCs, at the end. Diagnostics are saved when a test failed."""
    suffix = secrets.token_hex(3)
    name = f"ringkv-e2e-{suffix}"
    kube = Kube(tools[0], tools[1], namespace=name)
    log_dir = ROOT / "build" / "e2e-logs" / name
    log_dir.mkdir(parents=True, exist_ok=True)
    rel = Release(kube, name, replicas=NODES, rf=RF, log_dir=log_dir)
    image = os.environ.get("RINGKV_E2E_IMAGE", "ringkv")
    tag = os.environ["RINGKV_E2E_TAG"]
    failed_before = request.session.testsfailed
    installed = False

    kube.kubectl("create", "namespace", name)
    kube.kubectl("label", "namespace", name, "ringkv.io/e2e=true")
    try:
        started = time.monotonic()
        say(f"helm install {name} (image {image}:{tag}) in namespace {name}")
        kube.helm("install", name, str(CHART),
                  "--set", f"image.repository={image}", "--set", f"image.tag={tag}",
                  "--set", "image.pullPolicy=IfNotPresent",
                  "--set", f"replicaCount={NODES}", "--set", f"replication.rf={RF}",
                  "--wait", "--timeout", "8m")
        say(f"installed in {time.monotonic() - started:.0f}s")
        rel.token = kube.secret_value(f"{name}-tokens", "api-token")
        installed = True
        yield rel
    finally:
        failed = not installed or request.session.testsfailed > failed_before
        if failed:
            say(f"a test failed: diagnostics in {rel.dump_diagnostics()}")
        if os.environ.get("RINGKV_E2E_KEEP") == "1":
            say(f"RINGKV_E2E_KEEP=1: release and namespace {name} left in place")
        else:
            _teardown(kube, name)
        if not failed:
            shutil.rmtree(log_dir, ignore_errors=True)  # only port-forward logs of a good run


def _teardown(kube: Kube, name: str) -> None:
    """Uninstall, then delete what `helm uninstall` leaves (PVCs, the operator's ConfigMap)
    by deleting the namespace; every step runs even if an earlier one failed."""
    started = time.monotonic()
    results = [
        kube.helm("uninstall", name, "--wait", "--timeout", "3m", check=False),
        kube.kubectl("delete", "pvc", "-l", f"app.kubernetes.io/instance={name}", "--wait=true",
                     "--timeout=180s", check=False, timeout=240),
        kube.kubectl("delete", "namespace", name, "--wait=true", "--timeout=300s",
                     check=False, timeout=360),
    ]
    say(f"torn down in {time.monotonic() - started:.0f}s")
    failures = [f"{' '.join(r.args)}: {r.stdout}{r.stderr}" for r in results if r.returncode != 0]
    assert not failures, "teardown failed:\n" + "\n".join(failures)

