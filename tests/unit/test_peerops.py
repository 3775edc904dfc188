"""The peer operations of `peerops`: each builder gives what the serving side reads.

Replica ops go through msgpack as a batch frame carries them and are served by a real
`LocalReplica`; RPCs go through msgpack and the real handler table of a `NodeService`
(this node serving itself, as `NodeService.call` does)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest

from ringkv.node import paxos, peerops
from ringkv.node.config import Settings
from ringkv.node.paxos import Proposal
from ringkv.node.peerops import Request, read_op, write_op
from ringkv.node.records import Record
from ringkv.node.replica import LocalReplica
from ringkv.node.ring import MAX_TOKEN, MIN_LO, key_token
from ringkv.node.service import NodeService
from ringkv.node.storage import MemoryStorage
from ringkv.node.transport import RemoteError
from ringkv.node.versions import HybridClock, Version


def over_the_wire(value: Any) -> Any:
    """What the receiving side decodes (frames are unpacked with raw=False)."""
    return msgpack.unpackb(msgpack.packb(value), raw=False)


def record(key: bytes, value: bytes, hlc: int, node: str = "n1", tombstone: bool = False,
           expires_ms: int = 0) -> Record:
    return Record(key, value, "text/plain", Version(hlc, node), tombstone, expires_ms)


@pytest.fixture
async def replica() -> AsyncIterator[LocalReplica]:
    clock = HybridClock()
    local = LocalReplica(MemoryStorage(), clock)
    local.trusted = True
    yield local
    local.close()


async def batch(local: LocalReplica, *ops: list[Any]) -> list[Any]:
    """Serve ops as one batch frame from a peer, and wait for the reply."""
    done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
    local.batch(over_the_wire(list(ops)),
                lambda res, exc: done.set_exception(exc) if exc else done.set_result(res))
    replies = await done
    assert not any(isinstance(r, dict) for r in replies), replies  # no op was refused
    return replies


def now(local: LocalReplica) -> int:
    return local.clock.now()


# -- replica ops ---------------------------------------------------------------------------
async def test_write_op_stores_and_a_newer_version_answers(replica: LocalReplica) -> None:
    hlc = now(replica)
    rec = record(b"k", b"v1", hlc, expires_ms=123)
    assert await batch(replica, write_op(rec, True)) == [None]
    assert replica.storage.get(b"k") == rec
    older = record(b"k", b"v0", hlc - 1, node="n2")
    # The stored version answers, whether or not the coordinator counts it as a refusal.
    assert await batch(replica, write_op(older, True), write_op(older, False)) == [
        [hlc, "n1"], [hlc, "n1"]]
    assert replica.storage.get(b"k") == rec


async def test_read_op_full_and_digest(replica: LocalReplica) -> None:
    rec = record(b"k", b"v", now(replica), tombstone=True, expires_ms=77)
    await batch(replica, write_op(rec, True))
    full, digest, missing = await batch(replica, read_op(b"k", True), read_op(b"k", False),
                                        read_op(b"absent", True))
    assert Record.from_wire(full) == rec
    assert list(digest) == [rec.version.hlc, rec.version.node, 1, 77]
    assert missing is None


async def test_local_send_serves_the_same_ops(replica: LocalReplica) -> None:
    """This node's own replica takes the same ops through `send` (hint replay, repair)."""
    rec = record(b"k", b"v", now(replica))
    assert await replica.submit(write_op(rec, False)) is None
    assert Record.from_wire(await replica.submit(read_op(b"k", True))) == rec


async def test_paxos_ops_are_named_here(replica: LocalReplica) -> None:
    ballot = Version(now(replica), "n1")
    proposal = Proposal(record(b"k", b"v", ballot.hlc), Version(0, ""))
    ops = [paxos.prepare_op(b"k", ballot), paxos.accept_op(b"k", ballot, proposal),
           paxos.commit_op(b"k", ballot, proposal)]
    assert [op[0] for op in ops] == [peerops.PREPARE, peerops.ACCEPT, peerops.COMMIT]
    assert {op[0] for op in ops} == peerops.PAXOS_OPS
    promise, accepted, committed = await batch(replica, *ops)
    assert paxos.Promise.from_wire(promise).granted
    assert accepted is None and committed is None
    assert replica.storage.get(b"k") == proposal.record


def test_the_wire_is_what_it_was() -> None:
    """Nodes of the previous release read these frames: the bytes must not change."""
    rec = record(b"k", b"v", 1 << 20)
    assert msgpack.packb(write_op(rec, True)) == msgpack.packb(
        ["w", [b"k", b"v", "text/plain", 1 << 20, "n1", False, 0], True])
    assert msgpack.packb(read_op(b"k", False)) == msgpack.packb(["r", b"k", False])
    assert (peerops.PREPARE, peerops.ACCEPT, peerops.COMMIT) == ("pp", "pa", "pc")
    assert msgpack.packb(list(peerops.scan(1, 2, (3, b"k"), 10))) == msgpack.packb(
        ["scan", [1, 2, [3, b"k"], 10]])
    assert peerops.status(fresh=True) == ("status", {"fresh": True})


# -- RPCs ----------------------------------------------------------------------------------
@pytest.fixture
async def service(tmp_path: Any) -> AsyncIterator[NodeService]:
    node = NodeService(Settings(node_name="n1", data_dir=str(tmp_path), storage="memory"))
    node.local = LocalReplica(MemoryStorage(), node.clock)
    node.local.trusted = True
    yield node
    node.local.close()


async def ask(node: NodeService, request: Request) -> Any:
    """A request as a peer's link sends it, served by this node's handler for it."""
    return await node.call(node.name, Request(request.method, over_the_wire(request.args)))


def test_every_rpc_has_its_handler(service: NodeService) -> None:
    assert set(service.internal_handlers()) == peerops.RPCS


async def test_range_pages(service: NodeService) -> None:
    recs = sorted((record(f"key{i}".encode(), b"v", 1000 + i) for i in range(5)),
                  key=lambda r: (key_token(r.key), r.key))
    await service.local.apply_repairs(recs)
    first = await ask(service, peerops.scan(MIN_LO, MAX_TOKEN, None, 2))
    assert [Record.from_wire(w) for w in first] == recs[:2]
    cursor = (key_token(recs[1].key), recs[1].key)
    rest = await ask(service, peerops.scan(MIN_LO, MAX_TOKEN, cursor, 10))
    assert [Record.from_wire(w) for w in rest] == recs[2:]
    versions = await ask(service, peerops.versions(MIN_LO, MAX_TOKEN, cursor, 10))
    assert versions == [[key_token(r.key), r.key, r.version.hlc, r.version.node] for r in recs[2:]]
    assert await ask(service, peerops.paxos_scan(MIN_LO, MAX_TOKEN, None, 10)) == []
    digest = await ask(service, peerops.digest(MIN_LO, MAX_TOKEN, 8))
    assert len(digest) == 8 and any(digest)
    fetched = await ask(service, peerops.fetch([recs[3].key, b"absent", recs[0].key]))
    assert sorted(Record.from_wire(w).key for w in fetched) == sorted([recs[0].key, recs[3].key])


def test_page_limits_are_capped() -> None:
    page = peerops.page_args(over_the_wire(peerops.scan(1, 2, (3, b"k"), 10**9).args))
    assert page == peerops.Page(1, 2, (3, b"k"), peerops.MAX_PAGE)
    assert peerops.digest_args(over_the_wire(peerops.digest(1, 2, 10**6).args)) == (
        1, 2, peerops.MAX_BUCKETS)
    assert len(peerops.fetch_args(over_the_wire([b"k"] * 6000))) == peerops.MAX_PAGE


async def test_list_keys(service: NodeService) -> None:
    recs = [record(b"a/1", b"v", 1001), record(b"a/2", b"v", 1002, tombstone=True),
            record(b"b/1", b"v", 1003)]
    await service.local.apply_repairs(recs)
    page = await ask(service, peerops.list_keys(b"a/", None, 10))
    assert page == [[b"a/1", 1001, "n1", False, 0], [b"a/2", 1002, "n1", True, 0]]
    assert await ask(service, peerops.list_keys(b"a/", b"a/1", 10)) == [page[1]]


async def test_status_stats_cleanup(service: NodeService) -> None:
    assert peerops.status_args(over_the_wire(peerops.status(fresh=True).args)) is True
    assert peerops.status_args(over_the_wire(peerops.status().args)) is False
    status = await ask(service, peerops.status(fresh=True))
    assert status["node"] == "n1" and status["records"] == 0
    assert peerops.stats_args(over_the_wire(peerops.stats(5).args)) == 5
    assert (await ask(service, peerops.stats(None)))["node"] == "n1"
    assert await ask(service, peerops.cleanup(1)) == 0  # no settled epoch here to clean up


async def test_backup_report_and_membership(service: NodeService) -> None:
    report = {"name": "b1", "started": 1.0, "finished": 2.0, "records": 3, "bytes": 4}
    assert await ask(service, peerops.backup_report(report)) is True
    assert await ask(service, peerops.backup_report(report)) is False  # not newer
    with pytest.raises(RemoteError) as refused:
        await ask(service, peerops.membership({"epoch": 0}))
    assert refused.value.code == "bad_request"
