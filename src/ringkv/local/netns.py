"""Network namespaces for `ringkv up --netns`: one namespace per node, so a partition
between nodes is a firewall rule and not a killed process.

Layout of one cluster (owner = the launcher's pid, so names never collide between runs
and a crashed run's leftovers can be recognised):

    root namespace:  bridge  rk<pid>b  with the host address 10.213.<x>.1/24
    node i:          netns   rk<pid>n<i>, veth rk<pid>v<i> (bridge side) <-> eth0 (inside)
                     with the address 10.213.<x>.<i+2>/24

The host (the launcher's reconciler, tests, `ringkv check`) reaches every node over the
bridge. Partitions are DROP rules in the INPUT chain of the receiving node's namespace,
matching only other nodes' addresses, so host <-> node traffic keeps flowing (Jepsen's
control node). The pure helpers (names, addresses, rule sets, commands) are testable
without root; :class:`Network` is the thin adapter that runs `ip` and `iptables`.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import system_tools

PREFIX = "rk"
IFNAMSIZ = 16  # the kernel's limit on interface names, the terminating NUL included
SUBNET = ipaddress.ip_network("10.213.0.0/16")
MAX_NODES = 252  # .2 .. .253 in a /24
LOCK_FILE = Path("/run/lock/ringkv-netns.lock")
_NAME = re.compile(rf"^{PREFIX}(\d+)([bnv])(\d*)$")

Rules = dict[str, frozenset[str]]  # node name -> names of the nodes whose packets it drops


class NetnsError(RuntimeError):
    """Namespaces cannot be used here, or an `ip`/`iptables` command failed."""


# ------------------------------------------------------------------------ pure helpers


def bridge_name(owner: int) -> str:
    return f"{PREFIX}{owner}b"


def netns_name(owner: int, index: int) -> str:
    return f"{PREFIX}{owner}n{index}"


def veth_name(owner: int, index: int) -> str:
    """The bridge-side end; at most 2+7+1+3 = 13 characters (below IFNAMSIZ)."""
    return f"{PREFIX}{owner}v{index}"


def owner_of(name: str) -> int | None:
    """The launcher pid encoded in one of our bridge/netns/veth names, else None."""
    m = _NAME.match(name)
    return int(m.group(1)) if m else None


def host_address(third: int) -> str:
    return str(SUBNET.network_address + (third << 8) + 1)


def node_address(third: int, index: int) -> str:
    if not 0 <= index < MAX_NODES:
        raise NetnsError(f"a --netns cluster holds at most {MAX_NODES} nodes")
    return str(SUBNET.network_address + (third << 8) + index + 2)


def used_subnets(ip_addr_output: str) -> set[int]:
    """Third octets of the 10.213.x.0/24 networks any interface already has an address in
    (the output of `ip -o -4 addr show`)."""
    used: set[int] = set()
    for m in re.finditer(r"\binet (\d+\.\d+\.\d+\.\d+)/(\d+)", ip_addr_output):
        net = ipaddress.ip_network(f"{m.group(1)}/{m.group(2)}", strict=False)
        if net.overlaps(SUBNET):
            if net.prefixlen <= 16:
                return set(range(256))
            used.update(range((int(net.network_address) >> 8) & 0xFF,
                              ((int(net.broadcast_address) >> 8) & 0xFF) + 1))
    return used


def pick_subnet(used: Iterable[int], owner: int) -> int:
    """A free third octet in 1..254, starting from one derived from the owner pid so two
    launchers rarely even look at the same one."""
    taken = set(used)
    for step in range(254):
        third = 1 + (owner + step) % 254
        if third not in taken:
            return third
    raise NetnsError(f"every /24 of {SUBNET} is in use")


def partition_rules(groups: Sequence[Sequence[str]]) -> Rules:
    """Nodes in different groups cannot talk (both directions); nodes in no group keep
    every link (a bridge between the sides, as in Jepsen)."""
    seen: set[str] = set()
    for group in groups:
        overlap = seen & set(group)
        if overlap:
            raise ValueError(f"{sorted(overlap)[0]} is in two groups")
        seen |= set(group)
    rules: dict[str, set[str]] = {}
    for i, group in enumerate(groups):
        others = {n for j, g in enumerate(groups) if j != i for n in g}
        for node in group:
            if others:
                rules.setdefault(node, set()).update(others)
    return {node: frozenset(srcs) for node, srcs in rules.items()}


def isolate_rules(node: str, everyone: Iterable[str]) -> Rules:
    """One node cut off from every other node."""
    rest = [n for n in everyone if n != node]
    return partition_rules([[node], rest])


def one_way_rules(source: str, destination: str) -> Rules:
    """Packets from ``source`` to ``destination`` are dropped; the other way still works
    (at the IP level: a TCP connection needs both, so neither side can open one)."""
    if source == destination:
        raise ValueError("a one-way link needs two different nodes")
    return {destination: frozenset({source})}


def describe(rules: Mapping[str, Iterable[str]]) -> str:
    """`b<-a,c; c<-b` style: who drops whose packets."""
    return "; ".join(f"{dst}<-{','.join(sorted(srcs))}" for dst, srcs in sorted(rules.items())) or "none"


def iptables_commands(drop_from: Iterable[str]) -> list[list[str]]:
    """The iptables invocations (run inside the receiving namespace) that drop packets
    from these source addresses: a flush first, so a new partition replaces the old."""
    return [["iptables", "-w", "-F", "INPUT"],
            *(["iptables", "-w", "-A", "INPUT", "-s", addr, "-j", "DROP"] for addr in sorted(drop_from))]


def unusable_reason() -> str | None:
    """Why namespace clusters cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, or without --netns)"
    missing = [tool for tool in ("ip", "iptables") if system_tools.find(tool) is None]
    if missing:
        return (f"network namespaces need {' and '.join(missing)} (not on PATH or in "
                f"{', '.join(system_tools.SBIN_DIRS)}; Debian: apt-get install iproute2 iptables)")
    return None


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (a killed launcher not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


# ----------------------------------------------------------------------------- adapter


def _run(*cmd: str, check: bool = True) -> str:
    done = subprocess.run(system_tools.resolve(list(cmd)), capture_output=True, text=True,
                          check=False, timeout=30)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done.stdout


def cleanup_stale() -> list[str]:
    """Remove the namespaces, veths and bridges of launchers that are no longer running
    (a crash or SIGKILL skipped their teardown), killing node processes left inside those
    namespaces. Returns what was removed."""
    removed: list[str] = []
    for line in _run("ip", "netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        owner = owner_of(name)
        if owner is None or pid_alive(owner):
            continue
        for pid in _run("ip", "netns", "pids", name, check=False).split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        _run("ip", "netns", "delete", name, check=False)
        removed.append(name)
    for line in _run("ip", "-o", "link", "show", check=False).splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        owner = owner_of(name)
        if owner is not None and not pid_alive(owner):
            _run("ip", "link", "delete", name, check=False)
            removed.append(name)
    return removed


@dataclass
class Network:
    """One cluster's bridge and per-node namespaces; ``owner`` is the launcher's pid."""

    owner: int = field(default_factory=os.getpid)
    third: int = 0  # the x of 10.213.x.0/24, chosen by create()
    nodes: dict[str, int] = field(default_factory=dict)  # node name -> index
    rules: Rules = field(default_factory=dict)

    @property
    def host(self) -> str:
        return host_address(self.third)

    def address(self, name: str) -> str:
        return node_address(self.third, self.nodes[name])

    def create(self) -> None:
        """The bridge and its host address, after removing stale clusters. A lock file
        serialises the subnet choice between launchers starting at the same time."""
        reason = unusable_reason()
        if reason:
            raise NetnsError(reason)
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        with open(LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            cleanup_stale()
            self.third = pick_subnet(used_subnets(_run("ip", "-o", "-4", "addr", "show")), self.owner)
            bridge = bridge_name(self.owner)
            _run("ip", "link", "add", bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.host}/24", "dev", bridge)
            _run("ip", "link", "set", bridge, "up")

    def add_node(self, name: str, index: int) -> str:
        """A namespace for node ``index`` with a veth into the bridge; returns its address."""
        ns, veth = netns_name(self.owner, index), veth_name(self.owner, index)
        self.nodes[name] = index
        address = node_address(self.third, index)
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run("ip", "link", "set", veth, "master", bridge_name(self.owner), "up")
        _run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        return address

    def command(self, name: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the node's namespace (`ip netns exec` execs it: same pid).
        Both programs by full path: `ip netns exec` looks its command up on PATH too."""
        return system_tools.resolve(["ip", "netns", "exec", netns_name(self.owner, self.nodes[name]),
                                     *system_tools.resolve(list(argv))])

    def apply(self, rules: Rules) -> None:
        """Make ``rules`` the partition (heal is the empty rule set)."""
        unknown = {n for dst, srcs in rules.items() for n in (dst, *srcs)} - set(self.nodes)
        if unknown:
            raise ValueError(f"no node {sorted(unknown)[0]}")
        for name in sorted(self.nodes):  # every node: a half-applied earlier call is undone too
            sources = [self.address(src) for src in rules.get(name, frozenset())]
            for cmd in iptables_commands(sources):
                _run(*self.command(name, cmd))
        self.rules = {dst: srcs for dst, srcs in rules.items() if srcs}

    def teardown(self) -> None:
        """Delete every namespace, veth and the bridge; errors are ignored (best effort,
        and cleanup_stale catches whatever survives)."""
        for index in sorted(self.nodes.values()):
            _run("ip", "link", "delete", veth_name(self.owner, index), check=False)
            _run("ip", "netns", "delete", netns_name(self.owner, index), check=False)
        _run("ip", "link", "delete", bridge_name(self.owner), check=False)
        self.nodes.clear()
        self.rules = {}
