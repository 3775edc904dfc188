"""The chart with `tls.enabled=true` on a real Kubernetes: a second, small release (3 nodes,
rf=3, no volumes) whose certificate comes from a Secret the test makes.

The test is the CA: it signs one certificate for every node's headless-Service name, the
client Service's names and `localhost` (clients reach the API through `kubectl
port-forward`), valid for server and client auth, as values.yaml asks. Then: HTTPS with
the CA works (PUT, then GET at `all`); plain HTTP and a client that does not trust the CA
get nothing; the peer port answers a CA-signed client only; the nodes and the operator
reach each other over mutual TLS (the membership settles, every key has rf copies);
`helm test` passes over HTTPS. And liveness does not depend on client load: a node held at
its client-connection cap (`max_connections` is 40 here, liveness gives up after 6 s) is
never restarted, because its probes use the probe port.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from e2e.support import PortForward, Release, installed, make_pki, say, wait_for

from ringkv.client import Client
from ringkv.node.transport import HEADER, pack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

TLS_NODES = 3
TLS_RF = 3
SECRET = "ringkv-e2e-tls"
KEYS = 50
MAX_CONNECTIONS = 40
LIVENESS_PERIOD, LIVENESS_FAILURES = 2, 3  # a node failing liveness is restarted within 6 s


class TlsRelease:
    """The release, its CA and certificate files, and a stranger's (another CA's)."""

    def __init__(self, release: Release, files: dict[str, Path], stranger: dict[str, Path]) -> None:
        self.release = release
        self.files = files
        self.stranger = stranger

    @property
    def ca(self) -> Path:
        return self.files["ca.crt"]

    def peer_host(self, index: int) -> str:
        """The name peers and the operator dial node `index` by."""
        name = self.release.name
        return f"{name}-{index}.{name}-peers.{name}.svc.cluster.local"


@pytest.fixture(scope="module")
def tls(tools: tuple[str, str], request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRelease]:
    pki_dir = tmp_path_factory.mktemp("pki")
    files: dict[str, Path] = {}

    def make_secret(release: Release) -> None:
        name = namespace = release.name
        names = [f"{pod}.{name}-peers.{namespace}.svc.cluster.local" for pod in release.node_names]
        names += [name, f"{name}.{namespace}", f"{name}.{namespace}.svc",
                  f"{name}.{namespace}.svc.cluster.local", "localhost"]
        files.update(make_pki(name, names).write(pki_dir))
        release.kube.kubectl("create", "secret", "generic", SECRET,
                             *(f"--from-file={key}={path}" for key, path in files.items()))
        say(f"Secret {SECRET}: a fresh CA and a certificate for {len(names)} names")

    stranger_dir = tmp_path_factory.mktemp("stranger")
    stranger = make_pki("stranger", ["localhost"]).write(stranger_dir)
    with installed(tools, request, "ringkv-tls", TLS_NODES, TLS_RF,
                   values=["--set", "tls.enabled=true", "--set", f"tls.secretName={SECRET}",
                           "--set", "persistence.enabled=false",
                           "--set", f"node.extraEnv.RINGKV_MAX_CONNECTIONS={MAX_CONNECTIONS}",
                           "--set", f"node.probes.liveness.periodSeconds={LIVENESS_PERIOD}",
                           "--set", f"node.probes.liveness.failureThreshold={LIVENESS_FAILURES}"],
                   prepare=make_secret) as release:
        yield TlsRelease(release, files, stranger)


@pytest.fixture(scope="module")
def https(tls: TlsRelease) -> Iterator[PortForward]:
    """`kubectl port-forward svc/<release>`, reached as https://localhost:<port>."""
    forward = PortForward(tls.release.kube, f"svc/{tls.release.name}",
                          log_dir=tls.release.log_dir, ca_file=tls.ca)
    try:
        yield forward.start()
    finally:
        forward.close()


def test_https_with_the_ca_and_rf_copies_over_mutual_tls(tls: TlsRelease, https: PortForward) -> None:
    release = tls.release
    doc = release.wait_settled(0, 240, f"a settled membership of {release.node_names}")
    say(f"TLS release settled at epoch {doc['epoch']}")
    with Client(https.ensure().url, token=release.token, ca_file=str(tls.ca), timeout=10) as client:
        # /v1/cluster asks every member over the peer port: all reachable means mutual TLS
        # works between the nodes; settled means the operator reached them too.
        wait_for(lambda: release.cluster_agrees(client, doc), 120, "GET /v1/cluster to agree")
        version = client.put("tls/first", b"over https")
        entry = client.get("tls/first", consistency="all")
        assert (entry.value, entry.version) == (b"over https", version)

        written = {f"tls/{i:03d}": client.put(f"tls/{i:03d}", f"v{i}".encode()) for i in range(KEYS)}

        def rf_copies() -> bool:
            for key, version in written.items():
                target = [r for r in client.replicas(key)["replicas"] if r["in_target"]]
                if len(target) != TLS_RF or not all(
                        r["status"] == "ok" and r["live"] and r["version"] == version for r in target):
                    return False
            return True

        wait_for(rf_copies, 60, f"{TLS_RF} up-to-date copies of {KEYS} keys")
    say(f"{KEYS} keys written over HTTPS, {TLS_RF} copies each")


def test_plain_http_and_untrusting_clients_get_nothing(tls: TlsRelease, https: PortForward) -> None:
    https.ensure()
    with pytest.raises((OSError, http.client.HTTPException)):  # never an HTTP answer
        urllib.request.urlopen(f"http://127.0.0.1:{https.port}/healthz", timeout=10)
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(f"{https.url}/healthz", timeout=10,
                               context=ssl.create_default_context())
    # The certificate names the client Service, as a client inside the cluster dials it.
    service = f"{tls.release.name}.{tls.release.name}.svc"
    context = ssl.create_default_context(cafile=str(tls.ca))
    with socket.create_connection(("127.0.0.1", https.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=service) as conn:
        assert conn.getpeercert() is not None
    # And the CA-verified channel serves again after the refusals.
    assert https.healthy()


def test_the_peer_port_wants_a_certificate_from_the_cluster_ca(tls: TlsRelease) -> None:
    release = tls.release
    token = release.kube.secret_value(f"{release.name}-tokens", "cluster-token")
    forward = PortForward(release.kube, f"pod/{release.name}-0", remote_port=9080,
                          log_dir=release.log_dir)
    host = tls.peer_host(0)

    def hello(cert: dict[str, Path] | None) -> object:
        """A hello with the cluster token over TLS (verifying the node as `host`), showing
        `cert` if given; the node's answer frame."""
        context = ssl.create_default_context(cafile=str(tls.ca))
        if cert is not None:
            context.load_cert_chain(str(cert["tls.crt"]), str(cert["tls.key"]))
        with socket.create_connection(("127.0.0.1", forward.port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=host) as conn:
            conn.sendall(pack([0, "hello", 0, {"token": token, "node": "e2e-probe"}]))
            head = _read(conn, HEADER.size)
            return msgpack.unpackb(_read(conn, HEADER.unpack(head)[0]))

    try:
        forward.spawn()
        reply = wait_for(lambda: hello(tls.files), 60, f"a hello on {host}:9080 with the CA's certificate")
        assert reply == [0, 0, {"node": f"{release.name}-0"}], reply
        for who, cert in (("no certificate", None), ("another CA's certificate", tls.stranger)):
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                hello(cert)
            say(f"peer port refused a client with {who}")
        assert hello(tls.files) == reply  # the forward still works: the refusals were the node's
    finally:
        forward.close()


# Run inside a node's container: open HTTPS connections to its own API port until one is
# refused (503 too_many_connections), say so, and hold them all for HOLD seconds.
AT_THE_CAP = """
import socket, ssl, sys, time
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
held = []
for _ in range(int(sys.argv[1]) + 10):
    conn = ctx.wrap_socket(socket.create_connection(("127.0.0.1", 8080), timeout=30))
    conn.sendall(b"GET /readyz HTTP/1.1\\r\\nHost: n\\r\\n\\r\\n")
    status = conn.recv(65536).split(b"\\r\\n")[0].decode()
    held.append(conn)
    if " 503 " in status:
        print(len(held), status, flush=True)
        break
time.sleep(float(sys.argv[2]))
print("released", flush=True)
"""


def liveness_failures(release: Release, pod: str) -> int:
    """How many failed liveness probes the kubelet has reported for `pod`."""
    events = release.kube.get_json("events", "--field-selector",
                                   f"involvedObject.name={pod},reason=Unhealthy")["items"]
    return sum(e.get("count") or 1 for e in events if e.get("message", "").startswith("Liveness"))


def test_a_node_at_its_connection_cap_stays_live(tls: TlsRelease) -> None:
    """The probes use the probe port (8081), which max_connections does not count: a node
    whose API port answers 503 too_many_connections for three liveness windows is neither
    reported unhealthy nor restarted, and stays ready."""
    release = tls.release
    pod = f"{release.name}-0"
    status = release.kube.get_json("pod", pod)["status"]
    restarts = sum(c["restartCount"] for c in status["containerStatuses"])
    failures = liveness_failures(release, pod)
    hold = 3 * LIVENESS_PERIOD * LIVENESS_FAILURES + 2
    exec_argv = [release.kube.kubectl_bin, "--namespace", release.kube.namespace, "exec", pod,
                 "--", "python", "-c", AT_THE_CAP, str(MAX_CONNECTIONS), str(hold)]
    holder = subprocess.Popen(exec_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        first = holder.stdout.readline().split(" ", 1)  # blocks until the cap is reached
        assert len(first) == 2 and " 503 " in first[1], (first, holder.stderr.read())
        say(f"{pod} at its cap: connection {first[0]} got {first[1].strip()}; holding {hold}s")
        out, err = holder.communicate(timeout=hold + 60)
        assert "released" in out, out + err
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    status = release.kube.get_json("pod", pod)["status"]
    assert sum(c["restartCount"] for c in status["containerStatuses"]) == restarts
    assert liveness_failures(release, pod) == failures, "liveness failed while clients held the API port"
    ready = [c["status"] for c in status["conditions"] if c["type"] == "Ready"]
    assert ready == ["True"], json.dumps(status["conditions"])


def test_helm_test_passes_over_https(tls: TlsRelease) -> None:
    proc = tls.release.kube.helm("test", tls.release.name, "--timeout", "5m", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _read(conn: ssl.SSLSocket, size: int) -> bytes:
    """Exactly `size` bytes; ConnectionError if the other side closes first (TLS 1.3 reports
    a refused client certificate only here, after the handshake)."""
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed by the node")
        data += chunk
    return data
