"""A throw-away 3-member etcd cluster on loopback, the comparison point for ringkv.

etcd is what a team would reach for instead of ringkv (replicated, consistent, HTTP via
its v3 JSON gateway), so the suite runs it beside ringkv on the same machine and disk.
Members listen on random free 127.0.0.1 ports and keep their data under a temporary
directory; every process started is stopped by PID.

    python -m ringkv.bench.etcd      # start a cluster, print its URLs, stop on Ctrl-C
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from ringkv.local import system_tools
from ringkv.local.ports import free_ports
from ringkv.local.processes import terminate


class EtcdUnavailable(RuntimeError):
    """No etcd binary, and it cannot be installed here."""


def ensure_etcd(install: bool = True) -> str:
    """Path of the etcd binary; installs Debian's etcd-server when missing and root."""
    if install:
        system_tools.install(["etcd"])
    found = system_tools.find("etcd")
    if found is None:
        raise EtcdUnavailable(
            "etcd not found; install it (Debian: apt-get install etcd-server) to compare"
        )
    return found


def etcd_version(binary: str) -> str:
    """Server version, from ``etcd --version`` (first line: 'etcd Version: 3.4.23')."""
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=False
    ).stdout
    first = out.splitlines()[0] if out else ""
    return first.split(":", 1)[1].strip() if ":" in first else "unknown"




class EtcdCluster:
    """Start, health-check and stop a local etcd cluster (context manager)."""

    def __init__(
        self,
        members: int = 3,
        data_dir: str | Path | None = None,
        binary: str | None = None,
    ) -> None:
        self.members = members
        self.binary = binary or ensure_etcd()
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="ringkv-bench-etcd-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.client_urls: list[str] = []
        self.api_prefix = "/v3"
        self.version = etcd_version(self.binary)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def start(self, timeout: float = 60.0) -> None:
        """Start every member and wait until each reports healthy."""
        ports = free_ports(2 * self.members)
        names = [f"m{i}" for i in range(self.members)]
        peer = [f"http://127.0.0.1:{ports[2 * i + 1]}" for i in range(self.members)]
        self.client_urls = [f"http://127.0.0.1:{ports[2 * i]}" for i in range(self.members)]
        initial = ",".join(f"{n}={u}" for n, u in zip(names, peer, strict=True))
        token = f"ringkv-bench-{os.getpid()}-{time.monotonic_ns()}"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            for i, name in enumerate(names):
                with open(self.data_dir / f"{name}.log", "wb") as log:
                    self.procs.append(
                        subprocess.Popen(
                            [
                                self.binary,
                                "--name", name,
                                "--data-dir", str(self.data_dir / name),
                                "--listen-client-urls", self.client_urls[i],
                                "--advertise-client-urls", self.client_urls[i],
                                "--listen-peer-urls", peer[i],
                                "--initial-advertise-peer-urls", peer[i],
                                "--initial-cluster", initial,
                                "--initial-cluster-token", token,
                                "--initial-cluster-state", "new",
                            ],
                            stdin=subprocess.DEVNULL,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                        )
                    )
            self._wait_healthy(timeout)
            self.api_prefix = _gateway_prefix(self.client_urls[0])
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self.client_urls)
        while pending:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"etcd member pid {proc.pid} exited with {proc.returncode}; "
                        f"logs in {self.data_dir}"
                    )
            pending = [u for u in pending if not _healthy(u)]
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"etcd members not healthy after {timeout:g} s: {pending}")
            if pending:
                time.sleep(0.2)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop members one at a time (SIGTERM, SIGKILL after ``timeout``); drop temp data.

        One at a time because a leader told to stop hands leadership to a live peer; with
        every member stopping at once it waits out a ~7 s transfer timeout instead.
        """
        for proc in self.procs:
            terminate(proc, timeout)
        self.procs = []
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return bool(json.load(resp).get("health") in ("true", True))
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _gateway_prefix(url: str) -> str:
    """'/v3' or '/v3beta', whichever JSON gateway this etcd serves (3.3 has only v3beta)."""
    for prefix in ("/v3", "/v3beta"):
        req = urllib.request.Request(
            f"{url}{prefix}/kv/range", data=b'{"key":"AA=="}', method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=5):
                return prefix
        except (OSError, urllib.error.URLError):
            continue
    raise RuntimeError(f"{url} serves neither /v3 nor /v3beta kv/range")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ringkv.bench.etcd")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--data-dir", help="keep data here (default: a temp dir, removed)")
    args = parser.parse_args(argv)
    try:
        cluster = EtcdCluster(args.members, args.data_dir)
    except EtcdUnavailable as exc:
        print(f"etcd: {exc}", file=sys.stderr)
        return 1
    with cluster:
        print(f"etcd {cluster.version} ({cluster.api_prefix} gateway) up: "
              f"{','.join(cluster.client_urls)}", flush=True)
        stop_signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # so sigwait receives them
        signal.sigwait(stop_signals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
