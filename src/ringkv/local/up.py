"""`ringkv up`: a local cluster of node processes that behaves like the StatefulSet.

It runs a :class:`~ringkv.local.supervisor.Supervisor` (one process per node, restarted
when it dies, the membership reconciler over a JSON file) and its control endpoint on
base_port-1 (:mod:`ringkv.local.control`), which `ringkv node` drives. With `--netns`
(root only) every node runs in its own network namespace on a bridge
(:mod:`ringkv.local.netns`), so `ringkv node partition|heal` can cut links between nodes.
To start it from a program and wait until it is ready, use :func:`ringkv.local.spawn.spawn_up`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from ringkv.node.logs import setup as setup_logging

from .control import control_app
from .netns import NetnsError, Network, unusable_reason
from .ports import LOOPBACK, block, free_port_block, unusable
from .supervisor import Supervisor


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ringkv up", description="Run a local ringkv cluster.")
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--rf", type=int, default=3)
    p.add_argument("--base-port", type=int, default=8080)
    p.add_argument("--data-dir", default=".ringkv-data")
    p.add_argument("--token", help="API token (default: generated once, kept in DATA_DIR/token)")
    p.add_argument("--restart-delay", type=float, default=3.0,
                   help="seconds before a dead node is restarted on its data directory")
    p.add_argument("--down-grace", type=float, default=300.0, metavar="S",
                   help="seconds a stopped or dead node stays a member before the others "
                   "restore its copies elsewhere (default 300, as Kubernetes waits before "
                   "evicting the pods of an unreachable node; 0: at once)")
    p.add_argument("--storage", choices=["sqlite", "memory"], default="sqlite")
    p.add_argument("--netns", action="store_true",
                   help="run each node in its own network namespace on a bridge, so "
                   "`ringkv node partition` can cut links (root only; needs ip and iptables)")
    args = p.parse_args(argv)
    if args.nodes < 1 or args.rf < 1:
        p.error("--nodes and --rf must be at least 1")
    # The whole block, before anything starts: a node that cannot bind cannot start. With
    # --netns the nodes bind their namespaces' addresses; only the control port is local.
    ports = block(args.base_port, args.nodes)
    problem = unusable(ports, f"--base-port {args.base_port} --nodes {args.nodes}",
                       free=ports[:1] if args.netns else None)
    if problem is not None:
        p.error(f"{problem}; pick another --base-port (e.g. {free_port_block(args.nodes + 5)})")
    if args.down_grace < 0:
        p.error("--down-grace must be 0 or more")
    return args


async def _run(args: argparse.Namespace) -> int:
    network = Network() if args.netns else None
    try:
        if network is not None:
            network.create()
        return await _serve(args, network)
    except NetnsError as exc:
        print(f"ringkv up: --netns: {exc}", file=sys.stderr)
        return 1
    finally:
        if network is not None:
            network.teardown()


async def _serve(args: argparse.Namespace, network: Network | None) -> int:
    cluster = Supervisor(args.nodes, args.rf, args.base_port, Path(args.data_dir), args.token,
                         args.restart_delay, node_env={"RINGKV_STORAGE": args.storage},
                         network=network, down_grace=args.down_grace)
    runner = web.AppRunner(control_app(cluster), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, LOOPBACK, args.base_port - 1).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await cluster.start()
    print(_banner(cluster), flush=True)
    try:
        await stop.wait()
    finally:
        print("stopping the cluster...", flush=True)
        await cluster.stop()
        await runner.cleanup()
    return 0


def _banner(cluster: Supervisor) -> str:
    first = cluster.children[0].url
    last = cluster.children[min(3, len(cluster.children) - 1)].url
    lines = [
        f"ringkv: {len(cluster.children)} nodes, rf={cluster.rf}, data in {cluster.data_dir}",
        *(f"  {c.name}: {c.url}  (peers {c.host}:{c.internal_port}, log {c.log_path})"
          for c in cluster.children),
        "",
        f"export RINGKV_TOKEN={cluster.api_token}",
        f"curl -X PUT {first}/v1/kv/hello -d world -H \"Authorization: Bearer $RINGKV_TOKEN\"",
        f"curl {last}/v1/kv/hello -H \"Authorization: Bearer $RINGKV_TOKEN\"",
        f"console: {first}/ui/  (any node serves it; paste the token above)",
        "",
        f"control: ringkv node list | kill NAME | stop NAME | start NAME | restart NAME | add"
        f" | remove NAME"
        f"{' | partition ... | heal' if cluster.network else ''} (--control {cluster.control_url})",
        "Ctrl-C stops every node.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.netns:
        reason = unusable_reason()
        if reason:
            print(f"ringkv up: --netns: {reason}", file=sys.stderr)
            return 2
    setup_logging(os.environ.get("RINGKV_LOG_FORMAT", "text"), "INFO")
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up

        return uvloop.run(_run(args))
    except ImportError:
        return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
