"""The peer transport in process, over real sockets on 127.0.0.1: a peer that connects to
us is up, so our link to it stops suspecting it at once (a restarted node gets its hints
the moment it is back, not when the backoff that grew while it was away runs out)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ringkv.local.ports import free_ports
from ringkv.node import transport
from ringkv.node.transport import SUSPECT_AFTER, InternalServer, PeerLink, PeerUnavailable

TOKEN = "t" * 32
DEADLINE = 10.0  # seconds for what should happen at once, on a busy machine


def link(to: str, port: int, local_name: str) -> PeerLink:
    return PeerLink(to, f"127.0.0.1:{port}", TOKEN, local_name, lambda: 0, lambda doc: None,
                    timeout=DEADLINE)


async def echo(args: Any) -> Any:
    return args


class Node:
    """One side of the peer protocol: its server (recording who said hello) and its links."""

    def __init__(self, name: str, port: int) -> None:
        self.name, self.port = name, port
        self.greeted: list[str] = []
        self.links: dict[str, PeerLink] = {}
        self.server = InternalServer(name, TOKEN, lambda ops, reply: reply([None] * len(ops), None),
                                     {"echo": echo}, epoch=lambda: 0, document=lambda: None,
                                     on_peer=self.greeted.append)

    async def start(self) -> None:
        await self.server.start("127.0.0.1", self.port)

    def link_to(self, other: Node) -> PeerLink:
        return self.links.setdefault(other.name, link(other.name, other.port, self.name))


@pytest.fixture
async def nodes() -> AsyncIterator[tuple[Node, Node]]:
    a_port, b_port = free_ports(2)
    a, b = Node("a", a_port), Node("b", b_port)
    yield a, b
    for n in (a, b):
        for ln in n.links.values():
            ln.close()
        await n.server.stop()


async def suspect(ln: PeerLink) -> None:
    """Fail calls to a peer that is not listening until the link suspects it."""
    while not ln.suspected:
        with pytest.raises(PeerUnavailable):
            await asyncio.wait_for(ln.call("echo", 1), DEADLINE)
    assert ln.failures >= SUSPECT_AFTER


async def suspect_for_an_hour(ln: PeerLink, monkeypatch: pytest.MonkeyPatch) -> None:
    """Suspect the peer with a backoff no test outlives: a link that has failed many times
    in a row (as one does while its peer is away for minutes) fails once more."""
    monkeypatch.setattr(transport, "MAX_BACKOFF", 3600.0)
    await suspect(ln)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while ln.suspected:  # the first backoff is 0.1 s: let it pass, then fail again
        assert loop.time() < deadline, "the first backoff never ended"
        await asyncio.sleep(0.01)
    ln.failures = SUSPECT_AFTER + 20
    with pytest.raises(PeerUnavailable):
        await asyncio.wait_for(ln.call("echo", 1), DEADLINE)
    assert ln.suspected


async def test_an_accepted_hello_names_the_peer(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    await a.start()
    assert await asyncio.wait_for(b.link_to(a).call("echo", [1, "x"]), DEADLINE) == [1, "x"]
    assert a.greeted == ["b"]


async def test_a_bad_token_is_not_a_peer(nodes: tuple[Node, Node]) -> None:
    a, _ = nodes
    await a.start()
    stranger = PeerLink("a", f"127.0.0.1:{a.port}", "wrong" * 8, "mallory", lambda: 0,
                        lambda doc: None, timeout=DEADLINE)
    try:
        with pytest.raises(PeerUnavailable):
            await asyncio.wait_for(stranger.call("echo", 1), DEADLINE)
    finally:
        stranger.close()
    assert a.greeted == []


async def test_a_suspected_peer_that_connects_to_us_is_trusted_again_at_once(
        nodes: tuple[Node, Node], monkeypatch: pytest.MonkeyPatch) -> None:
    """b is down: a's link to it fails until it suspects b for a long backoff (calls fail
    fast meanwhile). b starts and connects to a; a revives its link, as NodeService does on
    `on_peer`, and the very next call reaches b, with no wait for the backoff."""
    a, b = nodes
    await a.start()
    to_b = a.link_to(b)
    await suspect_for_an_hour(to_b, monkeypatch)
    await b.start()
    b.link_to(a).connect()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while "b" not in a.greeted:
        assert loop.time() < deadline, "b's hello never reached a"
        await asyncio.sleep(0.01)
    assert to_b.suspected
    to_b.revive()
    assert not to_b.suspected
    assert await asyncio.wait_for(to_b.call("echo", "back"), DEADLINE) == "back"


async def test_connect_says_hello_without_a_request(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    await a.start()
    b.link_to(a).connect()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while a.greeted != ["b"]:
        assert loop.time() < deadline, "connect() sent no hello"
        await asyncio.sleep(0.01)
