"""Catching up on membership changes, excess-copy cleanup, and anti-entropy.

Catch-up is pull-based: on adopting an epoch, a node computes what it must hold that it
may not (`catch_up_work`): a `normal` member the ranges it must merge (`RangeChange.mergers`:
those it gained, and those left with fewer replicas when the cluster shrinks); a member
that is `joining`, or whose data is not the data the document admitted (see
`service.NodeService.trusted`), every range it replicates in the target ring. Each range
is merged from n - W + 1 of its n base-ring replicas that hold data
(`membership.intersecting`: every acknowledged write is on W of them, and every
transition keeps it so), or from all of them where fewer are left. A range with none
left is merged by nobody: the node stays not caught up and says why (`waiting`), so the
epoch cannot settle without the data.

Merging is by difference (`merge_from`): 64 bucket digests of the range on both sides;
for each bucket that differs, the source's (key, version) list, and only the records it
holds newer are fetched. A node that returns with its volume thus moves about what it
missed; an empty range is streamed whole. The source's Paxos states of the range come
with it (`merge_paxos_from`), so conditional writes stay decided when a range's replicas
change. What was merged is remembered per base ring and per the range's target replicas
(`coverage.Coverage`), so an epoch change that leaves the base ring and a range's owners
alone (a promotion, a member joining elsewhere) never pulls that range again, and one
that changes its owners pulls it again.

Before merging from a source the node pushes the document to it, so the source has
adopted the target epoch: from then on every write to the range also reaches this node
(coordinators on older epochs get "stale epoch" and retry), and the source's scans run
on its storage thread after every write it accepted earlier.

Anti-entropy compares every range with its co-replicas the same way, every
`anti_entropy_interval` and once soon after start (what hints did not bring back).
All of it is paced by one `pacer.Pacer` per node.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from . import paxos, peerops
from .coverage import Coverage
from .membership import View, intersecting
from .pacer import Pacer, client_requests
from .peerops import Cursor, Request
from .records import Record
from .ring import MAX_TOKEN, MIN_LO, TokenRange, key_token
from .storage import bucket_range

if TYPE_CHECKING:
    from .config import Settings
    from .metrics import Metrics
    from .replica import LocalReplica

log = logging.getLogger("ringkv.rebalance")

PAGE = 1000
DIGEST_BUCKETS = 64
RETRY_MAX_S = 5.0


class Host(Protocol):
    """What the rebalancer needs of its node."""

    name: str
    settings: Settings
    metrics: Metrics
    local: LocalReplica

    @property
    def trusted(self) -> bool: ...

    async def call(self, name: str, request: Request) -> Any: ...

    def caught_up(self, rebuilt: bool) -> None:
        """Catching up for the adopted epoch finished (`rebuilt`: every range it holds
        was merged, as after losing its data)."""


@dataclass
class Progress:
    """What catching up has to do and has done for one base ring: across the epochs of a
    transition the counts go on (a promotion does not start the bar over); once nothing is
    left, every range counts as done and nothing is active."""

    epoch: int = 0
    base: tuple[str, ...] = ()
    ranges_total: int = 0
    ranges_done: int = 0
    keys: int = 0
    bytes: int = 0
    active: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "ranges_total": self.ranges_total,
                "ranges_done": self.ranges_done, "ranges_left": self.ranges_total - self.ranges_done,
                "keys_received": self.keys, "bytes_received": self.bytes, "active": self.active}


@dataclass(frozen=True)
class Work:
    """A range to hold: its base-ring replicas, those of them whose copy counts (this
    node excluded), and its target-ring replicas (what a merge of it is good for)."""

    range: TokenRange
    replicas: tuple[str, ...]
    holders: tuple[str, ...]
    owners: tuple[str, ...]

    @property
    def need(self) -> int:
        """Sources to merge from: enough to meet every write quorum of the replicas
        (`membership.intersecting`), or every holder left."""
        return min(intersecting(len(self.replicas)), len(self.holders))


def catch_up_work(view: View, me: str, full: bool) -> list[Work]:
    """The ranges this node must merge for the adopted epoch (see the module docstring)."""
    if full:
        cuts = view.base.boundaries()
        pieces = [(rng, view.base.replicas_for_token(rng.hi), reps)
                  for rng, reps in view.target.segments(cuts) if me in reps]
    else:
        pieces = [(c.range, c.old, c.new) for c in view.changes() if me in c.mergers]
    return [Work(rng, reps, tuple(h for h in view.holders(reps) if h != me), owners)
            for rng, reps, owners in pieces]


def plan(view: View, me: str, full: bool, coverage: Coverage
         ) -> tuple[list[Work], list[tuple[Work, list[TokenRange]]]]:
    """What catching up on `view` leaves to do: the ranges no holder is left for, and each
    range with its pieces not yet merged from `need` holders for its current owners.
    `coverage` (already for `view`'s base ring) forgets what no longer counts."""
    coverage.keep((rng, reps) for rng, reps in view.target.segments() if me in reps)
    work = catch_up_work(view, me, full)
    blocked = [w for w in work if not w.holders]
    todo = [(w, pieces) for w in work if w.holders
            and (pieces := [rng for rng, sources in coverage.sources(w.range)
                            if len(sources) < w.need])]
    return blocked, todo


SyncKey = tuple[tuple[str, ...], tuple[str, ...], bool]


class Rebalancer:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.progress = Progress()
        self.cleaned_epoch = 0
        self.pacer = Pacer(host.settings, lambda: client_requests(host.metrics.requests))
        self._view: View | None = None
        self._coverage = Coverage()
        self._synced: SyncKey | None = None
        self._task: asyncio.Task[None] | None = None
        self._blocked: list[Work] = []  # ranges with no holder left
        self._stalled: dict[TokenRange, tuple[str, ...]] = {}  # range -> sources failing

    def _key(self, view: View) -> SyncKey:
        member = view.by_name.get(self.host.name)
        full = member is not None and (member.state == "joining" or not self.host.trusted)
        return (view.base.members, view.target.members, full)

    @property
    def caught_up(self) -> bool:
        return self._view is not None and self._synced == self._key(self._view)

    @property
    def waiting(self) -> list[str]:
        """Why catching up cannot finish, in words (empty while it can)."""
        out = []
        if self._blocked:
            gone = sorted({n for w in self._blocked for n in w.replicas} - {self.host.name})
            out.append(f"{len(self._blocked)} ranges have no live replica that holds data; "
                       f"waiting for {', '.join(gone)}")
        if self._stalled:
            failing = sorted({n for names in self._stalled.values() for n in names})
            out.append(f"{len(self._stalled)} ranges wait for unreachable replicas: "
                       f"{', '.join(failing)}")
        return out

    def on_adopt(self, view: View) -> None:
        """Start (or restart) catching up for the adopted epoch."""
        self._view = view
        if self._task is not None:
            # What is still being merged was for an older epoch's rings; what it merged
            # so far is in the coverage and is not merged again.
            self._task.cancel()
            self._task = None
        key = self._key(view)
        self._coverage = self._coverage.for_base(view.base.members)
        self._blocked, todo = plan(view, self.host.name, key[2], self._coverage)
        self._stalled = {}
        self.progress = self._next_progress(view, len(todo))
        self.host.metrics.rebalance_ranges_left.set(len(todo))
        self._synced = None
        if self._blocked:
            for line in self.waiting:
                log.warning("epoch %d: %s", view.doc.epoch, line)
        if not todo:
            if not self._blocked:
                self._synced = key
                self._report(key)
            return
        self._task = asyncio.create_task(
            self._catch_up(view, todo, key if not self._blocked else None), name="catch-up")

    async def _catch_up(self, view: View, todo: list[tuple[Work, list[TokenRange]]],
                        key: SyncKey | None) -> None:
        log.info("epoch %d: merging %d ranges", view.doc.epoch, len(todo))
        # A few ranges at once: one page in flight per range keeps memory bounded, and
        # overlapping the round trips is what makes catching up fast (not bandwidth). The
        # pacer admits each page, one at a time while clients are busy.
        slots = asyncio.Semaphore(self.host.settings.handoff_ranges)

        async def one(work: Work, pieces: list[TokenRange]) -> None:
            async with slots:
                for piece in pieces:
                    await self._merge(view, work, piece)
            self.progress.ranges_done += 1
            self.host.metrics.rebalance_ranges_left.set(
                self.progress.ranges_total - self.progress.ranges_done)

        try:
            await asyncio.gather(*(one(w, pieces) for w, pieces in todo))
        finally:
            if self._task is asyncio.current_task():
                self.progress.active = False
        if self._task is not asyncio.current_task():
            return  # superseded by a newer epoch: its state is not ours to record
        self._synced = key
        if key is not None:
            self._report(key)
        log.info("epoch %d: %s (%d keys, %d bytes received)", view.doc.epoch,
                 "caught up" if key is not None else "merged what has a live replica",
                 self.progress.keys, self.progress.bytes)

    def _next_progress(self, view: View, todo: int) -> Progress:
        prev = self.progress
        base = view.base.members
        if not todo:
            return Progress(view.doc.epoch, base, prev.ranges_total, prev.ranges_total,
                            prev.keys, prev.bytes, active=False)
        if prev.base != base:
            return Progress(view.doc.epoch, base, todo, active=True)
        return Progress(view.doc.epoch, base, prev.ranges_done + todo, prev.ranges_done,
                        prev.keys, prev.bytes, active=True)

    def _report(self, key: SyncKey) -> None:
        """Tell the host, from a fresh loop iteration (it may adopt again in response)."""
        asyncio.get_running_loop().call_soon(self.host.caught_up, key[2])

    async def _merge(self, view: View, work: Work, piece: TokenRange) -> None:
        """Merge `piece` from `work.need` distinct holders; retry the failing ones."""
        merged = set(self._coverage.merged_from(piece))
        delay = 0.2
        while len(merged) < work.need:
            for source in [h for h in work.holders if h not in merged]:
                try:
                    await self.host.call(source, peerops.membership(view.doc.to_json()))
                    await self.merge_from(source, piece, self.progress)
                    await self.merge_paxos_from(source, piece)
                except Exception as exc:
                    log.info("merging %s..%s from %s failed (%s); will retry", piece.lo,
                             piece.hi, source, exc)
                    continue
                merged.add(source)
                self._coverage.add(piece, source, work.owners)
                if len(merged) >= work.need:
                    break
            if len(merged) < work.need:
                self._stalled[piece] = tuple(h for h in work.holders if h not in merged)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        self._stalled.pop(piece, None)

    async def merge_from(self, source: str, rng: TokenRange,
                         progress: Progress | None = None) -> int:
        """Fetch what `source` holds newer than this node in `rng`: digests first, then
        only the differing buckets' records. Returns the records merged."""
        local = self.host.local
        async with self.pacer.turn():  # a digest scans the range on both nodes
            mine = await local.run(local.storage.digest, rng, DIGEST_BUCKETS)
            theirs = await self.host.call(source, peerops.digest(rng.lo, rng.hi, DIGEST_BUCKETS))
        if not any(mine):
            return await self.pull(source, rng, progress) if any(theirs) else 0
        merged = 0
        for bucket, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            if b and a != b:
                merged += await self._merge_bucket(
                    source, bucket_range(rng, bucket, DIGEST_BUCKETS), progress)
        return merged

    async def _merge_bucket(self, source: str, rng: TokenRange, progress: Progress | None) -> int:
        local = self.host.local
        held = {key: (hlc, node) for _, key, hlc, node in
                await local.run(local.storage.key_versions, rng, None, 1 << 62)}
        wanted: list[bytes] = []
        after: Cursor | None = None
        while True:
            async with self.pacer.turn():
                page = await self.host.call(source, peerops.versions(rng.lo, rng.hi, after, PAGE))
            for _token, key, hlc, node in page:
                mine = held.get(key)
                if mine is None or (hlc, node) > mine:
                    wanted.append(key)
            if len(page) < PAGE:
                break
            after = (page[-1][0], page[-1][1])
        merged = 0
        for start in range(0, len(wanted), PAGE):
            merged += await self._fetch(source, wanted[start:start + PAGE], progress)
        return merged

    async def _fetch(self, source: str, keys: Sequence[bytes], progress: Progress | None) -> int:
        async with self.pacer.turn() as turn:
            records = [Record.from_wire(w) for w in await self.host.call(source, peerops.fetch(list(keys)))]
            await self.host.local.apply_repairs(records)
            turn.bytes = sum(len(r.key) + len(r.value) for r in records)
        self._received(records, turn.bytes, progress)
        return len(records)

    async def pull(self, source: str, rng: TokenRange, progress: Progress | None = None) -> int:
        """Stream one range from one source into local storage; LWW merge, never refuse."""
        after: Cursor | None = None
        merged = 0
        while True:
            async with self.pacer.turn() as turn:
                page = await self.host.call(source, peerops.scan(rng.lo, rng.hi, after, PAGE))
                records = [Record.from_wire(w) for w in page]
                await self.host.local.apply_repairs(records)
                turn.bytes = sum(len(r.key) + len(r.value) for r in records)
            if not page:
                return merged
            merged += len(records)
            self._received(records, turn.bytes, progress)
            if len(page) < PAGE:
                return merged
            last = records[-1]
            after = (last.token, last.key)

    def _received(self, records: list[Record], size: int, progress: Progress | None) -> None:
        """Count what catching up brought (anti-entropy counts its own, see its round)."""
        if progress is not None:
            progress.keys += len(records)
            progress.bytes += size
            self.host.metrics.rebalance_keys.inc(len(records))
            self.host.metrics.rebalance_bytes.inc(size)

    async def merge_paxos_from(self, source: str, rng: TokenRange) -> None:
        """Merge the source's Paxos states of the range (promises, accepted proposals, the
        decisions it learnt): whatever a round left on a quorum of the range's replicas is
        then on this node too, so the quorums of the new replicas still meet it (a range's
        replicas can change completely). The newer of each part wins (`paxos.merge`)."""
        after: Cursor | None = None
        while True:
            async with self.pacer.turn():
                page = await self.host.call(source, peerops.paxos_scan(rng.lo, rng.hi, after, PAGE))
                rows = [(row[0], paxos.state_from_row(row[1:], trusted=False)) for row in page]
                await self.host.local.merge_paxos(rows)
            if len(page) < PAGE:
                return
            after = (key_token(rows[-1][0]), rows[-1][0])

    async def cleanup(self, epoch: int) -> int:
        """Drop copies of ranges this node no longer replicates (only on a settled epoch)."""
        view = self._view
        if (view is None or not view.doc.settled or view.doc.epoch != epoch
                or self.cleaned_epoch >= epoch):
            return 0
        local = self.host.local
        keep = view.target.ranges_of(self.host.name)
        dropped = 0
        lo = MIN_LO
        for rng in [*keep, TokenRange(MAX_TOKEN, MAX_TOKEN)]:
            if rng.lo > lo:
                dropped += await local.run(local.storage.delete_range, TokenRange(lo, rng.lo))
            lo = max(lo, rng.hi)
        self.cleaned_epoch = epoch
        if dropped:
            log.info("epoch %d settled: dropped %d records of ranges this node no longer holds",
                     epoch, dropped)
        return dropped

    async def anti_entropy_round(self) -> int:
        """Compare every range this node replicates with its co-replicas; merge what they
        hold newer."""
        view = self._view
        if view is None or view.transitioning or not self.host.trusted:
            return 0
        me = self.host.name
        repaired = 0
        for rng, reps in view.target.segments():
            if me not in reps:
                continue
            for peer in view.holders(reps):
                if peer != me:
                    try:
                        repaired += await self.merge_from(peer, rng)
                    except Exception as exc:
                        log.debug("anti-entropy with %s failed: %s", peer, exc)
        self.host.metrics.anti_entropy_repaired.inc(repaired)
        return repaired
