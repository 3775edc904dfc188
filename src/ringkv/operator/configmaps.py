"""The Kubernetes API calls the operator makes itself: pods, the membership ConfigMap, Events.

kopf watches the pods; everything else goes through `KubeApi`, a small aiohttp client built
from the same `kopf.ConnectionInfo` that the operator's login handler gives kopf (service
account in a pod, kubeconfig outside), so both speak to one API server with one identity.
kopf's own request helpers are private (`kopf._cogs`) and tied to its internal context
variables, which are not set in a background task; a dozen lines of aiohttp are simpler
and do not break on a kopf upgrade.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf

from ringkv.node.membership import Document, InvalidDocument

log = logging.getLogger("ringkv.operator")

DOCUMENT_KEY = "membership.json"
COMPONENT = "ringkv-operator"
MAX_EVENT_MESSAGE = 1024  # the API server rejects longer Event messages


class ApiError(Exception):
    """A non-2xx answer from the API server, with the Status it carried."""

    def __init__(self, status: int, method: str, path: str, message: str) -> None:
        super().__init__(f"{method} {path}: {status} {message}")
        self.status = status


class KubeApi:
    """JSON requests against the API server with the operator's credentials.

    `login` returns fresh credentials; it is called again once after a 401, because a
    projected service-account token is rotated on disk while the process runs.
    """

    def __init__(self, login: Callable[[], kopf.ConnectionInfo], timeout: float = 10.0) -> None:
        self._login = login
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._info: kopf.ConnectionInfo | None = None
        self._session: aiohttp.ClientSession | None = None

    def _connect(self) -> tuple[kopf.ConnectionInfo, aiohttp.ClientSession]:
        if self._session is None or self._info is None:
            info = self._login()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=info.as_ssl_context()),
                headers={**info.as_http_headers(), "User-Agent": COMPONENT},
                proxy=info.proxy_url,
                trust_env=info.trust_env,
                timeout=self._timeout,
            )
            self._info = info
        return self._info, self._session

    async def request(self, method: str, path: str, body: Any = None, *,
                      params: Mapping[str, str] | None = None,
                      content_type: str = "application/json") -> Any:
        """One request; the decoded JSON answer, or ApiError for any non-2xx status."""
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if body is not None else {}
        status, reason, raw = await self._send(method, path, data, params, headers)
        if status == 401:
            log.info("API server answered 401: logging in again")
            await self.close()
            status, reason, raw = await self._send(method, path, data, params, headers)
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:  # e.g. an HTML error page from a proxy in between
            payload = None
        if status >= 400:
            message = payload.get("message", "") if isinstance(payload, dict) else ""
            raise ApiError(status, method, path, message or reason)
        return payload

    async def _send(self, method: str, path: str, data: str | None,
                    params: Mapping[str, str] | None,
                    headers: Mapping[str, str]) -> tuple[int, str, bytes]:
        info, session = self._connect()
        async with session.request(method, info.server.rstrip("/") + path, data=data,
                                   params=params, headers=headers) as resp:
            return resp.status, resp.reason or "", await resp.read()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = self._info = None


class ConfigMapStore:
    """The reconciler's Store: the document as JSON under one key of a ConfigMap.

    The chart does not render this ConfigMap, so `helm upgrade` can never reset the
    membership: it is created here on the first save and merge-patched afterwards.
    """

    def __init__(self, api: KubeApi, namespace: str, name: str) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.body: dict[str, Any] | None = None  # the ConfigMap as last read or written

    @property
    def _collection(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/configmaps"

    async def load(self) -> Document | None:
        try:
            self.body = await self.api.request("GET", f"{self._collection}/{self.name}")
        except ApiError as exc:
            if exc.status != 404:
                raise
            self.body = None
            return None
        raw = (self.body.get("data") or {}).get(DOCUMENT_KEY)
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

    async def save(self, doc: Document) -> None:
        """Write the document; optimistic: the patch names the resourceVersion last seen, so
        a concurrent writer (a replaced operator pod that has not exited yet) makes this
        save fail with 409 and the round is redone from a fresh read."""
        data = {DOCUMENT_KEY: json.dumps(doc.to_json(), indent=2)}
        patch: dict[str, Any] = {"data": data}
        version = ((self.body or {}).get("metadata") or {}).get("resourceVersion")
        if version:
            patch["metadata"] = {"resourceVersion": version}
        try:
            self.body = await self.api.request(
                "PATCH", f"{self._collection}/{self.name}", patch,
                content_type="application/merge-patch+json")
            return
        except ApiError as exc:
            if exc.status != 404:
                raise
        log.info("creating ConfigMap %s/%s", self.namespace, self.name)
        self.body = await self.api.request("POST", self._collection, {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": COMPONENT},
                "annotations": {"ringkv.io/description":
                                "ringkv cluster membership, written by the operator only"},
            },
            "data": data,
        })

    def reference(self) -> dict[str, str]:
        """The ConfigMap as an Event's involvedObject."""
        ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": self.name,
               "namespace": self.namespace}
        uid = (self.body or {}).get("metadata", {}).get("uid")
        if uid:
            ref["uid"] = uid
        return ref


async def post_event(api: KubeApi, involved: Mapping[str, str], reason: str, message: str,
                     type_: str = "Normal") -> None:
    """Record a core v1 Event (what `kubectl describe` and `kubectl get events` show).

    Named `<object>.<nanoseconds in hex>` as client-go's recorder does, so no generateName
    round trip is needed.
    """
    namespace = involved["namespace"]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if len(message) > MAX_EVENT_MESSAGE:
        message = message[: MAX_EVENT_MESSAGE - 3] + "..."
    await api.request("POST", f"/api/v1/namespaces/{namespace}/events", {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{involved['name']}.{time.time_ns():x}", "namespace": namespace},
        "involvedObject": dict(involved),
        "type": type_,
        "reason": reason,
        "message": message,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": socket.gethostname(),
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    })
