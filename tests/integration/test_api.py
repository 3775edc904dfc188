"""Every row of the public API table, against three real node processes."""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path
from urllib.parse import quote

import pytest
from harness import API_TOKEN, StaticCluster, http, wait_for

from ringkv.client import Client, NotFound, PreconditionFailed
from ringkv.node.pacer import KV_ROUTES


def kv(cluster: StaticCluster, key: str, i: int = 0, query: str = "") -> str:
    return f"{cluster.url(i)}/v1/kv/{quote(key, safe='/')}{query}"


def test_put_get_head_delete(shared3: StaticCluster) -> None:
    r = http("PUT", kv(shared3, "a/b/c"), b"value-1", {"Content-Type": "text/plain"})
    assert r.status == 200
    body = r.json()
    assert body["key"] == "a/b/c"
    version = body["version"]
    assert r.headers["etag"] == f'"{version}"'

    for i in range(3):  # any node coordinates
        g = http("GET", kv(shared3, "a/b/c", i))
        assert (g.status, g.body, g.headers["content-type"]) == (200, b"value-1", "text/plain")
        assert g.headers["etag"] == f'"{version}"'
    h = http("HEAD", kv(shared3, "a/b/c", 1))
    assert h.status == 200 and h.body == b"" and h.headers["content-length"] == "7"
    assert h.headers["etag"] == f'"{version}"'

    d = http("DELETE", kv(shared3, "a/b/c", 2))
    assert d.status == 204 and d.headers["etag"].startswith('"')
    assert d.headers["etag"] != f'"{version}"'
    assert http("GET", kv(shared3, "a/b/c")).status == 404
    assert http("HEAD", kv(shared3, "a/b/c")).status == 404
    missing = http("GET", kv(shared3, "never-written"))
    assert missing.status == 404 and missing.json()["error"]["code"] == "not_found"
    again = http("DELETE", kv(shared3, "never-written"))
    assert again.status == 204  # idempotent, also when absent


def test_versions_increase_and_newest_wins(shared3: StaticCluster) -> None:
    versions = []
    for i in range(6):
        r = http("PUT", kv(shared3, "counter", i % 3), str(i).encode())
        assert r.status == 200
        versions.append(r.json()["version"])
        assert http("GET", kv(shared3, "counter", (i + 1) % 3)).body == str(i).encode()
    parsed = [(int(v.split(".", 1)[0]), v.split(".", 1)[1]) for v in versions]
    assert parsed == sorted(parsed) and len(set(parsed)) == len(parsed)


def test_unicode_and_odd_keys_round_trip(shared3: StaticCluster) -> None:
    with Client(shared3.url(0), token=API_TOKEN) as client:
        for key in ["ключ", "with space", "q?x=1#frag", "100%", "/leading", "a//b", "ü/ö/ä", "x" * 1024]:
            client.put(key, key.encode())
            assert client.get(key).value == key.encode()


def test_conditional_writes(shared3: StaticCluster) -> None:
    url = kv(shared3, "cond")
    created = http("PUT", url, b"1", {"If-None-Match": "*"})
    assert created.status == 201
    v1 = created.json()["version"]
    exists = http("PUT", url, b"2", {"If-None-Match": "*"})
    assert exists.status == 412 and exists.json()["error"]["code"] == "precondition_failed"
    wrong = http("PUT", url, b"2", {"If-Match": '"1.node-0"'})
    assert wrong.status == 412
    ok = http("PUT", url, b"2", {"If-Match": f'"{v1}"'})
    assert ok.status == 200
    v2 = ok.json()["version"]
    stale = http("PUT", url, b"3", {"If-Match": f'"{v1}"'})
    assert stale.status == 412
    assert http("PUT", url, b"3", {"If-Match": "*"}).status == 200
    assert http("PUT", kv(shared3, "nope"), b"x", {"If-Match": "*"}).status == 412
    assert http("DELETE", url, headers={"If-Match": f'"{v2}"'}).status == 412
    with Client(shared3.url(1), token=API_TOKEN) as client:
        current = client.get("cond").version
        client.delete("cond", if_match=current)
        with pytest.raises(NotFound):
            client.get("cond")
        with pytest.raises(PreconditionFailed):
            client.put("cond", b"z", if_match=current)


def test_conditional_requests_follow_rfc_9110(shared3: StaticCluster) -> None:
    """Entity-tag lists, weak tags and If-None-Match with tags (RFC 9110 §13.1)."""
    url = kv(shared3, "rfc9110")
    created = http("PUT", url, b"1", {"If-None-Match": '"1.nobody", W/"2.nobody"'})
    assert created.status == 201, created.body  # no live record: created
    v1 = created.json()["version"]
    for tags in (f'"{v1}"', f'W/"{v1}"', f'"9.x", "{v1}"'):  # If-None-Match compares weakly
        refused = http("PUT", url, b"2", {"If-None-Match": tags})
        assert refused.status == 412 and refused.json()["error"]["code"] == "precondition_failed"
    replaced = http("PUT", url, b"2", {"If-None-Match": '"1.nobody"'})
    assert replaced.status == 200, replaced.body  # it existed: replaced, not created
    v2 = replaced.json()["version"]
    assert http("PUT", url, b"x", {"If-Match": f'W/"{v2}"'}).status == 412  # strong: weak never matches
    listed = http("PUT", url, b"3", {"If-Match": f'"{v1}", "{v2}"'})
    assert listed.status == 200, listed.body
    v3 = listed.json()["version"]
    both = http("PUT", url, b"x", {"If-Match": f'"{v3}"', "If-None-Match": "*"})
    assert both.status == 412  # both are evaluated, If-Match first
    # Reads: If-None-Match naming the current version is a 304, If-Match not naming it a 412.
    fresh = http("GET", url, headers={"If-None-Match": f'"{v2}", W/"{v3}"'})
    assert (fresh.status, fresh.body, fresh.headers["etag"]) == (304, b"", f'"{v3}"')
    assert http("HEAD", url, headers={"If-None-Match": "*"}).status == 304
    changed = http("GET", url, headers={"If-None-Match": f'"{v2}"'})
    assert (changed.status, changed.body) == (200, b"3")
    moved_on = http("GET", url, headers={"If-Match": f'"{v2}"'})
    assert moved_on.status == 412 and moved_on.json()["error"]["code"] == "precondition_failed"
    assert http("GET", kv(shared3, "rfc9110-absent"), headers={"If-Match": "*"}).status == 404
    assert http("DELETE", url, headers={"If-None-Match": f'"{v3}"'}).status == 412
    assert http("DELETE", url, headers={"If-Match": f'"{v3}"'}).status == 204
    assert http("GET", url).status == 404


def test_ttl_expires(shared3: StaticCluster) -> None:
    assert http("PUT", kv(shared3, "short", query="?ttl=1"), b"x").status == 200
    assert http("PUT", kv(shared3, "long", query="?ttl=3600"), b"y").status == 200
    assert http("GET", kv(shared3, "long")).status == 200
    wait_for(lambda: http("GET", kv(shared3, "short")).status == 404, 30, "ttl expiry")
    keys = http("GET", shared3.url(0) + "/v1/kv").json()["keys"]
    assert "short" not in keys and "long" in keys


def test_consistency_levels(shared3: StaticCluster) -> None:
    for level in ("one", "quorum", "all"):
        assert http("PUT", kv(shared3, f"c-{level}", query=f"?consistency={level}"), b"v").status == 200
        # Reading every replica finds any acknowledged write at once.
        g = http("GET", kv(shared3, f"c-{level}", 2, query="?consistency=all"))
        assert g.status == 200 and g.body == b"v"
        # At the same level: at once for quorum and all (R + W > rf); `one` is eventual.
        def read(level: str = level) -> bytes:
            return http("GET", kv(shared3, f"c-{level}", 1, query=f"?consistency={level}")).body

        if level == "one":
            wait_for(lambda: read() == b"v", 30, "a read at one to see the write")
        else:
            assert read() == b"v"


def test_list_prefix_and_cursor(shared3: StaticCluster) -> None:
    with Client([shared3.url(0)], token=API_TOKEN) as client:
        names = [f"list/{i:03d}" for i in range(25)]
        for name in names:
            client.put(name, b"v")
        client.put("other/1", b"v")
        client.delete("list/007")
    expected = [n for n in names if n != "list/007"]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "?prefix=list/&limit=10" + (f"&cursor={cursor}" if cursor else "")
        page = http("GET", shared3.url(pages % 3) + "/v1/kv" + query).json()
        seen += page["keys"]
        pages += 1
        cursor = page["cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert seen == expected
    everything = http("GET", shared3.url(0) + "/v1/kv?limit=1000").json()
    assert everything["cursor"] is None and "other/1" in everything["keys"]
    assert everything["keys"] == sorted(everything["keys"], key=lambda k: k.encode())


def test_list_prefix_matches_bytes(shared3: StaticCluster) -> None:
    """A prefix is bytes: one cut inside a UTF-8 character still matches the keys it starts."""
    for key in ("lp/\U0001f600a", "lp/\U0001f601", "lp/é", "lp/e"):
        assert http("PUT", kv(shared3, key), b"v").status == 200

    def listed(raw_prefix: str) -> list[str]:
        r = http("GET", f"{shared3.url(1)}/v1/kv?prefix={raw_prefix}")
        assert r.status == 200, r.body
        return r.json()["keys"]

    assert listed("lp/%F0%9F") == ["lp/\U0001f600a", "lp/\U0001f601"]
    assert listed("lp/%F0%9F%98%80") == ["lp/\U0001f600a"]
    assert listed("lp/%C3") == ["lp/é"]
    assert listed("lp/%FF") == listed("%80") == []
    assert listed("lp/e") == ["lp/e"]


def test_cluster_and_replicas(shared3: StaticCluster) -> None:
    put = http("PUT", kv(shared3, "where"), b"here")
    version = put.json()["version"]
    info = http("GET", shared3.url(1) + "/v1/cluster").json()
    assert info["epoch"] == 1 and info["settled"] is True and info["rf"] == 3
    assert [m["name"] for m in info["members"]] == ["node-0", "node-1", "node-2"]
    assert all(m["state"] == "normal" and m["reachable"] for m in info["members"])
    assert sum(m["records"] for m in info["members"]) >= 3
    wait_for(lambda: all(
        r.get("version") == version
        for r in http("GET", shared3.url(2) + "/v1/replicas/where").json()["replicas"]
    ), 20, "all three replicas to hold the write")
    reps = http("GET", shared3.url(2) + "/v1/replicas/where").json()
    assert reps["key"] == "where" and len(reps["replicas"]) == 3
    assert all(r["live"] and r["status"] == "ok" for r in reps["replicas"])


def test_health_ready_metrics_openapi(shared3: StaticCluster) -> None:
    assert http("GET", shared3.url(0) + "/healthz", token=None).status == 200
    ready = http("GET", shared3.url(0) + "/readyz", token=None)
    assert ready.status == 200 and ready.json()["epoch"] == 1
    http("PUT", kv(shared3, "m"), b"x")
    metrics = http("GET", shared3.url(0) + "/metrics", token=None)
    text = metrics.body.decode()
    assert metrics.status == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert 'ringkv_requests_total{method="PUT",route="/v1/kv/{key}",status="200"}' in text
    # The handoff pacer tells client traffic by this label; renaming it would turn pacing off.
    assert "/v1/kv/{key}".startswith(KV_ROUTES) and not "/v1/cluster".startswith(KV_ROUTES)
    assert "ringkv_request_seconds_bucket" in text and "ringkv_hints_pending" in text
    assert 'ringkv_membership_members{state="normal"} 3.0' in text
    # Error answers are counted by their JSON code, which a status alone does not tell.
    assert http("GET", kv(shared3, "never-written")).status == 404
    assert http("GET", shared3.url(0) + "/v1/kv?bogus=1").status == 400
    text = http("GET", shared3.url(0) + "/metrics", token=None).body.decode()
    assert 'ringkv_errors_total{code="not_found"}' in text
    assert 'ringkv_errors_total{code="bad_request"}' in text
    spec = http("GET", shared3.url(0) + "/openapi.json", token=None).json()
    assert spec["openapi"].startswith("3.")
    assert {"/v1/kv/{key}", "/v1/kv", "/v1/cluster", "/v1/replicas/{key}", "/healthz", "/readyz",
            "/metrics", "/openapi.json"} <= set(spec["paths"])
    assert set(spec["paths"]["/v1/kv/{key}"]) >= {"put", "get", "head", "delete"}


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v1/cluster", "/metrics", "/openapi.json",
                                  "/v1/kv?prefix=h", "/v1/replicas/head", "/v1/kv/head"])
def test_head_answers_wherever_get_does(shared3: StaticCluster, path: str) -> None:
    """HEAD (what probes and monitors send) is GET's status and headers without a body."""
    assert http("PUT", kv(shared3, "head"), b"head-value").status == 200
    get = http("GET", shared3.url(0) + path)
    with socket.create_connection(("127.0.0.1", shared3.nodes[0].port), timeout=30) as sock:
        sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_TOKEN}\r\n"
                     "Connection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    assert status_line.split(" ")[1] == str(get.status) == "200", reply[:300]
    assert headers["content-type"] == get.headers["content-type"]
    assert body == b"", reply[:300]  # the connection closes right after the headers


BAD_REQUESTS = [
    ("PUT", "/v1/kv/" + "k" * 1025, {}, 400, "bad_request"),
    ("PUT", "/v1/kv/%FF%FE", {}, 400, "bad_request"),
    ("GET", "/v1/kv/%C3%28", {}, 400, "bad_request"),
    ("PUT", "/v1/kv/k?consistency=most", {}, 400, "bad_request"),
    ("GET", "/v1/kv/k?consistency=", {}, 400, "bad_request"),
    ("PUT", "/v1/kv/k?ttl=0", {}, 400, "bad_request"),
    ("PUT", "/v1/kv/k?ttl=-5", {}, 400, "bad_request"),
    ("PUT", "/v1/kv/k?ttl=1.5", {}, 400, "bad_request"),
    ("PUT", "/v1/kv/k?ttl=abc", {}, 400, "bad_request"),
    ("PUT", "/v1/kv/k?ttl=315360001", {}, 400, "bad_request"),
    ("PUT", "/v1/kv/k?bogus=1", {}, 400, "bad_request"),
    ("PUT", "/v1/kv/k", {"If-Match": "1.node-0"}, 400, "bad_request"),
    ("PUT", "/v1/kv/k", {"If-Match": '*, "1.a"'}, 400, "bad_request"),
    ("PUT", "/v1/kv/k", {"If-Match": '"1.a" "2.b"'}, 400, "bad_request"),
    ("DELETE", "/v1/kv/k", {"If-None-Match": "1.node-0"}, 400, "bad_request"),
    ("GET", "/v1/kv/k", {"If-None-Match": 'W/1.node-0'}, 400, "bad_request"),
    ("GET", "/v1/kv?limit=0", {}, 400, "bad_request"),
    ("GET", "/v1/kv?limit=1001", {}, 400, "bad_request"),
    ("GET", "/v1/kv?limit=ten", {}, 400, "bad_request"),
    ("GET", "/v1/kv?cursor=%%%", {}, 400, "bad_request"),
    ("PUT", "/v1/kv/", {}, 400, "bad_request"),
    ("GET", "/v1/kv/", {}, 400, "bad_request"),
    ("DELETE", "/v1/kv/", {}, 400, "bad_request"),
    ("GET", "/v1/replicas/", {}, 400, "bad_request"),
    ("GET", "/v1/nothing-here", {}, 404, "not_found"),
    ("POST", "/v1/kv/k", {}, 400, "bad_request"),  # POST takes op=incr
    ("PATCH", "/v1/kv/k", {}, 405, "method_not_allowed"),
    ("PATCH", "/v1/cluster", {}, 405, "method_not_allowed"),
]


@pytest.mark.parametrize(("method", "path", "headers", "status", "code"), BAD_REQUESTS)
def test_bad_input_gets_json_4xx(shared3: StaticCluster, method: str, path: str,
                                 headers: dict[str, str], status: int, code: str) -> None:
    r = http(method, shared3.url(0) + path, b"v" if method in ("PUT", "POST") else None, headers)
    assert r.status == status, r.body
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] == code and err["message"]


def test_oversized_value_is_413_and_nothing_stored(shared3: StaticCluster) -> None:
    r = http("PUT", kv(shared3, "big"), b"x" * (1024 * 1024 + 1))
    assert r.status == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert http("GET", kv(shared3, "big")).status == 404
    assert http("PUT", kv(shared3, "big"), b"x" * (1024 * 1024)).status == 200


def test_chunked_oversized_value_is_413(shared3: StaticCluster) -> None:
    with socket.create_connection(("127.0.0.1", shared3.nodes[0].port), timeout=30) as sock:
        head = (f"PUT /v1/kv/chunky HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_TOKEN}\r\n"
                "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
        sock.sendall(head)
        chunk = b"y" * 65536
        try:
            for _ in range(17):
                sock.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the node may answer and close before the body ends
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status_line = reply.split(b"\r\n", 1)[0]
    assert b" 413 " in status_line, status_line
    body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "payload_too_large"


def _read_responses(sock: socket.socket, count: int) -> list[tuple[str, dict[str, str], bytes]]:
    """`count` responses off one connection, framed by their Content-Length."""
    buf, out = b"", []
    while len(out) < count:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {len(out)} responses: {buf!r}"
            buf += chunk
        head, buf = buf.split(b"\r\n\r\n", 1)
        status, *lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        length = int(headers["content-length"])
        while len(buf) < length:
            chunk = sock.recv(65536)
            assert chunk, "closed mid-body"
            buf += chunk
        out.append((status, headers, buf[:length]))
        buf = buf[length:]
    assert buf == b"", buf
    return out


def test_hot_path_answers_keep_http_framing(shared3: StaticCluster) -> None:
    """GET and PUT answers are formatted by the node itself (responses.RawResponse): they
    must frame, keep alive and close exactly as aiohttp's own answers do."""
    put = http("PUT", kv(shared3, "framed"), b"v" * 300, {"Content-Type": "text/x-framed"})
    version = put.json()["version"]
    auth = f"Authorization: Bearer {API_TOKEN}\r\n"
    get = f"GET /v1/kv/framed?consistency=quorum HTTP/1.1\r\nHost: x\r\n{auth}"
    put_req = (f"PUT /v1/kv/framed2 HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 3\r\n\r\nabc")
    with socket.create_connection(("127.0.0.1", shared3.nodes[1].port), timeout=30) as sock:
        # Pipelined: three answers in order on one connection, the last one closing it.
        sock.sendall(f"{get}\r\n{put_req}{get}Connection: close\r\n\r\n".encode())
        (s1, h1, b1), (s2, h2, b2), (s3, h3, b3) = _read_responses(sock, 3)
        assert sock.recv(1) == b""  # closed after the answer to "Connection: close"
    assert s1 == s3 == "HTTP/1.1 200 OK" and b1 == b3 == b"v" * 300
    assert h1["etag"] == f'"{version}"' and h1["content-type"] == "text/x-framed"
    assert "connection" not in h1 and h3["connection"] == "close"
    assert h1["date"].endswith(" GMT")
    assert s2 == "HTTP/1.1 200 OK" and h2["content-type"].startswith("application/json")
    assert json.loads(b2)["key"] == "framed2" and h2["etag"] == f'"{json.loads(b2)["version"]}"'
    with socket.create_connection(("127.0.0.1", shared3.nodes[2].port), timeout=30) as sock:
        # HTTP/1.0 keeps the connection only when asked to, and says so.
        get10 = f"GET /v1/kv/framed HTTP/1.0\r\n{auth}"
        sock.sendall(f"{get10}Connection: keep-alive\r\n\r\n".encode())
        [(status, headers, body)] = _read_responses(sock, 1)
        assert status == "HTTP/1.0 200 OK" and headers["connection"] == "keep-alive"
        sock.sendall(f"{get10}\r\n".encode())
        [(status, headers, body)] = _read_responses(sock, 1)
        assert status == "HTTP/1.0 200 OK" and "connection" not in headers
        assert body == b"v" * 300 and sock.recv(1) == b""


@pytest.mark.parametrize("auth", [None, "Bearer wrong-token", "Basic dXNlcjpwYXNz", "Bearer",
                                  f"bearer {API_TOKEN}x", f"Bearer {API_TOKEN}, Basic x"])
def test_auth_required_on_v1(shared3: StaticCluster, auth: str | None) -> None:
    headers = {} if auth is None else {"Authorization": auth}
    for method, path in [("PUT", "/v1/kv/k"), ("GET", "/v1/kv/k"), ("DELETE", "/v1/kv/k"),
                         ("GET", "/v1/kv"), ("GET", "/v1/cluster"), ("GET", "/v1/replicas/k")]:
        r = http(method, shared3.url(0) + path, b"v" if method == "PUT" else None, headers,
                 token=None)
        assert r.status == 401, (method, path)
        assert r.json()["error"]["code"] == "unauthorized"
        assert "Bearer" in r.headers["www-authenticate"]
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert http("GET", shared3.url(0) + path, token=None).status == 200


def test_api_token_does_not_open_internal_port(shared3: StaticCluster) -> None:
    """The internal port speaks frames, not HTTP, and wants the cluster token."""
    import msgpack  # noqa: PLC0415

    node = shared3.nodes[0]
    with socket.create_connection(("127.0.0.1", node.internal_port), timeout=10) as sock:
        body = msgpack.packb([0, "hello", 0, {"token": API_TOKEN, "node": "intruder"}])
        sock.sendall(len(body).to_bytes(4, "big") + body)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    reply = msgpack.unpackb(data[4:])
    assert reply[1] == 1 and reply[2]["code"] == "unauthorized"


def test_list_cursor_is_opaque_bytes(shared3: StaticCluster) -> None:
    with Client(shared3.url(0), token=API_TOKEN) as client:
        for key in ("üc1", "üc2", "üc3"):
            client.put(key, b"v")
    page = http("GET", shared3.url(0) + "/v1/kv?prefix=%C3%BCc&limit=2").json()
    assert page["keys"] == ["üc1", "üc2"]
    assert base64.urlsafe_b64decode(page["cursor"] + "==") == "üc2".encode()
    rest = http("GET", shared3.url(1) + f"/v1/kv?prefix=%C3%BCc&limit=2&cursor={page['cursor']}").json()
    assert rest == {"keys": ["üc3"], "cursor": None}


def test_node_without_membership_answers_503_not_ready(tmp_path: Path) -> None:
    """A node that was never given a membership document (a fresh pod) is not ready."""
    cluster = StaticCluster(tmp_path, size=1, rf=1)
    node = cluster.nodes[0]
    node.env.pop("RINGKV_MEMBERSHIP_FILE")
    node.start()
    try:
        wait_for(lambda: http("GET", node.url + "/healthz", token=None).status == 200, 60, "healthz")
        ready = http("GET", node.url + "/readyz", token=None)
        assert ready.status == 503 and ready.json()["error"]["code"] == "not_ready"
        for method in ("GET", "PUT"):
            r = http(method, node.url + "/v1/kv/k", b"v" if method == "PUT" else None)
            assert r.status == 503 and r.json()["error"]["code"] == "not_ready"
    finally:
        node.stop()


def test_a_trickled_body_times_out_with_408(tmp_path: Path) -> None:
    cluster = StaticCluster(tmp_path, size=1, rf=1, extra_env={"RINGKV_BODY_TIMEOUT": "1"})
    cluster.start()
    try:
        node = cluster.nodes[0]
        with socket.create_connection(("127.0.0.1", node.port), timeout=30) as sock:
            sock.sendall((f"PUT /v1/kv/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_TOKEN}"
                          "\r\nContent-Length: 100\r\n\r\n0123456789").encode())
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
                if b"\r\n\r\n" in reply and reply.rstrip().endswith(b"}"):
                    break
        assert b" 408 " in reply.split(b"\r\n", 1)[0], reply[:200]
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
        assert http("GET", node.url + "/v1/kv/slow").status == 404  # nothing stored
    finally:
        cluster.stop()
