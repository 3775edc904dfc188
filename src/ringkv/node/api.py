"""The public HTTP API (aiohttp): routing, validation, auth, the JSON error shape.

Handlers validate everything a client sends before any replica is touched, so bad input
costs one 4xx and nothing else. Auth runs in the dispatcher, before the body is read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, Protocol
from urllib.parse import unquote_plus, unquote_to_bytes

import msgpack
from aiohttp import ClientConnectionResetError, web
from aiohttp.web_protocol import RequestPayloadError

from . import backup, peerops, preconditions
from .backup import Backups
from .changelog import ChangeLog
from .changes import Increment, parse_int
from .changes import Write as ConditionalWrite
from .conditional import Decided, OutcomeUnknown, Proposer
from .config import Settings
from .coordinator import (
    ConflictRetryExhausted,
    Coordinator,
    InsufficientStorage,
    PreconditionFailed,
    QuorumUnavailable,
)
from .membership import LEVELS, View
from .metrics import Metrics
from .openapi import document as openapi_document
from .preconditions import Failure, Preconditions
from .records import Record
from .responses import RawResponse
from .ring import MAX_TOKEN, layout, moving
from .security import has_token
from .service import NotReady
from .stats import INTERVAL_S, wall_ms
from .storage import StorageFull
from .transport import PeerError
from .ui import Console
from .versions import HybridClock, Version

log = logging.getLogger("ringkv.api")

MAX_TTL = 315_360_000
MAX_LIST_LIMIT = 1000
DEFAULT_CONTENT_TYPE = "application/octet-stream"
JSON_TYPE = "application/json; charset=utf-8"  # as web.json_response sends it
KV_PREFIX = "/v1/kv/"
REPLICAS_PREFIX = "/v1/replicas/"
# What the probe listener (`probe_port`) serves: liveness and readiness, nothing of the data.
PROBE_PATHS = ("/healthz", "/readyz")
PUT_QUERY = frozenset({"consistency", "ttl"})
READ_QUERY = frozenset({"consistency"})
INCR_QUERY = frozenset({"op", "by", "consistency", "ttl"})
# A Paxos round (conditional.Proposer) instead of the quorum path: GET and HEAD read as of a
# round, PUT and DELETE are decided by one. Conditional writes always are.
SERIAL = "serial"
KV_LEVELS = (*LEVELS, SERIAL)
LIST_QUERY = frozenset({"prefix", "limit", "cursor"})
EXPORT_QUERY = frozenset({"part", "parts", "cursor", "limit"})
MSGPACK_TYPE = "application/vnd.msgpack"
MAX_REPORT_BYTES = 64 * 1024
STATS_QUERY = frozenset({"since"})
NO_QUERY: frozenset[str] = frozenset()
Response = web.StreamResponse | RawResponse
Handler = Callable[[web.BaseRequest], Awaitable[Response]]

STATUS_CODES = {
    400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
    408: "request_timeout", 412: "precondition_failed", 413: "payload_too_large", 503: "quorum_unavailable",
    507: "insufficient_storage",
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.extra = extra


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    body = {"error": {"code": code, "message": message, **extra}}
    headers = {"WWW-Authenticate": 'Bearer realm="ringkv"'} if status == 401 else None
    response = web.json_response(body, status=status, headers=headers)
    response["code"] = code  # for the dispatcher's count of errors by code
    return response


def _unmet_expectation(request: web.BaseRequest) -> web.Response | None:
    """A JSON 417 for an `Expect` other than `100-continue` (aiohttp's own answer is text)."""
    if request.headers.get("Expect", "").lower() != "100-continue":
        return error_response(417, "expectation_failed", "only 'Expect: 100-continue' is supported")
    return None


async def _invite_body(request: web.BaseRequest) -> None:
    """Answer `Expect: 100-continue`: called by a handler once everything but the body is
    known to be acceptable, so no client is invited to send a body that will be refused
    (RFC 9110 §10.1.1)."""
    if (request.version == (1, 1) and "Expect" in request.headers
            and not request.content.is_eof()):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size -= 25  # not part of the response (as aiohttp does)


def bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


# -- dispatch ---------------------------------------------------------------------------
def _quorum_unavailable(exc: QuorumUnavailable) -> ApiError:
    ring = {"ring": exc.ring} if exc.ring else {}
    return ApiError(503, "quorum_unavailable", str(exc), acked=exc.acked, needed=exc.needed, **ring)


def _no_answer(exc: Exception) -> ApiError:
    return ApiError(503, "quorum_unavailable",
                    f"replicas did not answer in time ({type(exc).__name__})", acked=0, needed=1)


# The error a handler's failure becomes, by the exception's class or the nearest base class
# listed (a NotReady is a PeerError too, a PeerTimeout only a PeerError).
FAILURES: dict[type[Exception], Callable[[Any], ApiError]] = {
    ApiError: lambda exc: exc,
    QuorumUnavailable: _quorum_unavailable,
    ConflictRetryExhausted: lambda exc: ApiError(503, "conflict_retry_exhausted", str(exc)),
    OutcomeUnknown: lambda exc: ApiError(503, "outcome_unknown", str(exc)),
    InsufficientStorage: lambda exc: ApiError(507, "insufficient_storage", str(exc)),
    StorageFull: lambda exc: ApiError(507, "insufficient_storage", str(exc)),
    NotReady: lambda exc: ApiError(503, "not_ready", str(exc)),
    PreconditionFailed: lambda exc: ApiError(412, "precondition_failed", str(exc)),
    TimeoutError: _no_answer,
    PeerError: _no_answer,
}


def _failure_response(exc: Exception, request: web.BaseRequest, route: str) -> web.StreamResponse:
    """Every failure of a request as the JSON error shape (aiohttp's own 413 included)."""
    for cls in type(exc).__mro__:
        as_error = FAILURES.get(cls)
        if as_error is not None:
            error = as_error(exc)
            return error_response(error.status, error.code, str(error), **error.extra)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        code = STATUS_CODES.get(exc.status, "bad_request" if exc.status < 500 else "internal")
        return error_response(exc.status, code, exc.reason)
    if isinstance(exc, ConnectionResetError | ClientConnectionResetError):
        # The client hung up mid-request: nobody to answer, nothing wrong with the node.
        log.debug("client closed the connection during %s %s", request.method, route)
        return error_response(400, "bad_request", "the connection closed mid-request")
    log.error("unexpected error serving %s %s", request.method, route, exc_info=exc)
    return error_response(500, "internal", "internal error; see the node's log")


class _Route:
    """One path (or path prefix) of the API: its handler per method and its metrics label."""

    __slots__ = ("allow", "handlers", "label")

    def __init__(self, label: str, handlers: Mapping[str, Handler]) -> None:
        self.label = label
        # HEAD wherever GET is (RFC 9110 §9.3.2): aiohttp's web.Response sends no body to
        # a HEAD request (the key route has its own, as its GET answer is a RawResponse).
        self.handlers = {"HEAD": handlers["GET"], **handlers} if "GET" in handlers else handlers
        self.allow = ",".join(sorted(self.handlers))


class Dispatcher:
    """The node's one request handler for aiohttp's low-level server.

    A dict lookup on the path (or its /v1/kv/ or /v1/replicas/ prefix) picks the handler,
    and auth, the JSON error shape (404 and 405 included) and the request metrics happen
    here, in one coroutine: aiohttp's Application would add its router, a middleware chain
    and a wrapper coroutine per request, a fifth of the HTTP path's cost for the same work.
    Auth runs first; `Expect: 100-continue` is answered by the handler that reads a body,
    once it has validated the rest."""

    def __init__(self, api: Api, metrics: Metrics, paths: Collection[str] | None = None) -> None:
        self.metrics = metrics
        self.token = api.settings.api_token.encode()
        kv = _Route(KV_PREFIX + "{key}", {"PUT": api.put, "GET": api.get, "HEAD": api.head,
                                          "DELETE": api.delete, "POST": api.post})
        console = Console()
        self.prefixed: tuple[tuple[str, _Route], ...] = ((KV_PREFIX, kv),
                         (REPLICAS_PREFIX, _Route(REPLICAS_PREFIX + "{key}", {"GET": api.replicas})),
                         (Console.PREFIX, _Route(Console.PREFIX, {"GET": console.asset})))
        self.exact = {path: _Route(path, {"GET": handler}) for path, handler in (
            ("/v1/kv", api.list), ("/v1/cluster", api.cluster), ("/healthz", api.healthz),
            ("/readyz", api.readyz), ("/metrics", api.metrics), ("/openapi.json", api.openapi),
            ("/v1/cluster/history", api.history), ("/v1/stats", api.stats), ("/v1/ring", api.ring),
            ("/ui", console.redirect), ("/ui/", console.asset))}
        self.exact.update((path, _Route(path, handlers)) for path, handlers in (
            ("/v1/backup/export", {"GET": api.backup_export}),
            ("/v1/backup/import", {"POST": api.backup_import}),
            ("/v1/backup/last", {"GET": api.backup_last, "PUT": api.report_backup})))
        if paths is not None:  # a listener for these paths only (the probe port)
            self.exact = {path: route for path, route in self.exact.items() if path in paths}
            self.prefixed = ()

    def route(self, path: str) -> _Route | None:
        found = self.exact.get(path)
        if found is None:
            for prefix, route in self.prefixed:
                if path.startswith(prefix):  # an empty key too: its handler says so (400)
                    return route
        return found

    async def __call__(self, request: web.BaseRequest) -> Response:
        started = time.perf_counter()
        path = _target(request)[0]
        route = self.route(path)
        label = "other" if route is None else route.label
        expects = "Expect" in request.headers
        try:
            # The token first: a client without it is not invited to send a body.
            if (self.token and path.startswith("/v1/")
                    and not has_token(request.headers.getall("Authorization", ()), self.token)):
                raise ApiError(401, "unauthorized",
                               "missing or wrong API token: send Authorization: Bearer <token>")
            if expects and (early := _unmet_expectation(request)):
                response: Response = early
            else:
                if route is None:
                    raise ApiError(404, "not_found", "Not Found")
                handler = route.handlers.get(request.method)
                if handler is None:
                    label = "other"
                    response = error_response(405, "method_not_allowed", "Method Not Allowed")
                    response.headers["Allow"] = route.allow
                else:
                    response = await handler(request)
        except Exception as exc:
            response = _failure_response(exc, request, label)
        if expects and not request.content.is_eof() and isinstance(response, web.StreamResponse):
            response.force_close()  # a body never invited: close rather than wait for it
        self.metrics.observe_request(label, request.method, response.status,
                                     time.perf_counter() - started)
        if response.status >= 400 and path.startswith("/v1/"):  # what clients saw, not probes
            code = response.get("code") if isinstance(response, web.StreamResponse) else None
            self.metrics.requests.error(code or STATUS_CODES.get(response.status, "internal"))
        return response


# -- request parsing --------------------------------------------------------------------
def _target(request: web.BaseRequest) -> tuple[str, str]:
    """The raw (still percent-encoded) path and query string of the request target.

    An origin-form target ("/v1/kv/k?consistency=quorum", what every client sends) is split
    as it is, without building the URL objects aiohttp would; any other form (absolute-form,
    RFC 9112, or a stray fragment) goes through aiohttp's parsed URL."""
    target = request.raw_path
    if target[:1] == "/" and "#" not in target:
        path, _, query = target.partition("?")
        return path, query
    url = request.rel_url
    return url.raw_path, url.raw_query_string


def _key_from_path(request: web.BaseRequest, prefix: str, max_bytes: int) -> bytes:
    """The key exactly as sent: percent-decoded from the raw path, strict UTF-8."""
    raw = _target(request)[0]
    if not raw.startswith(prefix):
        raise bad("malformed key path")
    key = unquote_to_bytes(raw[len(prefix):])
    if not key:
        raise bad("the key is empty" + (" (GET /v1/kv lists keys)" if prefix == KV_PREFIX else ""))
    if len(key) > max_bytes:
        raise bad(f"the key is {len(key)} bytes; the limit is {max_bytes}")
    try:
        key.decode("utf-8")
    except UnicodeDecodeError:
        raise bad("the key is not valid UTF-8") from None
    return key


# The query strings nearly every request carries, parsed once: nothing in them needs
# decoding, so the table's answer is what aiohttp's query parser would give.
_COMMON_QUERIES: dict[str, dict[str, str]] = {
    "": {}, **{f"consistency={level}": {"consistency": level} for level in KV_LEVELS}}


def _query(request: web.BaseRequest, allowed: frozenset[str]) -> Mapping[str, str]:
    """The query parameters (the first value of each), refusing any the route does not
    take: a misspelt parameter silently ignored would be a wrong answer."""
    query: Mapping[str, str] | None = _COMMON_QUERIES.get(_target(request)[1])
    if query is None:
        query = request.query
    unknown = set(query) - allowed
    if unknown:
        raise bad(f"unknown query parameter(s): {', '.join(sorted(unknown))[:200]}")
    return query


def _query_bytes(request: web.BaseRequest, name: str) -> bytes:
    """A query parameter's value as the bytes the client sent (the first one, as `_query`
    takes; b"" when absent): aiohttp's query decodes them as UTF-8 with U+FFFD for what is
    not, so a prefix cut inside a character (`%F0%9F`) would match nothing."""
    for field in _target(request)[1].split("&"):
        raw_name, _, value = field.partition("=")
        if unquote_plus(raw_name) == name:
            return unquote_to_bytes(value.replace("+", " "))
    return b""


def _consistency(query: Mapping[str, str]) -> str:
    level = query.get("consistency", "quorum")
    if level not in KV_LEVELS:
        raise bad("consistency must be one, quorum, all or serial")
    return level


def _commit_level(level: str) -> str:
    """How many replicas must apply a decided write before the answer (Cassandra's commit
    consistency): the request's level, a quorum for `serial`."""
    return "quorum" if level == SERIAL else level


def _ttl(query: Mapping[str, str]) -> int | None:
    raw = query.get("ttl")
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_TTL:
        raise bad(f"ttl must be an integer number of seconds from 1 to {MAX_TTL}")
    return int(raw)


def _preconditions(request: web.BaseRequest) -> Preconditions:
    """`If-Match` and `If-None-Match` (docs: ringkv.node.preconditions)."""
    headers = request.headers
    if "If-Match" not in headers and "If-None-Match" not in headers:
        return preconditions.NONE
    try:
        return preconditions.parse(headers.getall("If-Match", ()), headers.getall("If-None-Match", ()))
    except ValueError as exc:
        raise bad(str(exc)) from None


def _content_type(request: web.BaseRequest) -> str:
    ctype = request.headers.get("Content-Type", DEFAULT_CONTENT_TYPE).strip()
    if not ctype:
        return DEFAULT_CONTENT_TYPE
    if len(ctype) > 255 or not ctype.isascii() or not ctype.isprintable():
        raise bad("Content-Type must be printable ASCII of at most 255 characters")
    return ctype


def _int_param(query: Mapping[str, str], name: str, low: int, high: int,
               default: int | None = None) -> int:
    raw = query.get(name)
    if raw is None and default is not None:
        return default
    if raw is None or not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise bad(f"{name} must be an integer from {low} to {high}")
    return int(raw)


async def _read_body(request: web.BaseRequest, limit: int, timeout: float) -> bytes:
    """A request body of at most `limit` bytes (413 past it), sent within `timeout` (408)."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large",
                       f"the body is {request.content_length} bytes; the limit is {limit}")
    await _invite_body(request)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > limit:
                    raise ApiError(413, "payload_too_large", f"the body exceeds {limit} bytes")
    except RequestPayloadError as exc:
        raise bad(f"the request body could not be read: {exc}") from None
    except TimeoutError:
        raise ApiError(408, "request_timeout", f"the body did not arrive within {timeout:g}s") from None
    return bytes(body)


def _etag(version: Version) -> str:
    return f'"{version}"'


def _unmet(failure: Failure, rec: Record) -> web.Response:
    """A read whose precondition fails: 304 for a matching If-None-Match (the client's
    copy is current), else 412 (RFC 9110 §13.1)."""
    if failure.header == "If-None-Match":
        return web.Response(status=304, headers={"ETag": _etag(rec.version)})
    raise ApiError(412, "precondition_failed", failure.message)


def _written(key: bytes, rec: Record) -> bytes:
    """A write's answer, as json.dumps({"key": ..., "version": ...}) writes it, without the dict."""
    return f'{{"key": {json.dumps(key.decode())}, "version": "{rec.version}"}}'.encode()


# -- handlers ---------------------------------------------------------------------------
class Node(Protocol):
    """What the handlers need of their node (`service.NodeService`): the coordinator for
    client requests, the peer RPCs for cluster-wide answers, backups, and what the node
    reports of itself. Nothing of its storage, links or background loops."""

    name: str
    settings: Settings
    clock: HybridClock
    metrics: Metrics
    coordinator: Coordinator
    proposer: Proposer
    backups: Backups
    changes: ChangeLog

    @property
    def view(self) -> View: ...

    @property
    def epoch(self) -> int: ...

    @property
    def ready(self) -> bool: ...

    @property
    def synchronous(self) -> str: ...

    async def call(self, name: str, request: peerops.Request) -> Any: ...

    async def status(self, fresh: bool = False) -> dict[str, Any]: ...


class Api:
    def __init__(self, service: Node) -> None:
        self.service = service
        self.settings = service.settings
        self.coordinator = service.coordinator
        self.proposer = service.proposer

    def key(self, request: web.BaseRequest, prefix: str = KV_PREFIX) -> bytes:
        return _key_from_path(request, prefix, self.settings.max_key_bytes)

    async def put(self, request: web.BaseRequest) -> RawResponse:
        query = _query(request, PUT_QUERY)
        key = self.key(request)
        level = _consistency(query)
        ttl = _ttl(query)
        conditions = _preconditions(request)
        ctype = _content_type(request)
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            # Values are stored as sent: decoding would store other bytes than the client's
            # (and a small compressed body can expand a thousandfold).
            raise bad("Content-Encoding is not supported: send the value as it should be stored")
        if ",".join(request.headers.getall("Transfer-Encoding", ())).strip().lower() not in ("", "chunked"):
            # aiohttp decodes only the chunked framing and would hand over the rest as it came.
            raise bad("Transfer-Encoding other than chunked is not supported: send the value as "
                      "it should be stored")
        limit = self.settings.max_value_bytes
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, "payload_too_large",
                           f"the value is {request.content_length} bytes; the limit is {limit}")
        await _invite_body(request)
        try:
            if request.content.is_eof():  # all of it arrived (as small values do): no wait
                value = await request.read()
            else:
                # A client that trickles its body would hold a connection and a buffer forever.
                async with asyncio.timeout(self.settings.body_timeout):
                    value = await request.read()
        except RequestPayloadError as exc:
            raise bad(f"the request body could not be read: {exc}") from None
        except TimeoutError:
            raise ApiError(408, "request_timeout",
                           f"the body did not arrive within {self.settings.body_timeout:g}s") from None
        if len(value) > limit:
            raise ApiError(413, "payload_too_large", f"the value exceeds {limit} bytes")
        # Only a Paxos round reads first, so only it can tell a creation (201) from a
        # replacement; a plain PUT is a blind write and answers 200 either way.
        created = False
        if conditions.given or level == SERIAL:
            decided = await self.proposer.write(
                key, ConditionalWrite(key, value, ctype, conditions, ttl), _commit_level(level))
            rec, created = decided.record, not self._live(decided.previous)
        else:
            rec = await self.coordinator.write(key, value, ctype, level, ttl=ttl)
        return RawResponse(201 if created else 200, _written(key, rec), _etag(rec.version),
                           JSON_TYPE)

    def _live(self, rec: Record | None) -> bool:
        return rec is not None and rec.live(self.service.clock.physical_ms())

    async def _read_live(self, request: web.BaseRequest) -> tuple[Record, Failure | None]:
        """The key's live record (404 if none) and which of the request's preconditions
        it fails; a 404 ignores them (RFC 9110 §13.2.1)."""
        query = _query(request, READ_QUERY)
        key = self.key(request)
        conditions = _preconditions(request)
        level = _consistency(query)
        if level == SERIAL:
            rec = await self.proposer.read(key)
        else:
            rec = await self.coordinator.read(key, level)
        if rec is None or not self._live(rec):
            raise ApiError(404, "not_found", "no such key")
        return rec, conditions.failure(rec.version) if conditions.given else None

    async def get(self, request: web.BaseRequest) -> Response:
        rec, failure = await self._read_live(request)
        if failure is not None:
            return _unmet(failure, rec)
        ctype = rec.content_type
        if not ctype.isprintable():  # never sent (PUT validates it); a header must not break
            ctype = DEFAULT_CONTENT_TYPE
        return RawResponse(200, rec.value, _etag(rec.version), ctype)

    async def head(self, request: web.BaseRequest) -> web.Response:
        try:
            rec, failure = await self._read_live(request)
            if failure is not None:
                return _unmet(failure, rec)
        except ApiError as exc:  # HEAD has no body: status and headers only
            return web.Response(status=exc.status, content_type="application/json")
        return web.Response(headers={
            "ETag": _etag(rec.version),
            "Content-Type": rec.content_type,
            "Content-Length": str(len(rec.value)),
        })

    async def delete(self, request: web.BaseRequest) -> web.Response:
        query = _query(request, READ_QUERY)
        key = self.key(request)
        level = _consistency(query)
        conditions = _preconditions(request)
        if conditions.given or level == SERIAL:
            delete = ConditionalWrite(key, b"", DEFAULT_CONTENT_TYPE, conditions, tombstone=True)
            rec = (await self.proposer.write(key, delete, _commit_level(level))).record
        else:
            rec = await self.coordinator.write(key, b"", DEFAULT_CONTENT_TYPE, level, tombstone=True)
        return web.Response(status=204, headers={"ETag": _etag(rec.version)})

    async def post(self, request: web.BaseRequest) -> web.Response:
        """`POST /v1/kv/{key}?op=incr&by=N`: add N (default 1) to a decimal integer value
        (absent: 0) in one Paxos round; answers the new value."""
        query = _query(request, INCR_QUERY)
        key = self.key(request)
        if query.get("op") != "incr":
            raise bad("POST on a key takes op=incr")
        by = parse_int(query.get("by", "1"))
        if by is None:
            raise bad("by must be a decimal integer that fits in 64 bits")
        level, ttl, conditions = _consistency(query), _ttl(query), _preconditions(request)
        if request.content_length or not request.content.is_eof():
            raise bad("op=incr takes no body")
        decided: Decided = await self.proposer.write(
            key, Increment(key, by, ttl, conditions), _commit_level(level))
        rec = decided.record
        return web.json_response(
            {"key": key.decode(), "version": str(rec.version), "value": int(rec.value)},
            headers={"ETag": _etag(rec.version)})

    async def list(self, request: web.BaseRequest) -> web.Response:
        query = _query(request, LIST_QUERY)
        prefix = _query_bytes(request, "prefix")
        if len(prefix) > self.settings.max_key_bytes:
            raise bad("the prefix is longer than the key limit")
        raw_limit = query.get("limit", "100")
        if not raw_limit.isascii() or not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIST_LIMIT:
            raise bad(f"limit must be an integer from 1 to {MAX_LIST_LIMIT}")
        after = None
        cursor = query.get("cursor")
        if cursor:
            try:
                padded = cursor.encode() + b"=" * (-len(cursor) % 4)
                after = base64.b64decode(padded, altchars=b"-_", validate=True)
            except (binascii.Error, ValueError):
                raise bad("the cursor is not one this API returned") from None
        keys, last = await self.coordinator.list_keys(prefix, after, int(raw_limit))
        next_cursor = (
            base64.urlsafe_b64encode(last).rstrip(b"=").decode() if last is not None else None
        )
        return web.json_response(
            {"keys": [k.decode("utf-8", "replace") for k in keys], "cursor": next_cursor}
        )

    async def replicas(self, request: web.BaseRequest) -> web.Response:
        _query(request, NO_QUERY)
        key = self.key(request, REPLICAS_PREFIX)
        entries = await self.coordinator.replica_versions(key)
        return web.json_response({"key": key.decode(), "replicas": entries})

    async def cluster(self, request: web.BaseRequest) -> web.Response:
        _query(request, NO_QUERY)
        service = self.service
        view = service.view
        names = list(view.by_name)
        statuses = await asyncio.gather(
            *(asyncio.wait_for(service.call(n, peerops.status(fresh=True)), 5.0) for n in names),
            return_exceptions=True,
        )
        members = []
        for name, status in zip(names, statuses, strict=True):
            member = view.by_name[name]
            entry: dict[str, Any] = {**member.to_json(), "reachable": isinstance(status, dict)}
            if isinstance(status, dict):
                entry.update(records=status["records"], tombstones=status["tombstones"],
                             hints_pending=status["hints_pending"], epoch=status["epoch"],
                             ready=status["ready"], caught_up=status["caught_up"],
                             trusted=status["trusted"], waiting=status["waiting"],
                             rebalance=status["rebalance"],
                             rebuilding=status.get("rebuilding", False),
                             disk_full=status.get("disk_full", False))
            members.append(entry)
        ownership = view.target.ownership()
        for entry in members:
            entry["ownership"] = round(ownership.get(entry["name"], 0.0), 4)
        doc = view.doc
        reachable = [m for m in members if m["reachable"]]
        return web.json_response({
            "cluster": service.settings.cluster_name,
            "node": service.name,
            "epoch": doc.epoch,
            "settled": doc.settled,
            "rf": doc.rf,
            "replicas_per_key": min(doc.rf, len(doc.target_names)),
            "base": list(doc.base_names()),
            "members": members,
            # Why the epoch cannot settle yet, in the members' words (a range with no live
            # replica that holds data, replicas that do not answer).
            "waiting": [f"{m['name']}: {line}" for m in reachable for line in m["waiting"]],
            "rebalance": {
                "active": any(m["rebalance"]["active"] for m in reachable),
                "ranges_left": sum(m["rebalance"]["ranges_left"] for m in reachable),
                "keys_received": sum(m["rebalance"]["keys_received"] for m in reachable),
                "bytes_received": sum(m["rebalance"]["bytes_received"] for m in reachable),
            },
            "storage": {"engine": service.settings.storage,
                        "synchronous": service.synchronous},
        })

    async def history(self, request: web.BaseRequest) -> web.Response:
        _query(request, NO_QUERY)
        return web.json_response({"node": self.service.name, "epoch": self.service.epoch,
                                  "changes": self.service.changes.to_json()})

    async def stats(self, request: web.BaseRequest) -> web.Response:
        query = _query(request, STATS_QUERY)
        raw = query.get("since")
        if raw is not None and not (raw.isascii() and raw.isdigit() and len(raw) <= 16):
            raise bad("since must be a time in milliseconds since the epoch")
        since = None if raw is None else int(raw)
        service = self.service
        names = list(service.view.by_name)
        answers = await asyncio.gather(
            *(asyncio.wait_for(service.call(n, peerops.stats(since)), 5.0) for n in names),
            return_exceptions=True,
        )
        members = []
        for name, answer in zip(names, answers, strict=True):
            if isinstance(answer, dict):
                members.append({**answer, "reachable": True})
            else:
                members.append({"node": name, "reachable": False})
        return web.json_response({"node": service.name, "time_ms": wall_ms(),
                                  "interval_s": INTERVAL_S, "members": members})

    async def ring(self, request: web.BaseRequest) -> web.Response:
        _query(request, NO_QUERY)
        view = self.service.view
        changes = view.changes()
        return web.json_response({
            "epoch": view.doc.epoch,
            "rf": view.doc.rf,
            "vnodes": self.settings.vnodes,
            "settled": view.doc.settled,
            "target": layout(view.target),
            "base": layout(view.base) if view.transitioning else None,
            "moving": moving(changes),
            "moving_fraction": round(sum(c.range.width for c in changes) / (MAX_TOKEN + 1), 6),
        })

    # -- backup and restore (see backup.py) --------------------------------------------
    async def backup_export(self, request: web.BaseRequest) -> web.Response:
        query = _query(request, EXPORT_QUERY)
        parts = _int_param(query, "parts", 1, backup.MAX_PARTS)
        rng = backup.part_range(_int_param(query, "part", 0, parts - 1), parts)
        limit = _int_param(query, "limit", 1, backup.MAX_PAGE, default=backup.MAX_PAGE)
        cursor = query.get("cursor")
        try:
            after = backup.decode_cursor(cursor, rng) if cursor else None
        except ValueError as exc:
            raise bad(str(exc)) from None
        page = await self.service.backups.export(rng, after, limit)
        body = msgpack.packb({
            "records": [backup.to_public(r) for r in page.records],
            "cursor": None if page.after is None else backup.encode_cursor(page.after),
            "done": page.done,
        })
        return web.Response(body=body, content_type=MSGPACK_TYPE)

    async def backup_import(self, request: web.BaseRequest) -> web.Response:
        _query(request, NO_QUERY)
        limit = self.settings.max_value_bytes + backup.IMPORT_SLACK_BYTES
        body = await _read_body(request, limit, self.settings.body_timeout)
        try:
            items = msgpack.unpackb(body)
        except (ValueError, msgpack.UnpackException) as exc:
            raise bad(f"the body is not one msgpack document: {type(exc).__name__}") from None
        if not isinstance(items, list) or not 1 <= len(items) <= backup.MAX_IMPORT_RECORDS:
            raise bad(f"the body is a msgpack array of 1 to {backup.MAX_IMPORT_RECORDS} records")
        now = self.service.clock.physical_ms()
        records = []
        for i, item in enumerate(items):
            try:
                records.append(backup.from_public(item, self.settings, now))
            except ValueError as exc:
                raise bad(f"record {i}: {exc}") from None
        await self.service.backups.import_records(records)
        return web.json_response({"merged": len(records)})

    async def backup_last(self, request: web.BaseRequest) -> web.Response:
        _query(request, NO_QUERY)
        last = self.service.backups.last
        return web.json_response({"last": None if last is None else dataclasses.asdict(last)})

    async def report_backup(self, request: web.BaseRequest) -> web.Response:
        _query(request, NO_QUERY)
        body = await _read_body(request, MAX_REPORT_BYTES, self.settings.body_timeout)
        try:
            report = backup.Report.from_json(json.loads(body))
        except ValueError as exc:
            raise bad(f"not a backup report: {exc}") from None
        stored = await self.service.backups.report(report)
        if not stored:
            raise ApiError(503, "quorum_unavailable", "no member stored the report", acked=0, needed=1)
        return web.json_response({"stored_on": stored})

    async def healthz(self, request: web.BaseRequest) -> web.Response:
        return web.json_response({"status": "ok", "node": self.service.name})

    async def readyz(self, request: web.BaseRequest) -> web.Response:
        if self.service.ready:
            return web.json_response({"status": "ready", "epoch": self.service.epoch})
        return error_response(503, "not_ready",
                              "no membership yet, or its data is being rebuilt (joining)")

    async def metrics(self, request: web.BaseRequest) -> web.Response:
        await self.service.status()  # refresh gauges
        return web.Response(body=self.service.metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def openapi(self, request: web.BaseRequest) -> web.Response:
        return web.Response(text=json.dumps(openapi_document(self.settings)),
                            content_type="application/json")


def make_server(service: Node, paths: Collection[str] | None = None, **kwargs: Any) -> web.Server:
    """aiohttp's low-level server with the dispatcher as its one handler, for every path
    or only `paths`; `kwargs` go to aiohttp's connection handler (limits, keep-alive)."""
    max_size = service.settings.max_value_bytes + 1

    def request_factory(message: Any, payload: Any, protocol: Any, writer: Any,
                        task: Any) -> web.BaseRequest:
        return web.BaseRequest(message, payload, protocol, writer, task, protocol._loop,
                               client_max_size=max_size)

    # aiohttp annotates the handler as answering a StreamResponse; the dispatcher may answer
    # a RawResponse, which is not one but does what aiohttp's request handler calls on an
    # answer (see responses.py).
    return web.Server(Dispatcher(Api(service), service.metrics, paths),  # type: ignore[arg-type]
                      request_factory=request_factory, **kwargs)
