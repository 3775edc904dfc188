"""The kopf adapter's own logic, without kopf running: selectors, config, the pod map."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import kopf
import pytest

from ringkv.node.membership import Document, Member
from ringkv.operator.controller import Policy
from ringkv.operator.kube import (
    Config,
    ConfigError,
    LabelSelector,
    Operator,
    Pod,
    PodCache,
    discover_credentials,
    event_reason,
)

ENV = {
    "RINGKV_NAMESPACE": "db",
    "RINGKV_POD_SELECTOR": "app.kubernetes.io/name=ringkv,app.kubernetes.io/component=node",
    "RINGKV_CONFIGMAP": "kv-membership",
    "RINGKV_PEER_SERVICE": "kv-peers",
    "RINGKV_CLUSTER_TOKEN": "secret",
}


def pod(name: str, phase: str = "Running", uid: str = "", deleting: bool = False,
        ip: str = "10.0.0.7") -> Pod:
    return Pod(name, uid or f"uid-{name}", phase, deleting, ip)


# -- label selectors --------------------------------------------------------------------

@pytest.mark.parametrize(("selector", "labels", "expected"), [
    ("app=kv,tier=node", {"app": "kv", "tier": "node", "x": "y"}, True),
    ("app=kv,tier=node", {"app": "kv"}, False),
    ("app=kv,tier=node", {"app": "kv", "tier": "edge"}, False),
    (" app = kv , tier=node ", {"app": "kv", "tier": "node"}, True),
    ("app.kubernetes.io/name=ringkv", {"app.kubernetes.io/name": "ringkv"}, True),
    ("app=", {"app": ""}, True),
    ("app=", {}, False),
])
def test_label_selector_matches_pods_with_its_labels(selector: str, labels: dict[str, str],
                                                    expected: bool) -> None:
    parsed = LabelSelector.parse(selector)
    assert parsed.matches(labels) is expected
    assert parsed.text == selector.strip()  # what the API server filters with


@pytest.mark.parametrize("bad", ["a=b,", "a b", "(x)", "=v", "a", "a==b", "a!=b", "!a",
                                 "a in (b)", "a=b c"])
def test_anything_but_key_value_labels_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="key=value labels"):
        LabelSelector.parse(bad)


# -- configuration ----------------------------------------------------------------------

def test_config_defaults_address_pods_through_the_headless_service() -> None:
    config = Config.from_env(ENV)
    assert (config.namespace, config.configmap, config.policy, config.interval) == (
        "db", "kv-membership", Policy(rf=3, vnodes=64, down_grace=300.0), 10.0)
    assert config.address(pod("kv-2")) == (
        "kv-2.kv-peers.db.svc.cluster.local:9080", "http://kv-2.kv-peers.db.svc.cluster.local:8080")


def test_config_overrides() -> None:
    config = Config.from_env({**ENV, "RINGKV_RF": "5", "RINGKV_RECONCILE_INTERVAL": "2.5",
                              "RINGKV_CLUSTER_DOMAIN": "example.internal",
                              "RINGKV_INTERNAL_PORT": "19080", "RINGKV_API_PORT": "18080",
                              "RINGKV_DOWN_GRACE": "0", "RINGKV_VNODES": "16",
                              "RINGKV_STATEFULSET": "kv"})
    assert (config.policy, config.interval) == (Policy(rf=5, vnodes=16, down_grace=0.0), 2.5)
    assert config.statefulset == "kv"
    assert config.address(pod("kv-0"))[0] == "kv-0.kv-peers.db.svc.example.internal:19080"


def test_a_round_may_take_a_minute_and_six_intervals_before_liveness_fails() -> None:
    assert Config.from_env(ENV).stale_after == 120.0
    assert Config.from_env({**ENV, "RINGKV_RECONCILE_INTERVAL": "30"}).stale_after == 240.0


def test_address_template_by_pod_ip_brackets_ipv6() -> None:
    config = Config.from_env({**ENV, "RINGKV_ADDRESS_TEMPLATE": "{pod_ip}"})
    assert config.address(pod("kv-0", ip="10.1.2.3")) == ("10.1.2.3:9080", "http://10.1.2.3:8080")
    assert config.address(pod("kv-0", ip="fd00::5")) == ("[fd00::5]:9080", "http://[fd00::5]:8080")


@pytest.mark.parametrize(("change", "message"), [
    ({"RINGKV_NAMESPACE": ""}, "RINGKV_NAMESPACE is required"),
    ({"RINGKV_CLUSTER_TOKEN": " "}, "RINGKV_CLUSTER_TOKEN is required"),
    ({"RINGKV_RF": "three"}, "RINGKV_RF must be a number"),
    ({"RINGKV_RECONCILE_INTERVAL": "0"}, "must be positive"),
    ({"RINGKV_POD_SELECTOR": "a in (b)"}, "key=value labels"),
    ({"RINGKV_ADDRESS_TEMPLATE": "{pod}.{nope}"}, "bad RINGKV_ADDRESS_TEMPLATE"),
])
def test_config_errors_name_the_variable(change: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_env({**ENV, **change})


def test_pod_alive_means_running_and_not_terminating() -> None:
    body = {"metadata": {"name": "kv-0", "uid": "u1"}, "status": {"phase": "Running",
                                                                   "podIP": "10.0.0.1"}}
    assert Pod.from_body(body) == Pod("kv-0", "u1", "Running", False, "10.0.0.1")
    assert Pod.from_body(body).alive
    body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert not Pod.from_body(body).alive
    assert not Pod.from_body({"metadata": {"name": "kv-1"}, "status": {"phase": "Pending"}}).alive
    assert Pod.from_body({"metadata": {"name": "kv-1"}}).phase == "Unknown"


# -- the pod map ------------------------------------------------------------------------

def names(cache: PodCache) -> set[str]:
    return {p.name for p in cache.pods()}


def test_pod_events_add_update_and_delete() -> None:
    cache = PodCache()
    cache.apply(None, pod("a", "Pending"))
    cache.apply("ADDED", pod("b"))
    cache.apply("MODIFIED", pod("a"))
    assert names(cache) == {"a", "b"} and cache.get("a") == pod("a")
    cache.apply("DELETED", pod("a"))
    assert names(cache) == {"b"}


def test_a_late_deleted_event_of_a_previous_pod_keeps_its_replacement() -> None:
    cache = PodCache()
    cache.apply("ADDED", pod("a", uid="new"))
    mark = cache.mark()
    cache.apply("DELETED", pod("a", uid="old"))
    assert cache.get("a") == pod("a", uid="new")
    cache.resync(mark, [pod("a", uid="new", deleting=True)])  # and a list may still update it
    assert cache.get("a") == pod("a", uid="new", deleting=True)


def test_resync_drops_pods_whose_deletion_the_watch_missed() -> None:
    cache = PodCache()
    cache.apply(None, pod("a"))
    cache.apply(None, pod("b"))
    cache.resync(cache.mark(), [pod("a", deleting=True)])
    assert names(cache) == {"a"} and cache.get("a") == pod("a", deleting=True)


def test_resync_never_undoes_an_event_newer_than_the_list() -> None:
    cache = PodCache()
    cache.apply(None, pod("a"))
    mark = cache.mark()  # the list request goes out here...
    cache.apply("ADDED", pod("b"))  # ...and these events arrive while it is in flight
    cache.apply("MODIFIED", pod("a", deleting=True))
    cache.apply("ADDED", pod("c"))
    cache.apply("DELETED", pod("c"))
    # The list was taken before all of them: it knows neither b nor the deletions.
    cache.resync(mark, [pod("a"), pod("c")])
    assert names(cache) == {"a", "b"}
    assert cache.get("a") == pod("a", deleting=True)
    # A later list decides again, and the tombstone of c is gone.
    cache.resync(cache.mark(), [pod("a", deleting=True), pod("b"), pod("c")])
    assert names(cache) == {"a", "b", "c"}


# -- events and credentials -------------------------------------------------------------

def doc(epoch: int, *members: tuple[str, str], settled: bool = True) -> Document:
    return Document(epoch, 3, tuple(Member(n, f"{n}:1", f"http://{n}:2", s)  # type: ignore[arg-type]
                                    for n, s in members), settled)


@pytest.mark.parametrize(("old", "new", "reason"), [
    (None, doc(1, ("a", "normal")), "ClusterFormed"),
    (doc(1, ("a", "normal"), ("b", "normal")), doc(2, ("a", "normal"), settled=False),
     "NodeRemoved"),
    (doc(1, ("a", "normal")), doc(2, ("a", "normal"), ("b", "joining"), settled=False),
     "NodeJoined"),
    (doc(2, ("a", "normal"), ("b", "joining"), settled=False),
     doc(3, ("a", "normal"), ("b", "normal"), settled=False), "NodePromoted"),
    (doc(3, ("a", "normal"), settled=False), doc(4, ("a", "normal")), "EpochSettled"),
    (doc(3, ("a", "normal")), doc(7, ("a", "normal")), "MembershipReissued"),
])
def test_event_reasons(old: Document | None, new: Document, reason: str) -> None:
    assert event_reason(old, new) == reason


def test_credentials_come_from_an_explicit_kubeconfig(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config"
    config.write_text('{"current-context": "c", "contexts": [{"name": "c", "context": '
                      '{"cluster": "k", "user": "u", "namespace": "db"}}], "clusters": [{"name": '
                      '"k", "cluster": {"server": "https://127.0.0.1:6443"}}], "users": [{"name": '
                      '"u", "user": {"token": "t0k"}}]}')
    monkeypatch.setenv("KUBECONFIG", str(config))
    info = discover_credentials(kopf.OperatorSettings())
    assert (info.server, info.token, info.default_namespace) == ("https://127.0.0.1:6443", "t0k",
                                                                 "db")
    assert info.as_http_headers() == {"Authorization": "Bearer t0k"}


def test_no_credentials_is_a_login_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if Path("/var/run/secrets/kubernetes.io/serviceaccount/token").exists():
        pytest.skip("running inside a pod with a service account")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(kopf.LoginError, match="no Kubernetes credentials"):
        discover_credentials(kopf.OperatorSettings())


async def test_a_dead_reconcile_loop_stops_the_operator() -> None:
    """The loop only ends by cancellation; a bug that ends it must not leave kopf running
    without reconciliation: the operator stops with exit code 1 and Kubernetes restarts it."""
    operator = Operator(Config.from_env(ENV))

    async def crash() -> None:
        raise RuntimeError("a bug")

    task = asyncio.create_task(crash())
    with contextlib.suppress(RuntimeError):
        await task
    operator._loop_ended(task)
    assert operator.failed and operator.stop_flag.is_set()
