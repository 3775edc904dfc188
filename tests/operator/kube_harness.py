"""Helpers for the operator tests: an emulated API server, the operator in a thread, nodes.

kmock 0.8's `KubernetesEmulator` is close enough to an API server for kopf once a few gaps
are closed here (see `Emulator`). The operator runs in its own thread and event loop, as it
would in its own process: stopping it cancels its tasks only, never the test's or the
emulator's. Everything the test does to "the cluster" goes through HTTP, as kubectl would.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import kmock
import rbac
from harness import API_TOKEN, CLUSTER_TOKEN, NodeProcess, free_ports, http
from helmchart import env_of, find, render

from ringkv.node import peerops
from ringkv.node.membership import Document, InvalidDocument
from ringkv.node.transport import Done, InternalServer, RemoteError
from ringkv.operator.controller import Policy
from ringkv.operator.kube import Config, LabelSelector, Operator, Pod

NAMESPACE = "ringkv-test"
CONFIGMAP = "ringkv-membership"
NODE_LABELS = {"app.kubernetes.io/name": "ringkv", "app.kubernetes.io/instance": "t",
               "app.kubernetes.io/component": "node"}
SELECTOR = ",".join(f"{k}={v}" for k, v in NODE_LABELS.items())
TEST_AGENT = "ringkv-tests"

RESOURCES: dict[str, dict[str, Any]] = {
    # kopf's startup waits for these two to be discoverable, even with scanning disabled.
    "v1/namespaces": {"kind": "Namespace", "namespaced": False},
    "apiextensions.k8s.io/v1/customresourcedefinitions": {
        "kind": "CustomResourceDefinition", "namespaced": False},
    "v1/pods": {"kind": "Pod", "namespaced": True, "subresources": {"status"}},
    "v1/configmaps": {"kind": "ConfigMap", "namespaced": True},
    "v1/events": {"kind": "Event", "namespaced": True},
    "apps/v1/statefulsets": {"kind": "StatefulSet", "namespaced": True},
}
VERBS = {"get", "list", "watch", "create", "patch", "delete"}
OPERATOR_USER = f"system:serviceaccount:{NAMESPACE}:ringkv-operator"


def chart_role() -> rbac.Role:
    """The operator's Role as the chart renders it for a release in NAMESPACE."""
    docs = render(release="ringkv", namespace=NAMESPACE)
    operator = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(operator)["RINGKV_CONFIGMAP"]["value"] == CONFIGMAP
    return rbac.Role.from_manifest(find(docs, "Role"))


async def eventually(condition: Callable[[], Any], timeout: float = 60.0, what: str = "condition",
                     interval: float = 0.1) -> Any:
    """Poll a sync or async condition until it is truthy; never a fixed sleep."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
        except AssertionError:
            raise
        except Exception as exc:
            last = exc
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")


# -- the emulator ---------------------------------------------------------------------------

@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator with the API server behaviour kopf and the operator rely on.

    Fixed here (kmock 0.8): objects get `metadata.namespace`, `uid`, `creationTimestamp` on
    create; every change gets a fresh `resourceVersion`; a list reports the version it was
    taken at; a watch honours `?resourceVersion=` and starts exactly where its snapshot
    ended (kmock's own watch replays all objects and can miss changes made meanwhile); pods
    are deleted gracefully; with a `role`, a request that carries a token (the operator's
    and kopf's, never the test's own) is authorized by it and refused with 403 as the API
    server would, and refusals are kept in `forbidden`. Avoided rather than fixed: listing
    namespaces (kmock answers 500; the operator is namespaced with scanning off), PUT (the
    operator only PATCHes), JSON-patch `test` failures (the operator sends merge patches).
    Not emulated, on purpose: label selectors, so the operator's client-side filtering is
    what the tests see work.
    """

    _rv: int = 0
    _history: list[tuple[int, Any, dict[str, Any]]] = attrs.field(factory=list)
    # A test's own say before any request is served: a response, or None to go on.
    gate: Callable[[kmock.Request], Awaitable[aiohttp.web.StreamResponse | None]] | None = None
    role: rbac.Role | None = None
    authorized: list[rbac.Attributes] = attrs.field(factory=list)
    forbidden: list[str] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._buses = _StampingBuses(self._stamp)

    def _stamp(self, resource: Any, event: dict[str, Any]) -> None:
        """Runs under the emulator's lock for every change (see `KubernetesEmulator._handle`)."""
        self._rv += 1
        event["object"].setdefault("metadata", {})["resourceVersion"] = str(self._rv)
        self._history.append((self._rv, resource, event))

    async def _handle(self, request: kmock.Request) -> Any:
        if self.gate is not None and (response := await self.gate(request)) is not None:
            return response
        if (refusal := self._authorize(request)) is not None:
            return refusal
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if request.namespace:
                meta.setdefault("namespace", request.namespace)
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
        is_pod = (request.name is not None and request.resource is not None
                  and request.resource.plural == "pods")
        if is_pod and request.action == kmock.action.DELETE:
            return await self._delete_pod(request)
        response = await super()._handle(request)
        if is_pod and request.action == kmock.action.UPDATE:
            await self._finish_deletion(request)
        return response

    def _authorize(self, request: kmock.Request) -> aiohttp.web.StreamResponse | None:
        """403 for a request of the operator's that the Role does not grant."""
        if self.role is None or not request.headers.get("Authorization"):
            return None
        attributes = rbac.attributes(request.method, request.url.path, request.params)
        if attributes is None:
            if rbac.discovery(request.url.path):
                return None
            self.forbidden.append(f"{request.method} {request.url.path} (not a discovery URL)")
            return aiohttp.web.json_response({"kind": "Status", "code": 403}, status=403)
        if self.role.granting(attributes):
            self.authorized.append(attributes)
            return None
        self.forbidden.append(str(attributes))
        return aiohttp.web.json_response(rbac.forbidden_status(attributes, OPERATOR_USER),
                                         status=403)

    async def _delete_pod(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """Graceful pod deletion as the API server and the kubelet do it: the first DELETE
        marks the pod terminating; a DELETE with gracePeriodSeconds=0 (the kubelet, once
        the containers stopped) removes it. kmock would remove it at once, or never."""
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self.objects or self.objects[key].deleted:
                raise kmock.KubernetesObjectNotFoundError()
            obj = self.objects[key]
            meta = obj.get("metadata", {})
            now = request.params.get("gracePeriodSeconds") == "0"
            if meta.get("finalizers") or not (now or meta.get("deletionTimestamp")):
                # Terminating; with finalizers it stays so, even after a delete "now",
                # until they are removed (`_finish_deletion`).
                obj.patch({"metadata": {"deletionTimestamp": meta.get("deletionTimestamp")
                                        or _now(), "deletionGracePeriodSeconds":
                                        0 if now else meta.get("deletionGracePeriodSeconds", 30)}})
                event = {"type": "MODIFIED", "object": obj.raw}
            else:
                event = {"type": "DELETED", "object": obj.raw}
                obj.delete()
            await self._buses[request.resource].put(event)
        return aiohttp.web.json_response(event["object"])

    async def _finish_deletion(self, request: kmock.Request) -> None:
        """A pod whose deletion was confirmed (grace 0) goes once its last finalizer does."""
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self.objects or self.objects[key].deleted:
                return
            obj = self.objects[key]
            meta = obj.get("metadata", {})
            if meta.get("deletionGracePeriodSeconds") == 0 and not meta.get("finalizers"):
                event = {"type": "DELETED", "object": obj.raw}
                obj.delete()
                await self._buses[request.resource].put(event)

    def _visible(self, request: kmock.Request, resource: Any, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata", {})
        return (resource == request.resource
                and request.namespace in (None, meta.get("namespace"))
                and request.name in (None, meta.get("name")))

    def _current(self, request: kmock.Request) -> list[dict[str, Any]]:
        return [obj.raw for (resource, _, _), obj in self.objects.items()
                if not obj.deleted and self._visible(request, resource, obj.raw)]

    async def _serve_list(self, request: kmock.Request) -> Any:
        async with self._lock:
            return {"apiVersion": "v1", "kind": "List", "items": self._current(request),
                    "metadata": {"resourceVersion": str(self._rv)}}

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        yield b""  # send the headers now, as a real watch does
        since = request.params.get("resourceVersion", "")
        bus = self._buses[request.resource]
        async with self._lock:  # no change can land between the snapshot and the mark
            mark = await bus.mark()
            if since.isdigit() and int(since) > 0:
                backlog = [event for rv, resource, event in self._history
                           if rv > int(since) and self._visible(request, resource, event["object"])]
            else:
                backlog = [{"type": "ADDED", "object": obj} for obj in self._current(request)]
        try:
            for event in backlog:
                yield event
            async for event in mark:
                if self._visible(request, request.resource, event["object"]):
                    yield event
        finally:
            await bus.unmark(mark)


@attrs.mutable(weakref_slot=True)
class _StampingBus(kmock.Bus[Any]):
    """An event bus whose `put` stamps a resourceVersion on each event first."""

    stamp: Callable[[dict[str, Any]], None] = attrs.field(kw_only=True)

    async def put(self, *items: Any) -> None:
        for item in items:
            self.stamp(item)
        await super().put(*items)


class _StampingBuses(collections.defaultdict[Any, kmock.Bus[Any]]):
    """One stamping bus per resource (kmock keeps a bus per resource)."""

    def __init__(self, stamp: Callable[[Any, dict[str, Any]], None]) -> None:
        super().__init__()
        self._stamp = stamp

    def __missing__(self, resource: Any) -> kmock.Bus[Any]:
        bus = self[resource] = _StampingBus(stamp=functools.partial(self._stamp, resource))
        return bus


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Cluster:
    """The emulated API server, used the way kubectl and the kubelet would use it."""

    emulator: Emulator
    session: aiohttp.ClientSession
    kubeconfig: Path

    @property
    def pods_url(self) -> str:
        return f"/api/v1/namespaces/{NAMESPACE}/pods"

    @property
    def configmap_url(self) -> str:
        return f"/api/v1/namespaces/{NAMESPACE}/configmaps/{CONFIGMAP}"

    async def call(self, method: str, path: str, body: Any = None,
                   content_type: str = "application/merge-patch+json") -> Any:
        headers = {"Content-Type": content_type if method == "PATCH" else "application/json"}
        async with self.session.request(method, path, data=None if body is None else json.dumps(body),
                                        headers=headers) as resp:
            payload = await resp.json(content_type=None)
            assert resp.status < 300, (method, path, resp.status, payload)
            return payload

    async def scale(self, replicas: int, name: str = "ringkv") -> None:
        """The node StatefulSet wanting `replicas` pods (created on first use), as `helm
        upgrade --set replicaCount=N` leaves it; its pods are created by the test."""
        url = f"/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets"
        async with self.session.get(f"{url}/{name}") as resp:
            exists = resp.status == 200
        if exists:
            await self.call("PATCH", f"{url}/{name}", {"spec": {"replicas": replicas}})
        else:
            await self.call("POST", url, {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                          "metadata": {"name": name},
                                          "spec": {"replicas": replicas}})

    async def create_pod(self, name: str, phase: str = "Running", ip: str = "127.0.0.1",
                         labels: dict[str, str] | None = None,
                         finalizers: list[str] | None = None) -> None:
        """A pod as the StatefulSet creates it, then as the kubelet reports it."""
        meta: dict[str, Any] = {"name": name, "labels": NODE_LABELS if labels is None else labels}
        if finalizers:
            meta["finalizers"] = finalizers
        await self.call("POST", self.pods_url, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": meta,
            "spec": {"containers": [{"name": "node", "image": "ringkv"}]},
            "status": {"phase": "Pending"},
        })
        if phase != "Pending":
            await self.set_phase(name, phase, ip)

    async def set_phase(self, name: str, phase: str, ip: str = "127.0.0.1") -> None:
        await self.call("PATCH", f"{self.pods_url}/{name}/status",
                        {"status": {"phase": phase, "podIP": ip}})

    async def terminate_pod(self, name: str) -> None:
        """`kubectl delete pod`: the pod is terminating (deletionTimestamp) until removed."""
        await self.call("DELETE", f"{self.pods_url}/{name}")

    async def remove_pod(self, name: str) -> None:
        """The kubelet's final delete once the containers stopped (or `--grace-period=0`)."""
        await self.call("DELETE", f"{self.pods_url}/{name}?gracePeriodSeconds=0")

    async def delete_pod(self, name: str) -> None:
        await self.terminate_pod(name)
        await self.remove_pod(name)

    async def drop_finalizers(self, name: str) -> None:
        """What the controller owning a finalizer does when it is done with the pod."""
        await self.call("PATCH", f"{self.pods_url}/{name}", {"metadata": {"finalizers": None}})

    async def pod(self, name: str) -> dict[str, Any] | None:
        async with self.session.get(f"{self.pods_url}/{name}") as resp:
            return None if resp.status == 404 else await resp.json()

    async def edit_document(self, data: str) -> None:
        """`kubectl edit configmap`: someone replaces the stored document by hand."""
        await self.call("PATCH", self.configmap_url, {"data": {"membership.json": data}})

    def operator_documents(self) -> list[Document]:
        """Every document the operator tried to store (created or patched), oldest first."""
        out = []
        for r in self.emulator:
            if (r.method in ("POST", "PATCH") and r.resource is not None
                    and r.resource.plural == "configmaps"
                    and r.headers.get("User-Agent", "").startswith("ringkv-operator")
                    and "membership.json" in r.data["data"]):  # not the status beside it
                out.append(Document.from_json(json.loads(r.data["data"]["membership.json"])))
        return out

    def operator_rounds(self) -> int:
        """Reconcile rounds so far (each one starts by reading the ConfigMap)."""
        return sum(r.method == "GET" and r.url.path == self.configmap_url
                   and r.headers.get("User-Agent", "").startswith("ringkv-operator")
                   for r in self.emulator)

    async def document(self) -> Document | None:
        async with self.session.get(self.configmap_url) as resp:
            if resp.status == 404:
                return None
            body = await resp.json()
        raw = (body.get("data") or {}).get("membership.json")
        return None if raw is None else Document.from_json(json.loads(raw))

    async def events(self) -> list[dict[str, Any]]:
        listing = await self.call("GET", f"/api/v1/namespaces/{NAMESPACE}/events")
        return listing["items"]

    def unused_grants(self) -> set[tuple[str, str, str, str]]:
        """Grants of the chart's Role that no request of the operator has needed so far."""
        role = self.emulator.role
        assert role is not None
        return role.grants() - rbac.used(role, self.emulator.authorized)

    def kopf_watches(self) -> int:
        """How many watches on the node pods kopf has opened so far (after listing them)."""
        return sum(r.url.path == self.pods_url and r.params.get("watch") == "true"
                   and r.headers.get("User-Agent", "").startswith("kopf/") for r in self.emulator)

    def foreign_pod_writes(self) -> list[str]:
        """Every write to a pod not made by the test itself (kopf's or the operator's)."""
        return [f"{r.method} {r.url.path}" for r in self.emulator
                if r.resource is not None and r.resource.plural == "pods"
                and r.method not in ("GET", "HEAD") and r.headers.get("User-Agent") != TEST_AGENT]

    def pod_versions_with_operator_marks(self) -> list[dict[str, Any]]:
        """Any version of any pod that carried a finalizer or a kopf annotation."""
        out = []
        for (resource, _, _), obj in self.emulator.objects.items():
            if resource.plural != "pods":
                continue
            for version in obj.history:
                meta = {} if version is None else dict(version.get("metadata", {}))
                annotations = meta.get("annotations") or {}
                if meta.get("finalizers") or any("kopf" in k for k in annotations):
                    out.append(meta)
        return out


# -- the operator ---------------------------------------------------------------------------

class OperatorThread:
    """`Operator.run()` (kopf.operator and all) in its own thread and event loop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.exit_code: int | None = None
        self.error: BaseException | None = None
        self._operator: Operator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="ringkv-operator", daemon=True)

    def _main(self) -> None:
        async def body() -> int:
            self._loop = asyncio.get_running_loop()
            self._operator = Operator(self.config)
            self._started.set()
            return await self._operator.run()

        try:
            self.exit_code = asyncio.run(body())
        except BaseException as exc:
            self.error = exc
        finally:
            self._started.set()

    def start(self) -> OperatorThread:
        self._thread.start()
        self._started.wait(30)
        return self

    async def stop(self, timeout: float = 60) -> None:
        if self._thread.is_alive() and self._loop is not None and self._operator is not None:
            self._loop.call_soon_threadsafe(self._operator.stop_flag.set)
        await asyncio.to_thread(self._thread.join, timeout)
        assert not self._thread.is_alive(), "the operator did not stop"
        assert self.error is None, f"the operator failed: {self.error!r}"
        assert self.exit_code == 0, f"the operator exited with {self.exit_code}"


def make_config(addresses: dict[str, tuple[str, str]], interval: float = 0.5,
                resync_interval: float = 60.0, rf: int = 3, down_grace: float = 0.0,
                statefulset: str = "ringkv") -> Config:
    """The operator's configuration, with nodes on 127.0.0.1 instead of the peer Service.

    A pod with no node process gets a closed port: pushes to it fail, as to a dead pod.
    """
    closed, metrics_port = free_ports(2)

    def address(pod: Pod) -> tuple[str, str]:
        return addresses.get(pod.name, (f"127.0.0.1:{closed}", f"http://127.0.0.1:{closed}"))

    return Config(namespace=NAMESPACE, selector=LabelSelector.parse(SELECTOR), configmap=CONFIGMAP,
                  cluster_token=CLUSTER_TOKEN, address=address,
                  policy=Policy(rf=rf, down_grace=down_grace), interval=interval,
                  resync_interval=resync_interval, statefulset=statefulset,
                  metrics_port=metrics_port)


# -- nodes that answer the controller but hold no data ----------------------------------------

@dataclass
class StatusNode:
    """A node as the operator sees it, without data: a real `InternalServer` on 127.0.0.1,
    authenticated with the cluster token, answering the peer protocol's `status`,
    `membership` and `cleanup` calls as `NodeService` does (its name and data id, the epoch
    it holds; a pushed document adopted only when newer; a request at an older epoch
    answered "stale" with its document). The operator admits a node only once it answers
    in its own name, so a pod that should join needs one of these (or a real node).

    It holds no ranges and pulls nothing: it reports `caught_up` only when a test says so,
    so a joining member stays joining while the test looks at it. Replica operations are
    refused.
    """

    name: str
    caught_up: bool = False
    data_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    port: int = 0
    doc: Document | None = None
    adopted: list[int] = field(default_factory=list)
    _server: InternalServer | None = field(default=None, init=False, repr=False)

    @property
    def epoch(self) -> int:
        return self.doc.epoch if self.doc is not None else 0

    @property
    def address(self) -> tuple[str, str]:
        """(peer address, API URL) for `make_config`; nothing listens on the API URL."""
        return f"127.0.0.1:{self.port}", f"http://127.0.0.1:{self.port}"

    async def start(self) -> StatusNode:
        if not self.port:
            (self.port,) = free_ports(1)
        self._server = InternalServer(
            self.name, CLUSTER_TOKEN, self._batch,
            {peerops.STATUS: self._status, peerops.MEMBERSHIP: self._membership,
             peerops.CLEANUP: self._cleanup},
            epoch=lambda: self.epoch,
            document=lambda: self.doc.to_json() if self.doc is not None else None)
        await self._server.start("127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None

    def _batch(self, _ops: list[Any], reply: Done) -> None:
        reply(None, RemoteError("rebuilding", f"{self.name} holds no data"))

    async def _status(self, _args: Any) -> dict[str, Any]:
        member = self.doc.member(self.name) if self.doc is not None else None
        return {"node": self.name, "epoch": self.epoch, "ready": member is not None,
                "caught_up": self.caught_up, "data_id": self.data_id,
                "trusted": False, "waiting": [],
                "settled_epoch_acked": self.epoch if self.doc is not None and self.doc.settled
                else 0,
                "records": 0, "tombstones": 0, "hints_pending": 0,
                "rebuilding": member is not None, "disk_full": False}

    async def _membership(self, args: Any) -> dict[str, Any]:
        try:
            doc = Document.from_json(args)
        except InvalidDocument as exc:
            raise RemoteError("bad_request", str(exc)) from exc
        adopted = doc.epoch > self.epoch
        if adopted:
            self.doc = doc
            self.adopted.append(doc.epoch)
        return {"adopted": adopted, "epoch": self.epoch}

    async def _cleanup(self, _epoch: Any) -> int:
        return 0


# -- node processes ---------------------------------------------------------------------------

@dataclass
class Nodes:
    """Real `ringkv-node` processes on 127.0.0.1, waiting for the operator's membership."""

    root: Path
    procs: dict[str, NodeProcess] = field(default_factory=dict)

    def add(self, name: str, **extra_env: str) -> NodeProcess:
        port, internal = free_ports(2)
        data_dir = self.root / name
        data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "RINGKV_NODE_NAME": name, "RINGKV_DATA_DIR": str(data_dir),
               "RINGKV_HOST": "127.0.0.1", "RINGKV_PORT": str(port),
               "RINGKV_INTERNAL_HOST": "127.0.0.1", "RINGKV_INTERNAL_PORT": str(internal),
               "RINGKV_API_TOKEN": API_TOKEN, "RINGKV_CLUSTER_TOKEN": CLUSTER_TOKEN,
               "RINGKV_REPLICA_TIMEOUT": "1.0", **extra_env}
        env.pop("RINGKV_MEMBERSHIP_FILE", None)
        node = NodeProcess(name, port, internal, data_dir, env, self.root / f"{name}.log")
        self.procs[name] = node
        return node

    async def start(self, *names: str) -> None:
        for name in names:
            self.procs[name].start()
        for name in names:
            node = self.procs[name]
            await eventually(functools.partial(self._up, node), 60, f"{name} to answer /healthz")

    @staticmethod
    async def _up(node: NodeProcess) -> bool:
        if not node.alive:
            raise AssertionError(f"{node.name} exited:\n{node.log_tail()}")
        try:
            r = await asyncio.to_thread(http, "GET", node.url + "/healthz", None, None, None, 2)
        except OSError:
            return False
        return r.status == 200

    def addresses(self) -> dict[str, tuple[str, str]]:
        return {n: (f"127.0.0.1:{p.internal_port}", p.url) for n, p in self.procs.items()}

    async def kill(self, name: str) -> None:
        await asyncio.to_thread(self.procs[name].kill)

    def stop_all(self) -> None:
        for node in self.procs.values():
            node.stop()


async def node_get(node: NodeProcess, path: str) -> Any:
    r = await asyncio.to_thread(http, "GET", node.url + path, None, None, API_TOKEN, 10)
    assert r.status == 200, (path, r.status, r.body[:300])
    return r.json()



async def settled(k8s: Cluster, nodes: Nodes, members: set[str], above: int = 0,
                  timeout: float = 90) -> Document:
    """The stored document once it is settled with exactly `members`, all normal, and every
    member node has adopted it."""
    async def check() -> Document | None:
        doc = await k8s.document()
        if (doc is None or not doc.settled or doc.epoch <= above or set(doc.names) != members
                or any(m.state != "normal" for m in doc.members)):
            return None
        for name in members:
            r = await asyncio.to_thread(http, "GET", nodes.procs[name].url + "/v1/cluster", None,
                                        None, API_TOKEN, 10)
            # 503 not_ready: saved, but the push has not reached the node yet.
            if r.status != 200 or r.json()["epoch"] != doc.epoch:
                return None
        return doc

    return await eventually(check, timeout, f"a settled epoch > {above} with {sorted(members)}")


async def put(node: NodeProcess, key: str, value: bytes) -> str:
    r = await asyncio.to_thread(http, "PUT", f"{node.url}/v1/kv/{key}", value)
    assert r.status == 200, (key, r.status, r.body)
    return r.json()["version"]


async def replicas(node: NodeProcess, key: str) -> list[dict[str, Any]]:
    """The key's replicas in the target ring, as `node` sees them."""
    return [r for r in (await node_get(node, f"/v1/replicas/{key}"))["replicas"] if r["in_target"]]


async def fully_replicated(node: NodeProcess, written: dict[str, str], rf: int = 3,
                           exclude: frozenset[str] = frozenset()) -> bool:
    """Every written key has exactly `rf` live copies at its newest version, none on
    `exclude`."""
    for key, version in written.items():
        reps = await replicas(node, key)
        if (len(reps) != rf or exclude & {r["node"] for r in reps}
                or not all(r["status"] == "ok" and r["live"] and r["version"] == version
                           for r in reps)):
            return False
    return True


STEADY = frozenset({"kv-0", "kv-1", "kv-2"})  # live and ready throughout the fault tests


def assert_never_dropped(k8s: Cluster, names: frozenset[str] = STEADY) -> None:
    """Every document the operator wrote keeps `names` as normal members of both rings."""
    docs = k8s.operator_documents()
    assert docs
    for doc in docs:
        for name in names:
            m = doc.member(name)
            assert m is not None and m.state == "normal" and name in doc.base_names(), (
                f"epoch {doc.epoch} dropped or demoted {name}: {doc}")
