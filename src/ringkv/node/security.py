"""Optional TLS for the public API and the internal peer port, and bearer tokens.

With a certificate and key configured, the public API is HTTPS and the internal port
speaks TLS. With a CA configured as well, the internal port is mutual TLS: a peer must
present a certificate signed by that CA (on top of the cluster token), and peers verify
each other's certificates against it. Certificates name the addresses peers dial (the
headless-Service DNS names in Kubernetes, 127.0.0.1 locally).

`has_token` checks `Authorization: Bearer <token>` for the public API and for the local
cluster's control endpoint.
"""

from __future__ import annotations

import hmac
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def has_token(fields: Sequence[str], token: bytes) -> bool:
    """Whether the request's Authorization fields are exactly one `Bearer <token>`, in
    constant time. The scheme is case-insensitive and one or more spaces follow it
    (RFC 9110 §11.1, 11.4)."""
    given = b""
    if len(fields) == 1:
        scheme, _, rest = fields[0].partition(" ")
        if scheme.lower() == "bearer":
            given = rest.lstrip(" ").encode("utf-8", "replace")
    return hmac.compare_digest(given, token)


@dataclass(frozen=True)
class TlsFiles:
    cert: str = ""
    key: str = ""
    ca: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TlsFiles:
        return cls(env.get("RINGKV_TLS_CERT_FILE", ""), env.get("RINGKV_TLS_KEY_FILE", ""),
                   env.get("RINGKV_TLS_CA_FILE", ""))


def server_context(files: TlsFiles, require_client_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(files.cert, files.key)
    if require_client_cert and files.ca:
        ctx.load_verify_locations(files.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """How a node (or the operator) dials a peer: verify it, and show our certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files.ca or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.cert:
        ctx.load_cert_chain(files.cert, files.key)
    return ctx
