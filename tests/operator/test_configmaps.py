"""The ConfigMap store, Events, the pod list and the API client against the emulated API server."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import aiohttp.web
import kopf
import pytest
from kube_harness import CONFIGMAP, NAMESPACE
from kubernetes.aio.client import EventsV1Api, EventsV1Event, V1ObjectReference

from ringkv.node.membership import Document, Member
from ringkv.operator.configmaps import ApiException, ConfigMapStore, KubeClient, list_pods, post_event


def api_for(k8s) -> KubeClient:
    """A client with the kubeconfig the `k8s` fixture points KUBECONFIG at."""
    return KubeClient(lambda: kopf.login_with_kubeconfig(settings=kopf.OperatorSettings()))


def doc(epoch: int, names: str = "a,b,c") -> Document:
    return Document(epoch, 3, tuple(Member(n, f"{n}:9080", f"http://{n}:8080")
                                    for n in names.split(",")))


async def test_store_creates_the_configmap_then_merge_patches_it(k8s) -> None:
    api = api_for(k8s)
    store = ConfigMapStore(api, NAMESPACE, CONFIGMAP)
    try:
        assert await store.load() is None
        await store.save(doc(1))
        assert await store.load() == doc(1)
        created = await k8s.call("GET", k8s.configmap_url)
        assert created["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "ringkv-operator"}
        # Someone adds a key of their own: a save replaces only the document.
        await k8s.call("PATCH", k8s.configmap_url, {"data": {"note": "keep me"}})
        await store.save(doc(2, "a,b"))
        assert await store.load() == doc(2, "a,b")
        body = await k8s.call("GET", k8s.configmap_url)
        assert body["data"]["note"] == "keep me"
        assert json.loads(body["data"]["membership.json"])["epoch"] == 2
        assert store.reference() == V1ObjectReference(
            api_version="v1", kind="ConfigMap", name=CONFIGMAP, namespace=NAMESPACE,
            uid=body["metadata"]["uid"])
        methods = [r.method for r in k8s.emulator if r.headers.get("User-Agent") == "ringkv-operator"
                   and "configmaps" in r.url.path and r.method != "GET"]
        assert methods == ["PATCH", "POST", "PATCH"]  # 404, create, then patches only
        # A JSON merge patch: the client's default for a PATCH would be a JSON patch.
        assert {r.headers.get("Content-Type") for r in k8s.emulator
                if r.headers.get("User-Agent") == "ringkv-operator" and r.method == "PATCH"} == {
            "application/merge-patch+json"}
    finally:
        await api.close()


async def test_an_unreadable_document_reads_as_missing(k8s, caplog: pytest.LogCaptureFixture) -> None:
    await k8s.call("POST", f"/api/v1/namespaces/{NAMESPACE}/configmaps", {
        "metadata": {"name": CONFIGMAP}, "data": {"membership.json": '{"epoch": "x"'}})
    api = api_for(k8s)
    try:
        with caplog.at_level(logging.ERROR, "ringkv.operator"):
            assert await ConfigMapStore(api, NAMESPACE, CONFIGMAP).load() is None
        assert "holds no valid membership.json" in caplog.text
    finally:
        await api.close()


async def test_event_names_the_configmap_and_says_what_changed(k8s) -> None:
    api = api_for(k8s)
    store = ConfigMapStore(api, NAMESPACE, CONFIGMAP)
    try:
        await store.save(doc(1))
        await post_event(api, store.reference(), "NodeRemoved", "epoch 2: c removed")
        await post_event(api, store.reference(), "NodeJoined", "x" * 5000)
    finally:
        await api.close()
    events = (await k8s.call("GET", f"/api/v1/namespaces/{NAMESPACE}/events"))["items"]
    assert [e["reason"] for e in events] == ["NodeRemoved", "NodeJoined"]
    first = events[0]
    assert first["involvedObject"] == {"apiVersion": "v1", "kind": "ConfigMap", "name": CONFIGMAP,
                                       "namespace": NAMESPACE, "uid": store.current.metadata.uid}
    assert (first["type"], first["message"], first["source"]) == (
        "Normal", "epoch 2: c removed", {"component": "ringkv-operator"})
    assert len(events[1]["message"]) == 1024
    assert first["metadata"]["name"] != events[1]["metadata"]["name"]


async def test_api_errors_carry_the_status(k8s) -> None:
    api = api_for(k8s)
    try:
        with pytest.raises(ApiException) as info:
            await api.call(lambda core: core.read_namespaced_config_map(CONFIGMAP, NAMESPACE))
        assert info.value.status == 404
    finally:
        await api.close()


async def test_the_chart_role_refuses_what_it_does_not_grant(k8s) -> None:
    """The emulator holds the operator's requests to the chart's Role: any other ConfigMap,
    pod reads by name, other namespaces and cluster-scoped lists are refused with 403."""
    api = api_for(k8s)
    merge = "application/merge-patch+json"
    refused = [
        lambda core: core.read_namespaced_config_map("other", NAMESPACE),
        lambda core: core.patch_namespaced_config_map("other", NAMESPACE, {"data": {}},
                                                      _content_type=merge),
        lambda core: core.list_namespaced_config_map(NAMESPACE),
        lambda core: core.read_namespaced_pod("kv-0", NAMESPACE),
        lambda core: core.delete_namespaced_pod("kv-0", NAMESPACE),
        lambda core: core.list_namespaced_pod("elsewhere"),
        lambda core: core.list_node(),
        lambda core: EventsV1Api(core.api_client).create_namespaced_event(
            NAMESPACE, EventsV1Event(event_time=datetime.now(UTC))),
    ]
    try:
        for i, request in enumerate(refused):
            with pytest.raises(ApiException) as info:
                await api.call(request)
            assert info.value.status == 403, i
            assert "is forbidden" in (info.value.body or ""), i
        assert len(k8s.emulator.forbidden) == len(refused)
        k8s.emulator.forbidden.clear()  # refused on purpose: the fixture checks for none
        # What it grants goes through; the test's own requests (no token) are never held.
        assert await list_pods(api, NAMESPACE, "") == []
        await k8s.call("GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps")
    finally:
        await api.close()


async def test_pods_are_listed_as_the_json_objects_kopf_hands_out(k8s) -> None:
    await k8s.create_pod("kv-0")
    api = api_for(k8s)
    try:
        pods = await list_pods(api, NAMESPACE, "app.kubernetes.io/component=node")
    finally:
        await api.close()
    assert [(p["metadata"]["name"], p["status"]["phase"]) for p in pods] == [("kv-0", "Running")]


async def test_a_401_logs_in_again_once(k8s) -> None:
    """A rotated service-account token: the next request re-reads the credentials."""
    tokens = iter(["expired", "fresh", "never-used"])
    logins: list[str] = []

    def login() -> kopf.ConnectionInfo:
        logins.append(next(tokens))
        return kopf.ConnectionInfo(server=str(k8s.emulator.url).rstrip("/"), token=logins[-1])

    async def reject_expired(request) -> aiohttp.web.StreamResponse | None:
        if request.headers.get("Authorization") == "Bearer expired":
            return aiohttp.web.json_response({"kind": "Status", "code": 401}, status=401)
        return None

    k8s.emulator.gate = reject_expired
    api = KubeClient(login)
    try:
        assert await list_pods(api, NAMESPACE, "") == []
        assert logins == ["expired", "fresh"]
        await list_pods(api, NAMESPACE, "")
        assert logins == ["expired", "fresh"]
    finally:
        await api.close()

