"""`ringkv check` end to end: a real `ringkv up` cluster, a kill nemesis, a valid history.

The cluster runs as a subprocess on a random free block of ports and is stopped with
SIGTERM in teardown; readiness is polled, never slept for.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import free_ports, wait_for

from ringkv.client import QuorumUnavailable, Unavailable
from ringkv.client.check import classify, main
from ringkv.client.errors import BadRequest, ConflictRetryExhausted, InternalError

NODES = 3
CLI = [sys.executable, "-m", "ringkv.client.cli"]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port(nodes: int) -> int:
    """A base port P with P-1..P+nodes (control, APIs) and P+1000..P+1000+nodes free."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 40000)
        ports = [*range(base - 1, base + nodes + 1), *range(base + 1000, base + 1000 + nodes + 1)]
        if all(_port_free(p) for p in ports):
            return base
    raise AssertionError("no free block of ports found")


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@dataclass
class LocalUp:
    proc: subprocess.Popen[bytes]
    base: int
    data_dir: Path
    log: Path

    @property
    def control(self) -> str:
        return f"http://127.0.0.1:{self.base - 1}"

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.base + i}" for i in range(NODES)]

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    def node_pids(self) -> list[int]:
        try:
            nodes = _get_json(self.control + "/nodes")
        except OSError:
            return []
        if not isinstance(nodes, list):
            return []
        return [n["pid"] for n in nodes if isinstance(n, dict) and isinstance(n.get("pid"), int)]


@pytest.fixture
def local_up(tmp_path: Path) -> Iterator[LocalUp]:
    base = free_base_port(NODES)
    data_dir = tmp_path / "data"
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *CLI,
                "up",
                *f"--nodes {NODES} --rf 3 --base-port {base} --restart-delay 1".split(),
                "--data-dir",
                str(data_dir),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    up = LocalUp(proc, base, data_dir, log)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"ringkv up exited with {proc.returncode}:\n{up.log_tail()}")
            return (data_dir / "token").exists() and all(_ready(u) for u in up.urls)

        wait_for(ready, 60, "the local cluster to be ready", interval=0.2)
        yield up
    finally:
        pids = up.node_pids()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
                for pid in pids:  # the nodes run in their own sessions: do not leak them
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass


@pytest.mark.timeout(180)
def test_check_with_kill_nemesis_finds_a_valid_history(local_up: LocalUp, tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    token = (local_up.data_dir / "token").read_text().strip()
    options = f"--duration 8 --workers 6 --nemesis kill --interval 2 --seed 7 --control {local_up.control}"
    result = subprocess.run(
        [
            *CLI,
            "check",
            "--url",
            ",".join(local_up.urls),
            "--token",
            token,
            *options.split(),
            "--history",
            str(history),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=150,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{output}\n--- ringkv up log ---\n{local_up.log_tail()}"
    assert "result: VALID" in output

    lines = [json.loads(line) for line in history.read_text().splitlines()]
    assert lines[0]["type"] == "run" and lines[-1] == {"type": "verdict", "valid": True, "violations": {}}
    ops = [d for d in lines if d["type"] == "op"]
    acked = [d for d in ops if d["kind"] == "write" and d["outcome"] == "ok" and not d["final"]]
    faults = [d for d in lines if d["type"] == "fault"]
    assert len(acked) > 0
    assert len(faults) >= 1 and all(f["action"] == "kill" for f in faults), faults
    assert all(f["end"] is not None and f["end"] > f["start"] for f in faults), faults
    finals = [d for d in ops if d["final"]]
    assert len(finals) == 10 and all(d["outcome"] == "ok" for d in finals)
    assert token not in history.read_text()


def test_check_exits_2_when_no_cluster_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (port,) = free_ports(1)
    code = main(
        [
            "--url",
            f"http://127.0.0.1:{port}",
            "--ready-timeout",
            "0.3",
            "--duration",
            "1",
            "--history",
            str(tmp_path / "h.jsonl"),
        ]
    )
    assert code == 2
    assert "not ready" in capsys.readouterr().err
    assert not (tmp_path / "h.jsonl").exists()


def test_check_exits_2_when_no_launcher_answers(capsys: pytest.CaptureFixture[str]) -> None:
    (port,) = free_ports(1)
    code = main(["--nemesis", "kill", "--control", f"http://127.0.0.1:{port}"])
    assert code == 2
    assert "no `ringkv up` control endpoint" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--workers", "0"], ["--read-ratio", "2"], ["--url", "ftp://x"]])
def test_check_usage_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_outcomes_are_unknown_unless_the_write_surely_did_not_happen() -> None:
    assert classify("write", BadRequest("bad_request", "no", 400)) == "fail"
    assert classify("write", Unavailable("refused", maybe_applied=False)) == "fail"
    assert classify("write", Unavailable("timeout", timed_out=True, maybe_applied=True)) == "unknown"
    assert classify("write", QuorumUnavailable("quorum_unavailable", "1 of 2", 503)) == "unknown"
    assert classify("write", ConflictRetryExhausted("conflict_retry_exhausted", "x", 503)) == "unknown"
    assert classify("write", InternalError("internal", "x", 500)) == "unknown"
    assert classify("read", Unavailable("timeout", timed_out=True)) == "unknown"
    assert classify("read", Unavailable("refused")) == "fail"
