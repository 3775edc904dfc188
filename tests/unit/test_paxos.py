"""The Paxos core: the acceptor's rules, the wire and storage forms, and the proposer's
reading of promises."""

from __future__ import annotations

import pytest

from ringkv.node import paxos
from ringkv.node.paxos import (
    DECIDED,
    EMPTY,
    FORGOTTEN,
    LOST,
    OPEN,
    RECENT,
    Decision,
    PaxosState,
    Promise,
    Proposal,
    on_accept,
    on_commit,
    on_prepare,
)
from ringkv.node.records import Record
from ringkv.node.versions import ZERO, Version

K = b"k"


def b(hlc: int, node: str = "n1") -> Version:
    return Version(hlc, node)


def rec(hlc: int, value: bytes = b"v", node: str = "n1") -> Record:
    return Record(K, value, "text/plain", Version(hlc, node))


def prop(hlc: int, base: int = 0) -> Proposal:
    return Proposal(rec(hlc), b(base) if base else ZERO)


def test_a_promise_refuses_older_ballots_and_repeats_for_the_same():
    state, ok = on_prepare(EMPTY, b(5))
    assert ok and state.promised == b(5)
    assert on_prepare(state, b(4)) == (state, False)
    assert on_prepare(state, b(5)) == (state, True)
    assert on_prepare(state, b(5, "n2"))[0].promised == b(5, "n2")  # the node breaks ties


def test_accept_needs_no_newer_promise_and_raises_the_promise():
    state, _ = on_prepare(EMPTY, b(5))
    assert on_accept(state, b(4), prop(4)) == (state, False)
    state, ok = on_accept(state, b(5), prop(5))
    assert ok and (state.promised, state.accepted, state.proposal) == (b(5), b(5), prop(5))
    higher, ok = on_accept(state, b(7), None)  # accepting is promising too
    assert ok and higher.promised == b(7) and higher.proposal is None
    assert on_accept(higher, b(6), prop(6))[1] is False


def test_commit_is_unconditional_and_remembers_the_decision():
    promised, _ = on_prepare(EMPTY, b(9))
    state = on_commit(promised, b(5), prop(5))
    assert (state.promised, state.committed, state.decision) == (b(9), b(5), prop(5))
    assert state.recent == (Decision(ZERO, b(5), b(5)),)
    newer = on_commit(state, b(8), prop(6, base=5))  # a re-proposal decided at a later ballot
    assert (newer.committed, newer.decision) == (b(8), prop(6, base=5))
    assert newer.recent == (Decision(b(5), b(6), b(8)), Decision(ZERO, b(5), b(5)))
    late = on_commit(newer, b(5), prop(5))  # a late repeat changes nothing
    assert late is newer


def test_only_the_newest_decisions_are_remembered():
    state = EMPTY
    for i in range(1, RECENT + 5):
        state = on_commit(state, b(i), prop(i, base=i - 1))
    assert len(state.recent) == RECENT
    assert [d.ballot.hlc for d in state.recent] == list(range(RECENT + 4, 4, -1))
    assert paxos.remember(state.recent, Decision(ZERO, b(1), b(1))) is state.recent


def test_merge_keeps_the_newer_of_each_register():
    mine = PaxosState(b(3), b(2), prop(2), b(2), prop(2), (Decision(ZERO, b(2), b(2)),))
    theirs = PaxosState(b(9), b(7), prop(7, base=2), b(1), prop(1), (Decision(ZERO, b(1), b(1)),))
    merged = paxos.merge(mine, theirs)
    assert (merged.promised, merged.accepted, merged.proposal) == (b(9), b(7), prop(7, base=2))
    assert (merged.committed, merged.decision) == (b(2), prop(2))
    assert set(merged.recent) == {Decision(ZERO, b(2), b(2)), Decision(ZERO, b(1), b(1))}
    assert paxos.merge(merged, EMPTY) is merged


def test_states_round_trip_through_a_row_and_bad_rows_are_refused():
    state = PaxosState(b(9), b(7), prop(7, base=2), b(2), prop(2), (Decision(ZERO, b(2), b(2)),))
    row = paxos.state_row(state)
    assert paxos.state_from_row(row) == state
    assert paxos.state_from_row(row, trusted=False) == state
    assert paxos.state_from_row(paxos.state_row(EMPTY), trusted=False) == EMPTY
    with pytest.raises(ValueError):
        paxos.state_from_row((*row[:4], b"\xc1", *row[5:]), trusted=False)
    with pytest.raises(ValueError):
        paxos.state_from_row((-1, "n1", *row[2:]), trusted=False)


def test_a_decided_proposal_is_stored_once_and_rows_holding_it_twice_still_read():
    decided = PaxosState(b(7), b(7), prop(7, base=2), b(7), prop(7, base=2),
                         (Decision(b(2), b(7), b(7)),))
    row = paxos.state_row(decided)
    assert row[4] == paxos.DECIDED_PROPOSAL and row[7] is not None
    assert paxos.state_from_row(row) == decided
    assert paxos.state_from_row(row, trusted=False) == decided
    both = (*row[:4], row[7], *row[5:])  # as rows were written before
    assert paxos.state_from_row(both) == decided
    with pytest.raises(ValueError):
        paxos.state_from_row((*row[:7], None, row[8]), trusted=False)


def test_ops_round_trip_and_malformed_ones_are_refused():
    op = paxos.parse_op(paxos.accept_op(K, b(5), prop(5, base=3)))
    assert (op.kind, op.key, op.ballot, op.proposal) == (paxos.ACCEPT, K, b(5), prop(5, base=3))
    assert paxos.parse_op(paxos.accept_op(K, b(5), None)).proposal is None
    prepare = paxos.parse_op(paxos.prepare_op(K, b(5), recent=True))
    assert (prepare.ballot, prepare.recent) == (b(5), True)
    assert paxos.parse_op(paxos.commit_op(K, b(5), prop(4))).proposal == prop(4)
    wire = list(rec(5).to_wire())
    for bad in (
        [paxos.PREPARE, K, [5, "n1"]],
        [paxos.PREPARE, b"", [5, "n1", False]],
        [paxos.PREPARE, K, [-1, "n1", False]],
        [paxos.PREPARE, K, [5, "bad node!", False]],
        [paxos.ACCEPT, K, [5, "n1", [["x"], 0, ""]]],
        [paxos.ACCEPT, K, [5, "n1", [wire, 1]]],
        [paxos.COMMIT, K, [5, "n1", None]],
        [paxos.COMMIT, b"other", [5, "n1", [wire, 0, ""]]],
        ["px", K, [5, "n1", False]],
    ):
        with pytest.raises(ValueError):
            paxos.parse_op(bad)


def test_a_promise_reads_back_what_the_replica_sent():
    state = PaxosState(b(9), b(7), prop(7, base=2), b(2), prop(2), (Decision(ZERO, b(2), b(2)),))
    got = Promise.from_wire(paxos.promise_reply(True, state, rec(2)))
    assert got == Promise(True, b(9), b(7), prop(7, base=2), b(2), prop(2), state.recent, rec(2))
    # The decision's record travels once when it is the data; an accepted proposal no
    # newer than the decision stays home; decisions only when asked.
    settled = PaxosState(b(2), b(2), prop(2), b(2), prop(2), state.recent)
    reply = paxos.promise_reply(True, settled, rec(2), recent=False)
    assert reply[5] is None and reply[8][0] is None and reply[9] == []
    assert Promise.from_wire(reply).decision == prop(2)
    empty = Promise.from_wire(paxos.promise_reply(True, EMPTY, None))
    assert (empty.promised, empty.accepted, empty.decision, empty.data) == (ZERO, ZERO, None, None)
    for cut in (reply[:-1], [*reply[:8], [None, 0, ""], *reply[9:-1], None]):
        with pytest.raises(ValueError):
            Promise.from_wire(cut)


def promise(accepted: Version = ZERO, proposal: Proposal | None = None,
            committed: Version = ZERO, decision: Proposal | None = None,
            data: Record | None = None, promised: Version | None = None,
            recent: tuple[Decision, ...] = (), granted: bool = True) -> Promise:
    return Promise(granted, promised or max(accepted, committed), accepted, proposal, committed,
                   decision, recent, data)


def test_reading_finds_an_accepted_proposal_to_finish():
    reading = paxos.read({
        "a": promise(b(5), prop(5, base=2), b(2), prop(2), rec(2)),
        "b": promise(b(2), prop(2), b(2), prop(2), rec(2)),
    })
    assert reading.in_progress and reading.proposal == prop(5, base=2)
    assert reading.current == rec(2) and reading.base == b(2)  # undecided is not data


def test_an_empty_proposal_after_the_decision_leaves_nothing_to_finish():
    reading = paxos.read({"a": promise(b(6), None, b(2), prop(2), rec(2)),
                          "b": promise(b(5), prop(5, base=2), b(2), prop(2), rec(2))})
    assert not reading.in_progress


def test_reading_names_the_replicas_a_decision_missed():
    reading = paxos.read({
        "a": promise(b(5), None, b(5), prop(5, base=2), rec(5)),
        "b": promise(b(2), None, b(2), prop(2), rec(2)),
        "c": promise(b(5), prop(5, base=2), b(2), prop(2), rec(2)),
    })
    assert not reading.in_progress and reading.current == rec(5) and reading.base == b(5)
    assert set(reading.laggards) == {"b", "c"} and reading.behind == ()
    assert not reading.concurrent


def test_reading_names_replicas_behind_a_newer_plain_write():
    plain = rec(9, b"plain", "n2")
    reading = paxos.read({"a": promise(committed=b(5), decision=prop(5), data=plain),
                          "b": promise(committed=b(5), decision=prop(5), data=rec(5))})
    assert reading.current == plain and reading.behind == ("b",) and reading.laggards == ()


def test_a_promise_newer_than_the_last_accept_means_a_concurrent_round():
    quiet = paxos.read({"a": promise(committed=b(5), decision=prop(5), data=rec(5)),
                        "b": promise(committed=b(5), decision=prop(5), data=rec(5))})
    busy = paxos.read({"a": promise(committed=b(5), decision=prop(5), data=rec(5), promised=b(7)),
                       "b": promise(committed=b(5), decision=prop(5), data=rec(5))})
    assert not quiet.concurrent and busy.concurrent
    nothing = paxos.read({"a": promise(), "b": promise()})
    assert nothing.current is None and not nothing.in_progress and not nothing.concurrent


def test_the_fate_of_a_proposal_is_a_fact_of_its_base():
    mine = prop(6, base=5)
    won = promise(committed=b(7), decision=prop(6, base=5), granted=False)
    assert paxos.fate(mine, [won], None) == (DECIDED, Decision(b(5), b(6), b(7)))
    remembered = promise(committed=b(9), decision=prop(9, base=8),
                         recent=(Decision(b(8), b(9), b(9)), Decision(b(5), b(8), b(8))))
    assert paxos.fate(mine, [remembered], b(9)) == (LOST, Decision(b(5), b(8), b(8)))
    still_open = promise(committed=b(5), decision=prop(5))
    assert paxos.fate(mine, [still_open], b(5)) == (OPEN, None)
    assert paxos.fate(mine, [], None) == (OPEN, None)  # no granted quorum: nothing known yet
    moved_on = promise(committed=b(90), decision=prop(90, base=80),
                       recent=(Decision(b(80), b(90), b(90)),))
    assert paxos.fate(mine, [moved_on], b(90)) == (FORGOTTEN, None)
