"""The chart on a real Kubernetes: install, port-forward, lose a node pod and the operator
under traffic, upgrade, `helm test`, uninstall and reinstall on the retained volumes.

The tests run in file order against one release (the `release` fixture) and build on each
other: the keys written first are checked after every later disruption.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from e2e.support import (
    CHART,
    ForwardPool,
    PortForward,
    Release,
    Traffic,
    parse_version,
    pod_ready,
    say,
    wait_for,
)

from ringkv.client import Client, Unauthorized

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

STATIC_KEYS = 1000
LIVE_KEYS = 40


@pytest.fixture(scope="module")
def service(release: Release) -> Iterator[PortForward]:
    """`kubectl port-forward svc/<release> <port>:8080`, as a user would run it."""
    forward = PortForward(release.kube, f"svc/{release.name}", log_dir=release.log_dir)
    try:
        yield forward.start()
    finally:
        forward.close()


def client_for(release: Release, service: PortForward) -> Client:
    """A client through the Service's port-forward, restarted first if its pod went away."""
    return Client(service.ensure().url, token=release.token, timeout=10)


def require(done: bool, what: str) -> None:
    """The tests build on each other: after an earlier failure, say so instead of failing again."""
    if not done:
        pytest.skip(f"an earlier test did not get as far as {what}")


def check_all_keys(release: Release, client: Client) -> None:
    """Every key written so far reads back (quorum) at its acknowledged version or newer."""
    for key, version in release.static.items():
        assert client.get(key).version == version, key
    for key, version in release.acked.items():
        got = client.get(key).version
        assert parse_version(got) >= parse_version(version), (key, got, version)


def write_live_keys(release: Release, service: PortForward) -> None:
    """The keys the background traffic overwrites; each gets one acknowledged write first."""
    if release.acked:
        return
    with client_for(release, service) as client:
        for i in range(LIVE_KEYS):
            key = f"live/{i:02d}"
            release.acked[key] = client.put(key, f"{key}=first".encode())


def test_install_serves_through_port_forward(release: Release, service: PortForward) -> None:
    doc = release.wait_settled(0, 180, f"a settled membership of {release.node_names}")
    say(f"membership epoch {doc['epoch']}: {[m['name'] for m in doc['members']]}")
    with Client(service.url, token=None, timeout=10) as anonymous, pytest.raises(Unauthorized):
        anonymous.get("anything")

    with client_for(release, service) as client:
        info = wait_for(lambda: release.cluster_agrees(client, doc), 120, "GET /v1/cluster to agree")
        assert info["rf"] == release.rf and info["replicas_per_key"] == release.rf

        started = time.monotonic()
        for i in range(STATIC_KEYS):
            key = f"static/{i:04d}"
            release.static[key] = client.put(key, f"{key}=0".encode())
        say(f"wrote {STATIC_KEYS} keys through {service.url} in {time.monotonic() - started:.1f}s")
        check_all_keys(release, client)
    release.progress.add("written")


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


def test_node_and_operator_deletion_lose_nothing(release: Release, service: PortForward) -> None:
    """Delete node pod 2, then the operator while that node is out of the membership, all
    under quorum traffic through every node; afterwards nothing acknowledged is lost and
    every key has exactly rf up-to-date copies."""
    require("written" in release.progress, "writing the first keys")
    kube = release.kube
    victim = f"{release.name}-2"
    write_live_keys(release, service)

    with ForwardPool(kube, release.node_names, release.log_dir) as pool, \
            Traffic(pool.urls, release.token, release.acked, release.static) as traffic:
        wait_for(lambda: min(traffic.counts()) >= 20, 120, "traffic to flow through every node")
        before = release.membership()
        assert before is not None
        old_uid = kube.get_json("pod", victim)["metadata"]["uid"]
        started = time.monotonic()
        kube.kubectl("delete", "pod", victim, "--wait=false")
        say(f"deleted pod {victim} at membership epoch {before['epoch']}")

        def victim_removed() -> dict[str, Any] | None:
            """The document once the operator has taken the victim out. The replacement pod
            can be Running again within seconds, so a later document re-admitting it as
            `joining` (only a removed member comes back that way) counts too."""
            doc = release.membership()
            if doc is None or doc["epoch"] <= before["epoch"]:
                return None
            state = {m["name"]: m["state"] for m in doc["members"]}.get(victim)
            return doc if state in (None, "joining") else None

        removed = wait_for(victim_removed, 120, f"the operator to remove {victim} from the membership")
        back = victim in [m["name"] for m in removed["members"]]
        say(f"{victim} removed by epoch {removed['epoch']} after {time.monotonic() - started:.0f}s "
            f"({'already re-admitted as joining' if back else 'still out'})")
        release.progress.add("node deleted")

        operator = kube.pods(release.selector("operator"))
        assert len(operator) == 1, [p["metadata"]["name"] for p in operator]
        old_operator = operator[0]["metadata"]["name"]
        kube.kubectl("delete", "pod", old_operator, "--wait=false")
        say(f"deleted operator pod {old_operator}")

        def new_operator_ready() -> str | None:
            pods = [p for p in kube.pods(release.selector("operator"))
                    if p["metadata"]["name"] != old_operator and pod_ready(p)]
            return pods[0]["metadata"]["name"] if pods else None

        new_operator = wait_for(new_operator_ready, 180, "a new operator pod to be ready")
        say(f"operator {new_operator} ready after {time.monotonic() - started:.0f}s")

        def victim_back() -> bool:
            pod = kube.get_json("pod", victim)
            return pod["metadata"]["uid"] != old_uid and pod_ready(pod)

        wait_for(victim_back, 300, f"pod {victim} to be recreated and ready")
        doc = release.wait_settled(removed["epoch"], 300, f"the operator to re-admit {victim} and settle")
        say(f"settled at epoch {doc['epoch']} with all {release.replicas} nodes after "
            f"{time.monotonic() - started:.0f}s")
        with client_for(release, service) as client:
            wait_for(lambda: release.cluster_agrees(client, doc), 120, "GET /v1/cluster to agree")

        writes, reads = traffic.counts()
        wait_for(lambda: (c := traffic.counts())[0] >= writes + 20 and c[1] >= reads + 20, 120,
                 "traffic to keep flowing after the node returned")
        report = traffic.stop()
    say(f"traffic: {report.summary()}; port-forward restarts "
        f"{[f.restarts for f in pool.forwards]}")
    assert not report.violations, "\n".join(report.violations)

    with client_for(release, service) as client:
        check_all_keys(release, client)
        # Rule 4: rf live copies of the newest version, on exactly the target replicas.
        for key, version in [*release.static.items(), *release.acked.items()]:
            replicas = client.replicas(key)["replicas"]
            target = [r for r in replicas if r["in_target"]]
            assert len(target) == release.rf, (key, replicas)
            assert all(r["status"] == "ok" and r["live"] for r in target), (key, replicas)
            versions = {r["version"] for r in target}
            if key in release.static:
                assert versions == {version}, (key, version, replicas)
            else:
                assert all(parse_version(v) >= parse_version(version) for v in versions), (key, replicas)
        total = len(release.static) + len(release.acked)

        def excess_dropped() -> bool:
            members = client.cluster()["members"]
            return sum(m.get("records", -1) for m in members) == release.rf * total

        wait_for(excess_dropped, 180, f"exactly {release.rf} x {total} records cluster-wide (excess dropped)")
    say(f"all {total} keys have {release.rf} up-to-date copies and no excess")


def test_membership_changes_are_recorded_as_events(release: Release) -> None:
    require("node deleted" in release.progress, "deleting a node pod")
    victim = f"{release.name}-2"
    events = release.kube.get_json("events")["items"]
    ours = [e for e in events
            if "ringkv-operator" in (e.get("source", {}).get("component"), e.get("reportingComponent"))]
    messages = [e.get("message", "") for e in ours]
    assert any("cluster formed" in m for m in messages), messages
    assert any(f"{victim} removed" in m for m in messages), messages
    assert any(f"{victim} joined" in m for m in messages), messages
    assert any("settled" in m for m in messages), messages
    say(f"{len(ours)} operator events, e.g. {messages[-1]!r}")


def test_helm_upgrade_keeps_membership_and_data(release: Release, service: PortForward) -> None:
    """An upgrade that changes the pod template rolls every node; membership (the operator's
    ConfigMap, which the chart never renders) and data survive, and so do the tokens."""
    require("written" in release.progress, "writing the first keys")
    write_live_keys(release, service)
    kube = release.kube
    before = release.wait_settled(0, 120, "a settled membership")
    cm_uid = kube.get_json("configmap", release.configmap)["metadata"]["uid"]
    checksum = tokens_checksum(release)
    stamp = str(int(time.time()))

    with ForwardPool(kube, release.node_names, release.log_dir) as pool, \
            Traffic(pool.urls, release.token, release.acked, release.static) as traffic:
        wait_for(lambda: min(traffic.counts()) >= 20, 120, "traffic to flow through every node")
        started = time.monotonic()
        say(f"helm upgrade (pod annotation ringkv.io/e2e-upgrade={stamp}) at epoch {before['epoch']}")
        kube.helm("upgrade", release.name, str(CHART), "--reuse-values",
                  "--set-string", f"podAnnotations.ringkv\\.io/e2e-upgrade={stamp}",
                  "--wait", "--timeout", "10m")
        kube.kubectl("rollout", "status", f"statefulset/{release.name}", "--timeout=600s", timeout=660)
        say(f"upgrade rolled out in {time.monotonic() - started:.0f}s")
        doc = release.wait_settled(before["epoch"], 300,
                                   "the same nodes to settle at a newer epoch after the rolling upgrade")
        with client_for(release, service) as client:
            wait_for(lambda: release.cluster_agrees(client, doc), 120, "GET /v1/cluster to agree")
        report = traffic.stop()
    say(f"epoch {before['epoch']} -> {doc['epoch']}; traffic: {report.summary()}")
    assert not report.violations, "\n".join(report.violations)

    pods = kube.pods(release.selector("node"))
    assert sorted(p["metadata"]["name"] for p in pods) == sorted(release.node_names)
    assert all((p["metadata"].get("annotations") or {}).get("ringkv.io/e2e-upgrade") == stamp
               for p in pods), "the upgrade did not roll the node pods"
    assert kube.get_json("configmap", release.configmap)["metadata"]["uid"] == cm_uid
    assert kube.secret_value(f"{release.name}-tokens", "api-token") == release.token
    # `lookup` found the live Secret, so the checksum (of the Secret's data) did not move.
    assert tokens_checksum(release) == checksum
    with client_for(release, service) as client:
        check_all_keys(release, client)


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


def test_reinstall_on_the_retained_volumes_keeps_tokens_and_data(
    release: Release, service: PortForward
) -> None:
    """`helm uninstall` keeps the PVCs, the membership ConfigMap and (resource-policy keep)
    the token Secret; `helm install` under the same name adopts the Secret, so the old API
    token still works, and the nodes serve every key from their volumes."""
    require("written" in release.progress, "writing the first keys")
    kube = release.kube
    before = release.wait_settled(0, 120, "a settled membership")
    cluster_token = kube.secret_value(f"{release.name}-tokens", "cluster-token")
    started = time.monotonic()
    kube.helm("uninstall", release.name, "--wait", "--timeout", "3m")
    uninstalled = time.monotonic() - started
    left = len(kube.pods(release.selector("node")))
    kube.kubectl("wait", "--for=delete", "pod", "-l", f"app.kubernetes.io/instance={release.name}",
                 "--timeout=300s", timeout=330)
    say(f"helm uninstall --wait returned after {uninstalled:.0f}s with {left} node pods still "
        f"there; all pods gone after {time.monotonic() - started:.0f}s")
    assert kube.secret_value(f"{release.name}-tokens", "api-token") == release.token
    claims = kube.get_json("pvc", "-l", f"app.kubernetes.io/instance={release.name}")["items"]
    assert len(claims) == release.replicas

    release.install()
    assert kube.secret_value(f"{release.name}-tokens", "api-token") == release.token
    assert kube.secret_value(f"{release.name}-tokens", "cluster-token") == cluster_token
    secret = kube.get_json("secret", f"{release.name}-tokens")["metadata"]
    assert secret["annotations"]["meta.helm.sh/release-name"] == release.name
    # The same members at the same addresses: the epoch moves on only if the old operator
    # saw pods go before it went itself.
    doc = release.wait_settled(before["epoch"] - 1, 300, "the reinstalled nodes to settle")
    with client_for(release, service) as client:
        wait_for(lambda: release.cluster_agrees(client, doc), 120, "GET /v1/cluster to agree")
        check_all_keys(release, client)
    say(f"reinstalled at epoch {doc['epoch']}: {len(release.static) + len(release.acked)} keys "
        "read back with the old token")
