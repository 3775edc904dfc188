"""The register linearizability search: it must find orders that exist, and reject
histories no order explains (a checker that cannot fail proves nothing)."""

from __future__ import annotations

import random

from ringkv.client.linearizable import INFINITY, Step, check


def read(value: str | None, start: float, end: float) -> Step:
    return Step("read", value, start, end)


def write(value: str, start: float, end: float = INFINITY) -> Step:
    return Step("write", value, start, end)


def cas(expected: str | None, value: str, start: float, end: float = INFINITY,
        refused: bool = False) -> Step:
    return Step("cas", value, start, end, expected, refused)


def test_sequential_histories():
    assert check([write("a", 0, 1), read("a", 2, 3), cas("a", "b", 4, 5), read("b", 6, 7)]).ok
    assert check([read(None, 0, 1), cas(None, "a", 2, 3), cas(None, "x", 4, 5, refused=True)]).ok


def test_a_stale_read_is_rejected_and_named():
    result = check([write("a", 0, 1), write("b", 2, 3), read("a", 4, 5)])
    assert result.ok is False
    assert result.stuck == read("a", 4, 5) and result.state == "b"


def test_two_winning_creates_are_rejected():
    # Both creates answered success while overlapping: only one can have found the key absent.
    assert check([cas(None, "a", 0, 10), cas(None, "b", 1, 11)]).ok is False
    # One of them refused is fine, in either order.
    assert check([cas(None, "a", 0, 10), cas(None, "b", 1, 11, refused=True)]).ok


def test_a_refusal_must_have_a_reason():
    # The key held "a" the whole time the cas compared with "a": the 412 was wrong.
    history = [write("a", 0, 1), cas("a", "b", 2, 3, refused=True), read("a", 4, 5)]
    assert check(history).ok is False


def test_lost_update_of_a_counter_is_rejected():
    # Two increments read 0 and both applied from the same base: the second one lost.
    history = [cas(None, "0", 0, 1), read("0", 2, 3), read("0", 2, 3),
               cas("0", "1a", 4, 6), cas("0", "1b", 4, 6)]
    assert check(history).ok is False


def test_concurrent_operations_may_take_effect_in_either_order():
    history = [write("a", 0, 10), write("b", 1, 11), read("a", 12, 13)]
    assert check(history).ok  # b before a
    assert check([*history, read("b", 14, 15)]).ok is False  # a value never comes back


def test_an_unknown_write_may_take_effect_late_or_never():
    late = [write("a", 0, 1), write("x", 2), read("a", 3, 4), read("x", 5, 6)]
    assert check(late).ok
    never = [write("a", 0, 1), write("x", 2), read("a", 3, 4), read("a", 5, 6)]
    assert check(never).ok
    # but not before it was invoked
    early = [write("a", 0, 1), read("x", 2, 3), write("x", 4)]
    assert check(early).ok is False


def test_an_unknown_cas_may_have_found_its_condition_false():
    history = [write("a", 0, 1), cas("a", "b", 2), read("a", 3, 4), write("c", 5, 6),
               read("c", 7, 8)]
    assert check(history).ok


def test_an_observed_unknown_write_took_effect_before_its_first_observer():
    history = [write("a", 0, 1), write("x", 2), read("x", 3, 4), read("a", 5, 6)]
    assert check(history).ok is False  # x was read, so it happened by 4: a cannot be back


def test_a_concurrent_history_is_checked_within_budget():
    """A register driven by simulated clients, each op atomic at a random point inside its
    interval (some never answered): linearizable by construction; corrupting one read
    breaks it."""
    rng = random.Random(7)
    state: str | None = None
    steps: list[Step] = []
    t = 0.0
    for i in range(300):
        t += rng.random()
        start, end = t - rng.random() * 3, t + rng.random() * 3
        kind = rng.choice(("read", "write", "cas"))
        if kind == "read":
            steps.append(read(state, start, end))
        elif kind == "write":
            state = f"w{i}"
            steps.append(write(state, start, end if rng.random() > 0.05 else INFINITY))
        else:
            expected = state if rng.random() < 0.7 else "nope"
            applied = expected == state
            steps.append(cas(expected, f"c{i}", start, end, refused=not applied))
            if applied:
                state = f"c{i}"
    result = check(steps)
    assert result.ok, result
    reads = [i for i, s in enumerate(steps) if s.kind == "read" and s.value is not None]
    victim = reads[len(reads) // 2]
    steps[victim] = read("never-written", steps[victim].invoke, steps[victim].complete)
    assert check(steps).ok is False
