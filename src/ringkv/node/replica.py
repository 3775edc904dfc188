"""This node as a replica: group-committed writes and inline point reads.

Every write queued during one event-loop tick (from local coordinators and from peers'
batch frames alike) is applied in one transaction, and each write completes only after
that commit: the ack never precedes durability (rule 5). When a commit does not wait for
the disk (SQLite synchronous OFF or NORMAL: the WAL is written, not fsynced) the event
loop commits the batch itself; a thread hop per batch cost more than the commit, since
the storage thread must win the GIL back after every statement. With an fsync per commit
(FULL), or while another writer (a handoff page, a purge) holds the database, the batch
goes to the storage thread, and while that transaction runs new writes queue up for the
next, so batches grow with load.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from . import paxos
from .paxos import PaxosState
from .peerops import ACCEPT, COMMIT, PAXOS_OPS, PREPARE, READ, WRITE
from .records import Record
from .storage import PaxosRow, Storage, StorageBusy, StorageFull
from .transport import Done, RemoteError, future_done
from .versions import HybridClock, Version

T = TypeVar("T")
log = logging.getLogger("ringkv.replica")

# Records committed on the event loop between two WAL checkpoints (on the storage thread;
# SQLite's own automatic checkpoint would run inside a commit, on the loop). Writes wait
# for a checkpoint, so its size is write latency: at 64 clients, 5,000 gave p99 45-53 ms,
# 1,000 gave 16-22 ms and 500 gave 16-18 ms at the same throughput (300: 13 ms, -6%).
CHECKPOINT_EVERY = 500


class ReplicaRefusal(RemoteError):
    """This replica will not serve one op; the peer sees it as that op's error."""


def op_error(code: str, message: str) -> dict[str, str]:
    """A per-op error entry in a batch reply (results are otherwise None or lists)."""
    return {"error": code, "message": message}


# A queued unit of the group commit: its records, the Paxos states it persists, and the
# callback that gets the records' results (a list: one per record).
_Entry = tuple[list[Record], list[PaxosRow], Callable[[list[Any] | None, BaseException | None], None]]


class LocalReplica:
    def __init__(self, storage: Storage, clock: HybridClock, max_clock_drift: float = 3600.0) -> None:
        self.storage = storage
        self.clock = clock
        self.max_clock_drift_ms = int(max_clock_drift * 1000)
        # Whether the membership counts on this data (set by the service on every adopted
        # document, see NodeService.trusted): an untrusted replica answers no reads.
        self.trusted = False
        self.disk_full = False  # the last group commit failed for lack of space
        # An untrusted replica takes part in no Paxos round, nor before this time
        # (loop.time(), set by the service): a node that lost its data lost its promises
        # too, and sits out every round that may have counted on one.
        self.paxos_from = 0.0
        # Paxos states changed but not yet committed, newest last: they are the truth for
        # this process (ops are decided on the loop in order); a reply that depends on one
        # waits for its group commit, as a write's ack does (rule 5).
        self._paxos_pending: dict[bytes, PaxosState] = {}
        # One thread owns the SQLite write connection: writes, scans and maintenance. It
        # takes jobs from a queue and hands results back with call_soon_threadsafe: an
        # executor would add two futures and a chain of callbacks to every group commit.
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._queue: list[_Entry] = []
        self._busy = False
        self._scheduled = False
        self._loop = asyncio.get_running_loop()
        self.suspected = False  # the local replica is never suspected (same interface as links)
        self._uncheckpointed = 0
        self._checkpointing = False
        self._thread = threading.Thread(target=self._storage_thread, name="ringkv-storage",
                                        daemon=True)
        self._thread.start()

    def send(self, op: list[Any], done: Done) -> None:
        """The same interface as a peer link (the ops are `peerops`'): a read completes at
        once (inside this call), a write after its group commit."""
        if op[0] == WRITE:  # from this node's coordinator or hint replay: trusted
            self.write(Record.from_wire(op[1], trusted=True), done)
            return
        if op[0] in PAXOS_OPS:
            self.paxos(paxos.parse_op(op), done)
            return
        try:
            result = self.read(op[1], op[2])
        except ReplicaRefusal as exc:
            done(None, exc)
        else:
            done(result, None)

    def submit(self, op: list[Any]) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self._loop.create_future()
        self.send(op, future_done(fut))
        return fut

    def _check_clock(self, rec: Record | Version) -> None:
        """Refuse a version (or ballot) too far ahead of this node's clock: observing it
        would drag the clock (and every later version) along, and a bogus one could stop
        all writes."""
        version = rec.version if isinstance(rec, Record) else rec
        ahead_ms = version.physical_ms - self.clock.physical_ms()
        if ahead_ms > self.max_clock_drift_ms:
            raise ReplicaRefusal(
                "clock_drift",
                f"version is {ahead_ms // 1000}s ahead of this node's clock "
                f"(limit {self.max_clock_drift_ms // 1000}s)",
            )

    def batch(self, ops: list[Any], reply: Done) -> None:
        """Serve one peer batch frame: reads at once, its writes in one group commit as one
        unit; `reply` gets the list of results when all are done.

        A malformed or unacceptable op is answered alone with an error entry (see
        `op_error`); the rest of the batch is served."""
        results: list[Any] = [None] * len(ops)
        slots: list[int] = []
        records: list[Record] = []
        # Ops answered after a commit, plus this call: the reply goes when none is left.
        waiting = [1]
        failure: list[BaseException] = []

        def settle(exc: BaseException | None) -> None:
            if exc is not None:
                if isinstance(exc, StorageFull):  # the peer sees a full disk, not a crash
                    exc = RemoteError("insufficient_storage", str(exc))
                failure.append(exc)
            waiting[0] -= 1
            if waiting[0] == 0:
                if failure:
                    reply(None, failure[0])
                else:
                    reply(results, None)

        def answered(i: int, res: Any, exc: BaseException | None) -> None:
            if isinstance(exc, ReplicaRefusal):
                results[i], exc = op_error(exc.code, str(exc)), None
            else:
                results[i] = res
            settle(exc)

        for i, op in enumerate(ops):
            try:
                if not isinstance(op, list) or len(op) != 3:
                    raise ValueError("an op is [kind, arg, flag]")
                if op[0] == WRITE:
                    rec = Record.from_wire(op[1])
                    self._check_clock(rec)
                    slots.append(i)
                    records.append(rec)
                elif op[0] == READ and isinstance(op[1], bytes):
                    results[i] = self.read(op[1], bool(op[2]))
                elif op[0] in PAXOS_OPS:
                    parsed = paxos.parse_op(op)
                    waiting[0] += 1
                    self.paxos(parsed, partial(answered, i))
                else:
                    raise ValueError(f"unknown op {op[0]!r}")
            except ReplicaRefusal as exc:
                results[i] = op_error(exc.code, str(exc))
            except ValueError as exc:
                results[i] = op_error("bad_request", str(exc))

        def committed(written: list[Any] | None, exc: BaseException | None) -> None:
            if written is not None:
                for i, res in zip(slots, written, strict=True):
                    results[i] = res
            settle(exc)

        if records:
            waiting[0] += 1
            self._enqueue(records, [], committed)
        settle(None)

    def read(self, key: bytes, full: bool) -> Any:
        if full:
            rec = self.read_record(key)
            return None if rec is None else rec.to_wire()
        self._readable()
        return self.storage.get_version(key)

    def read_record(self, key: bytes) -> Record | None:
        """The stored record itself: this node's coordinator needs no wire form."""
        self._readable()
        return self.storage.get(key)

    def _readable(self) -> None:
        if not self.trusted:
            # Its data may be lost: an empty answer would count as "not found" in a quorum.
            raise ReplicaRefusal("rebuilding", "this replica is rebuilding its data")

    # -- Paxos -----------------------------------------------------------------------------
    def paxos(self, op: paxos.Op, done: Done) -> None:
        """Serve a Paxos op by the acceptor's rules (`paxos.on_*`); the answer goes once the
        state it depends on is committed."""
        try:
            if op.kind != COMMIT and (not self.trusted or self._loop.time() < self.paxos_from):
                # Data the membership does not count on (lost, replaced, not merged yet):
                # promises and accepted proposals may have gone with it, so it neither
                # promises nor accepts. A commit is a decided write: applied as one.
                raise ReplicaRefusal("rebuilding", "this replica is rebuilding its data and "
                                     "its Paxos state")
            self._check_clock(op.ballot)
        except ReplicaRefusal as exc:
            done(None, exc)
            return
        self.clock.observe(op.ballot.hlc)
        key = op.key
        before = self.paxos_state(key)
        if op.kind == PREPARE:
            after, granted = paxos.on_prepare(before, op.ballot)
            # Read the record once the group commit is done: a decision still being
            # committed is then in it.
            self._persist(key, before, after, [],
                          lambda: paxos.promise_reply(granted, before, self.storage.get(key),
                                                      op.recent), done)
        elif op.kind == ACCEPT:
            after, accepted = paxos.on_accept(before, op.ballot, op.proposal)
            refusal = None if accepted else [before.promised.hlc, before.promised.node]
            self._persist(key, before, after, [], lambda: refusal, done)
        else:
            assert op.proposal is not None
            self._persist(key, before, paxos.on_commit(before, op.ballot, op.proposal),
                          [op.proposal.record], lambda: None, done)

    def paxos_state(self, key: bytes) -> PaxosState:
        return self._paxos_pending.get(key) or self.storage.get_paxos(key)

    def _persist(self, key: bytes, before: PaxosState, after: PaxosState, records: list[Record],
                 answer: Callable[[], Any], done: Done) -> None:
        """Answer once `after` (and `records`) are committed; at once when nothing changed
        and nothing about the key is still uncommitted."""
        if after is before and not records and key not in self._paxos_pending:
            done(answer(), None)
            return
        self._paxos_pending[key] = after

        def committed(_: list[Any] | None, exc: BaseException | None) -> None:
            if exc is not None:
                done(None, exc)
                return
            if self._paxos_pending.get(key) is after:
                del self._paxos_pending[key]
            done(answer(), None)

        self._enqueue(records, [(key, after)], committed)

    async def merge_paxos(self, rows: list[PaxosRow]) -> None:
        """Merge Paxos states from a replica this node takes a range from (handoff,
        rebuild): the newer promise and accepted proposal, both memories of decisions."""
        changed: list[PaxosRow] = []
        for key, theirs in rows:
            before = self.paxos_state(key)
            after = paxos.merge(before, theirs)
            if after is not before:
                self._paxos_pending[key] = after
                changed.append((key, after))
        if not changed:
            return
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._enqueue([], changed, future_done(fut))
        await fut
        for key, after in changed:
            if self._paxos_pending.get(key) is after:
                del self._paxos_pending[key]

    # -- writes ---------------------------------------------------------------------------
    def write(self, rec: Record, done: Done) -> None:
        """Apply-if-newer; `done` gets None or the newer stored version as [hlc, node]."""
        try:
            self._check_clock(rec)
        except ReplicaRefusal as exc:
            done(None, exc)
            return

        def committed(written: list[Any] | None, exc: BaseException | None) -> None:
            done(None if written is None else written[0], exc)

        self._enqueue([rec], [], committed)

    def _enqueue(self, records: list[Record], rows: list[PaxosRow],
                 done: Callable[[list[Any] | None, BaseException | None], None]) -> None:
        if records:
            self.clock.observe(max(r.version.hlc for r in records))
        self._queue.append((records, rows, done))
        if not self._busy and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._busy or not self._queue:
            return
        batch, self._queue = self._queue, []
        records = [r for recs, _, _ in batch for r in recs]
        rows = [row for _, rows, _ in batch for row in rows]
        if self.storage.inline_writes:
            try:
                written = self.storage.apply_now(records, rows)
            except StorageBusy:
                pass  # queue behind the other writer, on the storage thread
            except Exception as exc:
                self._committed(batch, None, exc)
                return
            else:
                self._logged(len(records) + len(rows))
                self._committed(batch, written, None)
                return
        self._busy = True
        self._jobs.put((self.storage.apply, (records, rows),
                        lambda written, exc: self._committed(batch, written, exc)))

    def _committed(self, batch: list[_Entry], written: list[Version | None] | None,
                   exc: BaseException | None) -> None:
        self._busy = False
        self.disk_full = isinstance(exc, StorageFull)
        results = None if written is None else [
            None if v is None else [v.hlc, v.node] for v in written]
        at = 0
        for recs, _, callback in batch:
            try:
                if results is None:
                    callback(None, exc)
                else:
                    callback(results[at : at + len(recs)], None)
            except Exception:
                log.exception("a write's callback failed")
            at += len(recs)
        if self._queue:
            self._flush()

    def _logged(self, count: int) -> None:
        """Checkpoint on the storage thread once enough was committed on the loop."""
        self._uncheckpointed += count
        if self._uncheckpointed < CHECKPOINT_EVERY or self._checkpointing:
            return
        self._uncheckpointed = 0
        self._checkpointing = True
        self._jobs.put((self.storage.checkpoint, (), self._checkpointed))

    def _checkpointed(self, _: Any, exc: BaseException | None) -> None:
        self._checkpointing = False
        if exc is not None:
            log.warning("WAL checkpoint failed (retried later): %s", exc)

    async def apply_repairs(self, records: list[Record]) -> None:
        """Merge records from handoff or anti-entropy: newer wins, nothing is refused
        (except versions too far in the future, which are dropped)."""
        limit = self.clock.physical_ms() + self.max_clock_drift_ms
        records = [r for r in records if r.version.physical_ms <= limit]
        if records:
            self.clock.observe(max(r.version.hlc for r in records))
            await self.run(self.storage.apply, records)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a storage call (scan, hints, purge) on the storage thread."""
        fut: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put((fn, args, future_done(fut)))
        return await fut

    def _storage_thread(self) -> None:
        loop = self._loop
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, done = job
            try:
                result, exc = fn(*args), None
            except BaseException as e:  # handed to the caller, as an executor would
                result, exc = None, e
            try:
                loop.call_soon_threadsafe(done, result, exc)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()
        self.storage.close()
