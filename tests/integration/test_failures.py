"""Node failures with real processes: SIGKILL, restart on the same data, clock skew."""

from __future__ import annotations

import re
import signal
import threading
from pathlib import Path

from harness import API_TOKEN, StaticCluster, http, wait_for

from ringkv.client import Client, RingkvError, Unavailable


def replica_versions(cluster: StaticCluster, key: str, via: int = 0) -> dict[str, str | None]:
    reps = http("GET", f"{cluster.url(via)}/v1/replicas/{key}").json()["replicas"]
    return {r["node"]: r.get("version") for r in reps}


def hints_replayed(cluster: StaticCluster, i: int) -> float:
    text = http("GET", cluster.url(i) + "/metrics", token=None).body.decode()
    return sum(float(m.group(1)) for m in re.finditer(r"^ringkv_hints_replayed_total (\S+)$", text, re.M))


def hints_pending(cluster: StaticCluster, i: int) -> float:
    text = http("GET", cluster.url(i) + "/metrics", token=None).body.decode()
    return sum(float(m.group(1)) for m in re.finditer(r"^ringkv_hints_pending\{.*\} (\S+)$", text, re.M))


def test_one_replica_down_quorum_works_all_fails(cluster3: StaticCluster) -> None:
    cluster3.nodes[2].kill(signal.SIGKILL)
    for i in range(20):
        r = http("PUT", f"{cluster3.url(i % 2)}/v1/kv/k{i}", f"v{i}".encode())
        assert r.status == 200, r.body
        g = http("GET", f"{cluster3.url((i + 1) % 2)}/v1/kv/k{i}")
        assert g.status == 200 and g.body == f"v{i}".encode()
    r = http("PUT", f"{cluster3.url(0)}/v1/kv/k0?consistency=all", b"x")
    assert r.status == 503
    err = r.json()["error"]
    assert err["code"] == "quorum_unavailable" and err["acked"] == 2 and err["needed"] == 3
    assert "may have reached" in err["message"]
    g = http("GET", f"{cluster3.url(1)}/v1/kv/k1?consistency=all")
    assert g.status == 503 and g.json()["error"]["code"] == "quorum_unavailable"
    assert http("GET", f"{cluster3.url(1)}/v1/kv/k1?consistency=one").status == 200


def test_two_replicas_down_quorum_fails_with_503(cluster3: StaticCluster) -> None:
    assert http("PUT", f"{cluster3.url(0)}/v1/kv/before", b"v").status == 200
    cluster3.nodes[1].kill()
    cluster3.nodes[2].kill()
    w = http("PUT", f"{cluster3.url(0)}/v1/kv/during", b"v")
    assert w.status == 503 and w.json()["error"]["needed"] == 2
    r = http("GET", f"{cluster3.url(0)}/v1/kv/before")
    assert r.status == 503 and r.json()["error"]["code"] == "quorum_unavailable"
    assert http("GET", f"{cluster3.url(0)}/v1/kv/before?consistency=one").status == 200
    # What RingkvQuorumUnavailable counts (charts/ringkv/alerts/requests.yaml).
    metrics = http("GET", cluster3.url(0) + "/metrics", token=None).body.decode()
    assert 'ringkv_errors_total{code="quorum_unavailable"} 2.0' in metrics  # the PUT and the GET


def test_a_write_at_one_can_be_missed_by_a_quorum_read(cluster3: StaticCluster) -> None:
    """What `consistency=one` gives up, as README and the OpenAPI document say: W + R <= rf,
    so an acknowledged write at `one` may be invisible to a later read, even at quorum,
    until hints (or read repair, anti-entropy) bring the other replicas up to date."""
    spec = http("GET", cluster3.url(0) + "/openapi.json", token=None).json()
    described = spec["components"]["parameters"]["consistency"]["description"]
    assert "not found" in described and "W + R" in described
    node0, node1, node2 = cluster3.nodes
    node1.kill()
    node2.kill()
    w = http("PUT", f"{cluster3.url(0)}/v1/kv/at-one?consistency=one", b"acked by one")
    assert w.status == 200, w.body  # the only live replica acknowledged it
    wait_for(lambda: hints_pending(cluster3, 0) == 2, 30, "a hint for each of the others")
    node0.kill()
    for node in (node1, node2):
        node.start()
        cluster3.wait_ready(node)
    missed = http("GET", f"{cluster3.url(1)}/v1/kv/at-one")  # quorum: node-1 and node-2
    assert missed.status == 404, missed.body
    node0.start()  # its hints reach the others
    wait_for(lambda: http("GET", f"{cluster3.url(2)}/v1/kv/at-one?consistency=all").status == 200,
             60, "hints to deliver the write")


def miss_writes(cluster: StaticCluster, prefix: str) -> dict[str, str]:
    """SIGKILL node-2, write 30 keys through the other two, start node-2 again and wait
    until it serves: the versions it missed, by key."""
    down = cluster.nodes[2]
    down.kill()
    versions = {}
    for i in range(30):
        r = http("PUT", f"{cluster.url(i % 2)}/v1/kv/{prefix}{i}", b"while-down")
        assert r.status == 200
        versions[f"{prefix}{i}"] = r.json()["version"]
    down.start()
    cluster.wait_ready(down)
    return versions


def test_hints_bring_a_returning_node_up_to_date(cluster3: StaticCluster) -> None:
    down = cluster3.nodes[2]
    versions = miss_writes(cluster3, "h")
    # Hints are replayed without any client reading the keys.
    wait_for(lambda: all(replica_versions(cluster3, k)[down.name] == v for k, v in versions.items()),
             60, "hints to reach the returning node")
    metrics = http("GET", cluster3.url(0) + "/metrics", token=None).body.decode()
    assert "ringkv_hints_replayed_total" in metrics


def test_hints_reach_a_returning_node_as_it_connects(tmp_path: Path) -> None:
    """Replay rounds an hour apart: only the returning node's hellos (it greets every
    member as it starts; a peer whose link to it had failed replays at once) can make the
    others send their hints before the next round, and they send every one. (Its first
    anti-entropy sync, 5 s after its start, would bring it the data too, but sends no hint.)"""
    cluster = StaticCluster(tmp_path, extra_env={"RINGKV_HINT_INTERVAL": "3600",
                                                 "RINGKV_ANTI_ENTROPY_INTERVAL": "3600"})
    cluster.start()
    try:
        down = cluster.nodes[2]
        versions = miss_writes(cluster, "g")
        wait_for(lambda: hints_replayed(cluster, 0) + hints_replayed(cluster, 1) == len(versions),
                 60, "the others to replay their hints without waiting for a round")
        assert all(replica_versions(cluster, k)[down.name] == v for k, v in versions.items())
    finally:
        cluster.stop()


def test_read_repair_fixes_a_stale_replica(tmp_path: Path) -> None:
    # No hints (each expires before any replay round) and no anti-entropy: only read
    # repair can fix the stale replica.
    cluster = StaticCluster(tmp_path, extra_env={"RINGKV_HINT_TTL": "0",
                                                 "RINGKV_ANTI_ENTROPY_INTERVAL": "3600"})
    cluster.start()
    try:
        down = cluster.nodes[2]
        assert http("PUT", f"{cluster.url(0)}/v1/kv/rr", b"old").status == 200
        down.kill()
        new = http("PUT", f"{cluster.url(0)}/v1/kv/rr", b"new").json()["version"]
        down.start()
        cluster.wait_ready(down)
        assert replica_versions(cluster, "rr")[down.name] != new
        g = http("GET", f"{cluster.url(2)}/v1/kv/rr?consistency=all")
        assert g.status == 200 and g.body == b"new"
        wait_for(lambda: replica_versions(cluster, "rr")[down.name] == new, 30, "read repair")
    finally:
        cluster.stop()


def _writer(urls: list[str], prefix: str, acked: dict[str, bytes], stop: threading.Event) -> None:
    with Client(urls, token=API_TOKEN, timeout=10) as client:
        i = 0
        while not stop.is_set():
            key, value = f"{prefix}-{i}", f"value-{prefix}-{i}".encode()
            try:
                client.put(key, value)
                acked[key] = value
            except (RingkvError, Unavailable):
                pass
            i += 1


def test_sigkill_mid_load_single_node_loses_no_acked_write(tmp_path: Path) -> None:
    """rf=1: every ack is this one node's commit; SIGKILL must not lose any of them."""
    cluster = StaticCluster(tmp_path, size=1, rf=1)
    cluster.start()
    node = cluster.nodes[0]
    acked: dict[str, bytes] = {}
    stop = threading.Event()
    writers = [threading.Thread(target=_writer, args=([node.url], f"w{t}", acked, stop))
               for t in range(4)]
    try:
        for t in writers:
            t.start()
        wait_for(lambda: len(acked) >= 300, 60, "300 acknowledged writes")
        node.kill(signal.SIGKILL)
        stop.set()
        for t in writers:
            t.join(30)
        node.start()
        cluster.wait_ready(node)
        with Client(node.url, token=API_TOKEN) as client:
            missing = [k for k, v in acked.items() if client.get(k).value != v]
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
    finally:
        stop.set()
        cluster.stop()


def test_sigkill_mid_load_three_nodes(cluster3: StaticCluster) -> None:
    acked: dict[str, bytes] = {}
    stop = threading.Event()
    urls = [n.url for n in cluster3.nodes[:2]]
    writers = [threading.Thread(target=_writer, args=(urls, f"m{t}", acked, stop)) for t in range(4)]
    try:
        for t in writers:
            t.start()
        wait_for(lambda: len(acked) >= 200, 60, "200 acknowledged writes")
        cluster3.nodes[2].kill(signal.SIGKILL)
        count = len(acked)
        wait_for(lambda: len(acked) >= count + 200, 60, "writes to continue with a node down")
        cluster3.nodes[2].start()
        cluster3.wait_ready(cluster3.nodes[2])
        wait_for(lambda: len(acked) >= count + 400, 60, "writes to continue after the restart")
    finally:
        stop.set()
        for t in writers:
            t.join(30)
    with Client([n.url for n in cluster3.nodes], token=API_TOKEN) as client:
        lost = [k for k, v in acked.items() if client.get(k).value != v]
    assert not lost, f"{len(lost)} acknowledged writes lost"


def test_later_write_wins_despite_clock_skew(tmp_path: Path) -> None:
    """Rule 2: node-1's clock is 10 minutes behind, node-2's 10 minutes ahead."""
    cluster = StaticCluster(tmp_path)
    cluster.nodes[1].env["RINGKV_CLOCK_SKEW_MS"] = str(-600_000)
    cluster.nodes[2].env["RINGKV_CLOCK_SKEW_MS"] = str(600_000)
    cluster.start()
    try:
        for round_ in range(10):
            key = f"skew-{round_}"
            order = [2, 0, 1] if round_ % 2 else [0, 2, 1]
            for step, coordinator in enumerate(order):
                r = http("PUT", f"{cluster.url(coordinator)}/v1/kv/{key}", f"{step}".encode())
                assert r.status == 200, r.body
                for reader in range(3):
                    got = http("GET", f"{cluster.url(reader)}/v1/kv/{key}")
                    assert got.body == f"{step}".encode(), (key, coordinator, reader, got.body)
    finally:
        cluster.stop()
