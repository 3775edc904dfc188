"""`If-Match` / `If-None-Match` parsing and evaluation (RFC 9110 §13.1), and the OpenAPI
pattern that documents the accepted grammar."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.node.preconditions import NONE, TAG_LIST_PATTERN, Preconditions, Tags, parse
from ringkv.node.versions import Version

V = Version(1234, "node-0")
OTHER = Version(1240, "node-2")


def if_match(*values: str) -> Preconditions:
    return parse(values, ())


def if_none_match(*values: str) -> Preconditions:
    return parse((), values)


def test_absent_headers_are_no_preconditions() -> None:
    assert parse((), ()) == NONE and not NONE.given
    assert NONE.failure(None) is None and NONE.failure(V) is None


@pytest.mark.parametrize(("values", "holds_for"), [
    (['"1234.node-0"'], {V}),
    (['"1240.node-2", "1234.node-0"'], {V, OTHER}),
    (['"1240.node-2"', '"1234.node-0"'], {V, OTHER}),  # two field lines are one list
    ([', ,"1234.node-0" ,, '], {V}),  # empty list elements are ignored
    (["*"], {V, OTHER}),
    (['W/"1234.node-0"'], set()),  # strong comparison: a weak tag never matches
    (['"01234.node-0"'], set()),  # tags compare as strings
    (['"x,y"', '""'], set()),  # valid entity-tags that no version has
])
def test_if_match(values: list[str], holds_for: set[Version]) -> None:
    pre = if_match(*values)
    assert pre.given
    for current in (V, OTHER):
        failure = pre.failure(current)
        assert (failure is None) == (current in holds_for), (values, current)
        if failure is not None:
            assert failure.header == "If-Match" and str(current) in failure.message
    absent = pre.failure(None)  # If-Match never holds for a key without a live record
    assert absent is not None and "does not exist" in absent.message


@pytest.mark.parametrize(("values", "fails_for"), [
    (['"1234.node-0"'], {V}),
    (['W/"1234.node-0"'], {V}),  # weak comparison: W/"v" is "v"
    (['"1240.node-2", W/"1234.node-0"'], {V, OTHER}),
    (["*"], {V, OTHER}),
    (['"nothing"'], set()),
])
def test_if_none_match(values: list[str], fails_for: set[Version]) -> None:
    pre = if_none_match(*values)
    for current in (V, OTHER):
        failure = pre.failure(current)
        assert (failure is not None) == (current in fails_for), (values, current)
        if failure is not None:
            assert failure.header == "If-None-Match"
    assert pre.failure(None) is None  # nothing to match: the key may be created


def test_if_match_is_evaluated_before_if_none_match() -> None:
    pre = parse(['"1240.node-2"'], ['"1234.node-0"'])
    assert pre == Preconditions(Tags(opaque=frozenset({"1240.node-2"})),
                                Tags(opaque=frozenset({"1234.node-0"})))
    failure = pre.failure(V)
    assert failure is not None and failure.header == "If-Match"
    assert parse(["*"], ["*"]).failure(None).header == "If-Match"  # type: ignore[union-attr]


MALFORMED = ["", " ", ",", "1234.node-0", '"1234.node-0', '1234.node-0"', '"a" "b"', '"a";"b"',
             '*, "a"', "* *", "**", 'w/"a"', 'W/ "a"', 'W"a"', '"a b"', '"a"b', "\x00",
             '"\x7f"']


@pytest.mark.parametrize("value", MALFORMED)
def test_values_outside_the_grammar_are_refused(value: str) -> None:
    for header in ("If-Match", "If-None-Match"):
        with pytest.raises(ValueError, match=header):
            parse([value], ()) if header == "If-Match" else parse((), [value])


def test_many_commas_and_spaces_parse_in_linear_time() -> None:
    # A backtracking grammar would take exponential time to refuse this.
    with pytest.raises(ValueError):
        if_match(", " * 5000 + '"a" ' + " ," * 5000 + " x")


HEADER_TEXT = st.text(st.sampled_from(list(' \t,*"W/ab.0-\x7f\x80é')), max_size=30)


@settings(max_examples=2000, deadline=None, derandomize=True, database=None)
@given(value=HEADER_TEXT)
def test_the_openapi_pattern_is_the_accepted_grammar(value: str) -> None:
    """A value the document's pattern allows is accepted, and only such a value."""
    documented = re.fullmatch(TAG_LIST_PATTERN, value) is not None
    try:
        if_match(value)
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == documented, value
