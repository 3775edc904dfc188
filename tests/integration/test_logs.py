"""Logs: one JSON object a line with RINGKV_LOG_FORMAT=json, never a value or a token."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

from harness import API_TOKEN, CLUSTER_TOKEN, StaticCluster, http, wait_for

MALFORMED = [
    b"GET /v1/kv/x HTTP/1.1\r\nAuthorization: Bearer " + API_TOKEN.encode() + b"\x01\r\n\r\n",
    b"PUT /v1/kv/very-secret-value-4711\x00 HTTP/1.1\r\n\r\n",
    b"GET /v1/kv/x HTTP/1.1\r\nX-Note: " + b"very-secret-value-4711" * 500 + b"\r\n\r\n",
]


def test_json_logs_carry_no_values_or_tokens(tmp_path: Path) -> None:
    cluster = StaticCluster(tmp_path, extra_env={"RINGKV_LOG_FORMAT": "json",
                                                 "RINGKV_LOG_LEVEL": "DEBUG"})
    cluster.start()
    secret_value = b"very-secret-value-4711"
    try:
        cluster.nodes[2].kill(signal.SIGKILL)  # failures and hints make the nodes talk
        for i in range(20):
            assert http("PUT", f"{cluster.url(i % 2)}/v1/kv/secret-{i}", secret_value).status == 200
        http("GET", f"{cluster.url(0)}/v1/kv/x", headers={"Authorization": "Bearer wrong-token"},
             token=None)
        for malformed in MALFORMED:  # refused by the HTTP parser, which would echo the bytes
            with socket.create_connection(("127.0.0.1", cluster.nodes[1].port), timeout=30) as sock:
                sock.sendall(malformed)
                assert b'"bad_request"' in sock.recv(65536)
        cluster.nodes[2].start()
        cluster.wait_ready(cluster.nodes[2])
        wait_for(lambda: http("GET", f"{cluster.url(2)}/v1/kv/secret-0?consistency=one").status == 200,
                 30, "the restarted node to serve")
    finally:
        cluster.stop()
    lines = []
    for node in cluster.nodes:
        text = node.log_path.read_text()
        for secret in (API_TOKEN, CLUSTER_TOKEN, "wrong-token", secret_value.decode()):
            assert secret not in text, f"{secret!r} leaked into {node.log_path.name}"
        lines += [line for line in text.splitlines() if line.strip()]
    assert len(lines) >= 6
    for line in lines:
        entry = json.loads(line)
        assert {"ts", "level", "logger", "msg"} <= set(entry)
