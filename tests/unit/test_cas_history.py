"""The cas workload's checker (``history.check(..., linearizable=True)``) on recorded
operations: it must reject the histories no atomic register explains (a stale read, two
compare-and-sets won from one version, a lost update, a 412 without a reason) and accept
the tricky valid ones (concurrent operations, timed-out operations that did or did not
take effect). A property test drives a simulated atomic register with concurrent clients
and checks that every history it produces is accepted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.client import history
from ringkv.client.history import Kind, Op, Outcome, Verdict, check

K = "k"


def read(value: str | None, version: str | None, invoke: float, complete: float, *,
         process: int = 9, final: bool = False, outcome: Outcome = "ok") -> Op:
    return Op(process, "read", K, value, version, invoke, complete, outcome, final)


def write(value: str, version: str | None, invoke: float, complete: float, *,
          outcome: Outcome = "ok", process: int = 0) -> Op:
    error = {"ok": None, "unknown": "timeout", "fail": "bad_request"}[outcome]
    return Op(process, "write", K, value, version, invoke, complete, outcome, error=error)


def cas(expected: str | None, value: str, version: str | None, invoke: float, complete: float,
        *, outcome: Outcome = "ok", process: int = 1) -> Op:
    """ok with a version; "fail" is a 412; "unknown" a 503 outcome_unknown."""
    error = {"ok": None, "unknown": "outcome_unknown", "fail": "precondition_failed"}[outcome]
    return Op(process, "cas", K, value, version, invoke, complete, outcome, expected=expected,
              error=error)


def verdict(*ops: Op) -> Verdict:
    return check(ops, linearizable=True)


def kinds(v: Verdict) -> set[str]:
    return {x.kind for x in v.violations}


# ------------------------------------------------------------------- rejected


def test_a_stale_read_after_a_completed_write_is_rejected():
    v = verdict(cas(None, "a", "1.n", 0, 1), write("b", "2.n", 2, 3), read("a", "1.n", 4, 5))
    assert "not-linearizable" in kinds(v)
    found = next(x for x in v.violations if x.kind == "not-linearizable")
    assert found.ops[-1] == read("a", "1.n", 4, 5)  # the read no order can place
    assert "left the register 'b'" in found.message


def test_two_compare_and_sets_won_from_one_version_are_rejected():
    # Versions only grow, so the quorum rules see nothing wrong: only the search can tell.
    ops = [write("a", "1.n", 0, 1), cas("a", "b", "2.n", 2, 5, process=1),
           cas("a", "c", "3.n", 3, 6, process=2)]
    assert check(ops).valid
    assert kinds(verdict(*ops)) == {"not-linearizable"}
    # One of them refused: fine, in either order.
    assert verdict(ops[0], ops[1], cas("a", "c", None, 3, 6, outcome="fail", process=2)).valid
    assert verdict(ops[0], cas("a", "b", None, 2, 5, outcome="fail"), ops[2]).valid


def test_a_lost_update_is_rejected():
    # c compared with a after b had replaced it and been read: b's update is lost.
    ops = [write("a", "1.n", 0, 1), cas("a", "b", "2.n", 2, 3), read("b", "2.n", 4, 5),
           cas("a", "c", "3.n", 6, 7, process=2)]
    assert check(ops).valid
    assert kinds(verdict(*ops)) == {"not-linearizable"}


def test_a_refusal_without_a_reason_is_rejected():
    ops = [write("a", "1.n", 0, 1), cas("a", "b", None, 2, 3, outcome="fail"), read("a", "1.n", 4, 5)]
    assert kinds(verdict(*ops)) == {"not-linearizable"}
    # Refused while another writer may have come between: fine.
    assert verdict(*ops[:2], write("x", "2.n", 2.5, 6), read("x", "2.n", 7, 8)).valid


def test_a_create_over_an_existing_key_is_rejected():
    ops = [cas(None, "a", "1.n", 0, 1), cas(None, "b", "2.n", 2, 3, process=2)]
    assert kinds(verdict(*ops)) == {"not-linearizable"}


def test_the_value_of_a_refused_cas_never_appears():
    ops = [write("a", "1.n", 0, 1), cas("x", "b", None, 2, 3, outcome="fail"), read("b", "2.n", 4, 5)]
    assert {"not-linearizable", "aborted-read"} <= kinds(verdict(*ops))


def test_a_final_read_settles_what_unknown_operations_did():
    ops = [cas(None, "a", "1.n", 0, 1), cas("a", "b", None, 2, 3, outcome="unknown"),
           read("a", "1.n", 4, 5), read("b", "2.n", 6, 7, final=True)]
    assert verdict(*ops).valid  # b took effect after the read: late, but allowed
    # and it cannot have taken effect before a read that saw a, then vanished
    ops = [cas(None, "a", "1.n", 0, 1), cas("a", "b", None, 2, 3, outcome="unknown"),
           read("b", "2.n", 4, 5), read("a", "1.n", 6, 7, final=True)]
    assert "not-linearizable" in kinds(verdict(*ops))


# ------------------------------------------------------------------- accepted


def test_concurrent_operations_linearize_in_any_order_that_fits():
    ops = [write("a", "1.n", 0, 1),
           cas("a", "b", "2.n", 2, 10, process=1),
           cas("a", "c", None, 3, 11, outcome="fail", process=2),  # lost to b
           read("a", "1.n", 4, 5, process=3),  # before b took effect
           read("b", "2.n", 6, 7, process=4),  # after
           write("d", "3.n", 8, 12, process=5),
           read("b", "2.n", 9, 13, process=6),  # d not yet
           read("d", "3.n", 14, 15, final=True)]
    assert verdict(*ops).valid


def test_an_unknown_cas_that_took_effect_is_accepted():
    ops = [write("a", "1.n", 0, 1), cas("a", "b", None, 2, 3, outcome="unknown"),
           read("b", "2.n", 4, 5), cas("b", "c", "3.n", 6, 7), read("c", "3.n", 8, 9, final=True)]
    assert verdict(*ops).valid


def test_an_unknown_cas_that_did_not_take_effect_is_accepted():
    ops = [write("a", "1.n", 0, 1), cas("a", "b", None, 2, 3, outcome="unknown"),
           read("a", "1.n", 4, 5), cas("a", "c", "3.n", 6, 7), read("c", "3.n", 8, 9, final=True)]
    assert verdict(*ops).valid


def test_an_unknown_cas_may_find_its_condition_false_whenever_it_lands():
    ops = [write("a", "1.n", 0, 1), cas("a", "b", None, 2, 3, outcome="unknown"),
           write("c", "2.n", 4, 5), read("c", "2.n", 6, 7, final=True)]
    assert verdict(*ops).valid


def test_reads_without_an_answer_and_failed_writes_constrain_nothing():
    ops = [write("a", "1.n", 0, 1), read(None, None, 2, 3, outcome="unknown"),
           write("z", None, 2, 3, outcome="fail"), read("a", "1.n", 4, 5)]
    assert verdict(*ops).valid


# -------------------------------------------------------------------- reporting


def test_a_violation_names_its_sub_history_and_reaches_the_summary():
    noise = [read(None, None, i, i + 0.5, process=5) for i in range(-40, -20)]
    ops = [*noise, write("a", "1.n", 0, 1), cas("a", "b", "2.n", 2, 3), read("b", "2.n", 4, 5),
           cas("a", "c", "3.n", 6, 7, process=2)]
    v = verdict(*ops)
    (found,) = v.violations
    assert found.ops[-1] == ops[-1] and ops[-2] in found.ops
    assert len(found.ops) <= history.CONTEXT_OPS + 1  # the noise long before is left out
    assert "cas" in v.summary() and "1 refused" not in v.summary()
    assert json.loads(json.dumps(found.ops[-1].to_json()))["expected"] == "a"
    assert Op.from_json(found.ops[-1].to_json()) == found.ops[-1]


def test_a_412_is_an_answer_for_availability():
    ops = [cas("a", "b", "2.n", 0, 1), cas("a", "c", None, 0, 1, outcome="fail"),
           cas("a", "d", None, 0, 1, outcome="unknown"),
           Op(2, "cas", K, "e", None, 0, 1, "fail", expected="a", error="quorum_unavailable")]
    assert history.availability(ops, [(0, 1)]) == (2, 4)


def test_a_search_that_gives_up_never_calls_the_history_valid(monkeypatch: pytest.MonkeyPatch):
    ops = [write(f"w{i}", None, i, i + 0.5, outcome="unknown") for i in range(12)]
    ops.append(read("w3", "4.n", 20, 21))
    assert verdict(*ops).valid
    monkeypatch.setattr(history, "SEARCH_BUDGET", 5)
    assert kinds(verdict(*ops)) == {"unchecked"}


# ------------------------------------------------------------ generated histories

# One action of the simulation: (client, choice). An idle client starts an operation
# (choice picks read, write or cas, and whether the cas compares with what the client
# last saw or with the current state); a busy one first takes effect (atomically, at that
# instant) and then answers, unless choice % 7 == 0: a write or cas left unanswered (a
# timeout). Operations still running at the end never answer; some never take effect.
actions = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 999)), min_size=1, max_size=60)


@dataclass
class Running:
    kind: Kind
    invoke: float
    value: str | None
    expected: str | None
    effect: bool = False  # took effect
    version: str | None = None
    refused: bool = False

    def op(self, client: int, complete: float, outcome: Outcome) -> Op:
        ok = outcome == "ok"
        error = None if ok else "precondition_failed" if outcome == "fail" else "timeout"
        return Op(client, self.kind, K, self.value, self.version if ok else None, self.invoke,
                  complete, outcome, expected=self.expected, error=error)


def simulate(script: list[tuple[int, int]]) -> list[Op]:
    value: str | None = None
    version: str | None = None
    serial = 0
    seen: dict[int, str | None] = {}
    running: dict[int, Running] = {}
    ops: list[Op] = []
    for t, (client, choice) in enumerate(script):
        op = running.get(client)
        if op is None:
            kind: Kind = ("read", "write", "cas", "cas")[choice % 4]
            expected = seen.get(client) if choice % 3 else value
            running[client] = Running(kind, t, f"{client}-{t}", expected if kind == "cas" else None)
        elif not op.effect:
            op.effect = True
            if op.kind == "read":
                op.value, op.version = value, version
            elif op.kind == "write" or value == op.expected:
                serial += 1
                value, version = op.value, f"{serial}.n"
                op.version = version
            else:
                op.refused = True
        else:
            del running[client]
            if choice % 7 == 0 and op.kind != "read":
                ops.append(op.op(client, t + 0.5, "unknown"))
            else:
                ops.append(op.op(client, t + 0.5, "fail" if op.refused else "ok"))
                if not op.refused:
                    seen[client] = op.value
    end = len(script)
    ops += [op.op(client, end + 1.0, "unknown") for client, op in running.items() if op.kind != "read"]
    ops.append(Op(-1, "read", K, value, version, end + 2.0, end + 3.0, "ok", final=True))
    return ops


@settings(max_examples=300, deadline=None)
@given(actions)
def test_histories_of_an_atomic_register_are_accepted(script: list[tuple[int, int]]):
    v = check(simulate(script), linearizable=True)
    assert v.valid, v.summary()
