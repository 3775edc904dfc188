"""Stopping child processes and reading their logs: the helpers every local-cluster
program shares (the supervisor's asyncio children, and `ringkv up` or etcd started with
Popen)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from pathlib import Path


def terminate(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Stop a child process started with Popen: SIGTERM, wait, then SIGKILL and reap."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def terminate_async(proc: asyncio.subprocess.Process, timeout: float,
                          signalled: bool = False) -> None:
    """The same for an asyncio child: SIGTERM (unless already sent), wait, then SIGKILL and reap."""
    if proc.returncode is not None:
        return
    if not signalled:
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (None when it is gone): with the pid,
    it names one process, so a pid reused by another process is never signalled."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw[raw.rindex(")") + 2 :].split()[19])


def running(pid: int) -> bool:
    """True while ``pid`` exists and has not exited (a zombie has exited)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw[raw.rindex(")") + 2] != "Z"


def kill_leftovers(known: dict[int, int]) -> None:
    """SIGKILL each process of ``known`` (pid -> start time) that is still that process."""
    for pid, started in known.items():
        if start_time(pid) == started and running(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def log_tail(path: Path, lines: int = 40, missing: str = "") -> str:
    """The last lines of a log file, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return missing


def describe_exit(code: int | None) -> str:
    """'exit code 1' or 'killed by SIGKILL'."""
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
