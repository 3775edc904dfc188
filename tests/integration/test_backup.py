"""`ringkv backup` and `ringkv restore` as real processes against real node processes.

What a backup promises: every write acknowledged before it began is in it, each key once,
at that version or a newer one, with its value, content type, tombstone and expiry; a
failed backup leaves nothing that looks complete. What a restore promises: the same keys
at the same versions in a cluster of any size, a newer write always stays, a damaged
archive is refused (naming the part) before anything is written, and twice is once.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgpack
import pytest
from harness import API_TOKEN, StaticCluster, http, wait_for

from ringkv.client import AsyncClient
from ringkv.client.archive import MANIFEST, Manifest, read_part
from ringkv.client.targets import PARTIAL

Records = dict[bytes, list[Any]]


def start(root: Path, size: int, rf: int = 3, **env: str) -> StaticCluster:
    root.mkdir(parents=True)
    return StaticCluster(root, size=size, rf=rf, extra_env=env).start()


@pytest.fixture
def clusters() -> Iterator[list[StaticCluster]]:
    """Clusters a test starts; all stopped afterwards."""
    started: list[StaticCluster] = []
    try:
        yield started
    finally:
        for cluster in started:
            cluster.stop()


def urls(cluster: StaticCluster) -> str:
    return ",".join(n.url for n in cluster.nodes if n.alive)


def ringkv(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it."""
    env = {**os.environ, "RINGKV_TOKEN": API_TOKEN}
    return subprocess.run([sys.executable, "-m", "ringkv.client.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def start_backup(cluster: StaticCluster, to: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "RINGKV_TOKEN": API_TOKEN}
    return subprocess.Popen(
        [sys.executable, "-m", "ringkv.client.cli", "backup", "--url", urls(cluster), "--to",
         str(to), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def backup(cluster: StaticCluster, to: Path, *args: str) -> Path:
    done = ringkv("backup", "--url", urls(cluster), "--to", str(to), "--parts", "8", *args)
    assert done.returncode == 0, done.stderr
    return Path(json.loads(done.stdout)["backup"])


def restore(cluster: StaticCluster, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return ringkv("restore", "--url", urls(cluster), str(path), *args)


def archived(path: Path) -> Records:
    """Every record of a backup, by key, read with the archive module."""
    manifest = Manifest.from_json((path / MANIFEST).read_bytes())
    out: Records = {}
    for info in manifest.parts:
        with open(path / info.file, "rb") as fh:
            for batch in read_part(fh, info):
                for rec in batch:
                    assert rec[0] not in out, "a key appears twice in the backup"
                    out[rec[0]] = rec
    assert len(out) == manifest.records
    return out


def kv(cluster: StaticCluster, key: str, i: int = 0, query: str = "") -> str:
    return f"{cluster.url(i)}/v1/kv/{quote(key, safe='/')}{query}"


def put(cluster: StaticCluster, key: str, value: bytes, i: int = 0, query: str = "",
        ctype: str = "text/plain") -> str:
    r = http("PUT", kv(cluster, key, i, query), value, {"Content-Type": ctype})
    assert r.status == 200, r.body
    return str(r.json()["version"])


def put_many(cluster: StaticCluster, count: int, prefix: str = "k", size: int = 10) -> dict[str, str]:
    """`count` keys written at once through every node; their versions."""
    async def run() -> dict[str, str]:
        async with AsyncClient(urls(cluster), token=API_TOKEN) as client:
            gate = asyncio.Semaphore(32)

            async def one(i: int) -> str:
                async with gate:
                    return await client.put(f"{prefix}{i}", b"%0*d" % (size, i))

            versions = await asyncio.gather(*(one(i) for i in range(count)))
        return {f"{prefix}{i}": v for i, v in enumerate(versions)}

    return asyncio.run(run())


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def put_ttl(cluster: StaticCluster, key: str, ttl: int) -> tuple[str, int]:
    """Write with a TTL: (version, the expiry every replica holds). The expiry is absolute,
    the coordinator's wall clock (this machine's) + ttl, read while the write was in
    flight. Not the version's time: the wall clock may tick between the two readings, and
    a version can run ahead of the wall clock."""
    before = wall_ms()
    version = put(cluster, key, b"soon gone", query=f"?ttl={ttl}")
    after = wall_ms()
    reps = http("GET", f"{cluster.url(0)}/v1/replicas/{quote(key)}").json()["replicas"]
    held = {r["expires_ms"] for r in reps if r.get("version") == version}
    assert len(held) == 1, reps
    (expires_ms,) = held
    assert before + ttl * 1000 <= expires_ms <= after + ttl * 1000
    return version, expires_ms


def delete(cluster: StaticCluster, key: str, i: int = 0) -> str:
    r = http("DELETE", kv(cluster, key, i))
    assert r.status == 204, r.body
    return r.headers["etag"].strip('"')


def order(version: str) -> tuple[int, str]:
    hlc, _, node = version.partition(".")
    return int(hlc), node


def read(cluster: StaticCluster, key: str, i: int = 0) -> tuple[int, bytes, str]:
    """(status, value, version) of a quorum read."""
    r = http("GET", kv(cluster, key, i))
    return r.status, r.body, r.headers.get("etag", "").strip('"')


def holds_tombstone(cluster: StaticCluster, key: str, version: str) -> None:
    """Every replica of the key comes to hold the tombstone `version`, and nothing else. A
    quorum acknowledged it; the last copy may still be on its way (or in a hint)."""
    def held() -> bool:
        reps = http("GET", f"{cluster.url(0)}/v1/replicas/{quote(key)}").json()["replicas"]
        return all(r["status"] == "ok" and r["version"] == version and r["live"] is False
                   for r in reps)

    wait_for(held, 120, f"every replica of {key} to hold the tombstone {version}")


class Writer(threading.Thread):
    """Client load: overwrites `keys` keys round robin and records when each write was
    acknowledged, so a test knows which writes came before a moment."""

    def __init__(self, cluster: StaticCluster, keys: int) -> None:
        super().__init__(daemon=True)
        self.cluster, self.keys = cluster, keys
        self.acks: list[tuple[float, str, str]] = []  # (acknowledged at, key, version)
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            key = f"load/{n % self.keys}"
            r = http("PUT", kv(self.cluster, key, n % len(self.cluster.nodes)), b"%d" % n, timeout=10)
            if r.status == 200:
                self.acks.append((time.time(), key, r.json()["version"]))
            n += 1

    def acknowledged_before(self, moment: float) -> dict[str, str]:
        """Per key, the newest version acknowledged before `moment`."""
        newest: dict[str, str] = {}
        for at, key, version in self.acks:
            if at < moment and (key not in newest or order(version) > order(newest[key])):
                newest[key] = version
        return newest


def test_backup_under_load_restores_into_a_bigger_cluster(tmp_path: Path,
                                                          clusters: list[StaticCluster]) -> None:
    """3 nodes, rf=3 -> 5 nodes, rf=2: every key acknowledged before the backup began reads
    back with its version; deletions stay deleted (as tombstones); TTL keys keep their
    expiry."""
    a = start(tmp_path / "a", 3)
    clusters.append(a)
    written = put_many(a, 400, "fixed/")
    written["big"] = put(a, "big", os.urandom(300_000), ctype="application/octet-stream")
    deleted = {f"fixed/{i}": delete(a, f"fixed/{i}", i % 3) for i in range(0, 400, 10)}
    ttl = {f"ttl/{i}": put_ttl(a, f"ttl/{i}", 3600) for i in range(20)}
    load = Writer(a, 200)
    load.start()
    wait_for(lambda: len(load.acks) > 300, 60, "the write load to cover every key")
    began = time.time()  # the backup process starts after this moment
    try:
        path = backup(a, tmp_path / "backups", "--parallel", "3")
    finally:
        load.stop.set()
        load.join()
    before = load.acknowledged_before(began)
    assert len(before) == 200 and any(at > began for at, _, _ in load.acks)  # written during it

    records = archived(path)
    for key, version in written.items():
        rec = records[key.encode()]
        assert rec[3] == deleted.get(key, version) and rec[4] is (key in deleted)
    assert records[b"fixed/1"][1:3] == [b"0000000001", "application/octet-stream"]
    for key, (version, expires_ms) in ttl.items():
        rec = records[key.encode()]
        assert rec[3] == version and rec[5] == expires_ms
    for key, version in before.items():
        assert order(records[key.encode()][3]) >= order(version)

    # Every node keeps the report and exports it as metrics, also after a restart.
    for node in a.nodes:
        metrics = http("GET", node.url + "/metrics", token=None).body.decode()
        assert f"ringkv_backup_last_records {float(len(records))}" in metrics
    a.nodes[2].stop()
    a.nodes[2].start()
    a.wait_ready(a.nodes[2])
    last = http("GET", a.url(2) + "/v1/backup/last").json()["last"]
    assert last["name"] == path.name and last["records"] == len(records)

    b = start(tmp_path / "b", 5, rf=2)
    clusters.append(b)
    done = restore(b, path)
    assert done.returncode == 0, done.stderr
    for i, (key, version) in enumerate(written.items()):
        status, _, got = read(b, key, i % 5)
        if key in deleted:
            assert status == 404
            holds_tombstone(b, key, deleted[key])
        else:
            assert status == 200 and got == version
    assert read(b, "fixed/7", 4)[1] == b"0000000007"
    for key, version in before.items():
        assert order(read(b, key, 1)[2]) >= order(version)
    # The new cluster backs up to exactly the same records: versions, values, content
    # types, tombstones and expiries all made it.
    assert archived(backup(b, tmp_path / "backups-b")) == records


def test_a_stale_replica_does_not_leak_into_the_backup(tmp_path: Path,
                                                      clusters: list[StaticCluster]) -> None:
    """Each page is read from a quorum of replicas and the newest version wins, even when
    the node asked holds an old copy and coordinates the whole backup."""
    # No hints (they expire unsent) and no anti-entropy: a node that missed writes stays behind.
    a = start(tmp_path / "a", 3, RINGKV_HINT_TTL="0", RINGKV_ANTI_ENTROPY_INTERVAL="3600")
    clusters.append(a)
    put_many(a, 200, size=3)
    a.nodes[2].stop()
    newer = put_many(a, 200, size=5)
    deleted = {f"k{i}": delete(a, f"k{i}") for i in range(0, 200, 20)}
    a.nodes[2].start()
    a.wait_ready(a.nodes[2])
    done = ringkv("backup", "--url", a.url(2), "--to", str(tmp_path / "backups"), "--parts", "4")
    assert done.returncode == 0, done.stderr
    records = archived(Path(json.loads(done.stdout)["backup"]))
    assert {k.decode(): r[3] for k, r in records.items()} == {**newer, **deleted}


def test_a_node_killed_mid_backup(tmp_path: Path, clusters: list[StaticCluster]) -> None:
    """The backup completes from the other replicas; with a quorum gone it fails, saying
    so, and leaves no backup behind."""
    # A byte cap on the export pace makes the backup last long enough to kill a node in it.
    a = start(tmp_path / "a", 3, RINGKV_HANDOFF_MAX_MB_PER_S="0.05")
    clusters.append(a)
    written = put_many(a, 3000, size=100)
    to = tmp_path / "backups"

    def partial_files() -> list[str]:
        partial = [p for p in to.glob("*" + PARTIAL)] if to.exists() else []
        return [f.name for p in partial for f in p.iterdir()]

    proc = start_backup(a, to, "--parts", "8", "--parallel", "3")
    try:
        wait_for(lambda: len(partial_files()) >= 2, 60, "the backup to be under way")
        assert proc.poll() is None, "the backup ended before a node could be killed"
        a.nodes[1].kill()
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    (path,) = [p for p in to.iterdir()]
    assert not path.name.endswith(PARTIAL)
    assert {k.decode(): r[3] for k, r in archived(path).items()} == written

    # Two of three replicas gone: no quorum for any key. The backup gives up after --wait,
    # says why, and deletes what it wrote.
    a.nodes[2].kill()
    done = ringkv("backup", "--url", urls(a), "--to", str(tmp_path / "failed"), "--wait", "3")
    assert done.returncode == 5, done.stderr
    assert "quorum unavailable" in done.stderr
    assert not (tmp_path / "failed").exists() or not list((tmp_path / "failed").iterdir())


def test_restore_into_a_running_cluster_keeps_newer_writes_and_twice_is_once(
        tmp_path: Path, cluster3: StaticCluster) -> None:
    a = cluster3
    old = put_many(a, 300)
    path = backup(a, tmp_path / "backups")
    newer = {f"k{i}": put(a, f"k{i}", b"new") for i in range(100)}
    gone = {f"k{i}": delete(a, f"k{i}") for i in range(100, 150)}
    fresh = put(a, "written-after", b"after")

    first = restore(a, path)
    assert first.returncode == 0, first.stderr
    for key, before in old.items():
        status, value, version = read(a, key, 1)
        if key in newer:
            assert (status, value, version) == (200, b"new", newer[key])
        elif key in gone:
            assert status == 404
            holds_tombstone(a, key, gone[key])
        else:
            assert (status, version) == (200, before)
    assert read(a, "written-after")[2] == fresh
    once = archived(backup(a, tmp_path / "after-one"))

    second = restore(a, path)
    assert second.returncode == 0, second.stderr
    assert archived(backup(a, tmp_path / "after-two")) == once


def test_damaged_archives_are_refused_before_anything_is_written(
        tmp_path: Path, clusters: list[StaticCluster]) -> None:
    a = start(tmp_path / "a", 3)
    clusters.append(a)
    put_many(a, 2000)
    good = backup(a, tmp_path / "backups")
    b = start(tmp_path / "b", 3)
    clusters.append(b)

    def damaged(name: str, harm: Any) -> Path:
        copy = tmp_path / name / good.name
        copy.mkdir(parents=True)
        for f in good.iterdir():
            (copy / f.name).write_bytes(f.read_bytes())
        harm(copy)
        return copy

    def flip(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x40
        path.write_bytes(bytes(data))

    def truncate(path: Path) -> None:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    cases = {
        "flipped": (lambda p: flip(p / "part-00003.rkv"), "part-00003.rkv: c"),
        "truncated": (lambda p: truncate(p / "part-00005.rkv"), "part-00005.rkv: truncated"),
        "missing": (lambda p: (p / "part-00001.rkv").unlink(), "part-00001.rkv: missing"),
        "no-manifest": (lambda p: (p / MANIFEST).unlink(), "no manifest.json"),
        "future": (lambda p: (p / MANIFEST).write_text(
            (p / MANIFEST).read_text().replace('"format_version": 1', '"format_version": 2')),
            "format version 2"),
    }
    for name, (harm, said) in cases.items():
        done = restore(b, damaged(name, harm))
        assert done.returncode == 6 and said in done.stderr, (name, done.stderr)
    done = restore(b, damaged("flipped-dry", cases["flipped"][0]), "--dry-run")
    assert done.returncode == 6 and "part-00003.rkv" in done.stderr
    partial = tmp_path / "backups" / (good.name + PARTIAL)
    partial.mkdir()
    done = restore(b, partial)
    assert done.returncode == 6 and "never completed" in done.stderr

    dry = restore(b, good, "--dry-run")
    assert dry.returncode == 0 and '"verified": true' in dry.stdout
    assert "merged" not in dry.stdout
    # Nothing reached the target cluster.
    assert http("GET", f"{b.url(0)}/v1/kv?limit=10").json()["keys"] == []
    assert archived(backup(b, tmp_path / "empty")) == {}


def test_progress_is_a_bar_on_a_terminal_and_json_lines_in_a_log(tmp_path: Path,
                                                                  shared3: StaticCluster) -> None:
    """The tool decides by its own stderr: a terminal gets a bar redrawn in place, a pipe
    (a CronJob's log) one JSON object a line."""
    put_many(shared3, 300, "progress/")
    terminal, tool_side = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ringkv.client.cli", "backup", "--url", urls(shared3), "--to",
         str(tmp_path / "backups")], env={**os.environ, "RINGKV_TOKEN": API_TOKEN},
        stdout=subprocess.PIPE, stderr=tool_side, text=True)
    os.close(tool_side)
    screen: list[bytes] = []

    def watch() -> None:
        while True:
            try:
                chunk = os.read(terminal, 4096)
            except OSError:  # EIO: the tool closed the terminal
                return
            if not chunk:
                return
            screen.append(chunk)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
        watcher.join(10)
        os.close(terminal)
    assert proc.returncode == 0
    drawn = b"".join(screen).decode()
    assert drawn.startswith("\rbackup  [") and "] 100.0%  " in drawn and "{" not in drawn, drawn

    logged = restore(shared3, Path(json.loads(out)["backup"]), "--dry-run")
    assert logged.returncode == 0, logged.stderr
    lines = [json.loads(line) for line in logged.stderr.splitlines()]
    assert lines[-1]["event"] == "done" and lines[-1]["phase"] == "verify"
    assert lines[-1]["records"] >= 300 and "\r" not in logged.stderr


def test_backup_endpoints_answer_bad_input_with_a_4xx(shared3: StaticCluster) -> None:
    base = shared3.url(0) + "/v1/backup"
    record = [b"k", b"v", "text/plain", "1.node-0", False, 0]
    refused = [
        ("GET", "/export", b""),  # parts and part are required
        ("GET", "/export?parts=4&part=4", b""),
        ("GET", "/export?parts=0&part=0", b""),
        ("GET", "/export?parts=4&part=1&limit=0", b""),
        ("GET", "/export?parts=4&part=1&cursor=nonsense", b""),
        ("GET", "/export?parts=4&part=1&colour=red", b""),
        ("POST", "/import", b""),
        ("POST", "/import?x=1", msgpack.packb([record])),
        ("POST", "/import", b"\xc1"),  # not msgpack
        ("POST", "/import", msgpack.packb([record]) + b"\x00"),  # trailing bytes
        ("POST", "/import", msgpack.packb({"k": 1})),
        ("POST", "/import", msgpack.packb([])),
        ("POST", "/import", msgpack.packb([record, record[:5]])),
        ("PUT", "/last", b"{"),
        ("PUT", "/last", json.dumps({"name": "x", "started": 2, "finished": 1, "records": 0,
                                     "bytes": 0}).encode()),
    ]
    for method, path, body in refused:
        r = http(method, base + path, body)
        assert r.status == 400, (path, r.body)
        assert r.json()["error"]["code"] == "bad_request"
    said = http("POST", base + "/import", msgpack.packb([record, record[:5]])).json()
    assert said["error"]["message"].startswith("record 1: ")
    big = http("POST", base + "/import", b"\x00" * (1024 * 1024 + 4 * 1024 * 1024 + 1))
    assert big.status == 413 and big.json()["error"]["code"] == "payload_too_large"
    assert http("GET", base + "/export?parts=1&part=0", token=None).status == 401
    assert http("DELETE", base + "/last").status == 405
