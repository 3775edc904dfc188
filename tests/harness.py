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
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest

from ringkv.local import system_tools
from ringkv.local.control_client import ControlClient
from ringkv.local.ports import free_ports
from ringkv.local.processes import log_tail, terminate
from ringkv.local.spawn import UpProcess, spawn_up

API_TOKEN = "test-api-token"
CLUSTER_TOKEN = "test-cluster-token"


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line or environment contains ``text`` (a test's data directory):
    what a test started and must have stopped."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        for part in ("cmdline", "environ"):
            try:
                raw = Path(f"/proc/{entry}/{part}").read_bytes()
            except OSError:
                continue
            if text.encode() in raw:
                found.append(int(entry))
                break
    return found


def frame(obj: Any) -> bytes:
    """One internal-protocol frame: [u32 length][msgpack]."""
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def hello(token: Any = CLUSTER_TOKEN) -> bytes:
    """A peer's first frame on the internal port."""
    return frame([0, "hello", 0, {"token": token, "node": "intruder"}])


def exchange(port: int, data: bytes, expect: int | None = None,
             timeout: float = 30.0) -> tuple[list[Any], bool]:
    """Send `data` to an internal port; the frames answered and whether the node closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_frames(sock, expect)


def read_frames(sock: socket.socket, expect: int | None = None) -> tuple[list[Any], bool]:
    """Frames from an internal-port connection until the node closes it (True) or until
    `expect` frames have come back (False)."""
    received = b""
    frames: list[Any] = []
    while expect is None or len(frames) < expect:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return frames, True
        received += chunk
        while len(received) >= 4 and len(received) >= 4 + struct.unpack(">I", received[:4])[0]:
            (size,) = struct.unpack(">I", received[:4])
            frames.append(msgpack.unpackb(received[4 : 4 + size], raw=False))
            received = received[4 + size :]
    return frames, False


def require_tool(name: str, how: str) -> str:
    """The path of a command-line tool a test drives (on PATH or in the sbin directories).
    Missing, the test is skipped with `how` to get it, which under CI=true is a failure
    (tests/ci_skips.py; `make test` installs it there)."""
    path = system_tools.find(name)
    if path is None:
        pytest.skip(f"{name} not found: {how}")
    return path


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


def run_to_end(argv: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command to completion with its output captured, within `timeout`, which must be
    below the test's own limit: past it, the command's process group is stopped and the test
    fails with what the command printed so far (pytest's timeout would lose that output)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        raise AssertionError(f"{' '.join(argv)} still running after {timeout}s, stopped:\n"
                             f"{out[-3000:]}{err[-3000:]}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


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
        if self.proc is not None:
            terminate(self.proc, 20)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        try:
            return http("GET", self.url + "/readyz", token=None, timeout=2).status == 200
        except OSError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)


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
        """Start every node and wait until each is ready; if one never is, stop them all
        (the caller's try/finally begins after `start` returns)."""
        try:
            for node in self.nodes:
                node.start()
            for node in self.nodes:
                self.wait_ready(node)
        except BaseException:
            self.stop()
            raise
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


@dataclass
class LocalCluster:
    """`ringkv up` as a subprocess (:func:`spawn_up`): the launcher with its controller, as
    `make run` runs it. ``control`` is its control client (``ringkv node``'s API)."""

    root: Path
    nodes: int = 5
    rf: int = 3
    restart_delay: float = 1.0
    down_grace: float | None = None  # `ringkv up --down-grace` (None: its default)
    extra_env: dict[str, str] = field(default_factory=dict)
    netns: bool = False  # `ringkv up --netns`: nodes in network namespaces (root only)
    up: UpProcess | None = None

    def start(self) -> LocalCluster:
        self.up = spawn_up(
            self.root / "data", nodes=self.nodes, rf=self.rf, token=API_TOKEN,
            restart_delay=self.restart_delay, down_grace=self.down_grace, netns=self.netns,
            log_path=self.root / "launcher.log",
            env={"RINGKV_REPLICA_TIMEOUT": "1.0", "RINGKV_HINT_INTERVAL": "0.2", **self.extra_env},
            ready_timeout=90,
        )
        try:
            wait_for(lambda: self._alive() and self.settled(self.nodes), 90, "the cluster to settle")
        except BaseException:
            self.stop()
            raise
        return self

    def _running(self) -> UpProcess:
        assert self.up is not None, "start() the cluster first"
        return self.up

    def _alive(self) -> bool:
        up = self._running()
        if not up.running():
            raise AssertionError(f"launcher exited:\n{self.log_tail()}")
        return True

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self._running().proc

    @property
    def control(self) -> ControlClient:
        return self._running().control

    def log_tail(self, lines: int = 60) -> str:
        return self._running().log_tail(lines)

    def stop(self) -> None:
        if self.up is not None:
            self.up.stop()

    def url(self, i: int) -> str:
        if self.netns:
            return str(self.control.nodes()[i]["url"])
        return f"http://127.0.0.1:{self._running().base_port + i}"

    def urls(self) -> list[str]:
        return [n["url"] for n in self.control.nodes() if n["alive"]]

    def wait_ready_url(self, url: str, timeout: float = 60) -> None:
        """Wait until the node at `url` answers /readyz with 200."""
        def ready() -> bool:
            try:
                return http("GET", url + "/readyz", token=None, timeout=5).status == 200
            except OSError:
                return False

        wait_for(ready, timeout, f"{url} to be ready")

    def cluster_info(self, via: str | None = None) -> dict[str, Any]:
        for url in [via] if via else self.urls():
            try:
                r = http("GET", url + "/v1/cluster", timeout=5)
            except OSError:
                continue
            if r.status == 200:
                return r.json()
        raise AssertionError("no node answered /v1/cluster")

    def settled(self, members: int) -> bool:
        """Settled with `members` members, all normal, every member ready and on that epoch."""
        try:
            info = self.cluster_info()
        except (AssertionError, OSError):
            return False
        ms = info["members"]
        return (info["settled"] and len(ms) == members
                and all(m["state"] == "normal" and m.get("ready") and m.get("epoch") == info["epoch"]
                        for m in ms))

    def wait_settled(self, members: int, after_epoch: int = 0, timeout: float = 120) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            self._alive()
            if self.settled(members):
                info = self.cluster_info()
                if info["epoch"] > after_epoch:
                    return info
            return None

        try:
            return wait_for(done, timeout, f"a settled epoch > {after_epoch} with {members} members")
        except AssertionError:
            raise AssertionError(f"not settled; launcher log:\n{self.log_tail()}") from None
