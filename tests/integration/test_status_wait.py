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
    """The CLI waits, saying why, and returns once the epoch that admits node-5 settles.
    node-1 is paused meanwhile, so that epoch cannot settle before the CLI has polled
    (node-1 cannot report); it resumes once the CLI said it is waiting."""
    local5.control.kill("node-1", "SIGSTOP")
    try:
        local5.control.add()
        wait_for(lambda: len(local5.cluster_info()["members"]) == 6, 60, "node-5 to join")
        cli = subprocess.Popen([*CLI, "status", "--url", local5.url(0), "--token", API_TOKEN,
                                "--json", "--wait", "120"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert cli.stderr is not None
            # Blocks until the CLI says something; its first poll answers within the
            # nodes' 5 s status timeout (node-1 paused), and it exits within 120 s anyway.
            first = cli.stderr.readline()
            assert first.startswith("waiting: "), first
            local5.control.kill("node-1", "SIGCONT")
            out, err = cli.communicate(timeout=180)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
    finally:
        local5.control.kill("node-1", "SIGCONT")
    assert cli.returncode == 0, first + err
    doc = json.loads(out)
    assert doc["settled"] and len(doc["members"]) == 6
    assert all(m["state"] == "normal" and m["ready"] and m["reachable"] and m["epoch"] == doc["epoch"]
               for m in doc["members"]), doc["members"]


def test_status_wait_gives_up_with_exit_5_and_the_reason(cluster3: StaticCluster) -> None:
    cluster3.nodes[2].kill()
    done = status_wait(cluster3.url(0), 2)
    assert done.returncode == 5, (done.returncode, done.stderr)
    assert "not settled after 2s: node-2 is unreachable" in done.stderr
    assert json.loads(done.stdout)["members"][2]["reachable"] is False  # the last status seen
