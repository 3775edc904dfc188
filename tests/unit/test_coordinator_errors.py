"""The 503 a coordinator reports: the ring that fell short with its own counts, and a read
that could ask nobody. In process, with replicas faked behind the coordinator's `Cluster`
and `Replica` Protocols."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ringkv.node.coordinator import Coordinator, QuorumUnavailable
from ringkv.node.membership import Document, Member, View
from ringkv.node.records import Record
from ringkv.node.ring import key_token
from ringkv.node.transport import Done, PeerUnavailable
from ringkv.node.versions import HybridClock

VNODES = 16


class FakeReplica:
    """Acks every write and answers "missing" to every read, or fails everything."""

    def __init__(self, up: bool) -> None:
        self.up = up
        self.suspected = False
        self.asked = 0

    def send(self, op: list[Any], done: Done) -> None:
        self.asked += 1
        asyncio.get_running_loop().call_soon(
            done, None, None if self.up else PeerUnavailable("down"))

    def submit(self, op: list[Any]) -> asyncio.Future[Any]:
        raise AssertionError("not used by these requests")


class FakeCluster:
    """A coordinator on a node outside the key's replica set (no local replica)."""

    name = "coordinator"

    def __init__(self, doc: Document, down: set[str]) -> None:
        self.clock = HybridClock()
        self._view = View(doc, VNODES)
        self.replicas = {m.name: FakeReplica(m.name not in down) for m in doc.members}

    @property
    def view(self) -> View:
        return self._view

    def replica(self, name: str) -> FakeReplica:
        return self.replicas[name]

    @property
    def local(self) -> Any:
        raise AssertionError("the coordinator is no replica here")

    def store_hint(self, target: str, record: Record) -> None:
        pass

    def replica_failed(self, name: str, exc: BaseException) -> None:
        pass

    def repaired(self, name: str) -> None:
        pass

    async def call(self, name: str, method: str, args: Any) -> Any:
        raise AssertionError("not used by these requests")


def member(i: int, state: str = "normal") -> Member:
    return Member(f"n{i}", f"127.0.0.1:{9000 + i}", f"http://127.0.0.1:{8000 + i}", state)  # type: ignore[arg-type]


def a_key(view: View, accept: Any) -> bytes:
    """The first key whose base and target replicas satisfy `accept(base, target)`."""
    for i in range(10_000):
        key = f"k{i}".encode()
        token = key_token(key)
        if accept(set(view.base.replicas_for_token(token)), set(view.target.replicas_for_token(token))):
            return key
    raise AssertionError("no such key")


async def test_a_write_short_in_the_target_ring_reports_that_ring() -> None:
    # Epoch 2 adds n3, n4 to a settled n0..n2: writes need 2 of 3 in both rings.
    doc = Document(2, 3, (member(0), member(1), member(2), member(3, "joining"), member(4, "joining")),
                   settled=False, base=("n0", "n1", "n2"))
    view = View(doc, VNODES)
    key = a_key(view, lambda base, target: len(target - base) == 2)
    target = set(view.target.replicas_for_token(key_token(key)))
    cluster = FakeCluster(doc, down=target - {"n0", "n1", "n2"})  # the two new replicas
    with pytest.raises(QuorumUnavailable) as failed:
        await Coordinator(cluster, wait_timeout=5).write(key, b"v", "text/plain", "quorum")
    # Every base replica acked (3 of 2 needed there); the target ring got 1 of its 2.
    assert (failed.value.acked, failed.value.needed, failed.value.ring) == (1, 2, "target")
    assert str(failed.value).startswith("only 1 of the 2 replicas needed in the target ring "
                                        "answered the write")


async def test_a_write_short_in_a_settled_ring_names_no_ring() -> None:
    doc = Document(1, 3, (member(0), member(1), member(2)))
    cluster = FakeCluster(doc, down={"n1", "n2"})
    with pytest.raises(QuorumUnavailable) as failed:
        await Coordinator(cluster, wait_timeout=5).write(b"k", b"v", "text/plain", "quorum")
    assert (failed.value.acked, failed.value.needed, failed.value.ring) == (1, 2, None)
    assert "ring" not in str(failed.value)


async def test_a_read_with_every_candidate_joining_says_nobody_was_asked() -> None:
    # n3 and n4 came back (joining: they may have lost their data), still in the base ring.
    doc = Document(3, 3, (member(0), member(1), member(2), member(3, "joining"), member(4, "joining")),
                   settled=False, base=("n0", "n1", "n2", "n3", "n4"))
    view = View(doc, VNODES)
    key = a_key(view, lambda base, target: {"n3", "n4"} <= base)
    cluster = FakeCluster(doc, down=set())
    with pytest.raises(QuorumUnavailable) as failed:
        await Coordinator(cluster, wait_timeout=5).read(key, "quorum")
    assert (failed.value.acked, failed.value.needed) == (0, 2)
    message = str(failed.value)
    assert message.startswith("no replica was asked: the read needs 2 of the key's replicas and "
                              "only 1 of 3 may serve reads"), message
    assert "n3 joining" in message and "n4 joining" in message
    assert sum(r.asked for r in cluster.replicas.values()) == 0
