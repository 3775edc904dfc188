"""What the e2e tests need around a real cluster: kubectl/helm, port-forwards, polling, traffic.

Everything talks to the cluster the way a user does: `kubectl` and `helm` from `.tools/bin`
(installed by `make tools`) or PATH, and the ringkv API only through `kubectl port-forward`
on 127.0.0.1, which works the same on the shared/k8s cluster, kind and minikube.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import os
import random
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

from ringkv.client import Client, NotFound, RingkvError

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


def parse_version(version: str) -> tuple[int, str]:
    """`<hlc>.<node>` -> (hlc, node), the order DESIGN.md gives versions."""
    hlc, _, node = version.partition(".")
    return int(hlc), node


class CommandFailed(AssertionError):
    """A kubectl or helm command exited non-zero; the message carries its output."""


@dataclass
class Kube:
    """kubectl and helm bound to one namespace."""

    kubectl_bin: str
    helm_bin: str
    namespace: str

    def _run(self, argv: list[str], timeout: float, check: bool) -> Completed:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise CommandFailed(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc

    def kubectl(self, *args: str, timeout: float = 120, check: bool = True) -> Completed:
        return self._run([self.kubectl_bin, "--namespace", self.namespace, *args], timeout, check)

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


class ForwardPool:
    """One self-healing port-forward per node pod, so traffic can go through every node and
    keep going while any one of them is deleted and recreated."""

    def __init__(self, kube: Kube, pod_names: list[str], log_dir: Path) -> None:
        self.forwards = [PortForward(kube, f"pod/{name}", log_dir=log_dir) for name in pod_names]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="port-forward supervisor", daemon=True)

    @property
    def urls(self) -> list[str]:
        return [f.url for f in self.forwards]

    def __enter__(self) -> ForwardPool:
        for f in self.forwards:
            f.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        for f in self.forwards:
            f.close()

    def _supervise(self) -> None:
        """Respawn a forward whose kubectl exited (it does when its pod goes away); a pod that
        is not back yet makes kubectl exit again at once, so this simply retries each second."""
        while not self._stop.wait(1.0):
            for f in self.forwards:
                if not f.running():
                    f.restarts += 1
                    f.spawn()


@dataclass
class TrafficReport:
    """What the background traffic saw; `violations` must stay empty."""

    writes_ok: int = 0
    writes_failed: int = 0
    reads_ok: int = 0
    reads_failed: int = 0
    violations: list[str] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"writes {self.writes_ok} ok / {self.writes_failed} failed, reads {self.reads_ok} ok / "
                f"{self.reads_failed} failed, errors {self.errors}, violations {len(self.violations)}")


class Traffic:
    """Quorum writes and reads in two background threads, checked as they go.

    The writer overwrites the keys of `acked` and records there the newest version each
    write was acknowledged with; `static` keys are only read. A read may return the
    acknowledged version or a newer one (a later write, or one whose outcome the client
    never learned), but never an older one and never "not found": DESIGN.md rule 1. The
    floor a read is checked against is the acknowledged version when the read *started*.
    """

    def __init__(self, urls: list[str], token: str, acked: dict[str, str], static: dict[str, str]) -> None:
        self.urls = urls
        self.token = token
        self.acked = acked
        self.static = static
        self.live_keys = sorted(acked)
        self.static_keys = sorted(static)
        self.report = TrafficReport()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._writer, name="e2e writer", daemon=True),
                         threading.Thread(target=self._reader, name="e2e reader", daemon=True)]
        self._seq = 0

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> TrafficReport:
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(60)
        return self.report

    def counts(self) -> tuple[int, int]:
        """(acknowledged writes, successful reads) so far."""
        with self._lock:
            return self.report.writes_ok, self.report.reads_ok

    def _error(self, exc: RingkvError) -> None:
        with self._lock:
            self.report.errors[exc.code] = self.report.errors.get(exc.code, 0) + 1

    def _violation(self, text: str) -> None:
        with self._lock:
            if len(self.report.violations) < 50:
                self.report.violations.append(text)

    def _clients(self) -> list[Client]:
        """One client per node, each trying its own node first and the others after it, so
        requests are coordinated by every node in turn and still fail over."""
        n = len(self.urls)
        return [Client(self.urls[i:] + self.urls[:i], token=self.token, timeout=5) for i in range(n)]

    def _writer(self) -> None:
        rng = random.Random(1)
        clients = self._clients()
        try:
            while not self._stop.is_set():
                client = rng.choice(clients)
                key = rng.choice(self.live_keys)
                self._seq += 1
                try:
                    version = client.put(key, f"{key}={self._seq}".encode())
                except RingkvError as exc:
                    # Outcome unknown (it may have landed): it only raises no floor.
                    self._error(exc)
                    with self._lock:
                        self.report.writes_failed += 1
                    continue
                with self._lock:
                    self.report.writes_ok += 1
                    old = self.acked.get(key)
                    if old is None or parse_version(version) > parse_version(old):
                        self.acked[key] = version
        finally:
            for c in clients:
                c.close()

    def _reader(self) -> None:
        rng = random.Random(2)
        clients = self._clients()
        try:
            while not self._stop.is_set():
                client = rng.choice(clients)
                pool = self.live_keys if rng.random() < 0.7 else self.static_keys
                key = rng.choice(pool)
                with self._lock:
                    floor = self.acked.get(key) or self.static.get(key)
                try:
                    entry = client.get(key)
                except NotFound:
                    if floor is not None:
                        self._violation(f"GET {key}: not found, but {floor} was acknowledged")
                    with self._lock:
                        self.report.reads_ok += 1
                    continue
                except RingkvError as exc:
                    self._error(exc)
                    with self._lock:
                        self.report.reads_failed += 1
                    continue
                with self._lock:
                    self.report.reads_ok += 1
                if floor is not None and parse_version(entry.version) < parse_version(floor):
                    self._violation(f"GET {key}: {entry.version} is older than acknowledged {floor}")
                if not entry.value.startswith(key.encode()):
                    self._violation(f"GET {key}: value {entry.value[:60]!r} was never written to it")
        finally:
            for c in clients:
                c.close()


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
    # key -> newest acknowledged version, filled in by the tests as they write
    static: dict[str, str] = field(default_factory=dict)
    acked: dict[str, str] = field(default_factory=dict)
    progress: set[str] = field(default_factory=set)  # steps done, for the tests that follow

    @property
    def node_names(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(self.replicas)]

    @property
    def configmap(self) -> str:
        return f"{self.name}-membership"

    def install(self) -> None:
        """`helm install` with the freshly built image and `values`, waited for."""
        image = os.environ.get("RINGKV_E2E_IMAGE", "ringkv")
        tag = os.environ["RINGKV_E2E_TAG"]
        started = time.monotonic()
        say(f"helm install {self.name} (image {image}:{tag}) in namespace {self.kube.namespace}")
        self.kube.helm("install", self.name, str(CHART),
                       "--set", f"image.repository={image}", "--set", f"image.tag={tag}",
                       "--set", "image.pullPolicy=IfNotPresent",
                       "--set", f"replicaCount={self.replicas}", "--set", f"replication.rf={self.rf}",
                       *self.values, "--wait", "--timeout", "8m")
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

