"""The coordinator: serves one client request by talking to the key's replicas.

Writes fan out to every replica of the key in the base and the target ring and succeed
when W replicas ack in each (rule 3). A replica refuses a client write whose version is
not newer than the one it stores and answers with that version; the coordinator moves its
clock past it and writes again, once: a refusal of the second attempt comes from a
concurrent write, which may follow this one (rule 2, see `Coordinator.write`). Reads ask one replica
for the value and the others for the version only (digest reads), wait for R answers from
base-ring replicas that are not joining, return the newest, and repair every replica seen
holding an older version (read repair). A replica that misses a write gets a hint.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from . import peerops
from .membership import View, needed
from .peerops import Request, read_op, write_op
from .records import Record, expiry
from .ring import key_token
from .storage import KeyInfo, StorageFull
from .transport import (
    Deadlines,
    Done,
    PeerError,
    PeerTimeout,
    PeerUnavailable,
    RemoteError,
    StaleEpoch,
)
from .versions import HybridClock, Version

log = logging.getLogger("ringkv.coordinator")

# Attempts of one write: two suffice (see Coordinator.write); a stale epoch starts over.
MAX_ATTEMPTS = 4


class CoordinatorError(Exception):
    pass


class QuorumUnavailable(CoordinatorError):
    """Fewer replicas answered than the consistency level needs: `acked` of `needed`.

    While an epoch is unsettled a write needs its quorum in the base ring and in the target
    ring; `ring` then names the one that fell short, and the counts are that ring's own."""

    def __init__(self, acked: int, needed: int, what: str, ring: str | None = None,
                 message: str = "") -> None:
        where = f" in the {ring} ring" if ring else ""
        super().__init__(
            (message or f"only {acked} of the {needed} replicas needed{where} answered the {what}")
            + ("; the write may have reached some replicas" if what == "write" else "")
        )
        self.acked = acked
        self.needed = needed
        self.ring = ring

    @classmethod
    def nobody_to_ask(cls, view: View, replicas: tuple[str, ...], voters: list[str],
                      needed: int) -> QuorumUnavailable:
        """A read that asked no replica at all: fewer of the key's replicas may serve reads
        than it needs (the others are joining, and may not hold the data yet, or gone)."""
        left_out = ", ".join(f"{name} {m.state if (m := view.by_name.get(name)) else 'removed'}"
                             for name in replicas if name not in voters)
        return cls(0, needed, "read", message=(
            f"no replica was asked: the read needs {needed} of the key's replicas and only "
            f"{len(voters)} of {len(replicas)} may serve reads ({left_out})"))


class ConflictRetryExhausted(CoordinatorError):
    pass


class InsufficientStorage(CoordinatorError):
    pass


class PreconditionFailed(CoordinatorError):
    pass


class Replica(Protocol):
    @property
    def suspected(self) -> bool: ...

    def send(self, op: list[Any], done: Done) -> None: ...

    def submit(self, op: list[Any]) -> asyncio.Future[Any]: ...


class LocalStore(Protocol):
    def write(self, rec: Record, done: Done) -> None: ...

    def read_record(self, key: bytes) -> Record | None: ...


class Cluster(Protocol):
    """What the coordinator needs of its node."""

    name: str
    clock: HybridClock

    @property
    def view(self) -> View: ...

    def replica(self, name: str) -> Replica: ...

    @property
    def local(self) -> LocalStore: ...

    def store_hint(self, target: str, record: Record) -> None: ...

    def replica_failed(self, name: str, exc: BaseException) -> None: ...

    def repaired(self, name: str) -> None: ...

    async def call(self, name: str, request: Request) -> Any: ...


@dataclass
class _Tally:
    """Counts write acks per ring until the outcome is decided."""

    base: frozenset[str]
    target: frozenset[str]
    need_base: int
    need_target: int
    superseded_counts: bool = False  # a refusal counts as an ack (see Coordinator.write)
    acked: set[str] = field(default_factory=set)
    answered: set[str] = field(default_factory=set)
    refused: dict[str, Version] = field(default_factory=dict)
    full: bool = False
    stale: bool = False

    def _enough(self, names: set[str]) -> bool:
        return (len(names & self.base) >= self.need_base
                and len(names & self.target) >= self.need_target)

    def ok(self) -> bool:
        if self.superseded_counts:
            return self._enough(self.acked | self.refused.keys())
        return self._enough(self.acked)

    def answered_quorum(self) -> bool:
        """Acks and refusals together cover a quorum of each ring."""
        return self._enough(self.acked | self.refused.keys())

    def shortfall(self) -> QuorumUnavailable:
        """The 503 of a write that missed its quorum, with the counts of the ring that fell
        short (the base ring when both did); no ring is named when the key's replicas are
        the same in both."""
        rings = [("base", self.base, self.need_base), ("target", self.target, self.need_target)]
        for ring, names, need in rings:
            acked = len(self.acked & names)
            if acked < need:
                return QuorumUnavailable(acked, need, "write",
                                         ring if self.base != self.target else None)
        raise AssertionError("shortfall() of a write that reached its quorum")


class Coordinator:
    def __init__(self, cluster: Cluster, wait_timeout: float, speculative_delay: float = 0.05) -> None:
        self.cluster = cluster
        self.wait_timeout = wait_timeout
        self.speculative_delay = speculative_delay
        self._timeouts = Deadlines(wait_timeout)
        # A read has one deadline entry at a time: the speculative delay, then the rest of
        # its timeout (see _Read.speculate).
        self._speculations = Deadlines(speculative_delay)
        self._read_timeouts = Deadlines(max(wait_timeout - speculative_delay, 0.001))
        self._voters_view: View | None = None
        self._voters_of: dict[tuple[str, ...], list[str]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def _future(self) -> asyncio.Future[None]:
        """A future on the running loop, which is kept: `asyncio.get_running_loop()` costs a
        getpid() system call per call on Python 3.11."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop.create_future()

    # -- writes -------------------------------------------------------------------------
    async def write(self, key: bytes, value: bytes, content_type: str, level: str,
                    ttl: int | None = None, tombstone: bool = False) -> Record:
        """Write a new version; returns the record as acknowledged.

        Rule 2 in at most two attempts (ARCHITECTURE.md has the argument): the first one's
        answers, once they cover a quorum of each ring, include every write acknowledged
        before this one began, so a version above every refusal is newer than all of them;
        a replica that refuses the second attempt holds a write that was concurrent with
        this one, which this one may precede, and counts as an ack."""
        clock = self.cluster.clock
        bounded = False  # an earlier attempt's answers bound every write acknowledged before
        for _attempt in range(MAX_ATTEMPTS):
            tally = self._tally(key, level, superseded_counts=bounded)
            rec = Record(key, value, content_type, Version(clock.now(), self.cluster.name),
                         tombstone, expiry(clock.physical_ms(), ttl))
            await self._fan_out(rec, tally)
            if tally.ok():
                return rec
            if tally.stale:
                bounded = False  # the newer membership is adopted: start over in its rings
                continue
            if tally.refused and tally.answered_quorum():
                clock.observe(max(tally.refused.values()).hlc)
                bounded = True
                continue
            if tally.full:
                raise InsufficientStorage("a replica's disk is full")
            break
        raise tally.shortfall()

    async def merge(self, rec: Record, level: str = "quorum") -> None:
        """Store a record with the version it has (a restore): each replica keeps the newer
        of what it holds and this, and refuses nothing, so merging twice is merging once and
        a newer write always stays. Done once W replicas of each ring hold this version or a
        newer one."""
        for _attempt in range(MAX_ATTEMPTS):
            tally = self._tally(rec.key, level)
            await self._fan_out(rec, tally, refuse=False)
            if tally.ok():
                return
            if not tally.stale:  # else the newer membership is adopted: again in its rings
                break
        if tally.full:
            raise InsufficientStorage("a replica's disk is full")
        raise tally.shortfall()

    def _tally(self, key: bytes, level: str, superseded_counts: bool = False) -> _Tally:
        """The acks a write of `key` needs: W replicas in the target ring and, while the
        epoch is unsettled, W in the base ring too (rule 3)."""
        view = self.cluster.view
        token = key_token(key)
        target = view.target.replicas_for_token(token)
        base = view.base.replicas_for_token(token) if view.transitioning else target
        return _Tally(frozenset(base), frozenset(target), needed(level, len(base)),
                      needed(level, len(target)), superseded_counts=superseded_counts)

    async def _fan_out(self, rec: Record, tally: _Tally, refuse: bool = True) -> None:
        """Send the record to every replica in the tally. With `refuse`, a replica holding a
        newer version refuses (rule 2); without, that replica counts as an ack."""
        decided = self._future()
        op = write_op(rec, refuse)
        members = self.cluster.view.by_name

        def on_done(name: str, res: Any, exc: BaseException | None) -> None:
            tally.answered.add(name)
            if exc is None:
                if res is None or not refuse:
                    tally.acked.add(name)
                else:
                    tally.refused[name] = Version(res[0], res[1])
            else:
                self.cluster.replica_failed(name, exc)
                full = isinstance(exc, StorageFull) or (
                    isinstance(exc, RemoteError) and exc.code == "insufficient_storage")
                tally.full = tally.full or full
                if isinstance(exc, StaleEpoch):
                    tally.stale = True
                elif name in members and (full or isinstance(exc, PeerUnavailable | PeerTimeout)):
                    self.cluster.store_hint(name, rec)  # it missed the write; it may come back
            # A failed write waits for every answer (each bounded by the replica timeout)
            # so that the 503 reports the true ack count and every refusal is seen.
            if not decided.done() and (tally.ok() or tally.answered >= tally.base | tally.target):
                decided.set_result(None)

        me = self.cluster.name
        for name in tally.base | tally.target:
            if name == me:  # the record as it is, not its wire form decoded again
                self.cluster.local.write(rec, partial(on_done, name))
            else:
                self.cluster.replica(name).send(op, partial(on_done, name))
        await self._decided_within(decided)

    async def _decided_within(self, decided: asyncio.Future[None]) -> None:
        """Await a decision or time out; no task and no timer of its own (see Deadlines)."""
        if decided.done():
            return decided.result()
        def expire() -> None:
            if not decided.done():
                decided.set_exception(TimeoutError())

        entry = self._timeouts.add(expire)
        try:
            await decided
        finally:
            self._timeouts.cancel(entry)

    # -- reads --------------------------------------------------------------------------
    async def read(self, key: bytes, level: str) -> Record | None:
        """The newest version among R replicas (tombstones and expired records included)."""
        for _attempt in range(2):
            try:
                return await self._read_once(key, level)
            except StaleEpoch:
                continue
        return await self._read_once(key, level)

    async def _read_once(self, key: bytes, level: str) -> Record | None:
        view = self.cluster.view
        reps = view.base.replicas_for_token(key_token(key))
        need = needed(level, len(reps))
        voters = self.read_voters(view, reps)
        if len(voters) < need:
            raise QuorumUnavailable.nobody_to_ask(view, reps, voters, need)
        read = _Read(self, key, need, voters, self._future())
        read.ask(need)
        if not read.decided.done():
            read.deadline = self._speculations.add(read.speculate)
            try:
                await read.decided
            finally:
                (self._read_timeouts if read.speculated else self._speculations).cancel(
                    read.deadline)
        answers, failed = read.answers, read.failed
        if len(answers) < need:
            if any(isinstance(e, StaleEpoch) for e in failed):
                raise StaleEpoch({})
            raise QuorumUnavailable(len(answers), need, "read")
        newest = None
        for version, _ in answers.values():
            if version is not None and (newest is None or version > newest):
                newest = version
        record = None
        if newest is not None:
            record = _answered_record(newest, answers) or await self._fetch(key, newest, answers)
        read.finish(record)
        for name, (version, _) in answers.items():
            self._repair_if_behind(name, version, record)
        return record

    def read_voters(self, view: View, reps: tuple[str, ...]) -> list[str]:
        """The replicas that count in a read, in the order to ask them: this node, then
        unsuspected peers, then suspected ones. A read asks only as many as it needs; the
        others are asked when one fails or after the speculative delay (as Cassandra's
        speculative retry), so a healthy read costs R replica operations, not rf.

        The order without suspicion is fixed per view and replica set, so it is kept (the
        ring has a bounded number of distinct replica sets)."""
        if view is not self._voters_view:
            self._voters_view, self._voters_of = view, {}
        voters = self._voters_of.get(reps)
        if voters is None:
            me = self.cluster.name
            # A joining member may hold nothing yet, and one dropped from the membership is
            # gone: neither counts (a read that cannot find R others fails, never "not found").
            voters = view.holders(reps)
            voters.sort(key=lambda n: n != me)
            self._voters_of[reps] = voters
        replica = self.cluster.replica
        for name in voters:
            if replica(name).suspected:
                return sorted(voters, key=lambda n: replica(n).suspected)  # stable: me first
        return voters

    async def _fetch(self, key: bytes, newest: Version,
                     answers: dict[str, tuple[Version | None, Any]]) -> Record:
        """The full record of the newest version from a holder that answered a digest."""
        for name in [n for n, (version, _) in answers.items() if version == newest]:
            try:
                res = await self.cluster.replica(name).submit(read_op(key, True))
            except PeerError as exc:
                self.cluster.replica_failed(name, exc)
                continue
            if res is not None and len(res) == 7 and Version(res[3], res[4]) >= newest:
                return Record.from_wire(res)
        raise QuorumUnavailable(0, 1, "read", message="no replica that answered with the newest "
                                "version sent it in full")

    def _repair_if_behind(self, name: str, version: Version | None,
                          record: Record | None) -> None:
        if record is None or (version is not None and version >= record.version):
            return
        self.cluster.repaired(name)
        self.cluster.replica(name).send(write_op(record, False), _ignore_result)

    # -- list ---------------------------------------------------------------------------
    async def list_keys(
        self, prefix: bytes, after: bytes | None, limit: int
    ) -> tuple[list[bytes], bytes | None]:
        """Scatter-gather a key page over every member; eventually consistent.

        Each member returns up to `limit` keys after the cursor. Up to the smallest last key
        of any member whose page was full, the merge is complete; past it, it is not.
        """
        view = self.cluster.view
        names = list(view.by_name)
        results = await asyncio.gather(
            *(self.cluster.call(n, peerops.list_keys(prefix, after, limit)) for n in names),
            return_exceptions=True,
        )
        pages: list[list[KeyInfo]] = []
        failures = 0
        for name, res in zip(names, results, strict=True):
            if isinstance(res, BaseException):
                self.cluster.replica_failed(name, res)
                failures += 1
                continue
            pages.append([KeyInfo(k, Version(h, n), bool(t), e) for k, h, n, t, e in res])
        if failures >= max(1, view.doc.rf) or not pages:
            raise QuorumUnavailable(len(pages), len(names) - view.doc.rf + 1, "list")
        bound = min((p[-1].key for p in pages if len(p) >= limit), default=None)
        newest: dict[bytes, KeyInfo] = {}
        for page in pages:
            for info in page:
                if bound is not None and info.key > bound:
                    break
                seen = newest.get(info.key)
                if seen is None or info.version > seen.version:
                    newest[info.key] = info
        now = self.cluster.clock.physical_ms()
        keys = [
            k for k in sorted(newest)
            if not newest[k].tombstone and (newest[k].expires_ms == 0 or newest[k].expires_ms > now)
        ]
        if len(keys) > limit:
            return keys[:limit], keys[limit - 1]
        return keys, bound

    # -- diagnostics --------------------------------------------------------------------
    async def replica_versions(self, key: bytes) -> list[dict[str, Any]]:
        """Which nodes should hold the key and what each holds (like nodetool getendpoints):
        the version, size, content type and expiry of each replica's record."""
        view = self.cluster.view
        token = key_token(key)
        target = view.target.replicas_for_token(token)
        base = view.base.replicas_for_token(token)
        names = list(dict.fromkeys([*target, *base]))
        futures = [self.cluster.replica(n).submit(read_op(key, True)) for n in names]
        results = await asyncio.gather(*futures, return_exceptions=True)
        now = self.cluster.clock.physical_ms()
        out = []
        for name, res in zip(names, results, strict=True):
            member = view.by_name.get(name)
            entry: dict[str, Any] = {
                "node": name,
                "state": member.state if member else "removed",
                "in_target": name in target,
                "in_base": name in base,
            }
            if isinstance(res, BaseException):
                entry["status"] = "unavailable"
            elif res is None:
                entry["status"] = "missing"
            else:
                rec = Record.from_wire(res, trusted=True)
                entry.update(status="ok", version=str(rec.version), live=rec.live(now),
                             tombstone=rec.tombstone, size=len(rec.value),
                             content_type=rec.content_type, expires_ms=rec.expires_ms)
            out.append(entry)
        return out


class _Read:
    """The answers to one read as they arrive (a class, not closures: closures that call
    each other form a reference cycle that the garbage collector must find after every
    read)."""

    __slots__ = ("answers", "coordinator", "deadline", "decided", "failed", "finished",
                 "full_from", "key", "need", "record", "speculated", "voters", "waiting")

    def __init__(self, coordinator: Coordinator, key: bytes, need: int, voters: list[str],
                 decided: asyncio.Future[None]) -> None:
        self.coordinator = coordinator
        self.key = key
        self.need = need
        self.voters = voters
        self.waiting = list(voters)
        self.full_from = voters[0]
        self.decided = decided
        # name -> (version, answer): this node's Record, a peer's wire record or digest
        self.answers: dict[str, tuple[Version | None, Any]] = {}
        self.failed: list[BaseException] = []
        self.record: Record | None = None
        self.finished = False
        self.deadline = 0  # its entry in the coordinator's speculation or timeout wheel
        self.speculated = False

    def ask(self, count: int) -> None:
        # A local read answers at once (always in full: the record is at hand), and a
        # failure asks the next replica from inside `done`: `waiting` may shrink under
        # this loop.
        cluster = self.coordinator.cluster
        while count > 0 and self.waiting:
            count -= 1
            name = self.waiting.pop(0)
            if name == cluster.name:
                try:
                    record = cluster.local.read_record(self.key)
                except RemoteError as exc:
                    self.done(name, None, exc)
                else:
                    self.done(name, record, None)
            else:
                cluster.replica(name).send(read_op(self.key, name == self.full_from),
                                           partial(self.done, name))

    def speculate(self) -> None:
        """The speculative delay passed undecided: ask every voter, and from now on wait
        only for the rest of the read's timeout."""
        self.speculated = True
        self.deadline = self.coordinator._read_timeouts.add(self.expire)
        self.ask(len(self.voters))

    def expire(self) -> None:
        if not self.decided.done():
            self.decided.set_exception(TimeoutError())

    def done(self, name: str, res: Any, exc: BaseException | None) -> None:
        if exc is not None:
            self.coordinator.cluster.replica_failed(name, exc)
            if self.finished:
                return
            self.failed.append(exc)
            self.ask(1)
        else:
            if res is None:
                version = None
            elif type(res) is Record:
                version = res.version
            else:
                version = Version(res[3], res[4]) if len(res) == 7 else Version(res[0], res[1])
            if self.finished:  # answered after the read was decided: repair if behind
                self.coordinator._repair_if_behind(name, version, self.record)
                return
            self.answers[name] = (version, res)
        if not self.decided.done() and (
            len(self.answers) >= self.need or len(self.voters) - len(self.failed) < self.need
        ):
            self.decided.set_result(None)

    def finish(self, record: Record | None) -> None:
        self.record = record
        self.finished = True


def _answered_record(newest: Version,
                     answers: dict[str, tuple[Version | None, Any]]) -> Record | None:
    """The full record of the newest version if an answer carried it (no await: the
    common case, where this node or the replica asked in full holds the newest)."""
    for version, res in answers.values():
        if version == newest:
            if type(res) is Record:  # this node's own
                return res
            if len(res) == 7:
                return Record.from_wire(res)
    return None


def _ignore_result(result: Any, exc: BaseException | None) -> None:
    """Repairs are best effort: a replica that missed one is repaired by later reads,
    hints or anti-entropy."""

