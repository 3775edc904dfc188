"""The membership controller's rules, one transition at a time, plus a convergence property."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.node.membership import Document, Member, describe
from ringkv.operator.controller import (
    Observed,
    Report,
    alive_nodes,
    cleanup_due,
    next_document,
)


def obs(name: str, alive: bool = True, port: int = 0) -> Observed:
    i = int(name.rsplit("-", 1)[1])
    return Observed(name, f"127.0.0.1:{9000 + i + port}", f"http://127.0.0.1:{8000 + i + port}",
                    alive)


def member(name: str, state: str = "normal") -> Member:
    o = obs(name)
    return Member(name, o.url, o.api_url, state)  # type: ignore[arg-type]


def doc(epoch: int, *members: Member, settled: bool = True, base: Iterable[str] = (),
        rf: int = 3) -> Document:
    return Document(epoch, rf, tuple(members), settled=settled, base=tuple(base))


def reports(epoch: int, *names: str, caught_up: bool = True,
            handoff_done: bool | None = None) -> dict[str, Report]:
    done = caught_up if handoff_done is None else handoff_done
    return {n: Report(n, epoch, caught_up, done) for n in names}


def settled3(epoch: int = 5) -> Document:
    return doc(epoch, member("node-0"), member("node-1"), member("node-2"))


ALL3 = [obs("node-0"), obs("node-1"), obs("node-2")]


# -- a. a fresh document -----------------------------------------------------------------


def test_fresh_document_has_every_alive_node_normal_sorted_and_settled() -> None:
    seen = [obs("node-2"), obs("node-0"), obs("node-1", alive=False)]
    new = next_document(None, seen, {}, rf=3)
    assert new == doc(1, member("node-0"), member("node-2"))
    assert new.settled and new.base == ()


def test_fresh_document_is_seeded_above_the_highest_reported_epoch() -> None:
    new = next_document(None, ALL3, reports(41, "node-0"), rf=2, seed_epoch=41)
    assert new is not None
    assert new.epoch == 42 and new.rf == 2 and new.settled


def test_nothing_alive_publishes_nothing() -> None:
    assert next_document(None, [], {}, rf=3) is None
    assert next_document(None, [obs("node-0", alive=False)], {}, rf=3) is None


# -- b. membership changes ---------------------------------------------------------------


def test_dead_member_is_removed_and_base_is_the_settled_membership() -> None:
    cur = settled3()
    new = next_document(cur, [obs("node-0"), obs("node-1"), obs("node-2", alive=False)],
                        reports(5, "node-0", "node-1"), rf=3)
    assert new == doc(6, member("node-0"), member("node-1"), settled=False,
                      base=("node-0", "node-1", "node-2"))


def test_unobserved_member_is_removed() -> None:
    new = next_document(settled3(), [obs("node-0"), obs("node-1")], {}, rf=3)
    assert new is not None and new.names == ("node-0", "node-1")


def test_new_node_joins_as_joining() -> None:
    new = next_document(settled3(), [*ALL3, obs("node-3")], {}, rf=3)
    assert new == doc(6, member("node-0"), member("node-1"), member("node-2"),
                      member("node-3", "joining"), settled=False,
                      base=("node-0", "node-1", "node-2"))


def test_removal_and_addition_collapse_into_one_document() -> None:
    new = next_document(settled3(), [obs("node-0"), obs("node-1"), obs("node-3")], {}, rf=3)
    assert new == doc(6, member("node-0"), member("node-1"), member("node-3", "joining"),
                      settled=False, base=("node-0", "node-1", "node-2"))
    assert next_document(new, [obs("node-0"), obs("node-1"), obs("node-3")], {}, rf=3) is None


def test_changes_before_a_settle_keep_the_base_and_move_the_target() -> None:
    cur = doc(6, member("node-0"), member("node-1"), settled=False,
              base=("node-0", "node-1", "node-2"))
    new = next_document(cur, [obs("node-0"), obs("node-3")], {}, rf=3)
    assert new == doc(7, member("node-0"), member("node-3", "joining"), settled=False,
                      base=("node-0", "node-1", "node-2"))


def test_removed_node_returning_before_settle_rejoins_as_joining() -> None:
    removed = next_document(settled3(), ALL3[:2], {}, rf=3)
    assert removed is not None
    back = next_document(removed, ALL3, {}, rf=3)
    assert back == doc(7, member("node-0"), member("node-1"), member("node-2", "joining"),
                       settled=False, base=("node-0", "node-1", "node-2"))


def test_base_may_keep_a_dead_member_whose_data_must_be_accounted_for() -> None:
    cur = doc(6, member("node-0"), member("node-1"), settled=False,
              base=("node-0", "node-1", "node-2"))
    # node-2 is gone for good; settling the survivors is what drops it from the base.
    new = next_document(cur, ALL3[:2], reports(6, "node-0", "node-1"), rf=3)
    assert new == doc(7, member("node-0"), member("node-1"))


def test_new_address_is_taken_in_the_same_step_as_a_membership_change() -> None:
    moved = obs("node-1", port=100)
    new = next_document(settled3(), [obs("node-0"), moved], {}, rf=3)
    assert new is not None
    m1 = new.member("node-1")
    assert m1 is not None and (m1.url, m1.api_url) == (moved.url, moved.api_url)
    assert new.epoch == 6 and not new.settled


def test_address_only_change_bumps_the_epoch_but_moves_no_range() -> None:
    moved = obs("node-1", port=100)
    new = next_document(settled3(), [obs("node-0"), moved, obs("node-2")], {}, rf=3)
    assert new is not None and new.epoch == 6
    assert new.settled and new.base == ()
    assert new.member("node-1") == Member("node-1", moved.url, moved.api_url, "normal")
    unsettled = doc(6, member("node-0"), member("node-1", "joining"), settled=False,
                    base=("node-0", "node-2"))
    new = next_document(unsettled, [obs("node-0"), moved], {}, rf=3)
    assert new is not None and not new.settled and new.base == ("node-0", "node-2")
    assert new.member("node-1") == Member("node-1", moved.url, moved.api_url, "joining")


def test_existing_document_keeps_its_own_rf() -> None:
    new = next_document(settled3(), ALL3[:2], {}, rf=5)
    assert new is not None and new.rf == 3


def test_everything_dead_keeps_the_last_document() -> None:
    assert next_document(settled3(), [obs(n.name, alive=False) for n in ALL3], {}, rf=3) is None
    assert next_document(settled3(), [], {}, rf=3) is None


def test_duplicate_observations_prefer_the_alive_one() -> None:
    seen = [obs("node-1", port=100), obs("node-1", alive=False), obs("node-1", port=200)]
    assert alive_nodes(seen) == {"node-1": obs("node-1", port=200)}
    assert alive_nodes([obs("node-1", alive=False)]) == {}


def test_membership_change_has_priority_over_promotion() -> None:
    cur = doc(6, member("node-0"), member("node-1"), member("node-2", "joining"),
              settled=False, base=("node-0", "node-1"))
    new = next_document(cur, [obs("node-0"), obs("node-2")],
                        reports(6, "node-0", "node-2"), rf=3)
    assert new is not None and new.names == ("node-0", "node-2")
    assert new.member("node-2") == member("node-2", "joining")


# -- c. promotion ------------------------------------------------------------------------


def joining_doc() -> Document:
    return doc(6, member("node-0"), member("node-1"), member("node-2"),
               member("node-3", "joining"), settled=False,
               base=("node-0", "node-1", "node-2"))


ALL4 = [*ALL3, obs("node-3")]


def test_caught_up_joining_member_is_promoted() -> None:
    new = next_document(joining_doc(), ALL4, reports(6, "node-3"), rf=3)
    assert new == doc(7, member("node-0"), member("node-1"), member("node-2"),
                      member("node-3"), settled=False, base=("node-0", "node-1", "node-2"))


def test_promotion_needs_a_caught_up_report_for_the_current_epoch() -> None:
    cur = joining_doc()
    assert next_document(cur, ALL4, reports(5, "node-3"), rf=3) is None
    assert next_document(cur, ALL4, reports(6, "node-3", caught_up=False), rf=3) is None
    assert next_document(cur, ALL4, {}, rf=3) is None
    # A report filed under another node's name speaks for nobody.
    assert next_document(cur, ALL4, {"node-3": Report("node-9", 6, True, True)}, rf=3) is None


def test_several_caught_up_members_are_promoted_together() -> None:
    cur = doc(6, member("node-0"), member("node-1", "joining"), member("node-2", "joining"),
              settled=False, base=("node-0",))
    new = next_document(cur, ALL3, reports(6, "node-1", "node-2"), rf=3)
    assert new is not None and new.epoch == 7
    assert {m.state for m in new.members} == {"normal"} and new.base == ("node-0",)


# -- d. settle ---------------------------------------------------------------------------


def unsettled_doc() -> Document:
    return doc(7, member("node-0"), member("node-1"), member("node-2"), member("node-3"),
               settled=False, base=("node-0", "node-1", "node-2"))


def test_settles_once_every_member_reports_handoff_done_for_the_epoch() -> None:
    new = next_document(unsettled_doc(), ALL4, reports(7, *(o.name for o in ALL4)), rf=3)
    assert new == doc(8, member("node-0"), member("node-1"), member("node-2"),
                      member("node-3"))


def test_does_not_settle_until_every_member_is_done() -> None:
    cur = unsettled_doc()
    names = [o.name for o in ALL4]
    missing = reports(7, *names[:3])
    lagging = {**reports(7, *names), "node-2": Report("node-2", 6, True, True)}
    streaming = {**reports(7, *names), "node-2": Report("node-2", 7, True, False)}
    pulling = {**reports(7, *names), "node-2": Report("node-2", 7, False, True)}
    for rs in (missing, lagging, streaming, pulling):
        assert next_document(cur, ALL4, rs, rf=3) is None


def test_does_not_settle_while_a_member_is_joining() -> None:
    cur = joining_doc()
    rs = {**reports(6, "node-0", "node-1", "node-2"),
          "node-3": Report("node-3", 6, False, False)}
    assert next_document(cur, ALL4, rs, rf=3) is None


def test_reports_from_non_members_are_ignored() -> None:
    cur = doc(7, member("node-0"), member("node-1"), settled=False, base=("node-0",))
    rs = {**reports(7, "node-0"), **reports(7, "node-9")}
    assert next_document(cur, ALL3[:2], rs, rf=3) is None


def test_settled_document_with_everyone_caught_up_is_final() -> None:
    assert next_document(settled3(), ALL3, reports(5, "node-0", "node-1", "node-2"),
                         rf=3) is None


# -- epochs never go backwards -------------------------------------------------------------


def test_store_behind_the_nodes_is_reissued_above_their_epoch() -> None:
    cur = settled3(5)
    new = next_document(cur, ALL3, reports(9, "node-0"), rf=3, seed_epoch=9)
    assert new == settled3(10)
    assert next_document(new, ALL3, reports(9, "node-0"), rf=3, seed_epoch=9) is None


def test_idempotent_result_as_current_with_the_same_inputs() -> None:
    cases: list[tuple[Document, Sequence[Observed], Mapping[str, Report]]] = [
        (settled3(), ALL3[:2], {}),
        (settled3(), ALL4, {}),
        (joining_doc(), ALL4, reports(6, "node-3")),
        (unsettled_doc(), ALL4, reports(7, *(o.name for o in ALL4))),
    ]
    for cur, seen, rs in cases:
        new = next_document(cur, seen, rs, rf=3)
        assert new is not None and new.epoch == cur.epoch + 1
        # The reports are now for an older epoch: they cannot drive another step.
        assert next_document(new, seen, rs, rf=3) is None


def test_flapping_node_converges_when_it_stays_up() -> None:
    cur: Document = settled3()
    epochs = [cur.epoch]
    for alive in (False, True, False, True, True):
        seen = [obs("node-0"), obs("node-1"), obs("node-2", alive=alive)]
        new = next_document(cur, seen, {}, rf=3)
        if new is not None:
            epochs.append(new.epoch)
            cur = new
    assert epochs == sorted(set(epochs))
    assert cur.member("node-2") == member("node-2", "joining")
    assert cur.base == ("node-0", "node-1", "node-2")
    final = converge(cur, ALL3)
    assert final == settled3(final.epoch)


def converge(cur: Document, seen: Sequence[Observed], limit: int = 20) -> Document:
    """Step with every live member instantly adopting and catching up, until nothing moves."""
    alive = alive_nodes(seen)
    for _ in range(limit):
        rs = reports(cur.epoch, *alive)
        new = next_document(cur, seen, rs, rf=cur.rf)
        if new is None:
            return cur
        assert new.epoch > cur.epoch
        cur = new
    raise AssertionError(f"no convergence after {limit} steps: {cur}")


def test_full_join_runs_change_promote_settle() -> None:
    cur = settled3()
    steps = []
    for _ in range(5):
        rs = reports(cur.epoch, *(o.name for o in ALL4))
        new = next_document(cur, ALL4, rs, rf=3)
        if new is None:
            break
        steps.append(describe(cur, new))
        cur = new
    assert steps == ["epoch 6: node-3 joined (joining)", "epoch 7: node-3 promoted to normal",
                     "epoch 8: settled"]
    assert cur == doc(8, *(member(o.name) for o in ALL4))


# -- cleanup_due ---------------------------------------------------------------------------


def test_cleanup_due_once_every_member_acknowledged_the_settled_epoch() -> None:
    cur = settled3(8)
    assert cleanup_due(cur, reports(8, "node-0", "node-1", "node-2"))
    assert cleanup_due(cur, {**reports(8, "node-0", "node-1"), **reports(9, "node-2")})
    assert not cleanup_due(cur, {**reports(8, "node-0", "node-1"), **reports(7, "node-2")})
    assert not cleanup_due(cur, reports(8, "node-0", "node-1", "node-9"))
    assert not cleanup_due(unsettled_doc(), reports(7, *(o.name for o in ALL4)))


# -- describe ------------------------------------------------------------------------------


def test_describe_names_each_change() -> None:
    first = next_document(None, ALL3, {}, rf=3)
    assert first is not None
    assert describe(None, first) == "epoch 1: cluster formed with node-0, node-1, node-2 (rf=3)"
    swapped = next_document(settled3(), [obs("node-0"), obs("node-1"), obs("node-3")], {}, rf=3)
    assert swapped is not None
    assert describe(settled3(), swapped) == "epoch 6: node-2 removed, node-3 joined (joining)"
    moved = next_document(settled3(), [obs("node-0"), obs("node-1", port=100), obs("node-2")],
                          {}, rf=3)
    assert moved is not None
    assert describe(settled3(), moved) == "epoch 6: node-1 moved to 127.0.0.1:9101"
    assert describe(settled3(5), settled3(10)) == "epoch 10: re-issued (was epoch 5)"


# -- property: any sequence of observations converges --------------------------------------

NAMES = [f"node-{i}" for i in range(5)]


@settings(max_examples=300, deadline=None)
@given(
    rounds=st.lists(
        st.tuples(
            st.frozensets(st.sampled_from(NAMES)),  # who is alive this round
            st.integers(0, 1),  # address generation (pods rescheduled)
            st.lists(st.booleans(), min_size=len(NAMES), max_size=len(NAMES)),  # adopted
            st.lists(st.booleans(), min_size=len(NAMES), max_size=len(NAMES)),  # caught up
            st.integers(1, 3),  # controller steps this round
        ),
        min_size=1,
        max_size=15,
    ),
    final=st.frozensets(st.sampled_from(NAMES), min_size=1),
    rf=st.integers(1, 3),
)
def test_any_observation_sequence_converges(
    rounds: list[tuple[frozenset[str], int, list[bool], list[bool], int]],
    final: frozenset[str],
    rf: int,
) -> None:
    """Epochs strictly increase, the base is only ever the last settled membership, no
    document is empty, and once the observations hold still the controller settles on
    exactly the alive nodes, all normal."""
    cur: Document | None = None
    last_settled: tuple[str, ...] = ()

    def check(prev: Document | None, new: Document, alive: set[str]) -> None:
        nonlocal last_settled
        assert prev is None or new.epoch > prev.epoch
        assert new.members and set(new.names) <= alive
        assert list(new.names) == sorted(new.names)
        if new.settled:
            assert new.base == () and {m.state for m in new.members} == {"normal"}
            last_settled = new.names
        else:
            assert new.base == last_settled
        assert new.rf == (rf if prev is None else prev.rf)

    for alive_set, gen, adopted, caught, steps in rounds:
        seen = [obs(n, alive=n in alive_set, port=100 * gen) for n in NAMES]
        rs = {}
        if cur is not None:
            for i, n in enumerate(sorted(alive_set)):
                epoch = cur.epoch if adopted[i] else cur.epoch - 1
                rs[n] = Report(n, epoch, caught[i], caught[i])
        for _ in range(steps):
            new = next_document(cur, seen, rs, rf=rf)
            if new is None:
                break
            check(cur, new, set(alive_set))
            cur = new

    seen = [obs(n, alive=n in final) for n in NAMES]
    for _ in range(10):
        rs = reports(cur.epoch, *final) if cur is not None else {}
        new = next_document(cur, seen, rs, rf=rf)
        if new is None:
            break
        check(cur, new, set(final))
        cur = new
    assert cur is not None
    assert next_document(cur, seen, reports(cur.epoch, *final), rf=rf) is None
    assert cur.settled and cur.names == tuple(sorted(final))
    assert {m.state for m in cur.members} == {"normal"}
    assert cleanup_due(cur, reports(cur.epoch, *final))
