"""Prometheus metrics of one node (a registry per node, so tests can run several)."""

from __future__ import annotations

import collections
from bisect import bisect_left
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class RequestStats:
    """HTTP request counts, latency histograms and error codes as plain ints and floats.

    Every request updates them, so they skip prometheus_client's per-sample locks and
    label lookups (the event loop is the only writer); they are turned into the same
    metric families (`ringkv_requests_total`, `ringkv_request_seconds`, `ringkv_errors_total`)
    only when scraped."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}
        # (route, method) -> [count per bucket (the last one +Inf)..., sum of seconds]
        self.latency: dict[tuple[str, str], list[float]] = {}
        self.errors: dict[str, int] = {}  # /v1 error responses by the JSON error's code

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        hist = self.latency.get((route, method))
        if hist is None:
            hist = self.latency[(route, method)] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        hist[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        hist[-1] += seconds

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("ringkv_requests", "HTTP requests served",
                                       labels=["route", "method", "status"])
        for (route, method, status), count in self.counts.items():
            requests.add_metric([route, method, str(status)], count)
        latency = HistogramMetricFamily("ringkv_request_seconds", "HTTP request latency",
                                        labels=["route", "method"])
        bounds = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]
        for (route, method), hist in self.latency.items():
            total, cumulative = 0.0, []
            for bound, n in zip(bounds, hist[:-1], strict=True):
                total += n
                cumulative.append((bound, total))
            latency.add_metric([route, method], cumulative, hist[-1])
        errors = CounterMetricFamily("ringkv_errors", "Error responses of the /v1 API by error code",
                                     labels=["code"])
        for code, count in self.errors.items():
            errors.add_metric([code], count)
        yield requests
        yield latency
        yield errors


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = RequestStats()
        self.registry.register(self.requests)
        self.replica_errors = Counter(
            "ringkv_replica_errors", "Failed replica operations", ["peer", "kind"],
            registry=self.registry,
        )
        self.hints_pending = Gauge(
            "ringkv_hints_pending", "Hints stored for replicas that missed writes", ["target"],
            registry=self.registry,
        )
        self.hints_replayed = Counter(
            "ringkv_hints_replayed", "Hints delivered", registry=self.registry
        )
        self.read_repairs = Counter(
            "ringkv_read_repairs", "Stale replicas repaired by reads", registry=self.registry
        )
        self.keys = Gauge("ringkv_keys", "Records stored on this node (tombstones included)",
                          registry=self.registry)
        self.epoch = Gauge("ringkv_membership_epoch", "Adopted membership epoch",
                           registry=self.registry)
        self.members = Gauge("ringkv_membership_members",
                             "Members of the adopted membership document by state", ["state"],
                             registry=self.registry)
        self.rebalance_ranges_left = Gauge(
            "ringkv_rebalance_ranges_left", "Ranges this node still has to pull for its epoch",
            registry=self.registry)
        self.rebalance_keys = Counter(
            "ringkv_rebalance_keys_received", "Records merged by handoff", registry=self.registry)
        self.rebalance_bytes = Counter(
            "ringkv_rebalance_bytes_received", "Key and value bytes merged by handoff",
            registry=self.registry)
        self.paxos_restarts = Counter(
            "ringkv_paxos_restarts", "Paxos rounds of conditional requests started over, by "
            "why: preempted (a newer ballot), finished_another (an earlier proposal finished "
            "first), catch_up, data_newer, stale_epoch", ["reason"], registry=self.registry)
        self.anti_entropy_repaired = Counter(
            "ringkv_anti_entropy_records", "Records merged by anti-entropy", registry=self.registry)
        # The newest backup reported to the cluster (see backup.py); 0 until one is.
        self.backup_last_success = Gauge(
            "ringkv_backup_last_success_timestamp_seconds",
            "When the newest complete backup of the cluster finished (Unix time)",
            registry=self.registry)
        self.backup_last_duration = Gauge(
            "ringkv_backup_last_duration_seconds", "How long the newest complete backup took",
            registry=self.registry)
        self.backup_last_records = Gauge(
            "ringkv_backup_last_records", "Records (tombstones included) in the newest backup",
            registry=self.registry)
        self.backup_last_bytes = Gauge(
            "ringkv_backup_last_bytes", "Archive bytes of the newest backup", registry=self.registry)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.observe(route, method, status, seconds)

    def observe_membership(self, epoch: int, states: Iterable[str]) -> None:
        self.epoch.set(epoch)
        self.members.clear()
        for state, count in collections.Counter(states).items():
            self.members.labels(state).set(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
