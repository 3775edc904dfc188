"""Load generator: histogram precision, response parsing, real short runs on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import random
import selectors
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from ringkv.bench.etcd import EtcdCluster
from ringkv.bench.loadgen import (
    ConnectFailed,
    EtcdTarget,
    Histogram,
    LoadConfig,
    Target,
    main,
    parse_response,
    read_every_key,
    run_load,
)
from ringkv.local import system_tools

# ----------------------------------------------------------------------- histogram


def _exact(sorted_values: list[int], q: float) -> int:
    """The rank-ceil(q*n) value, the definition Histogram.percentile approximates."""
    rank = min(len(sorted_values), max(1, math.ceil(q * len(sorted_values))))
    return sorted_values[rank - 1]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_match_a_sorted_list_within_one_percent(seed: int) -> None:
    rng = random.Random(seed)
    # Latencies from tens of microseconds to minutes, heavy-tailed like real ones.
    values = [int(rng.lognormvariate(7, 2)) for _ in range(20_000)] + [0, 1, 255, 256, 10**8]
    hist = Histogram()
    for v in values:
        hist.record(v)
    values.sort()
    for q in (0.0, 0.001, 0.25, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0):
        exact = _exact(values, q)
        assert abs(hist.percentile(q) - exact) <= 0.01 * exact, (q, exact)
    assert hist.total == len(values)
    assert hist.min == values[0]
    assert hist.max == values[-1]
    assert hist.summary()["mean"] == pytest.approx(sum(values) / len(values))


def test_buckets_hold_their_values_and_are_narrow() -> None:
    previous = -1
    for v in sorted({*range(0, 5000), *(int(1.37**k) for k in range(20, 80))}):
        idx = Histogram.index(v)
        low, high = Histogram.bounds(idx)
        assert low <= v <= high
        assert (high - low + 1) <= max(1, low / 128)
        assert idx >= previous  # monotonic in the value
        previous = idx


def test_merge_equals_recording_everything_in_one() -> None:
    rng = random.Random(7)
    a, b, both = Histogram(), Histogram(), Histogram()
    for i in range(5000):
        v = int(rng.expovariate(1 / 3000))
        (a if i % 3 else b).record(v)
        both.record(v)
    a.merge(b)
    assert a.summary() == both.summary()
    assert (a.total, a.min, a.max) == (both.total, both.min, both.max)


def test_empty_histogram_reports_zeros() -> None:
    assert set(Histogram().summary().values()) == {0.0}


# ------------------------------------------------------------------------ parsing


def test_parse_response_content_length_and_leftover() -> None:
    buf = bytearray(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1"
    )
    assert parse_response(buf) == (200, b"hello", len(buf) - len(b"HTTP/1.1"), False)
    assert parse_response(bytearray(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")) is None
    assert parse_response(bytearray(b"HTTP/1.1 200 OK\r\nContent-Len")) is None


def test_parse_response_chunked_close_and_no_body() -> None:
    chunked = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"4\r\nquor\r\n3;ext=1\r\num!\r\n0\r\n\r\n"
    assert parse_response(bytearray(chunked + body)) == (503, b"quorum!", len(chunked + body), False)
    assert parse_response(bytearray(chunked + body[:-2])) is None
    closing = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
    assert parse_response(bytearray(closing)) == (204, b"", len(closing), True)
    unsized = bytearray(b"HTTP/1.1 200 OK\r\n\r\nrest")
    assert parse_response(unsized) is None
    assert parse_response(unsized, eof=True) == (200, b"rest", len(unsized), True)


def test_etcd_requests_carry_base64_json() -> None:
    target = EtcdTarget(b"127.0.0.1:2379", b"v" * 10, "one", None, "/v3")
    head, body = target.write(b"k01").split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /v3/kv/put HTTP/1.1\r\n")
    assert b"Content-Length: %d" % len(body) in head
    doc = json.loads(body)
    assert base64.b64decode(doc["key"]) == b"k01"
    assert base64.b64decode(doc["value"]) == b"v" * 10
    head, body = target.read(b"k01").split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /v3/kv/range ")
    assert json.loads(body) == {"key": base64.b64encode(b"k01").decode(), "serializable": True}
    assert target.read_status(200, b'{"header":{}}') == 404
    assert target.read_status(200, b'{"header":{},"kvs":[{}]}') == 200


def test_ringkv_cas_sends_the_tag_and_reads_the_next_one() -> None:
    target = Target(b"127.0.0.1:8080", b"v%d" * 5, "quorum", "tok")
    head, body = target.cas(b"k01", b'"00001-n1"').split(b"\r\n\r\n", 1)
    assert head.startswith(b"PUT /v1/kv/k01?consistency=quorum HTTP/1.1\r\n")
    assert b"\r\nIf-Match: \"00001-n1\"" in head
    assert b"\r\nContent-Length: %d\r\n" % len(body) in head
    assert body == b"v%d" * 5  # the value is sent as it is, never formatted
    answer = b'{"key": "k01", "version": "00002-n0"}'
    assert target.written(200, answer) == b'"00002-n0"'
    assert target.swapped(200, answer) == (200, b'"00002-n0"')
    assert target.swapped(412, b'{"error": {"code": "precondition_failed"}}') == (412, None)


def test_etcd_cas_is_a_txn_on_mod_revision() -> None:
    target = EtcdTarget(b"127.0.0.1:2379", b"v" * 10, None, None, "/v3")
    head, body = target.cas(b"k01", b"41").split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /v3/kv/txn HTTP/1.1\r\n")
    assert b"Content-Length: %d" % len(body) in head
    key = base64.b64encode(b"k01").decode()
    assert json.loads(body) == {
        "compare": [{"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": "41"}],
        "success": [{"request_put": {"key": key, "value": base64.b64encode(b"v" * 10).decode()}}],
    }
    header = b'{"header":{"cluster_id":"1","member_id":"2","revision":"42","raft_term":"2"}'
    assert target.written(200, header + b"}") == b"42"
    assert target.swapped(200, header + b',"succeeded":true,"responses":[]}') == (200, b"42")
    assert target.swapped(200, header + b"}") == (412, None)  # the compare failed


# ------------------------------------------------------------------ real runs


@pytest.fixture(scope="module")
def dict_url() -> Iterator[str]:
    """A dict server on a port it picks itself (no race), stopped after the module."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ringkv.bench.dictserver", "--port", "0"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + 30
            while not sel.select(timeout=0.5):
                assert proc.poll() is None, "dict server exited"
                assert time.monotonic() < deadline, "dict server did not start"
        line = proc.stdout.readline().decode()
        assert "listening on" in line, line
        yield line.split()[-1]
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_closed_loop_mixed_run(dict_url: str) -> None:
    edges: list[str] = []
    result = await run_load(
        LoadConfig(
            urls=[dict_url, dict_url], kind="dict", workload="mixed", read_fraction=0.5,
            connections=8, duration=1.0, warmup=0.2, keyspace=200, seed=3,
        ),
        on_window=edges.append,
    )
    assert edges == ["start", "end"]
    assert result.ops > 0
    assert result.errors == {}
    assert set(result.by_op) == {"read", "write"}
    assert result.preload_keys == 200
    assert result.loadgen_cpu_s >= 0
    assert result.latency_us["max"] >= result.latency_us["p50"] > 0


async def test_open_loop_run(dict_url: str) -> None:
    result = await run_load(
        LoadConfig(
            urls=[dict_url], kind="ringkv", workload="write", mode="open", rate=400,
            connections=4, duration=1.0, warmup=0.2, consistency="quorum", token="t",
        )
    )
    assert result.ops > 0
    assert result.errors == {}


@pytest.fixture
async def flaky_url() -> AsyncIterator[tuple[str, dict[str, int]]]:
    """A server of ringkv's key paths that answers 503 to the first write of every third
    key (by number) and of every key ending in 7 for good; GET answers 404 for what it
    does not hold."""
    held: dict[str, int] = {}

    async def put(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        n = int(key[1:])
        held.setdefault(key, 0)
        held[key] += 1
        if n % 10 == 7 or (n % 3 == 0 and held[key] == 1):
            return web.Response(status=503)
        return web.Response(status=204)

    async def get(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        return web.Response(status=200 if held.get(key) else 404, body=b"v")

    app = web.Application()
    app.router.add_put("/v1/kv/{key}", put)
    app.router.add_get("/v1/kv/{key}", get)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", held
    finally:
        await runner.cleanup()


async def test_preload_sends_failed_writes_again_and_gives_up_after_three(
    flaky_url: tuple[str, dict[str, int]],
) -> None:
    url, held = flaky_url
    config = LoadConfig(urls=[url], workload="read", connections=4, duration=0.2, warmup=0,
                        keyspace=6)
    result = await run_load(config)
    # Keys 0 and 3 failed once and were written again.
    assert (result.preload_keys, result.preload_retried) == (6, 2)
    assert held == {"k000000000000000": 2, "k000000000000001": 1, "k000000000000002": 1,
                    "k000000000000003": 2, "k000000000000004": 1, "k000000000000005": 1}
    with pytest.raises(RuntimeError, match="after 3 attempts"):
        await run_load(LoadConfig(urls=[url], workload="read", connections=4, duration=0.2,
                                  warmup=0, keyspace=10))
    assert held["k000000000000007"] == 3


async def test_read_every_key_counts_answers(flaky_url: tuple[str, dict[str, int]]) -> None:
    url, held = flaky_url
    held.update({"k000000000000000": 1, "k000000000000002": 1})
    answers = await read_every_key(LoadConfig(urls=[url], workload="read", connections=2,
                                              keyspace=4))
    assert answers == {"200": 2, "404": 2}


async def test_unreachable_target_fails_fast() -> None:
    port = _closed_port()
    with pytest.raises(ConnectFailed):
        await run_load(LoadConfig(urls=[f"http://127.0.0.1:{port}"], duration=1, warmup=0))


def test_cli_writes_json(dict_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "result.json"
    argv = [
        "--kind", "dict", "--url", dict_url, "--workload", "read", "-c", "4",
        "-d", "1", "--warmup", "0.2", "--keyspace", "100", "--json", str(out),
    ]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["ops"] > 0
    assert doc["errors"] == {}
    assert doc["config"]["workload"] == "read"
    assert "token" not in doc["config"]
    assert "p99" in capsys.readouterr().out


def test_cli_json_to_stdout(dict_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--kind", "dict", "--url", dict_url, "-c", "2", "-d", "1", "--warmup", "0", "--json", "-"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["ops"] > 0


def _closed_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(system_tools.find("etcd") is None,
                    reason="etcd not installed (Debian etcd-server; `make tools` installs it as root)")
async def test_etcd_write_read_and_cas(tmp_path: Path) -> None:
    cluster = EtcdCluster(3, data_dir=tmp_path)
    cluster.start()
    try:
        for workload in ("write", "read", "cas"):
            result = await run_load(
                LoadConfig(
                    urls=cluster.client_urls, kind="etcd", workload=workload,
                    connections=6, duration=1.0, warmup=0.2, keyspace=100,
                )
            )
            assert result.ops > 0
            assert result.errors == {}  # cas: every connection writes only its own keys
        # Two runs over the same 4 keys take each other's versions away: the refusals
        # are counted, so an uncontended run that reports none has had none.
        contended = LoadConfig(urls=cluster.client_urls, kind="etcd", workload="cas",
                               connections=4, duration=1.0, warmup=0.2, keyspace=4)
        results = await asyncio.gather(run_load(contended), run_load(contended))
        assert sum(r.errors.get("412", 0) for r in results) > 0
        assert all(set(r.errors) <= {"412"} for r in results)
    finally:
        cluster.stop()
