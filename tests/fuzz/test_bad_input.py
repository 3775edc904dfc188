"""Bad input thrown at live nodes without schemathesis (correctness rule 6).

Random bytes as keys, random header values, query strings and methods, and raw malformed
HTTP over a socket: every answer is a 4xx with the JSON error shape (random request bytes
may also get a closed connection, from a node that is checked to be still serving), never
a 5xx; valid input still round-trips; the nodes stay up and the data written before the
fuzzing is intact afterwards.
"""

from __future__ import annotations

import gzip
import re
import socket
import string
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote_plus

import pytest
from harness import API_TOKEN, NodeProcess, StaticCluster, http
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ringkv.node.preconditions import TAG_LIST_PATTERN

Raw = Callable[[int, bytes], Any]  # conftest.raw_exchange -> conftest.RawReply
AUTH = f"Authorization: Bearer {API_TOKEN}\r\n".encode()
FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
MAX_KEY = 1024


def pct(data: bytes) -> str:
    """Percent-encode every byte: nothing in the path is left for anyone to normalise."""
    return "".join(f"%{b:02X}" for b in data)


def request(method: str, target: str | bytes, headers: bytes = b"", body: bytes = b"") -> bytes:
    """One HTTP/1.1 request that asks the node to close the connection after answering."""
    if isinstance(target, str):
        target = target.encode()
    return (method.encode() + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers
            + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)


def assert_client_error(reply: Any) -> None:
    """A 4xx with the JSON error shape, whether the app or the HTTP parser refused it."""
    assert reply.status is not None and 400 <= reply.status < 500, reply.raw[:500]
    reply.error_code()


def valid_key(key: bytes) -> bool:
    if not 1 <= len(key) <= MAX_KEY:
        return False
    try:
        key.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


SEEDED_KEYS = ["plain", "a/b/c", "ключ", "with space", "100%", "ü/ö", "x" * MAX_KEY,
               *[f"seed/{n:03d}" for n in range(40)]]
HEADER_KEY = "/v1/kv/header-fuzz"  # the header fuzzing overwrites it, so it is not seeded


@pytest.fixture(scope="module")
def seeded(fuzz3: StaticCluster) -> dict[str, tuple[bytes, str]]:
    """Keys written before any fuzzing: key -> (value, acknowledged version)."""
    written = {}
    for i, key in enumerate(SEEDED_KEYS):
        value = f"seed-value-{i}".encode() * (i + 1)
        r = http("PUT", f"{fuzz3.url(i % 3)}/v1/kv/{quote(key, safe='')}", value)
        assert r.status == 200, r.body
        written[key] = (value, r.json()["version"])
    assert http("PUT", fuzz3.url(0) + HEADER_KEY, b"exists").status == 200
    return written


# -- keys -------------------------------------------------------------------------------
SPECIAL_KEYS = [b".", b"..", b"/", b"//", b"a/../b", b"%", b"%2F", b"?x=1", b"#frag", b"\x00", b"\r",
                b"\t", b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"k" * MAX_KEY,
                b"k" * (MAX_KEY + 1), "ü".encode() * (MAX_KEY // 2), "ü".encode() * (MAX_KEY // 2) + b"!"]
KEYS = st.one_of(st.binary(max_size=MAX_KEY + 80), st.text(min_size=1, max_size=300).map(str.encode),
                 st.sampled_from(SPECIAL_KEYS))


@FUZZ
@given(key=KEYS, value=st.binary(max_size=64))
def test_random_bytes_as_keys(fuzz3: StaticCluster, seeded: dict, key: bytes, value: bytes) -> None:
    """A valid key round-trips through every node; any other key is a JSON 4xx."""
    assume(key not in {k.encode() for k in SEEDED_KEYS})
    path = "/v1/kv/" + pct(key)
    put = http("PUT", fuzz3.url(0) + path, value)
    assert put.status < 500, put.body
    if b"\n" in key:
        return  # routed as a 404 today: test_key_with_newline_round_trips
    if not valid_key(key):
        assert put.status == 400 and put.json()["error"]["code"] == "bad_request", put.body
        assert http("GET", fuzz3.url(1) + path).status == 400
        return
    assert put.status == 200, put.body
    assert put.json()["key"] == key.decode()
    etag = put.headers["etag"]
    got = http("GET", fuzz3.url(1) + path)
    assert (got.status, got.body, got.headers["etag"]) == (200, value, etag)
    head = http("HEAD", fuzz3.url(2) + path)
    assert head.status == 200 and head.headers["content-length"] == str(len(value))
    reps = http("GET", fuzz3.url(2) + "/v1/replicas/" + pct(key))
    assert reps.status == 200 and reps.json()["key"] == key.decode()
    assert http("DELETE", fuzz3.url(2) + path).status == 204
    assert http("GET", fuzz3.url(0) + path).status == 404


# -- header values ----------------------------------------------------------------------
# Anything but CR and LF (which would end the header): controls, NUL, DEL, non-ASCII.
HEADER_VALUES = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=300)


def http_forbids(value: str) -> bool:
    """Whether HTTP's field-value grammar rejects the value (controls other than HTAB)."""
    return any((ord(c) < 0x20 and c != "\t") or c == "\x7f" for c in value)


@FUZZ
@given(name=st.sampled_from(["If-Match", "If-None-Match", "Content-Type", "Authorization"]),
       value=HEADER_VALUES)
def test_random_header_values(fuzz3: StaticCluster, seeded: dict, raw: Raw, name: str,
                              value: str) -> None:
    headers = f"{name}: ".encode() + value.encode() + b"\r\n"
    if name != "Authorization":
        headers += AUTH
    reply = raw(fuzz3.nodes[0].port, request("PUT", HEADER_KEY, headers, b"header-fuzz"))
    assert reply.status is not None and reply.status < 500, reply.raw[:500]
    if http_forbids(value):  # the HTTP parser refuses the header before the app sees it
        assert (reply.status, reply.error_code()) == (400, "bad_request"), reply.raw[:500]
        return
    stripped = value.strip()
    if name == "Authorization":
        assert reply.status == 401 and reply.error_code() == "unauthorized"
    elif name in ("If-Match", "If-None-Match"):
        if re.fullmatch(TAG_LIST_PATTERN, value) is None:
            assert (reply.status, reply.error_code()) == (400, "bad_request"), reply.raw[:500]
        elif name == "If-None-Match":  # the key exists; no random tag names its version
            assert reply.status == (412 if stripped == "*" else 200), reply.raw[:500]
        else:
            assert reply.status == (200 if stripped == "*" else 412), reply.raw[:500]
    else:
        acceptable = not stripped or (len(stripped) <= 255 and stripped.isascii() and stripped.isprintable())
        if not acceptable:
            assert (reply.status, reply.error_code()) == (400, "bad_request")
            return
        assert reply.status == 200, reply.raw[:500]
        got = http("GET", fuzz3.url(1) + HEADER_KEY)
        assert got.body == b"header-fuzz"
        assert got.headers["content-type"] == (stripped or "application/octet-stream")


# -- query strings ----------------------------------------------------------------------
QUERY_NAMES = st.one_of(st.sampled_from(["consistency", "ttl", "prefix", "limit", "cursor", ""]),
                        st.text(max_size=12))
QUERY_PAIRS = st.lists(st.tuples(QUERY_NAMES, st.text(max_size=40)), max_size=4)
# Raw query text, not encoded: stray '%', '&', '=', ';', '+', repeated separators.
RAW_QUERY = st.text(alphabet=string.ascii_letters + string.digits + "%=&;+/?-._~!$'()*,:@", max_size=80)
ALLOWED = {"PUT": {"consistency", "ttl"}, "GET": {"consistency"}, "DELETE": {"consistency"},
           "LIST": {"prefix", "limit", "cursor"}}


@FUZZ
@given(op=st.sampled_from(["PUT", "GET", "DELETE", "LIST"]),
       query=st.one_of(QUERY_PAIRS.map(lambda pairs: "&".join(
           f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)), RAW_QUERY))
def test_random_query_strings(fuzz3: StaticCluster, seeded: dict, raw: Raw, op: str,
                              query: str) -> None:
    method, path = ("GET", "/v1/kv") if op == "LIST" else (op, "/v1/kv/query-fuzz")
    body = b"q" if method == "PUT" else b""
    reply = raw(fuzz3.nodes[1].port, request(method, f"{path}?{query}", AUTH, body))
    assert reply.status is not None and reply.status < 500, reply.raw[:500]
    if reply.status >= 400:
        assert reply.is_json, reply.raw[:500]
        reply.error_code()
        return
    names = {unquote_plus(part.split("=", 1)[0]) for part in query.split("&") if part}
    assert names <= ALLOWED[op], (query, reply.raw[:300])  # only the operation's own parameters


# -- methods ----------------------------------------------------------------------------
# Every method the HTTP parser knows, and random tokens it does not.
PARSER_METHODS = ["DELETE", "GET", "HEAD", "POST", "PUT", "CONNECT", "OPTIONS", "TRACE", "COPY",
                  "LOCK", "MKCOL", "MOVE", "PROPFIND", "PROPPATCH", "SEARCH", "UNLOCK", "BIND",
                  "REBIND", "UNBIND", "ACL", "REPORT", "MKACTIVITY", "CHECKOUT", "MERGE", "M-SEARCH",
                  "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE", "PATCH", "PURGE", "MKCALENDAR", "LINK", "UNLINK",
                  "SOURCE", "QUERY"]
TCHAR = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
ROUTES = {"/v1/kv/method-fuzz": {"GET", "PUT", "HEAD", "DELETE"}, "/v1/kv": {"GET", "HEAD"},
          "/v1/cluster": {"GET", "HEAD"}, "/healthz": {"GET", "HEAD"}, "/metrics": {"GET", "HEAD"},
          "/no/such/route": set()}


@FUZZ
@given(method=st.one_of(st.sampled_from(PARSER_METHODS), st.text(TCHAR, min_size=1, max_size=16)),
       path=st.sampled_from(sorted(ROUTES)))
def test_random_methods(fuzz3: StaticCluster, seeded: dict, raw: Raw, method: str, path: str) -> None:
    reply = raw(fuzz3.nodes[2].port, request(method, path, AUTH))
    assert reply.status is not None and reply.status < 500, reply.raw[:500]
    if method in ROUTES[path]:
        assert reply.status < 400 or reply.status == 404, reply.raw[:500]
        return
    assert reply.status is not None and 400 <= reply.status < 500, reply.raw[:500]
    if method == "HEAD":  # a HEAD answer has no body
        return
    expected = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}  # 400: the parser
    assert reply.error_code() == expected[reply.status], reply.raw[:500]


# -- raw malformed HTTP -----------------------------------------------------------------
MALFORMED = {
    "garbage request line": b"HELLO\r\n\r\n",
    "binary garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\r\n\r\n",
    "unknown version": b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
    "lower-case method": b"get /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "http/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "bare LF line ends": b"GET /healthz HTTP/1.1\nHost: x\nConnection: close\n\n",
    "space in target": request("GET", b"/v1/kv/a b", AUTH),
    "NUL in target": request("GET", b"/v1/kv/a\x00b", AUTH),
    "non-UTF-8 target": request("GET", b"/v1/kv/a\xff\xfeb", AUTH),
    "raw UTF-8 target": request("PUT", "/v1/kv/ключ".encode(), AUTH, b"v"),
    "asterisk-form target": request("OPTIONS", b"*"),
    "dot segments": request("GET", b"/v1/kv/../../etc/passwd", AUTH),
    "missing Host": b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
    "NUL in header value": request("GET", b"/v1/kv/plain", AUTH + b"X-A: a\x00b\r\n"),
    "header without colon": request("GET", b"/v1/kv/plain", AUTH + b"NoColonHere\r\n"),
    "space before colon": request("GET", b"/v1/kv/plain", AUTH + b"X-A : b\r\n"),
    "obs-fold continuation": request("GET", b"/v1/kv/plain", AUTH + b"X-A: a\r\n  folded\r\n"),
    "header over 8 KiB": request("GET", b"/healthz", b"X-Big: " + b"a" * 9000 + b"\r\n"),
    "too many headers": request("GET", b"/healthz", b"".join(b"X-H%d: v\r\n" % i for i in range(200))),
    "request line over 8 KiB": request("GET", b"/v1/kv/" + b"k" * 9000, AUTH),
    "invalid chunk size": b"PUT /v1/kv/chunk HTTP/1.1\r\nHost: x\r\n" + AUTH
    + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk longer than its size": b"PUT /v1/kv/chunk HTTP/1.1\r\nHost: x\r\n" + AUTH
    + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabcXX\r\n0\r\n\r\n",
    "chunk size overflow": b"PUT /v1/kv/chunk HTTP/1.1\r\nHost: x\r\n" + AUTH
    + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
    "Content-Length and chunked": b"PUT /v1/kv/chunk HTTP/1.1\r\nHost: x\r\n" + AUTH
    + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "two Content-Lengths": b"PUT /v1/kv/cl HTTP/1.1\r\nHost: x\r\n" + AUTH
    + b"Content-Length: 3\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd",
    "negative Content-Length": b"PUT /v1/kv/cl HTTP/1.1\r\nHost: x\r\n" + AUTH
    + b"Content-Length: -1\r\nConnection: close\r\n\r\nabcd",
    "huge Content-Length": b"PUT /v1/kv/cl HTTP/1.1\r\nHost: x\r\n" + AUTH
    + b"Content-Length: 99999999999999999999999\r\nConnection: close\r\n\r\nabcd",
    "unknown Expect": b"PUT /v1/kv/cl HTTP/1.1\r\nHost: x\r\n" + AUTH
    + b"Expect: 999-nope\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    "undecodable deflate body": b"PUT /v1/kv/enc HTTP/1.1\r\nHost: x\r\n" + AUTH
    + b"Content-Encoding: deflate\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    "gzip bomb": b"PUT /v1/kv/enc HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Content-Encoding: gzip\r\n"
    + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(BOMB := gzip.compress(bytes(8 << 20)))
    + BOMB,
}


def assert_still_serving(node: NodeProcess) -> None:
    """The node closed without an answer: fine only if it is still there and answering."""
    assert node.alive, f"{node.name} died:\n{node.log_tail()}"
    assert http("GET", node.url + "/healthz").status == 200


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_http(fuzz3: StaticCluster, seeded: dict, raw: Raw, name: str) -> None:
    """Every case gets the JSON error shape with a 4xx: a node that closed without one,
    or crashed, fails here and not in a later test."""
    assert_client_error(raw(fuzz3.nodes[0].port, MALFORMED[name]))


@FUZZ
@given(line=st.binary(max_size=300), headers=st.lists(st.binary(max_size=60), max_size=5))
def test_random_bytes_as_request(fuzz3: StaticCluster, seeded: dict, raw: Raw, line: bytes,
                                 headers: list[bytes]) -> None:
    """Random request line and header bytes, terminated so the parser must decide at once."""
    data = line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"Connection: close\r\n\r\n"
    reply = raw(fuzz3.nodes[1].port, data)
    if reply.status is None:
        assert_still_serving(fuzz3.nodes[1])
    else:
        assert reply.status < 500, reply.raw[:500]


# -- afterwards -------------------------------------------------------------------------
def test_nodes_survived_and_earlier_data_is_intact(fuzz3: StaticCluster,
                                                   seeded: dict[str, tuple[bytes, str]]) -> None:
    """Runs after the fuzzing above: every node serves, nothing written before changed."""
    for node in fuzz3.nodes:
        assert node.alive, node.log_tail()
    for i, (key, (value, version)) in enumerate(seeded.items()):
        got = http("GET", f"{fuzz3.url(i % 3)}/v1/kv/{quote(key, safe='')}")
        assert (got.status, got.body, got.headers.get("etag")) == (200, value, f'"{version}"'), key
    for i in range(3):
        assert http("PUT", fuzz3.url(i) + "/v1/kv/after-fuzz", b"fine").status == 200
        assert http("GET", fuzz3.url((i + 2) % 3) + "/v1/kv/after-fuzz").body == b"fine"
    for node in fuzz3.nodes:
        errors = [line for line in node.log_path.read_text(errors="replace").splitlines()
                  if " ERROR ringkv" in line]
        assert not errors, errors


# -- known bugs (the lead fixes node/*.py; each test passes once fixed) -----------------
def test_key_with_newline_round_trips(fuzz3: StaticCluster) -> None:
    for key in (b"line1\nline2", b"\n"):
        put = http("PUT", fuzz3.url(0) + "/v1/kv/" + pct(key), b"nl")
        assert put.status == 200, put.body
        assert http("GET", fuzz3.url(1) + "/v1/kv/" + pct(key)).body == b"nl"
        assert http("GET", fuzz3.url(1) + "/v1/replicas/" + pct(key)).status == 200


def test_405_names_the_allowed_methods(fuzz3: StaticCluster, raw: Raw) -> None:
    reply = raw(fuzz3.nodes[0].port, request("PATCH", "/v1/kv/plain", AUTH))
    assert reply.status == 405 and reply.error_code() == "method_not_allowed"
    allowed = {m.strip() for m in reply.headers.get("allow", "").split(",")}
    assert {"GET", "PUT", "DELETE", "HEAD"} <= allowed, reply.headers


def _first_answer(port: int, head: bytes) -> bytes:
    """The node's first answer to request headers sent without their body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        return sock.recv(65536)


@pytest.mark.parametrize(("name", "request_head", "status"), [
    ("too large", b"PUT /v1/kv/expect HTTP/1.1\r\nContent-Length: 104857600\r\n", b"413"),
    ("empty key", b"PUT /v1/kv/ HTTP/1.1\r\nContent-Length: 3\r\n", b"400"),
    ("bad query", b"PUT /v1/kv/expect?ttl=0 HTTP/1.1\r\nContent-Length: 3\r\n", b"400"),
    ("bad If-Match", b"PUT /v1/kv/expect HTTP/1.1\r\nIf-Match: 1\r\nContent-Length: 3\r\n", b"400"),
    ("no route", b"PUT /v2/expect HTTP/1.1\r\nContent-Length: 3\r\n", b"404"),
    ("no PUT here", b"PUT /v1/cluster HTTP/1.1\r\nContent-Length: 3\r\n", b"405"),
])
def test_a_body_that_will_be_refused_is_not_invited(fuzz3: StaticCluster, name: str,
                                                    request_head: bytes, status: bytes) -> None:
    """`Expect: 100-continue` gets the final answer, not `100 Continue`, when the request
    is refused whatever its body (RFC 9110 §10.1.1), and the connection is closed."""
    head = request_head + b"Host: x\r\n" + AUTH + b"Expect: 100-continue\r\n\r\n"
    first = _first_answer(fuzz3.nodes[0].port, head)
    assert first.startswith(b"HTTP/1.1 " + status), first[:300]
    assert b"\r\nConnection: close\r\n" in first, first[:300]


def test_a_body_that_can_be_stored_is_invited(fuzz3: StaticCluster) -> None:
    with socket.create_connection(("127.0.0.1", fuzz3.nodes[0].port), timeout=30) as sock:
        sock.sendall(b"PUT /v1/kv/expect HTTP/1.1\r\nHost: x\r\n" + AUTH
                     + b"Expect: 100-continue\r\nContent-Length: 3\r\nConnection: close\r\n\r\n")
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"abc")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:300]
    assert http("GET", fuzz3.url(1) + "/v1/kv/expect").body == b"abc"


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"identity, chunked", b"deflate,chunked"])
def test_transfer_codings_other_than_chunked_are_refused(fuzz3: StaticCluster, raw: Raw,
                                                         coding: bytes) -> None:
    body = gzip.compress(b"te-value")
    chunked = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    path = b"/v1/kv/te-" + pct(coding).encode()

    def put(te: bytes) -> Any:
        return raw(fuzz3.nodes[0].port, b"PUT " + path + b" HTTP/1.1\r\nHost: x\r\n" + AUTH
                   + b"Transfer-Encoding: " + te + b"\r\nConnection: close\r\n\r\n" + chunked)

    reply = put(coding)
    assert (reply.status, reply.error_code()) == (400, "bad_request"), reply.raw[:300]
    assert http("GET", fuzz3.url(1) + path.decode()).status == 404
    assert put(b"Chunked").status == 200  # the one transfer coding: stored as sent
    assert http("GET", fuzz3.url(1) + path.decode()).body == body


def test_undecodable_gzip_body_is_a_400(fuzz3: StaticCluster, raw: Raw) -> None:
    reply = raw(fuzz3.nodes[0].port, request(
        "PUT", "/v1/kv/gzip", AUTH + b"Content-Encoding: gzip\r\n", b"this is not gzip"))
    assert reply.status == 400, reply.raw[:500]
    assert reply.error_code() == "bad_request"


def test_client_hanging_up_mid_body_is_no_server_error(fuzz3: StaticCluster, raw: Raw) -> None:
    node = fuzz3.nodes[2]

    def count_5xx() -> int:
        text = http("GET", node.url + "/metrics", token=None).body.decode()
        return sum(int(float(m.group(1))) for m in re.finditer(
            r'^ringkv_requests_total\{.*status="5\d\d".*\} (\S+)$', text, re.M))

    before = count_5xx()
    with socket.create_connection(("127.0.0.1", node.port), timeout=30) as sock:
        sock.sendall(b"PUT /v1/kv/hangup HTTP/1.1\r\nHost: x\r\n" + AUTH
                     + b"Content-Length: 1000\r\n\r\nonly-a-little")
    # Twenty round trips on the same event loop: the abandoned handler has long finished.
    for _ in range(20):
        assert http("GET", node.url + "/healthz", token=None).status == 200
    assert count_5xx() == before


def test_absolute_form_target_is_accepted(fuzz3: StaticCluster, seeded: dict, raw: Raw) -> None:
    port = fuzz3.nodes[0].port
    reply = raw(port, request("GET", f"http://127.0.0.1:{port}/v1/kv/plain", AUTH))
    assert (reply.status, reply.body) == (200, seeded["plain"][0]), reply.raw[:300]
