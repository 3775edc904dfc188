"""Storage engine tests, run against both engines (in-memory and SQLite on disk).

The two engines must be interchangeable: every behavioural test runs on both, and a
hypothesis test drives random batches through both and a model dict (keep the highest
version per key; equal versions are idempotent) and compares all three.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringkv.node.paxos import EMPTY, Decision, PaxosState, Proposal
from ringkv.node.records import Record
from ringkv.node.ring import MAX_TOKEN, MIN_LO, TokenRange, key_token
from ringkv.node.storage import (
    MemoryStorage,
    SqliteStorage,
    Storage,
    StorageError,
    bucket_of,
    bucket_range,
    prefix_upper_bound,
)
from ringkv.node.versions import ZERO, Version

ENGINES = ["memory", "sqlite"]
FULL = TokenRange(MIN_LO, MAX_TOKEN)


def make_engine(kind: str, directory: Path, synchronous: str = "NORMAL") -> Storage:
    if kind == "memory":
        return MemoryStorage()
    return SqliteStorage(str(directory / "data" / "node.db"), synchronous)


@pytest.fixture(params=ENGINES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    engine = make_engine(request.param, tmp_path)
    try:
        yield engine
    finally:
        engine.close()


def rec(
    key: bytes,
    hlc: int,
    node: str = "n1",
    value: bytes | None = None,
    tomb: bool = False,
    expires: int = 0,
    ctype: str = "text/plain",
) -> Record:
    if value is None:
        value = b"" if tomb else b"v%d" % hlc
    return Record(key, value, ctype, Version(hlc, node), tomb, expires)


def scan_all(store: Storage, rng: TokenRange = FULL, page: int = 1000) -> list[Record]:
    out: list[Record] = []
    after: tuple[int, bytes] | None = None
    while True:
        batch = store.scan_range(rng, after, page)
        out.extend(batch)
        if len(batch) < page:
            return out
        after = (batch[-1].token, batch[-1].key)


# --- Paxos states ---------------------------------------------------------------------------


def test_a_paxos_state_is_replaced_whole_and_still_found_by_token(store: Storage) -> None:
    first = PaxosState(
        promised=Version(9, "n1"), accepted=Version(9, "n1"),
        proposal=Proposal(rec(b"k", 9), Version(5, "n2")), committed=Version(5, "n2"),
        decision=Proposal(rec(b"k", 5), ZERO),
        recent=(Decision(ZERO, Version(5, "n2"), Version(5, "n2")),),
    )
    # Every field differs, the proposal and decision going back to none.
    second = PaxosState(promised=Version(12, "n3"), committed=Version(11, "n3"),
                        recent=(Decision(Version(5, "n2"), Version(11, "n3"), Version(11, "n3")),))
    store.apply([], [(b"k", first)])
    assert store.get_paxos(b"k") == first
    store.apply([rec(b"k", 11, "n3")], [(b"k", second), (b"other", first)])
    assert store.get_paxos(b"k") == second
    assert store.get_paxos(b"missing") == EMPTY
    token = key_token(b"k")
    assert store.scan_paxos(TokenRange(token - 1, token), None, 10) == [(b"k", second)]
    assert sorted(store.scan_paxos(FULL, None, 10)) == sorted([(b"k", second), (b"other", first)])


def test_paxos_states_read_after_every_change_are_the_changed_ones(store: Storage) -> None:
    """The SQLite engine caches Paxos states: a state written (from the loop or another
    thread) is what the next read sees, a rolled-back write leaves the one before, and a
    range drop or a purge of settled states forgets them."""
    def state(hlc: int) -> PaxosState:
        return PaxosState(promised=Version(hlc, "n1"), accepted=Version(hlc, "n1"),
                          proposal=Proposal(rec(b"k", hlc), ZERO))

    assert store.get_paxos(b"k") == EMPTY  # "none", cached if any
    store.apply([rec(b"k", 1)], [(b"k", state(1)), (b"old", state(1))])
    assert store.get_paxos(b"k") == state(1)
    assert store.get_paxos(b"k") == state(1)  # from the cache, if any
    writer = threading.Thread(target=store.apply, args=([], [(b"k", state(2))]))
    writer.start()
    writer.join()
    assert store.get_paxos(b"k") == state(2)
    bad = Record(b"k", b"x", "text/plain", Version("not-an-int", "n1"), False, 0)  # type: ignore[arg-type]
    with pytest.raises((TypeError, sqlite3.Error)):
        store.apply([bad], [(b"k", state(3))])
    assert store.get_paxos(b"k") == state(2)
    assert store.get_paxos(b"old") == state(1)
    store.purge(tombstone_before_hlc=2, expired_before_ms=0)  # settled: promised before 2
    assert store.get_paxos(b"old") == EMPTY
    assert store.get_paxos(b"k") == state(2)
    token = key_token(b"k")
    store.delete_range(TokenRange(token - 1, token))
    assert store.get_paxos(b"k") == EMPTY


# --- apply: last-write-wins --------------------------------------------------------------


def test_apply_keeps_newer(store: Storage) -> None:
    assert store.apply([rec(b"k", 1)]) == [None]
    assert store.apply([rec(b"k", 2)]) == [None]
    got = store.get(b"k")
    assert got == rec(b"k", 2)
    assert store.get_version(b"k") == (2, "n1", 0, 0)


def test_apply_equal_version_is_idempotent(store: Storage) -> None:
    first = rec(b"k", 5, value=b"first")
    assert store.apply([first]) == [None]
    assert store.apply([first]) == [None]
    # Same version, other bytes (cannot happen between honest nodes): the stored one stays.
    assert store.apply([rec(b"k", 5, value=b"second")]) == [None]
    assert store.get(b"k") == first
    assert store.counts() == (1, 0)


def test_apply_older_returns_stored_version(store: Storage) -> None:
    store.apply([rec(b"k", 5, node="b")])
    assert store.apply([rec(b"k", 4, node="z")]) == [Version(5, "b")]
    assert store.apply([rec(b"k", 5, node="a")]) == [Version(5, "b")]  # node breaks the tie
    assert store.get(b"k") == rec(b"k", 5, node="b")
    assert store.apply([rec(b"k", 5, node="c")]) == [None]
    assert store.get_version(b"k") == (5, "c", 0, 0)


def test_missing_key(store: Storage) -> None:
    assert store.get(b"nope") is None
    assert store.get_version(b"nope") is None


def test_record_fields_round_trip(store: Storage) -> None:
    r = Record(b"\x00\xffbin/key", bytes(range(256)), "application/x-thing; q=1",
               Version(1 << 60, "node-7.peers"), False, 1_800_000_000_000)
    store.apply([r])
    assert store.get(r.key) == r
    assert store.get_version(r.key) == (r.version.hlc, r.version.node, 0, r.expires_ms)


def test_tombstones(store: Storage) -> None:
    store.apply([rec(b"k", 1), rec(b"other", 1)])
    assert store.apply([rec(b"k", 2, tomb=True)]) == [None]
    got = store.get(b"k")
    assert got is not None and got.tombstone and not got.live(0)
    assert store.get_version(b"k") == (2, "n1", 1, 0)
    assert store.counts() == (2, 1)
    # An older write does not resurrect the key; a newer one does.
    assert store.apply([rec(b"k", 1, node="zz")]) == [Version(2, "n1")]
    assert store.get(b"k").tombstone  # type: ignore[union-attr]
    assert store.apply([rec(b"k", 3)]) == [None]
    assert store.get(b"k") == rec(b"k", 3)
    assert store.counts() == (2, 0)


def test_tombstone_for_unknown_key_is_stored(store: Storage) -> None:
    assert store.apply([rec(b"ghost", 9, tomb=True)]) == [None]
    assert store.get_version(b"ghost") == (9, "n1", 1, 0)
    assert store.counts() == (1, 1)


def test_batch_results_per_record(store: Storage) -> None:
    store.apply([rec(b"a", 5), rec(b"b", 5), rec(b"c", 5)])
    results = store.apply([
        rec(b"new", 1),  # absent: stored
        rec(b"a", 4),  # older: refused with the stored version
        rec(b"b", 5),  # equal: idempotent
        rec(b"c", 6),  # newer: stored
        rec(b"new", 3),  # the same key again in one batch: newer than the first
        rec(b"new", 2),  # ... and older than the one just written
    ])
    assert results == [None, Version(5, "n1"), None, None, None, Version(3, "n1")]
    assert store.get(b"new") == rec(b"new", 3)
    assert store.get(b"c") == rec(b"c", 6)


def test_empty_batch(store: Storage) -> None:
    assert store.apply([]) == []
    assert store.counts() == (0, 0)


@pytest.mark.parametrize(
    "kind",
    [
        "memory",
        "sqlite",
    ],
)
def test_failing_batch_applies_nothing(kind: str, tmp_path: Path) -> None:
    engine = make_engine(kind, tmp_path)
    try:
        engine.apply([rec(b"b", 1)])
        bad = Record(b"b", b"x", "text/plain", Version("not-an-int", "n1"), False, 0)  # type: ignore[arg-type]
        # Memory compares the versions in Python; SQLite's STRICT tables refuse the type.
        with pytest.raises((TypeError, sqlite3.Error)):
            engine.apply([rec(b"a", 1), rec(b"b", 2), bad])
        assert engine.get(b"a") is None
        assert engine.get(b"b") == rec(b"b", 1)
        assert engine.counts() == (1, 0)
    finally:
        engine.close()


# --- scans ----------------------------------------------------------------------------


def filled(store: Storage, n: int = 200) -> list[Record]:
    """n records (every 7th a tombstone), returned in (token, key) order."""
    records = [rec(b"key-%03d" % i, i + 1, tomb=i % 7 == 0) for i in range(n)]
    store.apply(records)
    return sorted(records, key=lambda r: (r.token, r.key))


def test_scan_range_full_space_in_token_order(store: Storage) -> None:
    expected = filled(store)
    assert store.scan_range(FULL, None, 1000) == expected
    assert any(r.tombstone for r in expected)  # tombstones are streamed like values


def test_scan_range_bounds_are_open_left_closed_right(store: Storage) -> None:
    expected = filled(store)
    tokens = [r.token for r in expected]
    lo, hi = tokens[20], tokens[120]
    got = store.scan_range(TokenRange(lo, hi), None, 1000)
    assert got == expected[21:121]
    assert store.scan_range(TokenRange(lo, lo + 1), None, 10) == []
    assert store.scan_range(TokenRange(lo - 1, lo), None, 10) == [expected[20]]
    assert store.scan_range(TokenRange(MIN_LO, tokens[0]), None, 10) == [expected[0]]
    assert store.scan_range(TokenRange(tokens[-1], MAX_TOKEN), None, 10) == []


@pytest.mark.parametrize("page", [1, 7, 200])
def test_scan_range_pagination(store: Storage, page: int) -> None:
    expected = filled(store)
    tokens = [r.token for r in expected]
    rng = TokenRange(tokens[10], tokens[150])
    assert scan_all(store, rng, page) == expected[11:151]


def test_scan_range_after_outside_the_range(store: Storage) -> None:
    expected = filled(store)
    tokens = [r.token for r in expected]
    rng = TokenRange(tokens[50], tokens[60])
    # A cursor before the range does not widen it; one past it yields nothing.
    assert store.scan_range(rng, (tokens[10], b""), 100) == expected[51:61]
    assert store.scan_range(rng, (tokens[60], expected[60].key), 100) == []
    # The cursor is a (token, key) position: an empty key sorts before that token's record.
    assert store.scan_range(rng, (tokens[55], b""), 100) == expected[55:61]


# --- list_keys ------------------------------------------------------------------------

LIST_KEYS = sorted({
    b"\x00", b"\x00\x00", b"\x01", b"a", b"a\x00", b"a/b", b"a/c", b"ab", b"a\x7f", b"a\x80",
    b"a\xfe", b"a\xff", b"a\xff\x00", b"a\xff\xff", b"a\xff\xff\x01", b"b", b"caf\xc3\xa9",
    b"\xfe", b"\xfe\xff", b"\xff", b"\xff\x00", b"\xff\xff", b"\xff\xff\xff",
})


def model_list(prefix: bytes, after: bytes | None, limit: int) -> list[bytes]:
    return [k for k in LIST_KEYS if k.startswith(prefix) and (after is None or k > after)][:limit]


@pytest.fixture
def listing(store: Storage) -> Storage:
    store.apply([rec(k, i + 1, tomb=k == b"a/c") for i, k in enumerate(LIST_KEYS)])
    return store


@pytest.mark.parametrize(
    "prefix", [b"", b"a", b"a/", b"a\xff", b"a\xff\xff", b"\xff", b"\xff\xff", b"\xfe", b"\x00", b"zz"]
)
def test_list_keys_prefix_bytewise(listing: Storage, prefix: bytes) -> None:
    got = listing.list_keys(prefix, None, 1000)
    assert [i.key for i in got] == model_list(prefix, None, 1000)


def test_list_keys_metadata_includes_tombstones(listing: Storage) -> None:
    info = {i.key: i for i in listing.list_keys(b"a/", None, 10)}
    assert set(info) == {b"a/b", b"a/c"}
    assert info[b"a/c"].tombstone and not info[b"a/b"].tombstone
    assert info[b"a/b"].version == Version(LIST_KEYS.index(b"a/b") + 1, "n1")
    assert info[b"a/b"].expires_ms == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prefix=st.binary(max_size=3).map(lambda b: bytes(x for x in b if x in b"\x00a/\xfe\xff")),
    after=st.none() | st.sampled_from(LIST_KEYS) | st.binary(max_size=3),
    limit=st.integers(1, 30),
)
def test_list_keys_matches_model(listing: Storage, prefix: bytes, after: bytes | None, limit: int) -> None:
    """Read-only queries over one fixed data set, so sharing the fixture is safe."""
    assert [i.key for i in listing.list_keys(prefix, after, limit)] == model_list(prefix, after, limit)


@pytest.mark.parametrize("prefix", [b"", b"a", b"\xff"])
def test_list_keys_cursor_pages_through_everything(listing: Storage, prefix: bytes) -> None:
    seen: list[bytes] = []
    after: bytes | None = None
    while page := listing.list_keys(prefix, after, 3):
        seen.extend(i.key for i in page)
        after = page[-1].key
    assert seen == model_list(prefix, None, 1000)


def test_prefix_upper_bound() -> None:
    assert prefix_upper_bound(b"") is None
    assert prefix_upper_bound(b"\xff\xff") is None
    assert prefix_upper_bound(b"a") == b"b"
    assert prefix_upper_bound(b"a\xff\xff") == b"b"
    assert prefix_upper_bound(b"a\xfe") == b"a\xff"


# --- delete_range, purge, counts ----------------------------------------------------------


def test_delete_range(store: Storage) -> None:
    expected = filled(store, 100)
    tokens = [r.token for r in expected]
    assert store.delete_range(TokenRange(tokens[10], tokens[40])) == 30
    assert scan_all(store) == expected[:11] + expected[41:]
    assert store.delete_range(TokenRange(tokens[10], tokens[40])) == 0
    assert store.delete_range(FULL) == 70
    assert store.counts() == (0, 0)


def test_purge_drops_old_tombstones_and_expired_records_only(store: Storage) -> None:
    store.apply([
        rec(b"old-tomb", 10, tomb=True),
        rec(b"edge-tomb", 50, tomb=True),  # hlc == bound: kept (strictly older only)
        rec(b"new-tomb", 100, tomb=True),
        rec(b"old-value", 1),  # old but live and without expiry: kept
        rec(b"expired", 60, expires=1_000),
        rec(b"edge-expiry", 60, expires=2_000),  # expires == bound: kept
        rec(b"future-expiry", 60, expires=5_000),
    ])
    assert store.counts() == (7, 3)
    assert store.purge(tombstone_before_hlc=50, expired_before_ms=2_000) == 2
    remaining = {r.key for r in scan_all(store)}
    assert remaining == {b"edge-tomb", b"new-tomb", b"old-value", b"edge-expiry", b"future-expiry"}
    assert store.counts() == (5, 2)
    assert store.purge(50, 2_000) == 0


def test_point_reads_through_the_cache_see_every_committed_change(tmp_path: Path) -> None:
    """The SQLite engine caches point reads: writes from the loop and from another
    thread, refusals, deletions and purges must all show through it at once."""
    store = SqliteStorage(str(tmp_path / "db"))
    try:
        store.apply([rec(b"k", 1), rec(b"t", 5, tomb=True)])
        assert store.get(b"k") == rec(b"k", 1)
        assert store.get(b"k") == rec(b"k", 1)  # now from the cache
        writer = threading.Thread(target=store.apply, args=([rec(b"k", 2)],))
        writer.start()
        writer.join()
        assert store.get(b"k") == rec(b"k", 2)
        assert store.get_version(b"k") == (2, "n1", 0, 0)
        assert store.apply([rec(b"k", 1, node="zz")]) == [Version(2, "n1")]
        assert store.get(b"k") == rec(b"k", 2)
        assert store.get_version(b"t") == (5, "n1", 1, 0)
        assert store.purge(tombstone_before_hlc=10, expired_before_ms=0) == 1
        assert store.get(b"t") is None and store.get_version(b"t") is None
        assert store.delete_range(FULL) == 1
        assert store.get(b"k") is None
    finally:
        store.close()


# --- hints ----------------------------------------------------------------------------


def test_hints_lifecycle(store: Storage) -> None:
    h1, h2, h3 = rec(b"a", 1), rec(b"b", 2, tomb=True), rec(b"c", 3, expires=99)
    store.add_hints([("node-1", 100, h1), ("node-2", 200, h2), ("node-1", 300, h3)])
    assert store.hint_counts() == {"node-1": 2, "node-2": 1}
    assert store.counts() == (0, 0)  # hints are not records

    node1 = store.hints_for("node-1", 10)
    assert [(h.target, h.created_ms, h.record) for h in node1] == [("node-1", 100, h1), ("node-1", 300, h3)]
    assert node1[0].id < node1[1].id
    assert store.hints_for("node-1", 1) == node1[:1]
    (node2,) = store.hints_for("node-2", 10)
    assert node2.record == h2 and node2.record.tombstone
    assert store.hints_for("node-9", 10) == []

    store.drop_hints([node1[0].id, 123_456])  # unknown ids are ignored
    store.drop_hints([])
    assert store.hints_for("node-1", 10) == node1[1:]
    assert store.hint_counts() == {"node-1": 1, "node-2": 1}

    assert store.expire_hints(created_before_ms=300) == 1  # node-2's (200); 300 == bound stays
    assert store.hint_counts() == {"node-1": 1}
    assert store.expire_hints(created_before_ms=301) == 1
    assert store.hint_counts() == {}


def test_hints_for_returns_oldest_first(store: Storage) -> None:
    """Replay order is insertion order, across batches, so a peer gets writes in order."""
    store.add_hints([("t", 5, rec(b"a", 1)), ("u", 5, rec(b"x", 1))])
    store.add_hints([("t", 1, rec(b"a", 2)), ("t", 9, rec(b"b", 1))])
    hints = store.hints_for("t", 10)
    assert [(h.record.key, h.record.version.hlc) for h in hints] == [(b"a", 1), (b"a", 2), (b"b", 1)]
    assert [h.id for h in hints] == sorted({h.id for h in hints})


# --- digests (anti-entropy) ---------------------------------------------------------------


@pytest.mark.parametrize("buckets", [1, 3, 64])
def test_bucket_range_inverts_bucket_of(buckets: int) -> None:
    for rng in (FULL, TokenRange(100, 117), TokenRange(5, 5 + buckets), TokenRange(-1, 1 << 40)):
        pieces = [bucket_range(rng, b, buckets) for b in range(buckets)]
        assert pieces[0].lo == rng.lo and pieces[-1].hi == rng.hi
        for b, piece in enumerate(pieces):
            for token in {piece.lo + 1, piece.hi} if piece.width else set():
                assert token in rng and bucket_of(rng, token, buckets) == b


def test_digest_tracks_versions_per_bucket(tmp_path: Path) -> None:
    mem, lite = MemoryStorage(), make_engine("sqlite", tmp_path)
    try:
        for engine in (mem, lite):
            filled(engine, 100)
        before = mem.digest(FULL, 16)
        assert lite.digest(FULL, 16) == before
        mem.apply([rec(b"key-042", 1000)])
        changed = [b for b, (x, y) in enumerate(zip(mem.digest(FULL, 16), before, strict=True)) if x != y]
        assert changed == [bucket_of(FULL, key_token(b"key-042"), 16)]
        lite.apply([rec(b"key-042", 1000)])
        assert lite.digest(FULL, 16) == mem.digest(FULL, 16)
    finally:
        lite.close()


# --- both engines against a model ---------------------------------------------------------

RECORDS = st.builds(
    rec,
    key=st.sampled_from([b"a", b"b", b"c", b"\xff", b"a/\x00", b"k" * 40]),
    hlc=st.integers(0, 12),
    node=st.sampled_from(["n1", "n2"]),
    value=st.binary(max_size=8),
    tomb=st.booleans(),
    expires=st.sampled_from([0, 0, 5, 10]),
)


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(st.lists(RECORDS, max_size=6), max_size=8))
def test_engines_agree_with_model(batches: list[list[Record]]) -> None:
    model: dict[bytes, Record] = {}
    with tempfile.TemporaryDirectory() as tmp:
        engines = [MemoryStorage(), make_engine("sqlite", Path(tmp), synchronous="OFF")]
        try:
            for batch in batches:
                expected: list[Version | None] = []
                for r in batch:
                    cur = model.get(r.key)
                    if cur is None or r.version > cur.version:
                        model[r.key] = r
                    expected.append(None if cur is None or r.version >= cur.version else cur.version)
                for engine in engines:
                    assert engine.apply(batch) == expected
            ordered = sorted(model.values(), key=lambda r: (r.token, r.key))
            tombs = sum(r.tombstone for r in model.values())
            for engine in engines:
                assert {k: engine.get(k) for k in model} == model
                assert scan_all(engine) == ordered
                assert [i.key for i in engine.list_keys(b"", None, 100)] == sorted(model)
                assert engine.counts() == (len(model), tombs)
        finally:
            for engine in engines:
                engine.close()


# --- SQLite specifics -------------------------------------------------------------------


def test_sqlite_survives_close_and_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "node.db")
    first = SqliteStorage(path)
    records = [rec(b"k%d" % i, i + 1, tomb=i == 3) for i in range(10)]
    first.apply(records)
    first.add_hints([("node-2", 7, records[0])])
    first.close()
    second = SqliteStorage(path)
    try:
        assert [second.get(r.key) for r in records] == records
        assert second.counts() == (10, 1)
        assert [h.record for h in second.hints_for("node-2", 10)] == [records[0]]
    finally:
        second.close()


def test_sqlite_keeps_acknowledged_writes_after_sigkill(tmp_path: Path) -> None:
    """Rule 5 at the engine level: once apply() returns, the write survives SIGKILL."""
    path = str(tmp_path / "node.db")
    script = (
        "import os, signal, sys\n"
        "from ringkv.node.records import Record\n"
        "from ringkv.node.storage import SqliteStorage\n"
        "from ringkv.node.versions import Version\n"
        "s = SqliteStorage(sys.argv[1])\n"
        "for i in range(50):\n"
        "    s.apply([Record(b'k%d' % i, b'v%d' % i, 'text/plain', Version(i + 1, 'n1'))])\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, path], check=False, capture_output=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    reopened = SqliteStorage(path)
    try:
        assert reopened.counts() == (50, 0)
        assert reopened.get(b"k49") == Record(b"k49", b"v49", "text/plain", Version(50, "n1"))
    finally:
        reopened.close()


def test_sqlite_rejects_a_file_of_garbage(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    path.write_bytes(bytes((i * 7919 + 13) % 256 for i in range(8192)))
    with pytest.raises(StorageError, match=r"cannot open the database.*refusing to start") as err:
        SqliteStorage(str(path))
    assert str(path) in str(err.value)


def test_sqlite_rejects_a_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    store = SqliteStorage(str(path))
    store.apply([rec(b"key-%04d" % i, i + 1, value=b"x" * 300) for i in range(2000)])
    store.close()
    page_size = 4096
    with sqlite3.connect(path) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = path.read_bytes()
    pages = len(data) // page_size
    assert pages > 20
    path.write_bytes(data[: (pages // 2) * page_size + page_size // 2])  # cut mid-page
    with pytest.raises(StorageError, match="refusing to start") as err:
        SqliteStorage(str(path))
    assert str(path) in str(err.value)


def test_sqlite_reports_synchronous_and_uses_wal(tmp_path: Path) -> None:
    default = SqliteStorage(str(tmp_path / "a.db"))
    full = SqliteStorage(str(tmp_path / "b.db"), synchronous="full")
    try:
        assert default.synchronous == "NORMAL"
        assert full.synchronous == "FULL"
        with sqlite3.connect(tmp_path / "a.db") as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
    finally:
        default.close()
        full.close()
    assert MemoryStorage().synchronous == "n/a"
    with pytest.raises(ValueError, match="synchronous"):
        SqliteStorage(str(tmp_path / "c.db"), synchronous="sometimes")


def test_sqlite_creates_missing_directories(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "node.db"
    store = SqliteStorage(str(path))
    store.close()
    assert os.path.exists(path)
