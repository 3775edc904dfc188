"""The point-read caches in front of SQLite, and the one rule that keeps them true.

A SQLite point read costs 4-6 µs on a busy node (a shared WAL lock taken and dropped with
fcntl, a B-tree descent, the row's objects), about a tenth of a quorum read's CPU, so
`SqliteStorage.get` reads through this cache; `get_paxos` reads the keys' Paxos states
through another one (a state decoded from its row costs ~25 µs, and a round reads it three
times on each replica). The rule: once a write is acknowledged, the
cache never serves an older version of its key. Reads run on the event loop, one at a
time; write transactions run on the loop and on the storage thread, and the two may
overlap. So:

- every write transaction tells the cache what it did (`Transaction`) after its commit and
  before its caller can ack: the records it stored replace their keys' entries, keys it
  touched without storing a known record leave, and a delete by condition (a range, a
  purge) empties the cache;
- a transaction that another one began or ended beside drops its keys instead: the other
  may have committed a newer version after it and reached the cache first;
- a read fills the cache only if no write transaction began or ended while it read.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from .records import Record

V = TypeVar("V")

# Bytes of keys and values (plus a per-record estimate of the objects around them) that the
# cache holds, per node: a few hot keys' worth, a small part of RSS.
CACHE_BYTES = 32 * 1024 * 1024
CACHE_OVERHEAD = 400  # bytes of Python objects per cached record besides key and value


def record_cost(key: bytes, rec: Record) -> int:
    return len(key) + len(rec.value) + CACHE_OVERHEAD


class ReadCache(Generic[V]):
    """Values by key (records, unless told otherwise), oldest first out once over
    `capacity` bytes as `cost` counts them."""

    def __init__(self, capacity: int = CACHE_BYTES,
                 cost: Callable[[bytes, V], int] = record_cost) -> None:  # type: ignore[assignment]
        self.capacity = capacity
        self._cost = cost
        # An OrderedDict, not a dict: a dict finds its first entry by scanning past every
        # slot earlier evictions emptied, which made each eviction cost ~30 µs once the
        # cache was full (a 1M-key load ran 30% slower).
        self._entries: OrderedDict[bytes, V] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._generation = 0  # write transactions begun or ended so far
        # A hit, without the lock: one C call, the hot path of every read. (The dict
        # changes only under the lock, and a lookup is atomic under the GIL.)
        self.get: Callable[[bytes], V | None] = self._entries.get

    def __len__(self) -> int:
        return len(self._entries)

    def load(self, key: bytes, read: Callable[[bytes], V | None]) -> V | None:
        """A miss: `read(key)` from the database, kept if no write transaction began or
        ended meanwhile.

        A transaction that runs through the whole read may commit a newer record after
        `read` loaded an older one: its `end` then replaces or drops the key, and until
        then its caller has not acked."""
        generation = self._generation
        value = read(key)
        if value is not None:
            with self._lock:
                if self._generation == generation:
                    self._put(key, value)
        return value

    def begin(self) -> Transaction[V]:
        """A write transaction is about to begin: call before its BEGIN."""
        with self._lock:
            self._generation += 1
            return Transaction(self, self._generation)

    def _end(self, txn: Transaction[V], committed: bool) -> None:
        with self._lock:
            if txn.everything:
                self._entries.clear()
                self._size = 0
            elif committed and self._generation == txn.began:
                for key, value in txn.stored:
                    self._put(key, value)
                for key in txn.touched:
                    self._drop(key)
            else:
                for key, _ in txn.stored:
                    self._drop(key)
                for key in txn.touched:
                    self._drop(key)
            self._generation += 1

    def _put(self, key: bytes, value: V) -> None:
        """Insert or replace (the lock held); the oldest entries go when over capacity."""
        self._drop(key)
        self._entries[key] = value
        self._size += self._cost(key, value)
        while self._size > self.capacity:
            gone_key, gone = self._entries.popitem(last=False)
            self._size -= self._cost(gone_key, gone)

    def _drop(self, key: bytes) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._size -= self._cost(key, old)


class Transaction(Generic[V]):
    """What one write transaction did to the cached table, told to the cache as it
    happens and applied by `end`, after the commit (or the rollback)."""

    __slots__ = ("began", "cache", "everything", "stored", "touched")

    def __init__(self, cache: ReadCache[V], began: int) -> None:
        self.cache = cache
        self.began = began
        self.stored: list[tuple[bytes, V]] = []
        self.touched: list[bytes] = []
        self.everything = False

    def store(self, key: bytes, value: V) -> None:
        """It stored `value`: what `key` holds once committed."""
        self.stored.append((key, value))

    def touch(self, key: bytes) -> None:
        """It may have left `key` holding a record the cache does not know."""
        self.touched.append(key)

    def touch_all(self) -> None:
        """It deleted rows by a condition: any key may have changed."""
        self.everything = True

    def end(self, committed: bool) -> None:
        """The transaction committed (True) or rolled back: call before its caller acks."""
        self.cache._end(self, committed)
