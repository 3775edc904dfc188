"""What the e2e tests need around a real cluster: kubectl/helm, port-forwards, polling, and
a workload pod for traffic.

Everything talks to the cluster the way a user does: `kubectl` and `helm` from `.tools/bin`
(installed by `make tools`) or PATH; the ringkv API through `kubectl port-forward` on
127.0.0.1, or from a pod in the cluster (`Workload`, running workload.py) as an
application would, which works the same on the shared/k8s cluster, kind and minikube.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ringkv.client import Client

try:  # a dev dependency; only the TLS tests need it
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError:  # pragma: no cover - reported as a skip by the TLS fixture
    x509 = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "ringkv"
TOOLS = ROOT / ".tools" / "bin"

T = TypeVar("T")
Completed = subprocess.CompletedProcess[str]


def say(text: str) -> None:
    """Progress on the terminal: an e2e run takes minutes (scripts/e2e.py runs pytest -s)."""
    print(f"[e2e {time.strftime('%H:%M:%S')}] {text}", flush=True)


def find_tool(name: str) -> str | None:
    """`.tools/bin/<name>` (the pinned one `make tools` fetched), else the one on PATH."""
    pinned = TOOLS / name
    if os.access(pinned, os.X_OK):
        return str(pinned)
    return shutil.which(name)


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 1.0) -> T:
    """Poll `check` until it returns something truthy; AssertionError naming `what` after
    `timeout` seconds, with the last value or exception it saw (the clue when it fails)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
        except Exception as exc:  # a poll may fail while the cluster is changing
            value, last = None, exc
        else:
            last = value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def free_port() -> int:
    """A port nothing listens on right now (kubectl binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Pki:
    """A CA and one certificate it signed (PEM), for both server and client auth."""

    ca: bytes
    cert: bytes
    key: bytes

    def write(self, directory: Path) -> dict[str, Path]:
        """The files as the chart's Secret holds them: ca.crt, tls.crt, tls.key."""
        files = {"ca.crt": self.ca, "tls.crt": self.cert, "tls.key": self.key}
        for name, data in files.items():
            (directory / name).write_bytes(data)
        return {name: directory / name for name in files}


def make_pki(common_name: str, dns_names: list[str], days: int = 2) -> Pki:
    """A fresh CA (EC P-256) and a certificate signed by it for `dns_names`."""
    assert x509 is not None, "the cryptography package is missing (pip install -e '.[dev]')"
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days))

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name(f"{common_name} CA")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(valid[0]).not_valid_after(valid[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name(common_name)).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid[0]).not_valid_after(valid[1])
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return Pki(ca.public_bytes(pem), cert.public_bytes(pem),
               key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()))


class CommandFailed(AssertionError):
    """A kubectl or helm command exited non-zero; the message carries its output."""


@dataclass
class Kube:
    """kubectl and helm bound to one namespace."""

    kubectl_bin: str
    helm_bin: str
    namespace: str

    def _run(self, argv: list[str], timeout: float, check: bool, stdin: str | None = None) -> Completed:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                              input=stdin)
        if check and proc.returncode != 0:
            raise CommandFailed(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc

    def kubectl(self, *args: str, timeout: float = 120, check: bool = True,
                stdin: str | None = None) -> Completed:
        return self._run([self.kubectl_bin, "--namespace", self.namespace, *args], timeout, check,
                         stdin)

    def apply(self, *objects: dict[str, Any]) -> None:
        """`kubectl apply` of these objects (as JSON on stdin)."""
        self.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List",
                                                           "items": list(objects)}))

    def helm(self, *args: str, timeout: float = 900, check: bool = True) -> Completed:
        return self._run([self.helm_bin, "--namespace", self.namespace, *args], timeout, check)

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def pods(self, selector: str) -> list[dict[str, Any]]:
        return list(self.get_json("pods", "-l", selector)["items"])

    def secret_value(self, name: str, key: str) -> str:
        data = self.get_json("secret", name)["data"]
        return base64.b64decode(data[key]).decode()


def pod_ready(pod: dict[str, Any]) -> bool:
    """Running, not terminating, and its Ready condition true."""
    if pod["metadata"].get("deletionTimestamp") or pod.get("status", {}).get("phase") != "Running":
        return False
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


class PortForward:
    """`kubectl port-forward <target> <port>:8080` on 127.0.0.1 that can be restarted on the
    same local port, so a client's URL survives the pod behind it being replaced. With
    `ca_file` the API is HTTPS, reached as `https://localhost:<port>` and verified with it."""

    def __init__(self, kube: Kube, target: str, remote_port: int = 8080, log_dir: Path | None = None,
                 ca_file: Path | None = None) -> None:
        self.kube = kube
        self.target = target
        self.remote_port = remote_port
        self.port = free_port()
        self.ca_file = ca_file
        self._log_dir = log_dir or Path(tempfile.gettempdir())
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self.restarts = 0

    @property
    def url(self) -> str:
        if self.ca_file is not None:
            return f"https://localhost:{self.port}"
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        """Start kubectl without waiting for it (the supervisor and `start` wait)."""
        self.close()
        name = self.target.replace("/", "-")
        self._log = (self._log_dir / f"port-forward-{name}-{self.port}.log").open("ab")
        self._proc = subprocess.Popen(
            [self.kube.kubectl_bin, "--namespace", self.kube.namespace, "port-forward",
             "--address", "127.0.0.1", self.target, f"{self.port}:{self.remote_port}"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def healthy(self) -> bool:
        """The process runs and a node answers /healthz through it."""
        if not self.running():
            return False
        context = None if self.ca_file is None else ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=5, context=context) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def start(self, timeout: float = 90) -> PortForward:
        """Start (or restart) and wait until requests go through."""

        def up() -> bool:
            if not self.running():
                self.restarts += 1
                self.spawn()
            return self.healthy()

        self.spawn()
        wait_for(up, timeout, f"port-forward {self.target} on {self.url}")
        return self

    def ensure(self, timeout: float = 120) -> PortForward:
        """Restart if kubectl died or stopped forwarding (its pod was deleted)."""
        if not self.healthy():
            self.start(timeout)
        return self

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


WORKLOAD = Path(__file__).with_name("workload.py")


class Background:
    """A workload.py command running in the workload pod until `stop`."""

    def __init__(self, workload: Workload, command: str, args: Sequence[str]) -> None:
        self.workload = workload
        self.command = command
        self.until = f"/tmp/stop-{command}-{secrets.token_hex(4)}"
        log = workload.release.log_dir / f"workload-{command}.log"
        self._stderr = log.open("ab")
        self._proc = subprocess.Popen(workload.argv(command, *args, "--until", self.until),
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=self._stderr, text=True)

    def stop(self, timeout: float = 300) -> dict[str, Any]:
        """Make it stop (it finishes what it is doing) and return its report."""
        self.workload.exec("touch", self.until)
        try:
            out, _ = self._proc.communicate(timeout=timeout)
        finally:
            self._stderr.close()
        if self._proc.returncode != 0:
            raise CommandFailed(f"workload {self.command} exited {self._proc.returncode}; "
                                f"see {self._stderr.name}")
        return dict(json.loads(out))

    def kill(self) -> None:
        """Teardown after a failure: stop the remote command too, without its report."""
        if self._proc.poll() is None:
            with contextlib.suppress(CommandFailed, subprocess.TimeoutExpired):
                self.workload.exec("touch", self.until)
                self._proc.wait(60)
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._stderr.close()


class Workload:
    """A pod of the release's image, beside the release but not part of it, that runs
    `workload.py` (mounted from a ConfigMap) with the API token in RINGKV_TOKEN: the bulk
    loads, read-backs, traffic and metrics sampling of the e2e tests happen inside the
    cluster, through the client Service or the node pods' own names. It outlives every
    node pod, the operator and `helm uninstall`."""

    def __init__(self, release: Release) -> None:
        self.release = release
        self.pod = f"{release.name}-workload"

    def create(self) -> Workload:
        rel, kube = self.release, self.release.kube
        labels = {"app.kubernetes.io/name": "ringkv-e2e-workload"}
        configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": self.pod, "labels": labels},
                     "data": {"workload.py": WORKLOAD.read_text()}}
        token = {"secretKeyRef": {"name": f"{rel.name}-tokens", "key": "api-token"}}
        pod = {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": self.pod, "labels": labels},
            "spec": {
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 1,
                "securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "runAsNonRoot": True},
                "containers": [{
                    "name": "workload", "image": rel.image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sleep", "infinity"],
                    "env": [{"name": "RINGKV_TOKEN", "valueFrom": token}],
                    "securityContext": {"readOnlyRootFilesystem": True,
                                        "allowPrivilegeEscalation": False},
                    "volumeMounts": [{"name": "script", "mountPath": "/workload"},
                                     {"name": "tmp", "mountPath": "/tmp"}],
                }],
                "volumes": [{"name": "script", "configMap": {"name": self.pod}},
                            {"name": "tmp", "emptyDir": {}}],
            },
        }
        kube.apply(configmap, pod)
        kube.kubectl("wait", "--for=condition=Ready", f"pod/{self.pod}", "--timeout=180s",
                     timeout=200)
        return self

    def argv(self, command: str, *args: str) -> list[str]:
        kube = self.release.kube
        return [kube.kubectl_bin, "--namespace", kube.namespace, "exec", self.pod, "--",
                "python", "/workload/workload.py", command, *args]

    def exec(self, *argv: str, timeout: float = 60) -> Completed:
        return self.release.kube.kubectl("exec", self.pod, "--", *argv, timeout=timeout)

    def run(self, command: str, *args: str, timeout: float = 900) -> dict[str, Any]:
        """Run a workload.py command to its end; its JSON report."""
        proc = self.release.kube._run(self.argv(command, *args), timeout, check=True)
        return dict(json.loads(proc.stdout))

    def start(self, command: str, *args: str) -> Background:
        """Start a workload.py command that runs until its `stop`."""
        return Background(self, command, args)


class ReadyEndpoints:
    """Polls the client Service's ready endpoints each second in a thread: how few there
    were while something happened (a Service with none refuses every connection)."""

    def __init__(self, release: Release) -> None:
        self.release = release
        self.counts: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="endpoints", daemon=True)

    def __enter__(self) -> ReadyEndpoints:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _poll(self) -> None:
        while not self._stop.wait(1.0):
            proc = self.release.kube.kubectl("get", "endpoints", self.release.name, "-o", "json",
                                             check=False, timeout=30)
            if proc.returncode == 0:
                subsets = json.loads(proc.stdout).get("subsets") or []
                self.counts.append(sum(len(s.get("addresses") or []) for s in subsets))


@dataclass
class Release:
    """One install of the chart in its own namespace, and what the tests learned about it.

    The release name contains "ringkv", so the chart's full name is the release name:
    pods `<name>-<i>`, Service `<name>`, Secret `<name>-tokens`, ConfigMap
    `<name>-membership`, Deployment `<name>-operator`.
    """

    kube: Kube
    name: str
    replicas: int
    rf: int
    log_dir: Path
    values: Sequence[str] = ()  # `--set` arguments of the install
    token: str = ""
    progress: set[str] = field(default_factory=set)  # steps done, for the tests that follow

    @property
    def node_names(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(self.replicas)]

    @property
    def image(self) -> str:
        return f"{os.environ.get('RINGKV_E2E_IMAGE', 'ringkv')}:{os.environ['RINGKV_E2E_TAG']}"

    @property
    def service_url(self) -> str:
        """The client Service as a pod in the cluster reaches it."""
        return f"http://{self.name}.{self.kube.namespace}.svc.cluster.local:8080"

    def pod_urls(self, count: int | None = None) -> str:
        """Node pods 0..count-1 by their own names (the headless Service publishes them
        ready or not), comma-separated: traffic coordinated by every node in turn."""
        return ",".join(f"http://{self.name}-{i}.{self.name}-peers.{self.kube.namespace}"
                        f".svc.cluster.local:8080" for i in range(count or self.replicas))

    @property
    def configmap(self) -> str:
        return f"{self.name}-membership"

    def install(self, wait: bool = True) -> None:
        """`helm install` with the freshly built image and `values`, waited for (`wait`)."""
        image, _, tag = self.image.rpartition(":")
        started = time.monotonic()
        say(f"helm install {self.name} (image {self.image}) in namespace {self.kube.namespace}")
        self.kube.helm("install", self.name, str(CHART),
                       "--set", f"image.repository={image}", "--set", f"image.tag={tag}",
                       "--set", "image.pullPolicy=IfNotPresent",
                       "--set", f"replicaCount={self.replicas}", "--set", f"replication.rf={self.rf}",
                       *self.values, *(("--wait", "--timeout", "8m") if wait else ()))
        say(f"installed in {time.monotonic() - started:.0f}s")

    def selector(self, component: str) -> str:
        return f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component={component}"

    def membership(self) -> dict[str, Any] | None:
        """The operator's document from the ConfigMap, None while there is none."""
        proc = self.kube.kubectl("get", "configmap", self.configmap, "-o", "json", check=False)
        if proc.returncode != 0:
            return None
        raw = (json.loads(proc.stdout).get("data") or {}).get("membership.json")
        return json.loads(raw) if raw else None

    def settled(self, names: list[str], after_epoch: int = 0) -> dict[str, Any] | None:
        """The document when it is settled at an epoch above `after_epoch` with exactly
        `names`, all normal; else None (a `wait_for` check)."""
        doc = self.membership()
        if (doc is None or not doc["settled"] or doc["epoch"] <= after_epoch
                or sorted(m["name"] for m in doc["members"]) != sorted(names)
                or any(m["state"] != "normal" for m in doc["members"])):
            return None
        return doc

    def wait_settled(self, after_epoch: int, timeout: float, what: str) -> dict[str, Any]:
        """`settled` for all nodes, polled; a timeout says where the cluster got stuck."""
        try:
            return wait_for(lambda: self.settled(self.node_names, after_epoch), timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.describe()}") from None

    def describe(self) -> str:
        """The membership document and each node pod's readiness, in a few lines."""
        doc = self.membership()
        lines = ["membership: none" if doc is None else
                 f"membership: epoch {doc['epoch']}, settled={doc['settled']}, base={doc.get('base')}, "
                 + ", ".join(f"{m['name']}={m['state']}" for m in doc["members"])]
        for pod in self.kube.pods(self.selector("node")):
            status = pod.get("status", {})
            restarts = sum(c.get("restartCount", 0) for c in status.get("containerStatuses") or [])
            lines.append(f"pod {pod['metadata']['name']}: phase={status.get('phase')} "
                         f"ready={pod_ready(pod)} restarts={restarts}")
        return "\n".join(lines)

    def cluster_agrees(self, client: Client, doc: dict[str, Any]) -> dict[str, Any] | None:
        """`GET /v1/cluster` when the nodes hold `doc`'s epoch (or newer), settled, with
        every member normal, reachable and ready; else None."""
        info: dict[str, Any] = client.cluster()
        members: list[dict[str, Any]] = info["members"]
        if (info["epoch"] < doc["epoch"] or not info["settled"]
                or sorted(m["name"] for m in members) != sorted(m["name"] for m in doc["members"])
                or not all(m["state"] == "normal" and m.get("reachable") and m.get("ready")
                           for m in members)):
            return None
        return info

    def quiet(self, client: Client, doc: dict[str, Any]) -> dict[str, Any] | None:
        """`cluster_agrees`, and nothing is moving any more: every member caught up, no
        pull active, no hint waiting for delivery; else None."""
        info = self.cluster_agrees(client, doc)
        if info is None or info["rebalance"]["active"] or not all(
                m.get("caught_up") and not m.get("hints_pending") for m in info["members"]):
            return None
        return info

    def dump_diagnostics(self) -> Path:
        """Everything needed to debug a failed run, as files under `log_dir`."""
        out = self.log_dir / "diagnostics"
        out.mkdir(parents=True, exist_ok=True)
        commands = {
            "objects.txt": ["get", "all,pvc,configmap,secret,pdb,networkpolicy", "-o", "wide"],
            "events.txt": ["get", "events", "--sort-by=.lastTimestamp"],
            "describe-pods.txt": ["describe", "pods"],
            "membership.yaml": ["get", "configmap", self.configmap, "-o", "yaml"],
        }
        pods = self.kube.kubectl("get", "pods", "-o", "name", check=False).stdout.split()
        for pod in pods:
            short = pod.removeprefix("pod/")
            commands[f"logs-{short}.txt"] = ["logs", pod, "--all-containers", "--tail=2000"]
            commands[f"logs-{short}-previous.txt"] = ["logs", pod, "--all-containers", "--previous",
                                                     "--tail=2000"]
        for filename, args in commands.items():
            proc = self.kube.kubectl(*args, check=False, timeout=60)
            (out / filename).write_text(proc.stdout + proc.stderr)
        return out


@contextlib.contextmanager
def installed(tools: tuple[str, str], request: pytest.FixtureRequest, prefix: str, nodes: int,
              rf: int, values: Sequence[str] = (),
              prepare: Callable[[Release], None] | None = None,
              namespace: str | None = None) -> Iterator[Release]:
    """A release `<prefix>-<random>` in a namespace of the same name (or in `namespace`,
    which another release owns), installed with the freshly built image and `values`
    (`--set` arguments) and waited for; `prepare` runs in the namespace first (e.g. to
    create a Secret the release mounts). Uninstalled, with its PVCs and its own namespace,
    at the end; diagnostics are saved when a test failed."""
    name = f"{prefix}-{secrets.token_hex(3)}"
    kube = Kube(tools[0], tools[1], namespace=namespace or name)
    log_dir = ROOT / "build" / "e2e-logs" / name
    log_dir.mkdir(parents=True, exist_ok=True)
    rel = Release(kube, name, replicas=nodes, rf=rf, log_dir=log_dir, values=tuple(values))
    failed_before = request.session.testsfailed
    done = False

    if namespace is None:
        kube.kubectl("create", "namespace", name)
        kube.kubectl("label", "namespace", name, "ringkv.io/e2e=true")
    try:
        if prepare is not None:
            prepare(rel)
        rel.install()
        rel.token = kube.secret_value(f"{name}-tokens", "api-token")
        done = True
        yield rel
    finally:
        failed = not done or request.session.testsfailed > failed_before
        if failed:
            say(f"a test failed: diagnostics in {rel.dump_diagnostics()}")
        if os.environ.get("RINGKV_E2E_KEEP") == "1":
            say(f"RINGKV_E2E_KEEP=1: release and namespace {name} left in place")
        else:
            _teardown(kube, name, own_namespace=namespace is None)
        if not failed:
            shutil.rmtree(log_dir, ignore_errors=True)  # only port-forward logs of a good run


def _teardown(kube: Kube, name: str, own_namespace: bool = True) -> None:
    """Uninstall, then delete what `helm uninstall` leaves (PVCs, the operator's ConfigMap
    and token Secret: by deleting the namespace when it is the release's own); every step
    runs even if an earlier one failed."""
    started = time.monotonic()
    instance = f"app.kubernetes.io/instance={name}"
    results = [
        kube.helm("uninstall", name, "--wait", "--timeout", "3m", check=False),
        # Hook Jobs (the restore) outlive `helm uninstall`, and their pods hold claims.
        kube.kubectl("delete", "job", "-l", instance, "--ignore-not-found", "--wait=true",
                     "--timeout=120s", check=False, timeout=180),
        kube.kubectl("delete", "pvc", "-l", instance, "--wait=true", "--timeout=180s",
                     check=False, timeout=240),
    ]
    if own_namespace:
        results.append(kube.kubectl("delete", "namespace", kube.namespace, "--wait=true",
                                    "--timeout=300s", check=False, timeout=360))
    else:
        results.append(kube.kubectl("delete", "configmap,secret", f"{name}-membership",
                                    f"{name}-tokens", "--ignore-not-found", check=False))
    say(f"torn down in {time.monotonic() - started:.0f}s")
    failures = [f"{' '.join(r.args)}: {r.stdout}{r.stderr}" for r in results if r.returncode != 0]
    assert not failures, "teardown failed:\n" + "\n".join(failures)

