"""The benchmark ceiling: ringkv's HTTP surface over a plain dict, nothing else.

One process, aiohttp (on uvloop when installed), PUT stores the body in a dict and GET
serves it, on the same /v1/kv/{key} paths and with the same kind of answer as ringkv
(JSON ``{key, version}`` and an ETag). Whatever ringkv spends beyond this server is the
cost of replication, storage and coordination, not of HTTP in Python.

By default it is an aiohttp Application with a router, as an application would be
written (the ceiling issue 5 names). ``--fast`` serves the same store the way a ringkv
node serves HTTP: aiohttp's low-level server, one handler dispatching on the path, and
answers formatted by `RawResponse`; the suite reports ringkv against both.

    python -m ringkv.bench.dictserver --port 8099 [--fast]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from urllib.parse import unquote

from aiohttp import web

from ringkv.bench.loadgen import run_async
from ringkv.node.responses import RawResponse

STORE = web.AppKey("store", dict)


def make_app() -> web.Application:
    """The application: the store lives on the app, so each app starts empty."""
    app = web.Application()
    app[STORE] = {}
    counter = iter(range(1, sys.maxsize))

    async def put(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        version = str(next(counter))
        request.app[STORE][key] = (await request.read(), version)
        return web.json_response(
            {"key": key, "version": version}, headers={"ETag": f'"{version}"'}
        )

    async def get(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        found = request.app[STORE].get(key)
        if found is None:
            return web.json_response(
                {"error": {"code": "not_found", "message": f"no key {key!r}"}}, status=404
            )
        value, version = found
        return web.Response(
            body=value,
            content_type="application/octet-stream",
            headers={"ETag": f'"{version}"'},
        )

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_put("/v1/kv/{key:.+}", put)
    app.router.add_get("/v1/kv/{key:.+}", get)
    app.router.add_get("/healthz", ok)
    app.router.add_get("/readyz", ok)
    return app


KV_PREFIX = "/v1/kv/"


def make_fast_server() -> web.Server:
    """The same store on ringkv's own HTTP path (see the module docstring)."""
    store: dict[str, tuple[bytes, str]] = {}
    counter = iter(range(1, sys.maxsize))

    async def handle(request: web.BaseRequest) -> web.StreamResponse | RawResponse:
        path = request.raw_path.partition("?")[0]
        if path.startswith(KV_PREFIX) and len(path) > len(KV_PREFIX):
            key = unquote(path[len(KV_PREFIX):])
            if request.method == "PUT":
                version = str(next(counter))
                store[key] = (await request.read(), version)
                body = f'{{"key": {json.dumps(key)}, "version": "{version}"}}'.encode()
                return RawResponse(200, body, f'"{version}"', "application/json")
            if request.method == "GET":
                found = store.get(key)
                if found is None:
                    return web.json_response(
                        {"error": {"code": "not_found", "message": f"no key {key!r}"}}, status=404)
                value, version = found
                return RawResponse(200, value, f'"{version}"', "application/octet-stream")
        if path in ("/healthz", "/readyz"):
            return web.Response(text="ok")
        return web.Response(status=404)

    # aiohttp annotates the handler as answering a StreamResponse; RawResponse is not one
    # but does what aiohttp's request handler calls on an answer (see node/responses.py).
    return web.Server(handle)  # type: ignore[arg-type]


async def serve(host: str, port: int, fast: bool = False) -> None:
    """Serve until SIGTERM or SIGINT; print the bound URL (``--port 0`` picks one)."""
    runner: web.BaseRunner = (web.ServerRunner(make_fast_server(), access_log=None) if fast
                              else web.AppRunner(make_app(), access_log=None))
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0]
    print(f"dictserver listening on http://{bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ringkv.bench.dictserver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099, help="0 = any free port")
    parser.add_argument("--fast", action="store_true",
                        help="serve on ringkv's HTTP path (low-level server, RawResponse)")
    args = parser.parse_args(argv)
    run_async(serve(args.host, args.port, args.fast))
    return 0


if __name__ == "__main__":
    sys.exit(main())
