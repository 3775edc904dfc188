"""Coverage: what a node has merged, checked against a per-token model."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.node.coverage import Coverage
from ringkv.node.ring import TokenRange

SPACE = 40  # tokens 0..40; a range (lo, hi] covers lo+1..hi


def ranges() -> st.SearchStrategy[TokenRange]:
    return st.tuples(st.integers(-1, SPACE - 1), st.integers(1, SPACE)).filter(
        lambda t: t[0] < t[1]).map(lambda t: TokenRange(*t))


def disjoint_ranges() -> st.SearchStrategy[list[TokenRange]]:
    return st.lists(st.integers(-1, SPACE), min_size=2, max_size=6, unique=True).map(
        lambda cuts: [TokenRange(a, b) for a, b in itertools.pairwise(sorted(cuts))])


OWNERS = st.sampled_from([frozenset("xyz"), frozenset("xyw")])


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.one_of(
    st.tuples(st.just("add"), ranges(), st.sampled_from("abc"), OWNERS),
    st.tuples(st.just("keep"), disjoint_ranges(), st.just(""), st.lists(OWNERS, min_size=6)),
), max_size=12), probe=ranges())
def test_coverage_matches_a_per_token_model(ops: list, probe: TokenRange) -> None:
    cov = Coverage(("a", "b", "c"))
    # Per token: the sources merged, and the owners they were merged for.
    model: dict[int, tuple[set[str], frozenset[str]]] = {
        t: (set(), frozenset()) for t in range(SPACE + 1)}
    for kind, arg, source, owners in ops:
        if kind == "add":
            cov.add(arg, source, owners)
            for t in range(arg.lo + 1, arg.hi + 1):
                before = model[t][0] if model[t][1] == owners else set()
                model[t] = (before | {source}, owners)
        else:
            owned = list(zip(arg, owners, strict=False))
            cov.keep(owned)
            now = {t: o for rng, o in owned for t in range(rng.lo + 1, rng.hi + 1)}
            for t in model:
                if now.get(t) != model[t][1]:
                    model[t] = (set(), frozenset())
    pieces = cov.sources(probe)
    # The pieces tile the probe exactly, in order.
    assert pieces[0][0].lo == probe.lo and pieces[-1][0].hi == probe.hi
    assert all(a[0].hi == b[0].lo for a, b in itertools.pairwise(pieces))
    for rng, sources in pieces:
        for t in range(rng.lo + 1, rng.hi + 1):
            assert model[t][0] == set(sources), (t, rng, sources)
    common = set.intersection(*(model[t][0] for t in range(probe.lo + 1, probe.hi + 1)))
    assert cov.merged_from(probe) == common


def test_another_base_ring_starts_empty() -> None:
    cov = Coverage(("a", "b"))
    cov.add(TokenRange(0, 10), "a", "xyz")
    assert cov.for_base(("a", "b")) is cov
    fresh = cov.for_base(("a", "b", "c"))
    assert fresh.merged_from(TokenRange(0, 10)) == frozenset() and len(fresh) == 0
