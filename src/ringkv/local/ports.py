"""The ports of a local cluster: checking a `ringkv up --base-port` block, and picking
free ones below the kernel's ephemeral range.

A port inside the ephemeral range can be taken by any outgoing connection (a client
polling a node that is still starting) before, or while, the node that owns it binds it:
a node that cannot bind its port cannot start. So no port of a local cluster lies there.

`ringkv up --base-port P --nodes N` uses P-1 (its control endpoint), P..P+N-1 (the nodes'
APIs) and P+1000..P+1000+N-1 (their peer ports); a node added later takes the next pair.
"""

from __future__ import annotations

import random
import socket

LOOPBACK = "127.0.0.1"
EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
PEER_OFFSET = 1000


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands to outgoing connections (32768-60999 by default)."""
    try:
        with open(EPHEMERAL_RANGE_FILE, encoding="ascii") as fh:
            low, high = (int(n) for n in fh.read().split())
            return low, high
    except (OSError, ValueError):
        return 32768, 60999


def node_ports(base: int, index: int) -> tuple[int, int]:
    """Node `index`'s API and peer port in the block at `base`."""
    return base + index, base + PEER_OFFSET + index


def block(base: int, nodes: int) -> list[int]:
    """Every port of `ringkv up --base-port base --nodes nodes`, the control port first."""
    return [base - 1, *(p for i in range(nodes) for p in node_ports(base, i))]


def unusable(ports: list[int], what: str, free: list[int] | None = None,
             ephemeral: tuple[int, int] | None = None) -> str | None:
    """Why `ports` cannot serve a local cluster (named `what` in the answer), or None:
    out of 1-65535, inside the kernel's ephemeral range, or in use on the loopback address
    (those of `free`, default all: a node in a network namespace binds another address)."""
    low, high = ephemeral or ephemeral_range()
    if min(ports) < 1 or max(ports) > 65535:
        return f"{what} needs ports {min(ports)}-{max(ports)}, outside 1-65535"
    inside = [p for p in ports if low <= p <= high]
    if inside:
        return (f"{what} needs ports {min(inside)}-{max(inside)}, inside the kernel's "
                f"ephemeral range {low}-{high} ({EPHEMERAL_RANGE_FILE}), where any outgoing "
                "connection can take them")
    taken = [p for p in (ports if free is None else free) if not _bindable([p])]
    if taken:
        return f"{what} needs port(s) {', '.join(map(str, taken[:5]))}, in use on {LOOPBACK}"
    return None


def _bindable(ports: list[int]) -> bool:
    socks = []
    try:
        for port in ports:
            s = socket.socket()
            socks.append(s)
            s.bind((LOOPBACK, port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def free_port_block(count: int, attempts: int = 500) -> int:
    """A base port P whose block for `ringkv up --nodes count` (see `block`) is free and
    below the ephemeral range."""
    rng = random.Random()
    top = max(12_000, ephemeral_range()[0] - PEER_OFFSET - count - 1)
    for _ in range(attempts):
        base = rng.randrange(10_001, top)
        if _bindable(block(base, count)):
            return base
    raise RuntimeError("no free block of ports found")


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free now, below the ephemeral range."""
    rng = random.Random()
    chosen: list[int] = []
    for _ in range(count * 200):
        port = rng.randrange(10_000, ephemeral_range()[0])
        if port not in chosen and _bindable([port]):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("no free ports found")
