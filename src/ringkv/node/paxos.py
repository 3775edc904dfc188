"""Paxos per key, as Cassandra's lightweight transactions: the acceptor's rules, the replica
ops that carry them, and the proposer's reading of a quorum of promises.

Pure: no I/O, no clock. `replica.LocalReplica` applies the acceptor rules and persists
their result before it answers (rule 5); `conditional.Proposer` drives the rounds.

Ballots are versions, `(hlc, node)`, ordered like versions: a round's ballot comes from
the proposer's hybrid clock and is also the version of the record it proposes, so rounds
that decide in ballot order write versions in that order.

A key's decisions form a chain: every proposal names the decision it was built on (its
`base`, the version of the newest decision the round saw), and of the proposals built on
one decision at most one is ever decided (a round sees every decision accepted by a
quorum before its promise, and finishes or builds on it). So "which proposal was decided
after decision c" has one answer forever, and a proposer can tell what became of its own
proposal from any replica that remembers it (`Decision`).

Each replica keeps one `PaxosState` per key: the highest ballot promised, the most recently
accepted proposal and its ballot, the newest decision it learnt and its ballot, and the
latest decisions it learnt (base, version, ballot). A proposal is a record with its base,
or None: the empty proposal, which decides nothing, but once accepted by a quorum ends
every older proposal not decided yet (a failed condition and a serial read that overlapped
another round propose it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from .peerops import ACCEPT, COMMIT, PAXOS_OPS, PREPARE
from .records import Record
from .versions import MAX_HLC, ZERO, Version, valid_node_name

Ballot = Version

# Decisions each replica remembers per key: a proposer learns what became of a proposal of
# its own that reached some replicas but not a quorum from any replica that still does.
RECENT = 32

# The replica ops (their kinds, beside every other peer op, are in `peerops`), as they
# travel in batch frames (plain msgpack lists, like the writes and reads):
#   [PREPARE, key, [hlc, node, recent]]          -> promise (`promise_reply`; the latest
#                                                   decisions only if `recent`)
#   [ACCEPT, key, [hlc, node, proposal]]         -> None (accepted) | [hlc, node] (the
#                                                   promise that refuses it)
#   [COMMIT, key, [hlc, node, proposal]]         -> None (learnt, record applied)
# A proposal travels as [wire record, base hlc, base node]; None is the empty proposal
# (accept only). Built by `prepare_op`, `accept_op` and `commit_op`, read by `parse_op`.


@dataclass(frozen=True, slots=True)
class Proposal:
    """A record a round proposes, and the decision it was built on (ZERO: none)."""

    record: Record
    base: Version

    @property
    def version(self) -> Version:
        return self.record.version


@dataclass(frozen=True, slots=True)
class Decision:
    """A decided proposal as replicas remember it: the decision it followed, the version
    it wrote, and the ballot it was decided (committed) at."""

    base: Version
    version: Version
    ballot: Ballot


@dataclass(frozen=True, slots=True)
class PaxosState:
    """One replica's acceptor registers for one key."""

    promised: Ballot = ZERO
    accepted: Ballot = ZERO
    proposal: Proposal | None = None  # accepted at `accepted`; None: none, or the empty one
    committed: Ballot = ZERO
    decision: Proposal | None = None  # the newest decision learnt, at `committed`
    recent: tuple[Decision, ...] = ()  # newest ballot first, at most RECENT


EMPTY = PaxosState()


# -- the acceptor -------------------------------------------------------------------------
def on_prepare(state: PaxosState, ballot: Ballot) -> tuple[PaxosState, bool]:
    """Promise to accept nothing older than `ballot`, unless a newer promise stands."""
    if ballot < state.promised:
        return state, False
    if ballot == state.promised:
        return state, True
    return replace(state, promised=ballot), True


def on_accept(state: PaxosState, ballot: Ballot, proposal: Proposal | None
              ) -> tuple[PaxosState, bool]:
    """Accept a proposal unless a newer ballot was promised."""
    if ballot < state.promised:
        return state, False
    if ballot == state.accepted:  # the same proposal again
        return state, True
    return replace(state, promised=ballot, accepted=ballot, proposal=proposal), True


def on_commit(state: PaxosState, ballot: Ballot, proposal: Proposal) -> PaxosState:
    """Learn a decision (unconditionally: a quorum accepted it). The record itself is
    applied to the data by the caller, in the same transaction."""
    recent = remember(state.recent, Decision(proposal.base, proposal.version, ballot))
    if ballot <= state.committed:
        return state if recent is state.recent else replace(state, recent=recent)
    return replace(state, promised=max(state.promised, ballot), committed=ballot,
                   decision=proposal, recent=recent)


def remember(recent: tuple[Decision, ...], decision: Decision) -> tuple[Decision, ...]:
    """The newest RECENT decisions, newest ballot first; one entry per decision."""
    if any(d.base == decision.base and d.version == decision.version for d in recent):
        return recent
    if len(recent) >= RECENT and decision.ballot < recent[-1].ballot:
        return recent
    return tuple(sorted((*recent, decision), key=lambda d: d.ballot, reverse=True)[:RECENT])


def merge(mine: PaxosState, theirs: PaxosState) -> PaxosState:
    """What a replica that (re)gains a key keeps of a source replica's state: the newer
    promise, accepted proposal and decision of the two, and both memories of decisions.
    Applied only before the replica answers for the key (handoff, rebuild), so it claims
    nothing that no acceptor did."""
    merged = mine
    for decision in theirs.recent:
        merged = replace(merged, recent=remember(merged.recent, decision))
    if theirs.promised > merged.promised:
        merged = replace(merged, promised=theirs.promised)
    if theirs.accepted > merged.accepted:
        merged = replace(merged, accepted=theirs.accepted, proposal=theirs.proposal)
    if theirs.committed > merged.committed:
        merged = replace(merged, committed=theirs.committed, decision=theirs.decision)
    return merged


def settled(state: PaxosState, before_hlc: int) -> bool:
    """Whether a state may be forgotten: no ballot newer than the bound (gc_grace ago), so
    no round can still be running on it. A proposal accepted but left undecided that long
    goes with it (its writer was told the outcome was unknown), as Cassandra's Paxos state
    expires after gc_grace."""
    return state.promised.hlc < before_hlc


# -- storage rows (the paxos table, see `storage`) -------------------------------------------
# The proposal column of a row whose accepted proposal is its decision (every key after a
# round ends): the record is stored once, in the decision column. (Rows written before
# this hold both in full, and read the same.)
DECIDED_PROPOSAL = b""


def state_row(state: PaxosState) -> tuple[Any, ...]:
    decided = state.proposal is not None and state.proposal == state.decision
    return (state.promised.hlc, state.promised.node, state.accepted.hlc, state.accepted.node,
            DECIDED_PROPOSAL if decided else _pack(state.proposal),
            state.committed.hlc, state.committed.node,
            _pack(state.decision), msgpack.packb(_flat(state.recent)))


def state_from_row(row: Sequence[Any], trusted: bool = True) -> PaxosState:
    """The inverse of `state_row`; a row from a peer (`trusted` False) is checked and
    raises ValueError when malformed."""
    try:
        ph, pn, ah, an, proposal, ch, cn, decision, recent = row
        check = Version if trusted else _ballot
        decided = _unpack(decision, trusted)
        if proposal == DECIDED_PROPOSAL and decided is None:
            raise ValueError("the proposal is a decision that is not there")
        return PaxosState(check(ph, pn), check(ah, an),
                          decided if proposal == DECIDED_PROPOSAL else _unpack(proposal, trusted),
                          check(ch, cn), decided, _decisions(msgpack.unpackb(recent), check))
    except (TypeError, ValueError, msgpack.UnpackException) as exc:
        raise ValueError(f"malformed paxos state: {exc}") from None


def _pack(proposal: Proposal | None) -> bytes | None:
    return None if proposal is None else msgpack.packb(_proposal_wire(proposal))


def _unpack(raw: Any, trusted: bool) -> Proposal | None:
    if raw is None:
        return None
    if not isinstance(raw, bytes):
        raise ValueError("a proposal is packed")
    return _proposal(msgpack.unpackb(raw), trusted)


def _flat(recent: Iterable[Decision]) -> list[Any]:
    """Decisions as one flat list: base, version and ballot (hlc, node each), ..."""
    out: list[Any] = []
    for d in recent:
        out += (d.base.hlc, d.base.node, d.version.hlc, d.version.node, d.ballot.hlc,
                d.ballot.node)
    return out


def _decisions(flat: Any, check: Any = Version) -> tuple[Decision, ...]:
    if not isinstance(flat, list) or len(flat) % 6 or len(flat) > 6 * RECENT:
        raise ValueError("malformed decisions")
    return tuple(Decision(check(*flat[i:i + 2]), check(*flat[i + 2:i + 4]), check(*flat[i + 4:i + 6]))
                 for i in range(0, len(flat), 6))


# -- the wire -------------------------------------------------------------------------------
def _proposal_wire(proposal: Proposal) -> list[Any]:
    return [proposal.record.to_wire(), proposal.base.hlc, proposal.base.node]


def _proposal(wire: Any, trusted: bool = False) -> Proposal:
    if not isinstance(wire, list | tuple) or len(wire) != 3:
        raise ValueError("a proposal is [record, base hlc, base node]")
    check = Version if trusted else _ballot
    return Proposal(Record.from_wire(wire[0], trusted), check(wire[1], wire[2]))


def prepare_op(key: bytes, ballot: Ballot, recent: bool = False) -> list[Any]:
    return [PREPARE, key, [ballot.hlc, ballot.node, recent]]


def accept_op(key: bytes, ballot: Ballot, proposal: Proposal | None) -> list[Any]:
    return [ACCEPT, key, [ballot.hlc, ballot.node,
                          None if proposal is None else _proposal_wire(proposal)]]


def commit_op(key: bytes, ballot: Ballot, proposal: Proposal) -> list[Any]:
    return [COMMIT, key, [ballot.hlc, ballot.node, _proposal_wire(proposal)]]


def _ballot(hlc: Any, node: Any) -> Ballot:
    if hlc == 0 and node == "":  # nothing promised, accepted or decided yet
        return ZERO
    if type(hlc) is not int or not 0 <= hlc <= MAX_HLC or not isinstance(node, str) \
            or not valid_node_name(node):
        raise ValueError("malformed ballot")
    return Version(hlc, node)


@dataclass(frozen=True, slots=True)
class Op:
    """A paxos replica op as a replica receives it, checked."""

    kind: str
    key: bytes
    ballot: Ballot
    proposal: Proposal | None
    recent: bool = False  # a prepare: answer with the latest decisions


def parse_op(op: list[Any]) -> Op:
    """Check a paxos op from a peer; raises ValueError when it is malformed."""
    kind, key, arg = op
    if kind not in PAXOS_OPS or not isinstance(key, bytes) or not key or not isinstance(arg, list) \
            or len(arg) != 3:
        raise ValueError("a paxos op is [kind, key, [hlc, node, arg]]")
    ballot = _ballot(arg[0], arg[1])
    if kind == PREPARE:
        return Op(kind, key, ballot, None, bool(arg[2]))
    proposal = None if arg[2] is None else _proposal(arg[2])
    if proposal is not None and proposal.record.key != key:
        raise ValueError("the proposal is for another key")
    if kind == COMMIT and proposal is None:
        raise ValueError("a commit carries a proposal")
    return Op(kind, key, ballot, proposal)


def promise_reply(granted: bool, before: PaxosState, data: Record | None,
                  recent: bool = True) -> list[Any]:
    """The answer to a prepare: the state as it was before it (its decisions if `recent`)
    and the key's record. An accepted proposal goes along only if it is newer than the
    decision (it may be in progress), the decision's record only if the data is not it."""
    in_progress = before.proposal is not None and before.accepted > before.committed
    decision = before.decision
    same = decision is not None and data is not None and data.version == decision.version
    return [granted, before.promised.hlc, before.promised.node,
            before.accepted.hlc, before.accepted.node,
            _proposal_wire(before.proposal) if in_progress else None,  # type: ignore[arg-type]
            before.committed.hlc, before.committed.node,
            None if decision is None else [None if same else decision.record.to_wire(),
                                           decision.base.hlc, decision.base.node],
            _flat(before.recent) if recent else [],
            None if data is None else data.to_wire()]


@dataclass(frozen=True, slots=True)
class Promise:
    """A replica's answer to a prepare, as the proposer reads it."""

    granted: bool
    promised: Ballot  # the replica's promise before this prepare
    accepted: Ballot
    proposal: Proposal | None  # only if newer than the decision (see `promise_reply`)
    committed: Ballot
    decision: Proposal | None
    recent: tuple[Decision, ...]
    data: Record | None

    @classmethod
    def from_wire(cls, reply: Any) -> Promise:
        """Raises ValueError on a malformed reply."""
        try:
            granted, ph, pn, ah, an, proposal, ch, cn, decision, flat, data = reply
            record = None if data is None else Record.from_wire(data)
            if decision is not None:
                wire, bh, bn = decision
                decided = record if wire is None else Record.from_wire(wire)
                if decided is None:
                    raise ValueError("a decision without its record")
                decision = Proposal(decided, _ballot(bh, bn))
            return cls(bool(granted), _ballot(ph, pn), _ballot(ah, an),
                       None if proposal is None else _proposal(proposal), _ballot(ch, cn),
                       decision, _decisions(flat, _ballot), record)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed promise: {exc}") from None

    def decisions(self) -> Iterable[Decision]:
        """What this replica knows was decided."""
        if self.decision is not None:
            yield Decision(self.decision.base, self.decision.version, self.committed)
        yield from self.recent


def refusal_ballot(reply: Any) -> Ballot:
    """The promise an accept's refusal names."""
    hlc, node = reply
    return _ballot(hlc, node)


# -- the proposer's reading ---------------------------------------------------------------
DECIDED, LOST, OPEN, FORGOTTEN = "decided", "lost", "open", "forgotten"


def fate(proposal: Proposal, answers: Iterable[Promise], base: Version | None
         ) -> tuple[str, Decision | None]:
    """What became of a proposal that reached some replicas but maybe not a quorum, from
    any answers to a prepare (granted or not: a decision is a fact): DECIDED (with the
    decision), LOST (another proposal built on the same decision was decided), OPEN (no
    decision after its base yet, as far as `base`, the newest decision a granted quorum
    knows, tells), FORGOTTEN (decisions after its base were made, and no replica asked
    still remembers the first of them). `base` None: no granted quorum answered."""
    for promise in answers:
        for decision in promise.decisions():
            if decision.base == proposal.base:
                return (DECIDED if decision.version == proposal.version else LOST), decision
    if base is None:
        return OPEN, None
    return (OPEN if base == proposal.base else FORGOTTEN), None


@dataclass(frozen=True, slots=True)
class Reading:
    """What a quorum of granted promises says about the key."""

    committed: Ballot  # the newest decision's ballot, and the decision
    decision: Proposal | None
    accepted: Ballot  # the newest accepted proposal (MRA) and its ballot
    proposal: Proposal | None
    current: Record | None  # the newest record: the data, or the decision's
    laggards: tuple[str, ...]  # replicas that have not learnt the newest decision
    behind: tuple[str, ...]  # replicas whose data stays older than `current` after that
    concurrent: bool  # another round promised since the last accept or decision
    promises: Mapping[str, Promise] = field(repr=False)

    @property
    def in_progress(self) -> bool:
        """A proposal was accepted after the newest decision: it must be finished first."""
        return self.proposal is not None and self.accepted > self.committed

    @property
    def base(self) -> Version:
        """What a new proposal builds on: the newest decision's version."""
        return ZERO if self.decision is None else self.decision.version

    def newest_seen(self) -> int:
        """The highest HLC any promise named: the next ballot must be above it."""
        return max((max(p.promised.hlc, p.accepted.hlc, p.committed.hlc,
                        p.data.version.hlc if p.data else 0) for p in self.promises.values()),
                   default=0)


def read(promises: Mapping[str, Promise]) -> Reading:
    """Read a quorum of granted promises (Cassandra's "most recently accepted")."""
    committed, decision = ZERO, None
    accepted, proposal = ZERO, None
    for p in promises.values():
        if p.committed > committed:
            committed, decision = p.committed, p.decision
        if p.accepted > accepted:
            accepted, proposal = p.accepted, p.proposal
    current: Record | None = None
    for p in promises.values():
        if p.data is not None and (current is None or p.data.version > current.version):
            current = p.data
    if decision is not None and (current is None or decision.version > current.version):
        current = decision.record
    laggards = tuple(n for n, p in promises.items() if p.committed < committed)
    behind = []
    if current is not None:
        for name, p in promises.items():
            held = None if p.data is None else p.data.version
            if name in laggards and decision is not None and (held is None or decision.version > held):
                held = decision.version
            if held is None or held < current.version:
                behind.append(name)
    concurrent = any(p.promised > max(accepted, committed) for p in promises.values())
    return Reading(committed, decision, accepted, proposal, current, laggards, tuple(behind),
                   concurrent, promises)
