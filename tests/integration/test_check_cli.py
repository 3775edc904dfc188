"""`ringkv check` end to end: a real `ringkv up` cluster, a short run of every nemesis, a
valid history with faults and acknowledged writes in it.

The clusters run as subprocesses on random free blocks of ports (the partition one in
network namespaces, root only) and are stopped with SIGTERM in teardown; readiness is
polled, never slept for.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import free_ports, run_to_end

from ringkv.client import QuorumUnavailable, Unavailable
from ringkv.client.errors import (
    BadRequest,
    ConflictRetryExhausted,
    InternalError,
    OutcomeUnknown,
    PreconditionFailed,
)
from ringkv.client.history import Op, Outcome, availability
from ringkv.local.check import main
from ringkv.local.netns import unusable_reason
from ringkv.local.spawn import UpProcess, spawn_up
from ringkv.local.workloads import classify

NODES = 3
CLI = [sys.executable, "-m", "ringkv.client.cli"]


def _launch(root: Path, netns: bool) -> Iterator[UpProcess]:
    """`ringkv up` with 3 nodes, ready; stopped (and its nodes reaped) afterwards."""
    with spawn_up(root / "data", nodes=NODES, rf=3, restart_delay=1, netns=netns,
                  log_path=root / "up.log", ready_timeout=60) as up:
        yield up


@pytest.fixture(scope="module")
def local_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    """One loopback cluster for the module: every nemesis heals, so the next run finds it whole."""
    yield from _launch(tmp_path_factory.mktemp("up"), netns=False)


@pytest.fixture(scope="module")
def netns_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    reason = unusable_reason()
    if reason:
        pytest.skip(f"the partition nemesis needs network namespaces: {reason}")
    yield from _launch(tmp_path_factory.mktemp("netns"), netns=True)


def run_check(
    up: UpProcess, tmp_path: Path, *options: str
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """`ringkv check` against `up`; returns the result, the history and the summary file."""
    history, summary = tmp_path / "history.jsonl", tmp_path / "summary.json"
    result = run_to_end(
        [*CLI, "check", "--url", ",".join(up.urls), "--token", up.token, "--control", up.control_url,
         *options, "--history", str(history), "--summary", str(summary)],
        timeout=150,
    )
    return result, history, summary


# A short run of every nemesis: a few seconds of load, one or more faults, all healed.
SHORT = "--duration 5 --workers 4 --interval 1 --fault-duration 1.5 --max-skew 120 --seed 7"


# pytest's default 300 s: the module's cluster (up to 60 s to be ready, as the first test
# pays for it) plus `ringkv check` (at most 150 s) plus stopping the cluster.
@pytest.mark.parametrize("nemesis", ["kill", "pause", "restart-wipe", "skew", "partition", "bounce",
                                     "restart-all", "restart-staggered"])
def test_every_nemesis_faults_the_cluster_and_the_history_stays_valid(
    nemesis: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    up: UpProcess = request.getfixturevalue("netns_up" if nemesis == "partition" else "local_up")
    restarts_before = sum(n["restarts"] for n in up.control.nodes())
    pids_before = {n["name"]: n["pid"] for n in up.control.nodes()}
    result, history, summary_file = run_check(up, tmp_path, *SHORT.split(), "--nemesis", nemesis)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{output}\n--- ringkv up log ---\n{up.log_tail()}"
    assert "result: VALID" in output

    lines = [json.loads(line) for line in history.read_text().splitlines()]
    assert lines[0]["type"] == "run" and lines[-1] == {"type": "verdict", "valid": True, "violations": {}}
    ops = [d for d in lines if d["type"] == "op"]
    acked = [d for d in ops if d["kind"] == "write" and d["outcome"] == "ok" and not d["final"]]
    faults = [d for d in lines if d["type"] == "fault"]
    assert len(acked) > 0
    assert len(faults) >= 1 and all(f["action"] == nemesis for f in faults), faults
    assert all(f["end"] is not None and f["end"] > f["start"] for f in faults), faults
    finals = [d for d in ops if d["final"]]
    assert len(finals) == 10 and all(d["outcome"] == "ok" for d in finals)
    assert up.token not in history.read_text()

    # Evidence that each fault really happened, as far as the launcher can tell.
    restarts = sum(n["restarts"] for n in up.control.nodes()) - restarts_before
    if nemesis == "kill":
        assert restarts >= len(faults)
    elif nemesis == "skew":  # a restart with a skewed clock, and one back
        assert restarts >= 2 * len(faults)
        skews = [int(f["note"].removeprefix("clock_skew_ms=")) for f in faults]
        assert all(60_000 <= abs(s) <= 120_000 for s in skews), skews
    elif nemesis == "partition":
        assert {f["note"] for f in faults} <= {"isolate", "split", "one-way"}, faults
    elif nemesis in ("bounce", "restart-all", "restart-staggered"):  # new processes
        replaced = {n["name"] for n in up.control.nodes() if n["pid"] != pids_before[n["name"]]}
        assert replaced >= ({f["node"] for f in faults} if nemesis == "bounce" else set(pids_before))
    assert all(n["alive"] and n["clock_skew_ms"] == 0 for n in up.control.nodes())

    summary = json.loads(summary_file.read_text())
    assert {"type": "summary", **summary} in lines
    assert summary["nemesis"] == nemesis and summary["valid"] and summary["passed"]
    assert summary["violations"] == 0 and summary["faults"] == len(faults)
    assert summary["acknowledged_writes"] == len(acked) > 0
    during = summary["availability_during_faults"]
    assert 0 < during["attempted"] <= summary["operations"] and 0 <= during["ok"] <= during["attempted"]


def test_cas_workload_under_kill_is_linearizable(local_up: UpProcess, tmp_path: Path) -> None:
    """Serial reads and writes and compare-and-sets on 3 keys by 6 clients, nodes killed:
    the history is linearizable per key, and contention really happened (412s and 2xx)."""
    restarts_before = sum(n["restarts"] for n in local_up.control.nodes())
    result, history, summary_file = run_check(
        local_up, tmp_path, *SHORT.split(), "--workload", "cas", "--workers", "6", "--keys", "3",
        "--nemesis", "kill")
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{output}\n--- ringkv up log ---\n{local_up.log_tail()}"
    assert "result: VALID" in output and "cas workload" in output
    summary = json.loads(summary_file.read_text())
    assert summary["workload"] == "cas" and summary["passed"] and summary["anomalies"] == []
    assert summary["faults"] >= 1
    assert sum(n["restarts"] for n in local_up.control.nodes()) - restarts_before >= summary["faults"]
    cas = summary["counts"]["cas"]
    assert cas["ok"] > 0 and summary["refused"] > 0 and cas["fail"] >= summary["refused"]
    ops = [json.loads(line) for line in history.read_text().splitlines()]
    ops = [d for d in ops if d["type"] == "op"]
    assert {d["kind"] for d in ops} == {"read", "write", "cas"}
    creates = [d for d in ops if d["kind"] == "cas" and d["expected"] is None and d["outcome"] == "ok"]
    assert 0 < len(creates) <= 3  # If-None-Match: * won once per key at most
    finals = [d for d in ops if d["final"]]
    assert len(finals) == 3 and all(d["outcome"] == "ok" for d in finals)


def test_cas_workload_reads_only_serially(local_up: UpProcess, tmp_path: Path) -> None:
    result, history, _ = run_check(local_up, tmp_path, "--workload", "cas", "--consistency", "quorum")
    assert result.returncode == 2 and "not linearizable" in result.stderr
    assert not history.exists()


def test_partition_nemesis_needs_a_netns_launcher(local_up: UpProcess, tmp_path: Path) -> None:
    result, history, _ = run_check(local_up, tmp_path, "--duration", "1", "--nemesis", "partition")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "ringkv up --netns" in result.stderr
    assert not history.exists()


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
    assert classify("write", ConflictRetryExhausted("conflict_retry_exhausted", "x", 503)) == "fail"
    assert classify("cas", PreconditionFailed("precondition_failed", "x", 412)) == "fail"
    assert classify("cas", OutcomeUnknown("outcome_unknown", "x", 503)) == "unknown"
    assert classify("write", InternalError("internal", "x", 500)) == "unknown"
    assert classify("read", Unavailable("timeout", timed_out=True)) == "unknown"
    assert classify("read", Unavailable("refused")) == "fail"


def test_availability_counts_operations_invoked_inside_a_fault_window() -> None:
    def op(invoke: float, outcome: Outcome, final: bool = False) -> Op:
        return Op(0, "read", "k", None, None, invoke, invoke + 0.5, outcome, final)

    ops = [op(0.5, "ok"), op(1.0, "fail"), op(1.5, "ok"), op(2.5, "unknown"), op(9.0, "ok")]
    ops.append(op(1.2, "ok", final=True))
    assert availability(ops, [(1.0, 2.0)]) == (1, 2)  # the final read does not count
    assert availability(ops, [(1.0, 2.0), (8.0, None)]) == (2, 3)
    assert availability(ops, []) == (0, 0)
