"""Fake replicas behind the coordinator's `Cluster` Protocol, for fast in-process tests.

Each `FakeReplica` keeps its records in a `MemoryStorage` and answers the replica ops as
`LocalReplica` does (a client write not newer than the stored version is refused with that
version; repairs merge), or fails as a peer link fails (a refused connection, a timeout, a
full disk, a per-op refusal, a newer epoch), or stays silent, or answers late.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ringkv.node.membership import Document, Member, MemberState, View
from ringkv.node.peerops import READ, WRITE, Request, read_op, write_op
from ringkv.node.records import Record
from ringkv.node.ring import key_token
from ringkv.node.storage import MemoryStorage
from ringkv.node.transport import Done, PeerTimeout, PeerUnavailable, RemoteError, StaleEpoch
from ringkv.node.versions import HybridClock, Version

VNODES = 16


class FakeReplica:
    """One replica of the key: how it answers is `behaviour`, what it stores is real."""

    def __init__(self, name: str, cluster: FakeCluster) -> None:
        self.name = name
        self.cluster = cluster
        self.storage = MemoryStorage()
        self.suspected = False
        # "ok"; "down" (PeerUnavailable), "timeout" (PeerTimeout), "full" (its disk is
        # full), "drift" (the version is too far ahead of its clock), "stale" (it has a
        # newer epoch, which the link adopts before the op fails), "silent" (never
        # answers), "late" (answers when `release()` is called), "outpaced" (another
        # writer's newer version lands just before each write)
        self.behaviour = "ok"
        self.ops: list[list[Any]] = []  # every op it was sent, in order
        self._late: list[Callable[[], None]] = []

    # -- the Replica Protocol (a peer link) -------------------------------------------
    def send(self, op: list[Any], done: Done) -> None:
        self.ops.append(op)
        failure = {"down": PeerUnavailable(f"{self.name}: connection refused"),
                   "timeout": PeerTimeout(f"{self.name}: no answer"),
                   "full": RemoteError("insufficient_storage", "the disk is full"),
                   "drift": RemoteError("clock_drift", "the version is too far ahead"),
                   "stale": StaleEpoch({})}.get(self.behaviour)
        if self.behaviour == "stale":
            self.cluster.adopt_newer()
        if self.behaviour == "outpaced" and op[0] == WRITE:
            put(self, op[1][0], b"theirs", op[1][3] + 1)
        if failure is not None:
            asyncio.get_running_loop().call_soon(done, None, failure)
        elif self.behaviour == "late":
            self._late.append(lambda: done(self._serve(op), None))
        elif self.behaviour != "silent":
            asyncio.get_running_loop().call_soon(done, self._serve(op), None)

    def submit(self, op: list[Any]) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.send(op, lambda res, exc: fut.set_exception(exc) if exc else fut.set_result(res))
        return fut

    def _serve(self, op: list[Any]) -> Any:
        kind, arg, flag = op
        if kind == WRITE:
            (newer,) = self.storage.apply([Record.from_wire(arg)])
            return None if newer is None or not flag else [newer.hlc, newer.node]
        if flag:  # a full read
            rec = self.storage.get(arg)
            return None if rec is None else list(rec.to_wire())
        digest = self.storage.get_version(arg)
        return None if digest is None else list(digest)

    def release(self) -> None:
        """Answer every op held back by "late"."""
        late, self._late = self._late, []
        for answer in late:
            answer()

    # -- the LocalStore Protocol (when the coordinator is this replica) ----------------
    def write(self, rec: Record, done: Done) -> None:
        self.send(write_op(rec, True), done)

    def read_record(self, key: bytes) -> Record | None:
        self.ops.append(read_op(key, True))
        return self.storage.get(key)

    # -- what the tests look at --------------------------------------------------------
    def writes(self) -> list[list[Any]]:
        return [op for op in self.ops if op[0] == WRITE]

    def reads(self) -> list[list[Any]]:
        return [op for op in self.ops if op[0] == READ]

    def holds(self, key: bytes) -> Record | None:
        return self.storage.get(key)


class FakeCluster:
    """The coordinator's node: `name` is a replica of the key or not, as the test wants."""

    def __init__(self, doc: Document, name: str = "coordinator", skew_ms: int = 0) -> None:
        self.name = name
        self.clock = HybridClock(skew_ms)
        self.view = View(doc, VNODES)
        self.replicas = {m.name: FakeReplica(m.name, self) for m in doc.members}
        self.newer: Document | None = None  # what a "stale" replica makes this node adopt
        self.hints: list[tuple[str, Record]] = []
        self.failed: list[tuple[str, BaseException]] = []
        self.repairs: list[str] = []

    def replica(self, name: str) -> FakeReplica:
        return self.replicas[name]

    @property
    def local(self) -> FakeReplica:
        return self.replicas[self.name]

    def store_hint(self, target: str, record: Record) -> None:
        self.hints.append((target, record))

    def replica_failed(self, name: str, exc: BaseException) -> None:
        self.failed.append((name, exc))

    def repaired(self, name: str) -> None:
        self.repairs.append(name)

    async def call(self, name: str, request: Request) -> Any:
        raise AssertionError(f"not used by these requests: {request.method}")

    def adopt_newer(self) -> None:
        if self.newer is not None:
            self.view = View(self.newer, VNODES)

    def replicas_of(self, key: bytes) -> list[FakeReplica]:
        return [self.replicas[n] for n in self.view.target.replicas_for_token(key_token(key))]


def member(i: int, state: MemberState = "normal") -> Member:
    return Member(f"n{i}", f"127.0.0.1:{9000 + i}", f"http://127.0.0.1:{8000 + i}", state)


def settled(n: int = 3, rf: int = 3) -> Document:
    return Document(1, rf, tuple(member(i) for i in range(n)))


def put(replica: FakeReplica, key: bytes, value: bytes, hlc: int, node: str = "elsewhere") -> Record:
    """A record a replica holds from an earlier write (another coordinator's)."""
    rec = Record(key, value, "text/plain", Version(hlc, node))
    replica.storage.apply([rec])
    return rec


def put_all(replicas: list[FakeReplica], key: bytes, value: bytes, hlc: int) -> Record:
    """The same record on every replica: a key written before, fully replicated."""
    return [put(r, key, value, hlc) for r in replicas][-1]


def a_key(view: View, accept: Callable[[set[str], set[str]], bool]) -> bytes:
    """The first key whose base and target replicas satisfy `accept(base, target)`."""
    for i in range(10_000):
        key = f"k{i}".encode()
        token = key_token(key)
        if accept(set(view.base.replicas_for_token(token)), set(view.target.replicas_for_token(token))):
            return key
    raise AssertionError("no such key")
