"""`ringkv-node`: run one node (public API + internal peer port) until SIGTERM/SIGINT.

Exit codes: 0 stopped by a signal; 2 bad configuration, 3 unusable storage (a corrupt or
truncated database file), 4 cannot start (an OS error while starting: a port in use, a
data directory it cannot write); 1 a crash. After 2 or 4 a restart fails the same way
until someone changes the settings or frees the port, so `ringkv up` does not restart; a
node that exited 3 is restarted, because the fix its message asks for (move the file
away) is the whole fix: the next start rebuilds it from its replicas.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web

from . import config, logs
from .api import PROBE_PATHS, make_server
from .httpserver import listen
from .security import server_context
from .service import NodeService
from .storage import StorageError

log = logging.getLogger("ringkv.node")

EXIT_BAD_CONFIG = 2
EXIT_BAD_STORAGE = 3
EXIT_CANNOT_START = 4
NOT_WORTH_RESTARTING = frozenset({EXIT_BAD_CONFIG, EXIT_CANNOT_START})
T = TypeVar("T")
# Open connections on the probe port: the kubelet opens one per probe and closes it.
PROBE_CONNECTIONS = 32


class CannotStart(Exception):
    """An OS error while starting: a port in use, a data directory it cannot write."""


async def _starting(step: Awaitable[T]) -> T:
    """A start-up step; its OSError is CannotStart (one that happens later is a crash)."""
    try:
        return await step
    except OSError as exc:
        raise CannotStart(str(exc)) from exc


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ringkv-node",
        description="Run one ringkv node. Every setting also reads RINGKV_<NAME> from the "
        "environment (flags win over the environment, which wins over --config).",
    )
    p.add_argument("--config", help="JSON file of settings")
    p.add_argument("--name", dest="node_name")
    p.add_argument("--data-dir")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--internal-host")
    p.add_argument("--internal-port", type=int)
    p.add_argument("--membership-file")
    p.add_argument("--storage", choices=["sqlite", "memory"])
    return p.parse_args(argv)


async def serve(settings: config.Settings) -> None:
    service = NodeService(settings)
    await _starting(service.start())
    # A valid request line can be ~8 KiB (a 1024-byte prefix, percent-encoded, plus a
    # cursor): twice aiohttp's default limit, so valid requests reach the JSON errors.
    server = make_server(service, access_log=None, max_line_size=16384,
                         keepalive_timeout=settings.idle_timeout)
    # In-flight requests get at most a replica round's time to finish on shutdown
    # (aiohttp's default of 60 s would outlast a pod's grace period).
    drain = min(settings.replica_timeout * 2 + 1, settings.shutdown_timeout / 2)
    runner = web.ServerRunner(server, shutdown_timeout=drain)
    probes = web.ServerRunner(make_server(service, paths=PROBE_PATHS, access_log=None,
                                          keepalive_timeout=settings.idle_timeout),
                              shutdown_timeout=drain)
    try:
        await runner.setup()
        await probes.setup()
        tls = settings.tls
        tls_context = server_context(tls, require_client_cert=False) if tls.enabled else None
        listeners = [await _starting(listen(
            runner, settings.host, settings.port, settings.max_connections, tls_context))]
        if settings.probe_port:
            listeners.append(await _starting(listen(
                probes, settings.host, settings.probe_port, PROBE_CONNECTIONS, tls_context)))
        log.info("serving the API on %s:%d%s and peers on %s:%d", settings.host, settings.port,
                 f" (probes also on {settings.probe_port})" if settings.probe_port else "",
                 settings.internal_host, settings.internal_port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
            log.info("shutting down")
            # A node being removed on purpose hands its ranges off first (its probes and
            # API keep answering meanwhile); the rest of the budget is for the requests in
            # flight (every write acked is in the WAL already).
            deadline = loop.time() + settings.shutdown_timeout
            await service.hand_off(settings.leave_wait, deadline - drain)
        finally:
            for each in listeners:
                each.close()
            await runner.cleanup()
            await probes.cleanup()
    finally:
        await service.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "config"}
    try:
        settings = config.load(args.config, overrides=overrides)
    except (config.ConfigError, OSError, ValueError) as exc:
        print(f"ringkv-node: bad configuration: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    logs.setup(settings.log_format, settings.log_level)
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up

        runner: Callable[[Coroutine[Any, Any, None]], None] = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(serve(settings))
    except StorageError as exc:
        log.error("%s", exc)
        return EXIT_BAD_STORAGE
    except CannotStart as exc:
        log.error("cannot start: %s", exc)
        return EXIT_CANNOT_START
    return 0


if __name__ == "__main__":
    sys.exit(main())
