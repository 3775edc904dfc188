"""Local storage engines behind one interface: SQLite (WAL, the default) and in-memory.

The interface is synchronous on purpose: the SQLite engine runs its writes on one writer
thread (see `replica.LocalReplica`), which groups every write queued during an event-loop
tick into one transaction (group commit). `apply` keeps the newer version of each record
(last-write-wins on `Version`); equal versions are idempotent; an older incoming version
is not applied and the stored version is returned, which lets a replica refuse a stale
client write (correctness rule 2) while repairs simply ignore it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import xxhash

from .paxos import EMPTY, PaxosState, settled, state_from_row, state_row
from .readcache import CACHE_OVERHEAD, ReadCache, Transaction
from .records import Record
from .ring import TokenRange, key_token
from .versions import Version

MASK64 = (1 << 64) - 1
PaxosRow = tuple[bytes, PaxosState]
T = TypeVar("T")


class StorageError(Exception):
    """The engine cannot serve (corrupt file, unreadable directory)."""


class StorageFull(StorageError):
    """The disk is full: writes fail, reads keep working."""


class StorageBusy(StorageError):
    """`apply_now` found another writer holding the database: apply on the storage thread."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What a list scan needs of a record: no value bytes."""

    key: bytes
    version: Version
    tombstone: bool
    expires_ms: int


@dataclass(frozen=True, slots=True)
class Hint:
    id: int
    target: str
    created_ms: int
    record: Record


def new_data_id() -> str:
    return uuid.uuid4().hex


def prefix_upper_bound(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with `prefix`."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


class Storage(ABC):
    """What a node needs from its local engine."""

    synchronous = "n/a"
    created = False  # True when this open created an empty store
    # Who this data is: a random id made with the store and kept in it. A node that comes
    # back with another id (a new volume, a lost file) is not the member the ring admitted,
    # whatever its name (see membership.Member.data_id).
    data_id = ""
    # `apply_now` may run on the event loop: a commit there does not wait for the disk.
    inline_writes = True

    @abstractmethod
    def get(self, key: bytes) -> Record | None: ...

    @abstractmethod
    def get_version(self, key: bytes) -> tuple[int, str, int, int] | None:
        """(hlc, node, tombstone 0/1, expires_ms) without the value: a digest read's answer
        as it goes on the wire, so serving one builds no Version and no second tuple."""

    @abstractmethod
    def apply(self, records: Sequence[Record], paxos: Sequence[PaxosRow] = ()
              ) -> list[Version | None]:
        """Apply a batch atomically; per record None (stored, or already had that version)
        or the newer version already stored (not applied). `paxos` rows replace the
        keys' Paxos states, in order, in the same transaction."""

    def apply_now(self, records: Sequence[Record], paxos: Sequence[PaxosRow] = ()
                  ) -> list[Version | None]:
        """`apply` from the event loop: never waits for another writer (StorageBusy)."""
        return self.apply(records, paxos)

    @abstractmethod
    def get_paxos(self, key: bytes) -> PaxosState:
        """The key's Paxos acceptor state (`paxos.EMPTY` if it never had one)."""

    @abstractmethod
    def scan_paxos(self, rng: TokenRange, after: tuple[int, bytes] | None, limit: int
                   ) -> list[PaxosRow]:
        """Paxos states of keys with lo < token <= hi in (token, key) order (handoff)."""

    def checkpoint(self) -> None:  # noqa: B027 - engines without a log need nothing
        """Move what `apply_now` logged into the database file (on the storage thread)."""

    @abstractmethod
    def scan_range(self, rng: TokenRange, after: tuple[int, bytes] | None, limit: int) -> list[Record]:
        """Records with lo < token <= hi in (token, key) order, after the given position."""

    @abstractmethod
    def digest(self, rng: TokenRange, buckets: int) -> list[int]:
        """Per-bucket hashes of (key, version) over equal slices of the range: replicas
        compare these and exchange only the buckets that differ (anti-entropy)."""

    @abstractmethod
    def key_versions(self, rng: TokenRange, after: tuple[int, bytes] | None,
                     limit: int) -> list[tuple[int, bytes, int, str]]:
        """(token, key, hlc, node) of the records in a range, in scan order: what a replica
        that found a digest bucket differing needs to tell which records to fetch."""

    @abstractmethod
    def get_many(self, keys: Sequence[bytes]) -> list[Record]:
        """The stored records of these keys (absent keys are left out)."""

    @abstractmethod
    def list_keys(self, prefix: bytes, after: bytes | None, limit: int) -> list[KeyInfo]:
        """Key metadata in bytewise key order (tombstones included)."""

    @abstractmethod
    def delete_range(self, rng: TokenRange) -> int:
        """Drop the range's records and Paxos states; returns the records dropped."""

    @abstractmethod
    def purge(self, tombstone_before_hlc: int, expired_before_ms: int) -> int:
        """Drop tombstones older than the HLC bound and records expired before the ms bound,
        and Paxos states with nothing in flight whose last ballot is older than the HLC
        bound (`paxos.settled`)."""

    @abstractmethod
    def counts(self) -> tuple[int, int]:
        """(records, tombstones). A scan: call it on the storage thread."""

    @abstractmethod
    def add_hints(self, hints: Sequence[tuple[str, int, Record]]) -> None: ...

    @abstractmethod
    def hints_for(self, target: str, limit: int) -> list[Hint]: ...

    @abstractmethod
    def drop_hints(self, ids: Sequence[int]) -> None: ...

    @abstractmethod
    def expire_hints(self, created_before_ms: int) -> int: ...

    @abstractmethod
    def hint_counts(self) -> dict[str, int]: ...

    def close(self) -> None:  # noqa: B027 - engines without resources need nothing
        pass


def bucket_of(rng: TokenRange, token: int, buckets: int) -> int:
    return (token - rng.lo - 1) * buckets // rng.width


def record_hash(key: bytes, hlc: int, node: str) -> int:
    return xxhash.xxh3_64_intdigest(b"%b\x00%d\x00%b" % (key, hlc, node.encode()))


def bucket_range(rng: TokenRange, bucket: int, buckets: int) -> TokenRange:
    """The token slice of one bucket: the inverse of `bucket_of`."""
    def start(b: int) -> int:  # smallest offset (token - lo - 1) that falls in bucket b
        return -(-b * rng.width // buckets)

    return TokenRange(rng.lo + start(bucket), rng.lo + start(bucket + 1))


class MemoryStorage(Storage):
    """A dict: for tests and for nodes that need no durability."""

    created = True

    def __init__(self) -> None:
        self.data_id = new_data_id()  # memory forgets everything with the process
        self._data: dict[bytes, Record] = {}
        self._paxos: dict[bytes, PaxosState] = {}
        self._hints: dict[int, Hint] = {}
        self._next_hint = 1
        self._lock = threading.Lock()

    def get(self, key: bytes) -> Record | None:
        return self._data.get(key)

    def get_version(self, key: bytes) -> tuple[int, str, int, int] | None:
        rec = self._data.get(key)
        return None if rec is None else (rec.version.hlc, rec.version.node, int(rec.tombstone),
                                         rec.expires_ms)

    def get_paxos(self, key: bytes) -> PaxosState:
        return self._paxos.get(key, EMPTY)

    def scan_paxos(self, rng: TokenRange, after: tuple[int, bytes] | None, limit: int
                   ) -> list[PaxosRow]:
        with self._lock:
            hits = sorted(((key_token(k), k), st) for k, st in self._paxos.items()
                          if key_token(k) in rng)
        return [(pos[1], st) for pos, st in hits if after is None or pos > after][:limit]

    def apply(self, records: Sequence[Record], paxos: Sequence[PaxosRow] = ()
              ) -> list[Version | None]:
        out: list[Version | None] = []
        winners: dict[bytes, Record] = {}
        with self._lock:
            # Decide every record before changing anything: a batch applies atomically.
            for rec in records:
                cur = winners.get(rec.key) or self._data.get(rec.key)
                if cur is None or rec.version > cur.version:
                    winners[rec.key] = rec
                    out.append(None)
                elif rec.version == cur.version:
                    out.append(None)
                else:
                    out.append(cur.version)
            self._paxos.update(paxos)
            self._data.update(winners)
        return out

    def scan_range(self, rng: TokenRange, after: tuple[int, bytes] | None, limit: int) -> list[Record]:
        with self._lock:
            hits = sorted(
                ((r.token, r.key), r) for r in self._data.values() if r.token in rng
            )
        return [r for pos, r in hits if after is None or pos > after][:limit]

    def digest(self, rng: TokenRange, buckets: int) -> list[int]:
        out = [0] * buckets
        with self._lock:
            for r in self._data.values():
                token = r.token
                if token in rng:
                    b = bucket_of(rng, token, buckets)
                    out[b] = (out[b] + record_hash(r.key, r.version.hlc, r.version.node)) & MASK64
        return out

    def key_versions(self, rng: TokenRange, after: tuple[int, bytes] | None,
                     limit: int) -> list[tuple[int, bytes, int, str]]:
        return [(r.token, r.key, r.version.hlc, r.version.node)
                for r in self.scan_range(rng, after, limit)]

    def get_many(self, keys: Sequence[bytes]) -> list[Record]:
        with self._lock:
            return [r for k in keys if (r := self._data.get(k)) is not None]

    def list_keys(self, prefix: bytes, after: bytes | None, limit: int) -> list[KeyInfo]:
        with self._lock:
            keys = sorted(
                k for k in self._data if k.startswith(prefix) and (after is None or k > after)
            )[:limit]
            return [
                KeyInfo(k, self._data[k].version, self._data[k].tombstone, self._data[k].expires_ms)
                for k in keys
            ]

    def delete_range(self, rng: TokenRange) -> int:
        with self._lock:
            doomed = [k for k, r in self._data.items() if r.token in rng]
            for k in doomed:
                del self._data[k]
            for k in [k for k in self._paxos if key_token(k) in rng]:
                del self._paxos[k]
        return len(doomed)

    def purge(self, tombstone_before_hlc: int, expired_before_ms: int) -> int:
        with self._lock:
            for k in [k for k, st in self._paxos.items() if settled(st, tombstone_before_hlc)]:
                del self._paxos[k]
            doomed = [
                k
                for k, r in self._data.items()
                if (r.tombstone and r.version.hlc < tombstone_before_hlc)
                or (0 < r.expires_ms < expired_before_ms)
            ]
            for k in doomed:
                del self._data[k]
        return len(doomed)

    def counts(self) -> tuple[int, int]:
        with self._lock:
            tombs = sum(1 for r in self._data.values() if r.tombstone)
            return len(self._data), tombs

    def add_hints(self, hints: Sequence[tuple[str, int, Record]]) -> None:
        with self._lock:
            for target, created, rec in hints:
                self._hints[self._next_hint] = Hint(self._next_hint, target, created, rec)
                self._next_hint += 1

    def hints_for(self, target: str, limit: int) -> list[Hint]:
        with self._lock:
            return [h for h in self._hints.values() if h.target == target][:limit]

    def drop_hints(self, ids: Sequence[int]) -> None:
        with self._lock:
            for i in ids:
                self._hints.pop(i, None)

    def expire_hints(self, created_before_ms: int) -> int:
        with self._lock:
            doomed = [i for i, h in self._hints.items() if h.created_ms < created_before_ms]
            for i in doomed:
                del self._hints[i]
        return len(doomed)

    def hint_counts(self) -> dict[str, int]:
        with self._lock:
            counts: dict[str, int] = {}
            for h in self._hints.values():
                counts[h.target] = counts.get(h.target, 0) + 1
            return counts


_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key BLOB PRIMARY KEY,
    token INTEGER NOT NULL,
    hlc INTEGER NOT NULL,
    node TEXT NOT NULL,
    tombstone INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    ctype TEXT NOT NULL,
    value BLOB NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS kv_token ON kv (token, key);
CREATE TABLE IF NOT EXISTS hints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a replay drops exactly what it sent
    target TEXT NOT NULL,
    created INTEGER NOT NULL,
    key BLOB NOT NULL,
    hlc INTEGER NOT NULL,
    node TEXT NOT NULL,
    tombstone INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    ctype TEXT NOT NULL,
    value BLOB NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS hints_target ON hints (target, id);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS paxos (  -- the acceptor state of keys with conditional writes
    key BLOB PRIMARY KEY,
    token INTEGER NOT NULL,
    promised_hlc INTEGER NOT NULL,
    promised_node TEXT NOT NULL,
    accepted_hlc INTEGER NOT NULL,
    accepted_node TEXT NOT NULL,
    proposal BLOB,  -- msgpack of [wire record, base hlc, base node]; NULL: none or empty;
                    -- empty: the decision (paxos.DECIDED_PROPOSAL)
    committed_hlc INTEGER NOT NULL,
    committed_node TEXT NOT NULL,
    decision BLOB,  -- the newest decision learnt, as `proposal`
    recent BLOB NOT NULL  -- msgpack of the latest decisions (base, version, ballot)
) STRICT;
CREATE INDEX IF NOT EXISTS paxos_token ON paxos (token, key);
"""

# `paxos.settled` in SQL.
SETTLED_SQL = "promised_hlc < ?"
_PAXOS_COLUMNS = ("promised_hlc, promised_node, accepted_hlc, accepted_node, proposal, "
                  "committed_hlc, committed_node, decision, recent")
# An upsert, not INSERT OR REPLACE: a replace deletes the row and inserts it again, which
# rewrites its paxos_token entry on each of the three commits of a round (a third of a
# conditional write's storage CPU, measured).
_PAXOS_PUT = f"""
INSERT INTO paxos (key, token, {_PAXOS_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET {", ".join(f"{c} = excluded.{c}" for c in _PAXOS_COLUMNS.split(", "))}
"""

# The token is a function of the key, so an update leaves it (and the kv_token index)
# alone: setting it, even to the same value, rewrites the index entry (a quarter of a
# write's cost in SQLite).
_UPSERT = """
INSERT INTO kv (key, token, hlc, node, tombstone, expires, ctype, value)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET
    hlc = excluded.hlc, node = excluded.node,
    tombstone = excluded.tombstone, expires = excluded.expires,
    ctype = excluded.ctype, value = excluded.value
WHERE (excluded.hlc, excluded.node) > (kv.hlc, kv.node)
"""

_COLUMNS = "key, hlc, node, tombstone, expires, ctype, value"
_GET = f"SELECT {_COLUMNS} FROM kv WHERE key = ?"
_GET_PAXOS = f"SELECT {_PAXOS_COLUMNS} FROM paxos WHERE key = ?"

# Paxos states cached per node: the keys with conditional writes in flight or recent.
PAXOS_CACHE_BYTES = 8 * 1024 * 1024


def _state_cost(key: bytes, state: PaxosState) -> int:
    """Bytes of a cached state: its key, its proposals' values and decisions, the objects."""
    cost = len(key) + CACHE_OVERHEAD * (3 + len(state.recent) // 4)
    if state.proposal is not None:
        cost += len(state.proposal.record.value)
    if state.decision is not None and state.decision is not state.proposal:
        cost += len(state.decision.record.value)
    return cost


def _row_record(row: tuple[Any, ...]) -> Record:
    key, hlc, node, tomb, expires, ctype, value = row
    return Record(key, value, ctype, Version(hlc, node), bool(tomb), expires)


class SqliteStorage(Storage):
    """SQLite in WAL mode: crash-safe, inspectable with `sqlite3`, no global lock.

    Two connections: one for the writer thread (batches, scans, maintenance) and one for
    point reads on the event loop, which WAL lets run beside a writer. Point reads go
    through a bounded cache of records (`readcache.ReadCache`), which every write to the
    kv table keeps true, and Paxos states through another, which every write to the paxos
    table keeps true (the same rule, the same transactions). With `synchronous=NORMAL` a
    committed transaction is in the WAL file before the ack, so a SIGKILLed process loses
    nothing it acknowledged; FULL also survives power loss.
    """

    def __init__(self, path: str, synchronous: str = "NORMAL") -> None:
        self.path = path
        self.synchronous = synchronous.upper()
        if self.synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"bad synchronous setting: {synchronous}")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        advice = ("refusing to start. Move the file away to rebuild this node from its "
                  "replicas.")
        try:
            self._w = self._connect()
            # A database without our table is new (or was emptied): the node must not
            # serve it as if it held its data (see NodeService.start).
            self.created = self._w.execute(
                "SELECT count(*) FROM sqlite_master WHERE name = 'kv'").fetchone()[0] == 0
            self._w.executescript(_SCHEMA)
            check = self._w.execute("PRAGMA quick_check(1)").fetchone()[0]
            if check != "ok":
                raise StorageError(f"{path}: integrity check failed ({check}); {advice}")
            self._w.execute("INSERT OR IGNORE INTO meta VALUES ('data_id', ?)", (new_data_id(),))
            self.data_id = self._w.execute(
                "SELECT value FROM meta WHERE name = 'data_id'").fetchone()[0]
            self._r = self._connect()
            self._rc = self._r.cursor()  # point reads, on the event loop only: one cursor
            self._cache: ReadCache[Record] = ReadCache()
            self._paxos_cache: ReadCache[PaxosState] = ReadCache(PAXOS_CACHE_BYTES, _state_cost)
            # With synchronous OFF or NORMAL a commit only appends to the WAL (no fsync),
            # so the event loop commits its group writes itself on this connection: no
            # thread hop per batch. It never waits for a lock (busy_timeout 0: StorageBusy
            # instead) and never checkpoints (the storage thread does, see `checkpoint`).
            self.inline_writes = self.synchronous in ("OFF", "NORMAL")
            self._l = self._connect(busy_timeout_ms=0) if self.inline_writes else None
            if self._l is not None:
                self._l.execute("PRAGMA wal_autocheckpoint=0")
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"{path}: cannot open the database ({exc}); {advice}") from exc

    def _connect(self, busy_timeout_ms: int = 10000) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        return conn

    def get(self, key: bytes) -> Record | None:
        """A point read, through the cache (see `readcache`)."""
        return self._cache.get(key) or self._cache.load(key, self._read_row)

    def _read_row(self, key: bytes) -> Record | None:
        row = self._rc.execute(_GET, (key,)).fetchone()
        return None if row is None else _row_record(row)

    def get_version(self, key: bytes) -> tuple[int, str, int, int] | None:
        rec = self._cache.get(key) or self.get(key)  # a miss reads the whole row: it fills
        if rec is None:
            return None
        v = rec.version
        return (v.hlc, v.node, int(rec.tombstone), rec.expires_ms)

    def get_paxos(self, key: bytes) -> PaxosState:
        """Through its cache (see `readcache`), which keeps "none" too: a round's first
        phase on a key looks for a state that is not there yet."""
        return self._paxos_cache.get(key) or self._paxos_cache.load(key, self._read_paxos) or EMPTY

    def _read_paxos(self, key: bytes) -> PaxosState:
        row = self._rc.execute(_GET_PAXOS, (key,)).fetchone()
        return EMPTY if row is None else state_from_row(row)

    def scan_paxos(self, rng: TokenRange, after: tuple[int, bytes] | None, limit: int
                   ) -> list[PaxosRow]:
        select = f"SELECT key, {_PAXOS_COLUMNS} FROM paxos WHERE token > ? AND token <= ?"
        if after is None:
            rows = self._w.execute(select + " ORDER BY token, key LIMIT ?", (rng.lo, rng.hi, limit))
        else:
            rows = self._w.execute(select + " AND (token, key) > (?, ?) ORDER BY token, key LIMIT ?",
                                   (rng.lo, rng.hi, after[0], after[1], limit))
        return [(r[0], state_from_row(r[1:])) for r in rows]

    def _kv_write(self, fn: Callable[[sqlite3.Cursor, Transaction[Record],
                                      Transaction[PaxosState]], T],
                  conn: sqlite3.Connection | None = None) -> T:
        """`_write` for the kv and paxos tables: `fn` tells the caches' `Transaction`s
        what it changes, and the caches learn the outcome after the commit, before the
        caller can ack."""
        txn, states = self._cache.begin(), self._paxos_cache.begin()
        committed = False
        try:
            result = self._write(lambda cur: fn(cur, txn, states), conn=conn)
            committed = True
            return result
        finally:
            states.end(committed)
            txn.end(committed)

    def _write(self, fn: Callable[[sqlite3.Cursor], T], conn: sqlite3.Connection | None = None) -> T:
        """Run `fn(cursor)` in one transaction; map disk-full to StorageFull."""
        conn = conn or self._w
        cur = conn.cursor()
        try:
            try:
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if conn is self._l and "locked" in str(exc):
                    raise StorageBusy(str(exc)) from exc
                raise
            try:
                result = fn(cur)
                cur.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    cur.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if "full" in str(exc).lower():
                raise StorageFull(str(exc)) from exc
            raise
        return result

    def apply(self, records: Sequence[Record], paxos: Sequence[PaxosRow] = (),
              conn: sqlite3.Connection | None = None) -> list[Version | None]:
        def run(cur: sqlite3.Cursor, txn: Transaction[Record],
                states: Transaction[PaxosState]) -> list[Version | None]:
            for key, state in paxos:
                cur.execute(_PAXOS_PUT, (key, key_token(key), *state_row(state)))
                states.store(key, state)
            out: list[Version | None] = []
            for rec in records:
                v = rec.version
                cur.execute(
                    _UPSERT,
                    (rec.key, rec.token, v.hlc, v.node, int(rec.tombstone), rec.expires_ms,
                     rec.content_type, rec.value),
                )
                if cur.rowcount == 1:
                    txn.store(rec.key, rec)
                    out.append(None)
                    continue
                # The database may hold another record of the same version: not cached.
                txn.touch(rec.key)
                # Not newer: read what is stored (the rare path) to refuse or ignore.
                row = cur.execute("SELECT hlc, node FROM kv WHERE key = ?", (rec.key,)).fetchone()
                stored = Version(row[0], row[1])
                out.append(None if stored == v else stored)
            return out

        return self._kv_write(run, conn=conn)

    def apply_now(self, records: Sequence[Record], paxos: Sequence[PaxosRow] = ()
                  ) -> list[Version | None]:
        if self._l is None:
            raise StorageBusy("this database commits with fsync: not on the event loop")
        return self.apply(records, paxos, conn=self._l)

    def checkpoint(self) -> None:
        # RESTART, not PASSIVE: writes keep arriving during a checkpoint, so a passive one
        # never catches up and the WAL would grow without end. Meanwhile the loop's
        # commits find the database busy and queue on the storage thread.
        self._w.execute("PRAGMA wal_checkpoint(RESTART)")

    def scan_range(self, rng: TokenRange, after: tuple[int, bytes] | None, limit: int) -> list[Record]:
        if after is None:
            rows = self._w.execute(
                f"SELECT {_COLUMNS} FROM kv WHERE token > ? AND token <= ? "
                "ORDER BY token, key LIMIT ?",
                (rng.lo, rng.hi, limit),
            )
        else:
            rows = self._w.execute(
                f"SELECT {_COLUMNS} FROM kv WHERE (token, key) > (?, ?) AND token <= ? "
                "AND token > ? ORDER BY token, key LIMIT ?",
                (after[0], after[1], rng.hi, rng.lo, limit),
            )
        return [_row_record(r) for r in rows]

    def digest(self, rng: TokenRange, buckets: int) -> list[int]:
        out = [0] * buckets
        rows = self._w.execute(
            "SELECT token, key, hlc, node FROM kv WHERE token > ? AND token <= ?", (rng.lo, rng.hi)
        )
        for token, key, hlc, node in rows:
            b = bucket_of(rng, token, buckets)
            out[b] = (out[b] + record_hash(key, hlc, node)) & MASK64
        return out

    def key_versions(self, rng: TokenRange, after: tuple[int, bytes] | None,
                     limit: int) -> list[tuple[int, bytes, int, str]]:
        if after is None:
            rows = self._w.execute(
                "SELECT token, key, hlc, node FROM kv WHERE token > ? AND token <= ? "
                "ORDER BY token, key LIMIT ?", (rng.lo, rng.hi, limit))
        else:
            rows = self._w.execute(
                "SELECT token, key, hlc, node FROM kv WHERE (token, key) > (?, ?) AND token <= ? "
                "AND token > ? ORDER BY token, key LIMIT ?",
                (after[0], after[1], rng.hi, rng.lo, limit))
        return rows.fetchall()

    def get_many(self, keys: Sequence[bytes]) -> list[Record]:
        out = []
        for key in keys:
            row = self._w.execute(_GET, (key,)).fetchone()
            if row is not None:
                out.append(_row_record(row))
        return out

    def list_keys(self, prefix: bytes, after: bytes | None, limit: int) -> list[KeyInfo]:
        lower = max(prefix, after) if after is not None else prefix
        op = ">" if after is not None and after >= prefix else ">="
        upper = prefix_upper_bound(prefix)
        sql = f"SELECT key, hlc, node, tombstone, expires FROM kv WHERE key {op} ?"
        args: list[object] = [lower]
        if upper is not None:
            sql += " AND key < ?"
            args.append(upper)
        sql += " ORDER BY key LIMIT ?"
        args.append(limit)
        rows = self._r.execute(sql, args).fetchall()
        return [KeyInfo(k, Version(h, n), bool(t), e) for k, h, n, t, e in rows]

    def delete_range(self, rng: TokenRange) -> int:
        return self._kv_delete("DELETE FROM kv WHERE token > ? AND token <= ?", (rng.lo, rng.hi),
                               "DELETE FROM paxos WHERE token > ? AND token <= ?", (rng.lo, rng.hi))

    def purge(self, tombstone_before_hlc: int, expired_before_ms: int) -> int:
        return self._kv_delete(
            "DELETE FROM kv WHERE (tombstone = 1 AND hlc < ?) OR (expires > 0 AND expires < ?)",
            (tombstone_before_hlc, expired_before_ms),
            f"DELETE FROM paxos WHERE {SETTLED_SQL}", (tombstone_before_hlc,))

    def _kv_delete(self, sql: str, args: tuple[int, int], paxos_sql: str,
                   paxos_args: tuple[int, ...]) -> int:
        """Rows deleted by a condition (and the Paxos states that go with them): any cached
        key may be among them."""
        def run(cur: sqlite3.Cursor, txn: Transaction[Record],
                states: Transaction[PaxosState]) -> int:
            txn.touch_all()
            states.touch_all()
            cur.execute(paxos_sql, paxos_args)
            return cur.execute(sql, args).rowcount

        return self._kv_write(run)

    def counts(self) -> tuple[int, int]:
        total, tombs = self._w.execute(
            "SELECT count(*), coalesce(sum(tombstone), 0) FROM kv"
        ).fetchone()
        return total, tombs

    def add_hints(self, hints: Sequence[tuple[str, int, Record]]) -> None:
        rows = [
            (t, c, r.key, r.version.hlc, r.version.node, int(r.tombstone), r.expires_ms,
             r.content_type, r.value)
            for t, c, r in hints
        ]
        self._write(
            lambda cur: cur.executemany(
                "INSERT INTO hints (target, created, key, hlc, node, tombstone, expires, ctype, "
                "value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        )

    def hints_for(self, target: str, limit: int) -> list[Hint]:
        rows = self._w.execute(
            f"SELECT id, target, created, {_COLUMNS} FROM hints WHERE target = ? "
            "ORDER BY id LIMIT ?",
            (target, limit),
        ).fetchall()
        return [Hint(r[0], r[1], r[2], _row_record(r[3:])) for r in rows]

    def drop_hints(self, ids: Sequence[int]) -> None:
        self._write(
            lambda cur: cur.executemany("DELETE FROM hints WHERE id = ?", [(i,) for i in ids])
        )

    def expire_hints(self, created_before_ms: int) -> int:
        return self._write(
            lambda cur: cur.execute(
                "DELETE FROM hints WHERE created < ?", (created_before_ms,)
            ).rowcount
        )

    def hint_counts(self) -> dict[str, int]:
        rows = self._w.execute("SELECT target, count(*) FROM hints GROUP BY target").fetchall()
        return dict(rows)

    def close(self) -> None:
        for conn in (getattr(self, "_l", None), getattr(self, "_r", None), getattr(self, "_w", None)):
            if conn is not None:
                conn.close()
