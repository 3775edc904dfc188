"""Prometheus metrics of one node (a registry per node, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ringkv_requests", "HTTP requests served", ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ringkv_request_seconds", "HTTP request latency", ["route", "method"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
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
        self.rebalance_ranges_left = Gauge(
            "ringkv_rebalance_ranges_left", "Ranges this node still has to pull for its epoch",
            registry=self.registry)
        self.rebalance_keys = Counter(
            "ringkv_rebalance_keys_received", "Records merged by handoff", registry=self.registry)
        self.rebalance_bytes = Counter(
            "ringkv_rebalance_bytes_received", "Key and value bytes merged by handoff",
            registry=self.registry)
        self.anti_entropy_repaired = Counter(
            "ringkv_anti_entropy_records", "Records merged by anti-entropy", registry=self.registry)
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Record one request; label children are cached because lookups are not free."""
        key = (route, method, status)
        child = self._children.get(key)
        if child is None:
            child = (self.requests.labels(route, method, str(status)),
                     self.latency.labels(route, method))
            self._children[key] = child
        child[0].inc()
        child[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
