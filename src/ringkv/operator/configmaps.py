"""The Kubernetes API calls the operator makes itself: the pod re-list, the membership
ConfigMap, Events.

kopf watches the pods; everything else goes through the official client's asyncio API
(`kubernetes.aio`, on aiohttp like the rest of the operator, so no call blocks the event
loop or needs a thread), configured from the same `kopf.ConnectionInfo` that the
operator's login handler gives kopf (service account in a pod, kubeconfig outside): both
speak to one API server with one identity.
"""

from __future__ import annotations

import json
import logging
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import kopf
from kubernetes.aio.client import (
    ApiClient,
    AppsV1Api,
    Configuration,
    CoreV1Api,
    CoreV1Event,
    V1ConfigMap,
    V1EventSource,
    V1ObjectMeta,
    V1ObjectReference,
)
from kubernetes.aio.client.exceptions import ApiException

from ringkv.node.membership import Document, InvalidDocument

log = logging.getLogger("ringkv.operator")

DOCUMENT_KEY = "membership.json"
STATUS_KEY = "status.json"  # what the operator observes beside the document (not epoch'd)
REMOVE_ANNOTATION = "ringkv.io/remove"  # members a person asks to remove, comma-separated
COMPONENT = "ringkv-operator"
MAX_EVENT_MESSAGE = 1024  # the API server rejects longer Event messages
REQUEST_TIMEOUT = 10.0  # seconds; the client's own default is five minutes
MERGE_PATCH = "application/merge-patch+json"

T = TypeVar("T")

__all__ = ["ApiException", "ConfigMapStore", "KubeClient", "list_pods", "post_event"]


def configuration(info: kopf.ConnectionInfo, files: Path) -> Configuration:
    """The client's connection settings from kopf's credentials (the Authorization header
    is kopf's own, see `KubeClient`). Client certificates given as data are written under
    `files`: the client, like `ssl`, loads them only from files."""
    def as_file(name: str, data: str | bytes | None, path: Any) -> str | None:
        if data is None:
            return None if path is None else str(path)
        target = files / name
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        target.chmod(0o600)
        return str(target)

    return Configuration(
        host=info.server.rstrip("/"),
        ssl_ca_cert=None if info.ca_path is None else str(info.ca_path),
        ca_cert_data=info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data,
        cert_file=as_file("client.crt", info.certificate_data, info.certificate_path),
        key_file=as_file("client.key", info.private_key_data, info.private_key_path),
        verify_ssl=not info.insecure,
        proxy=info.proxy_url,
        client_session_kwargs={"trust_env": info.trust_env},
    )


class KubeClient:
    """The official client on the operator's credentials.

    `login` returns fresh credentials; it is called again once after a 401, because a
    projected service-account token is rotated on disk while the process runs.
    """

    def __init__(self, login: Callable[[], kopf.ConnectionInfo]) -> None:
        self._login = login
        self._client: ApiClient | None = None
        self._files = tempfile.TemporaryDirectory(prefix="ringkv-operator-")

    async def call(self, request: Callable[[CoreV1Api], Awaitable[T]]) -> T:
        """`request(core_v1_api)`, logging in again and retrying once on a 401."""
        return await self._logged_in(lambda client: request(CoreV1Api(client)))

    async def call_apps(self, request: Callable[[AppsV1Api], Awaitable[T]]) -> T:
        """`request(apps_v1_api)`, as `call`."""
        return await self._logged_in(lambda client: request(AppsV1Api(client)))

    async def _logged_in(self, request: Callable[[ApiClient], Awaitable[T]]) -> T:
        try:
            return await request(self._api_client())
        except ApiException as exc:
            if exc.status != 401:
                raise
        log.info("API server answered 401: logging in again")
        await self.close()
        return await request(self._api_client())

    def _api_client(self) -> ApiClient:
        if self._client is None:
            info = self._login()
            self._client = ApiClient(configuration(info, Path(self._files.name)))
            self._client.user_agent = COMPONENT
            # kopf's own header for the credentials (a token with its scheme, or basic auth),
            # so both clients authenticate exactly alike.
            for name, value in info.as_http_headers().items():
                self._client.set_default_header(name, value)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        self._client = None


async def _json(response: Any) -> dict[str, Any]:
    """A raw answer (`*_without_preload_content`) as JSON; ApiException for an error."""
    body = await response.read()
    if response.status >= 400:
        raise ApiException(status=response.status, reason=response.reason,
                           body=body.decode("utf-8", "replace"))
    return dict(json.loads(body))


async def list_pods(kube: KubeClient, namespace: str, selector: str) -> list[dict[str, Any]]:
    """The pods as JSON objects, the shape kopf hands its event handlers, so one parser
    reads both (the raw answer: no round trip through the client's models)."""
    async def request(core: CoreV1Api) -> list[dict[str, Any]]:
        return list((await _json(await core.list_namespaced_pod_without_preload_content(
            namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT))
        ).get("items") or [])

    return await kube.call(request)


async def statefulset_replicas(kube: KubeClient, namespace: str, name: str) -> int:
    """The StatefulSet's `spec.replicas` (how many node pods it wants), read as JSON: the
    client's model would insist on parts of the object the operator never looks at."""
    async def request(apps: AppsV1Api) -> int:
        sts = await _json(await apps.read_namespaced_stateful_set_without_preload_content(
            name, namespace, _request_timeout=REQUEST_TIMEOUT))
        return int((sts.get("spec") or {}).get("replicas", 1))

    return await kube.call_apps(request)


class ConfigMapStore:
    """The reconciler's Store: the document as JSON under one key of a ConfigMap.

    The chart does not render this ConfigMap, so `helm upgrade` can never reset the
    membership: it is created here on the first save and merge-patched afterwards.
    """

    def __init__(self, kube: KubeClient, namespace: str, name: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.current: V1ConfigMap | None = None  # the ConfigMap as last read or written

    async def load(self) -> Document | None:
        try:
            self.current = await self.kube.call(lambda core: core.read_namespaced_config_map(
                self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT))
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.current = None
            return None
        raw = (self.current.data or {}).get(DOCUMENT_KEY)
        if raw is None:
            return None
        try:
            return Document.from_json(json.loads(raw))
        except (ValueError, InvalidDocument) as exc:
            # Treated like a lost ConfigMap: the next document is issued above every epoch
            # the nodes hold, so overwriting it never moves a node backwards.
            log.error("ConfigMap %s/%s holds no valid %s (%s): it will be rewritten",
                      self.namespace, self.name, DOCUMENT_KEY, exc)
            return None

    def forced_removals(self) -> frozenset[str]:
        """The members named in the `ringkv.io/remove` annotation (as last read): dropped
        whatever it costs, as Cassandra's `nodetool removenode` (docs/KUBERNETES.md)."""
        annotations = (meta.annotations if (meta := self._metadata()) else None) or {}
        raw = str(annotations.get(REMOVE_ANNOTATION) or "")
        return frozenset(n.strip() for n in raw.split(",") if n.strip())

    async def save_status(self, status: dict[str, Any]) -> None:
        """Record who is absent since when and why the membership waits, under its own
        key (a merge patch without resourceVersion: it never conflicts with `save`)."""
        if self.current is None:
            return  # nothing to attach it to until the document exists
        patch = {"data": {STATUS_KEY: json.dumps(status, indent=2)}}
        self.current = await self.kube.call(lambda core: core.patch_namespaced_config_map(
            self.name, self.namespace, patch, _content_type=MERGE_PATCH,
            _request_timeout=REQUEST_TIMEOUT))

    async def save(self, doc: Document) -> None:
        """Write the document; optimistic: the patch names the resourceVersion last seen, so
        a concurrent writer (a replaced operator pod that has not exited yet) makes this
        save fail with 409 and the round is redone from a fresh read."""
        data = {DOCUMENT_KEY: json.dumps(doc.to_json(), indent=2)}
        patch: dict[str, Any] = {"data": data}
        version = meta.resource_version if (meta := self._metadata()) else None
        if version:
            patch["metadata"] = {"resourceVersion": version}
        try:
            self.current = await self.kube.call(lambda core: core.patch_namespaced_config_map(
                self.name, self.namespace, patch, _content_type=MERGE_PATCH,
                _request_timeout=REQUEST_TIMEOUT))
            return
        except ApiException as exc:
            if exc.status != 404:
                raise
        log.info("creating ConfigMap %s/%s", self.namespace, self.name)
        body = V1ConfigMap(
            api_version="v1", kind="ConfigMap", data=data,
            metadata=V1ObjectMeta(
                name=self.name, namespace=self.namespace,
                labels={"app.kubernetes.io/managed-by": COMPONENT},
                annotations={"ringkv.io/description":
                             "ringkv cluster membership, written by the operator only"}))
        self.current = await self.kube.call(lambda core: core.create_namespaced_config_map(
            self.namespace, body, _request_timeout=REQUEST_TIMEOUT))

    def _metadata(self) -> V1ObjectMeta | None:
        """The ConfigMap's metadata as last read or written (None before either)."""
        return self.current.metadata if self.current is not None else None

    def reference(self) -> V1ObjectReference:
        """The ConfigMap as an Event's involvedObject."""
        return V1ObjectReference(api_version="v1", kind="ConfigMap", name=self.name,
                                 namespace=self.namespace,
                                 uid=meta.uid if (meta := self._metadata()) else None)


async def post_event(kube: KubeClient, involved: V1ObjectReference, reason: str, message: str,
                     type_: str = "Normal") -> None:
    """Record a core v1 Event (what `kubectl describe` and `kubectl get events` show).

    Named `<object>.<nanoseconds in hex>` as client-go's recorder does, so no generateName
    round trip is needed.
    """
    now = datetime.now(UTC).replace(microsecond=0)
    if len(message) > MAX_EVENT_MESSAGE:
        message = message[: MAX_EVENT_MESSAGE - 3] + "..."
    namespace = involved.namespace or ""
    event = CoreV1Event(
        metadata=V1ObjectMeta(name=f"{involved.name}.{time.time_ns():x}", namespace=namespace),
        involved_object=involved, type=type_, reason=reason, message=message,
        source=V1EventSource(component=COMPONENT), reporting_component=COMPONENT,
        reporting_instance=socket.gethostname(), first_timestamp=now, last_timestamp=now,
        count=1)
    await kube.call(lambda core: core.create_namespaced_event(
        namespace, event, _request_timeout=REQUEST_TIMEOUT))

