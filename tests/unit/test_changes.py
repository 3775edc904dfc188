"""Conditions and read-modify-writes, checked against the current record."""

from __future__ import annotations

import pytest

from ringkv.node.changes import Increment, Refused, Write, parse_int
from ringkv.node.preconditions import NONE, Preconditions, parse
from ringkv.node.records import Record, expiry
from ringkv.node.versions import Version

K = b"k"
V = Version(100, "n1")
STORED = Version(50, "n0")
NOW = 1_000_000


def rec(value: bytes = b"1", version: Version = STORED, tombstone: bool = False,
        expires_ms: int = 0) -> Record:
    return Record(K, value, "text/plain", version, tombstone, expires_ms)


def put(conditions: Preconditions = NONE, ttl: int | None = None) -> Write:
    return Write(K, b"new", "text/plain", conditions, ttl)


def when(if_match: str | None = None, if_none_match: str | None = None) -> Preconditions:
    return parse([if_match] if if_match else [], [if_none_match] if if_none_match else [])


@pytest.mark.parametrize(("conditions", "current", "applies"), [
    (when(if_none_match="*"), None, True),
    (when(if_none_match="*"), rec(), False),
    (when(if_none_match="*"), rec(tombstone=True), True),
    (when(if_none_match="*"), rec(expires_ms=NOW), True),  # expired at NOW
    (when(if_none_match="*"), rec(expires_ms=NOW + 1), False),
    (when(if_none_match='"50.n0"'), rec(), False),
    (when(if_none_match='"51.n0"'), rec(), True),
    (when(if_match="*"), rec(), True),
    (when(if_match="*"), None, False),
    (when(if_match="*"), rec(tombstone=True), False),
    (when(if_match='"50.n0"'), rec(), True),
    (when(if_match='"49.n0", "50.n0"'), rec(), True),
    (when(if_match='"51.n0"'), rec(), False),
    (when(if_match='"50.n0"'), rec(tombstone=True), False),
    (NONE, None, True),
    (NONE, rec(), True),
])
def test_preconditions(conditions: Preconditions, current: Record | None, applies: bool):
    if applies:
        written = put(conditions).apply(current, V, NOW)
        assert written == Record(K, b"new", "text/plain", V)
    else:
        with pytest.raises(Refused):
            put(conditions).apply(current, V, NOW)


def test_the_expiry_is_the_coordinators_wall_clock_plus_the_ttl():
    assert put(ttl=2).apply(None, V, NOW).expires_ms == NOW + 2000
    assert expiry(NOW, None) == 0


def test_a_delete_writes_a_tombstone_if_the_condition_holds():
    delete = Write(K, b"", "application/octet-stream", when(if_match='"50.n0"'), tombstone=True)
    assert delete.apply(rec(), V, NOW).tombstone
    with pytest.raises(Refused):
        Write(K, b"", "x", when(if_none_match="*"), tombstone=True).apply(rec(), V, NOW)


def test_increment():
    assert Increment(K, 5).apply(None, V, NOW).value == b"5"
    assert Increment(K, -3).apply(rec(b"10"), V, NOW).value == b"7"
    assert Increment(K, 1).apply(rec(b"10", tombstone=True), V, NOW).value == b"1"
    assert Increment(K, 1, ttl=3).apply(None, V, NOW).expires_ms == NOW + 3000
    for bad in (b"x", b"", b"1.5", b" 1", "٣".encode()):
        with pytest.raises(Refused):
            Increment(K, 1).apply(rec(bad), V, NOW)
    with pytest.raises(Refused):
        Increment(K, 1).apply(rec(str(2**63 - 1).encode()), V, NOW)
    with pytest.raises(Refused):
        Increment(K, 1, preconditions=when(if_match='"1.x"')).apply(rec(b"10"), V, NOW)


def test_parse_int():
    assert parse_int("-42") == -42 and parse_int(b"+7") == 7
    assert parse_int(str(-(2**63))) == -(2**63)
    assert parse_int(str(2**63)) is None and parse_int("1e3") is None and parse_int("-") is None
