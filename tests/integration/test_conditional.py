"""Conditional writes decided by Paxos rounds, with real node processes: racing creators,
read-modify-write counters, serial reads and writes, `incr`, a node killed mid-chain, and a
node that lost its data."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sqlite3
import threading
from collections import Counter
from pathlib import Path

import pytest
from harness import API_TOKEN, LocalCluster, StaticCluster, http, wait_for

from ringkv.client import AsyncClient, Client, PreconditionFailed, cli


def kv(cluster: StaticCluster, i: int, key: str, query: str = "") -> str:
    return f"{cluster.url(i % len(cluster.nodes))}/v1/kv/{key}{query}"


def race(n: int, action) -> list:  # type: ignore[no-untyped-def]
    """Run `action(i)` in n threads released together; their results in order."""
    start = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        start.wait()
        results[i] = action(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_of_racing_creators_exactly_one_wins_each_key(shared3: StaticCluster) -> None:
    """20 clients race If-None-Match: * on each of 100 keys, through every node."""
    outcomes: Counter[int] = Counter()
    for k in range(100):
        statuses = race(20, lambda i, k=k: http(
            "PUT", kv(shared3, i, f"race/{k}"), f"{i}".encode(), {"If-None-Match": "*"}).status)
        assert statuses.count(201) == 1, (k, Counter(statuses))
        outcomes.update(statuses)
    assert outcomes == {201: 100, 412: 1900}


def test_a_read_modify_write_counter_loses_no_update(shared3: StaticCluster) -> None:
    """10 clients each add 1 twenty times: GET, then PUT If-Match the version read, again
    on 412. Every acknowledged increment counts: the counter ends at exactly 200."""
    urls = [n.url for n in shared3.nodes]
    assert http("PUT", kv(shared3, 0, "counter"), b"0").status == 200
    acknowledged = [0] * 10

    def client(i: int) -> None:
        with Client(urls[i % 3], token=API_TOKEN, attempts=1) as c:
            while acknowledged[i] < 20:
                entry = c.get("counter")
                try:
                    c.put("counter", str(int(entry.value) + 1), if_match=entry.version)
                except PreconditionFailed:
                    continue
                acknowledged[i] += 1

    race(10, client)
    assert sum(acknowledged) == 200
    for i in range(3):
        assert http("GET", kv(shared3, i, "counter")).body == b"200"
        assert http("GET", kv(shared3, i, "counter", "?consistency=serial")).body == b"200"


def test_incr_adds_in_one_round_and_refuses_what_is_not_a_number(shared3: StaticCluster) -> None:
    results = race(10, lambda i: [http("POST", kv(shared3, i, "hits", "?op=incr")).status
                                  for _ in range(10)])
    assert all(s == 200 for statuses in results for s in statuses)
    got = http("POST", kv(shared3, 1, "hits", "?op=incr&by=-100"))
    assert got.status == 200 and got.json()["value"] == 0
    assert got.headers["etag"] == f'"{got.json()["version"]}"'
    assert http("GET", kv(shared3, 2, "hits")).body == b"0"
    assert http("PUT", kv(shared3, 0, "text"), b"abc").status == 200
    refused = http("POST", kv(shared3, 0, "text", "?op=incr"))
    assert refused.status == 412 and "not a decimal integer" in refused.json()["error"]["message"]
    for query in ("", "?op=decr", "?op=incr&by=x", "?op=incr&by=99999999999999999999",
                  "?op=incr&consistency=some"):
        bad = http("POST", kv(shared3, 0, "hits", query))
        assert bad.status == 400 and bad.json()["error"]["code"] == "bad_request", query
    assert http("POST", kv(shared3, 0, "hits", "?op=incr"), b"1").status == 400


def test_serial_reads_and_writes(shared3: StaticCluster) -> None:
    missing = http("GET", kv(shared3, 0, "serial", "?consistency=serial"))
    assert missing.status == 404
    first = http("PUT", kv(shared3, 0, "serial", "?consistency=serial"), b"a")
    assert first.status == 201  # it read first, so it knows it created the key
    second = http("PUT", kv(shared3, 1, "serial", "?consistency=serial"), b"b")
    assert second.status == 200
    got = http("GET", kv(shared3, 2, "serial", "?consistency=serial"))
    assert got.body == b"b" and got.headers["etag"] == f'"{second.json()["version"]}"'
    head = http("HEAD", kv(shared3, 2, "serial", "?consistency=serial"))
    assert head.status == 200 and head.headers["etag"] == got.headers["etag"]
    gone = http("DELETE", kv(shared3, 0, "serial", "?consistency=serial"))
    assert gone.status == 204
    assert http("GET", kv(shared3, 1, "serial")).status == 404


def test_delete_honours_if_none_match(shared3: StaticCluster) -> None:
    assert http("PUT", kv(shared3, 0, "dn"), b"x").status == 200
    exists = http("DELETE", kv(shared3, 1, "dn"), headers={"If-None-Match": "*"})
    assert exists.status == 412 and exists.json()["error"]["code"] == "precondition_failed"
    bad = http("DELETE", kv(shared3, 1, "dn"), headers={"If-None-Match": "nope"})
    assert bad.status == 400 and bad.json()["error"]["code"] == "bad_request"
    assert http("GET", kv(shared3, 2, "dn")).body == b"x"
    assert http("DELETE", kv(shared3, 1, "absent"), headers={"If-None-Match": "*"}).status == 204


def test_a_compare_and_set_chain_survives_a_node_kill(tmp_path: Path) -> None:
    """A chain of If-Match writes through every node, one node SIGKILLed in the middle and
    restarted on its data: every link succeeds, and the last one is what everyone reads."""
    cluster = StaticCluster(tmp_path).start()
    try:
        version = json.loads(http("PUT", kv(cluster, 0, "chain"), b"0",
                                  {"If-None-Match": "*"}).body)["version"]
        for step in range(1, 61):
            if step == 20:
                cluster.nodes[2].kill(signal.SIGKILL)
            if step == 40:
                cluster.nodes[2].start()
                cluster.wait_ready(cluster.nodes[2])
            via = step % 2 if 20 <= step < 40 else step % 3
            r = http("PUT", kv(cluster, via, "chain"), f"{step}".encode(), {"If-Match": f'"{version}"'})
            assert r.status == 200, (step, r.status, r.body)
            version = r.json()["version"]
            stale = http("PUT", kv(cluster, via, "chain"), b"stale", {"If-Match": '"1.node-0"'})
            assert stale.status == 412
        for i in range(3):
            assert http("GET", kv(cluster, i, "chain", "?consistency=serial")).body == b"60"
            assert http("GET", kv(cluster, i, "chain")).body == b"60"
    finally:
        cluster.stop()


def test_the_clients_update_helper_loses_no_update(shared3: StaticCluster) -> None:
    """`Client.update` and `AsyncClient.update` (a compare-and-set loop with backoff) from
    racing threads and tasks: every update counts once."""
    urls = [n.url for n in shared3.nodes]
    # What this checks is that no update is lost, not how soon each wins: ten updaters of
    # one key on a loaded machine can keep one from winning for the helper's default 10 s.
    patience = 120.0

    def add_one(value: bytes | None) -> str:
        return str(int(value or b"0") + 1)

    def sync_updater(i: int) -> None:
        with Client(urls[i % 3], token=API_TOKEN) as c:
            for _ in range(10):
                c.update("updated", add_one, timeout=patience)

    async def async_updaters() -> None:
        async with AsyncClient(urls, token=API_TOKEN) as c:
            async def one() -> None:
                for _ in range(10):
                    await c.update("updated", add_one, timeout=patience)

            await asyncio.gather(*(one() for _ in range(5)))

    threads = [threading.Thread(target=sync_updater, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    asyncio.run(async_updaters())
    for t in threads:
        t.join(120)
    assert http("GET", kv(shared3, 0, "updated", "?consistency=serial")).body == b"100"


def test_incr_from_the_client_and_the_cli(shared3: StaticCluster,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    url = ",".join(n.url for n in shared3.nodes)
    with Client(url, token=API_TOKEN) as c:
        assert c.incr("cli-counter") == 1
        assert c.incr("cli-counter", 41, ttl=3600) == 42
    assert cli.main(["--url", url, "--token", API_TOKEN, "incr", "cli-counter", "-2"]) == 0
    assert capsys.readouterr().out == "40\n"
    assert http("PUT", kv(shared3, 0, "cli-text"), b"x").status == 200
    assert cli.main(["--url", url, "--token", API_TOKEN, "incr", "cli-text"]) == 3
    assert "not a decimal integer" in capsys.readouterr().err


def decisions(data_dir: str) -> dict[str, str]:
    """key -> the version of the newest decision a node's Paxos table holds."""
    db = sqlite3.connect(f"file:{data_dir}/ringkv.sqlite3?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT key, committed_hlc, committed_node FROM paxos").fetchall()
    finally:
        db.close()
    return {key.decode(): f"{hlc}.{node}" for key, hlc, node in rows}


def test_a_wiped_replica_sits_rounds_out_and_rebuilds_with_the_paxos_states(
        tmp_path: Path) -> None:
    """3 nodes, rf 3: keys created by conditional writes; node-1 stopped (a member still: a
    cluster of rf members drops no one) and node-2 wiped. With one trusted replica up,
    plain quorum writes go on (node-2 stores them), but conditional writes answer 503: the
    wiped node neither promises nor accepts. Once node-1 is back, node-2 rebuilds, with the
    Paxos states of its ranges (each key's decision, read from its database), and no key
    is ever created twice."""
    cluster = LocalCluster(tmp_path, nodes=3, rf=3).start()
    try:
        urls = [cluster.url(i) for i in range(3)]
        created = {}
        for i in range(30):
            r = http("PUT", f"{urls[i % 3]}/v1/kv/once/{i}", b"x", {"If-None-Match": "*"})
            assert r.status == 201, (r.status, r.body)
            created[f"once/{i}"] = r.json()["version"]
        data_dir = str(cluster.control.node("node-2")["data_dir"])
        cluster.control.stop("node-1")
        cluster.control.stop("node-2")
        wait_for(lambda: not any(cluster.control.node(n)["alive"] for n in ("node-1", "node-2")),
                 60, "node-1 and node-2 stopped")
        shutil.rmtree(data_dir)
        epoch = cluster.cluster_info(urls[0])["epoch"]
        cluster.control.start("node-2")

        def node2_untrusted() -> bool:
            members = {m["name"]: m for m in cluster.cluster_info(urls[0])["members"]}
            return bool(members["node-2"]["reachable"]) and members["node-2"]["trusted"] is False

        wait_for(node2_untrusted, 60, "node-2 up with data nobody admitted")
        assert http("PUT", f"{urls[0]}/v1/kv/plain", b"p").status == 200
        for key in ("once/0", "fresh"):
            r = http("PUT", f"{urls[0]}/v1/kv/{key}", b"again", {"If-None-Match": "*"})
            assert r.status == 503 and r.json()["error"]["code"] == "quorum_unavailable", (key, r.body)

        cluster.control.start("node-1")
        cluster.wait_settled(3, epoch)
        held = decisions(data_dir)
        assert {k: held.get(k) for k in created} == created
        for i, key in enumerate(created):
            r = http("PUT", f"{urls[i % 3]}/v1/kv/{key}", b"again", {"If-None-Match": "*"})
            assert r.status == 412, (key, r.status, r.body)
        assert http("PUT", f"{urls[2]}/v1/kv/fresh", b"1", {"If-None-Match": "*"}).status == 201
    finally:
        cluster.stop()
