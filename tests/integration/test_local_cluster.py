"""`ringkv up` itself: its control endpoint (the token, 127.0.0.1 only, JSON answers to
bad input) and its ports (the whole block checked at start, nodes added only on usable
ports, a node that cannot bind given up on instead of restarted)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import API_TOKEN, LocalCluster, wait_for

from ringkv.local.ports import block, ephemeral_range, free_port_block, unusable

CLI = [sys.executable, "-m", "ringkv.client.cli"]


@pytest.fixture
def local3(tmp_path: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, nodes=3, rf=3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def control_call(cluster: LocalCluster, method: str, path: str,
                 token: str | None = API_TOKEN) -> tuple[int, dict[str, Any], dict[str, str]]:
    """A raw request to the control endpoint: status, JSON body, headers."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(cluster.control.url + path, method=method, headers=headers,
                                 data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.load(resp), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        assert exc.headers["Content-Type"].startswith("application/json"), exc.headers
        return exc.code, json.load(exc), dict(exc.headers)


def listening(port: int) -> socket.socket:
    """A socket listening on `port` (the port may still have connections in TIME_WAIT)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_the_control_endpoint_wants_the_token_and_answers_json(local3: LocalCluster) -> None:
    for token in (None, "wrong", API_TOKEN + "x"):
        status, body, _ = control_call(local3, "GET", "/nodes", token)
        assert status == 401 and "token" in body["error"], body
        status, _, _ = control_call(local3, "POST", "/nodes/node-1/kill", token)
        assert status == 401
    assert all(n["alive"] for n in local3.control.nodes())  # nothing was killed

    pid = local3.control.node("node-0")["pid"]
    for path in ("/nodes/node-0/restart?clock_skew_ms=99999999999999999999",
                 "/nodes/node-0/restart?clock_skew_ms=315360000001",
                 "/nodes/node-0/restart?clock_skew_ms=soon", "/nodes/node-0/kill?signal=SIGBOGUS"):
        status, body, _ = control_call(local3, "POST", path)
        assert status == 400 and body["error"], (path, body)
    assert local3.control.node("node-0")["pid"] == pid  # neither restarted nor signalled
    status, body, _ = control_call(local3, "GET", "/no/such/thing")
    assert status == 404 and body["error"]
    status, body, headers = control_call(local3, "PUT", "/nodes")
    assert status == 405 and "POST" in headers["Allow"]

    port = local3.control.url.rsplit(":", 1)[1]
    with pytest.raises(ConnectionRefusedError):  # 127.0.0.1 only, not every address
        socket.create_connection(("127.0.0.2", int(port)), timeout=10).close()


def test_ringkv_node_sends_the_token(local3: LocalCluster, tmp_path: Path) -> None:
    def node_list(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, "node", "--control", local3.control.url, *extra, "list"],
                              check=False, capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)

    ok = node_list("--token", API_TOKEN)
    assert ok.returncode == 0 and len(json.loads(ok.stdout)) == 3, ok.stderr
    data_dir = local3.control.node("node-0")["data_dir"].rsplit("/", 1)[0]
    assert node_list("--data-dir", data_dir).returncode == 0  # the token `ringkv up` keeps there
    refused = node_list("--token", "wrong")
    assert refused.returncode == 4 and "--token" in refused.stderr


def test_up_refuses_a_port_block_it_cannot_use(tmp_path: Path) -> None:
    low, high = ephemeral_range()

    def up(base: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, "up", "--nodes", "3", "--base-port", str(base), "--data-dir",
                               str(tmp_path / "data")], check=False, capture_output=True,
                              text=True, timeout=60)

    inside = up(low + 100)
    assert inside.returncode == 2 and f"ephemeral range {low}-{high}" in inside.stderr, inside.stderr
    straddling = up(low - 1001)  # the API ports fit below the range, the peer ports do not
    assert straddling.returncode == 2 and "ephemeral range" in straddling.stderr
    base = free_port_block(3)
    with listening(base + 1001):  # node-1's peer port
        taken = up(base)
    assert taken.returncode == 2 and f"{base + 1001}, in use" in taken.stderr, taken.stderr
    assert not (tmp_path / "data").exists()  # refused before anything started


def test_unusable_names_what_is_wrong() -> None:
    assert unusable([65535, 65536], "x", free=[]) == "x needs ports 65535-65536, outside 1-65535"
    assert unusable(block(30000, 2), "b", free=[], ephemeral=(31000, 60999)) == (
        "b needs ports 31000-31001, inside the kernel's ephemeral range 31000-60999 "
        "(/proc/sys/net/ipv4/ip_local_port_range), where any outgoing connection can take them")
    assert unusable(block(20000, 2), "b", free=[], ephemeral=(31000, 60999)) is None


def test_a_node_is_added_only_on_usable_ports(local3: LocalCluster) -> None:
    base = local3.up.base_port  # type: ignore[union-attr]
    with listening(base + 3):  # node-3's API port
        status, body, _ = control_call(local3, "POST", "/nodes")
    assert status == 409 and f"{base + 3}, in use" in body["error"], body
    assert [n["name"] for n in local3.control.nodes()] == ["node-0", "node-1", "node-2"]


def test_a_node_that_cannot_bind_is_given_up_not_restarted(local3: LocalCluster) -> None:
    epoch = local3.cluster_info()["epoch"]
    local3.control.stop("node-2")  # absent: still a member, nothing moves
    wait_for(lambda: not local3.control.node("node-2")["alive"], 60, "node-2 stopped")
    with listening(local3.control.node("node-2")["port"]):
        local3.control.start("node-2")
        failed = wait_for(lambda: (n := local3.control.node("node-2"))["failure"] and n, 60,
                          "node-2 to be given up on")
        assert "could not start (exit code 4: " in failed["failure"], failed
        assert "address already in use" in failed["failure"], failed
        assert not failed["alive"] and not failed["wanted"] and failed["restarts"] == 0
        assert "not restarting it" in local3.log_tail()
        # The membership never flapped: node-2 stayed a member through the failed start.
        info = local3.cluster_info(local3.url(0))
        assert info["epoch"] == epoch
        assert [m["name"] for m in info["members"]] == ["node-0", "node-1", "node-2"]
    local3.control.start("node-2")  # the port is free again
    local3.wait_settled(3)
    assert local3.cluster_info()["epoch"] == epoch
    assert local3.control.node("node-2")["failure"] is None
