"""This node as a replica: group-committed writes and inline point reads.

Every write queued during one event-loop tick (from local coordinators and from peers'
batch frames alike) is applied on the storage thread in one transaction, and each write's
future resolves only after that commit: the ack never precedes durability (rule 5). While
one transaction runs, new writes queue up for the next, so batches grow with load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .records import Record
from .storage import Storage, StorageFull
from .transport import RemoteError
from .versions import HybridClock, Version

T = TypeVar("T")

# Replica operations, as they travel in batch frames:
#   ["w", wire_record, refuse]  -> None (stored) | [hlc, node] (a newer version is stored)
#   ["r", key, full]            -> None | wire_record (full) | [hlc, node, tombstone, expires]
WRITE, READ = "w", "r"

# A queued unit of the group commit: its records, its future, and whether the future
# resolves to one result (a local write) or to the list (a peer's batch).
class ReplicaRefusal(RemoteError):
    """This replica will not serve one op; the peer sees it as that op's error."""


def op_error(code: str, message: str) -> dict[str, str]:
    """A per-op error entry in a batch reply (results are otherwise None or lists)."""
    return {"error": code, "message": message}


_Entry = tuple[list[Record], "asyncio.Future[Any]", bool]


class LocalReplica:
    def __init__(self, storage: Storage, clock: HybridClock, max_clock_drift: float = 3600.0) -> None:
        self.storage = storage
        self.clock = clock
        self.max_clock_drift_ms = int(max_clock_drift * 1000)
        self.rebuilding = False  # set while a node that lost its data re-pulls it
        # One thread owns the SQLite write connection: writes, scans and maintenance.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ringkv-storage")
        self._queue: list[_Entry] = []
        self._busy = False
        self._scheduled = False
        self._loop = asyncio.get_running_loop()
        self.suspected = False  # the local replica is never suspected (same interface as links)

    def submit(self, op: list[Any]) -> asyncio.Future[Any]:
        if op[0] == WRITE:
            return self.write(Record.from_wire(op[1]))
        fut: asyncio.Future[Any] = self._loop.create_future()
        try:
            fut.set_result(self.read(op[1], op[2]))
        except ReplicaRefusal as exc:
            fut.set_exception(exc)
        return fut

    def _check_clock(self, rec: Record) -> None:
        """Refuse a version too far ahead of this node's clock: observing it would drag the
        clock (and every later version) along, and a bogus one could stop all writes."""
        ahead_ms = rec.version.physical_ms - self.clock.physical_ms()
        if ahead_ms > self.max_clock_drift_ms:
            raise ReplicaRefusal(
                "clock_drift",
                f"version is {ahead_ms // 1000}s ahead of this node's clock "
                f"(limit {self.max_clock_drift_ms // 1000}s)",
            )

    async def batch(self, ops: list[Any]) -> list[Any]:
        """Serve one peer batch frame: its writes join one group commit as one unit.

        A malformed or unacceptable op is answered alone with an error entry (see
        `op_error`); the rest of the batch is served."""
        results: list[Any] = [None] * len(ops)
        slots: list[int] = []
        records: list[Record] = []
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
                else:
                    raise ValueError(f"unknown op {op[0]!r}")
            except ReplicaRefusal as exc:
                results[i] = op_error(exc.code, str(exc))
            except ValueError as exc:
                results[i] = op_error("bad_request", str(exc))
        if records:
            try:
                written = await self._enqueue(records, single=False)
            except StorageFull as exc:  # the peer sees a full disk, not a crash
                raise RemoteError("insufficient_storage", str(exc)) from None
            for i, res in zip(slots, written, strict=True):
                results[i] = res
        return results

    def read(self, key: bytes, full: bool) -> Any:
        if self.rebuilding:
            # Lost its data: an empty answer here would count as "not found" in a quorum.
            raise ReplicaRefusal("rebuilding", "this replica is rebuilding its data")
        if full:
            rec = self.storage.get(key)
            return None if rec is None else rec.to_wire()
        meta = self.storage.get_version(key)
        if meta is None:
            return None
        version, tomb, expires = meta
        return [version.hlc, version.node, tomb, expires]

    def write(self, rec: Record) -> asyncio.Future[Any]:
        """Apply-if-newer; resolves to None or the newer stored version as [hlc, node]."""
        try:
            self._check_clock(rec)
        except ReplicaRefusal as exc:
            fut: asyncio.Future[Any] = self._loop.create_future()
            fut.set_exception(exc)
            return fut
        return self._enqueue([rec], single=True)

    def _enqueue(self, records: list[Record], single: bool) -> asyncio.Future[Any]:
        self.clock.observe(max(r.version.hlc for r in records))
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._queue.append((records, fut, single))
        if not self._busy and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        if self._busy or not self._queue:
            return
        batch, self._queue = self._queue, []
        self._busy = True
        records = [r for recs, _, _ in batch for r in recs]
        job = self._loop.run_in_executor(self._executor, self.storage.apply, records)
        job.add_done_callback(lambda done: self._committed(batch, done))

    def _committed(self, batch: list[_Entry], done: asyncio.Future[list[Version | None]]) -> None:
        self._busy = False
        exc = done.exception()
        if exc is not None:
            for _, fut, _ in batch:
                if not fut.done():
                    fut.set_exception(exc)
        else:
            results = [None if v is None else [v.hlc, v.node] for v in done.result()]
            at = 0
            for recs, fut, single in batch:
                part = results[at : at + len(recs)]
                at += len(recs)
                if not fut.done():
                    fut.set_result(part[0] if single else part)
        if self._queue:
            self._flush()

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
        return await self._loop.run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.storage.close()
