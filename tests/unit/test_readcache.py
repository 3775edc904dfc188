"""The point-read cache's rule: once a write is acknowledged, the cache never serves an
older version of its key.

The named tests drive the interleavings the rule exists for (a read overlapping a write,
two overlapping writes, a rollback, a delete by condition); a hypothesis state machine then
interleaves writes, commits, acknowledgements and reads of a model database at random and
checks after every step that each cached record is the database's, except for keys a
transaction has committed but not yet acknowledged (its caller cannot have answered yet).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ringkv.node.readcache import CACHE_OVERHEAD, ReadCache, Transaction
from ringkv.node.records import Record
from ringkv.node.versions import Version


def rec(key: bytes, hlc: int, value: bytes = b"") -> Record:
    return Record(key, value or b"v%d" % hlc, "text/plain", Version(hlc, "n1"))


def write(cache: ReadCache, *records: Record) -> None:
    """A whole write transaction that stores every record and commits."""
    txn = cache.begin()
    for r in records:
        txn.store(r.key, r)
    txn.end(committed=True)


def test_a_committed_write_replaces_the_cached_record() -> None:
    cache = ReadCache()
    assert cache.load(b"k", lambda _: rec(b"k", 1)) == rec(b"k", 1)
    assert cache.get(b"k") == rec(b"k", 1)
    write(cache, rec(b"k", 2))
    assert cache.get(b"k") == rec(b"k", 2)


def test_a_write_overlapping_a_read_never_leaves_the_older_record_cached() -> None:
    """The read loaded version 1; a write of version 2 began and was acknowledged before
    the read returned. Keeping the read's record would serve 1 after 2 was acked."""
    cache = ReadCache()

    def read_then_write_lands(key: bytes) -> Record:
        loaded = rec(key, 1)
        write(cache, rec(key, 2))
        return loaded

    assert cache.load(b"k", read_then_write_lands) == rec(b"k", 1)
    assert cache.get(b"k") == rec(b"k", 2)


def test_a_read_beside_a_running_write_is_replaced_when_the_write_ends() -> None:
    """A write began before the read and commits after the read loaded: the read may keep
    the older record only until that write ends (its caller has not acked before)."""
    cache = ReadCache()
    txn = cache.begin()
    assert cache.load(b"k", lambda key: rec(key, 1)) == rec(b"k", 1)
    txn.store(b"k", rec(b"k", 2))
    txn.end(committed=True)
    assert cache.get(b"k") == rec(b"k", 2)


def test_overlapping_writes_drop_their_keys() -> None:
    """Two transactions overlap (one on the event loop, one on the storage thread): the
    later commit may reach the cache first, so whichever ends second must not put its
    record over the other's, and neither may keep a record once the other moved on."""
    cache = ReadCache()
    first, second = cache.begin(), cache.begin()
    first.store(b"k", rec(b"k", 1))  # commits first
    second.store(b"k", rec(b"k", 2))  # commits second, reaches the cache first
    second.end(committed=True)
    assert cache.get(b"k") in (None, rec(b"k", 2))
    first.end(committed=True)
    assert cache.get(b"k") is None


def test_a_key_a_write_did_not_store_leaves_the_cache() -> None:
    """A refused or equal version: the database may hold a record the cache never saw."""
    cache = ReadCache()
    write(cache, rec(b"k", 5), rec(b"j", 1))
    txn = cache.begin()
    txn.touch(b"k")
    txn.store(b"j", rec(b"j", 2))
    txn.end(committed=True)
    assert cache.get(b"k") is None
    assert cache.get(b"j") == rec(b"j", 2)


def test_a_rolled_back_write_drops_what_it_meant_to_store() -> None:
    cache = ReadCache()
    write(cache, rec(b"k", 1))
    txn = cache.begin()
    txn.store(b"k", rec(b"k", 2))
    txn.end(committed=False)
    assert cache.get(b"k") is None


def test_deletes_and_purges_empty_the_cache() -> None:
    """A delete by condition (a range, a purge) may remove any key: committed or not, the
    cache is emptied."""
    for committed in (True, False):
        cache = ReadCache()
        write(cache, rec(b"a", 1), rec(b"b", 1))
        txn = cache.begin()
        txn.touch_all()
        txn.end(committed)
        assert len(cache) == 0 and cache.get(b"a") is None and cache.get(b"b") is None


def test_the_cache_is_bounded_and_evicts_the_oldest() -> None:
    size = len(b"key-000") + len(b"v1") + CACHE_OVERHEAD
    cache = ReadCache(capacity=10 * size)
    for i in range(25):
        write(cache, rec(b"key-%03d" % i, 1))
    assert len(cache) == 10
    assert cache.get(b"key-014") is None
    assert all(cache.get(b"key-%03d" % i) == rec(b"key-%03d" % i, 1) for i in range(15, 25))
    write(cache, rec(b"key-015", 2, b"v2"))  # a replacement is not counted twice
    assert len(cache) == 10
    # A miss is read again from the database (and fills the cache again).
    assert cache.load(b"key-000", lambda key: rec(key, 1)) == rec(b"key-000", 1)
    assert cache.get(b"key-000") == rec(b"key-000", 1) and len(cache) == 10


# -- interleavings at random, against a model database --------------------------------

KEYS = (b"a", b"b", b"c")


@dataclass
class Open:
    """A write transaction of the model: begun, maybe committed, not yet acknowledged."""

    txn: Transaction
    records: list[Record]
    delete: bool  # a delete by condition (delete_range, purge) instead of an upsert
    committed: bool | None = None  # None until it committed (True) or rolled back (False)
    changed: set[bytes] = field(default_factory=set)  # keys its commit changed


# A step of other transactions while a read loads: (what, which, key, flag), where
# `which` picks among the transactions that can take that step; "write" is a whole
# transaction (begin, commit, acknowledge) on the storage thread.
STEPS = st.lists(st.tuples(st.sampled_from(["begin", "commit", "acknowledge", "write"]),
                           st.integers(0, 7), st.sampled_from(KEYS), st.booleans()), max_size=3)


class CacheMachine(RuleBasedStateMachine):
    """Transactions commit one at a time, as SQLite serialises writers; a read loads from
    the database between any two steps of other transactions (the storage thread runs
    beside the event loop)."""

    def __init__(self) -> None:
        super().__init__()
        self.cache = ReadCache()
        self.db: dict[bytes, Record] = {}
        self.open: list[Open] = []
        self.hlc = 0

    @initialize(capacity=st.sampled_from([1_000, 2_000, 100_000]))
    def small_cache(self, capacity: int) -> None:
        """Room for two, four or every record: evictions make reads miss."""
        self.cache = ReadCache(capacity=capacity)

    @rule(keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=3),
          older=st.booleans(), delete=st.booleans())
    def begin(self, keys: list[bytes], older: bool, delete: bool) -> None:
        """`older`: versions below what is stored (a refused write, a stale repair);
        `delete`: a delete by condition (delete_range, purge) of those keys."""
        records = []
        for key in keys:
            self.hlc += 1
            records.append(rec(key, self.hlc - (10 if older else 0)))
        self.open.append(Open(self.cache.begin(), records, delete and not older))

    @rule(which=st.integers(0, 7), rollback=st.booleans())
    @precondition(lambda self: any(o.committed is None for o in self.open))
    def commit(self, which: int, rollback: bool) -> None:
        pending = [o for o in self.open if o.committed is None]
        o = pending[which % len(pending)]
        if o.delete:
            o.txn.touch_all()
            if not rollback:
                doomed = {r.key for r in o.records} & self.db.keys()
                for key in doomed:
                    del self.db[key]
                o.changed |= doomed
        else:
            for r in o.records:  # the upsert: keep the newer version
                stored = self.db.get(r.key)
                if stored is None or r.version > stored.version:
                    o.txn.store(r.key, r)
                    if not rollback:
                        self.db[r.key] = r
                        o.changed.add(r.key)
                else:
                    o.txn.touch(r.key)
        o.committed = not rollback

    @rule(which=st.integers(0, 7))
    @precondition(lambda self: any(o.committed is not None for o in self.open))
    def acknowledge(self, which: int) -> None:
        done = [o for o in self.open if o.committed is not None]
        o = done[which % len(done)]
        o.txn.end(bool(o.committed))
        self.open.remove(o)

    @rule()
    def quiesce(self) -> None:
        """Every open transaction commits and ends: reads find the cache quiet again."""
        while any(o.committed is None for o in self.open):
            self.commit(0, rollback=False)
        while self.open:
            self.acknowledge(0)

    @rule(key=st.sampled_from(KEYS), before=STEPS, after=STEPS)
    def read(self, key: bytes, before: list[tuple[str, int, bytes, bool]],
             after: list[tuple[str, int, bytes, bool]]) -> None:
        """A point read whose load from the database overlaps other transactions' steps."""
        def load(k: bytes) -> Record | None:
            self._steps(before)
            loaded = self.db.get(k)
            self._steps(after)
            return loaded

        if self.cache.get(key) is None:  # as SqliteStorage.get reads
            self.cache.load(key, load)

    def _steps(self, steps: list[tuple[str, int, bytes, bool]]) -> None:
        for what, which, key, flag in steps:
            if what == "begin":
                self.begin([key], older=False, delete=False)
            elif what == "commit" and any(o.committed is None for o in self.open):
                self.commit(which, rollback=flag)
            elif what == "acknowledge" and any(o.committed is not None for o in self.open):
                self.acknowledge(which)
            elif what == "write":
                self.begin([key], older=flag, delete=False)
                mine = self.open[-1]
                self.commit(-1, rollback=False)  # the newest pending transaction: this one
                self.acknowledge([o for o in self.open if o.committed is not None].index(mine))

    @invariant()
    def cached_records_are_the_databases(self) -> None:
        """Only a key that a committed, unacknowledged transaction changed may be cached
        with an older record: that write's caller has not been answered yet."""
        unacked = [o for o in self.open if o.committed]
        anything = any(o.delete and o.changed for o in unacked)
        window = set().union(*(o.changed for o in unacked))
        for key in KEYS:
            cached = self.cache.get(key)
            if cached is not None and not anything and key not in window:
                assert cached == self.db.get(key), (key, cached, self.db.get(key))


CacheMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=30,
                                          deadline=None)
test_interleaved_reads_and_writes_keep_the_cache_true = CacheMachine.TestCase
