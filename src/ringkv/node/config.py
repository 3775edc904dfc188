"""Node settings, layered: defaults < config file (JSON) < RINGKV_* environment < flags.

Every setting is a field here with its default; its environment variable is the field
name upper-cased with a RINGKV_ prefix (`max_value_bytes` -> RINGKV_MAX_VALUE_BYTES).

The handoff budget (`handoff_*`) paces re-replication and anti-entropy pulls, like
Cassandra's stream throughput cap and Riak's handoff concurrency: `handoff_ranges` ranges
at once while this node serves fewer than `handoff_busy_requests` client requests a second;
above that, one page at a time for at most `handoff_busy_share` of the time, so clients
keep most of the CPU and handoff still finishes. `handoff_max_mb_per_s` caps the rate in
both cases (0: no cap).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from .security import TlsFiles
from .versions import MAX_CLOCK_SKEW_MS, valid_node_name


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    cluster_name: str = "ringkv"  # names the cluster's backups (the chart: the release's full name)
    node_name: str = ""  # default: the host name (a pod's name in Kubernetes)
    data_dir: str = "./data"
    host: str = "0.0.0.0"
    port: int = 8080
    internal_host: str = "0.0.0.0"
    internal_port: int = 9080
    api_token: str = ""  # empty: the public API needs no token
    cluster_token: str = ""  # token of the internal port; required when api_token is set
    membership_file: str = ""  # initial membership document (local mode)
    storage: str = "sqlite"  # sqlite | memory
    sqlite_synchronous: str = "NORMAL"
    max_key_bytes: int = 1024
    max_value_bytes: int = 1024 * 1024
    replica_timeout: float = 2.0  # seconds a coordinator waits for one replica
    body_timeout: float = 30.0  # seconds a client may take to send a request body
    idle_timeout: float = 30.0  # seconds a connection may idle, or take to send its headers
    max_connections: int = 1000  # open connections per port (public: 503 past it; peers: see transport)
    # A second listener for /healthz and /readyz only, outside max_connections, so that
    # liveness and readiness probes never depend on client load (0: none).
    probe_port: int = 0
    vnodes: int = 64
    gc_grace: int = 86400  # seconds a tombstone is kept
    hint_ttl: int = 10800  # seconds a hint is kept; well below gc_grace
    hint_interval: float = 1.0  # seconds between hint replay rounds
    anti_entropy_interval: float = 600.0  # a round reads every replicated range
    handoff_ranges: int = 4  # ranges pulled at once while clients are quiet
    handoff_busy_requests: float = 20.0  # client requests/s on this node that mean "busy"
    handoff_busy_share: float = 0.25  # share of the time handoff pulls while busy; 1: no throttle
    handoff_max_mb_per_s: float = 0.0  # key+value MB/s handoff may pull; 0: no cap
    max_clock_drift: float = 3600.0  # seconds a version may be ahead of this node's clock
    # On SIGTERM: seconds to wait for the membership to say this stop is a removal (the
    # operator marks a pod the StatefulSet scaled in `leaving`), and how long the node may
    # take in all before it exits (keep it below the pod's terminationGracePeriodSeconds).
    leave_wait: float = 0.0
    shutdown_timeout: float = 15.0
    log_format: str = "text"  # text | json
    log_level: str = "INFO"
    tls_cert_file: str = ""  # PEM certificate: HTTPS on the API, TLS on the peer port
    tls_key_file: str = ""
    tls_ca_file: str = ""  # CA of the peers' certificates: mutual TLS on the peer port
    clock_skew_ms: int = 0  # testing aid: shift this node's physical clock

    def validate(self) -> Settings:
        if not valid_node_name(self.node_name):
            raise ConfigError(
                f"node_name {self.node_name[:64]!r} must be 1-253 letters, digits, '.', '_' or '-'"
            )
        if len(self.cluster_name) > 63 or not valid_node_name(self.cluster_name):
            raise ConfigError(
                f"cluster_name {self.cluster_name[:64]!r} must be 1-63 letters, digits, '.', '_' or '-'"
            )
        if self.storage not in ("sqlite", "memory"):
            raise ConfigError(f"storage must be sqlite or memory, not {self.storage!r}")
        if self.api_token and not self.cluster_token:
            raise ConfigError("cluster_token must be set when api_token is set")
        if self.api_token and self.api_token == self.cluster_token:
            raise ConfigError("api_token and cluster_token must differ")
        if self.max_key_bytes < 1 or self.max_value_bytes < 1:
            raise ConfigError("size limits must be positive")
        if self.max_connections < 1 or self.idle_timeout <= 0 or self.body_timeout <= 0:
            raise ConfigError("max_connections, idle_timeout and body_timeout must be positive")
        if self.probe_port and self.probe_port in (self.port, self.internal_port):
            raise ConfigError("probe_port must differ from port and internal_port")
        if not 0 <= self.probe_port <= 65535:
            raise ConfigError("probe_port must be a port number, or 0 for none")
        if self.handoff_ranges < 1 or not 0 < self.handoff_busy_share <= 1:
            raise ConfigError("handoff_ranges must be at least 1, handoff_busy_share in (0, 1]")
        if not (self.handoff_busy_requests >= 0 and self.handoff_max_mb_per_s >= 0):
            raise ConfigError("handoff_busy_requests and handoff_max_mb_per_s must not be negative")
        if self.leave_wait < 0 or self.shutdown_timeout <= 0:
            raise ConfigError("leave_wait must not be negative, shutdown_timeout must be positive")
        if self.hint_ttl >= self.gc_grace:
            raise ConfigError("hint_ttl must be shorter than gc_grace")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("tls_cert_file and tls_key_file go together")
        if self.tls_ca_file and not self.tls_cert_file:
            raise ConfigError("tls_ca_file needs tls_cert_file and tls_key_file")
        if self.log_format not in ("text", "json"):
            raise ConfigError("log_format must be text or json")
        if abs(self.clock_skew_ms) > MAX_CLOCK_SKEW_MS:
            raise ConfigError(f"clock_skew_ms must be within ±{MAX_CLOCK_SKEW_MS} (ten years)")
        return self


    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(self.tls_cert_file, self.tls_key_file, self.tls_ca_file)


def _coerce(name: str, kind: Any, raw: Any) -> Any:
    try:
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {raw!r} is not a valid {kind}") from exc


def load(
    file: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if file:
        with open(file, encoding="utf-8") as fh:
            values.update(json.load(fh))
    known = {f.name: f.type for f in fields(Settings)}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(f"unknown settings in {file}: {sorted(unknown)}")
    for name in known:
        key = f"RINGKV_{name.upper()}"
        if key in env:
            values[name] = env[key]
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    settings = Settings(**{k: _coerce(k, known[k], v) for k, v in values.items()})
    if not settings.node_name:
        settings = replace(settings, node_name=socket.gethostname())
    return settings.validate()
