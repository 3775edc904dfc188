"""The Grafana dashboard's queries, answered by a real Prometheus scraping a real cluster.

`ringkv up` runs four nodes under a steady load of writes, reads, lists and reads of
missing keys; one node is paused (SIGSTOP) for a while, so writes leave hints for it, and a
fifth node joins, so handoff moves records. Prometheus (Debian's package, on a free
loopback port, scraping every second) records it all. Then every panel's every query, with
the dashboard's variables filled in as Grafana would, must return data over the run, and
the events must show in it. The panels are drawn from those answers with matplotlib
(`panels.py`) into the test's directory, and into $RINGKV_DASHBOARD_SCREENSHOTS when set (make
screenshots: docs/monitoring/dashboard.png).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import LocalCluster, free_ports, http, require_tool, terminate, wait_for
from panels import Series, render

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "ringkv" / "dashboards" / "ringkv.json"
NAMESPACE = "ringkv-local"  # the namespace label the scrape configuration attaches
NODES = 4
RATE_WINDOW = "10s"  # $__rate_interval for a 1 s scrape interval and a 2 s step


class Prometheus:
    """A Prometheus server of its own: config, data and log under `root`."""

    def __init__(self, binary: str, root: Path, targets: list[tuple[str, str]]) -> None:
        self.root = root
        self.port = free_ports(1)[0]
        self.targets_file = root / "targets.json"
        self.targets_file.write_text(json.dumps([
            {"targets": [address], "labels": {"namespace": NAMESPACE, "pod": pod}}
            for pod, address in targets]))
        (root / "prometheus.yml").write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "ringkv", "scrape_timeout": "900ms",
                                "file_sd_configs": [{"files": [str(self.targets_file)]}]}],
        }))
        log = open(root / "prometheus.log", "wb")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [binary, f"--config.file={root / 'prometheus.yml'}",
             f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(self._ready, 60, "Prometheus to be ready")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {(self.root / 'prometheus.log').read_text()}")
        try:
            return http("GET", f"{self.url}/-/ready", token=None, timeout=2).status == 200
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query_range(self, expr: str, start: float, end: float, step: float = 2) -> list[Series]:
        """A range query's answer (every series with its points)."""
        query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
        r = http("GET", f"{self.url}/api/v1/query_range?{query}", token=None, timeout=30)
        assert r.status == 200, (expr, r.body[:500])
        return [Series(s["metric"], [(float(t), float(v)) for t, v in s["values"]])
                for s in r.json()["data"]["result"]]

    def stop(self) -> None:
        terminate(self.proc)


def panel_queries(dashboard: dict[str, Any], pods: list[str]) -> Iterator[tuple[int, str, str]]:
    """(panel id, refId, PromQL) for every target, with the variables as Grafana fills
    them: one namespace, every node (`All`: the values joined into a regex)."""
    values = {"$namespace": NAMESPACE, "$pod": "(" + "|".join(pods) + ")",
              "$__rate_interval": RATE_WINDOW}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in values.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"unfilled variable in {expr}"
            yield panel["id"], target["refId"], expr


class Load:
    """Writes, reads, lists, reads of missing keys and a malformed request against the
    first nodes, from a few threads, until stopped."""

    def __init__(self, urls: list[str], threads: int = 3) -> None:
        self.urls = urls
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(t,), name=f"load-{t}", daemon=True)
                        for t in range(threads)]
        for thread in self.threads:
            thread.start()

    def _run(self, seed: int) -> None:
        i = seed
        while not self.stopped.is_set():
            url = self.urls[i % len(self.urls)]
            try:
                http("PUT", f"{url}/v1/kv/k{i % 500}", f"v{i}".encode(), timeout=5)
                http("GET", f"{url}/v1/kv/k{(i * 7) % 500}", timeout=5)
                if i % 10 == 0:
                    http("GET", f"{url}/v1/kv/missing-{i}", timeout=5)  # 404 not_found
                    http("GET", f"{url}/v1/kv?prefix=k1&limit=10", timeout=5)
                if i % 50 == 0:
                    http("GET", f"{url}/v1/kv?limit=x", timeout=5)  # 400 bad_request
            except OSError:
                pass  # a paused node: the load goes on elsewhere
            i += len(self.threads)

    def stop(self) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(30)


def seed(url: str, keys: int) -> None:
    """`keys` values of 1 KiB, for a handoff that takes a while at the test's rate cap."""
    value = b"x" * 1024
    for i in range(keys):
        assert http("PUT", f"{url}/v1/kv/seed/{i}", value, timeout=10).status == 200


@pytest.fixture
def prometheus_binary() -> str:
    return require_tool("prometheus", "Debian package `prometheus` (make tools installs it as root)")


def test_every_panel_shows_data_from_a_real_cluster(tmp_path: Path, prometheus_binary: str) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    # Handoff capped at 0.1 MB/s, so the joining node's pull spans many scrapes.
    cluster = LocalCluster(tmp_path, nodes=NODES, rf=3,
                           extra_env={"RINGKV_HANDOFF_MAX_MB_PER_S": "0.1"})
    prometheus = load = None
    try:
        cluster.start()
        seeders = [threading.Thread(target=seed, args=(cluster.url(i), 400)) for i in range(NODES)]
        for thread in seeders:
            thread.start()
        for thread in seeders:
            thread.join()
        # Slots for the node that joins later too: its target is down until it starts.
        pods = [f"node-{i}" for i in range(NODES + 1)]
        prometheus = Prometheus(prometheus_binary, tmp_path, [
            (pod, cluster.url(i).removeprefix("http://")) for i, pod in enumerate(pods)])
        start = time.time()
        load = Load([cluster.url(i) for i in range(NODES)])

        def recorded(expr: str, samples: int = 1) -> bool:
            """Whether `expr` was true (> 0) in at least `samples` 1 s steps so far."""
            return sum(v > 0 for s in prometheus.query_range(expr, start, time.time(), step=1)
                       for _, v in s.points) >= samples

        wait_for(lambda: recorded(f'sum(up{{namespace="{NAMESPACE}"}})', 10), 90,
                 "ten seconds of scrapes")
        # A paused node: coordinators keep the writes it misses as hints.
        cluster.control.kill("node-1", "SIGSTOP")
        try:
            wait_for(lambda: recorded("sum(ringkv_hints_pending)", 5), 90, "hints for node-1")
        finally:
            cluster.control.kill("node-1", "SIGCONT")
        wait_for(lambda: recorded("sum(ringkv_hints_replayed_total)"), 90, "hints replayed")
        # A new node: it pulls every range it replicates, and the epoch settles after.
        cluster.control.add()
        cluster.wait_settled(NODES + 1)
        wait_for(lambda: recorded('ringkv_rebalance_ranges_left{pod="node-4"}', 3), 60,
                 "node-4's handoff in Prometheus")
        wait_for(lambda: recorded("rate(ringkv_rebalance_keys_received_total[10s])", 3), 60,
                 "records merged by handoff")
        wait_for(lambda: recorded(f'sum(up{{namespace="{NAMESPACE}"}}) >= {NODES + 1}', 10), 60,
                 f"ten scrapes of all {NODES + 1} nodes")
        end = time.time()
        load.stop()

        answers = {(pid, ref): prometheus.query_range(expr, start, end)
                   for pid, ref, expr in panel_queries(dashboard, pods)}
        empty = [expr for pid, ref, expr in panel_queries(dashboard, pods) if not answers[pid, ref]]
        assert not empty, f"panel queries with no data: {empty}"
        shot = tmp_path / "dashboard.png"
        render(dashboard, answers, start, shot, f"ringkv dashboard: {NODES} nodes under load, node-1 "
               f"paused, node-{NODES} joins (from a real Prometheus)")
        assert shot.stat().st_size > 10_000
        if target := os.environ.get("RINGKV_DASHBOARD_SCREENSHOTS"):
            Path(target).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(target) / "dashboard.png")
    finally:
        if load is not None:
            load.stop()
        if prometheus is not None:
            prometheus.stop()
        cluster.stop()


def test_panel_queries_fill_every_variable() -> None:
    """Guards the test above: a query the substitution misses would fail in Prometheus,
    and a panel without targets would be vacuously "not empty"."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = list(panel_queries(dashboard, ["node-0"]))
    assert len(queries) >= len(dashboard["panels"])
    assert all(p["targets"] for p in dashboard["panels"])
