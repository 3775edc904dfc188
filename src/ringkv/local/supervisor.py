"""The supervisor of `ringkv up`: one OS process per node, restarted when it dies, as
the membership reconciler's member source.

It plays Kubernetes' and the operator's roles on one machine: it starts one process per
node (node i: public API on base_port+i, internal port on base_port+1000+i), restarts a
node that dies on the same data directory after `restart_delay` (as a StatefulSet
recreates a deleted pod on its PVC), but gives up on one that could not start for a reason
a restart cannot change (a port in use, bad settings: `ringkv-node` exits 4 or 2) and
says why, and runs the same reconciler as the kopf operator, with a JSON file as the
store (:mod:`ringkv.local.store`) and its children as the member source. With a
:class:`~ringkv.local.netns.Network` every node runs in its own network namespace, and
:meth:`Supervisor.partition` cuts links between them. The control endpoint
(:mod:`ringkv.local.control`) drives it; `ringkv up` (:mod:`ringkv.local.up`) wires it up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ringkv.node.main import NOT_WORTH_RESTARTING
from ringkv.node.membership import Document
from ringkv.node.security import TlsFiles
from ringkv.operator.controller import Observed, Policy
from ringkv.operator.nodes import NodeClient
from ringkv.operator.reconciler import Reconciler

from .netns import Network, describe
from .ports import LOOPBACK, node_ports, unusable
from .processes import describe_exit, log_tail, terminate_async
from .store import FileStore

log = logging.getLogger("ringkv.launcher")


class NoNetwork(Exception):
    """A partition was asked of a cluster that does not run in network namespaces."""


class PortsTaken(Exception):
    """A new node's ports are in use or inside the kernel's ephemeral range."""


@dataclass
class Child:
    """One node slot: its ports, data directory and current process."""

    index: int
    name: str
    port: int
    internal_port: int
    data_dir: Path
    log_path: Path
    host: str = LOOPBACK  # the address it binds (its namespace's address with a Network)
    proc: asyncio.subprocess.Process | None = None
    wanted: bool = True  # kept running: restarted when it dies (False once stopped)
    expected: bool = True  # a member: False once removed (it hands off, then stops)
    forced: bool = False  # removed whatever it costs (`ringkv node remove --force`)
    restarts: int = 0
    clock_skew_ms: int = 0  # RINGKV_CLOCK_SKEW_MS of its next start (the skew nemesis)
    failure: str = ""  # why it could not start and was given up on (until started again)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def observed(self) -> Observed:
        return Observed(self.name, f"{self.host}:{self.internal_port}", self.url, self.alive,
                        self.expected, self.forced)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def to_json(self) -> dict[str, Any]:
        """The node as the control endpoint lists it (``GET /nodes``)."""
        return {"name": self.name, "pid": self.proc.pid if self.proc else None,
                "alive": self.alive, "wanted": self.wanted, "expected": self.expected,
                "host": self.host,
                "port": self.port, "internal_port": self.internal_port, "url": self.url,
                "data_dir": str(self.data_dir), "restarts": self.restarts,
                "clock_skew_ms": self.clock_skew_ms, "failure": self.failure or None}


class Supervisor:
    """The node processes of one local cluster and the reconciler that keeps their membership."""

    def __init__(self, nodes: int, rf: int, base_port: int, data_dir: Path, token: str | None,
                 restart_delay: float, node_env: dict[str, str] | None = None,
                 network: Network | None = None, down_grace: float = 300.0) -> None:
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
                                     self.nodes, Policy(rf=rf, down_grace=down_grace),
                                     on_change=self._changed)
        self.wake = asyncio.Event()
        self._net_lock = asyncio.Lock()  # one partition change at a time
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False

    @property
    def control_url(self) -> str:
        return f"http://{LOOPBACK}:{self.base_port - 1}"

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
        child = Child(i, f"node-{i}", *node_ports(self.base_port, i),
                      self.data_dir / f"node-{i}", self.data_dir / f"node-{i}.log")
        if self.network is not None:
            child.host = self.network.add_node(child.name, i)
        self.children.append(child)
        return child

    # -- member source for the reconciler -----------------------------------------------
    async def observe(self, members: Sequence[str]) -> list[Observed]:
        return [c.observed() for c in self.children
                if c.wanted or c.alive or c.name in members]

    def _changed(self, _old: Document | None, new: Document, _text: str) -> None:
        """A removed node that handed its ranges off (the settle dropped it) stops now."""
        for child in self.children:
            if not child.expected and child.name not in new.names and child.wanted:
                log.info("%s has left the membership: stopping it", child.name)
                child.wanted = False
                self.signal_child(child, signal.SIGTERM)

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
            self.wake.set()
            if code in NOT_WORTH_RESTARTING and child.wanted:
                # It would fail the same way again: restarting it every few seconds would
                # only make it join and leave the membership each time.
                child.wanted = False
                child.failure = (f"could not start ({describe_exit(code)}: "
                                 f"{log_tail(child.log_path, 1) or 'see its log'})")
                log.error("%s %s; not restarting it: fix that, then `ringkv node start %s`",
                          child.name, child.failure, child.name)
                return
            log.warning("%s exited (%s)%s", child.name, describe_exit(code),
                        f"; restarting in {self.restart_delay:g}s" if child.wanted else "")
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
        child.failure = ""
        child.clock_skew_ms = clock_skew_ms
        if old is not None:
            await terminate_async(old, 20)
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
                await terminate_async(child.proc, 20, signalled=True)
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.nodes.close()

    # -- what the control endpoint drives -----------------------------------------------
    def find(self, name: str) -> Child | None:
        return next((c for c in self.children if c.name == name), None)

    async def add_node(self) -> Child:
        """A new node slot, started at once; the reconciler makes it a member. Raises
        PortsTaken, adding nothing, when its ports cannot be used."""
        api, peer = node_ports(self.base_port, len(self.children))
        problem = unusable([api, peer], f"node-{len(self.children)}",
                           free=[] if self.network else None)
        if problem is not None:
            raise PortsTaken(problem)
        child = self._new_child()
        await self.spawn(child)
        self.wake.set()
        return child

    def stop_node(self, child: Child) -> None:
        """Stop the node and leave it stopped (SIGTERM, no restart), as a pod that is gone
        until someone starts it again: still a member, absent (see `Policy.down_grace`)."""
        child.wanted = False
        self.signal_child(child, signal.SIGTERM)
        self.wake.set()

    async def start_node(self, child: Child) -> None:
        """Want the node again (a member again, if it was removed) and start it if it is
        not running."""
        child.wanted = child.expected = True
        child.forced = False
        child.failure = ""
        if not child.alive:
            await self.spawn(child)
        self.wake.set()

    def remove_node(self, child: Child, force: bool) -> None:
        """Take the node out of the membership, as a StatefulSet scale-in does: a running
        node hands its ranges off and stops once the epoch that drops it settles; a
        stopped one is dropped where its ranges keep a read quorum elsewhere, or with
        `force` whatever it costs."""
        child.expected = False
        child.forced = force
        if not child.alive:
            child.wanted = False
        self.wake.set()

    async def partition(self, rules: dict[str, frozenset[str]]) -> None:
        """Replace the partition rules (receiver -> senders it drops); ``{}`` heals.
        Raises ValueError for rules that name unknown nodes, NetnsError when the rules
        could not be applied, and NoNetwork without network namespaces."""
        if self.network is None:
            raise NoNetwork("not a network-namespace cluster: start it with `ringkv up --netns`")
        async with self._net_lock:
            await asyncio.to_thread(self.network.apply, rules)
        log.info("partition: %s", describe(self.network.rules))
