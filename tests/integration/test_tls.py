"""Optional TLS: HTTPS on the API, mutual TLS on the peer port (certificates from openssl)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from harness import API_TOKEN, StaticCluster, hello, read_frames, wait_for

from ringkv.client import Client
from ringkv.local import system_tools

pytestmark = pytest.mark.skipif(system_tools.find("openssl") is None,
                                reason="needs the openssl CLI (`make tools` installs it as root)")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(root: Path) -> dict[str, Path]:
    """A CA, and one certificate for 127.0.0.1 signed by it; plus a stranger's CA and cert."""
    root.mkdir()
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                f"/CN={ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", cwd=root)
    (root / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ca in (("node", "ca"), ("stranger", "other-ca")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
                f"{name}.key", "-out", f"{name}.csr", cwd=root)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem",
                cwd=root)
    return {p.name: p for p in root.iterdir()}


def peer_hello(port: int, pki: dict[str, Path], cert: str | None) -> list[Any]:
    """A hello with the cluster token on the peer port, over TLS that trusts the cluster
    CA and presents `cert` (None: no certificate); the node's answer."""
    ctx = ssl.create_default_context(cafile=str(pki["ca.pem"]))
    if cert:
        ctx.load_cert_chain(str(pki[f"{cert}.pem"]), str(pki[f"{cert}.key"]))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(hello())
        frames, _ = read_frames(tls, expect=1)  # TLS 1.3 reports a refused certificate here
    if not frames:
        raise ConnectionError("closed without answering the hello")
    return frames[0]


def test_https_api_and_mutual_tls_between_peers(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    cluster = StaticCluster(tmp_path, extra_env={
        "RINGKV_TLS_CERT_FILE": str(pki["node.pem"]),
        "RINGKV_TLS_KEY_FILE": str(pki["node.key"]),
        "RINGKV_TLS_CA_FILE": str(pki["ca.pem"]),
    })
    https = [n.url.replace("http://", "https://") for n in cluster.nodes]
    for node in cluster.nodes:
        node.start()
    try:
        ca = ssl.create_default_context(cafile=str(pki["ca.pem"]))

        def ready(url: str) -> bool:
            with urllib.request.urlopen(url + "/readyz", timeout=2, context=ca) as resp:
                return resp.status == 200

        for url in https:
            wait_for(lambda url=url: ready(url), 60, f"{url} ready over https")
        # Replication runs over the TLS peer port: write via one node, read `all` via another.
        with Client(https[0], token=API_TOKEN, ca_file=str(pki["ca.pem"])) as client:
            version = client.put("secure", b"value")
        with Client(https[2], token=API_TOKEN, ca_file=str(pki["ca.pem"])) as client:
            entry = client.get("secure", consistency="all")
        assert entry.value == b"value" and entry.version == version

        # Plain HTTP to the TLS port gets no answer.
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(cluster.nodes[0].url + "/healthz", timeout=5)
        # A client that does not trust the CA refuses the node's certificate.
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(https[0] + "/healthz", timeout=5,
                                   context=ssl.create_default_context())

        # The peer port wants a client certificate from the cluster's CA: with one (and the
        # cluster token) the hello is answered; the same hello without one, or with a
        # stranger's, is not. (A hello, not a malformed frame: the node closes on any
        # malformed frame, so only a real hello tells a refused certificate apart.)
        port = cluster.nodes[0].internal_port
        assert peer_hello(port, pki, "node")[1:] == [0, {"node": "node-0"}]
        for cert in (None, "stranger"):
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                reply = peer_hello(port, pki, cert)
                raise AssertionError(f"hello with {cert or 'no'} certificate answered: {reply}")
    finally:
        cluster.stop()
