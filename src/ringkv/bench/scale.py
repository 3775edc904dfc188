"""Scale benchmarks: re-replication after a node loss, memory per key, data moved, n nodes,
backup and restore.

Six scenarios, each on its own local cluster (`ringkv up`), selectable with --scenarios:

- ``rereplication``: bulk-load N keys into 5 nodes (rf=3), run a 90/10 read/write client
  load on the nodes that will stay, then stop (or kill) one node while the load keeps
  running: time to the settled epoch, keys and bytes re-replicated (vs the lost node's
  records, the copies that had to be made), MB/s, and client ops/s and latency during the
  handoff vs before it.
- ``rss``: node RSS and SQLite file size before and after the bulk load, per million
  records held (shares the rereplication cluster when both run).
- ``moved``: for n in 3, 5, 7 on a quiet cluster: records copied when one node leaves, as
  a share of all stored copies, vs the ideal 1/n.
- ``throughput``: write and read throughput of 3, 5 and 7 local nodes with server CPU.
- ``backup``: bulk-load N keys, run the same client load on every node, take a backup
  (`ringkv backup`, a process of its own) while it runs: MB/s and keys/s of the backup and
  client ops/s during it vs before; then restore the backup into a fresh cluster of the
  same size (quiet): MB/s and keys/s of the restore, verification included.
- ``churn`` (not in the default set): restarts, kills, whole-cluster restarts and
  membership changes on one loaded cluster under a checked client (:mod:`ringkv.bench.churn`).

Client load runs as back-to-back windows of the load generator (``run_load``), so the
throughput before, during and after the handoff comes from the same client and the same
connections. The settle is taken from the controller's membership store (the launcher's
membership.json, polled every 100 ms): ``GET /v1/cluster`` makes every node count its
records (a full table scan on its event loop), so polling it at 10 Hz would itself slow the
cluster. Everything started is stopped by PID. The nodes inherit this environment, so
`RINGKV_HANDOFF_*` variables set the handoff budget under test; the report records it.

    python -m ringkv.bench.scale [--scenarios rereplication,rss,moved,throughput,backup,churn]
                                 [--keys 100000] [--loss stop|kill] [--churn-keys 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ringkv.bench import churn
from ringkv.bench.loadgen import Histogram, LoadConfig, LoadResult, payload, run_async, run_load
from ringkv.bench.suite import (
    CLK_TCK,
    System,
    _cpu_model,
    _dist_version,
    _fs_type,
    http_get,
    measure,
    ringkv_version,
    tree_cpu_seconds,
)
from ringkv.local.processes import running
from ringkv.local.spawn import UpProcess, spawn_up
from ringkv.node import config as node_config
from ringkv.node import membership

DEFAULT_SCENARIOS = ("rereplication", "rss", "moved", "throughput", "backup")
SCENARIOS = (*DEFAULT_SCENARIOS, "churn")
DEFAULT_KEYS = 100_000
MB = 1e6


# --------------------------------------------------------------------------- cluster


def cluster_doc(cluster: UpProcess, i: int = 0, timeout: float = 60.0) -> dict[str, Any]:
    """``GET /v1/cluster`` from node i (every node counts its records for it)."""
    status, body = http_get(f"{cluster.urls[i]}/v1/cluster", cluster.token, timeout)
    if status != 200:
        raise RuntimeError(f"GET /v1/cluster on node-{i} answered {status}: {body[:200]!r}")
    return dict(json.loads(body))


def stored_membership(cluster: UpProcess) -> membership.Document | None:
    """The controller's current document (the store `ringkv up` writes atomically)."""
    return membership.load(str(cluster.data_dir / "membership.json"))


@contextlib.contextmanager
def local_cluster(
    work: Path, nodes: int, rf: int, binary: str, timeout: float = 120.0,
    down_grace: float | None = None, restart_delay: float | None = None,
) -> Iterator[UpProcess]:
    """`ringkv up --nodes N --rf R` in its own session; yields once every node is ready.
    On exit it is stopped by PID, and so is any node process it left behind."""
    data_dir = Path(tempfile.mkdtemp(prefix="cluster-", dir=work))
    with spawn_up(data_dir, nodes=nodes, rf=rf, token=secrets.token_hex(16),
                  log_path=data_dir.with_suffix(".log"), program=[binary, "up"],
                  new_session=True, ready_timeout=timeout, down_grace=down_grace,
                  restart_delay=restart_delay) as up:
        yield up


# ----------------------------------------------------------------------- measurements


def _metric(url: str, name: str) -> float:
    """One sample from a node's /metrics (0 when the node does not answer)."""
    return churn.metrics_of(url).get(name, 0.0)


def _received(cluster: UpProcess, indexes: list[int]) -> tuple[float, float]:
    """(keys, bytes) merged by handoff so far on these nodes: cumulative counters."""
    keys = sum(_metric(cluster.urls[i], "ringkv_rebalance_keys_received_total") for i in indexes)
    size = sum(_metric(cluster.urls[i], "ringkv_rebalance_bytes_received_total")
               for i in indexes)
    return keys, size


def _rss_kb(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _sqlite_bytes(node_dir: Path) -> tuple[int, int]:
    """(main database file, WAL file) sizes of one node's SQLite store."""
    db = node_dir / "ringkv.sqlite3"
    wal = node_dir / "ringkv.sqlite3-wal"
    return (db.stat().st_size if db.exists() else 0, wal.stat().st_size if wal.exists() else 0)


def _node_memory(cluster: UpProcess) -> dict[str, dict[str, int]]:
    pids = cluster.node_pids()
    out = {}
    for name, pid in sorted(pids.items()):
        db, wal = _sqlite_bytes(cluster.data_dir / name)
        out[name] = {"pid": pid, "rss_kb": _rss_kb(pid), "db_bytes": db, "wal_bytes": wal}
    return out


def _records(doc: dict[str, Any]) -> dict[str, int]:
    return {m["name"]: m.get("records", 0) for m in doc["members"] if m.get("reachable")}


def _lat_ms(lat: dict[str, float]) -> dict[str, float]:
    return {k: round(lat[k] / 1e3, 3) for k in ("p50", "p99", "p999", "max", "mean")}


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all CPUs, /proc/stat)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


@dataclass
class CpuMark:
    """CPU counters at one instant: the cluster's processes, this process, the machine.

    The difference between two marks splits the machine's busy time into the servers, the
    load generator and everything else; on a shared machine the last one says how far
    the numbers can be trusted.
    """

    wall: float
    server: float
    me: float
    machine: float

    @classmethod
    def take(cls, pids: list[int]) -> CpuMark:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(time.perf_counter(), tree_cpu_seconds(pids),
                   usage.ru_utime + usage.ru_stime, _machine_busy_s())

    def since(self, start: CpuMark) -> dict[str, float]:
        """CPU seconds used since ``start``: server, loadgen (this process), other."""
        server, me = self.server - start.server, self.me - start.me
        other = max(0.0, self.machine - start.machine - server - me)
        return {"wall": self.wall - start.wall, "server": server, "loadgen": me,
                "other": other}


def _cores(cpu: dict[str, float]) -> dict[str, float]:
    wall = cpu["wall"]
    return {k: round(v / wall, 2) if wall else 0.0 for k, v in cpu.items() if k != "wall"}


def bulk_load(cluster: UpProcess, args: argparse.Namespace, keys: int) -> dict[str, Any]:
    """Write keys 0..N-1 once through every node (the load generator's preload)."""
    config = LoadConfig(
        urls=cluster.urls, workload="read", connections=args.load_connections,
        duration=0.5, warmup=0.0, key_size=args.key_size, value_size=args.value_size,
        keyspace=keys, consistency=args.consistency, token=cluster.token, seed=args.seed,
    )
    mark = CpuMark.take([cluster.pid])
    result = run_async(run_load(config))
    cpu = CpuMark.take([cluster.pid]).since(mark)
    return {
        "keys": keys, "seconds": round(result.preload_s, 2), "retried": result.preload_retried,
        "keys_per_s": round(keys / result.preload_s, 1) if result.preload_s else 0.0,
        "connections": args.load_connections, "server_cpu_s": round(cpu["server"], 1),
        "cores": _cores(cpu),
        "check_reads": result.ops, "check_read_errors": result.error_count,
    }


# ------------------------------------------------------------------ load over a handoff


@dataclass
class Slice:
    """One measured window of the continuous client load."""

    t0: float
    t1: float
    result: LoadResult
    server_cpu_s: float
    other_cpu_s: float = 0.0


@dataclass
class Events:
    """perf_counter() times of what happened to the cluster during the load."""

    stop: float = 0.0
    exited: float | None = None
    removed: float | None = None
    settled: float | None = None
    removal_epoch: int | None = None
    settled_epoch: int | None = None
    progress: list[dict[str, Any]] = field(default_factory=list)
    poll_ms: list[float] = field(default_factory=list)


async def _slices(
    config: LoadConfig, slice_s: float, done: asyncio.Event, pids: list[int]
) -> list[Slice]:
    """Back-to-back load windows until ``done``; CPU sampled at each window's edges."""
    out: list[Slice] = []
    while not done.is_set():
        edges: dict[str, CpuMark] = {}

        def on_window(edge: str, edges: dict[str, CpuMark] = edges) -> None:
            edges[edge] = CpuMark.take(pids)

        seed = None if config.seed is None else config.seed + len(out)
        cfg = dataclasses.replace(config, duration=slice_s, warmup=0.0, preload=False,
                                  seed=seed)
        result = await run_load(cfg, on_window=on_window)
        cpu = edges["end"].since(edges["start"])
        out.append(Slice(edges["start"].wall, edges["end"].wall, result, cpu["server"],
                         cpu["other"]))
    return out


async def _watch_handoff(
    cluster: UpProcess, victim: str, victim_pid: int, start_epoch: int, args: argparse.Namespace,
    events: Events, progress_interval: float,
) -> None:
    """Take the node out, then poll the membership store every 100 ms until it settles.

    ``progress_interval`` > 0 also samples ``GET /v1/cluster`` (rebalance progress) that
    often; it costs every node a record count, so keep it sparse.
    """
    events.stop = time.perf_counter()
    if args.loss == "kill":
        # SIGKILL, then mark it stopped for good so the launcher does not restart it.
        await asyncio.to_thread(cluster.control.kill, victim, "SIGKILL")
    await asyncio.to_thread(cluster.control.stop, victim)
    next_progress = events.stop
    deadline = events.stop + args.handoff_timeout
    while time.perf_counter() < deadline:
        now = time.perf_counter()
        if events.exited is None and not running(victim_pid):
            events.exited = now
        doc = stored_membership(cluster)
        if doc is not None and doc.epoch > start_epoch:
            names = {m.name for m in doc.members}
            if events.removed is None and victim not in names:
                events.removed, events.removal_epoch = now, doc.epoch
            if events.removed is not None and doc.settled:
                events.settled, events.settled_epoch = now, doc.epoch
                return
        if progress_interval > 0 and now >= next_progress:
            next_progress = now + progress_interval
            t = time.perf_counter()
            with contextlib.suppress(Exception):
                cdoc = await asyncio.to_thread(cluster_doc, cluster, 0, 10.0)
                events.poll_ms.append((time.perf_counter() - t) * 1e3)
                events.progress.append({"t": round(time.perf_counter() - events.stop, 2),
                                        "epoch": cdoc["epoch"], "settled": cdoc["settled"],
                                        **cdoc["rebalance"]})
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no settled epoch without {victim} {args.handoff_timeout:g} s "
                       f"after the {args.loss}")


def _timing(ev: Events) -> dict[str, float | None]:
    assert ev.settled is not None
    return {
        "stop_to_exit": _since(ev.exited, ev.stop),
        "stop_to_removal_epoch": _since(ev.removed, ev.stop),
        "removal_to_settled": _since(ev.settled, ev.removed or ev.stop),
        "stop_to_settled": _since(ev.settled, ev.stop),
    }


async def _load_through_handoff(
    cluster: UpProcess, victim: str, victim_pid: int, survivors: list[int],
    start_epoch: int, args: argparse.Namespace,
) -> tuple[list[Slice], Events, float]:
    """Client load on the survivors: warm-up, baseline, node loss, handoff, tail.

    Nothing is asked of the cluster between the warm-up and the loss: counters and record
    counts are read before the load starts (each read makes the nodes count records).
    """
    config = LoadConfig(
        urls=[cluster.urls[i] for i in survivors], workload="mixed",
        read_fraction=args.read_fraction, connections=args.connections,
        key_size=args.key_size, value_size=args.value_size, keyspace=args.keys,
        consistency=args.consistency, token=cluster.token, seed=args.seed,
    )
    done = asyncio.Event()
    events = Events()
    load = asyncio.create_task(_slices(config, args.slice, done, [cluster.pid]))
    start = time.perf_counter()
    try:
        await asyncio.sleep(args.warmup + args.baseline)
        await _watch_handoff(cluster, victim, victim_pid, start_epoch, args, events,
                             args.progress_interval)
        await asyncio.sleep(args.tail)
    finally:
        done.set()
        slices = await load
    return slices, events, start + args.warmup


def _phase(slices: list[Slice], lo: float, hi: float, whole: bool) -> dict[str, Any]:
    """Merge the windows inside [lo, hi): entirely inside, or (``whole`` False) at least
    half inside; falls back to the most overlapping window when none qualifies."""

    def overlap(s: Slice) -> float:
        return max(0.0, min(s.t1, hi) - max(s.t0, lo)) / (s.t1 - s.t0)

    need = 1.0 if whole else 0.5
    chosen = [s for s in slices if overlap(s) >= need - 1e-9]
    if not chosen and slices and hi > lo:
        best = max(slices, key=overlap)
        chosen = [best] if overlap(best) > 0 else []
    hist = Histogram()
    errors: dict[str, int] = {}
    ops = writes = 0
    window = cpu = loadgen = other = 0.0
    for s in chosen:
        hist.merge(s.result.histogram)
        ops += s.result.ops
        writes += s.result.by_op.get("write", {}).get("ops", 0)
        window += s.t1 - s.t0
        cpu += s.server_cpu_s
        other += s.other_cpu_s
        loadgen += s.result.loadgen_cpu_s
        for k, v in s.result.errors.items():
            errors[k] = errors.get(k, 0) + v
    return {
        "windows": len(chosen), "window_s": round(window, 2), "ops": ops,
        "ops_per_s": round(ops / window, 1) if window else 0.0,
        "write_ops": writes, "errors": errors,
        "latency_ms": _lat_ms(hist.summary()),
        "server_cores": round(cpu / window, 2) if window else 0.0,
        "loadgen_cores": round(loadgen / window, 2) if window else 0.0,
        "other_cores": round(other / window, 2) if window else 0.0,
    }


def scenario_rereplication(
    args: argparse.Namespace, work: Path, want_rss: bool
) -> dict[str, Any]:
    n, rf = args.nodes, args.rf
    out: dict[str, Any] = {"nodes": n, "rf": rf, "keys": args.keys, "loss": args.loss,
                           "loadavg_start": _loadavg()}
    with local_cluster(work, n, rf, args.ringkv_bin, down_grace=args.down_grace) as cluster:
        mem_before = _node_memory(cluster)
        print(f"   loading {args.keys} keys ...", flush=True)
        out["load"] = bulk_load(cluster, args, args.keys)
        print(f"   loaded in {out['load']['seconds']} s "
              f"({out['load']['keys_per_s']:.0f} keys/s)", flush=True)
        doc = cluster_doc(cluster)
        if want_rss:
            out["rss"] = _rss_report(mem_before, _node_memory(cluster), _records(doc), args)
        victim_i = n - 1
        victim = f"node-{victim_i}"
        survivors = [i for i in range(n) if i != victim_i]
        victim_pid = cluster.node_pids()[victim]
        start_epoch = doc["epoch"]
        # The workload rewrites existing keys only, so these hold until the loss.
        keys_before, bytes_before = _received(cluster, survivors)
        records = _records(doc)
        print(f"   client load on {len(survivors)} nodes; {args.loss} {victim} after "
              f"{args.warmup + args.baseline:g} s", flush=True)
        slices, ev, t_base = run_async(_load_through_handoff(
            cluster, victim, victim_pid, survivors, start_epoch, args))
        assert ev.settled is not None
        keys_after, bytes_after = _received(cluster, survivors)
        out["replicas_after"] = _wait_cleanup(cluster, args.keys, min(rf, n - 1))
        out["loadavg_end"] = _loadavg()

    keys = keys_after - keys_before
    size = bytes_after - bytes_before
    handoff_s = ev.settled - ev.stop
    moving_s = ev.settled - (ev.removed or ev.stop)
    lost = records.get(victim, 0)
    needed = lost if n - 1 >= rf else 0
    record_bytes = args.key_size + args.value_size
    total = sum(records.values())
    out.update({
        "victim": victim, "victim_records": lost, "stored_copies": total,
        "timing_s": _timing(ev),
        "epochs": {"before": start_epoch, "removal": ev.removal_epoch,
                   "settled": ev.settled_epoch},
        "transferred": {
            "keys": int(keys), "bytes": int(size),
            "mb_per_s": round(size / MB / handoff_s, 3),
            "keys_per_s": round(keys / handoff_s, 1),
            "mb_per_s_after_removal": round(size / MB / moving_s, 3) if moving_s > 0 else None,
            "keys_per_s_after_removal": round(keys / moving_s, 1) if moving_s > 0 else None,
        },
        "ideal": {
            "keys": needed, "bytes": needed * record_bytes,
            "definition": "one new copy of every record the lost node held (its record "
                          "count just before the loss); 0 when fewer than rf nodes remain",
            "share_of_stored_copies": round(needed / total, 4) if total else 0.0,
            "one_over_n": round(1 / n, 4),
        },
        "transferred_over_ideal": round(keys / needed, 3) if needed else None,
        "client": {
            "urls": len(survivors), "connections": args.connections,
            "workload": f"mixed {args.read_fraction:g} reads", "consistency": args.consistency,
            "slice_s": args.slice,
            "baseline": _phase(slices, t_base, ev.stop, whole=True),
            "during": _phase(slices, ev.stop, ev.settled, whole=False),
            "after": _phase(slices, ev.settled, float("inf"), whole=True),
        },
        "timeline": [
            {"t": round(s.t0 - ev.stop, 2), "ops_per_s": round(s.result.ops_per_s, 1),
             "p99_ms": round(s.result.latency_us["p99"] / 1e3, 2),
             "errors": s.result.error_count,
             "server_cores": round(s.server_cpu_s / (s.t1 - s.t0), 2),
             "other_cores": round(s.other_cpu_s / (s.t1 - s.t0), 2)}
            for s in slices
        ],
        "progress": ev.progress,
        "cluster_poll_ms": round(sum(ev.poll_ms) / len(ev.poll_ms), 1) if ev.poll_ms else None,
    })
    out["client"]["during_over_baseline"] = _ops_ratio(out["client"])
    return out


def _ops_ratio(client: dict[str, Any]) -> float | None:
    """Client ops/s during the event over the baseline of the same run."""
    base = client["baseline"]["ops_per_s"]
    return round(client["during"]["ops_per_s"] / base, 3) if base else None


def _rate(count: float, t0: float | None, t1: float | None) -> float | None:
    return round(count / (t1 - t0), 1) if t0 is not None and t1 is not None and t1 > t0 else None


def _since(t: float | None, origin: float) -> float | None:
    return None if t is None else round(t - origin, 2)


def _wait_cleanup(
    cluster: UpProcess, keys: int, copies: int, timeout: float = 60.0
) -> dict[str, Any]:
    """Poll until the survivors hold exactly ``copies`` records per key (excess dropped)."""
    t0 = time.monotonic()
    while True:
        records = _records(cluster_doc(cluster))
        total = sum(records.values())
        elapsed = time.monotonic() - t0
        if total == keys * copies or elapsed > timeout:
            return {"records": records, "per_key": round(total / keys, 4),
                    "expected_per_key": copies, "waited_s": round(elapsed, 1)}
        time.sleep(0.5)


# ------------------------------------------------------------------------- RSS per key


def _rss_report(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]],
    records: dict[str, int], args: argparse.Namespace,
) -> dict[str, Any]:
    nodes = {}
    for name, a in after.items():
        b = before.get(name, {"rss_kb": 0})
        held = records.get(name, 0)
        per_m = 1e6 / held if held else 0.0
        sqlite_bytes = a["db_bytes"] + a["wal_bytes"]
        nodes[name] = {
            "records": held, "rss_before_mb": round(b["rss_kb"] / 1024, 1),
            "rss_after_mb": round(a["rss_kb"] / 1024, 1),
            "rss_growth_mb_per_m_records": round((a["rss_kb"] - b["rss_kb"]) / 1024 * per_m, 1),
            "sqlite_db_mb": round(a["db_bytes"] / MB, 1), "sqlite_wal_mb": round(a["wal_bytes"] / MB, 1),
            "sqlite_mb_per_m_records": round(sqlite_bytes / MB * per_m, 1),
            "db_mb_per_m_records": round(a["db_bytes"] / MB * per_m, 1),
        }

    def mean(key: str) -> float:
        return round(sum(v[key] for v in nodes.values()) / len(nodes), 1) if nodes else 0.0

    return {
        "keys": args.keys, "value_bytes": args.value_size, "key_bytes": args.key_size,
        "nodes": nodes,
        "mean": {k: mean(k) for k in ("records", "rss_before_mb", "rss_after_mb",
                                      "rss_growth_mb_per_m_records", "sqlite_mb_per_m_records",
                                      "db_mb_per_m_records")},
        "payload_mb_per_m_records": round((args.key_size + args.value_size), 1),
    }


def scenario_rss(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    with local_cluster(work, args.nodes, args.rf, args.ringkv_bin) as cluster:
        before = _node_memory(cluster)
        load = bulk_load(cluster, args, args.keys)
        report = _rss_report(before, _node_memory(cluster), _records(cluster_doc(cluster)),
                             args)
    return {**report, "load": load, "nodes_in_cluster": args.nodes}


# ------------------------------------------------------------------------- data moved


def scenario_moved(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Quiet cluster of n nodes: copies made when one leaves, vs the ideal 1/n."""
    rows = []
    for n in args.moved_nodes:
        print(f"   n={n}: loading {args.moved_keys} keys ...", flush=True)
        with local_cluster(work, n, args.rf, args.ringkv_bin,
                           down_grace=args.down_grace) as cluster:
            load = bulk_load(cluster, args, args.moved_keys)
            doc = cluster_doc(cluster)
            records = _records(doc)
            victim, survivors = f"node-{n - 1}", list(range(n - 1))
            k0, b0 = _received(cluster, survivors)
            ev = Events()
            run_async(_watch_handoff(cluster, victim, cluster.node_pids()[victim],
                                     doc["epoch"], args, ev, progress_interval=0.0))
            k1, b1 = _received(cluster, survivors)
        total = sum(records.values())
        moved = int(k1 - k0)
        lost = records.get(victim, 0)
        ideal_share = 1 / n if n - 1 >= args.rf else 0.0
        share = moved / total if total else 0.0
        row = {
            "nodes": n, "rf": args.rf, "keys": args.moved_keys, "stored_copies": total,
            "victim_records": lost, "victim_share": round(lost / total, 4) if total else 0.0,
            "moved_keys": moved, "moved_bytes": int(b1 - b0),
            "moved_share": round(share, 4), "ideal_share": round(ideal_share, 4),
            "moved_over_ideal": round(share / ideal_share, 3) if ideal_share else None,
            "moved_over_victim_records": round(moved / lost, 3) if lost and ideal_share else None,
            "timing_s": _timing(ev), "settled_epoch": ev.settled_epoch,
            "keys_per_s_after_removal": _rate(moved, ev.removed, ev.settled),
            "load_keys_per_s": load["keys_per_s"],
        }
        rows.append(row)
        print(f"   n={n}: moved {moved} of {total} copies = {share:.4f} "
              f"(ideal {ideal_share:.4f}); settled {row['timing_s']['stop_to_settled']} s "
              "after the stop", flush=True)
    return rows


# ------------------------------------------------------------------------ throughput


def scenario_throughput(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Write then read, quorum, connections spread over every node, per cluster size."""
    rows = []
    settings = argparse.Namespace(
        connections=args.throughput_connections, duration=args.throughput_duration,
        warmup=2.0, key_size=args.key_size, value_size=args.value_size,
        keyspace=args.throughput_keyspace, consistency=args.consistency, seed=args.seed,
    )
    for n in args.throughput_nodes:
        with local_cluster(work, n, args.rf, args.ringkv_bin) as cluster:
            system = System("ringkv", cluster.urls, [cluster.pid], ringkv_version(),
                            cluster.token)
            for workload in ("write", "read"):
                loadavg = _loadavg()
                mark = CpuMark.take(system.pids)
                row = measure(system, workload, settings)
                cpu = CpuMark.take(system.pids).since(mark)
                r = row.result
                rows.append({
                    "nodes": n, "workload": workload, "ops_per_s": round(r.ops_per_s, 1),
                    "latency_ms": _lat_ms(r.latency_us), "errors": r.errors,
                    "server_cpu_s": round(row.server_cpu_s, 1),
                    "server_cores": round(row.server_cpu_s / r.window_s, 2),
                    "server_cpu_us_per_op": round(1e6 * row.server_cpu_s / max(r.ops, 1)),
                    "loadgen_cores": round(r.loadgen_cpu_s / r.window_s, 2),
                    "other_cores_over_run": _cores(cpu)["other"],
                    "loadavg_start": loadavg,
                })
                print(f"   n={n} {workload:<5} {r.ops_per_s:>8.0f} ops/s  p99 "
                      f"{r.latency_us['p99'] / 1e3:.1f} ms  server {rows[-1]['server_cores']} "
                      f"cores, other work {rows[-1]['other_cores_over_run']} cores", flush=True)
    return rows


# ------------------------------------------------------------------- backup and restore


async def _cli(args: argparse.Namespace, token: str, *argv: str) -> tuple[dict[str, Any], float]:
    """`ringkv <argv>` as a process of its own: its JSON summary and its CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = await asyncio.create_subprocess_exec(
        args.ringkv_bin, *argv, env={**os.environ, "RINGKV_TOKEN": token},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"ringkv {argv[0]} exited {proc.returncode}: {err.decode()[-500:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return dict(json.loads(out)), cpu


def _tool_rates(summary: dict[str, Any], cpu: float, records: int, loadavg: list[float]
                ) -> dict[str, Any]:
    """Rates of one `ringkv backup` or `restore` run, by its own clock (process start-up
    left out)."""
    seconds = summary["seconds"]
    return {
        "seconds": seconds, "records": records, "bytes": summary["bytes"],
        "mb_per_s": round(summary["bytes"] / MB / seconds, 3),
        "keys_per_s": round(records / seconds, 1), "tool_cpu_s": round(cpu, 1),
        "loadavg_end": loadavg,
    }


async def _load_through_backup(cluster: UpProcess, args: argparse.Namespace, to: Path
                               ) -> tuple[list[Slice], float, float, float, dict[str, Any], float]:
    """Client load on every node: warm-up, baseline, a backup, tail. The windows, when
    the baseline began, when the backup process started and ended, its summary and CPU
    seconds."""
    config = LoadConfig(
        urls=cluster.urls, workload="mixed", read_fraction=args.read_fraction,
        connections=args.connections, key_size=args.key_size, value_size=args.value_size,
        keyspace=args.keys, consistency=args.consistency, token=cluster.token, seed=args.seed,
    )
    done = asyncio.Event()
    load = asyncio.create_task(_slices(config, args.slice, done, [cluster.pid]))
    start = time.perf_counter()
    try:
        await asyncio.sleep(args.warmup + args.baseline)
        began = time.perf_counter()
        summary, cpu = await _cli(args, cluster.token, "backup", "--url", ",".join(cluster.urls),
                                  "--to", str(to), "--parallel", str(args.backup_parallel))
        ended = time.perf_counter()
        await asyncio.sleep(args.tail)
    finally:
        done.set()
        slices = await load
    return slices, start + args.warmup, began, ended, summary, cpu


def scenario_backup(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    n, rf = args.nodes, args.rf
    out: dict[str, Any] = {"nodes": n, "rf": rf, "keys": args.keys,
                           "parallel": args.backup_parallel, "loadavg_start": _loadavg()}
    to = work / "backups"
    with local_cluster(work, n, rf, args.ringkv_bin) as cluster:
        print(f"   loading {args.keys} keys ...", flush=True)
        out["load"] = bulk_load(cluster, args, args.keys)
        print(f"   loaded in {out['load']['seconds']} s; client load on {n} nodes, backup "
              f"after {args.warmup + args.baseline:g} s", flush=True)
        out["loadavg_backup_start"] = _loadavg()
        slices, t_base, began, ended, summary, cpu = run_async(
            _load_through_backup(cluster, args, to))
    out["backup"] = {**_tool_rates(summary, cpu, summary["records"], _loadavg()),
                     "archive_bytes": summary["size"], "parts": summary["parts"]}
    client: dict[str, Any] = {
        "connections": args.connections, "workload": f"mixed {args.read_fraction:g} reads",
        "consistency": args.consistency, "slice_s": args.slice,
        "baseline": _phase(slices, t_base, began, whole=True),
        "during": _phase(slices, began, ended, whole=False),
    }
    client["during_over_baseline"] = _ops_ratio(client)
    out["client"] = client
    out["timeline"] = [
        {"t": round(s.t0 - began, 2), "ops_per_s": round(s.result.ops_per_s, 1),
         "p99_ms": round(s.result.latency_us["p99"] / 1e3, 2), "errors": s.result.error_count,
         "other_cores": round(s.other_cpu_s / (s.t1 - s.t0), 2)}
        for s in slices
    ]
    print(f"   backup: {summary['records']} records in {summary['seconds']:.1f} s "
          f"({out['backup']['mb_per_s']:.2f} MB/s); clients kept "
          f"{client['during_over_baseline']} of their ops/s", flush=True)
    with local_cluster(work, n, rf, args.ringkv_bin) as target:
        print(f"   restoring into a fresh {n}-node cluster ...", flush=True)
        out["loadavg_restore_start"] = _loadavg()
        restored, cpu = run_async(_cli(args, target.token, "restore", "--url",
                                       ",".join(target.urls), "--parallel",
                                       str(args.backup_parallel), summary["backup"]))
    out["restore"] = _tool_rates(restored, cpu, restored["merged"], _loadavg())
    shutil.rmtree(to, ignore_errors=True)
    return out


# ------------------------------------------------------------------------------ churn


def churn_options(args: argparse.Namespace) -> churn.Options:
    cases = tuple(c.strip() for c in args.churn_cases.split(",") if c.strip())
    return churn.Options(
        cases=cases, keys=args.churn_keys, key_size=args.key_size, value_size=args.value_size,
        rate=args.churn_rate, write_fraction=args.churn_write_fraction,
        workers=args.churn_workers, away=args.churn_away, outage=args.churn_outage,
        baseline=args.churn_baseline, tail=args.churn_tail,
        settle_timeout=args.churn_settle_timeout, count_for=args.churn_count_for,
        remove=args.churn_remove,
        vnodes=node_config.load(overrides={"node_name": "bench"}).vnodes, seed=args.seed,
    )


def scenario_churn(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Load a cluster, then run the churn cases on it (:mod:`ringkv.bench.churn`)."""
    opts = churn_options(args)
    with local_cluster(work, args.nodes, args.rf, args.ringkv_bin,
                       down_grace=args.churn_down_grace,
                       restart_delay=args.churn_restart_delay) as cluster:
        print(f"   loading {opts.keys} keys ...", flush=True)
        load = bulk_load(cluster, args, opts.keys)
        print(f"   loaded in {load['seconds']} s ({load['keys_per_s']:.0f} keys/s)", flush=True)
        bulk_value = payload(args.value_size, args.seed).decode()
        result = churn.Churn(cluster, opts, time.monotonic()).run(bulk_value)
    return {"nodes": args.nodes, "rf": args.rf, "keys": opts.keys,
            "down_grace": args.churn_down_grace, "restart_delay": args.churn_restart_delay,
            "load": load, "options": dataclasses.asdict(opts), **result}


# ----------------------------------------------------------------------------- report


def _fmt(v: Any, spec: str = "") -> str:
    return "n/a" if v is None else format(v, spec)


def render_markdown(report: dict[str, Any]) -> str:
    m, a, sc, ns = report["machine"], report["args"], report["scenarios"], report["node_settings"]
    budget = ", ".join(f"`{k}={v:g}`" for k, v in ns.items() if k.startswith("handoff_"))
    lines = [
        f"# ringkv scale benchmark, {report['started'][:10]}",
        "",
        f"Run at {report['started'][:16].replace('T', ' ')} UTC on {m['system']}, "
        f"{m['cpus']} CPUs ({m['cpu_model']}), data on {m['fs']}; load average "
        f"{m['loadavg_start']} at start, {m['loadavg_end']} at the end (other work shares "
        f"this machine). Took {report['duration_s'] / 60:.1f} min. Servers and the load "
        "generator share the CPUs. Local clusters (`ringkv up`, SQLite "
        f"`synchronous={ns['sqlite_synchronous'].upper()}`), {a['key_size']}-byte keys, "
        f"{a['value_size']}-byte values, consistency `{a['consistency']}`. Handoff budget "
        f"of every node: {budget}.",
    ]
    if "rereplication" in sc:
        lines += _md_rereplication(sc["rereplication"], a)
    if "rss" in sc:
        lines += _md_rss(sc["rss"])
    if "moved" in sc:
        lines += _md_moved(sc["moved"])
    if "throughput" in sc:
        lines += _md_throughput(sc["throughput"], a)
    if "churn" in sc:
        lines += churn.markdown(sc["churn"])
    if "backup" in sc:
        lines += _md_backup(sc["backup"])
    v = report["versions"]
    lines += [
        "", "## Versions", "",
        f"- ringkv {v['ringkv']} (this benchmark); the clusters ran `{v['ringkv_bin']}` "
        f"(code at {v['ringkv_bin_commit'] or 'unknown'})",
        f"- Python {v['python']}, aiohttp {v['aiohttp']}, "
        f"uvloop {v['uvloop']}, SQLite {v['sqlite']}",
        f"- command: `{report['command']}`",
    ]
    if report["notes"]:
        lines += ["", "## Notes", "", *(f"- {n}" for n in report["notes"])]
    return "\n".join(lines) + "\n"


def _md_rereplication(r: dict[str, Any], a: dict[str, Any]) -> list[str]:
    t, x, c = r["timing_s"], r["transferred"], r["client"]
    b, d, af = c["baseline"], c["during"], c["after"]
    ideal = r["ideal"]
    how = ("killed (SIGKILL, not restarted)" if r["loss"] == "kill"
           else "stopped (SIGTERM, removed for good)")
    lines = [
        "", f"## Re-replication after a node loss ({r['nodes']} nodes, rf={r['rf']}, "
        f"{r['keys']:,} keys)", "",
        f"Bulk load: {r['load']['keys']:,} keys in {r['load']['seconds']} s "
        f"({r['load']['keys_per_s']:,.0f} keys/s, {r['load']['connections']} connections over "
        f"every node, `{c['consistency']}`; servers used {r['load']['cores']['server']} cores, "
        f"other work on the machine {r['load']['cores']['other']}). Then a closed-loop client "
        f"load ({c['workload']}, "
        f"{c['connections']} connections over the {c['urls']} nodes that stay, consistency "
        f"`{c['consistency']}`, measured in back-to-back {c['slice_s']:g} s windows) ran "
        f"{a['warmup']:g} s warm-up + {a['baseline']:g} s baseline; then `{r['victim']}` was "
        f"{how} while the load kept running.",
        "",
        "| what | value |",
        "|---|---:|",
        f"| stop → process exited | {_fmt(t['stop_to_exit'])} s |",
        f"| stop → removal epoch ({r['epochs']['removal']}) | {_fmt(t['stop_to_removal_epoch'])} s |",
        f"| removal → settled epoch ({r['epochs']['settled']}) | {t['removal_to_settled']} s |",
        f"| **stop → settled** | **{t['stop_to_settled']} s** |",
        f"| records the lost node held (= new copies needed) | {r['victim_records']:,} "
        f"({ideal['share_of_stored_copies']:.1%} of {r['stored_copies']:,} stored copies; 1/n = "
        f"{ideal['one_over_n']:.1%}) |",
        f"| keys re-replicated (sum of `keys_received`) | {x['keys']:,} "
        f"(**{_fmt(r['transferred_over_ideal'])}x** the copies needed) |",
        f"| bytes re-replicated (key+value) | {x['bytes'] / MB:.2f} MB (ideal "
        f"{ideal['bytes'] / MB:.2f} MB) |",
        f"| re-replication rate, stop → settled | **{x['mb_per_s']:.2f} MB/s, "
        f"{x['keys_per_s']:,.0f} keys/s** |",
        f"| re-replication rate, removal → settled | {_fmt(x['mb_per_s_after_removal'], '.2f')} "
        f"MB/s, {_fmt(x['keys_per_s_after_removal'], ',.0f')} keys/s |",
        f"| client ops/s during / before | **{_fmt(c['during_over_baseline'], '.2f')}** "
        "(target >= 0.7) |",
        f"| replicas per key after cleanup | {r['replicas_after']['per_key']} (expected "
        f"{r['replicas_after']['expected_per_key']}) |",
        "",
        "| client load | windows | s | ops/s | p50 ms | p99 ms | p99.9 ms | errors "
        "| server cores | loadgen cores | other work cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, p in (("before (baseline)", b), ("during handoff", d), ("after settle", af)):
        errs = sum(p["errors"].values())
        lines.append(
            f"| {name} | {p['windows']} | {p['window_s']} | {p['ops_per_s']:,.0f} "
            f"| {p['latency_ms']['p50']} | {p['latency_ms']['p99']} | {p['latency_ms']['p999']} "
            f"| {errs} | {p['server_cores']} | {p['loadgen_cores']} | {p['other_cores']} |"
        )
    tl = r["timeline"]
    group = max(1, -(-len(tl) // 40))  # at most ~40 points in the text; all in the JSON
    series = ", ".join(
        f"{g[0]['t']:+.1f}s: {sum(w['ops_per_s'] for w in g) / len(g):,.0f}"
        for g in (tl[i : i + group] for i in range(0, len(tl), group))
    )
    per = f"per {group} windows" if group > 1 else "per window"
    lines += ["", f"Client ops/s {per} (t = window start relative to the stop; settled at "
              f"+{t['stop_to_settled']} s): {series}."]
    if r["progress"]:
        lines.append(
            f"`GET /v1/cluster` sampled every {a['progress_interval']:g} s during the handoff "
            f"(mean {r['cluster_poll_ms']} ms per call); ranges left: "
            + ", ".join(f"{p['t']:.0f}s: {p['ranges_left']}" for p in r["progress"]) + "."
        )
    return lines


def _md_backup(r: dict[str, Any]) -> list[str]:
    bk, rs, c = r["backup"], r["restore"], r["client"]
    lines = [
        "", f"## Backup and restore ({r['nodes']} nodes, rf={r['rf']}, {r['keys']:,} keys)", "",
        f"Bulk load: {r['load']['keys']:,} keys in {r['load']['seconds']} s. Then a closed-loop "
        f"client load ({c['workload']}, {c['connections']} connections over every node, "
        f"`{c['consistency']}`, back-to-back {c['slice_s']:g} s windows) ran while `ringkv backup "
        f"--parallel {r['parallel']}` (a process of its own on the same machine) backed the "
        "cluster up; then `ringkv restore` put the backup into a fresh cluster of the same size "
        "with no other load. Rates are by the tools' own clocks; the restore's includes "
        "reading every part through before the first import.",
        "",
        "| what | value |",
        "|---|---:|",
        f"| backup | {bk['records']:,} records, {bk['bytes'] / MB:.1f} MB of keys and values "
        f"({bk['archive_bytes'] / MB:.1f} MB archive, {bk['parts']} parts) in {bk['seconds']} s |",
        f"| backup rate, under client load | **{bk['mb_per_s']:.2f} MB/s, "
        f"{bk['keys_per_s']:,.0f} keys/s** (the tool used {bk['tool_cpu_s']} CPU s) |",
        f"| client ops/s during the backup / before | **{_fmt(c['during_over_baseline'], '.2f')}** "
        "(target >= 0.7) |",
        f"| restore into a fresh cluster | {rs['records']:,} records in {rs['seconds']} s: "
        f"**{rs['mb_per_s']:.2f} MB/s, {rs['keys_per_s']:,.0f} keys/s** (the tool used "
        f"{rs['tool_cpu_s']} CPU s) |",
        f"| load average (1/5/15 min) | {r['loadavg_backup_start']} as the backup began, "
        f"{bk['loadavg_end']} as it ended, {rs['loadavg_end']} as the restore ended |",
        "",
        "| client load | windows | s | ops/s | p50 ms | p99 ms | errors | server cores "
        "| other work cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, p in (("before (baseline)", c["baseline"]), ("during the backup", c["during"])):
        lines.append(
            f"| {name} | {p['windows']} | {p['window_s']} | {p['ops_per_s']:,.0f} "
            f"| {p['latency_ms']['p50']} | {p['latency_ms']['p99']} | {sum(p['errors'].values())} "
            f"| {p['server_cores']} | {p['other_cores']} |")
    return lines


def _md_rss(r: dict[str, Any]) -> list[str]:
    mean = r["mean"]
    lines = [
        "", f"## Node memory and disk per million records ({r['keys']:,} keys loaded)", "",
        "RSS from `/proc/<pid>/status` VmRSS of each node before and after the bulk load; "
        "SQLite = main file + WAL. Per million records *held by that node* (each key is on "
        "rf nodes).",
        "",
        "| node | records | RSS before MB | RSS after MB | RSS growth MB / M records "
        "| SQLite db MB | WAL MB | SQLite MB / M records |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, n in r["nodes"].items():
        lines.append(
            f"| {name} | {n['records']:,} | {n['rss_before_mb']} | {n['rss_after_mb']} "
            f"| {n['rss_growth_mb_per_m_records']} | {n['sqlite_db_mb']} | {n['sqlite_wal_mb']} "
            f"| {n['sqlite_mb_per_m_records']} |"
        )
    lines += [
        f"| **mean** | {mean['records']:,.0f} | {mean['rss_before_mb']} | {mean['rss_after_mb']} "
        f"| **{mean['rss_growth_mb_per_m_records']}** | | | **{mean['sqlite_mb_per_m_records']}** |",
        "",
        f"Payload alone is {r['payload_mb_per_m_records']:g} MB per million records "
        f"(key+value); the main database file alone is {mean['db_mb_per_m_records']} MB per "
        f"million. RSS grew {mean['rss_after_mb'] - mean['rss_before_mb']:.1f} MB per node in "
        "all: records live in SQLite on disk and its page cache is bounded (SQLite's default, "
        "about 2 MB per connection), so the per-million RSS figure shrinks as N grows; compare "
        "runs with different --keys before reading it as a per-key cost.",
    ]
    return lines


def _md_moved(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "", "## Data moved when one of n nodes leaves (quiet cluster)", "",
        "Records copied by handoff (sum of `keys_received` deltas) over all stored copies, vs "
        "the ideal 1/n (one new copy of each range the lost node held). With n = rf nothing "
        "has to move: every survivor already holds every key.",
        "",
        "| n | keys | stored copies | lost node's share | moved | moved share | ideal 1/n "
        "| moved / ideal | moved / lost node's records | stop → exit / removal / settled s "
        "| keys/s after removal |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t = r["timing_s"]
        lines.append(
            f"| {r['nodes']} | {r['keys']:,} | {r['stored_copies']:,} | {r['victim_share']:.4f} "
            f"| {r['moved_keys']:,} | {r['moved_share']:.4f} | {r['ideal_share']:.4f} "
            f"| {_fmt(r['moved_over_ideal'])} | {_fmt(r['moved_over_victim_records'])} "
            f"| {t['stop_to_exit']} / {t['stop_to_removal_epoch']} / {t['stop_to_settled']} "
            f"| {_fmt(r['keys_per_s_after_removal'], ',.0f')} |"
        )
    lines += [
        "",
        "moved / ideal differs from 1 mostly because the lost node's share of the ring is "
        "not exactly 1/n (virtual nodes, 64 per node); moved / lost node's records is the "
        "handoff's own overhead (1.0 = no record copied twice).",
    ]
    return lines


def _md_throughput(rows: list[dict[str, Any]], a: dict[str, Any]) -> list[str]:
    lines = [
        "", "## Throughput of 3, 5 and 7 local nodes", "",
        f"Closed loop, {a['throughput_connections']} connections spread round-robin over every "
        f"node, consistency `{a['consistency']}`, {a['throughput_keyspace']:,} keys, 2 s "
        f"warm-up + {a['throughput_duration']:g} s measured per workload. All nodes share "
        f"the machine's {os.cpu_count()} cores, so more nodes means more replication "
        "traffic on the same CPU, not more capacity: this shows the cost of a bigger ring, "
        "not scale-out. *Other work cores*: CPU the rest of the machine used meanwhile "
        "(/proc/stat minus servers and load generator, averaged over the run incl. preload).",
        "",
        "| nodes | workload | ops/s | p50 ms | p99 ms | p99.9 ms | errors | server cores "
        "| server CPU us/op | loadgen cores | other work cores | load avg at start |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        errs = sum(r["errors"].values())
        lat = r["latency_ms"]
        lines.append(
            f"| {r['nodes']} | {r['workload']} | {r['ops_per_s']:,.0f} | {lat['p50']} "
            f"| {lat['p99']} | {lat['p999']} | {errs} | {r['server_cores']} "
            f"| {r['server_cpu_us_per_op']} | {r['loadgen_cores']} | {r['other_cores_over_run']} "
            f"| {r['loadavg_start'][0]} |"
        )
    return lines


# -------------------------------------------------------------------------------- CLI


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    venv_ringkv = Path(sys.executable).parent / "ringkv"
    p = argparse.ArgumentParser(
        prog="python -m ringkv.bench.scale",
        description="Scale benchmarks: re-replication after a node loss, RSS per key, data "
        "moved on a node loss, throughput of 3/5/7 local nodes, backup and restore.",
    )
    p.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS),
                   help=f"comma list of {','.join(SCENARIOS)} (default: all but churn)")
    p.add_argument("--keys", type=int, default=DEFAULT_KEYS,
                   help="keys bulk-loaded for rereplication, rss and backup")
    p.add_argument("--nodes", type=int, default=5, help="cluster size for rereplication/rss")
    p.add_argument("--rf", type=int, default=3)
    p.add_argument("--key-size", type=int, default=16)
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--consistency", choices=("one", "quorum", "all"), default="quorum")
    p.add_argument("--load-connections", type=int, default=64, help="bulk-load connections")
    p.add_argument("-c", "--connections", type=int, default=32,
                   help="client connections during the node loss")
    p.add_argument("--read-fraction", type=float, default=0.9)
    p.add_argument("--warmup", type=float, default=2.0, help="client warm-up s (not measured)")
    p.add_argument("--baseline", type=float, default=10.0, help="client s before the loss")
    p.add_argument("--tail", type=float, default=3.0, help="client s after the settle")
    p.add_argument("--slice", type=float, default=0.5, help="client measurement window s")
    p.add_argument("--loss", choices=("stop", "kill"), default="stop",
                   help="stop: SIGTERM and remove; kill: SIGKILL, then remove (no restart)")
    p.add_argument("--handoff-timeout", type=float, default=1800.0)
    p.add_argument("--down-grace", type=float, default=0.0,
                   help="`ringkv up --down-grace` for the node-loss scenarios (default 0: they "
                   "measure the survivors' restore of a lost node's copies, which the default "
                   "grace of 300 s would only delay)")
    p.add_argument("--progress-interval", type=float, default=5.0,
                   help="s between GET /v1/cluster samples during the handoff (0: none); "
                   "each makes every node count its records")
    p.add_argument("--moved-nodes", type=_ints, default=[3, 5, 7])
    p.add_argument("--moved-keys", type=int, default=DEFAULT_KEYS)
    p.add_argument("--throughput-nodes", type=_ints, default=[3, 5, 7])
    p.add_argument("--throughput-connections", type=int, default=64)
    p.add_argument("--throughput-duration", type=float, default=10.0)
    p.add_argument("--throughput-keyspace", type=int, default=10_000)
    churn_defaults = churn.Options()
    p.add_argument("--churn-keys", type=int, default=churn_defaults.keys,
                   help="keys bulk-loaded for churn")
    p.add_argument("--churn-cases", default=",".join(churn.DEFAULT_CASES),
                   help=f"comma list of {','.join(churn.CASES)}, run in that order on one cluster")
    p.add_argument("--churn-rate", type=float, default=churn_defaults.rate,
                   help="checked client: operations per second")
    p.add_argument("--churn-write-fraction", type=float, default=churn_defaults.write_fraction)
    p.add_argument("--churn-workers", type=int, default=churn_defaults.workers,
                   help="checked client threads")
    p.add_argument("--churn-away", type=float, default=churn_defaults.away,
                   help="s a node is stopped in rolling and stop-all")
    p.add_argument("--churn-outage", type=float, default=churn_defaults.outage,
                   help="s the node is stopped in the outage case")
    p.add_argument("--churn-baseline", type=float, default=churn_defaults.baseline,
                   help="s of client load before a case's first fault")
    p.add_argument("--churn-tail", type=float, default=churn_defaults.tail,
                   help="s of client load after a case settled")
    p.add_argument("--churn-settle-timeout", type=float, default=churn_defaults.settle_timeout)
    p.add_argument("--churn-count-for", type=float, default=churn_defaults.count_for,
                   help="read a step's counters no sooner than this many s after the node's "
                   "start (its first anti-entropy round starts 5 s after it)")
    p.add_argument("--churn-remove", default=churn_defaults.remove,
                   help="node the remove-one case removes")
    p.add_argument("--churn-down-grace", type=float, default=None,
                   help="`ringkv up --down-grace` for churn (default: not passed, so "
                   "ringkv up's own default; a launcher before issue 11 has no such option)")
    p.add_argument("--churn-restart-delay", type=float, default=3.0,
                   help="`ringkv up --restart-delay`: s before a killed node is restarted")
    p.add_argument("--backup-parallel", type=int, default=4,
                   help="--parallel of `ringkv backup` and `ringkv restore`")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    p.add_argument("--name", help="report file stem (default <date>-scale[-<keys>])")
    p.add_argument("--work-dir", type=Path, help="where clusters keep data (default: temp)")
    p.add_argument(
        "--ringkv-bin",
        default=str(venv_ringkv) if venv_ringkv.exists() else shutil.which("ringkv") or "ringkv",
    )
    return p


def _keys_label(keys: int) -> str:
    if keys % 1_000_000 == 0:
        return f"{keys // 1_000_000}m"
    return f"{keys // 1000}k" if keys % 1000 == 0 else str(keys)


def _commit_of(binary: str) -> str | None:
    """The git commit of the work tree a binary lives in (a venv inside a checkout)."""
    where = Path(shutil.which(binary) or binary).resolve().parent
    if not where.is_dir():
        return None
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, check=False, cwd=where).stdout.strip()
    return sha or None


def _node_settings() -> dict[str, Any]:
    """The nodes' settings that shape these numbers: they inherit this environment."""
    settings = node_config.load(overrides={"node_name": "bench"})
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
            if f.name == "sqlite_synchronous" or f.name.startswith("handoff_")}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A SIGTERM unwinds like Ctrl-C, so every cluster started is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not scenarios or any(s not in SCENARIOS for s in scenarios):
        print(f"scale: unknown scenarios in {args.scenarios!r}; pick from {SCENARIOS}",
              file=sys.stderr)
        return 2
    cases = [c.strip() for c in args.churn_cases.split(",") if c.strip()]
    if any(c not in churn.CASES for c in cases):
        print(f"scale: unknown churn cases in {args.churn_cases!r}; pick from {churn.CASES}",
              file=sys.stderr)
        return 2
    started = dt.datetime.now(dt.UTC)
    t_start = time.monotonic()
    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join(["python -m ringkv.bench.scale", *(argv or sys.argv[1:])]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "system": f"{platform.system()} {platform.machine()}", "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(), "loadavg_start": _loadavg(),
        },
        "versions": {
            "ringkv": ringkv_version(), "ringkv_bin": args.ringkv_bin,
            "ringkv_bin_commit": _commit_of(args.ringkv_bin), "python": platform.python_version(),
            "aiohttp": _dist_version("aiohttp"), "uvloop": _dist_version("uvloop"),
            "sqlite": sqlite3.sqlite_version,
        },
        "scenarios": {},
        "notes": [],
    }
    work = Path(tempfile.mkdtemp(prefix="ringkv-scale-", dir=args.work_dir))
    report["machine"]["fs"] = _fs_type(work)
    report["node_settings"] = _node_settings()
    runs: list[tuple[str, Any]] = []
    if "rereplication" in scenarios:
        runs.append(("rereplication",
                     lambda: scenario_rereplication(args, work, "rss" in scenarios)))
    elif "rss" in scenarios:
        runs.append(("rss", lambda: scenario_rss(args, work)))
    if "moved" in scenarios:
        runs.append(("moved", lambda: scenario_moved(args, work)))
    if "throughput" in scenarios:
        runs.append(("throughput", lambda: scenario_throughput(args, work)))
    if "churn" in scenarios:
        runs.append(("churn", lambda: scenario_churn(args, work)))
    if "backup" in scenarios:
        runs.append(("backup", lambda: scenario_backup(args, work)))
    try:
        for name, run in runs:
            print(f"== {name}", flush=True)
            t = time.monotonic()
            try:
                result = run()
            except Exception as exc:  # report it and go on with the next scenario
                detail = " ".join(str(exc).split())
                report["notes"].append(f"{name} failed: {type(exc).__name__}: {detail[:400]}")
                print(f"   FAILED: {exc}", file=sys.stderr, flush=True)
                continue
            if name == "rereplication" and "rss" in result:
                report["scenarios"]["rss"] = {**result.pop("rss"), "load": result["load"],
                                              "nodes_in_cluster": args.nodes}
            report["scenarios"][name] = result
            print(f"   done in {time.monotonic() - t:.0f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["machine"]["loadavg_end"] = _loadavg()
    report["duration_s"] = round(time.monotonic() - t_start, 1)
    if scenarios == ["churn"]:
        stem = args.name or f"{started:%Y-%m-%d}-churn-{_keys_label(args.churn_keys)}"
    else:
        stem = args.name or f"{started:%Y-%m-%d}-scale" + (
            "" if args.keys == DEFAULT_KEYS else f"-{_keys_label(args.keys)}"
        )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    md = render_markdown(report)
    (args.out_dir / f"{stem}.md").write_text(md)
    (args.out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out_dir / f'{stem}.md'}\n\n{md}")
    return 1 if any(" failed: " in n for n in report["notes"]) else 0


if __name__ == "__main__":
    sys.exit(main())
