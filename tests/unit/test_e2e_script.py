"""scripts/e2e.py (`make e2e`): a shared cluster that is there but cannot come up fails the
run; it never turns into skipped e2e tests and exit 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(os.geteuid() != 0, reason="scripts/e2e.py uses the shared cluster only as root")
def test_a_shared_cluster_that_cannot_come_up_fails_make_e2e(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    cluster = tmp_path / "cluster"
    cluster.write_text(f'#!/bin/sh\necho "$@" >> {calls}\necho "cannot start kubelet" >&2\nexit 1\n')
    cluster.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CI"}  # CI=true would fail skips anyway
    env["RINGKV_K8S_CLUSTER"] = str(cluster)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "e2e.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED" in proc.stdout and "`cluster up` failed" in proc.stdout
    assert calls.read_text().split("\n")[:2] == ["status", "up"]  # no image build, no pytest
    assert "tests/e2e" not in proc.stdout
