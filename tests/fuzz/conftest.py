"""Fixtures for fuzzing live nodes: a cluster per module and raw HTTP over a socket.

The raw client exists because urllib and http.client refuse to send most of what these
tests send (NUL bytes, bare LF, non-UTF-8 request targets, conflicting framing headers).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from harness import StaticCluster


@pytest.fixture(scope="module")
def fuzz3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StaticCluster]:
    """Three real nodes for one module's fuzzing; stopped when the module is done."""
    cluster = StaticCluster(tmp_path_factory.mktemp("fuzz3"), size=3, rf=3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@dataclass
class RawReply:
    """What came back on one connection: `status` None when the node closed without one."""

    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    raw: bytes = b""

    @property
    def is_json(self) -> bool:
        return self.headers.get("content-type", "").startswith("application/json")

    def error_code(self) -> str:
        """The JSON error code; fails the test when the body is not the error shape."""
        assert self.is_json, self.raw[:500]
        err = json.loads(self.body)["error"]
        assert isinstance(err["message"], str) and err["message"], err
        return err["code"]


def parse_reply(data: bytes) -> RawReply:
    """Parse the first response on a connection (skipping a 100 Continue)."""
    while data.startswith(b"HTTP/1.1 100"):
        data = data.split(b"\r\n\r\n", 1)[1]
    if not data.startswith(b"HTTP/"):
        return RawReply(None, raw=data)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return RawReply(status, headers, body, data)


def raw_exchange(port: int, data: bytes, timeout: float = 30.0) -> RawReply:
    """Send `data` on a fresh connection and read until the node closes it.

    Requests must carry `Connection: close` (or be malformed): the node then closes after
    its answer. A node that never answers fails the test through the socket timeout.
    """
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the node answered and closed before reading everything
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return parse_reply(b"".join(chunks))


@pytest.fixture(scope="session")
def raw() -> Callable[[int, bytes], RawReply]:
    return raw_exchange
