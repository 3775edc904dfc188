"""Network partitions for real: `ringkv up --netns` puts each node in its own network
namespace on a bridge, and iptables DROP rules between node addresses cut links while the
test (the host) still reaches every node. Root only; skipped otherwise.

The pure helpers of ringkv.local.netns are tested first, without root. One 5-node
rf=3 cluster serves the module; each test heals the network at the end and
starts only when every node coordinates quorum writes again. Expectations are computed per
key from its replicas (`GET /v1/replicas/{key}`), so each assertion is exact: a side of a
partition serves a key at quorum if and only if it holds two of the key's three replicas.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness import API_TOKEN, LocalCluster, Response, http, wait_for

from ringkv.client.history import Op, check, parse_version
from ringkv.local import system_tools
from ringkv.local.netns import (
    IFNAMSIZ,
    NetnsError,
    bridge_name,
    cleanup_stale,
    describe,
    iptables_commands,
    isolate_rules,
    netns_name,
    node_address,
    one_way_rules,
    owner_of,
    partition_rules,
    pick_subnet,
    unusable_reason,
    used_subnets,
    veth_name,
)
from ringkv.local.workloads import Workload, final_reads, run_worker

REASON = unusable_reason()
needs_netns = pytest.mark.skipif(REASON is not None, reason=f"partition tests need namespaces: {REASON}")
PATH_WITHOUT_SBIN = os.pathsep.join(
    d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not d.rstrip("/").endswith("sbin"))


@pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root")
def test_ip_and_iptables_are_found_outside_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A clean-clone `make test` from a shell whose PATH lacked /usr/sbin skipped every
    partition test, though the tools were installed (`make test` installs them)."""
    monkeypatch.setenv("PATH", PATH_WITHOUT_SBIN)
    assert unusable_reason() is None
    assert system_tools.find("iptables") in {f"{d}/iptables" for d in system_tools.SBIN_DIRS}
    assert system_tools.resolve(["ip", "-V"])[0].endswith("/ip")


def test_names_fit_ifnamsiz_and_name_their_owner() -> None:
    pid_max, last = 4_194_304, 251
    for name in (bridge_name(pid_max), veth_name(pid_max, last)):
        assert len(name) < IFNAMSIZ, name
    assert [owner_of(n) for n in (bridge_name(42), netns_name(42, 3), veth_name(42, 10))] == [42, 42, 42]
    assert [owner_of(n) for n in ("eth0", "rk", "rkb", "rk12q3", "xrk12b", "rk12b3x")] == [None] * 6


def test_subnets_in_use_are_skipped() -> None:
    out = ("2: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\n"
           "9: rk1b    inet 10.213.7.1/24 scope global rk1b\n"
           "10: x    inet 10.213.8.1/23 scope global x\n")
    assert used_subnets(out) == {7, 8, 9}
    assert used_subnets("3: y    inet 10.0.0.1/8 scope global y") == set(range(256))
    assert pick_subnet({7, 8, 9}, owner=5) == 6
    assert pick_subnet({7, 8, 9}, owner=6) == 10
    with pytest.raises(NetnsError):
        pick_subnet(range(256), owner=1)
    assert node_address(7, 0) == "10.213.7.2" and node_address(7, 251) == "10.213.7.253"
    with pytest.raises(NetnsError):
        node_address(7, 252)


def test_partition_rules() -> None:
    split = partition_rules([["a", "b"], ["c", "d", "e"]])
    assert split == {"a": {"c", "d", "e"}, "b": {"c", "d", "e"}, "c": {"a", "b"}, "d": {"a", "b"},
                     "e": {"a", "b"}}
    assert partition_rules([["a"], ["b"]]) == {"a": {"b"}, "b": {"a"}}  # "c", in no group, keeps its links
    assert isolate_rules("b", ["a", "b", "c"]) == {"b": {"a", "c"}, "a": {"b"}, "c": {"b"}}
    assert one_way_rules("a", "b") == {"b": {"a"}}  # only b drops: b -> a still flows
    assert describe(one_way_rules("a", "b")) == "b<-a" and describe({}) == "none"
    with pytest.raises(ValueError, match="two groups"):
        partition_rules([["a", "b"], ["b", "c"]])
    with pytest.raises(ValueError):
        one_way_rules("a", "a")
    assert iptables_commands(["10.213.1.4", "10.213.1.3"]) == [
        ["iptables", "-w", "-F", "INPUT"],
        ["iptables", "-w", "-A", "INPUT", "-s", "10.213.1.3", "-j", "DROP"],
        ["iptables", "-w", "-A", "INPUT", "-s", "10.213.1.4", "-j", "DROP"],
    ]


@pytest.fixture(scope="module")
def net5(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # A PATH without the sbin directories, as a non-login shell often has: the launcher
    # must find `ip` and `iptables` where Debian puts them anyway.
    cluster = LocalCluster(tmp_path_factory.mktemp("netns"), nodes=5, rf=3, netns=True,
                           extra_env={"RINGKV_ANTI_ENTROPY_INTERVAL": "2", "PATH": PATH_WITHOUT_SBIN})
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def net(net5: LocalCluster) -> Iterator[LocalCluster]:
    """The shared cluster, whole: every node reaches every other one and coordinates a
    quorum write, and the network is healed again after the test. (A quorum write alone
    would pass with one of a node's links still down after the last test's partition.)"""
    probe = f"probe-{secrets.token_hex(4)}"
    for url in urls(net5).values():
        wait_for(lambda url=url: reaches_all(url) and put(url, probe, "x").status == 200, 90,
                 f"{url} to reach every node and serve quorum writes")
    try:
        yield net5
    finally:
        net5.control.heal()


def urls(cluster: LocalCluster) -> dict[str, str]:
    return {n["name"]: n["url"] for n in cluster.control.nodes()}


def _path(key: str) -> str:
    return urllib.parse.quote(key, safe="")


def put(url: str, key: str, value: str) -> Response:
    return http("PUT", f"{url}/v1/kv/{_path(key)}?consistency=quorum", value.encode(), timeout=30)


def get(url: str, key: str) -> Response:
    return http("GET", f"{url}/v1/kv/{_path(key)}?consistency=quorum", timeout=30)


def replica_set(url: str, key: str) -> list[str]:
    r = http("GET", f"{url}/v1/replicas/{_path(key)}")
    assert r.status == 200, r.body
    return [e["node"] for e in r.json()["replicas"] if e["in_target"]]


def reaches_all(url: str) -> bool:
    r = http("GET", f"{url}/v1/cluster", timeout=30)
    return r.status == 200 and all(m["reachable"] for m in r.json()["members"])


def converged(url: str, key: str, version: str) -> bool:
    """Every target replica holds the same version of ``key``, ``version`` or newer (a write
    refused with 503 may still have reached one replica and win later: it was not lost,
    only not acknowledged)."""
    r = http("GET", f"{url}/v1/replicas/{_path(key)}", timeout=10)
    entries = [e for e in r.json()["replicas"] if e["in_target"]] if r.status == 200 else []
    held = {e.get("version") for e in entries if e["status"] == "ok"}
    if len(entries) != 3 or len(held) != 1 or None in held:
        return False
    return parse_version(str(held.pop())) >= parse_version(version)


def assert_refused(r: Response) -> None:
    """503 quorum_unavailable, never a value."""
    assert r.status == 503, (r.status, r.body)
    assert json.loads(r.body)["error"]["code"] == "quorum_unavailable", r.body


@needs_netns
@pytest.mark.timeout(300)
def test_isolated_node_refuses_quorum_and_never_serves_stale_data(net: LocalCluster) -> None:
    nodes = urls(net)
    key, other = f"iso-{secrets.token_hex(4)}/k", f"iso-{secrets.token_hex(4)}/unreplicated"
    first = put(nodes["node-0"], key, "old")
    assert first.status == 200, first.body
    isolated = replica_set(nodes["node-0"], key)[0]  # it holds "old"
    majority = [n for n in sorted(nodes) if n != isolated]

    net.control.partition({"isolate": isolated})
    written = put(nodes[majority[0]], key, "new")
    assert written.status == 200, written.body
    version = written.json()["version"]

    assert_refused(get(nodes[isolated], key))  # never "old"
    assert_refused(put(nodes[isolated], other, "cannot replicate"))
    for name in majority:  # the majority side keeps serving reads and writes
        r = get(nodes[name], key)
        assert (r.status, r.body) == (200, b"new"), (name, r.status, r.body)
        assert get(nodes[name], other).status == 404  # the refused write is not served
    assert put(nodes[majority[-1]], f"{key}-more", "v").status == 200

    net.control.heal()
    wait_for(lambda: converged(nodes[majority[0]], key, version), 90, f"{key} on every replica")
    r = get(nodes[isolated], key)
    assert (r.status, r.body) == (200, b"new")


def _keys_by_side(
    url: str, small: set[str], per_side: int
) -> tuple[dict[str, list[str]], dict[str, set[str]]]:
    """Keys whose replicas put a quorum (2 of 3) on the small side, and on the big side."""
    chosen: dict[str, list[str]] = {"small": [], "big": []}
    owners: dict[str, set[str]] = {}
    prefix = f"split-{secrets.token_hex(4)}"
    for i in range(400):
        key = f"{prefix}/k{i}"
        replicas = set(replica_set(url, key))
        side = "small" if len(replicas & small) >= 2 else "big"
        if len(chosen[side]) < per_side:
            chosen[side].append(key)
            owners[key] = replicas
        if all(len(v) == per_side for v in chosen.values()):
            return chosen, owners
    raise AssertionError(f"no split of the keys found: {chosen}")


@needs_netns
@pytest.mark.timeout(300)
def test_split_2_3_each_side_serves_exactly_the_keys_it_holds_a_quorum_of(net: LocalCluster) -> None:
    nodes = urls(net)
    names = sorted(nodes)
    small = set(replica_set(nodes[names[0]], "split-anchor")[:2])  # some keys live mostly there
    big = set(names) - small
    keys, owners = _keys_by_side(nodes[names[0]], small, per_side=3)
    for key in owners:
        assert put(nodes[names[0]], key, "before").status == 200

    net.control.partition({"groups": [sorted(small), sorted(big)]})
    sides = {"small": sorted(small), "big": sorted(big)}
    with ThreadPoolExecutor(max_workers=12) as pool:
        # A write through each side: only the side with two of the key's replicas acks it.
        writes = {(key, side): pool.submit(put, nodes[sides[side][0]], key, f"by-{side}")
                  for key in owners for side in sides}
        acked: dict[str, tuple[str, str]] = {}
        for (key, side), future in writes.items():
            r = future.result()
            if key in keys[side]:
                assert r.status == 200, (key, side, owners[key], r.body)
                acked[key] = (f"by-{side}", r.json()["version"])
            else:
                assert_refused(r)
        # A read through every node: the quorum side returns the acknowledged value.
        reads = {(key, name): pool.submit(get, nodes[name], key) for key in owners for name in names}
        for (key, name), future in reads.items():
            r = future.result()
            side = "small" if name in small else "big"
            if key in keys[side]:
                assert (r.status, r.body.decode()) == (200, acked[key][0]), (key, name, r.body)
            else:
                assert_refused(r)

    net.control.heal()
    for key, (_, version) in acked.items():
        wait_for(lambda key=key, version=version: converged(nodes[names[0]], key, version), 90,
                 f"{key} on every replica")


@needs_netns
@pytest.mark.timeout(300)
def test_one_way_link_loses_no_acked_write_and_serves_no_stale_read(net: LocalCluster) -> None:
    nodes = urls(net)
    names = sorted(nodes)
    prefix = f"oneway-{secrets.token_hex(4)}"
    # A link between two replicas of the first key: its coordinators lose a peer one way.
    source, target = replica_set(nodes[names[0]], f"{prefix}/k0")[:2]
    net.control.partition({"one_way": [source, target]})
    state = net.control.net()
    assert state["dropped"] == {target: [source]}

    work = Workload(list(nodes.values()), API_TOKEN, 5.0, [f"{prefix}/k{i}" for i in range(5)],
                    0.5, "quorum", 1, time.monotonic())
    per_worker: list[list[Op]] = [[] for _ in range(4)]
    threads = [threading.Thread(target=run_worker, args=(work, i, per_worker[i])) for i in range(4)]
    for t in threads:
        t.start()
    try:
        def enough() -> bool:
            done = [op for ops in per_worker for op in list(ops)]
            return sum(op.kind == "write" and op.outcome == "ok" for op in done) >= 150 and \
                sum(op.kind == "read" and op.outcome == "ok" for op in done) >= 150
        wait_for(enough, 120, "150 acknowledged writes and 150 ok reads under the one-way link",
                 interval=0.2)
    finally:
        work.stop.set()
        for t in threads:
            t.join(60)
    net.control.heal()
    ops = [op for ops in per_worker for op in ops]
    finals = final_reads(work, 60)
    verdict = check(ops + finals)
    assert verdict.valid, verdict.summary()
    assert verdict.acknowledged_writes >= 150 and verdict.final_reads == len(work.keys), verdict.summary()
    for final in finals:
        if final.version is not None:
            wait_for(lambda final=final: converged(nodes[names[0]], final.key, str(final.version)), 90,
                     f"{final.key} on every replica")


@needs_netns
@pytest.mark.timeout(300)
def test_partition_requests_are_validated(net: LocalCluster) -> None:
    for body in ({"isolate": "node-99"}, {"groups": [["node-0"], ["node-0", "node-1"]]},
                 {"one_way": ["node-1", "node-1"]}, {"groups": "node-0"}, {}):
        r = http("POST", net.control.url + "/net/partition", json.dumps(body).encode())
        assert r.status == 400, (body, r.status, r.body)
        assert "error" in r.json()
    assert net.control.net()["dropped"] == {}


def _leftovers(owner: int) -> list[str]:
    """Namespaces and interfaces still named after launcher ``owner``."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    names += [part.strip().split("@")[0] for line in links.splitlines() for part in line.split(":")[1:2]]
    return [n for n in names if owner_of(n) == owner]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@needs_netns
@pytest.mark.timeout(300)
def test_a_crashed_launchers_namespaces_and_nodes_are_removed_by_the_next(tmp_path: Path) -> None:
    (tmp_path / "crashed").mkdir()
    (tmp_path / "next").mkdir()
    crashed = LocalCluster(tmp_path / "crashed", nodes=2, rf=2, netns=True)
    survivor = LocalCluster(tmp_path / "next", nodes=2, rf=2, netns=True)
    orphans: list[int] = []
    try:
        crashed.start()
        assert crashed.proc is not None
        owner = crashed.proc.pid
        orphans = [n["pid"] for n in crashed.control.nodes()]
        assert len(_leftovers(owner)) >= 5  # bridge, 2 namespaces, 2 veths
        crashed.proc.kill()  # SIGKILL: no teardown, the nodes keep running in their namespaces
        crashed.proc.wait(30)
        assert all(_alive(pid) for pid in orphans)

        survivor.start()  # creating its network removes the dead launcher's
        wait_for(lambda: not _leftovers(owner) and not any(_alive(p) for p in orphans), 60,
                 "the crashed launcher's namespaces and nodes to be gone")
        assert survivor.proc is not None
        live = survivor.proc.pid
        assert _leftovers(live)
        survivor.stop()  # SIGTERM: a clean teardown
        wait_for(lambda: not _leftovers(live), 60, "the stopped launcher's namespaces to be gone")
    finally:
        survivor.stop()
        for pid in orphans:  # only if the test failed before they were removed
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        cleanup_stale()
