"""``ringkv check``: record a history of concurrent reads and writes, optionally while
faulting the nodes of a local cluster, then check it (:mod:`ringkv.client.history`).

    ringkv check --url http://127.0.0.1:8080,http://127.0.0.1:8081,http://127.0.0.1:8082 \\
        --duration 30 --nemesis kill --control http://127.0.0.1:8079 [--workload cas]

Workers are threads, each with its own blocking clients (one per node; every operation
goes to a random node, so every node coordinates); what they do is the workload
(:mod:`ringkv.local.workloads`): ``register`` (reads and plain writes at
``--consistency``, checked against the rules of quorum reads and writes) or ``cas``
(serial reads, serial writes and compare-and-sets on few keys, each key's history also
checked for linearizability). Keys are fresh for every run (``check-<run id>/k<i>``), so
data left by earlier runs cannot look like phantom reads.

The nemesis drives a ``ringkv up`` cluster through its control endpoint
(:class:`ringkv.local.control_client.ControlClient`), one fault at a time, waiting until
the faulted nodes are ready again before the next: ``kill`` (SIGKILL; ``ringkv up``
restarts the node), ``pause`` (SIGSTOP, SIGCONT after ``--fault-duration``),
``restart-wipe`` (stop, delete the data directory, start), ``skew`` (restart a node with
its clock ``--max-skew``/2 to ``--max-skew`` seconds off either way, then restart it with
the true clock), ``partition`` (needs ``ringkv up --netns``: isolate one node, split the
nodes in two, or drop one direction of one link; healed after ``--fault-duration``), and
the churn nemeses: ``bounce`` (SIGKILL one node and start it again at once),
``restart-all`` (SIGKILL every node, then start them all) and ``restart-staggered``
(SIGKILL every node, then start them one by one, ``--fault-duration`` apart). At
the end every fault is healed, every node must become ready, and each key gets a final
read (quorum; serial in the cas workload) for the lost-write check.

The summary (``--summary FILE``, and the ``"type": "summary"`` line of the history file)
is one JSON object: ``run``, ``workload``, ``nemesis``, ``seed``, ``duration``; ``valid``
(no violations) and ``passed`` (valid and the cluster recovered: exit code 0);
``operations`` (load operations, final reads excluded), ``acknowledged_writes`` (writes
and cas), ``unknown``, ``counts`` (per kind and outcome), ``refused`` (cas answered 412),
``final_reads``; ``violations`` (a count), ``violations_by_kind``, ``anomalies`` (the
first violations, each ``{kind, key, message, ops}`` with the operations that show it),
``notes``; ``faults`` (a count) and ``fault_list`` (action, node,
start, end, note; seconds since the start); ``availability_during_faults`` and
``availability_overall``, each ``{ok, attempted, fraction}`` over the load operations
invoked while a fault was active (from its start until its nodes were ready again), or
over all of them (``ok`` counts answers ok and cas refused with 412; ``fraction`` is
null when nothing was attempted); ``problems``.

Exit codes: 0 the history is valid; 1 violations found, or the cluster did not recover;
2 usage error, or the check could not start (no cluster, no launcher, wrong token).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ringkv.client.errors import NotFound, RingkvError, Unauthorized
from ringkv.client.history import OUTCOMES, SUMMARY_VIOLATIONS, Op, Verdict, availability, check
from ringkv.client.syncclient import Client
from ringkv.client.wire import CONSISTENCY_LEVELS, DEFAULT_URL, parse_urls

from .control_client import DEFAULT_CONTROL, ControlClient, ControlError
from .spawn import node_ready
from .workloads import CAS_SHARE, SERIAL, WORKLOADS, Workload, final_reads, run_worker

EXIT_VALID = 0
EXIT_INVALID = 1
EXIT_USAGE = 2

NEMESES = ("none", "kill", "pause", "restart-wipe", "skew", "partition", "bounce", "restart-all",
           "restart-staggered")
# Nemeses that fault every node at once rather than one.
WHOLE_CLUSTER = ("restart-all", "restart-staggered")
PARTITIONS = ("isolate", "split", "one-way")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class CheckAborted(Exception):
    """The check cannot start or go on; the message says why and what to do."""


@dataclass
class Fault:
    """One nemesis action; times are seconds since the run started."""

    action: str
    node: str
    start: float
    end: float | None = None
    note: str = ""


class Log:
    """Timestamped progress lines on stdout, one writer at a time."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def __call__(self, message: str) -> None:
        with self._lock:
            print(f"[{self.now():7.2f}s] {message}", flush=True)


# -------------------------------------------------------------------------- cluster


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class Nemesis:
    """Faults the cluster through the launcher, one fault at a time, and remembers how to
    undo it: ``kill``/``pause``/``restart-wipe``/``skew``/``bounce`` take one random node,
    ``partition`` cuts links between nodes (isolate one, split in two, or one way),
    ``restart-all`` kills every node and starts them all again, ``restart-staggered``
    kills every node and starts them one by one, ``fault_duration`` apart."""

    def __init__(
        self,
        action: str,
        control: ControlClient,
        interval: float,
        fault_duration: float,
        ready_timeout: float,
        rng: random.Random,
        log: Log,
        max_skew: float = 300.0,
    ) -> None:
        self.action = action
        self.control = control
        self.interval = interval
        self.fault_duration = fault_duration
        self.ready_timeout = ready_timeout
        self.rng = rng
        self.log = log
        self.max_skew = max_skew
        self.faults: list[Fault] = []
        self.paused: set[str] = set()
        self.stopped: set[str] = set()
        self.skewed: set[str] = set()
        self.partitioned = False

    def run(self, stop: threading.Event) -> None:
        """Fault a random live node every ``interval`` seconds until ``stop``."""
        while not stop.wait(self.interval):
            candidates = [n for n in self.control.nodes() if n["alive"] and n["wanted"]]
            if not candidates:
                self.log("nemesis: no live node to fault")
                continue
            node = self.rng.choice(candidates)
            fault = Fault(self.action, str(node["name"]), self.log.now())
            self.faults.append(fault)
            if self.action == "partition":
                back = self._partition([str(n["name"]) for n in candidates], fault, stop)
            elif self.action in WHOLE_CLUSTER:
                back = self._restart_all(sorted(str(n["name"]) for n in candidates), fault, stop)
            else:
                back = self._fault(node, fault, stop)
            fault.end = self.log.now()
            if not back:
                fault.note = f"not ready within {self.ready_timeout:g}s"
                self.log(f"nemesis: {fault.node} is not ready after {self.ready_timeout:g}s; no more faults")
                return
            self.log(f"nemesis: {fault.node} is ready again")

    def _fault(self, node: dict[str, Any], fault: Fault, stop: threading.Event) -> bool:
        name = fault.node
        if self.action == "kill":
            self.log(f"nemesis: kill -9 {name} (the launcher restarts it)")
            old_pid = node.get("pid")
            self.control.kill(name, "SIGKILL")
            fault.note = "SIGKILL"
            return self._back(name, lambda n: n.get("alive") and n.get("pid") != old_pid)
        if self.action == "pause":
            self.log(f"nemesis: pause {name} (SIGSTOP) for {self.fault_duration:g}s")
            self.paused.add(name)
            self.control.kill(name, "SIGSTOP")
            stop.wait(self.fault_duration)
            self.control.kill(name, "SIGCONT")
            self.paused.discard(name)
            fault.note = "SIGSTOP, SIGCONT"
            self.log(f"nemesis: resume {name} (SIGCONT)")
            return self._back(name, lambda n: bool(n.get("alive")))
        if self.action == "skew":
            return self._skew(name, fault, stop)
        if self.action == "bounce":
            self.log(f"nemesis: kill -9 {name} and start it again at once")
            old_pid = node.get("pid")
            self.control.kill(name, "SIGKILL")
            wait_until(lambda: not self.control.node(name).get("alive"), self.ready_timeout, 0.02)
            self.control.start(name)
            fault.note = "SIGKILL, start"
            return self._back(name, lambda n: n.get("alive") and n.get("pid") != old_pid)
        self.log(f"nemesis: stop {name}, wipe its data, start it")
        data_dir = Path(str(node["data_dir"]))
        if not data_dir.is_absolute() or data_dir == Path(data_dir.anchor):
            raise CheckAborted(f"refusing to wipe {data_dir!s} (the launcher's data_dir for {name})")
        self.stopped.add(name)
        self.control.stop(name)
        if not wait_until(lambda: not self.control.node(name).get("alive"), self.ready_timeout):
            raise CheckAborted(f"{name} did not stop within {self.ready_timeout:g}s")
        if data_dir.exists():
            shutil.rmtree(data_dir)
        self.control.start(name)
        self.stopped.discard(name)
        fault.note = f"wiped {data_dir}"
        return self._back(name, lambda n: bool(n.get("alive")))

    def _skew(self, name: str, fault: Fault, stop: threading.Event) -> bool:
        """Restart the node with its clock shifted by max_skew/2..max_skew either way, let
        it serve for fault_duration, then restart it with the true clock."""
        skew_ms = round(self.rng.choice((-1, 1)) * self.rng.uniform(self.max_skew / 2, self.max_skew) * 1000)
        self.log(f"nemesis: restart {name} with its clock {skew_ms / 1000:+.1f}s off")
        self.skewed.add(name)
        self.control.restart(name, skew_ms)
        fault.note = f"clock_skew_ms={skew_ms}"
        if not self._back(name, lambda n: n.get("alive") and n.get("clock_skew_ms") == skew_ms):
            return False
        stop.wait(self.fault_duration)
        self.log(f"nemesis: restart {name} with the true clock")
        self.control.restart(name, 0)
        self.skewed.discard(name)
        return self._back(name, lambda n: n.get("alive") and not n.get("clock_skew_ms"))

    def _restart_all(self, names: list[str], fault: Fault, stop: threading.Event) -> bool:
        """SIGKILL every node (kept down: no automatic restart), then start them all at
        once, or one every ``fault_duration`` seconds (staggered)."""
        staggered = self.action == "restart-staggered"
        fault.node = "all"
        self.log(f"nemesis: kill -9 every node ({', '.join(names)})")
        for name in names:
            self.stopped.add(name)
            self.control.kill(name, "SIGKILL")
            self.control.stop(name)  # no restart by the launcher: this nemesis starts them
        gap = self.fault_duration if staggered else 0.0
        fault.note = f"SIGKILL all, start {'every ' + format(gap, 'g') + 's' if staggered else 'at once'}"
        for i, name in enumerate(self.rng.sample(names, len(names))):
            if i and gap:
                stop.wait(gap)
            self.log(f"nemesis: start {name}")
            self.control.start(name)
            self.stopped.discard(name)
        return all(self._back(n, lambda node: bool(node.get("alive"))) for n in names)

    def _partition(self, names: list[str], fault: Fault, stop: threading.Event) -> bool:
        """One random partition for fault_duration, then heal; ``fault.node`` names the
        cut: ``a`` (isolated), ``a,b|c,d,e`` (split) or ``a->b`` (one way)."""
        mode = self.rng.choice(PARTITIONS if len(names) > 2 else ("isolate", "one-way"))
        self.rng.shuffle(names)
        body: dict[str, Any]
        if mode == "isolate":
            body, fault.node = {"isolate": names[0]}, names[0]
        elif mode == "split":
            small, big = sorted(names[: len(names) // 2]), sorted(names[len(names) // 2 :])
            body, fault.node = {"groups": [small, big]}, f"{','.join(small)}|{','.join(big)}"
        else:
            body, fault.node = {"one_way": names[:2]}, f"{names[0]}->{names[1]}"
        fault.note = mode
        self.log(f"nemesis: partition ({mode}) {fault.node} for {self.fault_duration:g}s")
        self.partitioned = True
        self.control.partition(body)
        stop.wait(self.fault_duration)
        self.control.heal()
        self.partitioned = False
        self.log("nemesis: network healed")
        return all(self._back(n, lambda node: bool(node.get("alive"))) for n in sorted(names))

    def _back(self, name: str, alive: Callable[[dict[str, Any]], Any]) -> bool:
        def ready() -> bool:
            node = self.control.node(name)
            return bool(alive(node)) and node_ready(str(node["url"]))

        return wait_until(ready, self.ready_timeout, 0.2)

    def heal(self) -> None:
        """Undo an interrupted fault: heal the network, resume paused nodes, start stopped
        ones, restart skewed ones with the true clock."""
        undo: list[tuple[str, Callable[[], object]]] = []
        if self.partitioned:
            undo.append(("heal the network", self.control.heal))
        undo += [(f"SIGCONT {name}", functools.partial(self.control.kill, name, "SIGCONT"))
                 for name in sorted(self.paused)]
        undo += [(f"start {name}", functools.partial(self.control.start, name))
                 for name in sorted(self.stopped)]
        undo += [(f"restart {name} with the true clock", functools.partial(self.control.restart, name, 0))
                 for name in sorted(self.skewed)]
        for what, action in undo:
            try:
                action()
            except (OSError, ControlError) as exc:
                self.log(f"heal: could not {what}: {exc}")
            else:
                self.log(f"heal: {what}")
        self.partitioned = False
        self.paused.clear()
        self.stopped.clear()
        self.skewed.clear()


# --------------------------------------------------------------------------- output


def _ratio(ok: int, attempted: int) -> dict[str, object]:
    return {"ok": ok, "attempted": attempted, "fraction": round(ok / attempted, 4) if attempted else None}


def summarize(
    meta: dict[str, object], ops: Sequence[Op], faults: Sequence[Fault], verdict: Verdict, problems: list[str]
) -> dict[str, Any]:
    """The machine-readable summary (field names in this module's docstring)."""
    load = [op for op in ops if not op.final]
    return {
        "run": meta["run"],
        "workload": meta["workload"],
        "nemesis": meta["nemesis"],
        "seed": meta["seed"],
        "duration": meta["duration"],
        "valid": verdict.valid,
        "passed": verdict.valid and not problems,
        "operations": len(load),
        "acknowledged_writes": verdict.acknowledged_writes,
        "unknown": sum(op.outcome == "unknown" for op in load),
        "counts": verdict.counts,
        "refused": verdict.refused,
        "final_reads": verdict.final_reads,
        "violations": len(verdict.violations),
        "violations_by_kind": verdict.by_kind,
        "anomalies": [{"kind": v.kind, "key": v.key, "message": v.message,
                       "ops": [op.to_json() for op in v.ops]}
                      for v in verdict.violations[:SUMMARY_VIOLATIONS]],
        "notes": len(verdict.notes),
        "faults": len(faults),
        "fault_list": [asdict(f) for f in faults],
        "availability_during_faults": _ratio(*availability(load, [(f.start, f.end) for f in faults])),
        "availability_overall": _ratio(sum(op.served for op in load), len(load)),
        "problems": problems,
    }


def write_history(
    path: Path,
    meta: dict[str, object],
    ops: Iterable[Op],
    faults: Iterable[Fault],
    verdict: Verdict,
    summary: dict[str, Any],
) -> None:
    """JSON lines: the run's parameters, every operation, every fault, the summary, the verdict."""
    with path.open("w", encoding="utf-8") as f:
        f.write(json.dumps({"type": "run", **meta}) + "\n")
        for op in ops:
            f.write(json.dumps({"type": "op", **op.to_json()}) + "\n")
        for fault in faults:
            f.write(json.dumps({"type": "fault", **asdict(fault)}) + "\n")
        f.write(json.dumps({"type": "summary", **summary}) + "\n")
        f.write(json.dumps({"type": "verdict", "valid": verdict.valid, "violations": verdict.by_kind}) + "\n")


_COLORS = {"ok": "tab:green", "unknown": "tab:orange", "fail": "tab:red", "refused (412)": "tab:blue"}


def _shade(op: Op) -> str:
    return "refused (412)" if op.refused else op.outcome


def plot_timeline(
    path: Path, ops: Sequence[Op], faults: Sequence[Fault], verdict: Verdict, workers: int
) -> str | None:
    """A PNG: one row per worker (final reads on top), a bar per operation coloured by
    outcome (writes thick, cas medium, reads thin; a cas refused with 412 in blue), faults
    shaded, violating operations marked.
    Returns why no plot was drawn, or None."""
    try:
        import matplotlib  # noqa: PLC0415 - optional dependency

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
        from matplotlib.artist import Artist  # noqa: PLC0415
        from matplotlib.lines import Line2D  # noqa: PLC0415
        from matplotlib.patches import Patch  # noqa: PLC0415
    except ImportError:
        return "matplotlib is not installed, so no timeline was drawn (pip install matplotlib)"

    def row(op: Op) -> int:
        return workers if op.final else op.process

    end = max([verdict.end, *(f.end or 0.0 for f in faults)])
    least = (end - verdict.start) / 1500  # about a pixel: millisecond operations stay visible
    fig, ax = plt.subplots(figsize=(14, max(3.0, 0.35 * (workers + 2))))
    for fault in faults:
        ax.axvspan(fault.start, fault.end if fault.end is not None else end, color="0.85", zorder=0)
        ax.text(fault.start, workers + 0.6, f"{fault.action} {fault.node}", fontsize=7, va="bottom")
    for kind, width in (("read", 2.0), ("cas", 3.5), ("write", 5.0)):
        for outcome, color in _COLORS.items():
            chosen = [op for op in ops if op.kind == kind and _shade(op) == outcome]
            if chosen:
                ax.hlines(
                    [row(op) for op in chosen],
                    [op.invoke for op in chosen],
                    [max(end if op.complete is None else op.complete, op.invoke + least) for op in chosen],
                    colors=color,
                    linewidth=width,
                    zorder=2,
                )
    bad = [op for v in verdict.violations for op in v.ops]
    if bad:
        ax.scatter(
            [op.invoke if op.complete is None else (op.invoke + op.complete) / 2 for op in bad],
            [row(op) for op in bad],
            marker="x",
            color="black",
            s=60,
            zorder=3,
        )
    ax.set_yticks(range(workers + 1), [f"p{i}" for i in range(workers)] + ["final"])
    ax.set_ylim(-1, workers + 1.5)
    ax.set_xlabel("seconds since start")
    result = "valid" if verdict.valid else f"{len(verdict.violations)} violations"
    ax.set_title(f"ringkv check: {result}", loc="left")
    handles: list[Artist] = [Line2D([], [], color=c, linewidth=4, label=o)
                             for o, c in _COLORS.items() if o in OUTCOMES or any(op.refused for op in ops)]
    handles.append(Line2D([], [], color="black", marker="x", linestyle="", label="violation"))
    handles.append(Patch(color="0.85", label="fault, until the node is ready"))
    ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8, ncols=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ringkv check",
        description="Record concurrent reads and writes (optionally under faults) and check "
        "them against ringkv's guarantees: no stale or phantom reads, no lost or reordered "
        "acknowledged writes; with --workload cas, compare-and-sets too, and each key's "
        "history linearizable.",
        epilog="exit codes: 0 valid, 1 violations (or the cluster did not recover), "
        "2 usage error or the check could not start",
    )
    p.add_argument("--url", default=DEFAULT_URL, help="node URLs, comma-separated (use every node)")
    p.add_argument("--token", default=None, help="API bearer token (default: $RINGKV_TOKEN)")
    p.add_argument(
        "--timeout", type=float, default=3.0, help="seconds before a request counts as unknown (default 3)"
    )
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load (default 20)")
    p.add_argument(
        "--workload",
        choices=WORKLOADS,
        default="register",
        help="register: reads and plain writes; cas: serial reads and writes and "
        "compare-and-sets (If-Match / If-None-Match), checked for linearizability per key "
        "(default register)",
    )
    p.add_argument("--workers", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--keys", type=int, default=10, help="size of the keyspace (default 10)")
    p.add_argument("--read-ratio", type=float, default=0.5, help="fraction of reads (default 0.5)")
    p.add_argument(
        "--consistency",
        choices=CONSISTENCY_LEVELS,
        help="consistency of the workload's reads and writes (default quorum; the cas "
        "workload takes serial only)",
    )
    p.add_argument("--key-prefix", help="key prefix (default: check-<run id>/, fresh per run)")
    p.add_argument(
        "--nemesis",
        choices=NEMESES,
        default="none",
        help="fault to inject into a local `ringkv up` cluster (default none)",
    )
    p.add_argument(
        "--control",
        default=os.environ.get("RINGKV_CONTROL", DEFAULT_CONTROL),
        help=f"the launcher's control URL (default $RINGKV_CONTROL or {DEFAULT_CONTROL})",
    )
    p.add_argument("--interval", type=float, default=5.0, help="seconds between faults (default 5)")
    p.add_argument(
        "--fault-duration",
        type=float,
        default=3.0,
        help="seconds a node stays paused or skewed, or a partition lasts (default 3)",
    )
    p.add_argument(
        "--max-skew",
        type=float,
        default=300.0,
        help="the skew nemesis shifts a clock by max/2..max seconds either way (default 300; "
        "keep it under the nodes' max_clock_drift/2)",
    )
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for nodes to become ready (default 60)",
    )
    p.add_argument("--history", type=Path, help="history file (default ringkv-check-<run id>.jsonl)")
    p.add_argument("--summary", type=Path, help="also write the summary as one JSON document here")
    p.add_argument("--plot", type=Path, help="also draw a PNG timeline here (needs matplotlib)")
    p.add_argument("--seed", type=int, help="seed of the random choices (default: random)")
    args = p.parse_args(argv)
    if args.workers < 1 or args.keys < 1 or args.duration <= 0 or args.timeout <= 0:
        p.error("--workers and --keys must be at least 1, --duration and --timeout positive")
    if not 0.0 <= args.read_ratio <= 1.0:
        p.error("--read-ratio must be between 0 and 1")
    if args.workload == "cas" and args.consistency not in (None, SERIAL):
        p.error("the cas workload reads and writes at serial: quorum reads are not "
                "linearizable with conditional writes (read repair is asynchronous), nor plain "
                "writes (see docs/ARCHITECTURE.md)")
    if args.consistency is None:
        args.consistency = SERIAL if args.workload == "cas" else "quorum"
    if args.interval <= 0 or args.fault_duration <= 0 or args.ready_timeout <= 0 or args.max_skew <= 0:
        p.error("--interval, --fault-duration, --ready-timeout and --max-skew must be positive")
    try:
        args.urls = [b.url for b in parse_urls(args.url)]
    except ValueError as exc:
        p.error(str(exc))
    args.token = args.token if args.token is not None else os.environ.get("RINGKV_TOKEN") or None
    return args


def _preflight_control(args: argparse.Namespace) -> ControlClient | None:
    if args.nemesis == "none":
        return None
    control = ControlClient(args.control, args.token)
    try:
        control.nodes()
    except (OSError, ControlError) as exc:
        raise CheckAborted(
            f"no `ringkv up` control endpoint at {control.url} ({exc}); "
            "start one, or pass --control or --nemesis none"
        ) from exc
    if args.nemesis == "partition" and not control.net().get("netns"):
        raise CheckAborted(
            "the partition nemesis needs a cluster in network namespaces: start it with "
            "`ringkv up --netns` (as root)"
        )
    if args.nemesis == "restart-wipe" and control.host not in LOOPBACK:
        raise CheckAborted(
            "restart-wipe deletes data directories on this machine: --control must be a loopback URL"
        )
    return control


def _node_urls(args: argparse.Namespace, control: ControlClient | None) -> list[str]:
    """Every node to wait for: the client URLs, and every wanted node of `ringkv up`."""
    urls = list(args.urls)
    if control is not None:
        urls += [str(n["url"]) for n in control.nodes() if n["wanted"]]
    return list(dict.fromkeys(urls))


def _wait_all_ready(urls: list[str], timeout: float) -> list[str]:
    """Wait until every URL is ready; returns the ones that never were."""
    deadline = time.monotonic() + timeout
    for url in urls:
        wait_until(functools.partial(node_ready, url), max(0.0, deadline - time.monotonic()), 0.2)
    return [u for u in urls if not node_ready(u)]


def _preflight_cluster(args: argparse.Namespace, control: ControlClient | None, work: Workload) -> None:
    missing = _wait_all_ready(_node_urls(args, control), args.ready_timeout)
    if missing:
        raise CheckAborted(f"not ready after {args.ready_timeout:g}s: {', '.join(missing)}")
    with Client(args.urls, token=args.token, timeout=args.timeout) as client:
        try:
            client.get(work.keys[0])
        except NotFound:
            pass
        except Unauthorized as exc:
            raise CheckAborted(
                "unauthorized: pass --token or set RINGKV_TOKEN (`ringkv up` writes it to DATA_DIR/token)"
            ) from exc
        except RingkvError as exc:
            raise CheckAborted(f"the cluster does not serve reads: {exc}") from exc


def _run_load(
    args: argparse.Namespace, work: Workload, nemesis: Nemesis | None, log: Log
) -> tuple[list[Op], str | None]:
    """Workers (and the nemesis) until the duration ends or Ctrl-C; then heal. Returns the
    operations and, if the nemesis failed, why."""
    per_worker: list[list[Op]] = [[] for _ in range(args.workers)]
    nemesis_error: str | None = None
    with ThreadPoolExecutor(max_workers=args.workers + 1, thread_name_prefix="check") as pool:
        futures = [pool.submit(run_worker, work, i, per_worker[i]) for i in range(args.workers)]
        nemesis_future = pool.submit(nemesis.run, work.stop) if nemesis is not None else None
        try:
            stop_at = time.monotonic() + args.duration
            while not work.stop.wait(min(5.0, max(0.0, stop_at - time.monotonic()))):
                if time.monotonic() >= stop_at:
                    break
                done = [op for ops in per_worker for op in list(ops)]
                acked = sum(op.kind != "read" and op.outcome == "ok" for op in done)
                unknown = sum(op.outcome == "unknown" for op in done)
                log(f"{len(done)} operations, {acked} acknowledged writes, {unknown} unknown")
        except KeyboardInterrupt:
            log("interrupted: stopping the load early and checking what was recorded")
        finally:
            work.stop.set()
            log("load stopped; waiting for in-flight requests")
            try:
                for future in futures:
                    future.result()
                if nemesis_future is not None:
                    try:
                        nemesis_future.result()
                    except (CheckAborted, ControlError, OSError) as exc:
                        nemesis_error = f"the nemesis failed: {exc}"
                        log(nemesis_error)
            finally:
                if nemesis is not None:
                    nemesis.heal()
    return [op for ops in per_worker for op in ops], nemesis_error


def main(argv: Sequence[str] | None = None) -> int:
    """Run a check; returns the exit code documented in this module's docstring."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    run_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    prefix = args.key_prefix if args.key_prefix is not None else f"check-{run_id}/"
    history_path: Path = args.history or Path(f"ringkv-check-{run_id}.jsonl")
    t0 = time.monotonic()
    log = Log(t0)
    work = Workload(
        args.urls,
        args.token,
        args.timeout,
        [f"{prefix}k{i}" for i in range(args.keys)],
        args.read_ratio,
        args.consistency,
        seed,
        t0,
        CAS_SHARE if args.workload == "cas" else 0.0,
    )
    try:
        control = _preflight_control(args)
        _preflight_cluster(args, control, work)
    except (CheckAborted, ControlError, OSError, ValueError) as exc:
        print(f"ringkv check: {exc}", file=sys.stderr)
        return EXIT_USAGE
    nemesis = None
    if control is not None:
        nemesis = Nemesis(
            args.nemesis,
            control,
            args.interval,
            args.fault_duration,
            args.ready_timeout,
            random.Random(seed),
            log,
            args.max_skew,
        )
    print(
        f"ringkv check: {args.workload} workload, {args.workers} workers, {args.keys} keys under {prefix!r}, "
        f"{args.read_ratio:.0%} reads, {args.duration:g}s, nemesis {args.nemesis}, seed {seed}",
        flush=True,
    )

    ops, nemesis_error = _run_load(args, work, nemesis, log)
    problems = [nemesis_error] if nemesis_error else []
    log("waiting for every node to be ready")
    missing = _wait_all_ready(_node_urls(args, control), args.ready_timeout)
    if missing:
        problems.append(f"not ready {args.ready_timeout:g}s after the faults healed: {', '.join(missing)}")
    log(f"final {args.consistency if args.workload == 'cas' else 'quorum'} reads")
    ops += final_reads(work, args.ready_timeout)
    log("checking the history")
    verdict = check(ops, linearizable=args.workload == "cas")
    faults = nemesis.faults if nemesis is not None else []

    meta = {
        "run": run_id,
        "workload": args.workload,
        "urls": args.urls,
        "keys": work.keys,
        "workers": args.workers,
        "read_ratio": args.read_ratio,
        "duration": args.duration,
        "consistency": args.consistency,
        "nemesis": args.nemesis,
        "interval": args.interval,
        "fault_duration": args.fault_duration,
        "seed": seed,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - log.now())),
    }
    summary = summarize(meta, ops, faults, verdict, problems)
    write_history(history_path, meta, ops, faults, verdict, summary)
    if args.summary is not None:
        args.summary.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print()
    print(verdict.summary())
    if faults:
        listed = ", ".join(f"{f.action} {f.node} at {f.start:.1f}s" for f in faults)
        print(f"faults: {len(faults)} ({listed})")
        during = summary["availability_during_faults"]
        if during["attempted"]:
            print(f"availability during faults: {during['fraction']:.1%} "
                  f"({during['ok']} of {during['attempted']} operations ok)")
    for problem in problems:
        print(f"problem: {problem}")
    print(f"history file: {history_path}")
    if args.plot is not None:
        note = plot_timeline(args.plot, ops, faults, verdict, args.workers)
        print(f"timeline: {note}" if note else f"timeline: {args.plot}")
    return EXIT_VALID if verdict.valid and not problems else EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
