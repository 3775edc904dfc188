"""HTTP load generator for ringkv, etcd and the dict-server ceiling.

A raw asyncio HTTP/1.1 client: one keep-alive connection per worker, request bytes built
by concatenating pre-built templates, responses parsed only as far as the status line and
the body length. A general-purpose client (aiohttp's ClientSession) saturates a core at
6-9k req/s on this hardware, so it would measure itself rather than the server.

Two modes:

- closed loop: every connection sends its next request as soon as the previous one
  answered (throughput at a fixed concurrency);
- open loop: requests are due at a fixed rate and latency is measured from the time a
  request was *due*, not from when it was sent, so a stalled server is charged for the
  requests it kept waiting (no coordinated omission, as in wrk2).

Every run has a warm-up, then a measured window of fixed length; only operations that
complete inside the window count.

The ``cas`` workload measures uncontended compare-and-set: the preload writes every key
once and keeps the version each answer names; then every connection replaces the keys whose
number is its own modulo the connection count, each on condition that it is still the
version of the key's last write, and keeps the next one (ringkv: ``PUT`` with ``If-Match``;
etcd: a ``Txn`` comparing ``mod_revision``).
Nobody else writes those keys, so every condition must hold: a refusal is a bug and is
counted as error ``412``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import random
import resource
import ssl
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

KINDS = ("ringkv", "dict", "etcd")
WORKLOADS = ("write", "read", "mixed", "cas")
MODES = ("closed", "open")
CONSISTENCY = ("one", "quorum", "all")

T = TypeVar("T")
PRELOAD_ATTEMPTS = 3
ALPHABET = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def key_name(i: int, key_size: int) -> bytes:
    """Key number ``i`` of a keyspace: ``k`` and ``i`` zero-padded to ``key_size`` bytes."""
    return b"k%0*d" % (key_size - 1, i)


def payload(size: int, seed: int | None) -> bytes:
    """The value every write of a run sends (printable, from the run's seed)."""
    rng = random.Random(seed)
    return bytes(rng.choice(ALPHABET) for _ in range(size))


# --------------------------------------------------------------------------- histogram


class Histogram:
    """Log-linear latency histogram in integer microseconds (HdrHistogram's layout).

    Values below 256 us get one bucket each; above that every power-of-two range is split
    into 128 equal buckets, so a bucket is at most 1/128 (0.8%) of its lower bound wide and
    a reported value (the bucket midpoint) is within 0.4% of any value recorded in it.
    Recording is O(1) with no allocation, and histograms of separate runs merge exactly.
    """

    SUB_BITS = 7
    _SUB = 1 << SUB_BITS  # 128 buckets per power of two
    _LINEAR = _SUB << 1  # values below 256 are exact

    def __init__(self) -> None:
        self.counts: list[int] = [0] * self._LINEAR
        self.total = 0
        self.sum = 0
        self.min = 0
        self.max = 0

    @classmethod
    def index(cls, us: int) -> int:
        """Bucket index of a value in microseconds (negative values count as 0)."""
        if us < cls._LINEAR:
            return max(us, 0)
        shift = us.bit_length() - cls.SUB_BITS - 1
        return (shift << cls.SUB_BITS) + (us >> shift)

    @classmethod
    def bounds(cls, idx: int) -> tuple[int, int]:
        """Lowest and highest value (inclusive) that land in bucket ``idx``."""
        if idx < cls._LINEAR:
            return idx, idx
        shift = (idx >> cls.SUB_BITS) - 1
        low = (idx - (shift << cls.SUB_BITS)) << shift
        return low, low + (1 << shift) - 1

    def record(self, us: int) -> None:
        us = max(us, 0)
        idx = self.index(us)
        counts = self.counts
        if idx >= len(counts):
            counts.extend([0] * (idx + 1 - len(counts)))
        counts[idx] += 1
        if self.total == 0 or us < self.min:
            self.min = us
        self.max = max(self.max, us)
        self.total += 1
        self.sum += us

    def merge(self, other: Histogram) -> None:
        if other.total == 0:
            return
        if len(other.counts) > len(self.counts):
            self.counts.extend([0] * (len(other.counts) - len(self.counts)))
        for i, n in enumerate(other.counts):
            if n:
                self.counts[i] += n
        self.min = other.min if self.total == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.total += other.total
        self.sum += other.sum

    def percentile(self, q: float) -> float:
        """Value at quantile ``q`` in [0, 1]: the rank-ceil(q*n) value, to bucket precision."""
        if self.total == 0:
            return 0.0
        rank = min(self.total, max(1, math.ceil(q * self.total)))
        seen = 0
        for idx, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                low, high = self.bounds(idx)
                return min(max((low + high) / 2, self.min), self.max)
        return float(self.max)  # unreachable: counts sum to total

    def summary(self) -> dict[str, float]:
        """p50/p90/p99/p99.9/max/mean in microseconds."""
        return {
            "p50": self.percentile(0.50),
            "p90": self.percentile(0.90),
            "p99": self.percentile(0.99),
            "p999": self.percentile(0.999),
            "max": float(self.max),
            "mean": self.sum / self.total if self.total else 0.0,
        }


# ------------------------------------------------------------------------- HTTP client


def parse_response(buf: bytearray, eof: bool = False) -> tuple[int, bytes, int, bool] | None:
    """Parse one HTTP/1.1 response at the start of ``buf``.

    Returns (status, body, bytes consumed, server-will-close) or None when incomplete.
    Only the status line, Content-Length, Transfer-Encoding and Connection are read.
    ``eof`` says the peer has closed, which ends a body sent without a length.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    status = int(head[9:12])
    close = b"\r\nconnection: close" in head
    start = end + 4
    if status in (204, 304) or 100 <= status < 200:
        return status, b"", start, close
    pos = head.find(b"\r\ncontent-length:")
    if pos >= 0:
        eol = head.find(b"\r\n", pos + 17)
        length = int(head[pos + 17 : eol if eol >= 0 else len(head)])
        if len(buf) < start + length:
            return None
        return status, bytes(buf[start : start + length]), start + length, close
    if b"\r\ntransfer-encoding: chunked" in head:
        parsed = _parse_chunked(buf, start)
        if parsed is None:
            return None
        body, consumed = parsed
        return status, body, consumed, close
    # No length: the body runs to the end of the connection.
    if eof:
        return status, bytes(buf[start:]), len(buf), True
    return None


def _parse_chunked(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at ``pos``; (body, end offset) or None if incomplete."""
    parts: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        pos = eol + 2
        if size == 0:
            # Skip trailers up to the empty line that ends the message.
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                if eol == pos:
                    return b"".join(parts), eol + 2
                pos = eol + 2
        if len(buf) < pos + size + 2:
            return None
        parts.append(bytes(buf[pos : pos + size]))
        pos += size + 2


class _HttpProtocol(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.sent_at = 0.0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast, not a check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        parsed = parse_response(self.buf)
        if parsed is None:
            return
        status, body, consumed, close = parsed
        del self.buf[:consumed]
        if close:
            self.close()
        self._deliver(status, body)

    def _deliver(self, status: int, body: bytes) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((status, body))

    def eof_received(self) -> bool:
        parsed = parse_response(self.buf, eof=True)
        if parsed is not None:
            self.buf.clear()
            self._deliver(parsed[0], parsed[1])
        return False  # let the transport close; connection_lost fails any waiter

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError(f"connection lost: {exc}" if exc else "connection closed"))

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        waiter: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self.waiter = waiter
        self.sent_at = time.perf_counter()
        self.transport.write(data)
        return waiter

    def abort(self, exc: Exception) -> None:
        """Fail the pending request with ``exc`` and drop the connection."""
        self._fail(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class ConnectFailed(Exception):
    """The TCP (or TLS) connection to a target could not be opened."""


class HttpClient:
    """A reconnecting single-connection HTTP/1.1 client for one target URL."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported URL {url!r}: expected http(s)://host:port")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parts.scheme == "https" else None
        )
        self.host_header = parts.netloc.encode()
        self.proto: _HttpProtocol | None = None

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await loop.create_connection(
                _HttpProtocol, self.host, self.port, ssl=self.ssl
            )
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {self.url}: {exc}") from exc
        self.proto = proto

    async def request(self, data: bytes) -> tuple[int, bytes]:
        """Send one request, reconnecting first if the connection was closed."""
        if self.proto is None or self.proto.closed:
            await self.connect()
        assert self.proto is not None
        return await self.proto.request(data)

    def close(self) -> None:
        if self.proto is not None:
            self.proto.close()


# ------------------------------------------------------------------------ target kinds


class Target:
    """Builds request bytes for one target URL and judges read answers.

    ``ringkv`` and ``dict`` use PUT/GET /v1/kv/{key}; keys are generated URL-safe, so no
    percent-encoding is needed.
    """

    def __init__(
        self,
        host_header: bytes,
        value: bytes,
        consistency: str | None,
        token: str | None,
    ) -> None:
        auth = b"Authorization: Bearer %s\r\n" % token.encode() if token else b""
        self.common = b" HTTP/1.1\r\nHost: %s\r\n%s" % (host_header, auth)
        self.query = b"?consistency=%s" % consistency.encode() if consistency else b""
        self.value = value
        head = self.query + self.common + (
            b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n" % len(value)
        )
        self._write_tail = head + b"\r\n" + value
        self._cas_head = head + b"If-Match: "
        self._cas_rest = b"\r\n\r\n" + value
        self._read_tail = self.query + self.common + b"\r\n"

    def write(self, key: bytes) -> bytes:
        return b"PUT /v1/kv/" + key + self._write_tail

    def read(self, key: bytes) -> bytes:
        return b"GET /v1/kv/" + key + self._read_tail

    def read_status(self, status: int, body: bytes) -> int:
        """Status to record for a read (a kind may map an empty answer to 404)."""
        return status

    def cas(self, key: bytes, etag: bytes) -> bytes:
        """A write of ``key`` that only applies while its version is still ``etag``."""
        return b"PUT /v1/kv/" + key + self._cas_head + etag + self._cas_rest

    def written(self, status: int, body: bytes) -> bytes | None:
        """The tag of the version a write created, for the next `cas`; None if it failed.

        ringkv answers ``{"key": .., "version": "v"}`` and takes it back as ``"v"``.
        """
        version = _json_string(body, b"version") if 200 <= status < 300 else None
        return b'"%s"' % version if version is not None else None

    def swapped(self, status: int, body: bytes) -> tuple[int, bytes | None]:
        """(status to record, the new tag) of a `cas`; the tag is None if it did not apply."""
        return status, self.written(status, body)


class EtcdTarget(Target):
    """etcd's v3 JSON gateway: POST {prefix}/kv/put and {prefix}/kv/range.

    Reads are linearizable (etcd's default) unless consistency ``one`` is asked for,
    which maps to ``serializable`` (answered from the local member without a quorum).
    """

    def __init__(
        self,
        host_header: bytes,
        value: bytes,
        consistency: str | None,
        token: str | None,
        api_prefix: str = "/v3",
    ) -> None:
        super().__init__(host_header, value, None, token)
        prefix = api_prefix.encode()
        self._value_b64 = base64.b64encode(value)
        self._serializable = b',"serializable":true' if consistency == "one" else b""
        ctype = b"Content-Type: application/json\r\n"
        self._put_head = b"POST " + prefix + b"/kv/put" + self.common + ctype
        self._range_head = b"POST " + prefix + b"/kv/range" + self.common + ctype
        self._txn_head = b"POST " + prefix + b"/kv/txn" + self.common + ctype

    def write(self, key: bytes) -> bytes:
        body = (
            b'{"key":"'
            + base64.b64encode(key)
            + b'","value":"'
            + self._value_b64
            + b'"}'
        )
        return self._put_head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def read(self, key: bytes) -> bytes:
        body = b'{"key":"' + base64.b64encode(key) + b'"' + self._serializable + b"}"
        return self._range_head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def read_status(self, status: int, body: bytes) -> int:
        # The gateway answers 200 with no "kvs" for a missing key.
        if status == 200 and b'"kvs"' not in body:
            return 404
        return status

    def cas(self, key: bytes, etag: bytes) -> bytes:
        """A Txn: if the key's mod_revision is still ``etag``, put the value."""
        key64 = base64.b64encode(key)
        body = (
            b'{"compare":[{"key":"' + key64 + b'","target":"MOD","result":"EQUAL",'
            b'"mod_revision":"' + etag + b'"}],"success":[{"request_put":{"key":"' + key64
            + b'","value":"' + self._value_b64 + b'"}}]}'
        )
        return self._txn_head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def written(self, status: int, body: bytes) -> bytes | None:
        # Every answer starts with its header, whose revision is the one a write created.
        return _json_string(body, b"revision") if status == 200 else None

    def swapped(self, status: int, body: bytes) -> tuple[int, bytes | None]:
        # A Txn whose compare failed answers 200 without "succeeded" (false is left out).
        if status == 200 and b'"succeeded":true' not in body:
            return 412, None
        return status, self.written(status, body)


def _json_string(body: bytes, name: bytes) -> bytes | None:
    """The first string value of field ``name`` in a JSON body, found without parsing it
    (the values read here, versions and revisions, hold no escapes)."""
    at = body.find(b'"%s":' % name)
    if at < 0:
        return None
    start = body.find(b'"', at + len(name) + 3)
    end = body.find(b'"', start + 1) if start >= 0 else -1
    return body[start + 1 : end] if end >= 0 else None


async def detect_etcd_prefix(url: str) -> str:
    """'/v3' or '/v3beta': the gateway prefix this etcd serves (3.3 only has v3beta)."""
    client = HttpClient(url)
    try:
        for prefix in ("/v3", "/v3beta"):
            body = b'{"key":"AA=="}'
            req = (
                b"POST %s/kv/range HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s"
                % (prefix.encode(), client.host_header, len(body), body)
            )
            status, _ = await client.request(req)
            if status == 200:
                return prefix
        raise RuntimeError(f"{url} serves neither /v3 nor /v3beta kv/range")
    finally:
        client.close()


# ------------------------------------------------------------------------- config/result


@dataclass
class LoadConfig:
    """Everything that defines one load run."""

    urls: list[str]
    kind: str = "ringkv"
    workload: str = "write"
    mode: str = "closed"
    connections: int = 64
    duration: float = 10.0
    warmup: float = 2.0
    rate: float | None = None
    read_fraction: float = 0.5
    key_size: int = 16
    value_size: int = 100
    keyspace: int = 10_000
    consistency: str | None = None
    token: str | None = field(default=None, repr=False)
    timeout: float = 10.0
    seed: int | None = None
    # False when the keyspace is already written (read/mixed then skip the preload):
    # ringkv.bench.scale runs back-to-back windows over one bulk-loaded keyspace.
    preload: bool = True

    def validate(self) -> None:
        if not self.urls:
            raise ValueError("at least one target URL is needed")
        checks = [
            (self.kind in KINDS, f"kind must be one of {KINDS}"),
            (self.workload in WORKLOADS, f"workload must be one of {WORKLOADS}"),
            (self.mode in MODES, f"mode must be one of {MODES}"),
            (self.consistency in (None, *CONSISTENCY), f"consistency: one of {CONSISTENCY}"),
            (self.connections >= 1, "connections must be >= 1"),
            (self.duration > 0, "duration must be > 0"),
            (self.warmup >= 0, "warmup must be >= 0"),
            (self.mode == "closed" or (self.rate or 0) > 0, "open loop needs --rate > 0"),
            (0.0 <= self.read_fraction <= 1.0, "read fraction must be in [0, 1]"),
            (self.value_size >= 0, "value size must be >= 0"),
            (self.keyspace >= 1, "keyspace must be >= 1"),
            (self.workload != "cas" or self.kind != "dict",
             "the dict server has no compare-and-set (cas: ringkv or etcd)"),
            (self.workload != "cas" or self.keyspace >= self.connections,
             "cas needs a key per connection: keyspace >= connections"),
            (self.workload != "cas" or self.preload,
             "cas learns each key's version by writing it first: it needs the preload"),
            (self.timeout > 0, "timeout must be > 0"),
            (
                self.key_size >= len(str(self.keyspace - 1)) + 1,
                f"key size {self.key_size} cannot number {self.keyspace} keys",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class LoadResult:
    """Outcome of one run; latencies in microseconds, counts over the measured window."""

    config: LoadConfig
    window_s: float
    ops: int
    ops_per_s: float
    errors: dict[str, int]
    latency_us: dict[str, float]
    by_op: dict[str, dict[str, Any]]
    loadgen_cpu_s: float
    loadgen_cpu_user_s: float
    loadgen_cpu_sys_s: float
    preload_keys: int = 0
    preload_s: float = 0.0
    preload_retried: int = 0  # writes sent again after a failure
    histogram: Histogram = field(default_factory=Histogram, repr=False, compare=False)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        config = asdict(self.config)
        config.pop("token")
        return {
            "config": config,
            "window_s": self.window_s,
            "ops": self.ops,
            "ops_per_s": self.ops_per_s,
            "errors": self.errors,
            "error_count": self.error_count,
            "latency_us": self.latency_us,
            "by_op": self.by_op,
            "loadgen_cpu_s": self.loadgen_cpu_s,
            "loadgen_cpu_user_s": self.loadgen_cpu_user_s,
            "loadgen_cpu_sys_s": self.loadgen_cpu_sys_s,
            "preload_keys": self.preload_keys,
            "preload_s": self.preload_s,
            "preload_retried": self.preload_retried,
        }

    def format_table(self) -> str:
        c = self.config
        loop = f"open loop at {c.rate:g} req/s" if c.mode == "open" else "closed loop"
        lines = [
            f"target   {c.kind} x{len(c.urls)} url(s): {', '.join(c.urls)}",
            f"workload {c.workload}"
            + (f" (read fraction {c.read_fraction:g})" if c.workload == "mixed" else "")
            + f", {loop}, {c.connections} connections, keys {c.key_size} B over "
            f"{c.keyspace}, values {c.value_size} B, consistency {c.consistency or 'default'}",
            f"window   {self.window_s:.2f} s after {c.warmup:g} s warm-up"
            + (f"; preloaded {self.preload_keys} keys in {self.preload_s:.1f} s"
               if self.preload_keys else "")
            + (f"; offered load met at {100 * self.ops_per_s / c.rate:.0f}%"
               if c.mode == "open" and c.rate else ""),
            "",
            f"{'op':<6} {'ops':>9} {'ops/s':>10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
            f"{'p99.9 ms':>9} {'max ms':>8}",
        ]
        rows = [(name, d["ops"], d["latency_us"]) for name, d in sorted(self.by_op.items())]
        if len(rows) != 1:
            rows.append(("all", self.ops, self.latency_us))
        for name, ops, lat in rows:
            lines.append(
                f"{name:<6} {ops:>9} {ops / self.window_s:>10.1f} {lat['p50'] / 1e3:>8.3f} "
                f"{lat['p90'] / 1e3:>8.3f} {lat['p99'] / 1e3:>8.3f} {lat['p999'] / 1e3:>9.3f} "
                f"{lat['max'] / 1e3:>8.3f}"
            )
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(self.errors.items())) or "none"
        lines += [
            "",
            f"errors   {self.error_count} ({errors})",
            f"loadgen  CPU {self.loadgen_cpu_s:.2f} s (user {self.loadgen_cpu_user_s:.2f}, "
            f"sys {self.loadgen_cpu_sys_s:.2f}) = "
            f"{100 * self.loadgen_cpu_s / self.window_s:.0f}% of one core"
            + (f", {1e6 * self.loadgen_cpu_s / self.ops:.1f} us/op" if self.ops else ""),
        ]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- runner


class _Run:
    """State shared by the workers of one run."""

    def __init__(self, config: LoadConfig, targets: dict[str, Target]) -> None:
        self.config = config
        self.targets = targets
        self.rng = random.Random(config.seed)
        self.hist = {"read": Histogram(), "write": Histogram(), "cas": Histogram()}
        self.tags: dict[int, bytes] = {}  # the tag of each key's last write (for cas)
        self.errors: Counter[str] = Counter()
        self.clients: list[HttpClient] = []
        self.start = 0.0  # end of preload: warm-up begins
        self.t0 = math.inf  # measured window [t0, t1)
        self.t1 = math.inf

    def key(self, i: int) -> bytes:
        return key_name(i, self.config.key_size)

    def owned(self, idx: int) -> range:
        """The key numbers connection ``idx`` owns: its own number modulo the count."""
        return range(idx, self.config.keyspace, self.config.connections)

    def next_request(self, target: Target, idx: int) -> tuple[str, int, bytes]:
        """(operation, key number, request bytes) of connection ``idx``'s next request."""
        c = self.config
        if c.workload == "cas":
            owned = self.owned(idx)
            i = owned[self.rng.randrange(len(owned))]
            return "cas", i, target.cas(self.key(i), self.tags[i])
        i = self.rng.randrange(c.keyspace)
        if c.workload == "write" or (
            c.workload == "mixed" and self.rng.random() >= c.read_fraction
        ):
            return "write", i, target.write(self.key(i))
        return "read", i, target.read(self.key(i))

    async def connect_all(self) -> None:
        urls = self.config.urls
        self.clients = [HttpClient(urls[i % len(urls)]) for i in range(self.config.connections)]
        await asyncio.gather(*(c.connect() for c in self.clients))

    def close_all(self) -> None:
        for client in self.clients:
            client.close()

    async def watchdog(self) -> None:
        """Abort requests that exceed the timeout (cheaper than a timer per request)."""
        timeout = self.config.timeout
        while True:
            await asyncio.sleep(min(0.25, timeout / 4))
            now = time.perf_counter()
            for client in self.clients:
                proto = client.proto
                if proto is None or proto.waiter is None:
                    continue
                if now - proto.sent_at > timeout:
                    proto.abort(TimeoutError(f"no answer within {timeout:g} s"))

    async def preload(self) -> tuple[int, int]:
        """Write every key of the keyspace, so reads find them and compare-and-set knows
        each key's version: the keys written and how many writes were sent again after a
        failure (at most PRELOAD_ATTEMPTS per key)."""
        keys: list[int] | range = range(self.config.keyspace)
        retried = 0
        for attempt in range(PRELOAD_ATTEMPTS):
            answers, keys = await self.each_key("write", keys)
            if not keys:
                if self.config.workload == "cas" and len(self.tags) < self.config.keyspace:
                    raise RuntimeError("cas: the preload's answers named no version for "
                                       f"{self.config.keyspace - len(self.tags)} keys")
                return self.config.keyspace, retried
            retried += len(keys) if attempt + 1 < PRELOAD_ATTEMPTS else 0
        failures = {k: n for k, n in answers.items() if not k.startswith("2")}
        raise RuntimeError(f"preload failed after {PRELOAD_ATTEMPTS} attempts: {failures}")

    async def each_key(self, op: str, keys: Iterable[int] | None = None
                       ) -> tuple[Counter[str], list[int]]:
        """One ``write`` or ``read`` of every key of the keyspace (or of ``keys``), spread
        over every connection: the answers by status (or error name), and the keys that
        got no answer or a non-2xx one."""
        counter = iter(range(self.config.keyspace) if keys is None else keys)
        answers: Counter[str] = Counter()
        failed: list[int] = []

        async def worker(client: HttpClient) -> None:
            target = self.targets[client.url]
            request = target.write if op == "write" else target.read
            for i in counter:
                try:
                    status, body = await client.request(request(self.key(i)))
                except (OSError, ConnectFailed) as exc:
                    answers[_error_name(exc)] += 1
                    failed.append(i)
                    if isinstance(exc, ConnectFailed):
                        return
                    continue
                status = status if op == "write" else target.read_status(status, body)
                answers[str(status)] += 1
                if not 200 <= status < 300:
                    failed.append(i)
                elif op == "write" and (tag := target.written(status, body)) is not None:
                    self.tags[i] = tag

        await asyncio.gather(*(worker(c) for c in self.clients))
        return answers, failed

    async def retag(self, client: HttpClient, target: Target, i: int) -> None:
        """After a compare-and-set that did not apply or got no answer, write key ``i``
        again for a tag that holds (a real client would re-read it); not measured."""
        with contextlib.suppress(OSError, ConnectFailed):
            status, body = await client.request(target.write(self.key(i)))
            tag = target.written(status, body)
            if tag is not None:
                self.tags[i] = tag

    async def worker(self, idx: int) -> None:
        client = self.clients[idx]
        target = self.targets[client.url]
        hist = self.hist
        errors = self.errors
        perf = time.perf_counter
        c = self.config
        open_loop = c.mode == "open"
        # Open loop: this connection's requests fall due every `interval`, staggered.
        interval = c.connections / c.rate if c.rate else 0.0
        due = intended = self.start + (idx / c.rate if c.rate else 0.0)
        while True:
            now = perf()
            if now >= self.t1:
                return
            if open_loop:
                if due - now > 0.002:
                    # Wake ~1 ms early: the loop's timers have millisecond resolution.
                    await asyncio.sleep(due - now - 0.001)
                    if perf() >= self.t1:
                        return
                intended = due
                due += interval
            op, i, request = self.next_request(target, idx)
            sent = perf()
            try:
                status, body = await client.request(request)
            except (OSError, ConnectFailed) as exc:
                failed = perf()
                if self.t0 <= failed < self.t1:
                    errors[_error_name(exc)] += 1
                if isinstance(exc, ConnectFailed):
                    await asyncio.sleep(0.1)  # target down: do not spin
                elif op == "cas":
                    await self.retag(client, target, i)
                continue
            done = perf()
            tag = None
            if op == "cas":
                status, tag = target.swapped(status, body)
                if tag is not None:
                    self.tags[i] = tag
            elif op == "read":
                status = target.read_status(status, body)
            if self.t0 <= done < self.t1:
                if 200 <= status < 300:
                    # Open loop: charge the wait from the due time (coordinated omission).
                    start = min(intended, sent) if open_loop else sent
                    hist[op].record(int((done - start) * 1_000_000))
                else:
                    errors[str(status)] += 1
            if op == "cas" and tag is None:
                await self.retag(client, target, i)


def _error_name(exc: BaseException) -> str:
    """Error-count label for a request that got no HTTP answer."""
    if isinstance(exc, ConnectFailed):
        return "connect"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "connection"


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


async def run_load(
    config: LoadConfig,
    *,
    on_window: Callable[[str], None] | None = None,
) -> LoadResult:
    """Run one load test and return its result.

    ``on_window("start")`` / ``on_window("end")`` are called at the edges of the measured
    window, so a caller can sample server-side counters over exactly the same interval.
    """
    config.validate()
    run = _Run(config, await _targets(config))
    await run.connect_all()
    watchdog = asyncio.create_task(run.watchdog())
    try:
        preload_keys, preload_s, preload_retried = 0, 0.0, 0
        if config.preload and config.workload in ("read", "mixed", "cas"):
            t = time.perf_counter()
            preload_keys, preload_retried = await run.preload()
            preload_s = time.perf_counter() - t

        run.start = time.perf_counter()
        run.t0 = run.start + config.warmup
        run.t1 = run.t0 + config.duration
        cpu: dict[str, tuple[float, float]] = {}

        async def window() -> None:
            for edge, at in (("start", run.t0), ("end", run.t1)):
                await asyncio.sleep(max(0.0, at - time.perf_counter()))
                cpu[edge] = _cpu()
                if on_window is not None:
                    on_window(edge)

        await asyncio.gather(window(), *(run.worker(i) for i in range(config.connections)))
    finally:
        watchdog.cancel()
        run.close_all()

    user = cpu["end"][0] - cpu["start"][0]
    system = cpu["end"][1] - cpu["start"][1]
    total = Histogram()
    by_op: dict[str, dict[str, Any]] = {}
    for op, hist in run.hist.items():
        total.merge(hist)
        if hist.total:
            by_op[op] = {
                "ops": hist.total,
                "ops_per_s": hist.total / config.duration,
                "latency_us": hist.summary(),
            }
    return LoadResult(
        config=config,
        window_s=config.duration,
        ops=total.total,
        ops_per_s=total.total / config.duration,
        errors=dict(run.errors),
        latency_us=total.summary(),
        by_op=by_op,
        loadgen_cpu_s=user + system,
        loadgen_cpu_user_s=user,
        loadgen_cpu_sys_s=system,
        preload_keys=preload_keys,
        preload_s=preload_s,
        preload_retried=preload_retried,
        histogram=total,
    )


async def _targets(config: LoadConfig) -> dict[str, Target]:
    value = payload(config.value_size, config.seed)
    targets: dict[str, Target] = {}
    for url in dict.fromkeys(config.urls):
        host = HttpClient(url).host_header
        if config.kind == "etcd":
            prefix = await detect_etcd_prefix(url)
            targets[url] = EtcdTarget(host, value, config.consistency, config.token, prefix)
        else:
            targets[url] = Target(host, value, config.consistency, config.token)
    return targets


async def read_every_key(config: LoadConfig) -> dict[str, int]:
    """Read each key of the keyspace once (``config.connections`` at a time): how many
    answers came back with each status (or error name). A read of a key that a preload
    wrote must not be a 404."""
    config.validate()
    run = _Run(config, await _targets(config))
    await run.connect_all()
    watchdog = asyncio.create_task(run.watchdog())
    try:
        answers, _ = await run.each_key("read")
        return dict(answers)
    finally:
        watchdog.cancel()
        run.close_all()


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop when installed (a faster client), else on asyncio's loop."""
    try:
        import uvloop  # noqa: PLC0415 - optional accelerator
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# -------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ringkv bench",
        description="HTTP load generator for ringkv, etcd (v3 JSON gateway) and the "
        "dict-server ceiling.",
    )
    p.add_argument(
        "--url", dest="urls", action="append", metavar="URL",
        help="target base URL; repeat (or comma-separate) to spread connections "
        "round-robin over several nodes (default http://127.0.0.1:8080)",
    )
    p.add_argument("--kind", choices=KINDS, default="ringkv", help="target kind")
    p.add_argument("--workload", choices=WORKLOADS, default="write",
                   help="cas: uncontended compare-and-set (If-Match; etcd: Txn) on keys each "
                   "connection owns")
    p.add_argument("--read-fraction", type=float, default=0.5,
                   help="share of reads in the mixed workload")
    p.add_argument("--mode", choices=MODES, default="closed",
                   help="closed loop (fixed concurrency) or open loop (fixed --rate)")
    p.add_argument("--rate", type=float, help="open loop: total requests per second")
    p.add_argument("-c", "--connections", type=int, default=64)
    p.add_argument("-d", "--duration", type=float, default=10.0,
                   help="measured window in seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds (not measured)")
    p.add_argument("--key-size", type=int, default=16, help="key length in bytes")
    p.add_argument("--value-size", type=int, default=100, help="value length in bytes")
    p.add_argument("--keyspace", type=int, default=10_000,
                   help="number of distinct keys (read and cas workloads preload all of them)")
    p.add_argument("--consistency", choices=CONSISTENCY,
                   help="?consistency= on every request (etcd: one = serializable reads)")
    p.add_argument("--token", default=os.environ.get("RINGKV_TOKEN"),
                   help="Bearer token (default $RINGKV_TOKEN)")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, s")
    p.add_argument("--seed", type=int, help="random seed for keys and values")
    p.add_argument("--json", metavar="PATH",
                   help="also write the result as JSON to PATH ('-' = stdout, no table)")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit 0 when the run completed operations without errors."""
    args = build_parser().parse_args(argv)
    urls = [u.strip() for arg in args.urls or ["http://127.0.0.1:8080"]
            for u in arg.split(",") if u.strip()]
    config = LoadConfig(
        urls=urls, kind=args.kind, workload=args.workload, mode=args.mode,
        connections=args.connections, duration=args.duration, warmup=args.warmup,
        rate=args.rate, read_fraction=args.read_fraction, key_size=args.key_size,
        value_size=args.value_size, keyspace=args.keyspace, consistency=args.consistency,
        token=args.token, timeout=args.timeout, seed=args.seed,
    )
    try:
        config.validate()
        result = run_async(run_load(config))
    except (ValueError, RuntimeError, OSError, ConnectFailed) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    if args.json == "-":
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.format_table())
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(result.to_dict(), fh, indent=2)
                fh.write("\n")
    return 0 if result.ops > 0 and result.error_count == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
