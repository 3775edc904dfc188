"""`ringkv up`: a local cluster of node processes that behaves like the StatefulSet.

The launcher plays Kubernetes' and the operator's roles on one machine: it starts one OS
process per node (node i: public API on base_port+i, internal port on base_port+1000+i),
restarts a node that dies on the same data directory after `--restart-delay` (as a
StatefulSet recreates a deleted pod on its PVC), and runs the same membership reconciler
as the kopf operator, with a JSON file as the store and its children as the member source.
A control endpoint on base_port-1 takes commands: `ringkv node list|kill|stop|start|restart|add`.

With `--netns` (root only) every node runs in its own network namespace on a bridge
(:mod:`ringkv.local.netns`), and `ringkv node partition|heal` cut links between nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from ringkv.node import membership
from ringkv.node.logs import setup as setup_logging
from ringkv.node.membership import Document
from ringkv.node.security import TlsFiles
from ringkv.operator.controller import Observed
from ringkv.operator.nodes import NodeClient
from ringkv.operator.reconciler import Reconciler

from .netns import (
    NetnsError,
    Network,
    describe,
    isolate_rules,
    one_way_rules,
    partition_rules,
    unusable_reason,
)

log = logging.getLogger("ringkv.launcher")

HOST = "127.0.0.1"


@dataclass
class Child:
    """One node slot: its ports, data directory and current process."""

    index: int
    name: str
    port: int
    internal_port: int
    data_dir: Path
    log_path: Path
    host: str = HOST  # the address it binds (its namespace's address with --netns)
    proc: asyncio.subprocess.Process | None = None
    wanted: bool = True  # False once stopped for good (a scale-down)
    restarts: int = 0
    clock_skew_ms: int = 0  # RINGKV_CLOCK_SKEW_MS of its next start (the skew nemesis)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def observed(self) -> Observed:
        return Observed(self.name, f"{self.host}:{self.internal_port}", self.url, self.alive)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class FileStore:
    """The membership store of a local cluster: one JSON file, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def load(self) -> Document | None:
        return membership.load(str(self.path))

    async def save(self, doc: Document) -> None:
        membership.save(str(self.path), doc)


class LocalCluster:
    def __init__(self, nodes: int, rf: int, base_port: int, data_dir: Path, token: str | None,
                 restart_delay: float, node_env: dict[str, str] | None = None,
                 network: Network | None = None) -> None:
        self.rf = rf
        self.network = network  # created by the caller, torn down by the caller
        self.base_port = base_port
        self.data_dir = data_dir.resolve()
        self.restart_delay = restart_delay
        self.node_env = node_env or {}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.api_token = self._secret("token", token)
        self.cluster_token = self._secret("cluster-token", None)
        self.children: list[Child] = []
        for _ in range(nodes):
            self._new_child()
        # Nodes inherit the environment, RINGKV_TLS_* included: dial them the same way.
        self.nodes = NodeClient(self.cluster_token, caller="launcher",
                                tls=TlsFiles.from_env(os.environ))
        self.reconciler = Reconciler(FileStore(self.data_dir / "membership.json"), self,
                                     self.nodes, rf)
        self.wake = asyncio.Event()
        self._net_lock = asyncio.Lock()  # one partition change at a time
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False

    @property
    def control_url(self) -> str:
        return f"http://{HOST}:{self.base_port - 1}"

    def _secret(self, filename: str, given: str | None) -> str:
        path = self.data_dir / filename
        if given:
            value = given
        elif path.exists():
            value = path.read_text().strip()
        else:
            # Hex, so it never starts with "-" (argparse would take `--token -x...` for options).
            value = secrets.token_hex(24)
        path.write_text(value + "\n")
        path.chmod(0o600)
        return value

    def _new_child(self) -> Child:
        i = len(self.children)
        child = Child(i, f"node-{i}", self.base_port + i, self.base_port + 1000 + i,
                      self.data_dir / f"node-{i}", self.data_dir / f"node-{i}.log")
        if self.network is not None:
            child.host = self.network.add_node(child.name, i)
        self.children.append(child)
        return child

    # -- member source for the reconciler -----------------------------------------------
    async def observe(self) -> list[Observed]:
        return [c.observed() for c in self.children if c.wanted or c.alive]

    # -- processes ----------------------------------------------------------------------
    async def spawn(self, child: Child) -> None:
        child.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "RINGKV_NODE_NAME": child.name,
            "RINGKV_DATA_DIR": str(child.data_dir),
            "RINGKV_HOST": child.host,
            "RINGKV_PORT": str(child.port),
            "RINGKV_INTERNAL_HOST": child.host,
            "RINGKV_INTERNAL_PORT": str(child.internal_port),
            "RINGKV_API_TOKEN": self.api_token,
            "RINGKV_CLUSTER_TOKEN": self.cluster_token,
            **self.node_env,
            "RINGKV_CLOCK_SKEW_MS": str(child.clock_skew_ms),
        }
        argv = [sys.executable, "-m", "ringkv.node.main"]
        if self.network is not None:
            argv = self.network.command(child.name, argv)
        with open(child.log_path, "ab") as logfile:  # noqa: ASYNC230 - a local file, instant
            child.proc = await asyncio.create_subprocess_exec(
                *argv, env=env, stdout=logfile, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        log.info("started %s (pid %d) on %s", child.name, child.proc.pid, child.url)
        self._watch(child, child.proc)

    def _watch(self, child: Child, proc: asyncio.subprocess.Process) -> None:
        async def wait_exit() -> None:
            code = await proc.wait()
            if self._stopping or proc is not child.proc:
                return
            log.warning("%s exited (%s)%s", child.name, _describe_exit(code),
                        f"; restarting in {self.restart_delay:g}s" if child.wanted else "")
            self.wake.set()
            if child.wanted:
                await asyncio.sleep(self.restart_delay)
                if child.wanted and not child.alive and not self._stopping:
                    child.restarts += 1
                    await self.spawn(child)
                    self.wake.set()

        self._tasks.append(asyncio.create_task(wait_exit()))

    async def _listening(self, child: Child, timeout: float = 30.0) -> None:
        """Wait until a fresh node accepts peer connections, so the first push lands."""
        deadline = asyncio.get_running_loop().time() + timeout
        while child.alive and asyncio.get_running_loop().time() < deadline:
            try:
                _, writer = await asyncio.open_connection(child.host, child.internal_port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)

    def signal_child(self, child: Child, sig: int) -> bool:
        if child.proc is None or child.proc.returncode is not None:
            return False
        child.proc.send_signal(sig)
        return True

    async def restart(self, child: Child, clock_skew_ms: int) -> None:
        """Stop the node (SIGTERM, as a rolling restart does) and start it again with this
        clock skew; the exit watcher ignores the replaced process."""
        old, child.proc = child.proc, None
        child.wanted = True
        child.clock_skew_ms = clock_skew_ms
        if old is not None:
            await _terminate_async(old, 20)
        child.restarts += 1
        await self.spawn(child)
        self.wake.set()

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        for child in self.children:
            await self.spawn(child)
        await asyncio.gather(*(self._listening(c) for c in self.children))
        self._tasks.append(asyncio.create_task(self.reconciler.run(0.5, self.wake)))

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for child in self.children:
            self.signal_child(child, signal.SIGTERM)
        for child in self.children:
            if child.proc is not None:
                await _terminate_async(child.proc, 20, signalled=True)
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.nodes.close()

    # -- control endpoint ---------------------------------------------------------------
    def control_app(self) -> web.Application:
        app = web.Application()

        def find(request: web.Request) -> Child:
            name = request.match_info["name"]
            for child in self.children:
                if child.name == name:
                    return child
            raise _json_error(web.HTTPNotFound, f"no node {name}")

        async def nodes(_request: web.Request) -> web.Response:
            return web.json_response([
                {"name": c.name, "pid": c.proc.pid if c.proc else None, "alive": c.alive,
                 "wanted": c.wanted, "host": c.host, "port": c.port,
                 "internal_port": c.internal_port, "url": c.url, "data_dir": str(c.data_dir),
                 "restarts": c.restarts, "clock_skew_ms": c.clock_skew_ms}
                for c in self.children
            ])

        async def kill(request: web.Request) -> web.Response:
            child = find(request)
            sig = signal.Signals[request.query.get("signal", "SIGKILL")]
            return web.json_response({"signalled": self.signal_child(child, sig)})

        async def stop(request: web.Request) -> web.Response:
            child = find(request)
            child.wanted = False
            self.signal_child(child, signal.SIGTERM)
            self.wake.set()
            return web.json_response({"stopped": child.name})

        async def start(request: web.Request) -> web.Response:
            child = find(request)
            child.wanted = True
            if not child.alive:
                await self.spawn(child)
            self.wake.set()
            return web.json_response({"started": child.name})

        async def restart(request: web.Request) -> web.Response:
            child = find(request)
            try:
                skew = int(request.query.get("clock_skew_ms", "0"))
            except ValueError:
                raise _json_error(web.HTTPBadRequest, "clock_skew_ms must be an integer") from None
            await self.restart(child, skew)
            return web.json_response({"restarted": child.name, "clock_skew_ms": skew})

        async def add(_request: web.Request) -> web.Response:
            child = self._new_child()
            await self.spawn(child)
            self.wake.set()
            return web.json_response({"added": child.name, "port": child.port})

        app.router.add_get("/nodes", nodes)
        app.router.add_post("/nodes", add)
        app.router.add_post("/nodes/{name}/kill", kill)
        app.router.add_post("/nodes/{name}/stop", stop)
        app.router.add_post("/nodes/{name}/start", start)
        app.router.add_post("/nodes/{name}/restart", restart)
        app.router.add_get("/net", self._net_state)
        app.router.add_post("/net/partition", self._net_partition)
        app.router.add_post("/net/heal", self._net_heal)
        return app

    # -- partitions (--netns) -----------------------------------------------------------
    def _net_json(self) -> dict[str, Any]:
        net = self.network
        if net is None:
            return {"netns": False}
        return {"netns": True, "host": net.host,
                "addresses": {name: net.address(name) for name in net.nodes},
                "dropped": {dst: sorted(srcs) for dst, srcs in net.rules.items()},
                "partition": describe(net.rules)}

    async def _net_state(self, _request: web.Request) -> web.Response:
        return web.json_response(self._net_json())

    async def _net_apply(self, rules: dict[str, frozenset[str]]) -> web.Response:
        if self.network is None:
            raise _json_error(web.HTTPConflict,
                              "not a network-namespace cluster: start it with `ringkv up --netns`")
        try:
            async with self._net_lock:
                await asyncio.to_thread(self.network.apply, rules)
        except ValueError as exc:
            raise _json_error(web.HTTPBadRequest, str(exc)) from None
        except NetnsError as exc:
            raise _json_error(web.HTTPInternalServerError, str(exc)) from None
        log.info("partition: %s", describe(self.network.rules))
        return web.json_response(self._net_json())

    async def _net_partition(self, request: web.Request) -> web.Response:
        """Body: {"groups": [[names], ...]}, {"isolate": name} or {"one_way": [from, to]}."""
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            if "groups" in body:
                groups = body["groups"]
                if not (isinstance(groups, list) and all(
                        isinstance(g, list) and all(isinstance(n, str) for n in g) for g in groups)):
                    raise ValueError("groups must be a list of lists of node names")
                rules = partition_rules(groups)
            elif "isolate" in body:
                rules = isolate_rules(str(body["isolate"]), [c.name for c in self.children])
            elif "one_way" in body:
                pair = body["one_way"]
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise ValueError("one_way must be [from, to]")
                rules = one_way_rules(str(pair[0]), str(pair[1]))
            else:
                raise ValueError("give groups, isolate or one_way")
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            raise _json_error(web.HTTPBadRequest, str(exc)) from None
        return await self._net_apply(rules)

    async def _net_heal(self, _request: web.Request) -> web.Response:
        return await self._net_apply({})


async def _terminate_async(proc: asyncio.subprocess.Process, timeout: float,
                           signalled: bool = False) -> None:
    """SIGTERM (unless already sent), wait, then SIGKILL and reap."""
    if proc.returncode is not None:
        return
    if not signalled:
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def _json_error(status: type[web.HTTPException], message: str) -> web.HTTPException:
    return status(text=json.dumps({"error": message}), content_type="application/json")


def _ephemeral_low() -> int:
    """The lowest port the kernel hands to outgoing connections (32768 by default)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(ports: list[int]) -> bool:
    socks = []
    try:
        for port in ports:
            s = socket.socket()
            socks.append(s)
            s.bind((HOST, port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def free_port_block(count: int, attempts: int = 500) -> int:
    """A base port P where P-1..P+count and P+1000..P+1000+count are all free.

    Chosen below the kernel's ephemeral range: a port found free there could be taken by
    any outgoing connection (a client polling a node that is still starting) before the
    node binds it."""
    rng = random.Random()
    top = max(12_000, _ephemeral_low() - 1000 - count - 1)
    for _ in range(attempts):
        base = rng.randrange(10_001, top)
        if _bindable([base - 1, *range(base, base + count),
                      *range(base + 1000, base + 1000 + count)]):
            return base
    raise RuntimeError("no free block of ports found")


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free now, below the ephemeral range (see free_port_block)."""
    rng = random.Random()
    chosen: list[int] = []
    for _ in range(count * 200):
        port = rng.randrange(10_000, _ephemeral_low())
        if port not in chosen and _bindable([port]):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("no free ports found")


def terminate(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Stop a child process started with Popen: SIGTERM, wait, then SIGKILL and reap."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def log_tail(path: Path, lines: int = 40, missing: str = "") -> str:
    """The last lines of a log file, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return missing


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ringkv up", description="Run a local ringkv cluster.")
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--rf", type=int, default=3)
    p.add_argument("--base-port", type=int, default=8080)
    p.add_argument("--data-dir", default=".ringkv-data")
    p.add_argument("--token", help="API token (default: generated once, kept in DATA_DIR/token)")
    p.add_argument("--restart-delay", type=float, default=3.0,
                   help="seconds before a dead node is restarted on its data directory")
    p.add_argument("--storage", choices=["sqlite", "memory"], default="sqlite")
    p.add_argument("--netns", action="store_true",
                   help="run each node in its own network namespace on a bridge, so "
                   "`ringkv node partition` can cut links (root only; needs ip and iptables)")
    args = p.parse_args(argv)
    if args.nodes < 1 or args.rf < 1:
        p.error("--nodes and --rf must be at least 1")
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
    cluster = LocalCluster(args.nodes, args.rf, args.base_port, Path(args.data_dir), args.token,
                           args.restart_delay, node_env={"RINGKV_STORAGE": args.storage},
                           network=network)
    runner = web.AppRunner(cluster.control_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, args.base_port - 1).start()
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


def _banner(cluster: LocalCluster) -> str:
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
        "",
        f"control: ringkv node list | kill NAME | stop NAME | start NAME | restart NAME | add"
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


def node_command(argv: list[str] | None = None) -> int:
    """`ringkv node list|kill|stop|start|restart|add|partition|heal`: talk to a running launcher."""
    p = argparse.ArgumentParser(prog="ringkv node", description="Control a local cluster.")
    p.add_argument("--control", default=os.environ.get("RINGKV_CONTROL", "http://127.0.0.1:8079"))
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list")
    sub.add_parser("add")
    for action in ("kill", "stop", "start", "restart"):
        sp = sub.add_parser(action)
        sp.add_argument("name")
        if action == "kill":
            sp.add_argument("--signal", default="SIGKILL")
        if action == "restart":
            sp.add_argument("--clock-skew-ms", type=int, default=0,
                            help="start it with its clock shifted by this much")
    part = sub.add_parser("partition", help="cut links between nodes (a --netns cluster)")
    how = part.add_mutually_exclusive_group(required=True)
    how.add_argument("--isolate", metavar="NAME", help="cut NAME off from every other node")
    how.add_argument("--groups", nargs="+", metavar="A,B",
                     help="comma-separated groups; nodes in different groups cannot talk")
    how.add_argument("--one-way", nargs=2, metavar=("FROM", "TO"),
                     help="drop packets from FROM to TO (TO -> FROM still flows)")
    sub.add_parser("heal", help="remove every partition rule")
    args = p.parse_args(argv)
    body: bytes | None = None
    if args.action == "list":
        method, path = "GET", "/nodes"
    elif args.action == "add":
        method, path = "POST", "/nodes"
    elif args.action == "partition":
        method, path = "POST", "/net/partition"
        doc = ({"isolate": args.isolate} if args.isolate else
               {"one_way": args.one_way} if args.one_way else
               {"groups": [g.split(",") for g in args.groups]})
        body = json.dumps(doc).encode()
    elif args.action == "heal":
        method, path = "POST", "/net/heal"
    else:
        method, path = "POST", f"/nodes/{args.name}/{args.action}"
        if args.action == "kill":
            path += f"?signal={args.signal}"
        if args.action == "restart":
            path += f"?clock_skew_ms={args.clock_skew_ms}"
    if method == "POST" and body is None:
        body = b""
    req = urllib.request.Request(args.control + path, method=method, data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            print(json.dumps(json.load(resp), indent=2))
            return 0
    except urllib.error.HTTPError as exc:
        print(f"ringkv node: {exc.code}: {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"ringkv node: no launcher at {args.control} ({exc}); start one with `make run`",
              file=sys.stderr)
        return 5
