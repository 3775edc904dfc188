"""The membership controller's rules, one transition at a time, plus two properties: any
sequence of observations converges, and no settled document ever lacks a copy of data that
still exists (the reinstall that settled a one-member cluster on 4 of 5 members' data)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.node.membership import Document, Member, View, describe, needed
from ringkv.node.rebalance import catch_up_work
from ringkv.node.ring import MAX_TOKEN
from ringkv.operator.controller import (
    Observed,
    Policy,
    Report,
    alive_nodes,
    cleanup_due,
    next_document,
    removal_safe,
    waiting,
)

POLICY = Policy(rf=3, vnodes=16, down_grace=60.0)


def obs(name: str, alive: bool = True, port: int = 0, expected: bool = True,
        forced: bool = False) -> Observed:
    i = int(name.rsplit("-", 1)[1])
    return Observed(name, f"127.0.0.1:{9000 + i + port}", f"http://127.0.0.1:{8000 + i + port}",
                    alive, expected, forced)


def member(name: str, state: str = "normal", data_id: str | None = None) -> Member:
    o = obs(name)
    return Member(name, o.url, o.api_url, state, f"d-{name}" if data_id is None else data_id)  # type: ignore[arg-type]


def doc(epoch: int, *members: Member, settled: bool = True, base: Iterable[str] = (),
        rf: int = 3) -> Document:
    return Document(epoch, rf, tuple(members), settled=settled, base=tuple(base))


def reports(epoch: int, *names: str, caught_up: bool = True) -> dict[str, Report]:
    return {n: Report(n, epoch, caught_up, data_id=f"d-{n}") for n in names}


def step(cur: Document | None, seen: Sequence[Observed], rs: Mapping[str, Report] | None = None,
         policy: Policy = POLICY, absent: Mapping[str, float] | None = None,
         seed_epoch: int = 0) -> Document | None:
    return next_document(cur, seen, rs or {}, policy, seed_epoch, absent)


def cluster(epoch: int, names: Iterable[str]) -> Document:
    return doc(epoch, *(member(n) for n in names))


def names(n: int) -> list[str]:
    return [f"node-{i}" for i in range(n)]


N5 = names(5)
ALL5 = [obs(n) for n in N5]


def settled5(epoch: int = 5) -> Document:
    return cluster(epoch, N5)


def without(dead: Iterable[str], seen: Sequence[Observed] = ALL5) -> list[Observed]:
    gone = set(dead)
    return [obs(o.name, alive=False) if o.name in gone else o for o in seen]


# -- a fresh document ---------------------------------------------------------------------


def test_fresh_document_has_every_alive_wanted_node_normal_with_its_data_id() -> None:
    seen = [obs("node-2"), obs("node-0"), obs("node-1", alive=False), obs("node-3", expected=False)]
    new = step(None, seen, reports(0, "node-0", "node-2"))
    assert new == doc(1, member("node-0"), member("node-2"))
    assert new.settled and new.base == ()


def test_fresh_document_without_a_report_records_the_data_id_next() -> None:
    new = step(None, ALL5[:3])
    assert new == doc(1, *(member(n, data_id="") for n in N5[:3]))
    filled = step(new, ALL5[:3], reports(1, *N5[:3]))
    assert filled == doc(2, *(member(n) for n in N5[:3]))
    assert describe(new, filled) == "epoch 2: data ids recorded for node-0, node-1, node-2"


def test_fresh_document_is_seeded_above_the_highest_reported_epoch() -> None:
    new = step(None, ALL5[:3], reports(41, "node-0"), Policy(rf=2), seed_epoch=41)
    assert new is not None and new.epoch == 42 and new.rf == 2 and new.settled


def test_nothing_alive_publishes_nothing() -> None:
    assert step(None, []) is None
    assert step(None, [obs("node-0", alive=False)]) is None
    assert step(settled5(), without(N5)) is None


# -- an absent member: kept through the grace period, then dropped where that is safe ------


def test_absent_member_is_kept_within_the_grace_period() -> None:
    seen = without(["node-2"])
    assert step(settled5(), seen, absent={"node-2": 59.0}) is None
    assert step(settled5(), seen, absent={}) is None  # not timed yet: a fresh controller


def test_absent_member_is_dropped_after_the_grace_period() -> None:
    new = step(settled5(), without(["node-2"]), absent={"node-2": 60.0})
    assert new == doc(6, *(member(n) for n in N5 if n != "node-2"), settled=False, base=N5)
    assert describe(settled5(), new) == "epoch 6: node-2 removed"


def test_two_absent_members_of_one_replica_set_are_never_dropped_by_themselves() -> None:
    seen = without(["node-1", "node-2"])
    assert step(settled5(), seen, absent={"node-1": 1e9, "node-2": 1e9}) is None
    view = View(settled5(), POLICY.vnodes)
    alive = alive_nodes(seen)
    assert not removal_safe(view, "node-1", alive) and not removal_safe(view, "node-2", alive)
    reasons = waiting(settled5(), seen, {}, POLICY, {"node-1": 1e9, "node-2": 1e9})
    assert len(reasons) == 2 and reasons[0].startswith("node-1 is gone, but dropping it")


def test_only_one_member_left_drops_nobody() -> None:
    """The reinstall of issue 11: one pod back, four not yet created."""
    seen = [obs("node-0")]
    absent = dict.fromkeys(N5[1:], 1e9)
    assert step(settled5(), seen, reports(5, "node-0"), absent=absent) is None


def test_absent_member_of_a_cluster_of_rf_members_is_kept() -> None:
    three = cluster(5, N5[:3])
    assert step(three, without(["node-2"], ALL5[:3]), absent={"node-2": 1e9}) is None


def test_absent_joining_member_is_dropped_after_the_grace_whatever_its_ranges() -> None:
    cur = doc(6, *(member(n) for n in N5[:4]), member("node-4", "joining"), settled=False,
              base=N5[:4])
    # It holds nothing the ring counts on: dropping it needs no surviving copy, even with
    # three base members absent too (none of whom may be dropped).
    seen = without(["node-1", "node-2", "node-3", "node-4"])
    absent = dict.fromkeys(N5[1:], 1e9)
    new = step(cur, seen, absent=absent)
    assert new is not None and new.names == tuple(N5[:4])


# -- removals on purpose: leaving (alive) or dropped (absent) -----------------------------


def test_unwanted_alive_member_leaves_by_handing_off() -> None:
    seen = [*ALL5[:3], obs("node-3", expected=False), obs("node-4", expected=False)]
    new = step(settled5(), seen)
    assert new == doc(6, *(member(n) for n in N5[:3]), member("node-3", "leaving"),
                      member("node-4", "leaving"), settled=False, base=N5)
    view = View(new, POLICY.vnodes)
    assert view.target.members == tuple(N5[:3]) and view.base.members == tuple(N5)
    assert describe(settled5(), new) == ("epoch 6: node-3 leaving (handing off its ranges), "
                                         "node-4 leaving (handing off its ranges)")
    # It stays until the others have merged its ranges, then the settle drops it.
    assert step(new, seen, reports(6, *N5[:3], caught_up=False)) is None
    done = step(new, seen, reports(6, *N5[:3]))
    assert done == cluster(7, N5[:3])
    assert describe(new, done) == "epoch 7: node-3 left, node-4 left, settled"


def test_leaving_member_wanted_again_stays_normal() -> None:
    cur = doc(6, *(member(n) for n in N5[:4]), member("node-4", "leaving"), settled=False,
              base=N5)
    new = step(cur, ALL5)
    assert new is not None and new.member("node-4") == member("node-4")


def test_unwanted_absent_member_is_dropped_only_where_safe() -> None:
    assert step(settled5(), [*ALL5[:4], obs("node-4", alive=False, expected=False)]) is not None
    both = [*ALL5[:3], obs("node-3", alive=False, expected=False),
            obs("node-4", alive=False, expected=False)]
    new = step(settled5(), both)
    view = View(settled5(), POLICY.vnodes)
    alive = alive_nodes(both)
    expect = {n for n in ("node-3", "node-4") if removal_safe(view, n, alive)}
    assert new is None if not expect else set(N5) - set(new.names) == expect


def test_forced_removal_drops_an_absent_member_even_when_unsafe() -> None:
    seen = [obs("node-2", alive=False, forced=True) if o.name == "node-2" else o
            for o in without(["node-1"])]
    new = step(settled5(), seen)
    assert new is not None and "node-2" not in new.names and "node-1" in new.names


def test_forced_removal_of_a_live_member_hands_off_first() -> None:
    new = step(settled5(), [*ALL5, obs("node-2", forced=True)])
    assert new is not None and new.member("node-2") == member("node-2", "leaving")


def test_the_last_members_never_all_leave() -> None:
    one = cluster(3, ["node-0"])
    assert step(one, [obs("node-0", expected=False)]) is None


# -- identity: the data a member holds ----------------------------------------------------


def test_member_back_with_new_data_rejoins_to_rebuild() -> None:
    rs = {**reports(5, *N5), "node-2": Report("node-2", 5, True, data_id="d-new")}
    new = step(settled5(), ALL5, rs)
    assert new == doc(6, *(member(n) for n in N5[:2]), member("node-2", "joining", "d-new"),
                      *(member(n) for n in N5[3:]), settled=False, base=N5)
    assert describe(settled5(), new) == "epoch 6: node-2 came back with new data: rebuilding"
    assert step(new, ALL5, rs) is None  # recorded: nothing more until it has caught up


def test_leaving_member_with_new_data_goes_at_once() -> None:
    cur = doc(6, *(member(n) for n in N5[:4]), member("node-4", "leaving"), settled=False,
              base=N5)
    seen = [*ALL5[:4], obs("node-4", expected=False)]
    new = step(cur, seen, {"node-4": Report("node-4", 6, True, data_id="d-new")})
    assert new is not None and new.names == tuple(N5[:4])


def test_a_report_under_another_name_says_nothing_about_identity() -> None:
    assert step(settled5(), ALL5, {"node-2": Report("node-9", 5, True, data_id="x")}) is None


# -- joining, collapse, addresses ---------------------------------------------------------


def test_new_node_joins_as_joining_with_its_data_id() -> None:
    seen = [*ALL5[:3], obs("node-5")]
    cur = cluster(5, N5[:3])
    new = step(cur, seen, {"node-5": Report("node-5", 0, False, data_id="d-node-5")})
    assert new == doc(6, *(member(n) for n in N5[:3]), member("node-5", "joining"),
                      settled=False, base=N5[:3])


def test_new_node_is_added_only_once_it_answers_in_its_own_name() -> None:
    """Two nodes started at once, observed alive before they listen: neither is a target
    replica before it can acknowledge writes (issue 12, point 5)."""
    cur = cluster(5, N5[:3])
    seen = [*ALL5[:3], obs("node-5"), obs("node-6")]
    assert step(cur, seen) is None
    assert step(cur, seen, {"node-5": Report("node-9", 0, False, data_id="x")}) is None
    assert waiting(cur, seen, {}, POLICY, {}) == [
        f"{n}: not answering yet (it is added to the membership once it answers a status "
        f"poll in its own name)" for n in ("node-5", "node-6")]
    rs = reports(0, "node-5", caught_up=False)
    new = step(cur, seen, rs)
    assert new == doc(6, *(member(n) for n in N5[:3]), member("node-5", "joining"),
                      settled=False, base=N5[:3])
    assert [line.split(":")[0] for line in waiting(new, seen, rs, POLICY, {})] == ["node-6"]
    both = step(new, seen, {**rs, **reports(0, "node-6", caught_up=False)})
    assert both is not None and both.member("node-6") == member("node-6", "joining")
    assert both.base == tuple(N5[:3])


def test_removed_member_back_is_added_only_once_it_answers() -> None:
    four = cluster(7, N5[:4])
    assert step(four, [*ALL5[:4], obs("node-4")]) is None
    new = step(four, [*ALL5[:4], obs("node-4")], reports(5, "node-4"))
    assert new is not None and new.member("node-4") == member("node-4", "joining")


def test_first_document_takes_every_alive_node_answering_or_not() -> None:
    new = step(None, ALL5[:3], reports(0, "node-0"))
    assert new is not None and new.names == tuple(N5[:3]) and new.settled


def test_unwanted_new_node_is_not_added() -> None:
    assert step(cluster(5, N5[:3]), [*ALL5[:3], obs("node-5", expected=False)],
                reports(0, "node-5")) is None


def test_changes_before_a_settle_keep_the_base_and_move_the_target() -> None:
    cur = doc(6, *(member(n) for n in N5[:4]), settled=False, base=N5)
    new = step(cur, [*ALL5[:4], obs("node-6")], reports(0, "node-6", caught_up=False))
    assert new == doc(7, *(member(n) for n in N5[:4]), member("node-6", "joining"),
                      settled=False, base=N5)
    # node-4 is gone already: node-3 absent too leaves some of their ranges one live copy,
    # so node-3 is not dropped however long it is away.
    assert step(new, [*without(["node-3"], ALL5[:4]), obs("node-6")],
                absent={"node-3": 1e9}) is None


def test_address_only_change_bumps_the_epoch_but_moves_no_range() -> None:
    moved = [*ALL5[:4], obs("node-4", port=100)]
    new = step(settled5(), moved)
    assert new is not None and new.epoch == 6 and new.settled and new.base == ()
    m4 = new.member("node-4")
    assert m4 is not None and m4.url == moved[4].url and m4.state == "normal"


def test_existing_document_keeps_its_own_rf() -> None:
    new = step(settled5(), [*ALL5, obs("node-5")], reports(0, "node-5", caught_up=False),
               policy=Policy(rf=5))
    assert new is not None and new.rf == 3


def test_duplicate_observations_prefer_the_alive_one() -> None:
    seen = [obs("node-1", port=100), obs("node-1", alive=False), obs("node-1", port=200)]
    assert alive_nodes(seen) == {"node-1": obs("node-1", port=200)}


# -- promotion and settle -------------------------------------------------------------------


def joining_doc() -> Document:
    return doc(6, *(member(n) for n in N5[:4]), member("node-4", "joining"), settled=False,
               base=N5[:4])


def test_caught_up_joining_member_is_promoted_then_everyone_settles() -> None:
    new = step(joining_doc(), ALL5, reports(6, "node-4"))
    assert new == doc(7, *(member(n) for n in N5), settled=False, base=N5[:4])
    assert describe(joining_doc(), new) == "epoch 7: node-4 promoted to normal"
    assert step(new, ALL5, reports(6, *N5)) is None  # reports of the old epoch count for nothing
    final = step(new, ALL5, reports(7, *N5))
    assert final == settled5(8)


def test_promotion_needs_a_caught_up_report_for_the_current_epoch() -> None:
    cur = joining_doc()
    assert step(cur, ALL5, reports(5, "node-4")) is None
    assert step(cur, ALL5, reports(6, "node-4", caught_up=False)) is None
    assert step(cur, ALL5, {"node-4": Report("node-9", 6, True, data_id="d-node-4")}) is None


def test_absent_member_that_gained_nothing_does_not_hold_the_settle() -> None:
    cur = doc(7, *(member(n) for n in N5), settled=False, base=N5[:4])
    gained = {c for ch in View(cur, POLICY.vnodes).changes() for c in ch.gained}
    quiet = next(n for n in N5[:4] if n not in gained)
    rs = reports(7, *(n for n in N5 if n != quiet))
    assert step(cur, without([quiet]), rs) == settled5(8)
    gainer = "node-4"
    assert gainer in gained
    assert step(cur, without([gainer]), reports(7, *N5[:4])) is None
    assert waiting(cur, without([gainer]), {}, POLICY, {}) == [
        "node-4 gained ranges but is absent: waiting for it to return or to be dropped"]


def test_waiting_passes_on_what_the_nodes_say() -> None:
    cur = joining_doc()
    rs = {"node-4": Report("node-4", 6, False, data_id="d-node-4",
                           waiting=("3 ranges have no live replica that holds data",))}
    assert waiting(cur, ALL5, rs, POLICY, {}) == [
        "node-4: 3 ranges have no live replica that holds data"]


def test_store_behind_the_nodes_is_reissued_above_their_epoch() -> None:
    new = step(settled5(5), ALL5, reports(9, "node-0"), seed_epoch=9)
    assert new == settled5(10)
    assert describe(settled5(5), new) == "epoch 10: re-issued (was epoch 5)"


# -- cleanup ------------------------------------------------------------------------------


def test_cleanup_due_once_every_alive_member_acknowledged_the_settled_epoch() -> None:
    cur = settled5(8)
    assert cleanup_due(cur, reports(8, *N5), N5)
    assert not cleanup_due(cur, {**reports(8, *N5[:4]), **reports(7, "node-4")}, N5)
    # An absent member adopts the newer epoch before its own reads count: it does not wait.
    assert cleanup_due(cur, reports(8, *N5[:4]), N5[:4])
    assert not cleanup_due(joining_doc(), reports(6, *N5), N5)


# -- property: any sequence of observations converges --------------------------------------

NAMES = names(6)


@settings(max_examples=200, deadline=None)
@given(
    rounds=st.lists(
        st.tuples(
            st.frozensets(st.sampled_from(NAMES)),  # who is alive this round
            st.frozensets(st.sampled_from(NAMES)),  # who the source no longer wants
            st.lists(st.booleans(), min_size=len(NAMES), max_size=len(NAMES)),  # adopted
            st.lists(st.booleans(), min_size=len(NAMES), max_size=len(NAMES)),  # caught up
            st.integers(1, 3),  # controller steps this round
        ),
        min_size=1,
        max_size=12,
    ),
    final=st.frozensets(st.sampled_from(NAMES), min_size=1),
    rf=st.integers(1, 3),
)
def test_any_observation_sequence_converges(
    rounds: list[tuple[frozenset[str], frozenset[str], list[bool], list[bool], int]],
    final: frozenset[str],
    rf: int,
) -> None:
    """Epochs strictly increase, the base is only ever the last settled membership, no
    document is empty, settled documents have no leaving member, and once every wanted
    node is alive and reports, the controller settles on exactly them, all normal."""
    policy = Policy(rf=rf, vnodes=8, down_grace=0.0)
    cur: Document | None = None
    last_settled: tuple[str, ...] = ()

    def check(prev: Document | None, new: Document) -> None:
        nonlocal last_settled
        assert prev is None or new.epoch > prev.epoch
        assert new.target_names
        assert list(new.names) == sorted(new.names)
        if new.settled:
            assert new.base == () and "leaving" not in {m.state for m in new.members}
            last_settled = new.names
        elif prev is not None:
            assert new.base == last_settled

    for alive_set, unwanted_set, adopted, caught, steps in rounds:
        seen = [obs(n, alive=n in alive_set, expected=n not in unwanted_set) for n in NAMES]
        rs = {}
        if cur is not None:
            for i, n in enumerate(sorted(alive_set)):
                epoch = cur.epoch if adopted[i] else cur.epoch - 1
                rs[n] = Report(n, epoch, caught[i], data_id=f"d-{n}")
        absent = {n: 1e9 for n in NAMES if n not in alive_set}
        for _ in range(steps):
            new = next_document(cur, seen, rs, policy, 0, absent)
            if new is None:
                break
            check(cur, new)
            cur = new

    # Every node runs again; the ones not in `final` are scaled away (they hand off).
    seen = [obs(n, expected=n in final) for n in NAMES]
    for _ in range(12):
        rs = reports(cur.epoch, *NAMES) if cur is not None else {}
        new = next_document(cur, seen, rs, policy, 0, {})
        if new is None:
            break
        check(cur, new)
        cur = new
    assert cur is not None
    assert cur.settled and cur.names == tuple(sorted(final))
    assert {m.state for m in cur.members} == {"normal"}


# -- property: data that still exists is never settled away -------------------------------


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.sampled_from(["die", "return", "wipe", "create", "unwant", "tick"]),
                  st.integers(0, 6)),
        min_size=1,
        max_size=25,
    ),
    missed_by=st.lists(st.integers(0, 3), min_size=40, max_size=40),
)
def test_no_settled_document_loses_a_copy_that_exists(
        events: list[tuple[str, int]], missed_by: list[int]) -> None:
    """A model of nodes with data: keys acknowledged by two of their three replicas (the
    third missed it) or by all three; nodes die, return, come back wiped, are created, are scaled away;
    each alive node catches up the way `rebalance.catch_up_work` says, from `need` alive
    holders picked worst first (those holding least of the range). Invariants: no settled
    document leaves a range without a member that holds data, every key still held by
    some node is held by a member of every settled document, and no read quorum of its
    trusted replicas misses it. A second loss of a member's data (wiped, or the member
    removed while down) before the first was repaired is more than rf=3 promises to
    survive for a key one replica missed: then only keys all three acknowledged are
    checked, and only for being held."""
    policy = Policy(rf=3, vnodes=4, down_grace=0.0)
    pool = names(7)
    tokens = [MAX_TOKEN // 40 * i + 7 for i in range(40)]
    alive = set(pool[:5])
    wanted = set(pool[:5])
    data_id = {n: f"d-{n}-0" for n in pool}
    holds: dict[str, set[int]] = {n: set() for n in pool}
    cur = next_document(None, [obs(n) for n in sorted(alive)],
                        {n: Report(n, 0, True, data_id=data_id[n]) for n in alive}, policy)
    assert cur is not None
    ring = View(cur, policy.vnodes).target
    for t, missed in zip(tokens, missed_by, strict=True):  # missed == 3: nobody missed it
        for n in ring.replicas_for_token(t)[:missed] + ring.replicas_for_token(t)[missed + 1:]:
            holds[n].add(t)
    epochs = {n: cur.epoch for n in alive}
    # Losses: a member's data wiped, or a member removed while down. `overlapped`: a loss
    # happened before every earlier one was repaired (all members normal on their data).
    repaired, overlapped = True, False

    def trusted(n: str, d: Document) -> bool:
        m = d.member(n)
        return m is not None and m.holds_data and m.data_id == data_id[n]

    for kind, i in [*events, *[("tick", 0)] * 12]:
        name = pool[i]
        if kind == "die":
            alive.discard(name)
        elif kind == "return" and name in wanted:
            alive.add(name)
        elif kind == "wipe":
            if cur.member(name) is not None:
                overlapped, repaired = overlapped or not repaired, False
            data_id[name] = data_id[name] + "'"
            holds[name] = set()
        elif kind == "create":
            wanted.add(name)
            alive.add(name)
        elif kind == "unwant":
            wanted.discard(name)
        if kind == "tick":  # the last ticks heal: every wanted node is back
            alive |= wanted
        seen = [obs(n, alive=n in alive, expected=n in wanted) for n in pool
                if n in alive or n in wanted or (cur is not None and n in cur.names)]
        # Every alive member adopts the document and merges what it can.
        view = View(cur, policy.vnodes)
        rs: dict[str, Report] = {}
        for n in sorted(alive):
            epochs[n] = cur.epoch
            member = cur.member(n)
            full = member is not None and (member.state == "joining" or not trusted(n, cur))
            caught = member is not None
            for work in catch_up_work(view, n, full) if member is not None else []:
                sources = [h for h in work.holders if h in alive and trusted(h, cur)]
                if len(sources) < max(1, work.need):
                    caught = False
                    continue
                sources.sort(key=lambda h: sum(t in work.range for t in holds[h]))
                for h in sources[:work.need]:
                    holds[n] |= {t for t in holds[h] if t in work.range}
            rs[n] = Report(n, cur.epoch, caught, data_id=data_id[n])
        absent = {n: 1e9 for n in cur.names if n not in alive}
        for _ in range(3):
            new = next_document(cur, seen, rs, policy, 0, absent)
            if new is None:
                break
            if any(n not in alive for n in set(cur.names) - set(new.names)):
                overlapped, repaired = overlapped or not repaired, False
            cur = new
            if cur.settled:
                fragile = {t for t, m in zip(tokens, missed_by, strict=True) if m < 3}
                check_settled(cur, holds, tokens, data_id, policy,
                              fragile if overlapped else None)
        repaired = repaired or (cur.settled and all(
            m.state == "normal" and m.data_id == data_id[m.name] for m in cur.members))


def check_settled(cur: Document, holds: Mapping[str, set[int]], tokens: Sequence[int],
                  data_id: Mapping[str, str], policy: Policy,
                  lost: set[int] | None = None) -> None:
    """Every range has a member that holds data; a key any node still holds is held by
    some member of the document and one of its target replicas; every read quorum of its
    trusted replicas meets it (rule 1: those are what a read after the settle asks).
    `lost`: losses beyond rf's promise happened; keys in it may be gone, and no quorum is
    checked."""
    ring = View(cur, policy.vnodes).target
    held_by_members = set().union(*(holds[m.name] for m in cur.members))
    for t in tokens:
        assert any((m := cur.member(n)) is not None and m.holds_data
                   for n in ring.replicas_for_token(t)), (t, cur)
        if any(t in h for h in holds.values()) and (lost is None or t not in lost):
            assert t in held_by_members, (t, cur)
            reps = ring.replicas_for_token(t)
            assert any(t in holds[n] for n in reps), (t, cur)
            readable = [n for n in reps if (m := cur.member(n)) is not None
                        and m.holds_data and m.data_id == data_id[n]]
            missing = [n for n in readable if t not in holds[n]]
            assert lost is not None or len(missing) < needed("quorum", len(reps)), \
                (t, missing, cur)
