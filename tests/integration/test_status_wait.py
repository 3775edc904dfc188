"""`ringkv status --wait`: the way to wait for a settled cluster, which a pod's readiness
(and so `helm install --wait`) does not give."""

from __future__ import annotations

import json
import subprocess
import sys

from harness import API_TOKEN, LocalCluster, StaticCluster, wait_for

CLI = [sys.executable, "-m", "ringkv.client.cli"]


def status_wait(url: str, seconds: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "status", "--url", url, "--token", API_TOKEN, "--json",
                           "--wait", str(seconds)],
                          check=False, capture_output=True, text=True, timeout=seconds + 60)


def test_status_wait_returns_once_a_joining_node_has_settled(local5: LocalCluster) -> None:
    local5.control.add()
    # Run it while the new member is joining: it must wait for the epoch that admits it.
    wait_for(lambda: len(local5.cluster_info()["members"]) == 6, 60, "node-5 to join")
    done = status_wait(local5.url(0), 120)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["settled"] and len(doc["members"]) == 6
    assert all(m["state"] == "normal" and m["ready"] and m["reachable"] and m["epoch"] == doc["epoch"]
               for m in doc["members"]), doc["members"]
    assert "waiting: " in done.stderr  # it did wait, and said why


def test_status_wait_gives_up_with_exit_5_and_the_reason(cluster3: StaticCluster) -> None:
    cluster3.nodes[2].kill()
    done = status_wait(cluster3.url(0), 2)
    assert done.returncode == 5, (done.returncode, done.stderr)
    assert "not settled after 2s: node-2 is unreachable" in done.stderr
    assert json.loads(done.stdout)["members"][2]["reachable"] is False  # the last status seen
