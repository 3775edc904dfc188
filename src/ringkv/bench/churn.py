"""The churn scenario of ``ringkv.bench.scale``: what restarts, kills and membership
changes cost a loaded cluster, and whether anything was lost or read stale meanwhile.

On one local cluster (`ringkv up`) holding N bulk-loaded keys, the cases run one after
another, each under the light checked client of :mod:`ringkv.bench.churnclient`:

- ``rolling``: every node in turn stopped (`ringkv node stop`), started again after
  ``away`` seconds; the next one once the cluster settled;
- ``bounce``: one node SIGKILLed; the launcher restarts it after its restart delay;
- ``outage``: one node stopped for ``outage`` seconds (a long bounce), then started;
- ``kill-all``: every node SIGKILLed at once; the launcher restarts them all;
- ``stop-all``: every node stopped, all started again after ``away`` seconds;
- ``add-two``: two nodes added at once;
- ``remove-one``: one node removed as a planned scale-in (`ringkv node remove`: it hands
  off, then stops). A launcher without `remove` (before issue 11) gets its `stop`, which
  removed the member at once; the report says which was used.

Per step: records pulled, summed over every node's /metrics (catch-up
`ringkv_rebalance_keys_received_total`, anti-entropy `ringkv_anti_entropy_records_total`,
hints `ringkv_hints_replayed_total`; bytes from `ringkv_rebalance_bytes_received_total`,
with anti-entropy and hint records counted at their key + value size, since neither has a
byte counter), read once the step settled and no sooner than ``count_for`` seconds after
the (last) node's start, so a returning node's first anti-entropy round (5 s after its
start) is in; the ideal (a node that was away: the distinct keys written to its ranges
meanwhile; add/remove: the copies that must move, from the ring); time to settle; epochs
walked. Per case: the same counters over the whole case, client errors by code, latency,
time until quorum reads are served again (whole-cluster cases), and the checker's verdict.

*Settled* means both: the membership document is settled with exactly the expected nodes
as `normal` members (and a removed node's process has exited), and every node that was
away holds every write acknowledged while it was away, at least at the acknowledged
version (`GET /v1/replicas/{key}`, asked only once the document is settled). The second
half is what "caught up" means whatever the mechanism (re-joining, hints, anti-entropy),
so code before and after a change is measured alike.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import threading
import time
import urllib.error
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from ringkv.bench.churnclient import CheckedLoad, Keyspace, Window, check_history
from ringkv.bench.loadgen import LoadConfig, key_name, read_every_key, run_async
from ringkv.bench.suite import http_get
from ringkv.client.history import VersionKey, parse_version
from ringkv.local.control_client import ControlClient, ControlError
from ringkv.local.spawn import UpProcess
from ringkv.node import membership
from ringkv.node.ring import Ring

CASES = ("rolling", "bounce", "outage", "kill-all", "stop-all", "add-two", "remove-one")
DEFAULT_CASES = ("rolling", "bounce", "kill-all", "stop-all", "add-two", "remove-one")
WHOLE_CLUSTER = ("kill-all", "stop-all")
COUNTERS = {
    "catch_up": "ringkv_rebalance_keys_received_total",
    "catch_up_bytes": "ringkv_rebalance_bytes_received_total",
    "anti_entropy": "ringkv_anti_entropy_records_total",
    "hints": "ringkv_hints_replayed_total",
}
RECORDS = "ringkv_keys"
POLL_S = 0.25
PROBED = {"/healthz": "healthy", "/readyz": "ready"}
CONFIRMERS = 32
PROBE = 16  # keys checked before a full pass is worth its cost

# Issue 12's targets.
BOUNCE_FACTOR, BOUNCE_HELD_SHARE, BOUNCE_SETTLE_S = 2.0, 0.01, 10.0
WHOLE_READS_S, WHOLE_SETTLE_S, WHOLE_PULLED_SHARE = 10.0, 30.0, 0.05
ADD_FACTOR = 1.1


@dataclass(frozen=True)
class Options:
    """What the churn run does (``python -m ringkv.bench.scale --churn-*``)."""

    cases: tuple[str, ...] = DEFAULT_CASES
    keys: int = 200_000
    key_size: int = 16
    value_size: int = 100
    rate: float = 150.0
    write_fraction: float = 0.5
    workers: int = 8
    timeout: float = 3.0
    away: float = 10.0
    outage: float = 60.0
    baseline: float = 5.0
    tail: float = 3.0
    settle_timeout: float = 900.0
    # A step's counters are read no sooner than this long after the (last) node's start:
    # a node that was away runs its first anti-entropy round 5 s after it starts.
    count_for: float = 20.0
    remove: str = "node-1"
    vnodes: int = 64
    seed: int = 1


# ------------------------------------------------------------------------ observation


def metrics_of(url: str, timeout: float = 30.0) -> dict[str, float]:
    """Every sample of a node's /metrics, summed over its labels ({} if it does not answer)."""
    status, body = http_get(f"{url}/metrics", timeout=timeout)
    if status != 200:
        return {}
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            sample, _, value = line.rpartition(" ")
            name = sample.split("{", 1)[0]
            out[name] = out.get(name, 0.0) + float(value)
    return out


@dataclass
class NodeState:
    url: str
    pid: int | None = None
    alive: bool = False
    healthy: bool = False  # answered /healthz since this process started
    routed: bool = False  # gets client traffic: was ready once since it started, not drained
    drained: bool = False


class Watcher:
    """The launcher's nodes as they come and go, polled every 0.1 s on a thread: which run
    (since when, under which pid), which answer `/healthz`, and which get client traffic.

    A node gets traffic from its first `/readyz` 200 after it started until it dies or is
    drained (the benchmark drains a node before it stops it): a Kubernetes Service adds a
    pod once it is ready and removes one that terminates. Later readiness changes are not
    followed (a probe with a failure threshold would not see most of them either).
    """

    def __init__(self, control: ControlClient, clock: Callable[[], float],
                 interval: float = 0.1) -> None:
        self.control = control
        self.clock = clock
        self.interval = interval
        self.nodes: dict[str, NodeState] = {}
        self.events: list[tuple[float, str, str]] = []  # (time, node, down|up|healthy|ready)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="churn-watcher", daemon=True)

    def __enter__(self) -> Watcher:
        """Once every running node gets traffic (or after 30 s), watch on a thread."""
        deadline = time.monotonic() + 30.0
        self._poll()
        while (any(st.alive and not st.routed for st in self.nodes.values())
               and time.monotonic() < deadline):
            time.sleep(self.interval)
            self._poll()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError, ControlError, KeyError, ValueError):
                self._poll()

    def _poll(self) -> None:
        for node in self.control.nodes():
            name, pid, alive = str(node["name"]), node.get("pid"), bool(node.get("alive"))
            with self._lock:
                st = self.nodes.setdefault(name, NodeState(str(node["url"])))
                if st.alive and (not alive or pid != st.pid):
                    st.healthy = st.routed = st.drained = False
                    self.events.append((self.clock(), name, "down"))
                if alive and (not st.alive or pid != st.pid):
                    self.events.append((self.clock(), name, "up"))
                st.pid, st.alive = pid, alive
                probe = ("/healthz" if not st.healthy else
                         "/readyz" if not (st.routed or st.drained) else None)
            if not alive or probe is None or http_get(st.url + probe, timeout=0.5)[0] != 200:
                continue
            with self._lock:
                if st.alive and st.pid == pid and not st.drained:
                    if probe == "/healthz":
                        st.healthy = True
                    else:
                        st.routed = True
                    self.events.append((self.clock(), name, PROBED[probe]))

    def drain(self, name: str) -> None:
        """Send no more client traffic to ``name`` until it runs again as a new process."""
        with self._lock:
            st = self.nodes.get(name)
            if st is not None:
                st.routed, st.drained = False, True

    def routed_urls(self) -> list[str]:
        with self._lock:
            return [st.url for st in self.nodes.values() if st.routed]

    def running(self) -> dict[str, NodeState]:
        with self._lock:
            return {name: replace(st) for name, st in self.nodes.items() if st.alive}

    def first(self, node: str, what: str, after: float) -> float | None:
        with self._lock:
            return next((t for t, n, w in self.events if n == node and w == what and t >= after),
                        None)

    def wait(self, node: str, what: str, after: float, timeout: float) -> float | None:
        """When ``node`` was first ``what`` (down, up, healthy, ready) at or after ``after``."""
        deadline = time.monotonic() + timeout
        while (t := self.first(node, what, after)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return t


Snapshot = dict[str, tuple[int | None, dict[str, float]]]


def snapshot(watcher: Watcher) -> Snapshot:
    """Every running node's pid and metrics."""
    nodes = watcher.running()
    with ThreadPoolExecutor(max(1, len(nodes))) as pool:
        metrics = list(pool.map(lambda st: metrics_of(st.url), nodes.values()))
    return {name: (st.pid, m) for (name, st), m in zip(nodes.items(), metrics, strict=True)}


def pulled(before: Snapshot, after: Snapshot) -> dict[str, dict[str, int]]:
    """Per node, what its counters grew by (a node restarted in between counts from 0)."""
    out = {}
    for name, (pid, m) in sorted(after.items()):
        b_pid, b = before.get(name, (None, {}))
        base = b if b_pid == pid else {}
        out[name] = {k: int(m.get(metric, 0.0) - base.get(metric, 0.0))
                     for k, metric in COUNTERS.items()}
    return out


def chained(marks: list[Snapshot]) -> dict[str, dict[str, int]]:
    """What the counters grew by over consecutive snapshots, per node: a node restarted
    between two of them loses only what it counted since the earlier one (a step takes
    one just before its fault), not what it counted before."""
    out: dict[str, dict[str, int]] = {}
    for before, after in itertools.pairwise(marks):
        for name, row in pulled(before, after).items():
            total = out.setdefault(name, dict.fromkeys(row, 0))
            for k, v in row.items():
                total[k] += v
    return out


def cost(rows: dict[str, dict[str, int]], record_bytes: int,
         returning: Iterable[str] | None = None) -> dict[str, int]:
    """Records and bytes pulled by every node; or by the ``returning`` nodes (those that
    were away): their own catch-up and anti-entropy, and every hint replayed, since hints
    go to the nodes that missed writes. Anti-entropy and hint records are counted at
    ``record_bytes`` (neither has a byte counter)."""
    own = list(rows) if returning is None else [n for n in returning if n in rows]
    total = {k: sum(rows[n][k] for n in own) for k in ("catch_up", "anti_entropy", "catch_up_bytes")}
    hints = sum(r["hints"] for r in rows.values())
    return {"catch_up": total["catch_up"], "anti_entropy": total["anti_entropy"], "hints": hints,
            "records": total["catch_up"] + total["anti_entropy"] + hints,
            "bytes": total["catch_up_bytes"] + (total["anti_entropy"] + hints) * record_bytes}


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return round(sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)], 2)


def client_stats(window: Window) -> dict[str, Any]:
    """What the checked client saw in a window: operations, errors by code, latency."""
    ops = window.ops
    ok = [op for op in ops if op.outcome == "ok"]
    lat = sorted((op.complete - op.invoke) * 1e3 for op in ok if op.complete is not None)
    span = window.end - window.start
    return {
        "seconds": round(span, 1), "ops": len(ops),
        "ops_per_s": round(len(ops) / span, 1) if span else 0.0,
        "reads": sum(op.kind == "read" for op in ops),
        "writes": sum(op.kind == "write" for op in ops),
        "failed": len(ops) - len(ok),
        "errors": dict(Counter(f"{kind} {label}" for _, kind, label, _ in window.errors)),
        "error_examples": {f"{kind} {label}": message
                           for _, kind, label, message in reversed(window.errors)},
        "quorum_errors": sum(label.startswith("503") for _, _, label, _ in window.errors),
        "latency_ms": {"p50": _percentile(lat, 0.5), "p99": _percentile(lat, 0.99),
                       "max": _percentile(lat, 1.0)},
    }


def reads_back(window: Window, fault: float, last_up: float) -> dict[str, Any]:
    """When quorum reads were served again after a whole-cluster fault, relative to the
    last node's start: the first read that succeeded, and the end of the last one that
    failed (every later read succeeded)."""
    reads = [op for op in window.ops if op.kind == "read" and op.invoke >= fault]
    ok = [op.complete for op in reads if op.outcome == "ok" and op.complete is not None]
    failed = [op.complete or op.invoke for op in reads if op.outcome != "ok"]
    return {
        "first_ok_read_s": round(min(ok) - last_up, 2) if ok else None,
        "last_failed_read_s": round(max(failed) - last_up, 2) if failed else None,
        "failed_reads": len(failed),
        "failed_reads_after_last_up": sum(op.invoke >= last_up and op.outcome != "ok"
                                          for op in reads),
    }


def _target(what: str, value: float | None, limit: float, unit: str = "") -> dict[str, Any]:
    return {"what": what, "value": value, "target": f"<= {limit:,.6g}{unit}",
            "met": value is not None and value <= limit}


# ------------------------------------------------------------------------------ the run


class Churn:
    """One churn run on a loaded cluster: the cases in order, then the final check."""

    def __init__(self, cluster: UpProcess, opts: Options, t0: float) -> None:
        self.cluster = cluster
        self.opts = opts
        self.t0 = t0
        self.watcher = Watcher(cluster.control, self.now)
        self.keyspace = Keyspace(opts.keys, opts.key_size, "")
        self.load: CheckedLoad | None = None
        self._marks: list[Snapshot] = []  # this case's snapshots, in time order

    def now(self) -> float:
        return time.monotonic() - self.t0

    @property
    def record_bytes(self) -> int:
        return self.opts.key_size + self.opts.value_size

    def run(self, bulk_value: str) -> dict[str, Any]:
        o = self.opts
        self.keyspace = Keyspace(o.keys, o.key_size, bulk_value)
        out: dict[str, Any] = {"cases": {}}
        with self.watcher:
            self.load = CheckedLoad(
                self.keyspace, self.watcher.routed_urls, self.cluster.token, rate=o.rate,
                write_fraction=o.write_fraction, workers=o.workers, timeout=o.timeout,
                value_size=o.value_size, seed=o.seed, t0=self.t0)
            for name in o.cases:
                print(f"   churn: {name}", flush=True)
                try:
                    out["cases"][name] = case = self._case(name)
                except (OSError, ControlError, RuntimeError) as exc:
                    out["cases"][name] = case = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"   churn: {name}: {_one_line(case)}", flush=True)
            out["end"] = self._verify_all()
        return out

    # -- cases --------------------------------------------------------------------------
    def _case(self, name: str) -> dict[str, Any]:
        assert self.load is not None
        loadavg = [round(x, 2) for x in os.getloadavg()]
        doc0 = self._doc()
        self._marks = []
        self._mark()
        window = self.load.start()
        try:
            time.sleep(self.opts.baseline)
            steps = self._steps(name)
            time.sleep(self.opts.tail)
        finally:
            self.load.stop()
        doc1 = self._doc()
        self._mark()
        rows = chained(self._marks)
        result: dict[str, Any] = {
            "steps": steps, "pulled": cost(rows, self.record_bytes),
            "client": client_stats(window), "verdict": self.load.verdict(window),
            "epochs": [doc0.epoch, doc1.epoch], "epochs_walked": doc1.epoch - doc0.epoch,
            "loadavg": [loadavg, [round(x, 2) for x in os.getloadavg()]],
        }
        if name in WHOLE_CLUSTER and steps and steps[0]["last_up"] is not None:
            result["reads_back"] = reads_back(window, steps[0]["fault"], steps[0]["last_up"])
        result["targets"] = self._targets(name, result)
        return result

    def _steps(self, name: str) -> list[dict[str, Any]]:
        o = self.opts
        names = sorted(self._doc().names, key=_node_order)
        victim = names[len(names) // 2]
        if name == "rolling":
            return [self._away([n], "stop", o.away) for n in names]
        if name == "bounce":
            return [self._away([victim], "kill", 0.0)]
        if name == "outage":
            return [self._away([victim], "stop", o.outage)]
        if name == "kill-all":
            return [self._away(names, "kill", 0.0)]
        if name == "stop-all":
            return [self._away(names, "stop", o.away)]
        if name == "add-two":
            return [self._add(2)]
        return [self._remove(o.remove)]

    def _away(self, nodes: list[str], how: str, away: float) -> dict[str, Any]:
        """Take ``nodes`` down (``stop``: SIGTERM, started again after ``away`` s;
        ``kill``: SIGKILL, restarted by the launcher) and measure until settled."""
        control = self.cluster.control
        doc0 = self._doc()
        ring0 = Ring(doc0.target_names, doc0.rf, self.opts.vnodes)
        before = self._mark()
        fault = self.now()
        if how == "kill":
            for n in nodes:
                control.kill(n, "SIGKILL")
        else:
            for n in nodes:
                self.watcher.drain(n)
                control.stop(n)
            time.sleep(away)
            for n in nodes:
                control.start(n)
        timeout = self.opts.settle_timeout
        up = {n: self.watcher.wait(n, "up", fault, timeout) for n in nodes}
        back = {n: self.watcher.wait(n, "healthy", fault, timeout) for n in nodes}
        last_up = max((t for t in up.values() if t is not None), default=None)
        missed, pending = self._missed(ring0, nodes, fault, back)
        settled, check_s = self._wait_settled(set(doc0.names), set(nodes), pending, None)
        # Count on until the returning nodes' first anti-entropy round is in (see Options).
        time.sleep(max(0.0, (last_up or fault) + self.opts.count_for - self.now()))
        rows = pulled(before, self._mark())
        held = {n: int(before.get(n, (None, {}))[1].get(RECORDS, 0)) for n in nodes}
        stored = sum(int(m.get(RECORDS, 0)) for _, m in before.values())
        doc1 = self._doc()
        action = ("SIGKILL, restarted by the launcher" if how == "kill"
                  else f"stop, {away:g} s, start")
        return {
            "action": action, "nodes": nodes, "fault": round(fault, 2),
            "last_up": last_up,
            "up_s": {n: _rel(t, fault) for n, t in up.items()},
            "healthy_s": {n: _rel(t, fault) for n, t in back.items()},
            "ready_s": {n: _rel(self.watcher.first(n, "ready", fault), fault) for n in nodes},
            "settled_after_start_s": _rel(settled, last_up),
            "settled_after_fault_s": _rel(settled, fault),
            "last_check_s": round(check_s, 2),
            "epochs": [doc0.epoch, doc1.epoch],
            "held": held, "stored_copies": stored,
            "missed": missed, "ideal": sum(missed.values()),
            "acknowledged_missed": len(pending) if settled is not None else None,
            "counted_until_s": _rel(self.now(), fault),
            "pulled": cost(rows, self.record_bytes),
            "pulled_by_returning": cost(rows, self.record_bytes, nodes), "pulled_by_node": rows,
        }

    def _add(self, count: int) -> dict[str, Any]:
        control = self.cluster.control
        doc0 = self._doc()
        before = self._mark()
        fault = self.now()
        added = [str(control.add()["added"]) for _ in range(count)]
        expected = set(doc0.names) | set(added)
        for n in added:
            self.watcher.wait(n, "healthy", fault, self.opts.settle_timeout)
        settled, _ = self._wait_settled(expected, set(), {}, None)
        after = self._mark()
        rows = pulled(before, after)
        ring1 = Ring(sorted(expected, key=_node_order), doc0.rf, self.opts.vnodes)
        ideal = self._copies_on(ring1, set(added))
        stored = sum(int(m.get(RECORDS, 0)) for _, m in before.values())
        return {
            "action": f"add {', '.join(added)} at once", "nodes": added, "fault": round(fault, 2),
            "last_up": None, "settled_after_fault_s": _rel(settled, fault),
            "epochs": [doc0.epoch, self._doc().epoch], "stored_copies": stored,
            "ideal": ideal, "ideal_definition": "copies the new nodes must hold (from the ring)",
            "pulled": cost(rows, self.record_bytes), "pulled_by_node": rows,
        }

    def _remove(self, name: str) -> dict[str, Any]:
        control = self.cluster.control
        doc0 = self._doc()
        ring0 = Ring(doc0.target_names, doc0.rf, self.opts.vnodes)
        before = self._mark()
        fault = self.now()
        self.watcher.drain(name)
        try:
            control.remove(name)
            how = "`ringkv node remove` (hand off, then stop)"
        except urllib.error.HTTPError as exc:
            if exc.code not in (404, 405):
                raise
            control.stop(name)
            how = "`ringkv node stop` (this launcher has no remove; its stop removed the member)"
        settled, _ = self._wait_settled(set(doc0.names) - {name}, set(), {}, name)
        after = self._mark()
        rows = pulled(before, after)
        held = int(before.get(name, (None, {}))[1].get(RECORDS, 0))
        stored = sum(int(m.get(RECORDS, 0)) for _, m in before.values())
        return {
            "action": f"remove {name} by {how}", "nodes": [name], "fault": round(fault, 2),
            "last_up": None, "settled_after_fault_s": _rel(settled, fault),
            "epochs": [doc0.epoch, self._doc().epoch], "held": {name: held},
            "stored_copies": stored, "ideal": self._copies_on(ring0, {name}),
            "ideal_definition": "one new copy of every record the removed node held (from the ring)",
            "pulled": cost(rows, self.record_bytes), "pulled_by_node": rows,
        }

    # -- measurements -------------------------------------------------------------------
    def _mark(self) -> Snapshot:
        """Every running node's counters now, also kept for the case's total."""
        snap = snapshot(self.watcher)
        self._marks.append(snap)
        return snap

    def _doc(self) -> membership.Document:
        doc = membership.load(str(self.cluster.data_dir / "membership.json"))
        if doc is None:
            raise RuntimeError("the launcher has no membership document")
        return doc

    def _copies_on(self, ring: Ring, nodes: set[str]) -> int:
        """Copies of the loaded keys that ``ring`` places on ``nodes``."""
        size = self.opts.key_size
        return sum(len(nodes.intersection(ring.replicas(key_name(i, size))))
                   for i in range(self.opts.keys))

    def _missed(self, ring: Ring, nodes: list[str], fault: float, back: dict[str, float | None]
                ) -> tuple[dict[str, int], dict[str, tuple[VersionKey, tuple[str, ...]]]]:
        """Per node, the distinct keys written to its ranges while it was away (writes that
        may have landed: acknowledged or unknown); and the acknowledged ones it must hold
        to be caught up: key -> (newest acknowledged version, the nodes that must hold it)."""
        assert self.load is not None
        ops = list(self.load.windows[-1].ops)
        missed: dict[str, set[str]] = {n: set() for n in nodes}
        pending: dict[str, tuple[VersionKey, tuple[str, ...]]] = {}
        for op in ops:
            if op.kind != "write" or op.outcome == "fail":
                continue
            owners = [n for n in ring.replicas(op.key.encode()) if n in missed
                      and op.invoke >= fault and op.invoke <= (back[n] or math.inf)]
            for n in owners:
                missed[n].add(op.key)
            if owners and op.outcome == "ok" and op.version is not None:
                version = parse_version(op.version)
                old = pending.get(op.key)
                if old is None or version > old[0]:
                    pending[op.key] = (version, tuple(owners))
        return {n: len(keys) for n, keys in missed.items()}, pending

    def _wait_settled(self, members: set[str], away: set[str],
                      pending: dict[str, tuple[VersionKey, tuple[str, ...]]],
                      removed: str | None) -> tuple[float | None, float]:
        """When the cluster settled (see the module docstring; None after the timeout), and
        how long the check pass that found the last keys took: the settle time is when that
        pass ended, so it includes the pass (up to that much later than the data arrived)."""
        pending = dict(pending)
        deadline = time.monotonic() + self.opts.settle_timeout
        while time.monotonic() < deadline:
            doc = self._doc()
            doc_ok = (doc.settled and set(doc.names) == members
                      and all(m.state == "normal" for m in doc.members))
            gone = removed is None or removed not in self.watcher.running()
            if doc_ok and gone:
                started = time.monotonic()
                self._confirm(pending)
                if not pending:
                    return self.now(), time.monotonic() - started
            time.sleep(POLL_S)
        return None, 0.0

    def _confirm(self, pending: dict[str, tuple[VersionKey, tuple[str, ...]]]) -> None:
        """Drop the keys every node that must hold them holds at the acknowledged version.
        A full pass over thousands of keys takes seconds on a busy machine, so it runs only
        once a random sample of them is held: a pass begun before the data arrived would
        add its whole length to the settle time."""
        urls = self.watcher.routed_urls()
        if not urls or not pending:
            return

        def held(item: tuple[str, tuple[VersionKey, tuple[str, ...]]]) -> bool:
            key, (version, owners) = item
            status, body = http_get(f"{random.choice(urls)}/v1/replicas/{key}",
                                    self.cluster.token, timeout=10)
            if status != 200:
                return False
            found = {e["node"]: e for e in json.loads(body)["replicas"]}
            return all(found.get(n, {}).get("status") == "ok"
                       and parse_version(found[n]["version"]) >= version for n in owners)

        items = list(pending.items())
        with ThreadPoolExecutor(CONFIRMERS) as pool:
            if len(items) > PROBE and not all(pool.map(held, random.sample(items, PROBE))):
                return
            for (key, _), ok in zip(items, pool.map(held, items), strict=True):
                if ok:
                    del pending[key]

    def _verify_all(self) -> dict[str, Any]:
        """After the last case: every key the client wrote read back at quorum and judged
        with the whole history; every bulk-loaded key read once (a 404 is a lost write)."""
        assert self.load is not None
        ops = [op for w in self.load.windows for op in w.ops]
        written = sorted({op.key for op in ops if op.kind == "write"})
        finals = self.load.final_reads(written)
        verdict = check_history(self.keyspace, ops, finals)
        lost = [v for v in verdict.violations if v.kind in ("lost-write", "missing-final-read")]
        config = LoadConfig(urls=self.watcher.routed_urls(), workload="read", connections=32,
                            keyspace=self.opts.keys, key_size=self.opts.key_size,
                            value_size=self.opts.value_size, consistency="quorum",
                            token=self.cluster.token, timeout=30.0)
        started = time.monotonic()
        answers = run_async(read_every_key(config))
        return {
            "client_keys": len(written), "client_final_reads": sum(op.outcome == "ok" for op in finals),
            "client_lost_writes": len(lost),
            "client_first_lost": [f"{v.kind} on {v.key!r}: {v.message}" for v in lost[:5]],
            "bulk_keys": self.opts.keys, "bulk_answers": answers,
            "bulk_lost": answers.get("404", 0),
            "bulk_read_s": round(time.monotonic() - started, 1),
        }

    def _targets(self, name: str, result: dict[str, Any]) -> list[dict[str, Any]]:
        """Issue 12's targets for this case, with the measured values."""
        out = []
        steps = result["steps"]
        if name in ("rolling", "bounce", "outage"):
            for s in steps:
                node = s["nodes"][0]
                limit = BOUNCE_FACTOR * s["ideal"] + BOUNCE_HELD_SHARE * s["held"][node]
                out.append(_target(f"{node}: records pulled by the returning node",
                                   s["pulled_by_returning"]["records"], limit))
                out.append(_target(f"{node}: settled after its start",
                                   s["settled_after_start_s"], BOUNCE_SETTLE_S, " s"))
            out.append(_target(
                "reads failed by the cluster (an error answer or a timeout; not the "
                "'connection' errors of requests a SIGKILLed coordinator took with it)",
                sum(n for k, n in result["client"]["errors"].items()
                    if k.startswith("read ") and not k.endswith(" connection")), 0))
        elif name in WHOLE_CLUSTER:
            s = steps[0]
            back = result.get("reads_back", {})
            out.append(_target("quorum reads failing after the last node's start",
                               max(0.0, back.get("last_failed_read_s") or 0.0)
                               if back else None, WHOLE_READS_S, " s"))
            out.append(_target("settled after the last node's start",
                               s["settled_after_start_s"], WHOLE_SETTLE_S, " s"))
            out.append(_target("records pulled, share of stored copies",
                               round(s["pulled"]["records"] / s["stored_copies"], 4)
                               if s["stored_copies"] else None, WHOLE_PULLED_SHARE))
        elif name == "add-two":
            s = steps[0]
            out.append(_target("records pulled / ideal",
                               round(s["pulled"]["records"] / s["ideal"], 3) if s["ideal"] else None,
                               ADD_FACTOR))
            out.append(_target("client errors", result["client"]["failed"], 0))
        elif name == "remove-one":
            out.append(_target("quorum errors (503)", result["client"]["quorum_errors"], 0))
        v = result["verdict"]
        out.append(_target("stale reads (checker)", v["stale_reads"], 0))
        out.append(_target("lost acknowledged writes (checker)", v["lost_writes"], 0))
        out.append(_target("violations of any kind (checker)", v["violations"], 0))
        return out


def _node_order(name: str) -> tuple[int, str]:
    """node-2 before node-10."""
    head, _, tail = name.rpartition("-")
    return (int(tail), head) if tail.isdigit() else (1 << 30, name)


def _rel(t: float | None, origin: float | None) -> float | None:
    return None if t is None or origin is None else round(t - origin, 2)


def _one_line(case: dict[str, Any]) -> str:
    if "error" in case:
        return f"FAILED: {case['error']}"
    pulled_records = sum(s["pulled"]["records"] for s in case["steps"])
    met = sum(t["met"] for t in case["targets"])
    return (f"{pulled_records:,} records pulled, {case['client']['failed']} failed ops, "
            f"verdict {'valid' if case['verdict']['valid'] else 'INVALID'}, "
            f"{met}/{len(case['targets'])} targets met")


# ----------------------------------------------------------------------------- report


def _f(v: Any, spec: str = ",") -> str:
    return "n/a" if v is None else format(v, spec)


def _check(step: dict[str, Any]) -> str:
    """The length of the check pass that ended the settle wait (steps that check keys)."""
    return f" (check {step['last_check_s']:g} s)" if step.get("last_check_s") else ""


def _pulled(p: dict[str, int]) -> str:
    return (f"{p['records']:,} ({p['catch_up']:,} / {p['anti_entropy']:,} / {p['hints']:,}), "
            f"{p['bytes'] / 1e6:.1f} MB")


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{k}: {n}" for k, n in sorted(errors.items())) or "none"


def _verdict(v: dict[str, Any]) -> str:
    if v["valid"]:
        return (f"valid: 0 stale reads, 0 lost writes ({v['acknowledged_writes']:,} acked "
                f"writes, {v['ok_reads']:,} reads, {v['final_reads']:,} final reads)")
    return f"**INVALID**: {v['violations_by_kind']}"


def markdown(r: dict[str, Any]) -> list[str]:
    """The churn section of the scale report."""
    o, load = r["options"], r["load"]
    grace = "`ringkv up`'s default (300 s)" if r["down_grace"] is None else f"{r['down_grace']:g} s"
    lines = [
        "", f"## Churn ({r['nodes']} nodes, rf={r['rf']}, {r['keys']:,} keys)", "",
        f"Bulk load: {load['keys']:,} keys of {o['value_size']} B in {load['seconds']} s "
        f"({load['keys_per_s']:,.0f} keys/s"
        + (f"; {load['retried']:,} writes sent again after a failed answer"
           if load.get("retried") else "")
        + "). Then the cases below, one after another on this "
        f"cluster (down grace {grace}; the launcher restarts a killed node after "
        f"{r['restart_delay']:g} s). Throughout each case a checked client ran: "
        f"{o['rate']:g} ops/s, {o['write_fraction']:.0%} writes of unique values, quorum reads "
        f"and writes of random loaded keys, {o['workers']} threads, one attempt per operation "
        "on a random node in service (from its first ready answer after it started until it "
        "stops; a node is taken out of service before it is stopped, as a Service drops a "
        f"terminating pod), {o['timeout']:g} s timeout; "
        f"{o['baseline']:g} s before the first fault, {o['tail']:g} s after the settle; then "
        "quorum reads of every key the case wrote, and the history checker's verdict "
        "(`ringkv.client.history`).",
        "",
        "*Pulled*: records merged, summed over every node's counters, as total (catch-up / "
        "anti-entropy / hints replayed), and MB (catch-up bytes measured; anti-entropy and "
        "hints counted at key + value size). *Ideal*: for a node that was away, the distinct "
        "keys written to its ranges meanwhile; for add/remove, the copies that must move. "
        "*Settled*: the document settled with the expected members all `normal`, and every "
        "node that was away holds every write acknowledged meanwhile (`/v1/replicas`, "
        f"{CONFIRMERS} at a time, a full pass once {PROBE} random ones are held; the time is "
        "the end of that pass, whose length is given as *check*). *Start*: the node's "
        "process started again (for several, the last). A step's "
        f"counters are read once it settled and no sooner than {o['count_for']:g} s after "
        "the start (a returning node's first anti-entropy round begins 5 s after it).",
        "",
        "| case | step | pulled | pulled by the returning node | ideal | settled s | epochs "
        "| target met |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, case in r["cases"].items():
        if "error" in case:
            lines.append(f"| {name} | FAILED: {case['error'][:200]} | | | | | | |")
            continue
        met = {t["what"]: t["met"] for t in case["targets"]}
        for s in case["steps"]:
            ret = s.get("pulled_by_returning")
            settled = s.get("settled_after_start_s", s["settled_after_fault_s"])
            since = "start" if "settled_after_start_s" in s else "command"
            node_targets = [ok for what, ok in met.items() if what.startswith(f"{s['nodes'][0]}:")]
            lines.append(
                f"| {name} | {s['action']} ({', '.join(s['nodes'])}) | {_pulled(s['pulled'])} "
                f"| {_pulled(ret) if ret else 'n/a'} | {_f(s['ideal'])} "
                f"| {_f(settled)} after {since}{_check(s)} | {s['epochs'][0]} → {s['epochs'][1]} "
                f"| {('yes' if all(node_targets) else 'no') if node_targets else ''} |")
    lines += [
        "", "| case | pulled in the whole case | client ops (failed) | errors by code "
        "| p50 / p99 / max ms | reads back | epochs walked | checker | load avg |",
        "|---|---:|---:|---|---:|---|---:|---|---|",
    ]
    for name, case in r["cases"].items():
        if "error" in case:
            continue
        c = case["client"]
        lat = c["latency_ms"]
        back = case.get("reads_back")
        back_text = (f"first ok {_f(back['first_ok_read_s'])} s, last failure "
                     f"{_f(back['last_failed_read_s'])} s after the last start"
                     if back else "")
        lines.append(
            f"| {name} | {_pulled(case['pulled'])} | {c['ops']:,} ({c['failed']:,}) "
            f"| {_errors(c['errors'])} "
            f"| {_f(lat['p50'])} / {_f(lat['p99'])} / {_f(lat['max'])} | {back_text} "
            f"| {case['epochs_walked']} | {_verdict(case['verdict'])} "
            f"| {case['loadavg'][0][0]} → {case['loadavg'][1][0]} |")
    lines += ["", "Issue 12's targets:", "", "| case | what | value | target | met |",
              "|---|---|---:|---|---|"]
    for name, case in r["cases"].items():
        for t in case.get("targets", []):
            lines.append(f"| {name} | {t['what']} | {_f(t['value'])} | {t['target']} "
                         f"| {'yes' if t['met'] else '**no**'} |")
    e = r["end"]
    lines += [
        "", f"After the last case: {e['client_keys']:,} keys the client wrote read back at "
        f"quorum ({e['client_final_reads']:,} answered), {e['client_lost_writes']} lost "
        f"acknowledged writes; all {e['bulk_keys']:,} loaded keys read once "
        f"({_errors(e['bulk_answers'])}; {e['bulk_lost']} not found) in {e['bulk_read_s']} s.",
    ]
    for line in e["client_first_lost"]:
        lines.append(f"- {line}")
    return lines
