"""A corrupt or truncated SQLite file: the node refuses to start, says which file and why,
and never serves an empty store as if it were its data; moved away, the node is rebuilt
from its replicas.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import API_TOKEN, LocalCluster, NodeProcess, StaticCluster, http, wait_for

from ringkv.client import Client

DB = "ringkv.sqlite3"
PAGE = 4096


def overwrite_header(data: bytes) -> bytes:
    return b"\xab" * 100 + data[100:]


def truncate_mid_file(data: bytes) -> bytes:
    return data[: len(data) // 2 + 123]


def garbage_page(data: bytes) -> bytes:
    """One b-tree page in the middle overwritten: the header still looks fine."""
    return data[: 5 * PAGE] + b"\xcd" * PAGE + data[6 * PAGE :]


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "header": overwrite_header, "truncated": truncate_mid_file, "page": garbage_page,
}


def write_keys(urls: list[str], prefix: str, count: int) -> dict[str, str]:
    """Write `count` keys through the given nodes; returns key -> acknowledged version."""
    with Client(urls, token=API_TOKEN) as client:
        return {f"{prefix}/{i:04d}": client.put(f"{prefix}/{i:04d}", f"{prefix}-{i}".encode() * 40)
                for i in range(count)}


def corrupt(data_dir: Path, how: Callable[[bytes], bytes]) -> Path:
    path = data_dir / DB
    assert not Path(f"{path}-wal").exists(), "a cleanly stopped node leaves no WAL behind"
    path.write_bytes(how(path.read_bytes()))
    return path


def exit_code(node: NodeProcess) -> int:
    assert node.proc is not None
    try:
        return node.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{node.name} kept running on a corrupt file:\n{node.log_tail()}") from None


@pytest.fixture
def stopped_node(tmp_path: Path) -> NodeProcess:
    """A one-node cluster that acknowledged 300 writes, cleanly stopped."""
    cluster = StaticCluster(tmp_path, size=1, rf=1)
    node = cluster.nodes[0]
    try:
        cluster.start()
        write_keys([node.url], "k", 300)
    finally:
        cluster.stop()
    return node


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_file_refuses_to_start(stopped_node: NodeProcess, kind: str) -> None:
    node = stopped_node
    path = corrupt(node.data_dir, CORRUPTIONS[kind])
    node.start()
    try:
        code = exit_code(node)
    finally:
        node.stop()
    assert code != 0
    errors = [line for line in node.log_path.read_text().splitlines() if " ERROR " in line]
    assert any(str(path) in line for line in errors), node.log_tail()
    assert not node.ready()  # it never opened its API on the corrupt file


@pytest.mark.parametrize("kind", [
    "header", "truncated",
    "page",
])
def test_refusal_tells_the_operator_what_to_do(stopped_node: NodeProcess, kind: str) -> None:
    node = stopped_node
    corrupt(node.data_dir, CORRUPTIONS[kind])
    node.start()
    try:
        exit_code(node)
    finally:
        node.stop()
    assert "Move the file away" in node.log_tail(), node.log_tail()


@pytest.mark.parametrize("kind", ["emptied", "moved away"])
def test_lost_file_is_rebuilt_and_never_served_as_an_empty_store(tmp_path: Path, kind: str) -> None:
    """A member whose database is gone (an empty file is a new, empty database) keeps
    running, rebuilds the file from its replicas, and reports ready only with its data
    back: its membership file, next to the database, says it was a member."""
    cluster = StaticCluster(tmp_path, size=3, rf=3)
    node = cluster.nodes[0]
    try:
        cluster.start()
        versions = write_keys([cluster.url(1), cluster.url(2)], "lost", 60)
        node.stop()
        path = node.data_dir / DB
        if kind == "emptied":
            path.write_bytes(b"")
        else:
            path.rename(tmp_path / "moved-away.sqlite3")
        node.start()

        def ready() -> bool:
            assert node.alive, f"{node.name} exited instead of rebuilding:\n{node.log_tail()}"
            return node.ready()

        wait_for(ready, 90, f"{node.name} to rebuild and be ready")
        log = node.log_tail(200)
        assert "serves no replica reads until it has rebuilt it" in log, log
        assert "rebuilt its data from its replicas" in log, log
        for key, version in versions.items():  # ready means it holds its data again
            reps = http("GET", f"{node.url}/v1/replicas/{key}").json()["replicas"]
            mine = next(r for r in reps if r["node"] == node.name)
            assert mine.get("version") == version, (key, reps)
    finally:
        cluster.stop()


@pytest.mark.parametrize("local5", [{"down_grace": 0}], indirect=True)
def test_corrupt_node_is_rebuilt_from_its_replicas(local5: LocalCluster) -> None:
    versions = write_keys(local5.urls(), "rebuild", 150)
    node = local5.control.node("node-3")
    data_dir = Path(node["data_dir"])
    log_path = data_dir.parent / "node-3.log"
    epoch = local5.cluster_info()["epoch"]
    local5.control.stop("node-3")
    info = local5.wait_settled(4, epoch)
    path = corrupt(data_dir, overwrite_header)

    # It refuses to start; the launcher keeps restarting it and every attempt says why.
    local5.control.start("node-3")
    wait_for(lambda: local5.control.node("node-3")["restarts"] >= 2,
             60, "the launcher to restart node-3 twice")
    refusals = [line for line in log_path.read_text().splitlines()
                if " ERROR " in line and str(path) in line and "refusing to start" in line]
    assert len(refusals) >= 2, log_path.read_text()[-3000:]
    with Client(local5.url(0), token=API_TOKEN) as client:  # meanwhile the others serve
        for key, version in versions.items():
            assert client.get(key).version == version, key

    # As the message says: move the file away. The next restart joins as a fresh node.
    moved = data_dir.parent / "node-3-corrupt"
    moved.mkdir()
    for stale in sorted(data_dir.glob(f"{DB}*"), reverse=True):  # the database itself last
        stale.rename(moved / stale.name)
    local5.wait_settled(5, info["epoch"])
    for key, version in versions.items():
        reps = http("GET", f"{local5.url(0)}/v1/replicas/{key}").json()["replicas"]
        target = [r for r in reps if r["in_target"]]
        assert len(target) == 3, (key, reps)
        assert all(r["status"] == "ok" and r["version"] == version for r in target), (key, reps)
    status = http("GET", f"{local5.url(3)}/v1/cluster").json()
    assert next(m for m in status["members"] if m["name"] == "node-3")["records"] > 0
