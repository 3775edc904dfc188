"""Conditional writes and serial reads: a Paxos round per request among the key's replicas
(Cassandra's lightweight transactions), driven by this node as the proposer.

A round: prepare a fresh ballot (each promise carries the replica's Paxos state and its
record of the key); finish whatever an earlier round left accepted but not committed
(re-propose it under this ballot, commit it, start over); bring the quorum's data up to
the newest record; check the condition against that record; propose the new record (its
version is the ballot) and, once a quorum accepted it, commit it to the replicas and answer.
A failed condition or a read answers without proposing, unless another round may be in
flight: then an accepted empty proposal orders it after that round. Every quorum is a
quorum in each ring while an epoch is unsettled (rule 3). See the module docstring of
`paxos` for the acceptor's side and docs/ARCHITECTURE.md for the argument.

Under contention a round loses to a newer ballot; the proposer backs off (randomly,
exponentially) and tries again within the request's deadline. A proposal that reached
some replicas but not a quorum may still be decided by whoever finishes it, so the
proposer remembers it and looks for it in its next rounds (`Reading.fate`): found, the
request succeeded; not found, it ends it (its next accepted proposal, empty or not, does)
before answering anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

from . import paxos
from .changes import Change, Refused
from .coordinator import (
    Cluster,
    ConflictRetryExhausted,
    CoordinatorError,
    PreconditionFailed,
    QuorumUnavailable,
)
from .membership import View, needed
from .paxos import Ballot, Promise, Proposal
from .peerops import write_op
from .records import Record
from .ring import key_token
from .storage import StorageFull
from .transport import (
    Deadlines,
    PeerError,
    PeerTimeout,
    PeerUnavailable,
    RemoteError,
    StaleEpoch,
)
from .versions import ZERO, Version

QuorumRead = Callable[[bytes, str], Awaitable[Record | None]]

# Backoff after the n-th round lost to another proposer: uniform in [0, min(MAX, base * 2^n)],
# the base being about two rounds as long as rounds take now (at least BACKOFF_BASE), so
# the winner has time to finish before the losers come back.
BACKOFF_BASE = 0.002
BACKOFF_MAX = 0.2
# While a proposal of ours may still be decided by another proposer, at most this: its
# fate must be read before the replicas' memory of decisions (paxos.RECENT) moves on.
PENDING_BACKOFF_MAX = 0.02


class Decided(NamedTuple):
    """A conditional write's outcome: the record written, and the record it replaced
    (None: the key had none) as the round saw it."""

    record: Record
    previous: Record | None


class OutcomeUnknown(CoordinatorError):
    """A proposal of this request reached some replicas, and whether it was decided cannot
    be told (see `Reading.may_have_forgotten`): it may still take effect."""


@dataclass(frozen=True, slots=True)
class Rings:
    """The replicas of a key in the base and the target ring, and the quorum of each."""

    base: frozenset[str]
    target: frozenset[str]
    need_base: int
    need_target: int

    @classmethod
    def of(cls, view: View, key: bytes) -> Rings:
        token = key_token(key)
        target = view.target.replicas_for_token(token)
        base = view.base.replicas_for_token(token) if view.transitioning else target
        return cls(frozenset(base), frozenset(target), needed("quorum", len(base)),
                   needed("quorum", len(target)))

    @property
    def names(self) -> frozenset[str]:
        return self.base | self.target

    def at(self, level: str) -> Rings:
        """The same replicas with the quorums of a consistency level."""
        return Rings(self.base, self.target, needed(level, len(self.base)),
                     needed(level, len(self.target)))

    def enough(self, names: Iterable[str]) -> bool:
        names = set(names)
        return (len(self.base & names) >= self.need_base
                and len(self.target & names) >= self.need_target)

    @property
    def quorum(self) -> int:
        return max(self.need_base, self.need_target)


class _Phase:
    """The answers to one op sent to replicas of a round. `judge` reads an answer as yes or
    no (raising ValueError for a malformed one); the phase is decided once the yes answers
    (with the replicas `already` counted yes) hold a quorum of each ring, or once they no
    longer can."""

    __slots__ = ("decided", "failed", "judge", "no", "rings", "stale", "unanswered", "yes")

    def __init__(self, rings: Rings, ask: Iterable[str], judge: Callable[[Any], tuple[bool, Any]],
                 decided: asyncio.Future[None], already: Iterable[str] = ()) -> None:
        self.rings = rings
        self.judge = judge
        self.decided = decided
        self.yes: dict[str, Any] = dict.fromkeys(already)
        self.no: dict[str, Any] = {}
        self.failed: dict[str, BaseException] = {}
        self.unanswered = set(ask)
        self.stale = False
        self._check()

    def done(self, on_failure: Callable[[str, BaseException], None], name: str, res: Any,
             exc: BaseException | None) -> None:
        if name not in self.unanswered:
            return
        self.unanswered.discard(name)
        if exc is None:
            try:
                ok, value = self.judge(res)
            except (ValueError, TypeError) as bad:
                exc = RemoteError("bad_reply", str(bad))
            else:
                (self.yes if ok else self.no)[name] = value
        if exc is not None:
            self.failed[name] = exc
            self.stale = self.stale or isinstance(exc, StaleEpoch)
            on_failure(name, exc)
        self._check()

    def _check(self) -> None:
        if not self.decided.done() and (
                self.ok or not self.rings.enough(self.unanswered | self.yes.keys())
                or not self.unanswered):
            self.decided.set_result(None)

    @property
    def ok(self) -> bool:
        return self.rings.enough(self.yes)

    def give_up(self) -> None:
        """The replicas' time is up: decide with the answers there are."""
        if not self.decided.done():
            self.decided.set_result(None)

    @property
    def clean_refusal(self) -> bool:
        """Every replica asked answered no: nothing of this phase took effect anywhere."""
        return not self.yes and not self.unanswered and not self.failed


def _unapplied(needed: int) -> QuorumUnavailable:
    """A decided proposal that too few replicas applied in time: it takes effect anyway
    (the next round on the key finishes it), but the level was not met."""
    return QuorumUnavailable(0, needed, "write", message=(
        f"the conditional write was decided, but fewer than the {needed} replicas needed "
        "applied it in time (the next round on the key completes it)"))


def _judge_promise(res: Any) -> tuple[bool, Promise]:
    promise = Promise.from_wire(res)
    return promise.granted, promise


def _judge_accept(res: Any) -> tuple[bool, Ballot | None]:
    return (True, None) if res is None else (False, paxos.refusal_ballot(res))


def _judge_ack(res: Any) -> tuple[bool, None]:
    return True, None


class Proposer:
    """Runs Paxos rounds for this node's conditional requests."""

    def __init__(self, cluster: Cluster, timeout: float, quorum_read: QuorumRead,
                 restarted: Callable[[str], object] = lambda reason: None,
                 rng: random.Random | None = None) -> None:
        self.cluster = cluster
        self.timeout = timeout
        self._quorum_read = quorum_read
        self._restarted = restarted  # counts why rounds start over (metrics)
        self._waits = Deadlines(timeout)
        self._rng = rng or random.Random()
        self._phase_s = 0.001  # how long a phase takes, smoothed (for the backoff)
        self._turns: dict[bytes, list[Any]] = {}  # key -> [lock, requests holding or waiting]

    @contextlib.asynccontextmanager
    async def _turn(self, key: bytes) -> AsyncIterator[None]:
        """One round at a time per key on this node, in arrival order: requests that would
        only preempt each other's rounds queue here instead, so contention is between
        nodes, not between requests."""
        entry = self._turns.get(key)
        if entry is None:
            entry = self._turns[key] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self._turns[key]

    async def write(self, key: bytes, change: Change, level: str = "quorum") -> Decided:
        """Decide `change` on the key. Raises PreconditionFailed
        (the condition did not hold), QuorumUnavailable, OutcomeUnknown (a proposal of this
        request may still take effect) or ConflictRetryExhausted (nothing was written).
        `level` is how many replicas must apply the decision before the answer."""
        async with self._turn(key):
            decided = await self._run(key, change, level)
        assert isinstance(decided, Decided)
        return decided

    async def read(self, key: bytes) -> Record | None:
        """The key's record as of a Paxos round (a serial read: linearizable with
        conditional writes)."""
        async with self._turn(key):
            current = await self._run(key, None, "quorum")
        assert not isinstance(current, Decided)
        return current

    # -- the round ----------------------------------------------------------------------
    async def _run(self, key: bytes, change: Change | None, level: str) -> Decided | Record | None:
        cluster, clock = self.cluster, self.cluster.clock
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        # Our proposals that reached replicas without a quorum: one may still be decided.
        mine: dict[Version, tuple[Proposal, Decided]] = {}
        lost = 0  # rounds lost to other proposers so far
        while True:
            if loop.time() >= deadline:
                if mine:
                    raise OutcomeUnknown(
                        "the conditional write was not decided before the deadline; it reached "
                        "some replicas and may still take effect")
                raise ConflictRetryExhausted(
                    f"no Paxos round won within {self.timeout:g}s (concurrent conditional "
                    "requests on this key); nothing was written")
            if lost and change is not None and not mine:
                await self._doomed(key, change)
            rings = Rings.of(cluster.view, key)
            ballot = Version(clock.now(), cluster.name)
            prepare = await self._phase(rings, rings.names,
                                        paxos.prepare_op(key, ballot, recent=bool(mine)),
                                        _judge_promise)
            answers = [*prepare.yes.values(), *prepare.no.values()]
            for promise in answers:
                clock.observe(max(promise.promised.hlc, promise.accepted.hlc))
            reading = paxos.read(prepare.yes) if prepare.ok else None
            if mine and (won := await self._settle(rings, key, mine, answers, reading)):
                return won
            if reading is None:
                if prepare.stale:
                    self._restart("stale_epoch")
                    continue
                if prepare.no:
                    lost = await self._backoff(lost, deadline, "preempted", bool(mine))
                    continue
                if mine:
                    raise OutcomeUnknown(
                        "too few replicas answer to tell whether the conditional write, which "
                        "reached some of them, took effect")
                raise QuorumUnavailable(len(prepare.yes), rings.quorum,
                                        "conditional write; nothing was written" if change
                                        else "read")
            clock.observe(reading.newest_seen())
            if reading.in_progress:  # an earlier round's proposal: finish it first
                proposal = reading.proposal
                assert proposal is not None
                if not await self._accept(rings, key, ballot, proposal):
                    lost = await self._backoff(lost, deadline, "preempted", bool(mine))
                    continue
                if await self._commit(rings, key, ballot, proposal) and proposal.version in mine:
                    return mine[proposal.version][1]
                self._restart("finished_another")
                continue
            if (reading.laggards or reading.behind) and not await self._catch_up(rings, key, reading):
                lost = await self._backoff(lost, deadline, "catch_up", bool(mine))
                continue
            current = reading.current
            if change is None:  # a serial read
                if reading.concurrent and not await self._accept(rings, key, ballot, None):
                    lost = await self._backoff(lost, deadline, "preempted", bool(mine))
                    continue
                return current
            if current is not None and current.version >= ballot:
                clock.observe(current.version.hlc)  # the next ballot is newer than the data
                self._restart("data_newer")
                continue
            if loop.time() >= deadline:
                continue  # no new proposal after the deadline (see LocalReplica.paxos_from)
            try:
                record = change.apply(current, ballot, clock.physical_ms())
            except Refused as refused:
                # Our own undecided proposals, or another round's, must not be decided after
                # this answer: an accepted empty proposal ends them.
                if (mine or reading.concurrent) and not await self._accept(rings, key, ballot, None):
                    lost = await self._backoff(lost, deadline, "preempted", bool(mine))
                    continue
                raise PreconditionFailed(str(refused)) from None
            proposal = Proposal(record, reading.base)
            accept = await self._phase(rings, rings.names, paxos.accept_op(key, ballot, proposal),
                                       _judge_accept)
            if accept.ok:
                if not await self._commit(rings, key, ballot, proposal, level):
                    raise _unapplied(rings.at(level).quorum)
                return Decided(record, current)
            if not accept.clean_refusal:
                mine[record.version] = (proposal, Decided(record, current))
            for refusal in accept.no.values():
                clock.observe(refusal.hlc)
            lost = await self._backoff(lost, deadline, "preempted", bool(mine))

    async def _doomed(self, key: bytes, change: Change) -> None:
        """After losing a round, check the condition against a plain quorum read before
        competing again: a request whose condition already fails answers 412 without
        preempting the rounds that may still succeed (under contention most would).

        That 412 is linearizable: the record a quorum read returns is at least as new as
        every write acknowledged before this request began, and was decided (or written)
        before the read, so it was current at some point during the request; and nothing
        of this request reached any replica (no proposal of ours is pending)."""
        try:
            current = await self._quorum_read(key, "quorum")
        except (CoordinatorError, PeerError, TimeoutError):
            return  # the rounds will tell
        try:
            change.apply(current, ZERO, self.cluster.clock.physical_ms())
        except Refused as refused:
            raise PreconditionFailed(str(refused)) from None

    async def _settle(self, rings: Rings, key: bytes, mine: dict[Version, tuple[Proposal, Decided]],
                      answers: list[Promise], reading: paxos.Reading | None) -> Decided | None:
        """Learn what became of our proposals from a prepare's answers (`paxos.fate`): one
        decided is committed to a quorum and answered; lost ones are forgotten; one whose
        fate the replicas no longer remember makes the outcome unknown."""
        base = None if reading is None else reading.base
        for version, (proposal, decided) in list(mine.items()):
            fate, decision = paxos.fate(proposal, answers, base)
            if fate == paxos.DECIDED:
                assert decision is not None
                if not await self._commit(rings, key, decision.ballot, proposal):
                    raise _unapplied(rings.quorum)
                return decided
            if fate == paxos.LOST:
                del mine[version]
            elif fate == paxos.FORGOTTEN:
                raise OutcomeUnknown(
                    "the conditional write reached some replicas, and other writers decided more "
                    f"than {paxos.RECENT} times on this key since: whether it took effect is unknown")
        return None

    async def _accept(self, rings: Rings, key: bytes, ballot: Ballot, proposal: Proposal | None) -> bool:
        """Propose (the empty proposal: None); True once a quorum of each ring accepted."""
        phase = await self._phase(rings, rings.names, paxos.accept_op(key, ballot, proposal),
                                  _judge_accept)
        for refusal in phase.no.values():
            self.cluster.clock.observe(refusal.hlc)
        return phase.ok

    async def _commit(self, rings: Rings, key: bytes, ballot: Ballot, proposal: Proposal,
                      level: str = "quorum") -> bool:
        """Commit a decided proposal everywhere; True once `level` of each ring applied it.
        A replica that missed it gets a hint (it applies the record, as a write would)."""
        phase = await self._phase(rings.at(level), rings.names,
                                  paxos.commit_op(key, ballot, proposal), _judge_ack,
                                  partial(self._missed, proposal.record))
        return phase.ok

    async def _catch_up(self, rings: Rings, key: bytes, reading: paxos.Reading) -> bool:
        """Bring the quorum up to `reading.current`: commit the last decision where it is
        missing, then write the newest record (a plain write newer than the decision) where
        it is still missing; True once a quorum of each ring holds it. So whatever a round
        saw is on a quorum before the round acts on it, and every later round sees it."""
        holders = set(reading.promises) - set(reading.laggards) - set(reading.behind)
        if reading.laggards and reading.decision is not None:
            late = [n for n in reading.laggards if n not in reading.behind]
            commit = await self._phase(rings, reading.laggards,
                                       paxos.commit_op(key, reading.committed, reading.decision),
                                       _judge_ack, already=holders)
            holders |= commit.yes.keys() & set(late)
        if reading.behind and reading.current is not None:
            repair = await self._phase(rings, reading.behind, write_op(reading.current, False),
                                       _judge_ack, already=holders)
            holders |= repair.yes.keys()
        return rings.enough(holders)

    # -- plumbing -----------------------------------------------------------------------
    async def _phase(self, rings: Rings, ask: Iterable[str], op: list[Any],
                     judge: Callable[[Any], tuple[bool, Any]],
                     on_failure: Callable[[str, BaseException], None] | None = None,
                     already: Iterable[str] = ()) -> _Phase:
        ask = tuple(ask)
        loop = asyncio.get_running_loop()
        started = loop.time()
        phase = _Phase(rings, ask, judge, loop.create_future(), already)
        done = partial(phase.done, on_failure or self._failed)
        for name in ask:
            self.cluster.replica(name).send(op, partial(done, name))
        if not phase.decided.done():
            entry = self._waits.add(phase.give_up)
            try:
                await phase.decided
            finally:
                self._waits.cancel(entry)
        if phase.ok:
            self._phase_s += (loop.time() - started - self._phase_s) / 8
        return phase

    def _failed(self, name: str, exc: BaseException) -> None:
        self.cluster.replica_failed(name, exc)

    def _missed(self, proposal: Record, name: str, exc: BaseException) -> None:
        self._failed(name, exc)
        if isinstance(exc, PeerUnavailable | PeerTimeout | StorageFull) or (
                isinstance(exc, RemoteError) and exc.code == "insufficient_storage"):
            self.cluster.store_hint(name, proposal)

    def _restart(self, reason: str) -> None:
        self._restarted(reason)

    async def _backoff(self, lost: int, deadline: float, reason: str, pending: bool) -> int:
        """Wait a random while before the next round: proposers that keep preempting each
        other spread out (exponentially), never past the deadline; less long while a
        proposal of ours is `pending` (see PENDING_BACKOFF_MAX)."""
        self._restart(reason)
        loop = asyncio.get_running_loop()
        base = max(BACKOFF_BASE, 6 * self._phase_s)  # about two rounds of three phases
        cap = min(PENDING_BACKOFF_MAX if pending else BACKOFF_MAX, base * 2 ** lost)
        # At least two phases: the round that preempted this one gets to accept and commit.
        delay = self._rng.uniform(min(cap, 2 * self._phase_s), cap)
        await asyncio.sleep(max(0.0, min(delay, deadline - loop.time())))
        return lost + 1
