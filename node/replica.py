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
from .storage import Storage
from .versions import HybridClock, Version

T = TypeVar("T")

# Replica operations, as they travel in batch frames:
#   ["w", wire_record, refuse]  -> None (stored) | [hlc, node] (a newer version is stored)
#   ["r", key, full]            -> None | wire_record (full) | [hlc, node, tombstone, expires]
WRITE, READ = "w", "r"

# A queued unit of the group commit: its records, its future, and whether the future
# resolves to one result (a local write) or to the list (a peer's batch).
_Entry = tuple[list[Record], "asyncio.Future[Any]", bool]


class LocalReplica:
    def __init__(self, storage: Storage, clock: HybridClock) -> None:
        self.storage = storage
        self.clock = clock
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
        fut.set_result(self.read(op[1], op[2]))
        return fut

    async def batch(self, ops: list[Any]) -> list[Any]:
        """Serve one peer batch frame: its writes join one group commit as one unit."""
        results: list[Any] = [None] * len(ops)
        slots: list[int] = []
        records: list[Record] = []
        for i, op in enumerate(ops):
            if op[0] == WRITE:
                slots.append(i)
                records.append(Record.from_wire(op[1]))
            else:
                results[i] = self.read(op[1], op[2])
        if records:
            written = await self._enqueue(records, single=False)
            for i, res in zip(slots, written, strict=True):
                results[i] = res
        return results

    def read(self, key: bytes, full: bool) -> Any:
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
        """Merge records from handoff or anti-entropy: newer wins, nothing is refused."""
        if records:
            self.clock.observe(max(r.version.hlc for r in records))
            await self.run(self.storage.apply, records)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a storage call (scan, hints, purge) on the storage thread."""
        return await self._loop.run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.storage.close()
