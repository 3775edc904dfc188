"""Membership changes with the real launcher and controller: lose a node, lose nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

from harness import API_TOKEN, LocalCluster, http, wait_for

from ringkv.client import Client


def write_keys(cluster: LocalCluster, prefix: str, count: int) -> dict[str, str]:
    """Write `count` keys through all live nodes; returns key -> acknowledged version."""
    versions = {}
    with Client(cluster.urls(), token=API_TOKEN) as client:
        for i in range(count):
            key = f"{prefix}/{i:04d}"
            versions[key] = client.put(key, f"{prefix}-{i}".encode())
    return versions


def assert_replicated(cluster: LocalCluster, versions: dict[str, str], copies: int) -> None:
    """Every key has exactly `copies` target replicas holding the acknowledged version, and
    no node holds copies of ranges it does not replicate (cluster-wide record count)."""
    via = cluster.urls()[0]
    for key, version in versions.items():
        reps = http("GET", f"{via}/v1/replicas/{key}").json()["replicas"]
        target = [r for r in reps if r["in_target"]]
        assert len(target) == copies, (key, reps)
        assert all(r["status"] == "ok" and r["version"] == version and r["live"] for r in target), (
            key, version, reps)

    def counts_match() -> bool:
        info = cluster.cluster_info()
        return sum(m["records"] for m in info["members"]) == copies * len(versions)

    wait_for(counts_match, 60, f"exactly {copies} copies of every key (excess dropped)")


def read_all(cluster: LocalCluster, versions: dict[str, str]) -> None:
    with Client(cluster.urls(), token=API_TOKEN) as client:
        for key, version in versions.items():
            assert client.get(key).version == version, key


def test_killed_node_is_replaced_and_returns_with_missed_writes(local5: LocalCluster) -> None:
    before = write_keys(local5, "before", 150)
    epoch = local5.cluster_info()["epoch"]
    # Keep the node down long enough to see the 4-node epoch settle.
    local5.control.stop("node-2")
    info = local5.wait_settled(4, epoch)
    assert "node-2" not in [m["name"] for m in info["members"]]
    assert_replicated(local5, before, 3)
    during = write_keys(local5, "during", 100)
    read_all(local5, before)
    # The pod returns on its old (stale) data directory, rejoins and catches up.
    local5.control.start("node-2")
    info = local5.wait_settled(5, info["epoch"])
    node2 = next(m for m in info["members"] if m["name"] == "node-2")
    assert node2["state"] == "normal"
    assert_replicated(local5, {**before, **during}, 3)
    # node-2 itself holds the writes it missed, for the keys it replicates.
    with Client(local5.url(2), token=API_TOKEN) as client:
        held = [k for k in during
                if "node-2" in [r["node"] for r in client.replicas(k)["replicas"] if r["in_target"]]]
    assert held, "node-2 should replicate some of the keys written while it was away"
    for key in held:
        reps = http("GET", f"{local5.url(2)}/v1/replicas/{key}").json()["replicas"]
        mine = next(r for r in reps if r["node"] == "node-2")
        assert mine["version"] == during[key]


def test_sigkilled_node_restarts_and_cluster_settles(local5: LocalCluster) -> None:
    keys = write_keys(local5, "k", 100)
    epoch = local5.cluster_info()["epoch"]
    local5.control.kill("node-1")
    # Removed, re-replicated, restarted after the delay, rejoined, settled.
    local5.wait_settled(5, epoch + 2)
    assert_replicated(local5, keys, 3)
    read_all(local5, keys)


def test_wiped_node_rejoins_as_fresh_and_receives_its_ranges(local5: LocalCluster) -> None:
    keys = write_keys(local5, "w", 150)
    node = local5.control.node("node-3")
    epoch = local5.cluster_info()["epoch"]
    local5.control.stop("node-3")
    info = local5.wait_settled(4, epoch)
    shutil.rmtree(node["data_dir"])
    local5.control.start("node-3")
    local5.wait_settled(5, info["epoch"])
    assert_replicated(local5, keys, 3)
    status = http("GET", f"{local5.url(3)}/v1/cluster").json()
    mine = next(m for m in status["members"] if m["name"] == "node-3")
    assert mine["records"] > 0


def test_two_removed_for_good_then_a_third(local5: LocalCluster) -> None:
    keys = write_keys(local5, "seed", 120)
    epoch = local5.cluster_info()["epoch"]
    local5.control.stop("node-4")
    info = local5.wait_settled(4, epoch)
    local5.control.stop("node-3")
    info = local5.wait_settled(3, info["epoch"])
    assert sorted(m["name"] for m in info["members"]) == ["node-0", "node-1", "node-2"]
    more = write_keys(local5, "after-two", 50)
    assert_replicated(local5, {**keys, **more}, 3)
    read_all(local5, {**keys, **more})

    # A third: two live nodes can keep only two copies, and the cluster says so.
    local5.control.stop("node-2")
    info = local5.wait_settled(2, info["epoch"])
    assert info["replicas_per_key"] == 2 and info["rf"] == 3
    few = write_keys(local5, "after-three", 30)
    assert_replicated(local5, {**keys, **more, **few}, 2)

    # Nodes return: rf copies again.
    for name in ("node-2", "node-3"):
        local5.control.start(name)
    info = local5.wait_settled(4, info["epoch"])
    assert info["replicas_per_key"] == 3
    assert_replicated(local5, {**keys, **more, **few}, 3)


def test_node_added_takes_its_share(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, nodes=3, rf=3).start()
    try:
        keys = write_keys(cluster, "grow", 150)
        epoch = cluster.cluster_info()["epoch"]
        added = cluster.control.add()
        assert added["added"] == "node-3"
        cluster.wait_settled(4, epoch)
        assert_replicated(cluster, keys, 3)
        read_all(cluster, keys)
    finally:
        cluster.stop()
