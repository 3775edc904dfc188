"""Free ports on the loopback interface for local clusters, chosen below the kernel's
ephemeral range.

A port found free inside the ephemeral range could be taken by any outgoing connection (a
client polling a node that is still starting) before the node binds it, so every port
handed out here lies below that range."""

from __future__ import annotations

import random
import socket

LOOPBACK = "127.0.0.1"


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
            s.bind((LOOPBACK, port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def free_port_block(count: int, attempts: int = 500) -> int:
    """A base port P for `ringkv up --nodes count`: P-1 (its control endpoint),
    P..P+count-1 (the nodes' APIs) and P+1000..P+1000+count-1 (their peer ports) all free."""
    rng = random.Random()
    top = max(12_000, _ephemeral_low() - 1000 - count - 1)
    for _ in range(attempts):
        base = rng.randrange(10_001, top)
        if _bindable([base - 1, *range(base, base + count),
                      *range(base + 1000, base + 1000 + count)]):
            return base
    raise RuntimeError("no free block of ports found")


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free now, below the ephemeral range."""
    rng = random.Random()
    chosen: list[int] = []
    for _ in range(count * 200):
        port = rng.randrange(10_000, _ephemeral_low())
        if port not in chosen and _bindable([port]):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("no free ports found")
