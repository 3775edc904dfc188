"""What the sync and async clients share: URLs, key encoding, requests, answers, retries.

Everything here is I/O-free, so both transports build the same requests, read answers the
same way and follow one retry rule:

* A request that never reached a node (connection refused, connect timeout, DNS failure)
  is retried on the next URL whatever its method.
* Reads (GET, HEAD, list, cluster, replicas) are also retried on the next URL after a
  timeout, a dropped connection or a 502/503/504, because repeating them changes nothing.
* Writes (PUT, DELETE) are never re-sent once they may have reached a node: a write that
  landed and is sent again can fail its own ``If-Match`` (or ``If-None-Match``) check, or
  overwrite a newer write made in between; a 503 ``quorum_unavailable`` write may already
  be on some replicas. The caller gets the error (``Unavailable.maybe_applied`` when no
  answer came) and decides.

Attempts default to ``max(3, number of URLs)``, cycling through the URLs with a short
backoff (50 ms doubling, at most 0.5 s). A node that failed or answered 502/503/504 is
moved past, so the next call starts at the following URL.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import msgpack

from ringkv.client.errors import ConflictRetryExhausted, RingkvError, Unavailable, error_from_response

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 10.0
# `serial`: decided by a Paxos round (GET, HEAD, PUT, DELETE); see README.
CONSISTENCY_LEVELS = ("one", "quorum", "all", "serial")
MAX_TTL = 315_360_000  # seconds (ten years), the node's limit
MAX_LIST_LIMIT = 1000  # keys per list page, the node's limit
TEXT_TYPE = "text/plain; charset=utf-8"
BINARY_TYPE = "application/octet-stream"
MSGPACK_TYPE = "application/vnd.msgpack"


@dataclass(frozen=True)
class Entry:
    """A value read with GET."""

    key: str
    value: bytes
    content_type: str | None
    version: str


@dataclass(frozen=True)
class Meta:
    """What HEAD tells about a key without transferring its value."""

    key: str
    content_type: str | None
    version: str
    size: int | None


@dataclass(frozen=True)
class Page:
    """One page of ``list``; ``cursor`` is None on the last page."""

    keys: list[str]
    cursor: str | None


@dataclass(frozen=True)
class ExportPage:
    """One page of ``/v1/backup/export``: records as ``[key, value, content_type, version,
    tombstone, expires_ms]``; ``cursor`` is None once the part is complete; ``done`` is the
    share of the part exported so far."""

    records: list[list[Any]]
    cursor: str | None
    done: float


@dataclass(frozen=True)
class Base:
    """One node's base URL, split once for the stdlib transport."""

    url: str
    scheme: str
    host: str
    port: int
    prefix: str


@dataclass(frozen=True)
class Call:
    """A request relative to a base URL; ``idempotent`` allows re-sending it elsewhere."""

    method: str
    target: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    idempotent: bool = True


@dataclass(frozen=True)
class Reply:
    """An HTTP answer; header names are lower case."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def parse_base(url: str) -> Base:
    """Validate one node URL such as ``http://127.0.0.1:8080`` (a path prefix is kept)."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"node URL must not have a query or fragment: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Base(url, parts.scheme, parts.hostname, port, parts.path)


def parse_urls(urls: list[str] | str) -> list[Base]:
    """Accept a list of URLs or one comma-separated string (as the CLI's ``--url``)."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    bases = [parse_base(u) for u in items if u.strip()]
    if not bases:
        raise ValueError("no node URL given")
    return bases


def encode_key(key: str) -> str:
    """Percent-encode a key for ``/v1/kv/{key:.+}`` so the node decodes the same string.

    ``/`` stays literal (the route takes the rest of the path), everything outside the
    unreserved set is encoded as UTF-8 (``%``, ``?``, ``#``, spaces, non-ASCII), and a
    segment that is ``.`` or ``..`` is written ``%2E`` so no URL normaliser collapses it.
    """
    if not isinstance(key, str) or not key:
        raise ValueError("a key is a non-empty string")
    segments = []
    for segment in key.split("/"):
        if segment in (".", ".."):
            segments.append(segment.replace(".", "%2E"))
        else:
            segments.append(quote(segment, safe="", errors="strict"))
    return "/".join(segments)


def _query(**params: object) -> str:
    items = {k: str(v) for k, v in params.items() if v is not None}
    return "?" + urlencode(items, quote_via=quote) if items else ""


def quote_version(version: str) -> str:
    """Quote a version for ``If-Match``; ``*`` and already-quoted values pass through."""
    if version == "*" or (len(version) >= 2 and version[0] == version[-1] == '"'):
        return version
    return f'"{version}"'


def _unquote_etag(etag: str | None) -> str | None:
    if not etag:
        return None
    etag = etag.strip().removeprefix("W/")
    if len(etag) >= 2 and etag[0] == etag[-1] == '"':
        etag = etag[1:-1]
    return etag


def put_call(
    key: str,
    value: bytes | str,
    *,
    content_type: str | None,
    consistency: str | None,
    ttl: int | None,
    if_match: str | None,
    if_none_match: bool,
) -> Call:
    """PUT: a str value is sent as UTF-8 text, bytes as octet-stream, unless told."""
    if isinstance(value, str):
        body = value.encode()
        default_type = TEXT_TYPE
    else:
        body = bytes(value)
        default_type = BINARY_TYPE
    headers = {"Content-Type": content_type or default_type}
    if if_match is not None:
        headers["If-Match"] = quote_version(if_match)
    if if_none_match:
        headers["If-None-Match"] = "*"
    target = "/v1/kv/" + encode_key(key) + _query(consistency=consistency, ttl=ttl)
    return Call("PUT", target, headers, body, idempotent=False)


def read_call(method: str, key: str, consistency: str | None) -> Call:
    """GET or HEAD of one key."""
    return Call(method, "/v1/kv/" + encode_key(key) + _query(consistency=consistency))


def delete_call(key: str, consistency: str | None, if_match: str | None) -> Call:
    """DELETE writes a tombstone, so it follows the write retry rule."""
    headers = {"If-Match": quote_version(if_match)} if if_match is not None else {}
    target = "/v1/kv/" + encode_key(key) + _query(consistency=consistency)
    return Call("DELETE", target, headers, idempotent=False)


def incr_call(key: str, by: int, ttl: int | None, consistency: str | None) -> Call:
    """``POST ?op=incr``: a write, so it follows the write retry rule."""
    target = "/v1/kv/" + encode_key(key) + _query(op="incr", by=by, ttl=ttl, consistency=consistency)
    return Call("POST", target, idempotent=False)


def counter_of(reply: Reply) -> int:
    """The value an ``incr`` answered."""
    value = json_object(reply).get("value")
    if not isinstance(value, int) or isinstance(value, bool):
        raise RingkvError("bad_response", "the node answered no counter value", reply.status)
    return value


@dataclass(frozen=True)
class Update:
    """One step of ``update``'s compare-and-set loop: what to write, and on which condition."""

    value: bytes | str
    if_match: str | None  # the version read; None: the key was absent (If-None-Match: *)


def update_step(current: Entry | None, fn: Callable[[bytes | None], bytes | str]) -> Update:
    """Apply the caller's function to the value read (None: absent)."""
    if current is None:
        return Update(fn(None), None)
    return Update(fn(current.value), current.version)


def update_pause(attempt: int, rng: random.Random, remaining: float, key: str,
                 timeout: float) -> float:
    """Pause before ``update``'s next try (1-based): random, growing, at most 0.25 s, so
    writers that keep meeting each other spread out. ConflictRetryExhausted when the try
    after it would begin past the deadline (``remaining`` seconds from now)."""
    pause = rng.uniform(0, min(0.005 * (1 << min(attempt, 8)), 0.25))
    if pause >= remaining:
        raise ConflictRetryExhausted(
            "conflict_retry_exhausted",
            f"other writers of {key!r} kept changing it for {timeout:g}s")
    return pause


def list_call(prefix: str, limit: int | None, cursor: str | None) -> Call:
    """One page of keys under ``prefix``."""
    return Call("GET", "/v1/kv" + _query(prefix=prefix or None, limit=limit, cursor=cursor))


def replicas_call(key: str) -> Call:
    """Which nodes should hold ``key`` and which version each holds."""
    return Call("GET", "/v1/replicas/" + encode_key(key))


CLUSTER_CALL = Call("GET", "/v1/cluster")
LAST_BACKUP_CALL = Call("GET", "/v1/backup/last")


def export_call(part: int, parts: int, cursor: str | None, limit: int | None) -> Call:
    """One page of part ``part`` of ``parts`` of the token space."""
    return Call("GET", "/v1/backup/export" + _query(part=part, parts=parts, cursor=cursor, limit=limit))


def import_call(records: Sequence[Sequence[Any]]) -> Call:
    """Records merged by version: sending them twice changes nothing, so it may be retried."""
    body = msgpack.packb(list(records))
    return Call("POST", "/v1/backup/import", {"Content-Type": MSGPACK_TYPE}, body)


def report_call(report: Mapping[str, object]) -> Call:
    """A finished backup; the nodes keep the newest, so repeating it changes nothing."""
    body = json.dumps(dict(report)).encode()
    return Call("PUT", "/v1/backup/last", {"Content-Type": "application/json"}, body)

HISTORY_CALL = Call("GET", "/v1/cluster/history")


def stats_call(since: int | None = None) -> Call:
    """Every member's counters and recent rates; only samples after ``since`` (ms)."""
    return Call("GET", "/v1/stats" if since is None else f"/v1/stats?since={int(since)}")


def check(reply: Reply) -> Reply:
    """Raise the typed error for a non-2xx answer."""
    if not 200 <= reply.status < 300:
        raise error_from_response(reply.status, reply.headers, reply.body)
    return reply


def _json(reply: Reply) -> object:
    try:
        return json.loads(reply.body)
    except ValueError as exc:
        raise RingkvError("bad_response", "the node answered invalid JSON", reply.status) from exc


def json_object(reply: Reply) -> dict[str, object]:
    """The JSON object a successful call answered."""
    doc = _json(check(reply))
    if not isinstance(doc, dict):
        raise RingkvError("bad_response", "the node answered JSON that is not an object")
    return doc


def version_of(reply: Reply) -> str:
    """The version a write produced: the JSON ``version``, else the ``ETag``."""
    check(reply)
    version: object = None
    if reply.body and "json" in reply.headers.get("content-type", ""):
        doc = _json(reply)
        if isinstance(doc, dict):
            version = doc.get("version")
    if not isinstance(version, str):
        version = _unquote_etag(reply.headers.get("etag"))
    if not version:
        raise RingkvError("bad_response", "the node answered no version", reply.status)
    return version


def entry_of(key: str, reply: Reply) -> Entry:
    """Entry from a GET answer."""
    check(reply)
    return Entry(
        key=key,
        value=reply.body,
        content_type=reply.headers.get("content-type"),
        version=_unquote_etag(reply.headers.get("etag")) or "",
    )


def meta_of(key: str, reply: Reply) -> Meta:
    """Meta from a HEAD answer."""
    check(reply)
    length = reply.headers.get("content-length")
    return Meta(
        key=key,
        content_type=reply.headers.get("content-type"),
        version=_unquote_etag(reply.headers.get("etag")) or "",
        size=int(length) if length and length.isdigit() else None,
    )


def page_of(reply: Reply) -> Page:
    """Page from a list answer."""
    doc = json_object(reply)
    keys, cursor = doc.get("keys"), doc.get("cursor")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise RingkvError("bad_response", "list answer has no 'keys' list")
    return Page(keys=list(keys), cursor=cursor if isinstance(cursor, str) and cursor else None)


def export_page_of(reply: Reply) -> ExportPage:
    """ExportPage from an export answer (msgpack), its shape checked."""
    check(reply)
    try:
        doc = msgpack.unpackb(reply.body)
    except (ValueError, msgpack.UnpackException) as exc:
        raise RingkvError("bad_response", "the export answer is not msgpack", reply.status) from exc
    records, cursor, done = (doc.get(k) for k in ("records", "cursor", "done")) if isinstance(
        doc, dict) else (None, None, None)
    if not isinstance(records, list) or not all(isinstance(r, list) and len(r) == 6 for r in records) \
            or not (cursor is None or isinstance(cursor, str)) or not isinstance(done, int | float):
        raise RingkvError("bad_response", "the export answer is not a page of records", reply.status)
    return ExportPage(records, cursor, float(done))


def auth_headers(token: str | None) -> dict[str, str]:
    """The bearer header for /v1/ requests (health endpoints are open)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def backoff(attempt: int) -> float:
    """Pause before attempt ``attempt`` (1-based for retries): short, because the next
    attempt usually goes to another node."""
    return min(0.05 * (1 << (attempt - 1)), 0.5)


class TransportFailure(Exception):
    """One attempt got no HTTP answer; ``sent`` is False only when no byte left for the node,
    ``refused`` when the connection was refused (nothing listens there)."""

    def __init__(self, url: str, cause: BaseException, *, sent: bool, timed_out: bool,
                 refused: bool = False) -> None:
        super().__init__(f"{url}: {cause!r}")
        self.url = url
        self.cause = cause
        self.sent = sent
        self.timed_out = timed_out
        self.refused = refused


RETRY_STATUSES = (502, 503, 504)


def node_failed(outcome: Reply | TransportFailure) -> bool:
    """Whether to start later calls at another node (the write itself may not be retried)."""
    return isinstance(outcome, TransportFailure) or outcome.status in RETRY_STATUSES


def worth_retrying(call: Call, outcome: Reply | TransportFailure) -> bool:
    """The retry rule of this module's docstring, for one attempt's outcome."""
    if isinstance(outcome, TransportFailure):
        return call.idempotent or not outcome.sent
    return call.idempotent and outcome.status in RETRY_STATUSES


def give_up(call: Call, outcome: Reply | TransportFailure, tried: list[str]) -> Reply:
    """After the last attempt: hand back the answer (its error is raised by ``check``), or
    raise Unavailable describing why no node answered."""
    if isinstance(outcome, Reply):
        return outcome
    urls = list(dict.fromkeys(tried))
    cause = type(outcome.cause).__name__
    if outcome.sent and not call.idempotent:
        raise Unavailable(
            f"{call.method} sent to {outcome.url} got no answer ({cause}); "
            "it may or may not have been applied",
            urls,
            timed_out=outcome.timed_out,
            maybe_applied=True,
        ) from outcome.cause
    if outcome.timed_out:
        raise Unavailable(
            f"no answer in time from {', '.join(urls)}", urls, timed_out=True
        ) from outcome.cause
    raise Unavailable(f"cannot reach {', '.join(urls)} ({cause})", urls, refused=outcome.refused,
                      dropped=outcome.sent) from outcome.cause


class Targets:
    """The node URLs and which one to try first.

    A node that failed is moved past, so later calls stop paying for a dead first URL.
    """

    def __init__(self, urls: list[str] | str, attempts: int | None = None) -> None:
        self.bases = parse_urls(urls)
        self.attempts = attempts if attempts is not None else max(3, len(self.bases))
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._first = 0

    def plan(self) -> list[Base]:
        """The bases to try, in order, one per attempt (cycling when attempts > nodes)."""
        n = len(self.bases)
        return [self.bases[(self._first + i) % n] for i in range(self.attempts)]

    def failed(self, base: Base) -> None:
        """Start later calls after ``base``."""
        if self.bases[self._first] == base:
            self._first = (self._first + 1) % len(self.bases)
