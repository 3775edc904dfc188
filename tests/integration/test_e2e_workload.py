"""The e2e tests' in-cluster client (tests/e2e/workload.py) against real local nodes: its
verdicts are what the Kubernetes churn tests assert on, so a 404 for an acknowledged key,
a foreign value, an error by its code and a replayed hint must each be counted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness import API_TOKEN, StaticCluster, http, wait_for

WORKLOAD = Path(__file__).resolve().parents[1] / "e2e" / "workload.py"


def argv(cluster: StaticCluster, tmp: Path, command: str, *args: str) -> list[str]:
    """Every node's URL unless `args` name others (the last --urls wins)."""
    urls = ",".join(cluster.url(i) for i in range(len(cluster.nodes)))
    return [sys.executable, str(WORKLOAD), command, "--urls", urls, *args, "--state",
            str(tmp / "acked.json"), "--live", str(tmp / "live.json")]


def env() -> dict[str, str]:
    return {**os.environ, "RINGKV_TOKEN": API_TOKEN}


def run(cluster: StaticCluster, tmp: Path, command: str, *args: str) -> dict[str, Any]:
    proc = subprocess.run(argv(cluster, tmp, command, *args), env=env(), capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def background(cluster: StaticCluster, tmp: Path, command: str, *args: str,
               ) -> subprocess.Popen[str]:
    return subprocess.Popen(argv(cluster, tmp, command, *args, "--until", str(tmp / "stop")),
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def report(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return dict(json.loads(out))


def test_load_and_verify_count_what_must_never_happen(cluster3: StaticCluster,
                                                      tmp_path: Path) -> None:
    loaded = run(cluster3, tmp_path, "load", "--keys", "300", "--concurrency", "4")
    assert (loaded["keys"], loaded["errors"]) == (300, {}), loaded
    clean = run(cluster3, tmp_path, "verify")["total"]
    assert (clean["ok"], clean["missing"], clean["stale"], clean["wrong"]) == (300, 0, 0, 0)

    assert http("DELETE", cluster3.url(0) + "/v1/kv/k/00007").status == 204
    assert http("PUT", cluster3.url(0) + "/v1/kv/k/00009", b"k/00008=not this key's").status == 200
    seen = run(cluster3, tmp_path, "verify", "--rate", "2000")["total"]
    assert (seen["ok"], seen["missing"], seen["wrong"]) == (298, 1, 1), seen
    assert any(e.startswith("k/00007: not found") for e in seen["examples"]), seen["examples"]

    cluster3.nodes[1].kill()
    cluster3.nodes[2].kill()
    failing = run(cluster3, tmp_path, "verify", "--urls", cluster3.url(0), "--attempts", "1")
    total = failing["total"]  # a key with no quorum is 503, the deleted one too: never 404
    assert (total["errors"], total["missing"]) == ({"quorum_unavailable": 300}, 0), total
    assert total["first_error"] <= total["last_error"]


def test_traffic_raises_floors_and_metrics_count_the_hints_replayed(
        cluster3: StaticCluster, tmp_path: Path) -> None:
    run(cluster3, tmp_path, "load", "--keys", "50")
    sampling = background(cluster3, tmp_path, "metrics")
    cluster3.nodes[2].kill()
    traffic = background(cluster3, tmp_path, "traffic", "--live-keys", "20", "--rate", "200")

    def hints_pending() -> float:
        text = http("GET", cluster3.url(0) + "/metrics").body.decode()
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("ringkv_hints_pending"))

    wait_for(lambda: hints_pending() >= 10, 60, "writes to node 2 kept as hints")
    cluster3.nodes[2].start()
    cluster3.wait_ready(cluster3.nodes[2])
    wait_for(lambda: hints_pending() == 0, 120, "the hints replayed to node 2")
    (tmp_path / "stop").touch()
    sent, sampled = report(traffic), report(sampling)

    assert sent["writes"]["ok"] >= 10 and not sent["writes"]["errors"], sent["writes"]
    assert (sent["reads"]["missing"], sent["reads"]["stale"]) == (0, 0), sent["reads"]
    live = json.loads((tmp_path / "live.json").read_text())
    assert live and all(key.startswith("live/") for key in live)
    assert sampled["hints_replayed"] >= 10, sampled
    back = run(cluster3, tmp_path, "verify")["total"]  # loaded and live keys, at their floors
    assert (back["ok"], back["missing"], back["stale"]) == (50 + len(live), 0, 0), back
