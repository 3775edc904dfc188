"""Linearizability of one key's history as a register with read, write and compare-and-set:
the Wing-Gong search with Lowe's memoisation (as Knossos and Porcupine do it).

Pure; :mod:`ringkv.client.history` splits a history by key and reports what this finds
(``ringkv check --workload cas``).

The register holds a value or None (absent). Every written value is unique, so a value
names its write, and a compare-and-set by version is a compare-and-set by value.

* a read that answered returns the state at some point between its invocation and its
  completion;
* a write (ok or unknown) sets the state;
* a cas that applied found the state equal to its expected value and set its own; a cas
  refused with 412 found the state different from its expected value, and set nothing;
* an operation whose outcome is unknown (a timeout, a dropped connection, a 503 after it
  may have reached replicas) took effect at some point after its invocation, or never:
  it completes "at infinity", and when linearized it may find its condition false;
* an operation that definitely did not take effect, and a read without an answer,
  constrain nothing and are left out.

The search places operations one at a time in an order that respects real time (an
operation may go first only if it was invoked before every placed-later operation
completed) and the register's rules, backtracking on a dead end; a (set of placed
operations, state) pair already explored is not explored again. It is exponential in the
worst case, so it gives up after `budget` steps and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

Kind = Literal["read", "write", "cas"]
INFINITY = float("inf")


@dataclass(frozen=True, slots=True)
class Step:
    """One operation as the search sees it."""

    kind: Kind
    value: str | None  # read: the value seen (None: absent); write and cas: the value set
    invoke: float
    complete: float  # INFINITY when the outcome is unknown
    expected: str | None = None  # cas: the value it compared with (None: absent)
    refused: bool = False  # cas: it answered 412 (the state was not `expected`)

    @property
    def unknown(self) -> bool:
        return self.complete == INFINITY

    def apply(self, state: str | None) -> tuple[bool, str | None]:
        """Whether the operation fits the state, and the state after it."""
        if self.kind == "read":
            return state == self.value, state
        if self.kind == "write":
            return True, self.value
        if self.refused:
            return state != self.expected, state
        if state == self.expected:
            return True, self.value
        return self.unknown, state  # an unknown cas may have found its condition false


@dataclass(frozen=True)
class Result:
    """`ok` None: the search gave up (budget spent). On failure, `stuck` is the operation
    no order could place in time (`index`: its position in the steps checked), `state`
    the register just before, and `placed` how many operations the longest order placed."""

    ok: bool | None
    steps: int
    stuck: Step | None = None
    state: str | None = None
    placed: int = 0
    index: int | None = None


class _Entry:
    """A call or return event in the doubly linked list the search edits in place."""

    __slots__ = ("index", "match", "next", "prev", "step")

    def __init__(self, step: Step | None, index: int) -> None:
        self.step = step
        self.index = index
        self.match: _Entry | None = None  # a call's return event
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def tighten(steps: Sequence[Step]) -> list[Step]:
    """An unknown write or cas whose value was observed (read, or compared with by a cas
    that applied) did take effect, before the earliest observer completed: give it that
    completion. It then leaves the set of operations that may go anywhere later, which is
    what makes the search exponential."""
    seen: dict[str | None, float] = {}
    for step in steps:
        observed = step.value if step.kind == "read" else (
            step.expected if step.kind == "cas" and not step.refused and not step.unknown
            else None)
        if observed is not None:
            seen[observed] = min(seen.get(observed, INFINITY), step.complete)
    return [replace(s, complete=seen[s.value])
            if s.unknown and s.kind != "read" and s.value in seen else s for s in steps]


def check(steps: Sequence[Step], budget: int = 2_000_000) -> Result:
    """Search for a linearization of one key's history, the register starting absent."""
    steps = tighten(steps)
    head = _Entry(None, -1)
    events: list[tuple[float, int, _Entry]] = []
    for i, step in enumerate(steps):
        call, ret = _Entry(step, i), _Entry(None, i)
        call.match = ret
        # At equal times a call sorts before a return: touching operations count as
        # concurrent, so clock granularity can never invent a violation.
        events.append((step.invoke, 0, call))
        events.append((step.complete, 1, ret))
    events.sort(key=lambda e: (e[0], e[1]))
    last = head
    for _, _, event in events:
        last.next, event.prev, last = event, last, event

    def lift(call: _Entry) -> None:
        for entry in (call, call.match):
            assert entry is not None and entry.prev is not None
            entry.prev.next = entry.next
            if entry.next is not None:
                entry.next.prev = entry.prev

    def unlift(call: _Entry) -> None:
        for entry in (call.match, call):
            assert entry is not None and entry.prev is not None
            entry.prev.next = entry
            if entry.next is not None:
                entry.next.prev = entry

    state: str | None = None
    placed = 0  # bit i: operation i is placed
    seen: set[tuple[int, str | None]] = set()
    stack: list[tuple[_Entry, str | None]] = []
    best = Result(False, 0)
    entry: _Entry | None = head.next
    count = 0
    while head.next is not None:
        count += 1
        if count > budget:
            return Result(None, count)
        assert entry is not None
        if entry.step is not None:  # a call: try to place it now
            fits, after = entry.step.apply(state)
            if fits:
                key = (placed | 1 << entry.index, after)
                if key not in seen:
                    seen.add(key)
                    stack.append((entry, state))
                    state, placed = after, key[0]
                    lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
            continue
        # A return whose call is not placed: every order from here is too late for it.
        if len(stack) >= best.placed:
            best = Result(False, 0, steps[entry.index], state, len(stack), entry.index)
        if not stack:
            return replace(best, steps=count)
        call, state = stack.pop()
        placed &= ~(1 << call.index)
        unlift(call)
        entry = call.next
    return Result(True, count)
