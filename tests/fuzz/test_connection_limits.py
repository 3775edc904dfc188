"""Clients that hold connections: silent or trickling ones are cut off, and past
`max_connections` a node answers 503 instead of running out of file descriptors, while its
probe port (`probe_port`) still answers liveness and readiness. The internal port has the
same limit, and anonymous connections there cannot crowd out a peer that authenticates."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness import API_TOKEN, StaticCluster, free_ports, hello, read_frames, wait_for

from ringkv.node.transport import MAX_PENDING_HELLOS

LIMIT = 8
AUTH = f"Authorization: Bearer {API_TOKEN}\r\n"
READYZ = b"GET /readyz HTTP/1.1\r\nHost: n\r\n\r\n"
READYZ_AND_CLOSE = b"GET /readyz HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n"
Raw = Callable[[int, bytes], Any]  # conftest.raw_exchange


def one_node(root, **env: str) -> StaticCluster:
    return StaticCluster(root, size=1, rf=1, extra_env=env).start()


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StaticCluster]:
    """A node that gives a connection 2 s to idle or to send its headers."""
    cluster = one_node(tmp_path_factory.mktemp("impatient"), RINGKV_IDLE_TIMEOUT="2")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StaticCluster]:
    """A node that holds LIMIT client connections, with a probe port."""
    cluster = StaticCluster(tmp_path_factory.mktemp("crowded"), size=1, rf=1,
                            extra_env={"RINGKV_MAX_CONNECTIONS": str(LIMIT)})
    node = cluster.nodes[0]
    probe_port = next(p for p in free_ports(3) if p not in (node.port, node.internal_port))
    node.env["RINGKV_PROBE_PORT"] = str(probe_port)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def read_status(sock: socket.socket) -> int | None:
    """The status of one whole response on a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data or len(data) < _expected_length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None


def _expected_length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(data)


def closed_by_node(sock: socket.socket, trickle: bytes = b"", within: float = 60.0) -> bool:
    """Keep the connection busy (sending `trickle` now and then) until the node closes it;
    False if it is still open after `within` seconds."""
    sock.settimeout(0.25)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if trickle:
                sock.sendall(trickle)
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def test_a_silent_connection_is_closed(impatient: StaticCluster) -> None:
    with socket.create_connection(("127.0.0.1", impatient.nodes[0].port)) as sock:
        assert closed_by_node(sock), "a connection that never sent a byte stayed open"


def test_headers_sent_one_line_at_a_time_are_cut_off(impatient: StaticCluster) -> None:
    """Slowloris: a request whose headers never end is not allowed to hold the socket."""
    with socket.create_connection(("127.0.0.1", impatient.nodes[0].port)) as sock:
        sock.sendall(b"GET /v1/kv/slow HTTP/1.1\r\nHost: n\r\n")
        assert closed_by_node(sock, trickle=b"X-Slow: 1\r\n"), "trickled headers kept the socket"


def test_an_idle_kept_alive_connection_is_closed(impatient: StaticCluster, raw: Raw) -> None:
    with socket.create_connection(("127.0.0.1", impatient.nodes[0].port), timeout=30) as sock:
        sock.sendall(READYZ)
        assert read_status(sock) == 200
        assert closed_by_node(sock), "an idle keep-alive connection stayed open"
    assert raw(impatient.nodes[0].port, READYZ_AND_CLOSE).status == 200


def hold_every_connection(port: int, held: list[socket.socket]) -> None:
    """Open LIMIT connections to `port` (into `held`), each registered by the node."""
    for _ in range(LIMIT):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        held.append(sock)
        sock.sendall(READYZ)  # answered, so the node has registered the connection
        assert read_status(sock) == 200


def test_past_the_connection_limit_a_node_answers_503_and_recovers(crowded: StaticCluster,
                                                                  raw: Raw) -> None:
    port = crowded.nodes[0].port
    held: list[socket.socket] = []
    try:
        hold_every_connection(port, held)
        refused = raw(port, READYZ)
        assert refused.status == 503, refused.raw[:300]
        assert refused.error_code() == "too_many_connections"
        assert refused.headers.get("retry-after") == "1"
        # The connections it holds are still served.
        held[0].sendall(READYZ)
        assert read_status(held[0]) == 200
    finally:
        for sock in held[: LIMIT // 2]:
            sock.close()
    try:
        wait_for(lambda: raw(port, READYZ_AND_CLOSE).status == 200, 60,
                 "a new connection accepted once others closed")
    finally:
        for sock in held[LIMIT // 2 :]:
            sock.close()


def test_probes_do_not_depend_on_client_load(crowded: StaticCluster, raw: Raw) -> None:
    """The kubelet probes the probe port, which max_connections does not count: a node at
    its client-connection cap stays live and ready instead of being restarted."""
    node = crowded.nodes[0]
    probe_port = int(node.env["RINGKV_PROBE_PORT"])
    held: list[socket.socket] = []
    try:
        hold_every_connection(node.port, held)
        assert raw(node.port, READYZ_AND_CLOSE).error_code() == "too_many_connections"
        for path in ("/healthz", "/readyz"):
            reply = raw(probe_port, f"GET {path} HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n".encode())
            assert reply.status == 200, reply.raw[:300]
        for path in ("/v1/cluster", "/v1/kv/k", "/metrics"):  # the probes, nothing else
            reply = raw(probe_port, f"GET {path} HTTP/1.1\r\nHost: n\r\n{AUTH}Connection: close"
                                    "\r\n\r\n".encode())
            assert reply.status == 404 and reply.error_code() == "not_found", path
    finally:
        for sock in held:
            sock.close()


def peer_connection(port: int) -> tuple[socket.socket, bool]:
    """A connection that sent the cluster hello; whether the node accepted it (an OK
    answer) rather than closing it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        sock.sendall(hello())
    except (BrokenPipeError, ConnectionResetError):
        return sock, False
    frames, _ = read_frames(sock, expect=1)
    return sock, bool(frames) and frames[0][1] == 0


def test_past_the_connection_limit_the_internal_port_drops_new_peers(crowded: StaticCluster) -> None:
    port = crowded.nodes[0].internal_port
    held: list[socket.socket] = []
    try:
        for _ in range(LIMIT):
            sock, accepted = peer_connection(port)
            held.append(sock)
            assert accepted, "a peer within the limit was refused"
        sock, accepted = peer_connection(port)
        sock.close()
        assert not accepted, "a peer past max_connections got in"
    finally:
        for sock in held[: LIMIT // 2]:
            sock.close()
    try:
        def one_more() -> bool:
            sock, accepted = peer_connection(port)
            sock.close()
            return accepted
        wait_for(one_more, 60, "a peer accepted once others closed")
    finally:
        for sock in held[LIMIT // 2 :]:
            sock.close()


def test_silent_connections_cannot_keep_a_peer_off_the_internal_port(crowded: StaticCluster) -> None:
    """More anonymous connections than either limit allows, then a real peer: it gets in,
    and the oldest silent connection is one of those dropped for it."""
    port = crowded.nodes[0].internal_port
    silent = [socket.create_connection(("127.0.0.1", port), timeout=30)
              for _ in range(MAX_PENDING_HELLOS + LIMIT)]
    try:
        sock, accepted = peer_connection(port)
        sock.close()
        assert accepted, "silent connections kept an authenticated peer out"
        assert closed_by_node(silent[0], within=5), "the oldest silent connection was kept"
    finally:
        for sock in silent:
            sock.close()
