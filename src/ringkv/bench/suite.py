"""The benchmark suite behind `make bench`: ringkv vs etcd vs the dict-server ceiling.

In one run, one system at a time (so they never compete for the CPU), it starts a local
3-node ringkv (rf=3), a 3-member etcd and the single-process dict server (twice: as an
aiohttp Application, the ceiling issue 5 names, and on ringkv's own HTTP path), drives each with
the same load generator and the same workloads, samples the CPU time of every server
process over exactly the measured window, and writes bench/results/<date>.md (plus a
.json of the raw results and, with matplotlib, a .png). Ratios are taken between systems
measured in the same run, on the same machine, so they survive a change of hardware
better than absolute numbers do. Everything it starts, it stops by PID.

The ``cas`` workload (uncontended compare-and-set: ringkv's ``If-Match`` PUT, etcd's
``Txn``) runs on ringkv and etcd only; the report sets it beside each system's plain
writes, and a refused compare-and-set, which no other client could have caused, fails
the run.

    python -m ringkv.bench.suite [--duration 10] [--connections 64] [--workloads write,read,cas]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ringkv.bench.etcd import EtcdCluster, EtcdUnavailable
from ringkv.bench.loadgen import LoadConfig, LoadResult, run_async, run_load
from ringkv.local.ports import free_ports
from ringkv.local.processes import log_tail, terminate
from ringkv.local.spawn import spawn_up

SYSTEMS = ("ringkv", "etcd", "dict", "dictfast")
WORKLOADS = ("write", "read", "mixed", "cas")
CAS_TARGET = 0.33  # issue 13: uncontended CAS at >= 0.33x of plain quorum writes
LABELS = {"ringkv": "ringkv", "etcd": "etcd", "dict": "ceiling (dict server)",
          "dictfast": "ceiling on ringkv's HTTP path"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class System:
    """A running system under test: where to send load, which processes to charge."""

    name: str
    urls: list[str]
    pids: list[int]
    version: str
    token: str | None = None
    facts: dict[str, str] = field(default_factory=dict)
    kind: str = ""  # the load generator's target kind; the name when empty


@dataclass
class Row:
    system: str
    workload: str
    result: LoadResult
    server_cpu_s: float


# ------------------------------------------------------------------------ server CPU


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds incl. reaped children) of a live process, else None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the ')' that closes the command name: state is field 3.
    fields = raw[raw.rindex(")") + 2 :].split()
    ppid = int(fields[1])
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return ppid, ticks / CLK_TCK


def tree_cpu_seconds(roots: list[int]) -> float:
    """CPU seconds used so far by ``roots`` and all their live descendants.

    A child that exited and was reaped still counts, through its parent's cutime/cstime.
    """
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None:
                stats[int(entry)] = stat
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        total += stats[pid][1]
        todo.extend(children.get(pid, []))
    return total


# --------------------------------------------------------------------------- helpers


def http_get(url: str, token: str | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    """Status and body of a GET; (0, b'') when nothing answers."""
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


def wait_ready(
    urls: list[str], proc: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    """Poll every URL's /readyz until 200; fail early if the process dies."""
    deadline = time.monotonic() + timeout
    pending = list(urls)
    while pending:
        if proc.poll() is not None:
            raise RuntimeError(
                f"pid {proc.pid} exited with {proc.returncode} before ready:\n{log_tail(log, 20, '(no log)')}"
            )
        pending = [u for u in pending if http_get(f"{u}/readyz")[0] != 200]
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"not ready after {timeout:g} s: {pending}\n{log_tail(log, 20, '(no log)')}")
        if pending:
            time.sleep(0.2)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM, wait, then SIGKILL; then clear any process left in its process group.

    The child was started in its own session, so its group holds only what it started.
    """
    terminate(proc, timeout)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def _find_storage_sync(doc: Any) -> str | None:
    """storage.synchronous from /v1/cluster, at the top level or on any node entry."""
    if isinstance(doc, dict):
        storage = doc.get("storage")
        if isinstance(storage, dict) and storage.get("synchronous"):
            return str(storage["synchronous"])
        children = list(doc.values())
    elif isinstance(doc, list):
        children = doc
    else:
        return None
    for child in children:
        found = _find_storage_sync(child)
        if found:
            return found
    return None


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def ringkv_version() -> str:
    version = _dist_version("ringkv")
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False, cwd=Path(__file__).parent,
    ).stdout.strip()
    return f"{version} ({sha})" if sha else version


# --------------------------------------------------------------------------- systems


@contextlib.contextmanager
def ringkv_cluster(
    work: Path, binary: str, synchronous: str | None = None, timeout: float = 120.0
) -> Iterator[System]:
    """`ringkv up --nodes 3 --rf 3` with a token; yields once every node's /readyz is 200.

    ``synchronous`` overrides the nodes' SQLite setting (RINGKV_SQLITE_SYNCHRONOUS).
    """
    token = secrets.token_hex(16)
    env = {"RINGKV_SQLITE_SYNCHRONOUS": synchronous} if synchronous else {}
    with spawn_up(work / "ringkv-data", nodes=3, rf=3, token=token, env=env,
                  log_path=work / "ringkv.log", program=[binary, "up"], new_session=True,
                  ready_timeout=timeout) as up:
        status, body = http_get(f"{up.urls[0]}/v1/cluster", token)
        sync = None
        if status == 200:
            with contextlib.suppress(ValueError):
                sync = _find_storage_sync(json.loads(body))
        yield System(
            name="ringkv", urls=up.urls, pids=[up.pid], version=ringkv_version(), token=token,
            facts={"sqlite_synchronous": sync or synchronous or "NORMAL",
                   "cas_protocol": cas_protocol(up.urls[0], token)},
        )


def cas_protocol(url: str, token: str | None) -> str:
    """How these nodes decide an `If-Match` write, as they tell by answering a serial read:
    nodes that know `consistency=serial` decide conditional writes by a Paxos round per
    key; older ones refuse it (400) and check the condition on a quorum read, then write.
    """
    status, _ = http_get(f"{url}/v1/kv/ringkv-bench-probe?consistency=serial", token)
    if status in (200, 404):
        return "Paxos round per key"
    if status == 400:
        return "quorum read, then a plain write (before Paxos)"
    return f"unknown (the serial-read probe answered {status or 'nothing'})"


@contextlib.contextmanager
def etcd_cluster(work: Path) -> Iterator[System]:
    cluster = EtcdCluster(3, data_dir=work / "etcd-data")
    cluster.start()
    try:
        yield System(
            name="etcd", urls=cluster.client_urls, pids=cluster.pids, version=cluster.version,
            facts={"api_prefix": cluster.api_prefix},
        )
    finally:
        cluster.stop()


@contextlib.contextmanager
def dict_server(work: Path, fast: bool = False, timeout: float = 30.0) -> Iterator[System]:
    port = free_ports(1)[0]
    log = work / f"dictserver{'-fast' if fast else ''}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ringkv.bench.dictserver", "--port", str(port),
             *(["--fast"] if fast else [])],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready([url], proc, log, timeout)
        yield System(name="dictfast" if fast else "dict", kind="dict", urls=[url],
                     pids=[proc.pid], version=_dist_version("aiohttp"))
    finally:
        stop_process(proc)


# ----------------------------------------------------------------------------- runs


def measure(system: System, workload: str, args: argparse.Namespace) -> Row:
    """One workload against one system, with server CPU over the measured window."""
    config = LoadConfig(
        urls=system.urls, kind=system.kind or system.name, workload=workload,
        connections=args.connections, duration=args.duration, warmup=args.warmup,
        key_size=args.key_size, value_size=args.value_size, keyspace=args.keyspace,
        consistency=args.consistency, token=system.token, seed=args.seed,
    )
    cpu: dict[str, float] = {}

    def on_window(edge: str) -> None:
        cpu[edge] = tree_cpu_seconds(system.pids)

    result = run_async(run_load(config, on_window=on_window))
    return Row(system.name, workload, result, cpu["end"] - cpu["start"])


def run_suite(
    args: argparse.Namespace, work: Path
) -> tuple[list[Row], dict[str, System], list[str]]:
    """Start each system in turn, run every workload on it, stop it; collect failures."""
    starters: dict[str, Callable[[], contextlib.AbstractContextManager[System]]] = {
        "ringkv": lambda: ringkv_cluster(work, args.ringkv_bin, args.sqlite_synchronous),
        "etcd": lambda: etcd_cluster(work),
        "dict": lambda: dict_server(work),
        "dictfast": lambda: dict_server(work, fast=True),
    }
    rows: list[Row] = []
    systems: dict[str, System] = {}
    notes: list[str] = []
    for name in args.systems:
        print(f"== {LABELS[name]}: starting", flush=True)
        try:
            with starters[name]() as system:
                systems[name] = system
                for workload in args.workloads:
                    if workload == "cas" and (system.kind or system.name) == "dict":
                        continue  # the dict server has no compare-and-set
                    row = measure(system, workload, args)
                    rows.append(row)
                    refused = row.result.errors.get("412", 0) if workload == "cas" else 0
                    if refused:
                        notes.append(
                            f"{name} cas failed: {refused} compare-and-set writes were refused "
                            "(412) on keys no other client writes: a bug")
                    r = row.result
                    print(
                        f"   {workload:<6} {r.ops_per_s:>10.1f} ops/s  "
                        f"p99 {r.latency_us['p99'] / 1e3:.2f} ms  errors {r.error_count}  "
                        f"server CPU {row.server_cpu_s:.1f} s  "
                        f"loadgen CPU {r.loadgen_cpu_s:.1f} s",
                        flush=True,
                    )
        except EtcdUnavailable as exc:
            notes.append(f"etcd skipped: {exc}")
            print(f"   skipped: {exc}", flush=True)
        except Exception as exc:  # report it and go on to the next system
            detail = " ".join(str(exc).split())  # the log tail, on one line
            notes.append(f"{name} failed: {type(exc).__name__}: {detail[:400]}")
            print(f"   FAILED: {exc}", file=sys.stderr, flush=True)
    return rows, systems, notes


# --------------------------------------------------------------------------- report


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _fs_type(path: Path) -> str:
    """Filesystem type under ``path`` (fsync on tmpfs is free, which would flatter etcd)."""
    best, fstype = "", "unknown"
    resolved = str(path.resolve())
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mount = parts[1]
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):
                best, fstype = mount, parts[2]
    return fstype


_SQLITE_SYNC = {
    "OFF": "no fsync at all; a commit survives a process crash but not an OS crash.",
    "NORMAL": "a commit is in the WAL (OS page cache) before the ack, so it survives a"
    " process crash (SIGKILL), but the WAL is fsynced only at checkpoints, so a power"
    " loss can drop recent acknowledged writes.",
    "FULL": "the WAL is fsynced on every commit before the ack; writes survive power loss.",
    "EXTRA": "as FULL, plus the directory is fsynced; writes survive power loss.",
}


def _ms(us: float) -> str:
    return f"{us / 1e3:.2f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def _ops(row: Row | None) -> float | None:
    return row.result.ops_per_s if row else None


def _p99(row: Row | None) -> float | None:
    return row.result.latency_us["p99"] if row else None


def _cpu_per_op(row: Row | None) -> float | None:
    return row.server_cpu_s / row.result.ops if row and row.result.ops else None


def _cas_method(args: argparse.Namespace, ringkv: System | None) -> str:
    protocol = ringkv.facts["cas_protocol"] if ringkv else "not run"
    return (
        "Compare-and-set (`cas`): uncontended; every key is written once first and its "
        "version taken from the answer; then connection i replaces a random one of the keys "
        f"whose number is i modulo {args.connections} (its own) on condition that it is "
        "still the version of the key's last write, and takes the next from the answer: "
        "ringkv `PUT` with "
        f"`If-Match: \"<version>\"` (consistency `{args.consistency}`; protocol: "
        f"**{protocol}**), etcd a `Txn` comparing `mod_revision` with the revision of the last "
        "write, then a put (`/v3/kv/txn`, base64 keys). No other client writes those keys, "
        "so a refusal (412; etcd: `succeeded` false) is a bug and fails the run."
    )


def _cas_section(by: dict[tuple[str, str], Row]) -> list[str]:
    """CAS beside each system's plain writes, and against issue 13's targets."""

    def ops(row: Row | None) -> str:
        return f"{row.result.ops_per_s:,.0f}" if row else "n/a"

    def latency(row: Row | None) -> str:
        return f"{_ms(row.result.latency_us['p50'])} / {_ms(row.result.latency_us['p99'])}" if row else "n/a"

    def cpu(row: Row | None) -> str:
        per_op = _cpu_per_op(row)
        return f"{1e6 * per_op:.0f}" if per_op else "n/a"

    lines = [
        "## Compare-and-set against plain writes (same run)",
        "",
        "| system | CAS ops/s | plain write ops/s | CAS / plain ops/s | CAS p50 / p99 ms "
        "| plain p50 / p99 ms | CAS server CPU us/op | plain server CPU us/op |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for system in ("ringkv", "etcd"):
        cas, plain = by.get((system, "cas")), by.get((system, "write"))
        if cas is not None:
            lines.append(
                f"| {LABELS[system]} | {ops(cas)} | {ops(plain)} | {_ratio(_ops(cas), _ops(plain))} "
                f"| {latency(cas)} | {latency(plain)} | {cpu(cas)} | {cpu(plain)} |"
            )
    ours = by.get(("ringkv", "cas"))
    if ours is None:
        return lines
    plain_ops, etcd = _ops(by.get(("ringkv", "write"))), _ops(by.get(("etcd", "cas")))
    share = "n/a (no write row)"
    if plain_ops:
        ratio = ours.result.ops_per_s / plain_ops
        share = f"**{ratio:.2f}x, {'met' if ratio >= CAS_TARGET else 'missed'}**"
    versus = "n/a (etcd not run)"
    if etcd:
        ratio = ours.result.ops_per_s / etcd
        versus = f"**{ratio:.2f}x, {'met' if ratio > 1 else 'missed'}**"
    return [
        *lines,
        "",
        f"Issue 13's targets: ringkv's CAS at >= {CAS_TARGET:.2f}x of its plain quorum writes: "
        f"{share}; ahead of etcd's Txn: {versus}.",
    ]


def render_markdown(
    rows: list[Row],
    systems: dict[str, System],
    notes: list[str],
    *,
    args: argparse.Namespace,
    work: Path,
    started: dt.datetime,
    plot_name: str | None,
) -> str:
    sync = systems["ringkv"].facts["sqlite_synchronous"] if "ringkv" in systems else "NORMAL"
    etcd = systems.get("etcd")
    lines = [
        f"# ringkv benchmark, {started:%Y-%m-%d}",
        "",
        f"Run at {started:%Y-%m-%d %H:%M} UTC on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs ({_cpu_model()}); data on {_fs_type(work)}; load average "
        f"{args.loadavg[0]:.2f} at start (other work on the machine skews every number). "
        "Servers and load generator share these CPUs: the CPU columns say who used what.",
        "",
        f"Load: closed loop, {args.connections} connections spread round-robin over each "
        f"system's nodes; {args.key_size}-byte keys, {args.value_size}-byte values, "
        f"{args.keyspace} keys (reads, cas: all preloaded); {args.warmup:g} s warm-up, then "
        f"{args.duration:g} s measured; consistency `{args.consistency}` "
        "(etcd: writes through Raft, linearizable reads). Systems ran one after another.",
        *(["", _cas_method(args, systems.get("ringkv"))] if "cas" in args.workloads else []),
        "",
        "| system | workload | ops/s | p50 ms | p99 ms | p99.9 ms | errors | server CPU s "
        "| server CPU us/op | loadgen CPU s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        r = row.result
        errors = (
            ", ".join(f"{k}: {v}" for k, v in sorted(r.errors.items())) if r.errors else "0"
        )
        lines.append(
            f"| {LABELS[row.system]} | {row.workload} | {r.ops_per_s:,.0f} "
            f"| {_ms(r.latency_us['p50'])} | {_ms(r.latency_us['p99'])} "
            f"| {_ms(r.latency_us['p999'])} | {errors} | {row.server_cpu_s:.1f} "
            f"| {1e6 * row.server_cpu_s / max(r.ops, 1):.0f} | {r.loadgen_cpu_s:.1f} |"
        )
    by = {(row.system, row.workload): row for row in rows}
    lines += [
        "",
        "## Ratios (same run)",
        "",
        "| workload | ringkv/etcd ops/s | ringkv/ceiling ops/s "
        "| ringkv/ceiling on ringkv's HTTP path ops/s | ringkv/etcd p99 "
        "| ringkv/etcd server CPU per op |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for workload in args.workloads:
        ours, theirs, ceiling, fast = (by.get((s, workload)) for s in SYSTEMS)
        if ours is not None:
            lines.append(
                f"| {workload} | {_ratio(_ops(ours), _ops(theirs))} "
                f"| {_ratio(_ops(ours), _ops(ceiling))} | {_ratio(_ops(ours), _ops(fast))} "
                f"| {_ratio(_p99(ours), _p99(theirs))} "
                f"| {_ratio(_cpu_per_op(ours), _cpu_per_op(theirs))} |"
            )
    if "cas" in args.workloads:
        lines += ["", *_cas_section(by)]
    lines += [
        "",
        "## Durability compared",
        "",
        f"- ringkv: SQLite in WAL mode, `synchronous={sync}`: {_SQLITE_SYNC.get(sync.upper(), '')}"
        " Every write goes to 3 replicas (rf=3); the ack waits for the requested quorum.",
        "- etcd: fsyncs its WAL on every Raft commit (commits batch concurrent writes) on a"
        " majority before acknowledging, so writes survive power loss.",
        "- The dict server keeps nothing: it is the cost of HTTP in Python and nothing else."
        " The ceiling is an aiohttp Application with a router, as an application is written;"
        " the ceiling on ringkv's HTTP path is the same store behind aiohttp's low-level"
        " server with the node's response formatting, the tighter bound for ringkv's code.",
        "",
        "## Versions",
        "",
        f"- Python {platform.python_version()}, aiohttp {_dist_version('aiohttp')}, "
        f"uvloop {_dist_version('uvloop')}",
        f"- ringkv {systems['ringkv'].version if 'ringkv' in systems else ringkv_version()}",
        f"- etcd {etcd.version} (JSON gateway {etcd.facts['api_prefix']})"
        if etcd else "- etcd: not run",
    ]
    if notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    if plot_name:
        lines += ["", f"![throughput and p99 per system]({plot_name})"]
    return "\n".join(lines) + "\n"


def write_plot(rows: list[Row], workloads: list[str], path: Path) -> str | None:
    """Bar charts of throughput and p99 per system; None (and why) without matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415 - optional: only the suite's plot needs it

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install 'ringkv[bench]')"
    systems = [s for s in SYSTEMS if any(r.system == s for r in rows)]
    by = {(r.system, r.workload): r.result for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / max(len(systems), 1)
    for i, system in enumerate(systems):
        xs = [w + (i - (len(systems) - 1) / 2) * width for w in range(len(workloads))]
        results = [by.get((system, w)) for w in workloads]
        axes[0].bar(xs, [r.ops_per_s if r else 0 for r in results], width, label=LABELS[system])
        axes[1].bar(xs, [r.latency_us["p99"] / 1e3 if r else 0 for r in results], width,
                    label=LABELS[system])
    for ax, title in zip(axes, ("throughput (ops/s)", "p99 latency (ms)"), strict=True):
        ax.set_xticks(range(len(workloads)), workloads)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# ------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    venv_ringkv = Path(sys.executable).parent / "ringkv"
    p = argparse.ArgumentParser(
        prog="python -m ringkv.bench.suite",
        description="Benchmark ringkv against etcd and a dict-server ceiling in one run.",
    )
    p.add_argument("-d", "--duration", type=float, default=10.0, help="measured s per run")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up s per run")
    p.add_argument("-c", "--connections", type=int, default=64)
    p.add_argument("--workloads", default="write,read,cas", help="comma list of " + ",".join(WORKLOADS))
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma list of " + ",".join(SYSTEMS))
    p.add_argument("--key-size", type=int, default=16)
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--keyspace", type=int, default=10_000)
    p.add_argument("--consistency", choices=("one", "quorum", "all"), default="quorum")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--sqlite-synchronous", choices=("OFF", "NORMAL", "FULL", "EXTRA"), type=str.upper,
        help="run ringkv's nodes with this SQLite synchronous setting (default: theirs)",
    )
    p.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    p.add_argument("--name", help="report file stem (default <date>), to keep several runs")
    p.add_argument("--work-dir", type=Path, help="where servers keep data (default: temp)")
    p.add_argument(
        "--ringkv-bin",
        default=str(venv_ringkv) if venv_ringkv.exists() else shutil.which("ringkv") or "ringkv",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = [w for w in args.workloads if w not in WORKLOADS]
    bad += [s for s in args.systems if s not in SYSTEMS]
    if bad or not args.workloads or not args.systems:
        print(f"suite: unknown or missing workloads/systems: {bad}", file=sys.stderr)
        return 2
    started = dt.datetime.now(dt.UTC)
    args.loadavg = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="ringkv-bench-", dir=args.work_dir))
    try:
        rows, systems, notes = run_suite(args, work)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        stem = args.name or f"{started:%Y-%m-%d}"
        plot_note = write_plot(rows, args.workloads, args.out_dir / f"{stem}.png") if rows else (
            "plot skipped: nothing was measured"
        )
        if plot_note:
            notes.append(plot_note)
        md = render_markdown(
            rows, systems, notes, args=args, work=work, started=started,
            plot_name=None if plot_note else f"{stem}.png",
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (args.out_dir / f"{stem}.md").write_text(md)
    raw = [
        {"system": r.system, "server_cpu_s": r.server_cpu_s, **r.result.to_dict()} for r in rows
    ]
    (args.out_dir / f"{stem}.json").write_text(json.dumps(raw, indent=2) + "\n")
    print(f"\nwrote {args.out_dir / f'{stem}.md'}\n\n{md}")
    failed = [n for n in notes if " failed: " in n]
    return 1 if failed or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
