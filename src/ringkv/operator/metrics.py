"""The operator's HTTP endpoint on RINGKV_METRICS_PORT: Prometheus metrics and liveness.

`GET /metrics` is just what tells a working operator from a stuck one: the time of the last
successful reconcile round (`RingkvOperatorNotReconciling` in charts/ringkv/alerts/operator.yaml
fires when it grows old) and the rounds by outcome (a loop that runs but keeps failing). The
membership itself is on the nodes' metrics. `GET /healthz` is the liveness probe: 503 when
the operator says its reconcile loop no longer goes round (`kube.Operator.loop_alive`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .reconciler import Reconciler

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ReconcileCollector:
    """Reads the reconciler's round counts at scrape time (None: not created yet)."""

    def __init__(self, reconciler: Callable[[], Reconciler | None]) -> None:
        self.reconciler = reconciler

    def collect(self) -> Iterator[Metric]:
        reconciler = self.reconciler()
        rounds = CounterMetricFamily("ringkv_operator_reconcile_rounds",
                                     "Reconcile rounds by outcome", labels=["result"])
        for result in ("ok", "error"):
            rounds.add_metric([result], reconciler.rounds[result] if reconciler else 0)
        yield rounds
        yield GaugeMetricFamily(
            "ringkv_operator_last_reconcile_success_timestamp_seconds",
            "Unix time of the last reconcile round that succeeded (0: none yet)",
            value=(reconciler.last_success or 0.0) if reconciler else 0.0)


async def serve(reconciler: Callable[[], Reconciler | None], port: int,
                alive: Callable[[], tuple[bool, str]]) -> web.AppRunner:
    """Serve /metrics and /healthz on every interface at `port` until the runner is cleaned
    up; `alive` says whether the operator is alive, and why (or why not)."""
    registry = CollectorRegistry()
    registry.register(ReconcileCollector(reconciler))

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE})

    async def healthz(_request: web.Request) -> web.Response:
        ok, detail = alive()
        if ok:
            return web.json_response({"status": "ok", "detail": detail})
        return web.json_response({"error": {"code": "not_reconciling", "message": detail}},
                                 status=503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, port=port).start()
    return runner
