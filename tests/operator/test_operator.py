"""The real kopf operator (`Operator.run`) against the emulated API server.

Pods here have no node processes behind them (their addresses are closed ports), so every
status poll and push fails: the operator must still keep the membership right, and its
failures must cost nothing but log lines. A pod that joins an existing membership is the
exception: the operator adds a node only once it answers in its own name, so such a pod
has a `StatusNode` behind it (our peer protocol, answering status and pushes, holding no
data and never caught up). The tests with real nodes are in test_operator_nodes.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

import aiohttp.web
from harness import free_ports, http
from kube_harness import SELECTOR, eventually, make_config
from prometheus_client.parser import text_string_to_metric_families

from ringkv.node.membership import Document


async def membership(k8s, condition, what: str, timeout: float = 30) -> Document:
    """The stored document once `condition(doc)` holds."""
    async def check() -> Document | None:
        doc = await k8s.document()
        return doc if doc is not None and condition(doc) else None

    return await eventually(check, timeout, what)


async def reasons(k8s) -> list[str]:
    return [e["reason"] for e in await k8s.events()
            if e["involvedObject"]["kind"] == "ConfigMap"]


def assert_pods_untouched(k8s) -> None:
    assert k8s.foreign_pod_writes() == []
    assert k8s.pod_versions_with_operator_marks() == []


async def test_running_node_pods_form_the_cluster_and_new_ones_join(
        k8s, operators, status_node) -> None:
    for name in ("kv-0", "kv-1", "kv-2"):
        await k8s.create_pod(name)
    await k8s.create_pod("kv-3", phase="Pending")
    await k8s.create_pod("web-0", labels={"app.kubernetes.io/name": "web"})  # not a node
    kv3 = await status_node("kv-3")
    await operators(make_config({"kv-3": kv3.address}))

    doc = await membership(k8s, lambda d: d.epoch == 1, "epoch 1")
    assert doc.names == ("kv-0", "kv-1", "kv-2")
    assert doc.settled and {m.state for m in doc.members} == {"normal"}

    await k8s.set_phase("kv-3", "Running")
    doc = await membership(k8s, lambda d: "kv-3" in d.names, "kv-3 to join")
    assert (doc.epoch, doc.member("kv-3").state, doc.settled) == (2, "joining", False)
    assert doc.member("kv-3").data_id == kv3.data_id
    assert doc.base == ("kv-0", "kv-1", "kv-2")
    assert await eventually(lambda: _has(k8s, "NodeJoined"), 10, "a NodeJoined Event")
    assert (await reasons(k8s))[0] == "ClusterFormed"
    assert "web-0" not in doc.names
    assert_pods_untouched(k8s)
    # Forming a cluster and admitting a node needs every grant of the chart's Role: none is
    # there for nothing (and the `k8s` fixture fails any request it does not grant).
    assert k8s.unused_grants() == set()


async def _has(k8s, reason: str) -> bool:
    return reason in await reasons(k8s)


async def test_a_terminating_pod_leaves_before_it_is_gone(k8s, operators, status_node) -> None:
    for name in ("kv-0", "kv-1", "kv-2", "kv-3"):
        await k8s.create_pod(name)
    (port,) = free_ports(1)
    address = (f"127.0.0.1:{port}", f"http://127.0.0.1:{port}")
    await operators(make_config({"kv-1": address}))
    await membership(k8s, lambda d: d.epoch == 1, "epoch 1")

    await k8s.terminate_pod("kv-1")  # still listed, with a deletionTimestamp
    doc = await membership(k8s, lambda d: "kv-1" not in d.names, "kv-1 to be removed")
    assert (doc.epoch, doc.names, doc.settled) == (2, ("kv-0", "kv-2", "kv-3"), False)
    assert doc.base == ("kv-0", "kv-1", "kv-2", "kv-3")
    assert await eventually(lambda: _has(k8s, "NodeRemoved"), 10, "a NodeRemoved Event")

    # The pod disappearing for good and coming back: it rejoins as a new member, once its
    # node answers.
    await k8s.remove_pod("kv-1")
    await status_node("kv-1", port=port)
    await k8s.create_pod("kv-1")
    doc = await membership(k8s, lambda d: "kv-1" in d.names, "kv-1 to rejoin")
    assert (doc.epoch, doc.member("kv-1").state) == (3, "joining")
    assert_pods_untouched(k8s)


async def test_a_deletion_missed_while_the_operator_was_down_is_caught_up(k8s, operators) -> None:
    for name in ("kv-0", "kv-1", "kv-2", "kv-3"):
        await k8s.create_pod(name)
    config = make_config({})
    first = await operators(config)
    await membership(k8s, lambda d: d.epoch == 1 and len(d.names) == 4, "epoch 1")
    await first.stop()

    await k8s.delete_pod("kv-2")  # nobody is watching
    await operators(config)
    doc = await membership(k8s, lambda d: "kv-2" not in d.names, "kv-2 to be removed")
    assert (doc.epoch, doc.names) == (2, ("kv-0", "kv-1", "kv-3"))
    messages = [e["message"] for e in await k8s.events()]
    assert messages[-1] == "epoch 2: kv-2 removed", messages
    assert_pods_untouched(k8s)


async def test_pods_deleted_before_kopf_lists_them_are_found_by_a_re_list(k8s, operators) -> None:
    """A pod deleted between the startup list and kopf's first list: the operator knows it
    from its own list, kopf never saw it, so no DELETED event ever comes. kopf's listing
    makes the operator list again, rather than waiting for the periodic re-list."""
    for name in ("kv-0", "kv-1", "kv-2", "kv-3"):
        await k8s.create_pod(name)
    deleted: list[str] = []

    async def delete_before_kopf_lists(request):
        if (not deleted and request.method == "GET" and request.url.path == k8s.pods_url
                and request.params.get("watch") != "true"
                and request.headers.get("User-Agent", "").startswith("kopf/")):
            deleted.append("kv-2")
            await k8s.delete_pod("kv-2")

    k8s.emulator.gate = delete_before_kopf_lists
    await operators(make_config({}, resync_interval=3600))
    doc = await membership(k8s, lambda d: d.epoch == 2, "kv-2 to be removed")
    assert doc.names == ("kv-0", "kv-1", "kv-3") and deleted == ["kv-2"]


async def test_pods_are_never_written_to(k8s, operators, status_node) -> None:
    """No finalizer, no annotation, no patch on any pod, across a full pod lifecycle."""
    for name in ("kv-0", "kv-2", "kv-3"):
        await k8s.create_pod(name)
    await k8s.create_pod("kv-1", phase="Pending")
    kv1 = await status_node("kv-1")
    await operators(make_config({"kv-1": kv1.address}))
    await membership(k8s, lambda d: d.epoch == 1, "epoch 1")
    await k8s.set_phase("kv-1", "Running")
    await membership(k8s, lambda d: "kv-1" in d.names, "kv-1 to join")
    await k8s.delete_pod("kv-0")
    await membership(k8s, lambda d: "kv-0" not in d.names, "kv-0 to leave")
    assert_pods_untouched(k8s)
    agents = {r.headers.get("User-Agent", "").split("/")[0] for r in k8s.emulator}
    assert agents == {"ringkv-tests", "ringkv-operator", "kopf"}


async def test_kopf_watches_only_node_pods_with_a_server_timeout(k8s, operators) -> None:
    await operators(make_config({}))
    watches = [r for r in k8s.emulator if r.params.get("watch") == "true"]
    assert {r.url.path for r in watches} == {k8s.pods_url}  # no namespaces, no CRDs
    assert {(r.params.get("labelSelector"), r.params.get("timeoutSeconds")) for r in watches} == {
        (SELECTOR, "300")}


async def operator_metrics(port: int) -> dict[str, float]:
    """The operator's /metrics as {sample name{labels}: value}."""
    r = await asyncio.to_thread(http, "GET", f"http://127.0.0.1:{port}/metrics", None, None, None, 5)
    assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
    return {s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.body.decode()) for s in family.samples}


async def test_metrics_tell_whether_reconcile_rounds_succeed(k8s, operators) -> None:
    """What RingkvOperatorNotReconciling and the round counts rest on."""
    config = make_config({})
    await operators(config)
    last, ok, error = ("ringkv_operator_last_reconcile_success_timestamp_seconds",
                       "ringkv_operator_reconcile_rounds_total{result=ok}",
                       "ringkv_operator_reconcile_rounds_total{result=error}")
    seen = await eventually(lambda: _succeeded(config.metrics_port, last), 30, "a successful round")

    async def refuse_configmaps(request) -> aiohttp.web.StreamResponse | None:
        if "/configmaps" in request.url.path:
            return aiohttp.web.json_response({"kind": "Status", "code": 500}, status=500)
        return None

    k8s.emulator.gate = refuse_configmaps  # every round now fails at its first read
    before = await operator_metrics(config.metrics_port)
    # Rounds run one after another: once one failed, none can succeed while refused.
    first = await eventually(
        lambda: _grown(config.metrics_port, error, before[error] + 1), 30, "a failing round")
    failing = await eventually(
        lambda: _grown(config.metrics_port, error, first[error] + 2), 30, "more failing rounds")
    assert failing[last] == first[last] >= seen[last]
    assert failing[ok] == first[ok] > 0
    k8s.emulator.gate = None
    await eventually(lambda: _grown(config.metrics_port, last, failing[last] + 1e-3), 30,
                     "a successful round again")


async def _succeeded(port: int, last: str) -> dict[str, float] | None:
    metrics = await operator_metrics(port)
    return metrics if metrics[last] > 0 else None


async def _grown(port: int, name: str, at_least: float) -> dict[str, float] | None:
    metrics = await operator_metrics(port)
    return metrics if metrics[name] >= at_least else None


def liveness(port: int) -> int:
    """The status of the operator's GET /healthz, or 0 while nothing answers."""
    try:
        return http("GET", f"http://127.0.0.1:{port}/healthz", token=None, timeout=30).status
    except OSError:
        return 0


async def test_liveness_says_whether_reconcile_rounds_end(k8s, operators) -> None:
    """The chart's liveness probe: 200 while rounds end; 503 once none has for
    `stale_after` (here 3 s, while every read of the ConfigMap is held for up to a minute);
    200 again when rounds end again."""
    for name in ("kv-0", "kv-1", "kv-2"):
        await k8s.create_pod(name)
    config = replace(make_config({}), stale_after=3.0)
    await operators(config)
    await membership(k8s, lambda d: d.epoch == 1, "epoch 1")
    await eventually(lambda: asyncio.to_thread(lambda: liveness(config.metrics_port) == 200), 30,
                     "liveness to answer 200")
    release = asyncio.Event()

    async def hold_configmap_reads(request) -> None:
        if (request.method == "GET" and request.url.path == k8s.configmap_url
                and request.headers.get("User-Agent", "").startswith("ringkv-operator")):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), 60)

    k8s.emulator.gate = hold_configmap_reads
    try:
        await eventually(lambda: asyncio.to_thread(lambda: liveness(config.metrics_port) == 503),
                         60, "liveness to fail while no round ends")
    finally:
        release.set()
        k8s.emulator.gate = None
    await eventually(lambda: asyncio.to_thread(lambda: liveness(config.metrics_port) == 200), 60,
                     "liveness to recover once rounds end again")


async def test_a_scaled_in_pod_leaves_by_handing_off_and_a_deleted_one_is_waited_for(
        k8s, operators) -> None:
    """The StatefulSet's replicas tell a scale-in from a restart: a terminating pod past
    them becomes `leaving` (it hands off while it terminates); a deleted pod the StatefulSet
    still wants stays a member through the grace period."""
    names = [f"ringkv-{i}" for i in range(5)]
    await k8s.scale(5)
    for name in names:
        await k8s.create_pod(name)
    await operators(make_config({}, down_grace=3600))
    await membership(k8s, lambda d: d.epoch == 1 and len(d.names) == 5, "epoch 1")

    await k8s.delete_pod("ringkv-1")  # a restart: the StatefulSet wants it back
    await k8s.scale(4)
    await k8s.terminate_pod("ringkv-4")  # the scale-in
    doc = await membership(k8s, lambda d: d.epoch > 1, "the scale-in")
    assert doc.member("ringkv-4").state == "leaving"
    assert doc.member("ringkv-1").state == "normal" and not doc.settled
    assert await eventually(lambda: _has(k8s, "NodeLeaving"), 10, "a NodeLeaving Event")
    assert_pods_untouched(k8s)
