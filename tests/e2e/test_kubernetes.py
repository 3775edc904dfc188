"""The chart on a real Kubernetes, and what Kubernetes' pod churn costs it.

One release (5 nodes, rf=3); the tests run in file order and build on each other. After
the install checks, KEYS keys are loaded with quorum writes, and then every kind of churn
a Kubernetes user causes (issue 12 point 7, issue 11's reinstall, issue 18 item 10) is
one step, measured the same way (`measured`): from a workload pod in the cluster, through
the client Service as an application would, one client reads every acknowledged key again
and again and another sends paced quorum writes and reads, each request tried once and
its errors counted by code, while the nodes' counters are sampled; once the membership has
settled and nothing moves any more, every key is read back through every node. Each
step's cost (epochs walked, records re-streamed, hints replayed, client errors by code)
is printed and saved to build/e2e-logs/churn-costs.json, which docs/KUBERNETES.md quotes.

KEYS is 20,000 (issue 12's size), or RINGKV_E2E_KEYS.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pytest
from e2e.support import (
    CHART,
    ROOT,
    Background,
    PortForward,
    ReadyEndpoints,
    Release,
    Workload,
    pod_ready,
    say,
    wait_for,
)
from e2e.workload import version_key

from ringkv.client import Client, Unauthorized

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

KEYS = int(os.environ.get("RINGKV_E2E_KEYS", "20000"))
WATCH_RATE = 250  # reads/s of the client that reads every key again and again
MOST_NODES = 7  # the scale-out step's size: the counters of pods up to it are sampled
STALL = 90  # seconds after a reinstall: a node pod still not created is the controller's back-off
RESTREAM_SHARE = 0.10  # issue 12: a restart or an upgrade re-streams at most this share
COSTS = ROOT / "build" / "e2e-logs" / "churn-costs.json"


@pytest.fixture(scope="module")
def service(release: Release) -> Iterator[PortForward]:
    """`kubectl port-forward svc/<release> <port>:8080`, as a user would run it."""
    forward = PortForward(release.kube, f"svc/{release.name}", log_dir=release.log_dir)
    try:
        yield forward.start()
    finally:
        forward.close()


@pytest.fixture(scope="module")
def workload(release: Release) -> Workload:
    return Workload(release).create()


def client_for(release: Release, service: PortForward) -> Client:
    """A client through the Service's port-forward, restarted first if its pod went away."""
    return Client(service.ensure().url, token=release.token, timeout=10)


def require(done: bool, what: str) -> None:
    """The tests build on each other: after an earlier failure, say so instead of failing again."""
    if not done:
        pytest.skip(f"an earlier test did not get as far as {what}")


# -- what a step costs --------------------------------------------------------------------

@dataclass
class Cost:
    """What one step of churn cost, from its start until nothing moved any more."""

    step: str
    seconds: float = 0.0
    epochs: int = 0
    pulled: int = 0  # records merged by hand-off and catch-up pulls
    anti_entropy: int = 0  # records merged by anti-entropy rounds
    hints: int = 0  # hints replayed: the writes a node missed, delivered when it returned
    stored: int = 0  # stored copies before the step (keys x rf)
    catching_up_s: float = 0.0  # seconds some node had ranges left to pull
    per_node: dict[str, Any] = field(default_factory=dict)  # each node's counters
    traffic: dict[str, Any] = field(default_factory=dict)  # paced writes and reads
    watch: dict[str, Any] = field(default_factory=dict)  # every key read, again and again
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def restreamed(self) -> int:
        return self.pulled + self.anti_entropy

    @property
    def share(self) -> float:
        return self.restreamed / self.stored if self.stored else 0.0

    @property
    def reports(self) -> list[dict[str, Any]]:
        """What each client saw: the traffic's reads and writes, the watch's reads."""
        return [self.traffic["reads"], self.traffic["writes"], self.watch]

    def errors(self, kind: str = "") -> dict[str, int]:
        """Client errors (every client) whose code starts with `kind`."""
        out: dict[str, int] = {}
        for report in self.reports:
            for code, n in report["errors"].items():
                if code.startswith(kind):
                    out[code] = out.get(code, 0) + n
        return out

    @property
    def missing(self) -> int:
        """Reads that answered 404 for an acknowledged key."""
        return sum(report["missing"] for report in self.reports)

    def examples(self) -> list[str]:
        return [text for report in self.reports for text in report["examples"][:3]]

    def line(self) -> str:
        t = self.traffic
        return (f"{self.step}: {self.seconds:.0f}s, {self.epochs} epochs, {self.restreamed} "
                f"records re-streamed ({self.share:.1%} of {self.stored} stored copies; "
                f"{self.pulled} pulled, {self.anti_entropy} by anti-entropy), "
                f"{self.hints} hints replayed, catch-up {self.catching_up_s:.0f}s; "
                f"{self.watch['ok']} key reads, {t['writes']['ok']} writes / {t['reads']['ok']} "
                f"reads ok, errors {self.errors() or 'none'}, 404s {self.missing}; "
                f"{self.notes}")


@pytest.fixture(scope="module")
def costs() -> Iterator[list[Cost]]:
    """The steps' costs, saved (and listed) when the module is done."""
    steps: list[Cost] = []
    yield steps
    if steps:
        COSTS.parent.mkdir(parents=True, exist_ok=True)
        COSTS.write_text(json.dumps([asdict(c) for c in steps], indent=1))
        say(f"churn costs (also in {COSTS}):\n" + "\n".join(c.line() for c in steps))


def no_loss(report: dict[str, Any]) -> list[str]:
    """What a read-back or the traffic's checked reads saw that must never happen."""
    return [f"{kind} {report[kind]}: {report['examples'][:5]}"
            for kind in ("missing", "stale", "wrong") if report[kind]]


@contextlib.contextmanager
def measured(release: Release, workload: Workload, service: PortForward, costs: list[Cost],
             step: str) -> Iterator[Cost]:
    """Run one step of churn (the body) under traffic, and measure what it costs.

    Two clients go through the client Service, as an application in the cluster does,
    trying each request once: the watch reads every acknowledged key again and again
    (WATCH_RATE reads/s), the traffic sends paced quorum writes and reads; the nodes'
    counters are sampled each second. After the body (which waits for its own end: a
    rollout, pods back), the step ends once the membership has settled with every node
    normal and ready, caught up, with no hint left. Then every key is read back through
    every node: none may be missing or older than acknowledged, and no client may have
    seen that during the step either (errors, e.g. 503, are counted, not failed here)."""
    before = release.wait_settled(0, 300, f"a settled membership before {step}")
    cost = Cost(step)
    nodes = release.pod_urls(MOST_NODES)
    once = ("--urls", release.service_url, "--attempts", "1")
    running: list[Background] = [
        workload.start("metrics", "--urls", nodes),
        workload.start("traffic", *once),
        workload.start("verify", *once, "--rate", str(WATCH_RATE), "--concurrency", "8"),
    ]
    started = time.monotonic()
    say(f"{step}: at epoch {before['epoch']}")
    try:
        yield cost
        doc = release.wait_settled(before["epoch"] - 1, 600, f"the membership to settle after {step}")
        wait_for(lambda: release.quiet(client_for(release, service), doc), 600,
                 f"nothing left moving after {step}")
        cost.seconds = round(time.monotonic() - started, 1)
        metrics, cost.traffic, watched = [r.stop() for r in running]
    except BaseException:
        for r in running:
            r.kill()
        raise
    after = release.membership()
    assert after is not None
    cost.epochs = after["epoch"] - before["epoch"]
    cost.pulled = metrics["rebalance_keys_received"]
    cost.anti_entropy = metrics["anti_entropy_records"]
    cost.per_node = metrics["per_node"]
    cost.hints = metrics["hints_replayed"]
    cost.catching_up_s = metrics["catching_up_s"]
    cost.watch = watched["total"]
    readback = workload.run("verify", "--urls", release.pod_urls())
    cost.stored = readback["keys"] * release.rf
    costs.append(cost)
    say(cost.line())
    for report in cost.reports:
        assert not no_loss(report), no_loss(report)
    total = readback["total"]
    assert not no_loss(total) and not total["errors"], total
    assert total["ok"] == readback["keys"]


def assert_no_quorum_errors(cost: Cost) -> None:
    quorum = cost.errors("quorum_unavailable")
    assert not quorum, f"{cost.step}: {quorum}; e.g. {cost.examples()}"


def assert_restreams_little(cost: Cost) -> None:
    assert cost.share <= RESTREAM_SHARE, (
        f"{cost.step} re-streamed {cost.restreamed} records, {cost.share:.1%} of the "
        f"{cost.stored} stored copies (at most {RESTREAM_SHARE:.0%})")


def node_pods_replaced(release: Release, old: dict[str, str]) -> bool:
    """Every node pod is a new one (not in `old`, name -> uid) and Ready."""
    pods = {p["metadata"]["name"]: p for p in release.kube.pods(release.selector("node"))}
    return sorted(pods) == sorted(release.node_names) and all(
        p["metadata"]["uid"] != old.get(name) and pod_ready(p) for name, p in pods.items())


def node_uids(release: Release) -> dict[str, str]:
    return {p["metadata"]["name"]: p["metadata"]["uid"]
            for p in release.kube.pods(release.selector("node"))}


# -- install --------------------------------------------------------------------------------

def test_install_serves_through_port_forward(release: Release, service: PortForward) -> None:
    doc = release.wait_settled(0, 180, f"a settled membership of {release.node_names}")
    say(f"membership epoch {doc['epoch']}: {[m['name'] for m in doc['members']]}")
    with Client(service.url, token=None, timeout=10) as anonymous, pytest.raises(Unauthorized):
        anonymous.get("anything")

    with client_for(release, service) as client:
        info = wait_for(lambda: release.cluster_agrees(client, doc), 120, "GET /v1/cluster to agree")
        assert info["rf"] == release.rf and info["replicas_per_key"] == release.rf
        version = client.put("through/port-forward", b"hello")
        entry = client.get("through/port-forward")
        assert (entry.value, entry.version) == (b"hello", version)
    release.progress.add("installed")


def test_pods_run_unprivileged_on_a_read_only_root(release: Release) -> None:
    """What the chart's security context asks for, as the running containers see it; and
    the NetworkPolicies are in place (this cluster does not enforce it: tests/chart checks
    its rules)."""
    kube = release.kube
    probe = ("import os\n"
             "try:\n    open('/probe', 'w')\nexcept OSError as e:\n    print(os.getuid(), e.strerror)")
    for pod in (f"{release.name}-0", kube.pods(release.selector("operator"))[0]["metadata"]["name"]):
        out = kube.kubectl("exec", pod, "--", "python", "-c", probe).stdout.strip()
        assert out == "10001 Read-only file system", (pod, out)
    policies = [p["metadata"]["name"] for p in kube.get_json("networkpolicy")["items"]]
    assert sorted(policies) == [release.name, f"{release.name}-operator"], policies


def test_the_operator_reports_its_reconcile_loop_alive(release: Release) -> None:
    """The operator's /healthz, which its liveness probe asks, says a round ended lately."""
    kube = release.kube
    pod = kube.pods(release.selector("operator"))[0]
    ask = ("import urllib.request\n"
           "print(urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=10).read().decode())")
    answer = json.loads(kube.kubectl("exec", pod["metadata"]["name"], "--", "python", "-c", ask).stdout)
    assert answer["status"] == "ok" and "ago" in answer["detail"], answer
    probe = pod["spec"]["containers"][0]["livenessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == ("/healthz", "metrics")
    say(f"operator liveness: {answer['detail']}")


def test_keys_load_with_quorum_writes_and_read_back(release: Release, workload: Workload) -> None:
    require("installed" in release.progress, "a settled install")
    loaded = workload.run("load", "--urls", release.pod_urls(), "--keys", str(KEYS))
    say(f"loaded {loaded['keys']} keys in {loaded['seconds']}s ({loaded['per_second']}/s), "
        f"errors {loaded['errors']}")
    assert loaded["keys"] == KEYS, loaded
    readback = workload.run("verify", "--urls", release.service_url)
    total, first = readback["total"], readback["passes"][0]
    say(f"read back through the Service in {first['ended'] - first['started']:.0f}s")
    assert (total["ok"], total["errors"], no_loss(total)) == (KEYS, {}, []), total
    release.progress.add("loaded")


# -- churn ----------------------------------------------------------------------------------

def test_rollout_restart_restreams_little(release: Release, workload: Workload,
                                          service: PortForward, costs: list[Cost]) -> None:
    """`kubectl rollout restart`: each pod comes back on its volume within the down grace,
    so the membership does not change, the pod is ready at once and gets only the writes
    it missed (hints, a digest comparison); quorum traffic never fails."""
    require("loaded" in release.progress, "loading the keys")
    with measured(release, workload, service, costs, "rollout restart") as cost:
        old = node_uids(release)
        release.kube.kubectl("rollout", "restart", f"statefulset/{release.name}")
        release.kube.kubectl("rollout", "status", f"statefulset/{release.name}", "--timeout=900s",
                             timeout=960)
        wait_for(lambda: node_pods_replaced(release, old), 300, "every node pod replaced and ready")
    assert_no_quorum_errors(cost)
    assert_restreams_little(cost)


def test_helm_upgrade_keeps_membership_and_data(release: Release, workload: Workload,
                                                service: PortForward, costs: list[Cost]) -> None:
    """An upgrade that changes the pod template rolls every node, at the cost of a restart;
    membership (the operator's ConfigMap, which the chart never renders) and data survive,
    and so do the tokens."""
    require("loaded" in release.progress, "loading the keys")
    kube = release.kube
    cm_uid = kube.get_json("configmap", release.configmap)["metadata"]["uid"]
    checksum = tokens_checksum(release)
    stamp = str(int(time.time()))
    with measured(release, workload, service, costs, "helm upgrade (pod template)") as cost:
        old = node_uids(release)
        kube.helm("upgrade", release.name, str(CHART), "--reuse-values",
                  "--set-string", f"podAnnotations.ringkv\\.io/e2e-upgrade={stamp}",
                  "--wait", "--timeout", "15m")
        kube.kubectl("rollout", "status", f"statefulset/{release.name}", "--timeout=900s", timeout=960)
        wait_for(lambda: node_pods_replaced(release, old), 300, "every node pod replaced and ready")
    assert_no_quorum_errors(cost)
    assert_restreams_little(cost)

    pods = kube.pods(release.selector("node"))
    assert all((p["metadata"].get("annotations") or {}).get("ringkv.io/e2e-upgrade") == stamp
               for p in pods), "the upgrade did not roll the node pods"
    assert kube.get_json("configmap", release.configmap)["metadata"]["uid"] == cm_uid
    assert kube.secret_value(f"{release.name}-tokens", "api-token") == release.token
    # `lookup` found the live Secret, so the checksum (of the Secret's data) did not move.
    assert tokens_checksum(release) == checksum


def tokens_checksum(release: Release) -> str:
    """The node pods' `checksum/tokens`, checked against the live Secret it hashes."""
    kube = release.kube
    template = kube.get_json("statefulset", release.name)["spec"]["template"]
    checksum = template["metadata"]["annotations"]["checksum/tokens"]
    data = kube.get_json("secret", f"{release.name}-tokens")["data"]
    assert checksum == hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":"))
                                      .encode()).hexdigest()
    operator = kube.get_json("deployment", f"{release.name}-operator")["spec"]["template"]
    assert operator["metadata"]["annotations"]["checksum/tokens"] == checksum
    return checksum


def test_helm_test_passes(release: Release) -> None:
    # No --logs: the chart deletes a test pod that succeeded (hook-succeeded), so helm
    # could not fetch its logs and would fail the command.
    proc = release.kube.helm("test", release.name, "--timeout", "5m", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    suite = [line.strip() for line in proc.stdout.splitlines() if line.startswith(("TEST SUITE", "Phase"))]
    say(f"helm test passed: {suite}")


def test_deleting_every_node_pod_never_answers_not_found(
    release: Release, workload: Workload, service: PortForward, costs: list[Cost]
) -> None:
    """Every node pod deleted at once (a host restart, a careless `kubectl delete pod -l`):
    while they are away reads may fail (503, no endpoint), but no read of an acknowledged
    key ever answers 404 or an older version, and reads are served again soon after the
    pods are back."""
    require("loaded" in release.progress, "loading the keys")
    with measured(release, workload, service, costs, "delete every node pod") as cost:
        old = node_uids(release)
        deleted = time.time()
        release.kube.kubectl("delete", "pod", "-l", release.selector("node"), "--wait=false")
        wait_for(lambda: node_pods_replaced(release, old), 600, "every node pod back and ready")
        back = time.time()
    assert set(cost.errors()) <= {"quorum_unavailable", "unavailable/refused",
                                  "unavailable/timeout", "unavailable/other"}, cost.errors()
    last_error = max(e for e in (*(r["last_error"] for r in cost.reports), deleted) if e)
    cost.notes.update(back_after_s=round(back - deleted, 1),
                      served_again_after_back_s=round(last_error - back, 1))


def test_the_operator_and_a_node_pod_deleted_together(
    release: Release, workload: Workload, service: PortForward, costs: list[Cost]
) -> None:
    """The operator and a node pod deleted at the same moment: the new operator finds the
    node absent (not gone: it is expected back) and changes nothing; the node returns on
    its volume and gets what it missed."""
    require("loaded" in release.progress, "loading the keys")
    kube = release.kube
    victim = f"{release.name}-2"
    with measured(release, workload, service, costs, "delete the operator and a node pod") as cost:
        old_operator = kube.pods(release.selector("operator"))[0]["metadata"]["name"]
        old_node = kube.get_json("pod", victim)["metadata"]["uid"]
        kube.kubectl("delete", "pod", old_operator, victim, "--wait=false")

        def new_operator_ready() -> bool:
            return any(p["metadata"]["name"] != old_operator and pod_ready(p)
                       for p in kube.pods(release.selector("operator")))

        def victim_back() -> bool:
            pod = kube.get_json("pod", victim)
            return bool(pod["metadata"]["uid"] != old_node and pod_ready(pod))

        wait_for(new_operator_ready, 300, "a new operator pod to be ready")
        wait_for(victim_back, 300, f"pod {victim} to be recreated and ready")
    assert_no_quorum_errors(cost)
    assert_restreams_little(cost)


def test_scale_out_and_in_with_helm_upgrade(
    release: Release, workload: Workload, service: PortForward, costs: list[Cost]
) -> None:
    """`helm upgrade --set replicaCount=7`, then back to 5. Scale-out moves about the 2/7
    of the copies the new nodes own, and admits each new pod only once its node answers,
    so no quorum request fails on the way up; scale-in is a planned removal: the operator
    reads the StatefulSet's replicas, marks the two pods `leaving`, and they hand their
    ranges off during their termination grace period, so none fails on the way down.
    Afterwards every key has exactly rf up-to-date copies and the excess was dropped."""
    require("loaded" in release.progress, "loading the keys")
    kube = release.kube
    small = release.replicas
    with measured(release, workload, service, costs, f"scale out {small} -> {MOST_NODES}") as out:
        release.replicas = MOST_NODES
        kube.helm("upgrade", release.name, str(CHART), "--reuse-values",
                  "--set", f"replicaCount={MOST_NODES}", "--wait", "--timeout", "10m")
    ideal = out.stored * (MOST_NODES - small) / MOST_NODES
    out.notes["of_ideal"] = round(out.restreamed / ideal, 2)
    # A new pod is admitted only once its node answers the operator (issue 12, point 5):
    # no target replica that cannot acknowledge, so two pods added at once fail no write.
    assert_no_quorum_errors(out)

    with measured(release, workload, service, costs, f"scale in {MOST_NODES} -> {small}") as back:
        leaving = release.node_names[small:]
        kube.helm("upgrade", release.name, str(CHART), "--reuse-values",
                  "--set", f"replicaCount={small}", "--wait", "--timeout", "10m")
        release.replicas = small
        kube.kubectl("wait", "--for=delete", *(f"pod/{n}" for n in leaving), "--timeout=600s",
                     timeout=660)
    assert_no_quorum_errors(back)
    release.progress.add("scaled")

    with client_for(release, service) as client:
        keys = [k for page in client.pages() for k in page.keys]
        for key in keys[:: max(1, len(keys) // 500)]:
            replicas = client.replicas(key)["replicas"]
            target = [r for r in replicas if r["in_target"]]
            assert len(target) == release.rf, (key, replicas)
            assert all(r["status"] == "ok" and r["live"] for r in target), (key, replicas)
            newest = max((r["version"] for r in target), key=version_key)
            assert all(r["version"] == newest for r in target), (key, replicas)

        def excess_dropped() -> bool:
            """rf copies of each listed key; a tombstone (`helm test` deletes its key) is a
            record too, but no listed key."""
            members = client.cluster()["members"]
            live = {m["name"]: m["records"] - m["tombstones"] for m in members}
            assert sum(live.values()) == release.rf * len(keys), live
            return True

        wait_for(excess_dropped, 180, f"exactly {release.rf} x {len(keys)} records cluster-wide")


def test_membership_changes_are_recorded_as_events(release: Release) -> None:
    require("scaled" in release.progress, "scaling out and in")
    added, leaving = f"{release.name}-5", f"{release.name}-6"
    events = release.kube.get_json("events")["items"]
    ours = [e for e in events
            if "ringkv-operator" in (e.get("source", {}).get("component"), e.get("reportingComponent"))]
    messages = [e.get("message", "") for e in ours]
    reasons = {e.get("reason") for e in ours}
    assert any("cluster formed" in m for m in messages), messages
    assert any(f"{added} joined" in m for m in messages), messages
    assert any(leaving in m and "leaving" in m for m in messages), messages
    assert any("settled" in m for m in messages), messages
    assert {"NodeJoined", "NodeLeaving", "EpochSettled"} <= reasons, reasons
    say(f"{len(ours)} operator events, e.g. {messages[-1]!r}")


def test_the_service_keeps_every_serving_node_while_the_survivors_catch_up(
    release: Release, workload: Workload, service: PortForward, costs: list[Cost]
) -> None:
    """Issue 18 item 10. With no down grace, a deleted pod is dropped at once and the
    survivors pull the copies it held while traffic goes on through the client Service.
    Readiness is "a member serving its own data", so none of them leaves the Service while
    it merges: the Service never loses more than the deleted pod, and no connection fails."""
    require("loaded" in release.progress, "loading the keys")
    kube = release.kube
    kube.helm("upgrade", release.name, str(CHART), "--reuse-values",
              "--set", "replication.downGraceSeconds=0", "--wait", "--timeout", "5m")
    kube.kubectl("rollout", "status", f"deployment/{release.name}-operator", "--timeout=300s",
                 timeout=330)
    victim = f"{release.name}-1"
    with ReadyEndpoints(release) as endpoints, \
            measured(release, workload, service, costs, "pod loss, survivors catch up") as cost:
        old = kube.get_json("pod", victim)["metadata"]["uid"]
        kube.kubectl("delete", "pod", victim, "--wait=false")

        def victim_back() -> bool:
            pod = kube.get_json("pod", victim)
            return bool(pod["metadata"]["uid"] != old and pod_ready(pod))

        wait_for(victim_back, 600, f"pod {victim} to be recreated and ready")
    cost.notes["fewest_ready_endpoints"] = min(endpoints.counts)
    failures = cost.errors("unavailable")
    assert not failures, (failures, cost.examples())
    assert min(endpoints.counts) >= release.replicas - 1, endpoints.counts
    assert_no_quorum_errors(cost)


def test_reinstall_at_once_on_the_retained_volumes(
    release: Release, workload: Workload, service: PortForward, costs: list[Cost]
) -> None:
    """Issue 11: `helm uninstall`, then `helm install` at once, while the old pods are
    still going. The PVCs, the membership ConfigMap and (resource-policy keep) the token
    Secret stay; the new install adopts the Secret, so the old token still works, and while
    the pods come back no read of an acknowledged key answers 404.

    The new StatefulSet's first pod creations fail while the old pods of the same names
    still terminate (FailedCreate: "The POST operation against Pod could not be completed
    at this time"), and Kubernetes' StatefulSet controller backs off exponentially (up to
    16 minutes) before it tries again; nothing it watches tells it the old pods are gone.
    A pod still missing STALL seconds after the install is therefore taken as that stall:
    it is recorded, and the StatefulSet is touched (an annotation: any update makes the
    controller sync at once), as docs/KUBERNETES.md tells a user to do."""
    require("loaded" in release.progress, "loading the keys")
    kube = release.kube
    cluster_token = kube.secret_value(f"{release.name}-tokens", "cluster-token")
    with measured(release, workload, service, costs, "helm uninstall + install at once") as cost:
        old = node_uids(release)
        started = time.monotonic()
        kube.helm("uninstall", release.name)
        left = len(kube.pods(release.selector("node")))
        say(f"helm uninstall returned after {time.monotonic() - started:.0f}s with {left} node "
            "pods still there; installing at once")
        claims = kube.get_json("pvc", "-l", f"app.kubernetes.io/instance={release.name}")["items"]
        assert len(claims) >= release.replicas
        release.install(wait=False)

        def created() -> bool:
            pods = kube.pods(release.selector("node"))
            return len({p["metadata"]["name"] for p in pods
                        if p["metadata"]["uid"] not in old.values()}) == release.replicas

        try:
            wait_for(created, STALL, "the new StatefulSet to create every node pod")
        except AssertionError:
            failed = [e for e in kube.get_json("events")["items"] if e["reason"] == "FailedCreate"]
            cost.notes["stalled_pod_creations"] = sum(e.get("count", 1) for e in failed)
            say(f"{release.describe()}\nFailedCreate x {cost.notes['stalled_pod_creations']}: "
                f"{failed[-1]['message'] if failed else 'none'}; touching the StatefulSet")
            kube.kubectl("annotate", "statefulset", release.name, "--overwrite",
                         f"ringkv.io/e2e-resync={int(time.time())}")
        wait_for(lambda: node_pods_replaced(release, old), 600, "every node pod back and ready")
        cost.notes["pods_back_after_s"] = round(time.monotonic() - started, 1)
    assert kube.secret_value(f"{release.name}-tokens", "api-token") == release.token
    assert kube.secret_value(f"{release.name}-tokens", "cluster-token") == cluster_token
    secret = kube.get_json("secret", f"{release.name}-tokens")["metadata"]
    assert secret["annotations"]["meta.helm.sh/release-name"] == release.name
