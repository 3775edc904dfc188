"""What the console reads, against three real node processes: its static files and their
headers, `GET /v1/stats`, `/v1/cluster/history`, `/v1/ring`, the replicas' record details,
and `ringkv status --watch`, the same view in a terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from http.client import HTTPConnection
from typing import Any

from harness import API_TOKEN, StaticCluster, http, wait_for

from ringkv.client.dashboard import progress_line, render
from ringkv.node.ui import POLICY


def test_the_page_and_every_file_it_loads_are_public_with_a_strict_policy(shared3: StaticCluster) -> None:
    url = shared3.url(0)
    conn = HTTPConnection("127.0.0.1", shared3.nodes[0].port, timeout=30)
    conn.request("GET", "/ui")
    moved = conn.getresponse()
    assert (moved.status, moved.headers["Location"]) == (308, "ui/")  # relative: works behind a prefix
    conn.close()
    page = http("GET", f"{url}/ui/", token=None)
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == POLICY
    assert "script-src 'self';" in POLICY and "unsafe-inline" not in POLICY
    html = page.body.decode()
    assert "<script>" not in html and " style=" not in html  # nothing inline for the CSP to allow
    linked = re.findall(r'(?:src|href)="([^"]+)"', html)
    assets = [u for u in linked if not u.startswith("..")]
    assert {"console.css", "js/app.js", "favicon.svg"} <= set(assets)
    for asset in assets:
        r = http("GET", f"{url}/ui/{asset}", token=None)
        assert r.status == 200 and r.headers["content-security-policy"] == POLICY, asset
        assert r.headers["x-content-type-options"] == "nosniff"
    scripts = re.findall(r'from "\./([a-z]+\.js)"', http("GET", f"{url}/ui/js/app.js").body.decode())
    assert {"api.js", "dom.js", "charts.js", "ring.js", "inspector.js", "format.js"} <= set(scripts)
    for script in scripts:
        r = http("GET", f"{url}/ui/js/{script}", token=None)
        assert r.status == 200 and r.headers["content-type"].startswith("text/javascript")
        code = "\n".join(line for line in r.body.decode().splitlines()
                         if not line.lstrip().startswith(("//", "*", "/*")))
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in code, (script, sink)  # markup is never parsed from data
    missing = http("GET", f"{url}/ui/../openapi.json.bak", token=None)
    assert missing.status == 404 and missing.json()["error"]["code"] == "not_found"


def test_stats_count_what_each_member_served(shared3: StaticCluster) -> None:
    assert http("GET", f"{shared3.url(0)}/v1/stats", token=None).status == 401
    assert http("GET", f"{shared3.url(0)}/v1/stats?since=yesterday").status == 400
    assert http("GET", f"{shared3.url(0)}/v1/stats?until=1").status == 400
    for i in range(30):
        assert http("PUT", f"{shared3.url(1)}/v1/kv/stats-{i}", b"v").status == 200
        assert http("GET", f"{shared3.url(1)}/v1/kv/stats-{i}").status == 200
    assert http("GET", f"{shared3.url(1)}/v1/kv/stats-absent").status == 404

    def node1() -> dict | None:
        stats = http("GET", f"{shared3.url(0)}/v1/stats").json()
        assert stats["interval_s"] == 2 and [m["reachable"] for m in stats["members"]] == [True] * 3
        member = next(m for m in stats["members"] if m["node"] == "node-1")
        busy = [s for s in member["series"] if s["writes"] > 0 and s["reads"] > 0]
        return member if busy else None

    member = wait_for(node1, 30, "a sample of node-1 with reads and writes")
    totals = member["totals"]
    puts = sum(r["count"] for r in totals["requests"]
               if (r["route"], r["method"], r["status"]) == ("/v1/kv/{key}", "PUT", 200))
    assert puts >= 30
    assert totals["errors"].get("not_found", 0) >= 1
    sample = next(s for s in member["series"] if s["writes"] > 0)
    assert sample["t"] % 2000 == 0  # on the shared wall-clock grid
    assert sample["write_p99_ms"] > 0
    later = http("GET", f"{shared3.url(0)}/v1/stats?since={sample['t']}").json()
    assert all(s["t"] > sample["t"] for m in later["members"] for s in m["series"])
    metrics = http("GET", f"{shared3.url(1)}/metrics", token=None).body.decode()
    assert re.search(r'^ringkv_errors_total\{code="not_found"\} [1-9]', metrics, re.M)


def test_history_and_ring_of_a_settled_cluster(shared3: StaticCluster) -> None:
    history = http("GET", f"{shared3.url(2)}/v1/cluster/history").json()
    assert history["node"] == "node-2"
    assert history["changes"][0]["change"] == \
        "epoch 1: cluster formed with node-0, node-1, node-2 (rf=3)"
    ring = http("GET", f"{shared3.url(2)}/v1/ring").json()
    assert (ring["epoch"], ring["rf"], ring["settled"]) == (1, 3, True)
    assert ring["base"] is None and ring["moving"] == [] and ring["moving_fraction"] == 0
    segments = ring["target"]["segments"]
    assert segments[0]["start"] == 0 and segments[-1]["end"] == 1
    assert len(segments) == 3 * ring["vnodes"] + 1  # one per vnode, and the wrap to the top
    assert all(sorted(s["replicas"]) == ["node-0", "node-1", "node-2"] for s in segments)


def test_replicas_report_each_records_size_type_and_expiry(shared3: StaticCluster) -> None:
    url = shared3.url(0)
    # On a loaded machine a write can time out (503): the test is about what the replicas
    # report once one is acknowledged, so it writes until one is.
    r = wait_for(lambda: (w := http("PUT", f"{url}/v1/kv/inspected?ttl=600", b"<b>12345</b>",
                                    {"Content-Type": "text/html"})).status == 200 and w,
                 what="an acknowledged write")
    version = r.json()["version"]

    def every_replica_holds_it() -> list[dict[str, Any]] | None:
        """A quorum acknowledged the write; the last copy may still be on its way."""
        replicas: list[dict[str, Any]] = http("GET", f"{url}/v1/replicas/inspected").json()["replicas"]
        return replicas if all(e["status"] == "ok" for e in replicas) else None

    replicas = wait_for(every_replica_holds_it, 60, "the third copy of the write")
    assert len(replicas) == 3
    now_ms = time.time() * 1000
    for entry in replicas:
        assert (entry["status"], entry["version"], entry["size"], entry["content_type"],
                entry["tombstone"], entry["live"]) == ("ok", version, 12, "text/html", False, True)
        assert now_ms + 590_000 < entry["expires_ms"] < now_ms + 610_000


def test_status_watch_redraws_members_and_rates(shared3: StaticCluster) -> None:
    env = {**os.environ, "RINGKV_TOKEN": API_TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ringkv.client.cli", "status", "--watch", "0.5", "--url", shared3.url(0)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        assert proc.stdout is not None
        frames: list[str] = []

        def rows(frame: str) -> dict[str, list[str]]:
            return {line.split()[0]: line.split() for line in frame.splitlines()
                    if line.startswith("node-")}

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            http("GET", f"{shared3.url(0)}/v1/kv/watched")
            if line.startswith("epoch "):
                frames.append("")
            elif frames:
                frames[-1] += line
                members = rows(frames[-1])
                # A frame is whole once its re-replication line is drawn (after the rows).
                if (len(members) == 3 and float(members["node-0"][6]) > 0
                        and "re-replication:" in frames[-1]):
                    break
        frame = frames[-1]
        members = rows(frame)
        assert sorted(members) == ["node-0", "node-1", "node-2"], frame
        assert all(m[1] == "normal" and m[2].startswith("http://127.0.0.1:") and m[3] == "1"
                   for m in members.values()), frame
        assert float(members["node-0"][6]) > 0, frame  # the reads the loop above sent
        assert "re-replication: nothing to move" in "".join(frames)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert http("GET", f"{shared3.url(0)}/v1/stats?since=-1").status == 400
    assert subprocess.run([sys.executable, "-m", "ringkv.client.cli", "status", "--watch", "0"],
                          capture_output=True, env=env, check=False).returncode == 2


def test_progress_lines_and_the_screen_while_rebalancing() -> None:
    cluster = {"epoch": 7, "settled": False, "rf": 3, "node": "a", "members": [
        {"name": "a", "state": "normal", "api_url": "http://h:1", "epoch": 7, "records": 1200,
         "hints_pending": 0, "ready": False, "reachable": True,
         "rebalance": {"ranges_total": 40, "ranges_left": 30, "keys_received": 500, "active": True}},
        {"name": "b", "state": "joining", "reachable": False}]}
    series = {"a": [{"t": 2000, "reads": 10.0, "writes": 5.0, "read_p99_ms": 1.25, "write_p99_ms": 3.5,
                     "handoff_bytes_per_s": 2e6, "handoff_ranges_per_s": 2.0}]}
    screen = render(cluster, series)
    assert screen.splitlines()[0] == "epoch 7  REBALANCING  rf 3  2 members  via a"
    assert re.search(r"^a\s+normal\s+http://h:1\s+7\s+1,200\s+0\s+15\.0\s+1\.2ms\s+3\.5ms\s+catching-up$",
                     screen, re.M), screen
    assert re.search(r"^b\s+unreachable\s", screen, re.M), screen
    line = progress_line("a", cluster["members"][0]["rebalance"], series["a"])
    assert "[#######" in line and " 25.0%" in line
    assert "10/40 ranges · 500 records · ~1,500 left · 2.0 MB/s · ETA 15s" in line
    done = progress_line("a", {"ranges_total": 4, "ranges_left": 0, "keys_received": 9}, [])
    assert done.endswith("4/4 ranges · 9 records · done") and "100.0%" in done
