"""Wrong clocks with real processes: TTLs on real time, and blind writes to a hot key that
are never refused for good while a quorum is up."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

from harness import API_TOKEN, StaticCluster, http, wait_for

from ringkv.client import Client, RingkvError


def restart_skewed(cluster: StaticCluster, i: int, skew_ms: int) -> None:
    """As `ringkv node restart NAME --clock-skew-ms N`: stop, start with the skewed clock."""
    node = cluster.nodes[i]
    node.stop()
    node.env["RINGKV_CLOCK_SKEW_MS"] = str(skew_ms)
    node.start()
    cluster.wait_ready(node)


def test_a_ttl_runs_on_the_writers_wall_clock_not_on_a_hybrid_clock_pulled_ahead(
        tmp_path: Path) -> None:
    cluster = StaticCluster(tmp_path).start()
    try:
        restart_skewed(cluster, 2, 600_000)
        for i in range(20):  # versions 10 minutes ahead pull every replica's HLC along
            assert http("PUT", f"{cluster.url(2)}/v1/kv/ahead-{i}", b"x").status == 200
        written = time.time()
        assert http("PUT", f"{cluster.url(0)}/v1/kv/t?ttl=2", b"short").status == 200
        # Gone within the TTL plus the writer's clock error (none here), as every node with a
        # true clock sees it; with the expiry taken from node-0's HLC it lived 10 minutes.
        for reader in (0, 1):
            wait_for(lambda r=reader: http("GET", f"{cluster.url(r)}/v1/kv/t").status == 404,
                     60, f"the key to expire as node-{reader} sees it")
        assert time.time() - written >= 1.5, "expired early"
        # The skewed node's own clock says it expired long ago.
        assert http("GET", f"{cluster.url(2)}/v1/kv/t").status == 404
    finally:
        cluster.stop()


def test_blind_writes_to_a_hot_key_are_never_refused_for_good_despite_skewed_clocks(
        tmp_path: Path) -> None:
    """32 writers on one key through every node, one node's clock 2 s behind and one 10
    minutes ahead: every write is acknowledged (no conflict_retry_exhausted), and a write
    that begins after another was acknowledged still wins (rule 2)."""
    cluster = StaticCluster(tmp_path).start()
    try:
        restart_skewed(cluster, 1, -2_000)
        restart_skewed(cluster, 2, 600_000)
        urls = [n.url for n in cluster.nodes]
        outcomes: Counter[str] = Counter()
        lock = threading.Lock()
        stop = threading.Event()

        def writer(w: int) -> None:
            with Client(urls[w % 3], token=API_TOKEN, attempts=1) as client:
                seq = 0
                while not stop.is_set():
                    seq += 1
                    try:
                        client.put("hot", f"{w}-{seq}")
                        outcome = "ok"
                    except RingkvError as exc:
                        outcome = exc.code
                    with lock:
                        outcomes[outcome] += 1

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(32)]
        for t in threads:
            t.start()
        wait_for(lambda: sum(outcomes.values()) >= 3000, 120, "3000 writes to the hot key")
        stop.set()
        for t in threads:
            t.join(60)
        assert set(outcomes) == {"ok"}, outcomes
        for coordinator in (1, 0, 2, 1):  # the slow clock's write after the fast one's wins
            r = http("PUT", f"{cluster.url(coordinator)}/v1/kv/hot", f"last-{coordinator}".encode())
            assert r.status == 200, r.body
            for reader in range(3):
                assert http("GET", f"{cluster.url(reader)}/v1/kv/hot").body == f"last-{coordinator}".encode()
    finally:
        cluster.stop()
