"""The churn benchmark's client: a light quorum load that records what it did, and the
checker's verdict on it (:mod:`ringkv.client.history`).

Worker threads share one rate (150 operations a second by default). Each operation reads
or writes one random key of the bulk-loaded keyspace through one random node among those
that answer `/healthz` (as a Service routes to live pods), with one attempt, so what a
node answers is counted, never retried away. Every written value is unique, so a value
read names its write. Before the run, the bulk load acknowledged every key with one
value; that write enters the history as an ``unknown`` write invoked before the run: a
read may return it until a newer write is acknowledged (then it is a stale read), and a
read that finds no value at all is a lost acknowledged write.

Each load window ends with final quorum reads of the keys written in it, for the
checker's lost-write rule; :meth:`CheckedLoad.verdict` judges the history up to the end of
a window and counts what that window brought.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from ringkv.bench.loadgen import key_name
from ringkv.client.errors import RingkvError, Unavailable
from ringkv.client.history import Op, Verdict, Violation, check
from ringkv.client.syncclient import Client
from ringkv.local.workloads import Workload, final_reads, read_op, write_op

BULK_PROCESS = -2  # the process of the bulk load's write in the history
FINAL_READERS = 8


def error_label(exc: RingkvError) -> str:
    """How an error is counted: ``503 quorum_unavailable``, ``timeout``, ``connection``."""
    if isinstance(exc, Unavailable) and exc.status is None:
        return "timeout" if exc.timed_out else "connection"
    return f"{exc.status} {exc.code}"


@dataclass(frozen=True)
class Keyspace:
    """The bulk-loaded keys: names, and the one value the bulk load wrote to each."""

    keys: int
    key_size: int
    bulk_value: str

    def name(self, i: int) -> str:
        return key_name(i, self.key_size).decode()

    def bulk_write(self, key: str) -> Op:
        """The bulk load's write of ``key``, as the history sees it (see the module doc)."""
        return Op(BULK_PROCESS, "write", key, self.bulk_value, None, -1.0, -1.0, "unknown")


@dataclass
class Window:
    """One stretch of load: when it ran, what it did, and its final reads."""

    start: float
    end: float = 0.0
    ops: list[Op] = field(default_factory=list)
    # (time, kind, label, message) of every operation that failed
    errors: list[tuple[float, str, str, str]] = field(default_factory=list)
    finals: list[Op] = field(default_factory=list)


class CheckedLoad:
    """The rate-limited load of one benchmark run, window after window.

    ``urls`` is asked before every operation for the nodes to choose from; times in the
    history are seconds since ``t0`` (``time.monotonic()``).
    """

    def __init__(self, keyspace: Keyspace, urls: Callable[[], list[str]], token: str,
                 *, rate: float, write_fraction: float, workers: int, timeout: float,
                 value_size: int, seed: int, t0: float) -> None:
        self.keyspace = keyspace
        self.urls = urls
        self.token = token
        self.rate = rate
        self.write_fraction = write_fraction
        self.workers = workers
        self.timeout = timeout
        self.value_size = value_size
        self.seed = seed
        self.t0 = t0
        self.windows: list[Window] = []
        self._seq = [0] * workers  # written values stay unique across windows
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- load ---------------------------------------------------------------------------
    def start(self) -> Window:
        """Start a new window of load."""
        if self._threads:
            raise RuntimeError("the load is already running")
        window = Window(self.now())
        self.windows.append(window)
        self._stop.clear()
        self._threads = [threading.Thread(target=self._worker, args=(i, window),
                                          name=f"churn-client-{i}", daemon=True)
                         for i in range(self.workers)]
        for thread in self._threads:
            thread.start()
        return window

    def stop(self) -> Window:
        """Stop the load (in-flight operations finish), then read back at quorum every key
        the window wrote."""
        window = self.windows[-1]
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._threads = []
        window.end = self.now()
        written = sorted({op.key for op in window.ops if op.kind == "write"})
        window.finals = self.final_reads(written)
        return window

    def _worker(self, process: int, window: Window) -> None:
        rng = random.Random(f"{self.seed}-{process}-{len(self.windows)}")
        clients: dict[str, Client] = {}
        interval = self.workers / self.rate
        due = time.monotonic() + rng.uniform(0, interval)
        try:
            while not self._stop.wait(max(0.0, due - time.monotonic())):
                due += interval
                if due < time.monotonic() - interval:
                    due = time.monotonic()  # fell behind (a slow answer): skip, do not burst
                op = self._one(process, rng, clients, window)
                with self._lock:
                    window.ops.append(op)
        finally:
            for client in clients.values():
                client.close()

    def _one(self, process: int, rng: random.Random, clients: dict[str, Client],
             window: Window) -> Op:
        key = self.keyspace.name(rng.randrange(self.keyspace.keys))
        write = rng.random() < self.write_fraction
        urls = self.urls()
        if not urls:
            now = self.now()
            self._error(window, now, "write" if write else "read", "no node answers",
                        "no node is up and ready")
            value = self._value(process) if write else None
            return Op(process, "write" if write else "read", key, value, None, now, now, "fail")
        url = rng.choice(urls)
        client = clients.get(url)
        if client is None:
            client = clients[url] = Client(url, token=self.token, timeout=self.timeout,
                                           attempts=1)
        kind = "write" if write else "read"

        def on_error(exc: RingkvError) -> None:
            self._error(window, self.now(), kind, error_label(exc), str(exc))

        if write:
            return write_op(client, process, key, self._value(process), "quorum", self.t0,
                            on_error)
        return read_op(client, process, key, "quorum", self.t0, on_error=on_error)

    def _value(self, process: int) -> str:
        self._seq[process] += 1
        tag = f"churn-{process}-{self._seq[process]}-"
        return tag + "v" * max(0, self.value_size - len(tag))

    def _error(self, window: Window, at: float, kind: str, label: str, message: str) -> None:
        with self._lock:
            window.errors.append((at, kind, label, message))

    def final_reads(self, keys: list[str]) -> list[Op]:
        """Quorum reads of ``keys``, each retried until it answers (or 60 s pass), on
        FINAL_READERS threads: the evidence for the lost-write rule."""
        if not keys:
            return []
        urls = self.urls()
        chunks = [keys[i::FINAL_READERS] for i in range(FINAL_READERS)]
        works = [Workload(urls, self.token, self.timeout, chunk, 1.0, "quorum", self.seed,
                          self.t0) for chunk in chunks if chunk]
        with ThreadPoolExecutor(len(works), thread_name_prefix="churn-final") as pool:
            return [op for ops in pool.map(lambda w: final_reads(w, 60.0), works)
                    for op in ops]

    # -- verdict ------------------------------------------------------------------------
    def verdict(self, window: Window) -> dict[str, Any]:
        """The checker over the history up to the end of ``window`` with that window's
        final reads; counted are the violations whose evidence ends in the window."""
        upto = self.windows.index(window)
        ops = [op for w in self.windows[: upto + 1] for op in w.ops]
        result = check_history(self.keyspace, ops, window.finals)
        finals = {op.key for op in window.finals}
        mine = [v for v in result.violations
                if (v.ops and max(op.invoke for op in v.ops) >= window.start)
                or (not v.ops and v.key in finals)]
        return summarize(result, mine, window)


def check_history(keyspace: Keyspace, ops: Iterable[Op], finals: Iterable[Op]) -> Verdict:
    """:func:`ringkv.client.history.check` with the bulk load's writes, and a read that
    found nothing counted as a lost acknowledged write (every key was loaded)."""
    ops = list(ops)
    finals = [replace(op, final=True) for op in finals]
    keys = {op.key for op in ops} | {op.key for op in finals}
    verdict = check([*(keyspace.bulk_write(k) for k in sorted(keys)), *ops, *finals])
    flagged = {id(op) for v in verdict.violations for op in v.ops}
    extra: list[Violation] = []
    for op in [*ops, *finals]:
        if op.kind == "read" and op.outcome == "ok" and op.value is None and id(op) not in flagged:
            kind = "lost-write" if op.final else "stale-read"
            extra.append(Violation(
                kind, op.key, "read found no value; the bulk load acknowledged it before the run",
                (op,)))
    return replace(verdict, violations=verdict.violations + extra)


def summarize(verdict: Verdict, counted: list[Violation], window: Window) -> dict[str, Any]:
    """The verdict of one window as the report shows it."""
    load = window.ops
    by_kind = Counter(v.kind for v in counted)
    return {
        "valid": not counted,
        "stale_reads": by_kind.get("stale-read", 0),
        "lost_writes": by_kind.get("lost-write", 0),
        "violations": len(counted),
        "violations_by_kind": dict(by_kind),
        "operations": len(load),
        "acknowledged_writes": sum(op.kind == "write" and op.outcome == "ok" for op in load),
        "ok_reads": sum(op.kind == "read" and op.outcome == "ok" for op in load),
        "final_reads": sum(op.outcome == "ok" for op in window.finals),
        "final_reads_failed": sum(op.outcome != "ok" for op in window.finals),
        "first_violations": [f"{v.kind} on {v.key!r}: {v.message}" for v in counted[:5]],
    }
