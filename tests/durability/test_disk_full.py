"""A full disk: writes fail cleanly (507/503 JSON), reads and stored data survive, and
writes work again once there is space, without a restart.

The data directory lives on a small tmpfs that the test mounts (root only) and grows with
`mount -o remount,size=...` to "free" space.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from harness import NodeProcess, Response, StaticCluster, http, wait_for

pytestmark = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="mounting a tmpfs as a node's data directory needs root",
)
VALUE_BYTES = 256 * 1024
FULL_STATUSES = {507: "insufficient_storage", 503: "quorum_unavailable"}


@contextmanager
def tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    """A tmpfs at `mountpoint`, unmounted afterwards whatever happened in between."""
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def resize(mountpoint: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mountpoint)], check=True)


def is_full(mountpoint: Path) -> bool:
    return os.statvfs(mountpoint).f_bavail == 0


def place_data_on(node: NodeProcess, mountpoint: Path) -> None:
    node.data_dir = mountpoint / node.name
    node.data_dir.mkdir()
    node.env["RINGKV_DATA_DIR"] = str(node.data_dir)


# Anti-entropy every 2 s instead of every 10 minutes, so the test can wait for it.
ANTI_ENTROPY = {"RINGKV_ANTI_ENTROPY_INTERVAL": "2"}


def replica_versions(cluster: StaticCluster, key: str) -> dict[str, str | None]:
    """Each replica's own version of the key (None: missing), read without repairing."""
    reps = http("GET", f"{cluster.url(1)}/v1/replicas/{key}").json()["replicas"]
    return {rep["node"]: rep.get("version") for rep in reps}


def value_for(i: int) -> bytes:
    """Distinct, incompressible-looking, reproducible values."""
    return (f"{i:08d}".encode() + bytes(range(256)) * 4) * (VALUE_BYTES // 1032)


def assert_full_error(r: Response) -> None:
    """A write refused for lack of space: 507 (or 503 through a peer), JSON, never 500."""
    assert r.status in FULL_STATUSES, (r.status, r.body)
    error = r.json()["error"]
    assert error["code"] == FULL_STATUSES[r.status] and error["message"], error


def read_back(url: str, acked: dict[str, tuple[bytes, str]]) -> None:
    for key, (value, version) in acked.items():
        got = http("GET", f"{url}/v1/kv/{key}")
        assert (got.status, got.headers.get("etag")) == (200, f'"{version}"'), key
        assert got.body == value, key


def test_single_node_disk_full(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "8m") as disk:
        cluster = StaticCluster(tmp_path, size=1, rf=1)
        node = cluster.nodes[0]
        place_data_on(node, disk)
        try:
            cluster.start()
            acked: dict[str, tuple[bytes, str]] = {}
            refused = 0
            for i in range(200):  # 8 MiB of 256 KiB values: full long before the end
                key = f"fill/{i:03d}"
                r = http("PUT", f"{node.url}/v1/kv/{key}", value_for(i))
                if r.status == 200:
                    acked[key] = (value_for(i), r.json()["version"])
                else:
                    assert_full_error(r)
                    refused += 1
                    if refused == 5:
                        break
            assert acked and refused == 5 and is_full(disk)
            assert node.alive, node.log_tail()
            read_back(node.url, acked)  # reads keep working on a full disk

            resize(disk, "64m")  # free space: no restart
            wait_for(lambda: http("PUT", f"{node.url}/v1/kv/after/0", value_for(1000)).status == 200,
                     30, "a write to succeed once there is space")
            for i in range(1, 6):
                r = http("PUT", f"{node.url}/v1/kv/after/{i}", value_for(1000 + i))
                assert r.status == 200, r.body
                acked[f"after/{i}"] = (value_for(1000 + i), r.json()["version"])
            read_back(node.url, acked)

            node.stop()  # what is on disk is a sound database holding every acked write
            with closing(sqlite3.connect(node.data_dir / "ringkv.sqlite3")) as db:
                assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            node.start()
            cluster.wait_ready(node)
            read_back(node.url, acked)
        finally:
            cluster.stop()


def fill_node0(cluster: StaticCluster, disk: Path, misses: int = 6) -> dict[str, tuple[bytes, str]]:
    """Write through all three coordinators until node-0 has missed `misses` writes for lack
    of space; every write is still acknowledged (quorum via node-1 and node-2)."""
    acked: dict[str, tuple[bytes, str]] = {}
    missed = 0
    for i in range(200):
        key = f"fill/{i:03d}"
        r = http("PUT", f"{cluster.url(i % 3)}/v1/kv/{key}", value_for(i))
        assert r.status == 200, (i, r.status, r.body)
        acked[key] = (value_for(i), r.json()["version"])
        if is_full(disk):
            def held(key: str = key) -> dict[str, str | None]:
                return replica_versions(cluster, key)

            # The ack needs two replicas; the third may apply the write a moment later.
            version = acked[key][1]
            wait_for(lambda held=held, version=version: held()["node-1"] == held()["node-2"] == version,
                     30, f"{key} on node-1 and node-2")
            missed += held()["node-0"] is None
            if missed == misses:
                return acked
    raise AssertionError("node-0's disk never filled")


def test_one_full_replica_of_three(tmp_path: Path) -> None:
    """node-0's disk fills; quorum writes go on through every coordinator via the other two."""
    with tmpfs(tmp_path / "disk", "8m") as disk:
        cluster = StaticCluster(tmp_path, size=3, rf=3, extra_env=ANTI_ENTROPY)
        place_data_on(cluster.nodes[0], disk)
        try:
            cluster.start()
            acked = fill_node0(cluster, disk)
            assert all(n.alive for n in cluster.nodes)
            for c in range(3):
                read_back(cluster.url(c), acked)
                assert_full_error(http("PUT", f"{cluster.url(c)}/v1/kv/needs-all?consistency=all",
                                       value_for(9999)))

            def node0_missing() -> list[str]:
                """Keys whose newest version node-0 does not hold, from its own copy:
                `/v1/replicas` reads each replica without repairing it, so only hints
                and anti-entropy can have delivered them (a GET through node-0 would
                read-repair them and prove nothing)."""
                return [k for k, (_, version) in acked.items()
                        if replica_versions(cluster, k)["node-0"] != version]

            assert node0_missing(), "node-0 missed writes while full"
            resize(disk, "64m")
            # Writes that node-0 coordinated while full left no hint (it had no room for
            # one): those come back through anti-entropy, the rest as hints.
            wait_for(lambda: not node0_missing(), 120, "node-0 to receive every write it missed",
                     interval=0.5)
            r = http("PUT", f"{cluster.url(0)}/v1/kv/needs-all?consistency=all", b"fits now")
            assert r.status == 200, r.body
        finally:
            cluster.stop()


def test_full_replica_is_reported_as_full_through_its_peers(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "8m") as disk:
        cluster = StaticCluster(tmp_path, size=3, rf=3)
        place_data_on(cluster.nodes[0], disk)
        try:
            cluster.start()
            fill_node0(cluster, disk, misses=2)
            r = http("PUT", f"{cluster.url(1)}/v1/kv/needs-all?consistency=all", value_for(9999))
            assert (r.status, r.json()["error"]["code"]) == (507, "insufficient_storage"), r.body
            # What RingkvInsufficientStorage counts (charts/ringkv/alerts/nodes.yaml).
            metrics = http("GET", cluster.url(1) + "/metrics", token=None).body.decode()
            assert 'ringkv_errors_total{code="insufficient_storage"}' in metrics
            log = cluster.nodes[0].log_path.read_text()
            assert "Traceback" not in log, log[-2000:]
        finally:
            cluster.stop()
