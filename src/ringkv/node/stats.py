"""What this node counted, as recent rates: the series behind `GET /v1/stats`.

Every `INTERVAL_S` the node takes a `Snapshot` of its counters (client reads and writes,
their latency histograms, errors by code, handoff progress) on a wall-clock grid, and
keeps the rates between consecutive snapshots for the last `KEEP` intervals. Sampling on
the grid makes every member's samples fall on the same instants, so the console and
`ringkv status --watch` can add them up per instant without aligning anything. Pure but
for `wall_ms`: the node's loop calls `Series.add` with what it counted.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from .metrics import LATENCY_BUCKETS, RequestStats

INTERVAL_S = 2
KEEP = 300  # ten minutes of two-second samples

KV_KEY = "/v1/kv/{key}"
READS = frozenset({(KV_KEY, "GET"), (KV_KEY, "HEAD"), ("/v1/kv", "GET")})
WRITES = frozenset({(KV_KEY, "PUT"), (KV_KEY, "DELETE")})


@dataclass(frozen=True, slots=True)
class Handoff:
    """The running pull's counters (`rebalance.Progress`); a new pull starts them at 0."""

    epoch: int = 0
    ranges_done: int = 0
    keys: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A node's counters at one instant."""

    t_ms: int
    reads: int
    writes: int
    read_hist: tuple[int, ...]  # requests per latency bucket (the last one +Inf)
    write_hist: tuple[int, ...]
    errors: dict[str, int]
    handoff: Handoff

    @classmethod
    def take(cls, t_ms: int, requests: RequestStats, handoff: Handoff) -> Snapshot:
        reads = writes = 0
        for (route, method, _status), n in requests.counts.items():
            if (route, method) in READS:
                reads += n
            elif (route, method) in WRITES:
                writes += n
        return cls(t_ms, reads, writes, _histogram(requests, READS), _histogram(requests, WRITES),
                   dict(requests.errors), handoff)


def _histogram(requests: RequestStats, routes: frozenset[tuple[str, str]]) -> tuple[int, ...]:
    total = [0] * (len(LATENCY_BUCKETS) + 1)
    for key in routes:
        hist = requests.latency.get(key)
        if hist is not None:
            for i in range(len(total)):
                total[i] += int(hist[i])
    return tuple(total)


def quantile(q: float, counts: tuple[int, ...] | list[int]) -> float | None:
    """The q-quantile in seconds of requests counted per latency bucket, interpolated
    linearly inside the bucket as Prometheus' histogram_quantile does; None without
    requests. A quantile in the +Inf bucket is reported as the highest finite bound."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i == len(LATENCY_BUCKETS):
                return float(LATENCY_BUCKETS[-1])
            lower = 0.0 if i == 0 else LATENCY_BUCKETS[i - 1]
            return lower + (LATENCY_BUCKETS[i] - lower) * (rank - seen) / n
        seen += n
    return float(LATENCY_BUCKETS[-1])


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _grown(new: int, old: int, same_run: bool) -> int:
    return new - old if same_run and new >= old else new


def rates(prev: Snapshot, cur: Snapshot) -> dict[str, Any]:
    """One sample: per-second rates and latency quantiles between two snapshots."""
    seconds = max((cur.t_ms - prev.t_ms) / 1000, 1e-3)
    read_hist = [a - b for a, b in zip(cur.read_hist, prev.read_hist, strict=True)]
    write_hist = [a - b for a, b in zip(cur.write_hist, prev.write_hist, strict=True)]
    errors = {code: (n - prev.errors.get(code, 0)) / seconds for code, n in cur.errors.items()
              if n > prev.errors.get(code, 0)}
    a, b = prev.handoff, cur.handoff
    same = a.epoch == b.epoch
    return {
        "t": cur.t_ms,
        "reads": (cur.reads - prev.reads) / seconds,
        "writes": (cur.writes - prev.writes) / seconds,
        "errors": errors,
        "read_p50_ms": _ms(quantile(0.5, read_hist)),
        "read_p99_ms": _ms(quantile(0.99, read_hist)),
        "write_p50_ms": _ms(quantile(0.5, write_hist)),
        "write_p99_ms": _ms(quantile(0.99, write_hist)),
        "handoff_bytes_per_s": _grown(b.bytes, a.bytes, same) / seconds,
        "handoff_keys_per_s": _grown(b.keys, a.keys, same) / seconds,
        "handoff_ranges_per_s": _grown(b.ranges_done, a.ranges_done, same) / seconds,
    }


class Series:
    """The last `keep` samples of one node, oldest first."""

    def __init__(self, keep: int = KEEP) -> None:
        self._last: Snapshot | None = None
        self._samples: deque[dict[str, Any]] = deque(maxlen=keep)

    def add(self, snapshot: Snapshot) -> None:
        if self._last is not None and snapshot.t_ms > self._last.t_ms:
            self._samples.append(rates(self._last, snapshot))
        self._last = snapshot

    def since(self, t_ms: int | None = None) -> list[dict[str, Any]]:
        """Samples newer than `t_ms` (all of them when None)."""
        if t_ms is None:
            return list(self._samples)
        return [s for s in self._samples if s["t"] > t_ms]


def wall_ms() -> int:
    """Wall-clock milliseconds, for what people read (never a node's skewed test clock)."""
    return time.time_ns() // 1_000_000


def next_tick(now_ms: int, interval_s: int = INTERVAL_S) -> int:
    """The next instant on the wall-clock grid (a multiple of the interval) after now."""
    step = interval_s * 1000
    return (now_ms // step + 1) * step
