"""The node's pure backup pieces: parts of the token space, cursors, the merge of replica
scans, imported-record validation, the backup report."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkv.node.backup import (
    MAX_PARTS,
    Report,
    decode_cursor,
    encode_cursor,
    from_public,
    merge_answers,
    part_range,
    to_public,
)
from ringkv.node.config import Settings
from ringkv.node.records import Record
from ringkv.node.ring import MAX_TOKEN, MIN_LO
from ringkv.node.versions import Version

SETTINGS = Settings(node_name="n", max_key_bytes=16, max_value_bytes=100, max_clock_drift=60)
NOW_MS = 1_800_000_000_000


@given(st.integers(1, MAX_PARTS))
def test_parts_cover_the_token_space_without_gaps(parts: int) -> None:
    first, last = part_range(0, parts), part_range(parts - 1, parts)
    assert (first.lo, last.hi) == (MIN_LO, MAX_TOKEN)
    for part in {0, parts // 2, parts - 2} - {-1, parts - 1}:
        a, b = part_range(part, parts), part_range(part + 1, parts)
        assert a.hi == b.lo and a.width > 0


def test_cursors_round_trip_and_belong_to_their_part() -> None:
    rng = part_range(3, 8)
    for position in [(rng.lo + 5, b"key"), (rng.hi, None), (rng.hi, b"\xff\x00")]:
        assert decode_cursor(encode_cursor(position), rng) == position
    for bad in ["", "!!", encode_cursor((rng.lo - 1, b"k")), encode_cursor((rng.hi + 1, None)),
                encode_cursor((rng.lo + 1, "text"))]:  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            decode_cursor(bad, rng)


def rec(key: bytes, hlc: int, tombstone: bool = False) -> Record:
    return Record(key, b"v%d" % hlc, "t", Version(hlc, "n"), tombstone)


def scan_order(records: list[Record]) -> list[Record]:
    return sorted(records, key=lambda r: (r.token, r.key))


def test_the_newest_version_of_each_key_wins() -> None:
    a = scan_order([rec(b"a", 1), rec(b"b", 5), rec(b"c", 2, tombstone=True)])
    b = scan_order([rec(b"a", 3), rec(b"b", 4), rec(b"d", 1)])
    merged, bound = merge_answers([a, b], limit=10)
    assert bound is None  # neither answer was full: the range is complete
    assert {(r.key, r.version.hlc, r.tombstone) for r in merged} == {
        (b"a", 3, False), (b"b", 5, False), (b"c", 2, True), (b"d", 1, False)}
    assert merged == scan_order(merged)


def test_a_full_answer_bounds_the_page() -> None:
    keys = scan_order([rec(b"k%d" % i, 1) for i in range(10)])
    full = keys[:4]  # a replica that answered `limit` records may hold more after them
    short = keys[:2] + keys[5:7]  # one that answered fewer holds nothing more
    merged, bound = merge_answers([full, short], limit=4)
    assert bound == (full[-1].token, full[-1].key)
    assert [r.key for r in merged] == [r.key for r in keys[:4]]


def test_imported_records_are_checked_like_writes() -> None:
    good = to_public(Record(b"k", b"value", "text/plain", Version(NOW_MS << 16, "n-1"), False, 7))
    assert to_public(from_public(good, SETTINGS, NOW_MS)) == good
    def changed(field: int, value: object) -> list[object]:
        return [value if i == field else v for i, v in enumerate(good)]

    cases = {
        "a record is": [good[:5]],
        "key must be 1 to 16": [changed(0, b""), changed(0, b"k" * 17)],
        "UTF-8": [changed(0, b"\xff")],
        "value must be bytes": [changed(1, "str"), changed(1, b"v" * 101)],
        "content type": [changed(2, "\n")],
        "not a version": [changed(3, "12")],
        "tombstone must be a boolean": [changed(4, 1), changed(5, -1)],
        "ahead of this node's clock": [changed(3, f"{(NOW_MS + 61_000) << 16}.n")],
    }
    for said, items in cases.items():
        for item in items:
            with pytest.raises(ValueError, match=said):
                from_public(item, SETTINGS, NOW_MS)


def test_a_report_is_checked() -> None:
    doc = {"name": "ringkv-20260101T030000.000Z", "started": 10, "finished": 12.5,
           "records": 3, "bytes": 100}
    assert Report.from_json(doc) == Report("ringkv-20260101T030000.000Z", 10.0, 12.5, 3, 100)
    for change in [{"finished": 9}, {"records": -1}, {"bytes": 1.5}, {"name": ""},
                   {"extra": 1}, {"started": True}]:
        with pytest.raises(ValueError):
            Report.from_json({**doc, **change})
