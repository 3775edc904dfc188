"""Client and CLI tests that need no ringkv node.

The clients talk to a small aiohttp server defined here that answers as DESIGN.md's public
API does (route ``/v1/kv/{key:.+}``, JSON errors, ETags, list pages); it runs on its own
event loop in a thread so the blocking client can call it too.
"""

from __future__ import annotations

import asyncio
import json
import random
import select
import socket
import sys
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from ringkv.client import (
    AsyncClient,
    BadRequest,
    Client,
    ConflictRetryExhausted,
    InsufficientStorage,
    InternalError,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    QuorumUnavailable,
    RingkvError,
    Unauthorized,
    Unavailable,
    cli,
    encode_key,
    wire,
)
from ringkv.client.errors import error_from_response

TOKEN = "s3cret-token"

ODD_KEYS = [
    "plain",
    "a/b/c",
    "/leading",
    "trailing/",
    "double//slash",
    "100%",
    "%2F",
    "%25",
    "what?x=1&y=2",
    "#fragment",
    "with space",
    "plus+sign",
    "naïve/ключ/鍵/🔑",
    ".",
    "..",
    "a/../b",
    "a/./b",
    "semi;colon,comma",
    "~tilde",
    "back\\slash",
]


# --- a fake node that answers like the documented API ---------------------------------------


def _error(status: int, code: str, message: str, **extra: object) -> web.Response:
    body = {"error": {"code": code, "message": message, **extra}}
    return web.json_response(body, status=status)


@dataclass
class FakeNode:
    """One node; every node of a test shares ``store`` so any of them serves any key."""

    name: str
    store: dict[str, tuple[bytes, str, str]]
    seen: list[tuple[str, str]] = field(default_factory=list)
    forced: tuple[int, str, dict[str, object]] | None = None
    hang: bool = False
    drop: bool = False
    ready: bool = True
    release: asyncio.Event | None = None
    url: str = ""
    _clock: int = 0

    def _version(self) -> str:
        self._clock += 1
        return f"{len(self.store) * 1000 + self._clock}.{self.name}"

    @web.middleware
    async def middleware(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        if request.path.startswith("/v1/"):
            self.seen.append((request.method, request.path))
            if request.headers.get("Authorization") != f"Bearer {TOKEN}":
                return _error(401, "unauthorized", "missing or wrong bearer token")
            if self.hang:
                assert self.release is not None
                await asyncio.wait_for(self.release.wait(), 30)
            if self.drop:
                assert request.transport is not None
                request.transport.close()
                return web.Response()
            if self.forced is not None:
                status, code, extra = self.forced
                return _error(status, code, f"forced {code}", **extra)
            consistency = request.query.get("consistency")
            if consistency is not None and consistency not in ("one", "quorum", "all"):
                return _error(400, "bad_request", "consistency must be one, quorum or all")
        return await handler(request)

    async def put(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        ttl = request.query.get("ttl")
        if ttl is not None and not (ttl.isdigit() and 1 <= int(ttl) <= 315_360_000):
            return _error(400, "bad_request", "ttl must be an integer 1..315360000")
        current = self.store.get(key)
        status = 200
        if request.headers.get("If-None-Match") == "*":
            if current is not None:
                return _error(412, "precondition_failed", "key exists")
            status = 201
        if_match = request.headers.get("If-Match")
        if if_match is not None and (current is None or (if_match != "*" and if_match != f'"{current[2]}"')):
            return _error(412, "precondition_failed", "version differs")
        body = await request.read()
        if len(body) > 1024:
            return _error(413, "payload_too_large", "value over 1024 bytes")
        version = self._version()
        self.store[key] = (body, request.headers.get("Content-Type", ""), version)
        return web.json_response(
            {"key": key, "version": version}, status=status, headers={"ETag": f'"{version}"'}
        )

    async def get(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        if key not in self.store:
            return _error(404, "not_found", "no such key")
        value, content_type, version = self.store[key]
        resp = web.Response(body=value, headers={"ETag": f'"{version}"'})
        resp.headers["Content-Type"] = content_type
        return resp

    async def delete(self, request: web.Request) -> web.Response:
        current = self.store.get(request.match_info["key"])
        if_match = request.headers.get("If-Match")
        if if_match is not None and (current is None or if_match != f'"{current[2]}"'):
            return _error(412, "precondition_failed", "version differs")
        self.store.pop(request.match_info["key"], None)
        return web.Response(status=204, headers={"ETag": f'"{self._version()}"'})

    async def list_keys(self, request: web.Request) -> web.Response:
        prefix = request.query.get("prefix", "")
        limit = int(request.query.get("limit", "100"))
        after = request.query.get("cursor", "")
        keys = sorted((k for k in self.store if k.startswith(prefix)), key=str.encode)
        keys = [k for k in keys if k.encode() > after.encode()]
        page = keys[:limit]
        cursor = page[-1] if len(keys) > limit else None
        return web.json_response({"keys": page, "cursor": cursor})

    async def cluster(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "epoch": 7,
                "settled": False,
                "rf": 3,
                "members": [
                    {
                        "name": "node-0",
                        "state": "normal",
                        "api_url": self.url,
                        "reachable": True,
                        "ready": True,
                        "records": 10,
                        "ownership": 0.6,
                    },
                    {"name": "node-1", "state": "joining", "url": "x:1", "reachable": False},
                ],
                "rebalance": {"ranges_pending": 3, "bytes_streamed": 4096},
            }
        )

    async def replicas(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        version = self.store[key][2] if key in self.store else None
        return web.json_response({"key": key, "replicas": [{"node": "node-0", "version": version}]})

    async def readyz(self, _request: web.Request) -> web.Response:
        return web.Response(status=200 if self.ready else 503)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware])
        app.router.add_get("/v1/kv", self.list_keys)
        app.router.add_put("/v1/kv/{key:.+}", self.put)
        app.router.add_get("/v1/kv/{key:.+}", self.get)  # also HEAD
        app.router.add_delete("/v1/kv/{key:.+}", self.delete)
        app.router.add_get("/v1/cluster", self.cluster)
        app.router.add_get("/v1/replicas/{key:.+}", self.replicas)
        app.router.add_get("/readyz", self.readyz)
        return app


class Servers:
    """Fake nodes on one background event loop, on random loopback ports."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.store: dict[str, tuple[bytes, str, str]] = {}
        self.runners: list[web.AppRunner] = []
        self.nodes: list[FakeNode] = []

    def _run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def start(self, keepalive_timeout: float = 75.0) -> FakeNode:
        node = FakeNode(f"node-{len(self.nodes)}", self.store)

        async def start() -> None:
            node.release = asyncio.Event()
            runner = web.AppRunner(node.app(), shutdown_timeout=1.0, keepalive_timeout=keepalive_timeout)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            node.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            self.runners.append(runner)

        self._run(start())
        self.nodes.append(node)
        return node

    def stop(self) -> None:
        for node in self.nodes:
            assert node.release is not None
            self.loop.call_soon_threadsafe(node.release.set)
        for runner in self.runners:
            self._run(runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def servers() -> Iterator[Servers]:
    s = Servers()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def node(servers: Servers) -> FakeNode:
    return servers.start()


@pytest.fixture
def closed_url() -> str:
    """A loopback URL nothing listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _puts(node: FakeNode) -> int:
    return sum(1 for method, _ in node.seen if method == "PUT")


# --- key encoding -----------------------------------------------------------------------------


def test_encode_key_keeps_slashes_and_escapes_the_rest() -> None:
    assert encode_key("a/b") == "a/b"
    assert encode_key("a b?c#d%e") == "a%20b%3Fc%23d%25e"
    assert encode_key("é") == "%C3%A9"
    assert encode_key("a/../b") == "a/%2E%2E/b"
    assert encode_key(".") == "%2E"
    assert encode_key("a.b/..c") == "a.b/..c"


@pytest.mark.parametrize("bad", ["", None, 3])
def test_encode_key_rejects_non_keys(bad: object) -> None:
    with pytest.raises(ValueError):
        encode_key(bad)  # type: ignore[arg-type]


def test_odd_keys_round_trip_sync(node: FakeNode) -> None:
    with Client(node.url, token=TOKEN) as c:
        for i, key in enumerate(ODD_KEYS):
            c.put(key, f"v{i}")
            assert key in node.store, f"server decoded {key!r} differently"
            entry = c.get(key)
            assert (entry.key, entry.value) == (key, f"v{i}".encode())
            assert c.replicas(key)["key"] == key
        assert sorted(c.list(limit=1000).keys) == sorted(ODD_KEYS)


async def test_odd_keys_round_trip_async(node: FakeNode) -> None:
    async with AsyncClient([node.url], token=TOKEN) as c:
        for i, key in enumerate(ODD_KEYS):
            await c.put(key, f"v{i}")
            assert key in node.store, f"server decoded {key!r} differently"
            assert (await c.get(key)).value == f"v{i}".encode()
            await c.delete(key)
            assert key not in node.store


# --- error mapping ----------------------------------------------------------------------------

JSON = {"content-type": "application/json; charset=utf-8"}


def _body(code: str, **extra: object) -> bytes:
    return json.dumps({"error": {"code": code, "message": "m", **extra}}).encode()


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "bad_request", BadRequest),
        (401, "unauthorized", Unauthorized),
        (404, "not_found", NotFound),
        (412, "precondition_failed", PreconditionFailed),
        (413, "payload_too_large", PayloadTooLarge),
        (503, "conflict_retry_exhausted", ConflictRetryExhausted),
        (507, "insufficient_storage", InsufficientStorage),
        (500, "internal", InternalError),
    ],
)
def test_error_codes_map_to_classes(status: int, code: str, cls: type[RingkvError]) -> None:
    err = error_from_response(status, JSON, _body(code))
    assert type(err) is cls
    assert (err.code, err.message, err.status) == (code, "m", status)


def test_quorum_error_carries_counts() -> None:
    err = error_from_response(503, JSON, _body("quorum_unavailable", acked=1, needed=2))
    assert isinstance(err, QuorumUnavailable)
    assert (err.acked, err.needed, err.status) == (1, 2, 503)


def test_errors_without_json_map_by_status() -> None:
    assert type(error_from_response(404, {}, b"")) is NotFound  # a HEAD answer has no body
    assert type(error_from_response(401, {"content-type": "text/html"}, b"<h1>")) is Unauthorized
    assert type(error_from_response(502, {}, b"bad gateway")) is Unavailable
    assert type(error_from_response(418, JSON, b"{not json")) is RingkvError
    unknown = error_from_response(409, JSON, _body("brand_new_code"))
    assert (type(unknown), unknown.code) == (RingkvError, "brand_new_code")


# --- the clients against the fake node --------------------------------------------------------


def test_sync_client_api(node: FakeNode) -> None:
    with Client(node.url, token=TOKEN) as c:
        v1 = c.put("k", b"\x00\xff", ttl=60, consistency="all")
        assert v1.endswith(".node-0")
        entry = c.get("k", consistency="one")
        assert (entry.value, entry.content_type, entry.version) == (
            b"\x00\xff",
            "application/octet-stream",
            v1,
        )
        meta = c.head("k")
        assert (meta.version, meta.size) == (v1, 2)
        c.put("t", "text")
        assert c.get("t").content_type == "text/plain; charset=utf-8"
        assert c.put("j", "{}", content_type="application/json")
        assert c.get("j").content_type == "application/json"

        v2 = c.put("k", b"new", if_match=v1)
        with pytest.raises(PreconditionFailed):
            c.put("k", b"newer", if_match=v1)
        with pytest.raises(PreconditionFailed):
            c.put("k", b"x", if_none_match=True)
        assert c.put("fresh", b"x", if_none_match=True)
        assert c.put("k", b"any", if_match="*") != v2

        current = c.head("k").version
        with pytest.raises(PreconditionFailed):
            c.delete("k", if_match=v1)
        tomb = c.delete("k", if_match=current)
        assert tomb.endswith(".node-0")
        with pytest.raises(NotFound):
            c.get("k")
        with pytest.raises(NotFound):
            c.head("k")
        assert c.delete("k")  # idempotent
        with pytest.raises(BadRequest):
            c.put("k", b"x", ttl=0)
        with pytest.raises(PayloadTooLarge):
            c.put("big", b"x" * 2000)

        assert c.cluster()["epoch"] == 7
        assert c.ready() is True
        node.ready = False
        assert c.ready(node.url) is False


def test_sync_list_and_pages(node: FakeNode) -> None:
    with Client(node.url, token=TOKEN) as c:
        for i in range(7):
            c.put(f"p/{i}", b"v")
        c.put("q", b"v")
        first = c.list("p/", limit=3)
        assert (first.keys, first.cursor is not None) == (["p/0", "p/1", "p/2"], True)
        assert [p.keys for p in c.pages("p/", limit=3)] == [
            ["p/0", "p/1", "p/2"],
            ["p/3", "p/4", "p/5"],
            ["p/6"],
        ]
        assert c.list().keys[-1] == "q"


async def test_async_client_api(node: FakeNode) -> None:
    async with AsyncClient(node.url, token=TOKEN) as c:
        v1 = await c.put("k", "text", ttl=5)
        entry = await c.get("k")
        assert (entry.value, entry.version) == (b"text", v1)
        assert (await c.head("k")).version == v1
        with pytest.raises(PreconditionFailed):
            await c.put("k", b"x", if_none_match=True)
        await c.put("k", b"y", if_match=v1)
        assert (await c.delete("k")).endswith(".node-0")
        with pytest.raises(NotFound):
            await c.get("k")
        for i in range(5):
            await c.put(f"p/{i}", b"v")
        pages = [p.keys async for p in c.pages("p/", limit=2)]
        assert pages == [["p/0", "p/1"], ["p/2", "p/3"], ["p/4"]]
        assert (await c.cluster())["rf"] == 3
        assert (await c.replicas("p/1"))["key"] == "p/1"
        assert await c.ready() is True


def test_wrong_token_is_unauthorized(node: FakeNode) -> None:
    with Client(node.url, token="wrong") as c, pytest.raises(Unauthorized):
        c.get("k")
    with Client(node.url) as c, pytest.raises(Unauthorized):
        c.list()


# --- retries across nodes ---------------------------------------------------------------------


def test_sync_retries_next_url_when_first_is_down(node: FakeNode, closed_url: str) -> None:
    with Client([closed_url, node.url], token=TOKEN) as c:
        version = c.put("k", b"v")  # never sent to the closed port: safe to send elsewhere
        assert c.get("k").version == version
        assert c.ready(closed_url) is False
    assert node.seen.count(("PUT", "/v1/kv/k")) == 1


async def test_async_retries_next_url_when_first_is_down(node: FakeNode, closed_url: str) -> None:
    async with AsyncClient([closed_url, node.url], token=TOKEN) as c:
        version = await c.put("k", b"v")
        assert (await c.get("k")).version == version
        assert await c.ready(closed_url) is False
    assert node.seen.count(("PUT", "/v1/kv/k")) == 1


def test_all_down_is_unavailable(closed_url: str) -> None:
    with Client(f"{closed_url},{closed_url}/", attempts=2) as c, pytest.raises(Unavailable) as e:
        c.get("k")
    assert e.value.urls == (closed_url,)
    assert not e.value.maybe_applied
    assert e.value.refused and not e.value.dropped


async def test_async_all_down_is_unavailable(closed_url: str) -> None:
    async with AsyncClient(closed_url) as c:
        with pytest.raises(Unavailable) as e:
            await c.put("k", b"v")
    assert not e.value.maybe_applied
    assert e.value.refused and not e.value.dropped


def test_503_read_goes_to_next_node_but_write_does_not(servers: Servers) -> None:
    sick, well = servers.start(), servers.start()
    sick.forced = (503, "quorum_unavailable", {"acked": 1, "needed": 2})
    servers.store["k"] = (b"v", "text/plain", "1.node-1")
    with Client([sick.url, well.url], token=TOKEN) as c:
        assert c.get("k").value == b"v"
        assert c.list().keys == ["k"]
    with Client([sick.url, well.url], token=TOKEN) as c:
        with pytest.raises(QuorumUnavailable) as e:
            c.put("k", b"w")
        assert (e.value.acked, e.value.needed) == (1, 2)
        c.delete("k")  # the next call starts at the node after the one that answered 503
    assert _puts(sick) == 1 and _puts(well) == 0
    assert ("DELETE", "/v1/kv/k") in well.seen and ("DELETE", "/v1/kv/k") not in sick.seen


async def test_async_503_write_is_not_retried(servers: Servers) -> None:
    sick, well = servers.start(), servers.start()
    sick.forced = (503, "conflict_retry_exhausted", {})
    async with AsyncClient([sick.url, well.url], token=TOKEN) as c:
        with pytest.raises(ConflictRetryExhausted):
            await c.put("k", b"w")
        await c.put("k", b"w")  # the sick node was moved past: the next call starts elsewhere
    assert _puts(sick) == 1 and _puts(well) == 1


# The client's timeout in the tests with a node that hangs: every call to that node costs
# this long, and the node that does answer must do so within it, also on a loaded machine.
HANG_TIMEOUT = 2.0


def test_timeout_read_retries_write_reports_maybe_applied(servers: Servers) -> None:
    slow, well = servers.start(), servers.start()
    slow.hang = True
    servers.store["k"] = (b"v", "text/plain", "1.node-1")
    with Client([slow.url, well.url], token=TOKEN, timeout=HANG_TIMEOUT) as c:
        assert c.get("k").value == b"v"
    with (
        Client([slow.url, well.url], token=TOKEN, timeout=HANG_TIMEOUT) as c,
        pytest.raises(Unavailable) as e,
    ):
        c.put("k", b"w")
    assert e.value.maybe_applied and e.value.timed_out
    assert _puts(well) == 0


async def test_async_timeout_read_retries_write_reports_maybe_applied(servers: Servers) -> None:
    slow, well = servers.start(), servers.start()
    slow.hang = True
    servers.store["k"] = (b"v", "text/plain", "1.node-1")
    async with AsyncClient([slow.url, well.url], token=TOKEN, timeout=HANG_TIMEOUT) as c:
        assert (await c.get("k")).value == b"v"
    async with AsyncClient([slow.url, well.url], token=TOKEN, timeout=HANG_TIMEOUT) as c:
        with pytest.raises(Unavailable) as e:
            await c.put("k", b"w")
    assert e.value.maybe_applied and e.value.timed_out
    assert _puts(well) == 0


def test_dropped_write_is_not_sent_elsewhere(servers: Servers) -> None:
    flaky, well = servers.start(), servers.start()
    flaky.drop = True
    with Client([flaky.url, well.url], token=TOKEN) as c, pytest.raises(Unavailable) as e:
        c.delete("k")
    assert e.value.maybe_applied
    assert flaky.seen == [("DELETE", "/v1/kv/k")] and well.seen == []


async def test_async_dropped_write_is_not_sent_elsewhere(servers: Servers) -> None:
    flaky, well = servers.start(), servers.start()
    flaky.drop = True
    async with AsyncClient([flaky.url, well.url], token=TOKEN) as c:
        with pytest.raises(Unavailable) as e:
            await c.put("k", b"v")
        assert e.value.maybe_applied
        flaky.drop = False
        assert (await c.list()).keys == []
    assert _puts(well) == 0
    assert ("GET", "/v1/kv") in well.seen  # the call after a failure starts at the next node


def test_sync_client_replaces_a_connection_the_node_closed(servers: Servers) -> None:
    node = servers.start(keepalive_timeout=0.2)
    with Client(node.url, token=TOKEN) as c:
        c.put("k", b"1")
        conn = c._conns[node.url]
        deadline = time.monotonic() + 10
        while not select.select([conn.sock], [], [], 0.05)[0]:
            assert time.monotonic() < deadline, "node never closed the idle connection"
        c.put("k", b"2")  # a write is never sent on the dead socket
    assert _puts(node) == 2


# --- CLI --------------------------------------------------------------------------------------


def test_cli_parses_globals_before_or_after_the_command() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["--url", "http://a:1", "put", "k", "v", "--ttl", "5"])
    assert (args.url, args.key, args.value, args.ttl, args.if_match) == (
        "http://a:1",
        "k",
        "v",
        5,
        None,
    )
    args = parser.parse_args(["get", "k", "--url", "http://b:2", "--consistency", "all"])
    assert (args.url, args.consistency, args.timeout) == ("http://b:2", "all", 10.0)
    args = parser.parse_args(["put", "k", "--if-match", "3.n", "--if-none-match"])
    assert (args.value, args.if_match, args.if_none_match) == ("-", "3.n", True)
    args = parser.parse_args(["list", "--prefix", "a/", "--limit", "10", "--all"])
    assert (args.prefix, args.limit, args.all) == ("a/", 10, True)


@pytest.mark.parametrize(
    "argv",
    [[], ["put"], ["get", "k", "--consistency", "most"], ["bogus"], ["list", "--limit", "x"],
     ["put", "s", "x", "--ttl", "0"], ["put", "s", "x", "--ttl", "315360001"],
     ["put", "s", "x", "--ttl", "1.5"], ["list", "--limit", "0"], ["list", "--limit", "1001"]],
)
def test_cli_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_cli_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "Exit codes" in out and "5  unavailable" in out


def test_delegated_commands_get_their_argv_and_the_globals(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str]]] = []
    up_module = types.ModuleType("ringkv.local.up")
    up_module.main = lambda argv: calls.append(("up", argv)) or 0  # type: ignore[attr-defined]
    control_client = types.ModuleType("ringkv.local.control_client")
    control_client.node_command = lambda argv: calls.append(("node", argv)) or 3  # type: ignore[attr-defined]
    loadgen = types.ModuleType("ringkv.bench.loadgen")
    loadgen.main = lambda argv: calls.append(("bench", argv))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ringkv.local.up", up_module)
    monkeypatch.setitem(sys.modules, "ringkv.local.control_client", control_client)
    monkeypatch.setitem(sys.modules, "ringkv.bench.loadgen", loadgen)

    up = ["--nodes", "5", "--token", "t", "--url", "x", "--help"]
    assert cli.main(["--url", "http://a:1", "up", *up]) == 0
    assert cli.main(["node", "stop", "node-2"]) == 3
    assert cli.main(["--timeout=3", "bench", "--timeout", "9"]) == 0
    # Globals given before the subcommand go first, so the subcommand's own options win.
    assert calls == [("up", ["--url", "http://a:1", *up]), ("node", ["stop", "node-2"]),
                     ("bench", ["--timeout=3", "--timeout", "9"])]


def test_exit_code_mapping() -> None:
    assert cli.exit_code(NotFound("not_found", "m", 404)) == 1
    assert cli.exit_code(PreconditionFailed("precondition_failed", "m", 412)) == 3
    assert cli.exit_code(Unauthorized("unauthorized", "m", 401)) == 4
    assert cli.exit_code(Unavailable("m")) == 5
    assert cli.exit_code(QuorumUnavailable("quorum_unavailable", "m", 503, 1, 2)) == 5
    assert cli.exit_code(ConflictRetryExhausted("conflict_retry_exhausted", "m", 503)) == 5
    assert cli.exit_code(BadRequest("bad_request", "m", 400)) == 2
    assert cli.exit_code(InsufficientStorage("insufficient_storage", "m", 507)) == 6
    assert cli.exit_code(InternalError("internal", "m", 500)) == 6


def _run(capsysbinary: pytest.CaptureFixture[bytes], *argv: str) -> tuple[int, bytes, str]:
    code = cli.main(list(argv))
    captured = capsysbinary.readouterr()
    return code, captured.out, captured.err.decode()


def test_cli_against_a_node(
    node: FakeNode,
    capsysbinary: pytest.CaptureFixture[bytes],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setenv("RINGKV_TOKEN", TOKEN)
    url = ["--url", node.url]
    code, out, _ = _run(capsysbinary, *url, "put", "dir/k 1", "héllo")
    version = out.decode().strip()
    assert code == 0 and version.endswith(".node-0")
    assert node.store["dir/k 1"][:2] == ("héllo".encode(), "text/plain; charset=utf-8")

    assert _run(capsysbinary, "get", "dir/k 1", *url) == (0, "héllo".encode(), "")
    code, out, _ = _run(capsysbinary, *url, "head", "dir/k 1")
    assert (code, out.decode()) == (0, f"{version}\ttext/plain; charset=utf-8\t6\n")

    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=_Bytes(b"\x00\x01"), isatty=lambda: False))
    assert _run(capsysbinary, *url, "put", "bin")[0] == 0
    assert node.store["bin"][:2] == (b"\x00\x01", "application/octet-stream")
    target = tmp_path / "out.bin"
    assert _run(capsysbinary, *url, "get", "bin", "-o", str(target)) == (0, b"", "")
    assert target.read_bytes() == b"\x00\x01"

    code, _, err = _run(capsysbinary, *url, "put", "bin", "secret-value", "--if-none-match")
    assert code == 3 and "precondition failed" in err and "secret-value" not in err
    code, _, err = _run(capsysbinary, *url, "put", "bin", "v", "--if-match", "0.nope")
    assert code == 3

    code, out, _ = _run(capsysbinary, *url, "list", "--prefix", "", "--limit", "1")
    assert (code, out) == (0, b"bin\n")
    code, out, err = _run(capsysbinary, *url, "list", "--limit", "1")
    assert "--cursor bin" in err
    assert _run(capsysbinary, *url, "list", "--limit", "1", "--all")[1] == b"bin\ndir/k 1\n"

    code, _, err = _run(capsysbinary, *url, "delete", "bin", "--if-match", "0.nope")
    assert code == 3 and "bin" in node.store
    code, out, _ = _run(capsysbinary, *url, "delete", "bin")
    assert code == 0 and out.decode().strip().endswith(".node-0")
    code, out, err = _run(capsysbinary, *url, "get", "bin")
    assert (code, out) == (1, b"") and "not found" in err

    code, out, _ = _run(capsysbinary, *url, "status")
    table = out.decode()
    assert code == 0 and "epoch 7" in table and "settled no" in table
    assert f"node-0  normal   yes          {node.url}  10    60.0%" in table
    assert "node-1  joining  unreachable  x:1" in table and "ranges_pending: 3" in table
    code, out, _ = _run(capsysbinary, *url, "status", "--json")
    assert json.loads(out)["members"][0]["records"] == 10
    code, out, _ = _run(capsysbinary, *url, "replicas", "dir/k 1")
    assert json.loads(out)["key"] == "dir/k 1"

    node.forced = (400, "bad_request", {})  # e.g. a key over the node's limit
    code, _, err = _run(capsysbinary, *url, "put", "k", "v")
    assert code == 2 and "bad request" in err
    node.forced = (507, "insufficient_storage", {})
    code, _, err = _run(capsysbinary, *url, "put", "k", "v")
    assert code == 6 and "disk is full" in err
    node.forced = (503, "quorum_unavailable", {"acked": 1, "needed": 2})
    code, _, err = _run(capsysbinary, *url, "put", "k", "v")
    assert code == 5 and "quorum unavailable: forced quorum_unavailable" in err  # the node's account


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self) -> bytes:
        return self.data


def test_cli_auth_and_connection_errors_say_what_to_do(
    node: FakeNode,
    closed_url: str,
    capsysbinary: pytest.CaptureFixture[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RINGKV_TOKEN", raising=False)
    code, _, err = _run(capsysbinary, "--url", node.url, "get", "k")
    assert code == 4 and "set RINGKV_TOKEN or pass --token" in err
    code, _, err = _run(capsysbinary, "--url", node.url, "--token", "wrong-token", "list")
    assert code == 4 and "wrong-token" not in err
    code, _, err = _run(capsysbinary, "--url", closed_url, "get", "k")
    assert code == 5 and f"nothing listens at {closed_url}: start the local cluster" in err
    assert err.count("\n") == 1
    code, _, err = _run(capsysbinary, "--url", "ftp://x", "get", "k")
    assert code == 2 and "not an http(s) URL" in err


@pytest.fixture
def dead_port_forward() -> Iterator[str]:
    """A loopback URL that accepts connections and closes them unanswered, as a `kubectl
    port-forward` does once the pod it forwarded to is gone."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                conn.recv(65536)
                conn.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
        stop.set()
        server.shutdown(socket.SHUT_RDWR)
    thread.join(10)


def test_cli_hints_fit_where_it_is_pointed(
    node: FakeNode, closed_url: str, dead_port_forward: str,
    capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Loopback may be `ringkv up` or a port-forward: both hints, each saying when it
    applies; any other address is neither, so neither `make run` hint is given there."""
    monkeypatch.delenv("RINGKV_TOKEN", raising=False)
    code, _, err = _run(capsysbinary, "--url", dead_port_forward, "status")
    assert code == 5 and "closed the connection without an answer" in err, err
    assert "port-forward" in err and "make run" not in err
    code, _, err = _run(capsysbinary, "--url", closed_url, "status")
    assert code == 5 and "`make run`" in err and "port-forward" in err
    code, _, err = _run(capsysbinary, "--url", node.url, "status")
    assert code == 4 and "make run" in err and "kubectl get secret" in err

    remote = "http://ringkv.example:8080"
    refused = Unavailable("cannot reach", [remote], refused=True)
    assert cli.describe(refused, url=remote).startswith(f"nothing listens at {remote}: check --url")
    for exc in (refused, Unauthorized("unauthorized", "m", 401),
                Unavailable("closed", [remote], dropped=True)):
        assert "make run" not in cli.describe(exc, url=remote)
    assert "kubectl get secret" in cli.describe(Unauthorized("unauthorized", "m", 401), url=remote)


def test_update_pauses_grow_up_to_a_quarter_second_and_end_at_the_deadline() -> None:
    """`update`'s compare-and-set loop: random pauses that grow with each 412 up to 0.25 s,
    and ConflictRetryExhausted (naming the key) once the next try would start too late."""
    rng = random.Random(7)
    first = [wire.update_pause(1, rng, 60.0, "k", 10.0) for _ in range(200)]
    late = [wire.update_pause(12, rng, 60.0, "k", 10.0) for _ in range(200)]
    assert max(first) <= 0.01 < max(late) <= 0.25
    with pytest.raises(ConflictRetryExhausted, match="other writers of 'k' kept changing it for 10s"):
        wire.update_pause(12, rng, 0.0, "k", 10.0)
