"""`ringkv-operator`: the kopf adapter that runs the membership reconciler in Kubernetes.

kopf observes the node pods (`@kopf.on.event` only: no finalizers, no annotations, no
patches, so RBAC stays read-only on pods and a pod deletion never waits for the operator).
The events feed an in-memory map of pods and wake the reconcile loop; the loop itself is a
background task started by the startup handler and runs every RINGKV_RECONCILE_INTERVAL
seconds anyway (level-triggered: a missed event costs one interval, never a wrong
membership). The map is also re-listed from the API now and then, because a watch that
had to re-list after an outage reports no DELETED event for pods that vanished meanwhile.

The membership document lives in a ConfigMap (`configmaps.ConfigMapStore`); every change
of it is recorded as a Kubernetes Event on that ConfigMap. Nodes are reached on their
internal port at `<pod>.<peer service>.<namespace>.svc.<cluster domain>`; a push that
fails (the headless Service's DNS record lags behind a new pod) is repeated next round.

Configuration (environment):
  RINGKV_NAMESPACE         namespace of the node pods (required)
  RINGKV_POD_SELECTOR      labels of the node pods, `key=value,...` (required)
  RINGKV_CONFIGMAP         name of the membership ConfigMap (required)
  RINGKV_PEER_SERVICE      headless Service of the node pods (required)
  RINGKV_CLUSTER_TOKEN     token of the nodes' internal port (required)
  RINGKV_INTERNAL_PORT [9080], RINGKV_API_PORT [8080], RINGKV_RF [3], RINGKV_VNODES [64]
  RINGKV_RECONCILE_INTERVAL [10] seconds between reconcile rounds
  RINGKV_METRICS_PORT [8081] port of the operator's /metrics and /healthz (`metrics.py`);
      /healthz fails once no reconcile round has ended for 60 s + 6 intervals
  RINGKV_DOWN_GRACE [300] seconds a member may be absent before its copies are restored
      elsewhere (Kubernetes' own eviction of pods on an unreachable node waits as long)
  RINGKV_STATEFULSET       the node StatefulSet: pods at or past its replicas are being
      scaled in, so they hand their data off (leaving) instead of counting as absent
  RINGKV_CLUSTER_DOMAIN [cluster.local]
  RINGKV_ADDRESS_TEMPLATE [{pod}.{service}.{namespace}.svc.{domain}] host part of a node's
      addresses; `{pod_ip}` addresses pods by IP instead (no DNS; used by the tests)
  RINGKV_LOG_FORMAT [text|json], RINGKV_LOG_LEVEL [INFO]
Credentials: KUBECONFIG when set, else the pod's service account, else ~/.kube/config.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf
from aiohttp import web
from kubernetes.aio.client.exceptions import ApiException

from ringkv.node.logs import setup as setup_logging
from ringkv.node.membership import Document
from ringkv.node.security import TlsFiles

from .configmaps import ConfigMapStore, KubeClient, list_pods, post_event, statefulset_replicas
from .controller import Observed, Policy
from .metrics import serve as serve_metrics
from .nodes import NodeClient
from .reconciler import Reconciler

log = logging.getLogger("ringkv.operator")

DEFAULT_ADDRESS_TEMPLATE = "{pod}.{service}.{namespace}.svc.{domain}"
RESYNC_INTERVAL = 60.0  # seconds between full re-lists of the node pods
# kopf's watch requests: the API server ends each stream after WATCH_SERVER_TIMEOUT, and
# the client gives up on a silently dead connection after WATCH_CLIENT_TIMEOUT. Integers:
# kopf sends `timeoutSeconds=str(value)`, and the API server rejects "300.0".
WATCH_SERVER_TIMEOUT = 300
WATCH_CLIENT_TIMEOUT = 330


class ConfigError(ValueError):
    pass


# -- label selectors --------------------------------------------------------------------

_LABEL_KEY = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_./]*")
_LABEL_VALUE = re.compile(r"[-A-Za-z0-9_.]*")


@dataclass(frozen=True)
class LabelSelector:
    """The node pods' labels: `key=value,...`, as the chart renders RINGKV_POD_SELECTOR.

    The API server filters the watch and the lists with the text; kopf (`labels=`) and
    the re-list match the labels again, so a server (or a test double) that ignores
    `labelSelector` cannot make an unrelated pod a member.
    """

    text: str
    labels: Mapping[str, str]

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        labels: dict[str, str] = {}
        for term in text.split(","):
            key, equals, value = (part.strip() for part in term.partition("="))
            if not equals or not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
                raise ConfigError(f"the pod selector takes key=value labels separated by "
                                  f"commas; {term.strip()!r} in {text!r} is not one")
            labels[key] = value
        return cls(text.strip(), labels)

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(labels.get(key) == value for key, value in self.labels.items())


# -- pods -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pod:
    """What the operator keeps of a node pod."""

    name: str
    uid: str
    phase: str
    deleting: bool
    ip: str

    @property
    def alive(self) -> bool:
        """Running and not terminating: a pod is polled once Running, not Ready, because
        readiness itself needs membership (and added once its node answers)."""
        return self.phase == "Running" and not self.deleting

    def serving(self, expected: bool) -> bool:
        """Whether its node is there for the membership: `alive`, or terminating because
        the StatefulSet scaled in (it keeps serving while it hands its ranges off)."""
        return self.alive or (self.phase == "Running" and not expected)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Pod:
        meta = body.get("metadata") or {}
        status = body.get("status") or {}
        return cls(str(meta.get("name", "")), str(meta.get("uid") or ""),
                   str(status.get("phase") or "Unknown"), bool(meta.get("deletionTimestamp")),
                   str(status.get("podIP") or ""))


class PodCache:
    """Node pods by name, fed by watch events and corrected by full lists.

    Every change gets a sequence number. A list started at mark `m` is a snapshot taken
    after `m`; anything an event changed after `m` is at least as new, so the list only
    decides about entries not touched since: it drops pods it does not contain (deletions
    the watch missed) and refreshes the rest, without resurrecting a pod whose DELETED
    event arrived while the list was in flight.
    """

    def __init__(self) -> None:
        self._pods: dict[str, tuple[int, Pod]] = {}
        self._deleted: dict[str, int] = {}  # name -> sequence of its DELETED event
        self._seq = 0

    def pods(self) -> list[Pod]:
        return [pod for _, pod in self._pods.values()]

    def get(self, name: str) -> Pod | None:
        entry = self._pods.get(name)
        return entry[1] if entry is not None else None

    def mark(self) -> int:
        return self._seq

    def apply(self, event_type: str | None, pod: Pod) -> None:
        """One watch event (type None = kopf's initial listing)."""
        self._seq += 1
        if event_type == "DELETED":
            current = self._pods.get(pod.name)
            if current is not None and pod.uid and current[1].uid not in ("", pod.uid):
                return  # a late DELETED of a previous incarnation: its replacement stays
            self._pods.pop(pod.name, None)
            self._deleted[pod.name] = self._seq
        else:
            self._pods[pod.name] = (self._seq, pod)
            self._deleted.pop(pod.name, None)

    def resync(self, mark: int, listed: list[Pod]) -> None:
        """Reconcile with a full list that was requested at `mark`."""
        by_name = {p.name: p for p in listed}
        for name, (seq, _) in list(self._pods.items()):
            if seq <= mark and name not in by_name:
                del self._pods[name]
        for name, pod in by_name.items():
            entry = self._pods.get(name)
            if (entry is not None and entry[0] > mark) or self._deleted.get(name, 0) > mark:
                continue
            self._seq += 1
            self._pods[name] = (self._seq, pod)
        self._deleted = {n: s for n, s in self._deleted.items() if s > mark}


# -- configuration ----------------------------------------------------------------------

Addresser = Callable[[Pod], tuple[str, str]]


@dataclass(frozen=True)
class TemplateAddresses:
    """A pod's (internal `host:port`, public `http://host:port`) from a host template."""

    template: str
    service: str
    namespace: str
    domain: str
    internal_port: int
    api_port: int

    def __call__(self, pod: Pod) -> tuple[str, str]:
        ip = f"[{pod.ip}]" if ":" in pod.ip else pod.ip
        host = self.template.format(pod=pod.name, pod_ip=ip, service=self.service,
                                    namespace=self.namespace, domain=self.domain)
        return f"{host}:{self.internal_port}", f"http://{host}:{self.api_port}"


@dataclass(frozen=True)
class Config:
    """What one operator instance needs; `address` maps a pod to its node's addresses
    (`TemplateAddresses` from the environment, a plain function in tests)."""

    namespace: str
    selector: LabelSelector
    configmap: str
    cluster_token: str
    address: Addresser
    policy: Policy = field(default_factory=Policy)
    interval: float = 10.0
    resync_interval: float = RESYNC_INTERVAL
    metrics_port: int = 8081
    stale_after: float = 120.0  # seconds without a round ending that fail the liveness probe
    statefulset: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        def required(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise ConfigError(f"{name} is required")
            return value

        def number(name: str, default: str, kind: type[int] | type[float],
                   minimum: float = 1e-9) -> Any:
            raw = env.get(name, "").strip() or default
            try:
                value = kind(raw)
            except ValueError:
                raise ConfigError(f"{name} must be a number, not {raw!r}") from None
            if value < minimum:
                what = "positive" if minimum > 0 else "0 or more"
                raise ConfigError(f"{name} must be {what}, not {raw!r}")
            return value

        namespace = required("RINGKV_NAMESPACE")
        selector = LabelSelector.parse(required("RINGKV_POD_SELECTOR"))
        template = env.get("RINGKV_ADDRESS_TEMPLATE", "").strip() or DEFAULT_ADDRESS_TEMPLATE
        address = TemplateAddresses(
            template, required("RINGKV_PEER_SERVICE"), namespace,
            env.get("RINGKV_CLUSTER_DOMAIN", "").strip() or "cluster.local",
            number("RINGKV_INTERNAL_PORT", "9080", int), number("RINGKV_API_PORT", "8080", int))
        try:
            address(Pod("probe", "", "Running", False, "10.0.0.1"))
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"bad RINGKV_ADDRESS_TEMPLATE {template!r}: {exc!r}") from None
        interval = number("RINGKV_RECONCILE_INTERVAL", "10", float)
        return cls(
            namespace=namespace,
            selector=selector,
            configmap=required("RINGKV_CONFIGMAP"),
            cluster_token=required("RINGKV_CLUSTER_TOKEN"),
            address=address,
            policy=Policy(rf=number("RINGKV_RF", "3", int),
                          vnodes=number("RINGKV_VNODES", "64", int),
                          down_grace=number("RINGKV_DOWN_GRACE", "300", float, minimum=0)),
            interval=interval,
            metrics_port=number("RINGKV_METRICS_PORT", "8081", int),
            stale_after=60 + 6 * interval,
            statefulset=env.get("RINGKV_STATEFULSET", "").strip(),
        )


def discover_credentials(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """KUBECONFIG when set explicitly, else the pod's service account, else ~/.kube/config.

    kopf's own login functions: kopf watches with the result, and the official client of
    `configmaps.KubeClient` is configured from the same ConnectionInfo, so both share one
    identity.
    """
    info = None
    if not os.environ.get("KUBECONFIG"):
        info = kopf.login_with_service_account(settings=settings)
    if info is None:
        info = kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("no Kubernetes credentials: no service account token in this "
                              "pod, and neither KUBECONFIG nor ~/.kube/config")
    return info


# -- the operator -----------------------------------------------------------------------

def event_reason(old: Document | None, new: Document) -> str:
    """A short CamelCase reason for the Event of one membership step."""
    if old is None:
        return "ClusterFormed"
    before, after = set(old.names), set(new.names)
    if new.settled and not old.settled:
        return "EpochSettled"
    if before - after:
        return "NodeRemoved"
    if after - before:
        return "NodeJoined"
    changed = [(o, m) for m in new.members if (o := old.member(m.name)) is not None]
    if any(o.data_id and o.data_id != m.data_id for o, m in changed):
        return "NodeDataReplaced"
    if any(m.state == "leaving" and o.state != "leaving" for o, m in changed):
        return "NodeLeaving"
    if any(m.state == "normal" and o.state == "joining" for o, m in changed):
        return "NodePromoted"
    return "MembershipReissued"


class Operator:
    """One operator instance: its kopf registry, pod map, store and reconcile loop.

    Everything is per instance (an explicit `kopf.OperatorRegistry`, no module globals),
    so tests can run the real handlers against an emulated API server, and restart them.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.pods = PodCache()
        self.wake = asyncio.Event()
        self.stop_flag = asyncio.Event()
        self.failed = False
        self.nodes = NodeClient(config.cluster_token, caller="operator",
                                tls=TlsFiles.from_env(os.environ))
        self.kube: KubeClient | None = None
        self.store: ConfigMapStore | None = None
        self.reconciler: Reconciler | None = None
        self._settings = kopf.OperatorSettings()
        self._next_resync = 0.0
        self._resync_requested = False
        self._replicas: int | None = None  # the StatefulSet's spec.replicas, when known
        self._loop_task: asyncio.Task[None] | None = None
        self._metrics: web.AppRunner | None = None
        self._created = time.monotonic()
        self.registry = kopf.OperatorRegistry()
        kopf.on.login(registry=self.registry)(self._login)
        kopf.on.startup(registry=self.registry, backoff=5)(self._startup)
        kopf.on.cleanup(registry=self.registry)(self._cleanup)
        kopf.on.event("v1", "pods", registry=self.registry,
                      labels=dict(config.selector.labels))(self._pod_event)

    async def run(self) -> int:
        """Run kopf until SIGTERM/SIGINT or the stop flag; 1 if the reconcile loop died."""
        await kopf.operator(registry=self.registry, settings=self._settings, standalone=True,
                            namespaces=[self.config.namespace], stop_flag=self.stop_flag)
        return 1 if self.failed else 0

    # -- kopf handlers ------------------------------------------------------------------
    def _login(self, settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        return discover_credentials(settings)

    async def _startup(self, settings: kopf.OperatorSettings, **_: Any) -> None:
        """Configure kopf, list the pods once, reconcile once, start the periodic loop.

        Listing errors propagate: kopf retries the handler, and nothing is reconciled
        from a partial view of the pods (that could remove healthy members).
        """
        # Namespaced with an exact namespace: no cluster-wide namespace or CRD scanning,
        # which the chart's namespaced Role does not allow.
        settings.scanning.disabled = True
        settings.watching.server_timeout = WATCH_SERVER_TIMEOUT
        settings.watching.client_timeout = WATCH_CLIENT_TIMEOUT
        settings.watching.connect_timeout = 10
        settings.watching.label_selectors["v1", "pods"] = self.config.selector.text
        # kopf writes nothing to a pod for `on.event` handlers (no progress, no diff-base,
        # no finalizer: those exist only for change handlers, daemons and timers), and
        # with posting off it cannot post Events about pods either: our Events are about
        # the ConfigMap and posted by `configmaps.post_event`.
        settings.posting.enabled = False
        self._settings = settings
        if self._metrics is None:
            self._metrics = await serve_metrics(lambda: self.reconciler, self.config.metrics_port,
                                                self.loop_alive)
        if self.kube is None:
            self.kube = KubeClient(lambda: discover_credentials(self._settings))
        self.store = ConfigMapStore(self.kube, self.config.namespace, self.config.configmap)
        self.reconciler = Reconciler(self.store, self, self.nodes, self.config.policy,
                                     on_change=self._record, on_waiting=self._waiting)
        await self.resync()
        pods = self.pods.pods()
        log.info("operator for %s/%s (selector %r, rf=%d, every %gs, absent members kept %gs): "
                 "%d node pods, %d running", self.config.namespace, self.config.configmap,
                 self.config.selector.text, self.config.policy.rf, self.config.interval,
                 self.config.policy.down_grace, len(pods), sum(p.alive for p in pods))
        try:
            await self.reconciler.reconcile_once()
        except Exception:
            log.exception("initial reconcile failed; the loop retries")
        self._loop_task = asyncio.create_task(
            self.reconciler.run(self.config.interval, self.wake), name="ringkv reconcile loop")
        self._loop_task.add_done_callback(self._loop_ended)

    def loop_alive(self) -> tuple[bool, str]:
        """Liveness: a reconcile round ended within `stale_after` seconds (since the start,
        before the first one), and why.

        Any round counts, failed ones too: a restart cures a loop that hangs, not an API
        server or nodes that do not answer (the round fails and is retried anyway). The pod
        watch is not checked here: kopf drops a watch that went quiet after
        WATCH_CLIENT_TIMEOUT and watches again, and every round re-lists the pods at least
        every RESYNC_INTERVAL whatever the watch does (`observe`), so a stuck watch delays a
        membership change by a minute at most and never makes it wrong.
        """
        last = self.reconciler.last_round if self.reconciler is not None else None
        age = time.monotonic() - (self._created if last is None else last)
        detail = (f"no reconcile round has ended in the {age:.0f}s since the start" if last is None
                  else f"the last reconcile round ended {age:.0f}s ago")
        return age <= self.config.stale_after, f"{detail} (limit {self.config.stale_after:g}s)"

    async def _cleanup(self, **_: Any) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        self.nodes.close()
        if self.kube is not None:
            await self.kube.close()
        if self._metrics is not None:
            await self._metrics.cleanup()
        log.info("operator stopped")

    async def _pod_event(self, type: str | None, body: Mapping[str, Any], **_: Any) -> None:
        pod = Pod.from_body(body)
        before = self._observed(self.pods.get(pod.name))
        self.pods.apply(type, pod)
        after = self._observed(self.pods.get(pod.name))
        if before != after:
            log.info("pod %s: %s -> %s", pod.name, _state(before), _state(after))
            self.wake.set()
        if type is None:
            # kopf (re-)listed the pods: at startup, or after its watch lost its place. Pods
            # deleted before that list produce no event at all, so list them ourselves too.
            self._resync_requested = True
            self.wake.set()

    # -- member source for the reconciler -----------------------------------------------
    async def observe(self, members: Sequence[str]) -> list[Observed]:
        """Every node pod, and every member without one (absent; not expected back once
        the StatefulSet no longer counts its ordinal); names listed in the ConfigMap's
        `ringkv.io/remove` annotation are marked for forced removal."""
        if self._resync_requested or time.monotonic() >= self._next_resync:
            await self.resync()
        await self._refresh_replicas()
        forced = self.store.forced_removals() if self.store is not None else frozenset()
        out = [o for o in (self._observed(p, forced) for p in self.pods.pods()) if o is not None]
        seen = {o.name for o in out}
        out += [Observed(n, "", "", alive=False, expected=self._expected(n) and n not in forced,
                         forced=n in forced) for n in members if n not in seen]
        return out

    def _expected(self, name: str) -> bool:
        """Whether the StatefulSet still wants the pod of this name (True when unknown)."""
        prefix = f"{self.config.statefulset}-"
        if self._replicas is None or not name.startswith(prefix):
            return True
        ordinal = name[len(prefix):]
        return not ordinal.isdigit() or int(ordinal) < self._replicas

    async def _refresh_replicas(self) -> None:
        """The StatefulSet's `spec.replicas`; the last known value when it cannot be read
        (a scale-in is then seen late, as absences, never the other way round)."""
        if not self.config.statefulset or self.kube is None:
            return
        try:
            replicas = await statefulset_replicas(self.kube, self.config.namespace,
                                                  self.config.statefulset)
        except (ApiException, OSError) as exc:
            log.warning("cannot read StatefulSet %s: %r", self.config.statefulset, exc)
            return
        if replicas != self._replicas:
            log.info("StatefulSet %s wants %d pods", self.config.statefulset, replicas)
        self._replicas = replicas

    async def resync(self) -> None:
        """Replace what the watch may have missed with a full list of the node pods."""
        assert self.kube is not None
        self._resync_requested = False
        mark = self.pods.mark()
        try:
            items = await list_pods(self.kube, self.config.namespace, self.config.selector.text)
        except Exception:
            self._resync_requested = True  # the round fails; the next one lists again
            raise
        listed = [Pod.from_body(item) for item in items
                  if self.config.selector.matches((item.get("metadata") or {}).get("labels"))]
        before = {p.name: self._observed(p) for p in self.pods.pods()}
        self.pods.resync(mark, listed)
        after = {p.name: self._observed(p) for p in self.pods.pods()}
        for name in sorted(before.keys() | after.keys()):
            if before.get(name) != after.get(name):
                log.info("pod %s (re-list): %s -> %s", name, _state(before.get(name)),
                         _state(after.get(name)))
        self._next_resync = time.monotonic() + self.config.resync_interval

    def _observed(self, pod: Pod | None, forced: frozenset[str] = frozenset()) -> Observed | None:
        if pod is None:
            return None
        url, api_url = self.config.address(pod)
        expected = self._expected(pod.name) and pod.name not in forced
        return Observed(pod.name, url, api_url, pod.serving(expected), expected,
                        pod.name in forced)

    # -- events and failure -------------------------------------------------------------
    async def _record(self, old: Document | None, new: Document, description: str) -> None:
        """A Kubernetes Event on the ConfigMap for every membership change (best effort)."""
        assert self.kube is not None and self.store is not None
        try:
            await post_event(self.kube, self.store.reference(), event_reason(old, new),
                             description)
        except Exception as exc:
            log.warning("could not record an Event for %r: %r", description, exc)

    async def _waiting(self, reasons: list[str]) -> None:
        """A Warning Event when the membership cannot move on (best effort)."""
        assert self.kube is not None and self.store is not None
        try:
            await post_event(self.kube, self.store.reference(), "EpochWaiting",
                             "; ".join(reasons), type_="Warning")
        except Exception as exc:
            log.warning("could not record an Event for %r: %r", reasons, exc)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        """The loop only ends by cancellation; anything else stops the operator so that
        Kubernetes restarts it, rather than leaving kopf running without reconciliation."""
        if task.cancelled():
            return
        log.critical("the reconcile loop stopped (%r): stopping the operator",
                     task.exception())
        self.failed = True
        self.stop_flag.set()


def _state(o: Observed | None) -> str:
    if o is None:
        return "gone"
    return f"{'alive' if o.alive else 'not alive'} at {o.url}"


def main(argv: list[str] | None = None) -> int:
    """Console script `ringkv-operator`: one replica, standalone (no kopf peering)."""
    if argv:
        # Configured by the environment only, like the node: the chart sets every variable.
        print(__doc__, file=sys.stdout if argv in (["-h"], ["--help"]) else sys.stderr)
        return 0 if argv in (["-h"], ["--help"]) else 2
    level = os.environ.get("RINGKV_LOG_LEVEL", "INFO")
    setup_logging(os.environ.get("RINGKV_LOG_FORMAT", "text"), level)
    if level.upper() != "DEBUG":
        # kopf logs every handler call on a pod at INFO; the operator logs what changed.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        config = Config.from_env(os.environ)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    return asyncio.run(Operator(config).run())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
