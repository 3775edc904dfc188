"""Real node processes on 127.0.0.1 for integration tests.

Each node is a `ringkv-node` OS process with its own SQLite data directory and random
ports. Nothing here is a mock: tests talk HTTP to the processes, kill them with SIGKILL
and restart them on the same data directory. Every process started is stopped in teardown.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

API_TOKEN = "test-api-token"
CLUSTER_TOKEN = "test-cluster-token"


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, what: str = "condition",
             interval: float = 0.05) -> Any:
    """Poll until `condition()` is truthy; the deadline is generous for a loaded CI box."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except AssertionError:
            raise
        except Exception as exc:
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc})")


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         token: str | None = API_TOKEN, timeout: float = 30.0) -> Response:
    hdrs = dict(headers or {})
    if token is not None:
        hdrs.setdefault("Authorization", f"Bearer {token}")
    req = urllib.request.Request(url, data=body, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Response(resp.status, resp.read(), {k.lower(): v for k, v in resp.headers.items()})
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.read(), {k.lower(): v for k, v in exc.headers.items()})


@dataclass
class NodeProcess:
    name: str
    port: int
    internal_port: int
    data_dir: Path
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ringkv.node.main"], env=self.env, stdout=log,
            stderr=subprocess.STDOUT, cwd=str(self.data_dir.parent),
        )
        log.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        try:
            return http("GET", self.url + "/readyz", token=None, timeout=2).status == 200
        except OSError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class StaticCluster:
    """N nodes with a fixed membership document (no controller)."""

    root: Path
    size: int = 3
    rf: int = 3
    extra_env: dict[str, str] = field(default_factory=dict)
    nodes: list[NodeProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        ports = free_ports(self.size * 2)
        members = []
        for i in range(self.size):
            members.append({"name": f"node-{i}", "url": f"127.0.0.1:{ports[self.size + i]}",
                            "api_url": f"http://127.0.0.1:{ports[i]}", "state": "normal"})
        doc = {"epoch": 1, "rf": self.rf, "settled": True, "members": members, "base": []}
        membership_file = self.root / "membership.json"
        membership_file.write_text(json.dumps(doc))
        for i in range(self.size):
            data_dir = self.root / f"node-{i}"
            data_dir.mkdir(parents=True, exist_ok=True)
            env = {
                **os.environ,
                "RINGKV_NODE_NAME": f"node-{i}",
                "RINGKV_DATA_DIR": str(data_dir),
                "RINGKV_HOST": "127.0.0.1",
                "RINGKV_PORT": str(ports[i]),
                "RINGKV_INTERNAL_HOST": "127.0.0.1",
                "RINGKV_INTERNAL_PORT": str(ports[self.size + i]),
                "RINGKV_API_TOKEN": API_TOKEN,
                "RINGKV_CLUSTER_TOKEN": CLUSTER_TOKEN,
                "RINGKV_MEMBERSHIP_FILE": str(membership_file),
                "RINGKV_REPLICA_TIMEOUT": "1.0",
                "RINGKV_HINT_INTERVAL": "0.2",
                **self.extra_env,
            }
            self.nodes.append(NodeProcess(f"node-{i}", ports[i], ports[self.size + i], data_dir,
                                          env, self.root / f"node-{i}.log"))

    def start(self) -> StaticCluster:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            self.wait_ready(node)
        return self

    def wait_ready(self, node: NodeProcess) -> None:
        def ready_or_dead() -> bool:
            if not node.alive:
                raise AssertionError(f"{node.name} exited with {node.proc and node.proc.returncode}")
            return node.ready()

        try:
            wait_for(ready_or_dead, 60, f"{node.name} ready")
        except AssertionError:
            raise AssertionError(f"{node.name} never became ready:\n{node.log_tail()}") from None

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def url(self, i: int) -> str:
        return self.nodes[i].url
