"""Start `ringkv up` as a child process, wait until its cluster is ready, stop it by PID.

Every program that needs a whole local cluster (the demo, `make chaos`, the benchmarks,
the integration tests) starts it through :func:`spawn_up`:

    with spawn_up(tmp / "data", nodes=3) as up:
        Client(up.urls, token=up.token).put("k", "v")
        up.control.kill("node-1")

Stopping sends SIGTERM to `ringkv up`, which stops its nodes; a node process it left
behind (it was SIGKILLed, or did not finish in time) is then SIGKILLed by PID, checked
against the start time recorded when it was seen, so a reused PID is never signalled.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from .control_client import ControlClient, ControlError
from .ports import LOOPBACK, free_port_block
from .processes import kill_leftovers, log_tail, start_time, terminate


class UpFailed(RuntimeError):
    """`ringkv up` exited, or its cluster did not become ready in time (the message has
    the end of its log)."""


def node_ready(url: str, timeout: float = 2.0) -> bool:
    """``GET /readyz`` answered 200 (an open endpoint: no token)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/readyz", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (OSError, ValueError):
        return False


class UpProcess:
    """A `ringkv up` running as a child process: its nodes' URLs, token and control client."""

    def __init__(self, proc: subprocess.Popen[bytes], nodes: int, base_port: int,
                 data_dir: Path, log_path: Path, token: str | None) -> None:
        self.proc = proc
        self.nodes = nodes
        self.base_port = base_port
        self.data_dir = data_dir
        self.log_path = log_path
        self.urls: list[str] = []  # the first `nodes` nodes' API URLs, once ready
        self._token = token
        self._control: ControlClient | None = None
        self._seen: dict[int, int] = {}  # node pid -> start time, for the sweep in stop()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def control_url(self) -> str:
        return f"http://{LOOPBACK}:{self.base_port - 1}"

    @property
    def control(self) -> ControlClient:
        """The control endpoint's client, with the token (raises OSError while `ringkv up`
        has not written a token it generated)."""
        if self._control is None:
            self._control = ControlClient(self.control_url, self.token)
        return self._control

    @property
    def token(self) -> str:
        """The API token: the one given, else the one `ringkv up` generated (DATA_DIR/token)."""
        if self._token is None:
            self._token = (self.data_dir / "token").read_text().strip()
        return self._token

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The end of `ringkv up`'s own log (its banner, restarts, partitions)."""
        return log_tail(self.log_path, lines, "(no log)")

    def check_running(self) -> None:
        """Raise UpFailed, with the end of the log, if `ringkv up` has exited."""
        if not self.running():
            raise UpFailed(f"`ringkv up` exited with {self.proc.returncode}:\n{self.log_tail()}")

    def node_pids(self) -> dict[str, int]:
        """The live node processes by name; each is remembered for the sweep in stop()."""
        pids = {str(n["name"]): int(n["pid"]) for n in self.control.nodes()
                if n.get("alive") and n.get("pid")}
        for pid in pids.values():
            started = start_time(pid)
            if started is not None:
                self._seen[pid] = started
        return pids

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until the control endpoint lists every node alive and each answers /readyz."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_running()
            try:
                nodes = self.control.nodes()
                urls = [str(n["url"]) for n in nodes]
                if (len(nodes) >= self.nodes and all(n.get("alive") for n in nodes)
                        and all(node_ready(u) for u in urls)):
                    self.urls = urls[: self.nodes]
                    self.node_pids()
                    return
            except (OSError, ControlError, KeyError):
                pass
            if time.monotonic() >= deadline:
                raise UpFailed(f"the local cluster was not ready within {timeout:g}s:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM `ringkv up` (it stops its nodes), SIGKILL after ``timeout``; then
        SIGKILL any node process it left behind."""
        if self.running():
            try:
                self.node_pids()
            except (OSError, ControlError):
                pass
        terminate(self.proc, timeout)
        kill_leftovers(self._seen)

    def __enter__(self) -> UpProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def spawn_up(
    data_dir: Path,
    *,
    nodes: int = 5,
    rf: int = 3,
    base_port: int | None = None,
    token: str | None = None,
    restart_delay: float | None = None,
    down_grace: float | None = None,
    netns: bool = False,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    program: Sequence[str] | None = None,
    new_session: bool = False,
    ready_timeout: float = 120.0,
) -> UpProcess:
    """Start `ringkv up` and return once every node is ready (see :meth:`UpProcess.wait_ready`).

    ``base_port`` defaults to a free block below the ephemeral range; ``token`` to one
    `ringkv up` generates; ``restart_delay`` and ``down_grace`` to its defaults; ``env`` is added to this
    process's environment (the nodes inherit it); its output goes to ``log_path`` (default
    DATA_DIR/up.log). ``program`` is the command that runs `ringkv up` (default this
    interpreter's ``-m ringkv.local.up``; the benchmarks pass the installed ``ringkv up``).
    ``new_session`` starts it in its own session, away from the caller's terminal signals.
    If it exits or is not ready within ``ready_timeout`` it is stopped and UpFailed raised.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    base = base_port or free_port_block(nodes + 4)  # room for a few added nodes
    log = log_path or data_dir / "up.log"
    argv = [*(program or [sys.executable, "-m", "ringkv.local.up"]),
            "--nodes", str(nodes), "--rf", str(rf), "--base-port", str(base),
            "--data-dir", str(data_dir)]
    if token is not None:
        argv += ["--token", token]
    if restart_delay is not None:
        argv += ["--restart-delay", str(restart_delay)]
    if down_grace is not None:
        argv += ["--down-grace", str(down_grace)]
    if netns:
        argv.append("--netns")
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=new_session)
    up = UpProcess(proc, nodes, base, data_dir, log, token)
    try:
        up.wait_ready(ready_timeout)
    except BaseException:
        up.stop()
        raise
    return up
