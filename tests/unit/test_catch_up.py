"""What catching up leaves to do across epochs (`rebalance.plan`): a merge is reused while
the base ring and the range's owners stay, and redone once its owners change."""

from __future__ import annotations

from ringkv.node.coverage import Coverage
from ringkv.node.membership import Document, Member, View
from ringkv.node.rebalance import plan
from ringkv.node.ring import TokenRange

NAMES = [f"n-{i}" for i in range(6)]
BASE = tuple(NAMES[:5])
VNODES = 16


def view(epoch: int, states: dict[str, str]) -> View:
    members = tuple(Member(n, f"127.0.0.1:{9000 + i}", f"http://127.0.0.1:{8000 + i}",
                           states.get(n, "normal"), f"d-{n}")  # type: ignore[arg-type]
                    for i, n in enumerate(NAMES))
    return View(Document(epoch, 3, members, settled=False, base=BASE), VNODES)


def merge_everything(todo: list, cov: Coverage) -> None:
    """As `Rebalancer._merge` records it: each piece from `need` holders."""
    for work, pieces in todo:
        for piece in pieces:
            for holder in work.holders[:work.need]:
                cov.add(piece, holder, work.owners)


def owners_at(v: View, rng: TokenRange) -> frozenset[str]:
    return frozenset(v.target.replicas_for_token(rng.hi))


def test_a_merge_counts_until_the_ranges_owners_change() -> None:
    # n-5 joins while n-1 leaves; n-5 merges all it will replicate.
    joined = view(2, {"n-5": "joining", "n-1": "leaving"})
    cov = Coverage(BASE)
    blocked, todo = plan(joined, "n-5", True, cov)
    assert blocked == [] and todo
    merge_everything(todo, cov)
    assert plan(joined, "n-5", True, cov) == ([], [])

    # Its promotion changes no owner: nothing is merged again (issue 12, point 2).
    promoted = view(3, {"n-1": "leaving"})
    assert plan(promoted, "n-5", False, cov) == ([], [])

    # n-1 stays after all: where it takes a place among n-5's ranges' owners, writes made
    # meanwhile may be on owners n-5 did not merge from: those ranges are merged again,
    # the others not.
    kept = view(4, {})
    gained = [c.range for c in kept.changes() if "n-5" in c.gained]
    changed = {r for r in gained if owners_at(kept, r) != owners_at(promoted, r)}
    assert changed and set(gained) - changed, "the ring must give both kinds of range"
    blocked, todo = plan(kept, "n-5", False, cov)
    assert blocked == []
    assert {w.range for w, _ in todo} == changed
    assert all(pieces == [w.range] for w, pieces in todo)


def test_the_member_left_when_the_cluster_shrinks_below_rf_merges_everything() -> None:
    """A write acknowledged by two of three replicas may have missed the one that stays:
    with one replica left, that one must hold every write."""
    names = NAMES[:3]
    members = tuple(Member(n, f"127.0.0.1:{9000 + i}", f"http://127.0.0.1:{8000 + i}",
                           "normal" if n == "n-0" else "leaving", f"d-{n}")  # type: ignore[arg-type]
                    for i, n in enumerate(names))
    shrunk = View(Document(2, 3, members, settled=False, base=tuple(names)), VNODES)
    blocked, todo = plan(shrunk, "n-0", False, Coverage(tuple(names)))
    assert blocked == []
    assert sum(w.range.width for w, _ in todo) == sum(r.width for r in shrunk.target.ranges_of("n-0"))
    assert all(w.need == 2 for w, _ in todo)
