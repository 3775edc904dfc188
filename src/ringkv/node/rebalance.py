"""Re-replication on membership changes, excess-copy cleanup, and anti-entropy.

Handoff is pull-based: on adopting an epoch whose target ring differs from its base ring,
a node computes the ranges it gained (ring diff) and merges each from R live base-ring
replicas of that range, in pages, with one page in flight per source (backpressure).
Before scanning a source it pushes the document to it, so the source has adopted the
target epoch: from then on every write to the range also reaches this node (coordinators
on older epochs get "stale epoch" and retry), and the source's scan runs on its storage
thread after every write it accepted earlier. Once every gained range is merged the node
is *caught up* for that (base, target) pair and says so in its status; the controller
promotes and settles on those reports.

Anti-entropy periodically compares bucketed range digests with the other replicas and
pulls only the buckets that differ, so replicas converge without any client reading.

Both are paced by one `Pacer` per node (the `handoff_*` settings): full speed while the
node serves no client traffic, one page at a time for a share of the time while it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .membership import View, needed
from .records import Record
from .ring import MAX_TOKEN, MIN_LO, TokenRange
from .storage import bucket_range

if TYPE_CHECKING:
    from .config import Settings
    from .metrics import RequestStats
    from .service import NodeService

log = logging.getLogger("ringkv.rebalance")

PAGE = 1000
DIGEST_BUCKETS = 64
SAMPLE_S = 0.5  # seconds over which the client request rate is measured
FIRST_SAMPLE_S = 0.1  # the first window after a stale sample: a quick first answer
KV_ROUTES = "/v1/kv"  # the public key-value routes: what counts as client traffic


def client_requests(stats: RequestStats) -> int:
    """Key-value requests this node has answered (health, metrics and cluster polls aside;
    401s too, so a client without the token cannot slow handoff down)."""
    return sum(n for (route, _method, status), n in stats.counts.items()
               if route.startswith(KV_ROUTES) and status != 401)


@dataclass
class Turn:
    """One admitted page: when it started, and the bytes it brought (set by the puller)."""

    started: float
    bytes: int = 0


class Pacer:
    """The node's handoff budget: admits each page of handoff or anti-entropy work.

    Quiet (fewer than `handoff_busy_requests` client requests a second): pages start as
    soon as the puller asks (`handoff_ranges` ranges at once). Busy: one page at a time,
    each followed by a pause that keeps the pages' share of the wall time at
    `handoff_busy_share`; a page slowed by client load is followed by a longer pause, and
    the share stays above 0, so handoff always finishes. `handoff_max_mb_per_s` (> 0)
    spaces page starts so that bytes / time stays under the cap in either mode.
    """

    def __init__(self, settings: Settings, requests: Callable[[], int],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.share = settings.handoff_busy_share
        self.busy_requests = settings.handoff_busy_requests
        self.max_bytes_per_s = settings.handoff_max_mb_per_s * 1e6
        self._requests = requests
        self._clock = clock
        self._sampled_at = self._next_sample = -math.inf
        self._sampled = 0
        self._busy = True
        self._paused_until = -math.inf  # the duty cycle's pause after a busy page
        self._rate_free_at = -math.inf  # the byte cap's earliest next start
        self._one_at_a_time = asyncio.Lock()

    def busy(self) -> bool:
        """Whether clients are active: their request rate since the last sample.

        A sample more than two windows old says nothing about now (handoff was idle), so
        the node counts as busy until a short first window has been measured: pulling
        fast into a loaded node costs more than pulling slowly for 0.1 s on a quiet one."""
        now = self._clock()
        if now >= self._next_sample:
            count = self._requests()
            elapsed = now - self._sampled_at
            stale = elapsed > 2 * SAMPLE_S
            self._busy = stale or (count - self._sampled) / elapsed >= self.busy_requests
            self._sampled_at, self._sampled = now, count
            self._next_sample = now + (FIRST_SAMPLE_S if stale else SAMPLE_S)
        return self._busy

    def throttled(self) -> bool:
        return self.share < 1 and self.busy()

    def delay(self, throttled: bool) -> float:
        """Seconds until the next page may start."""
        gate = max(self._rate_free_at, self._paused_until if throttled else -math.inf)
        return max(0.0, gate - self._clock())

    def finished(self, turn: Turn, throttled: bool) -> None:
        """Account a finished page against the byte cap and the duty cycle."""
        now = self._clock()
        if self.max_bytes_per_s > 0:
            self._rate_free_at = (max(self._rate_free_at, turn.started)
                                  + turn.bytes / self.max_bytes_per_s)
        if throttled:
            self._paused_until = now + (now - turn.started) * (1 - self.share) / self.share

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[Turn]:
        """Wait until the budget admits a page, then time it (the body does the page)."""
        throttled = self.throttled()
        async with self._one_at_a_time if throttled else contextlib.nullcontext():
            # Pages that wait together start together: a burst of at most handoff_ranges
            # pages, after which the cap's gate has moved past all of them.
            wait = self.delay(throttled)
            if wait > 0:
                await asyncio.sleep(wait)
            turn = Turn(self._clock())
            # A failed page (a source that timed out) did no work: no pause after it, so
            # the next source is tried at once.
            yield turn
            self.finished(turn, throttled)


@dataclass
class Progress:
    epoch: int = 0
    ranges_total: int = 0
    ranges_done: int = 0
    keys: int = 0
    bytes: int = 0
    active: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "ranges_total": self.ranges_total,
                "ranges_done": self.ranges_done, "ranges_left": self.ranges_total - self.ranges_done,
                "keys_received": self.keys, "bytes_received": self.bytes, "active": self.active}


SyncKey = tuple[tuple[str, ...], tuple[str, ...], bool]


def _sync_key(view: View, me: str) -> SyncKey:
    member = view.by_name.get(me)
    return (view.base.members, view.target.members, member is not None and member.state == "joining")


def ranges_to_pull(view: View, me: str, rebuild: bool = False) -> list[tuple[TokenRange, list[str]]]:
    """The ranges this node must merge for the adopted epoch, each with its sources.

    A `normal` member pulls only the ranges it gained (ring diff). A `joining` member pulls
    every range it replicates in the target ring: it may come back with a stale or wiped
    data directory, and must hold everything a quorum acknowledged before it counts
    toward any read quorum. A node that lost its database (`rebuild`) does the same.
    """
    member = view.by_name.get(me)
    if rebuild or (member is not None and member.state == "joining"):
        cuts = view.base.boundaries()
        return [
            (rng, [n for n in view.base.replicas_for_token(rng.hi) if n != me])
            for rng, reps in view.target.segments(cuts)
            if me in reps
        ]
    return [(c.range, [n for n in c.old if n != me]) for c in view.changes() if me in c.gained]


class Rebalancer:
    def __init__(self, service: NodeService) -> None:
        self.service = service
        self.progress = Progress()
        self._synced: SyncKey | None = None
        self._task: asyncio.Task[None] | None = None
        self.cleaned_epoch = 0
        self.pacer = Pacer(service.settings, lambda: client_requests(service.metrics.requests))

    @property
    def caught_up(self) -> bool:
        view = self.service._view
        if view is None or self._synced is None:
            return False
        key = _sync_key(view, self.service.name)
        # Having pulled everything as a joining member covers what a normal member needs.
        return self._synced[:2] == key[:2] and (self._synced[2] or not key[2])

    def on_adopt(self, view: View) -> None:
        """Start (or restart) pulling for the adopted epoch's (base, target) pair."""
        if self._task is not None:
            # Whatever is still being pulled was for an older epoch's rings.
            self._task.cancel()
            self._task = None
            self.progress.active = False  # a newer epoch's pull (if any) starts its own
        if self.caught_up:
            return
        key = _sync_key(view, self.service.name)
        rebuild = self.service.local.rebuilding
        work = ranges_to_pull(view, self.service.name, rebuild)
        if not work:
            self._synced = key
            self.service.local.rebuilding = False
            return
        self.progress = Progress(epoch=view.doc.epoch, ranges_total=len(work), active=True)
        self._task = asyncio.create_task(self._pull_all(view, work, key), name="handoff")

    async def _pull_all(self, view: View, work: list[tuple[TokenRange, list[str]]],
                        key: SyncKey) -> None:
        log.info("epoch %d: pulling %d ranges", view.doc.epoch, len(work))
        # A few ranges at once: one page in flight per range keeps memory bounded, and
        # overlapping the round trips is what makes handoff fast (not bandwidth). The
        # pacer admits each page, one at a time while clients are busy.
        slots = asyncio.Semaphore(self.service.settings.handoff_ranges)

        async def one(rng: TokenRange, sources: list[str]) -> None:
            async with slots:
                await self._pull_range(view, rng, sources)
            self.progress.ranges_done += 1
            self.service.metrics.rebalance_ranges_left.set(
                self.progress.ranges_total - self.progress.ranges_done)

        await asyncio.gather(*(one(rng, sources) for rng, sources in work))
        if self._task is not asyncio.current_task():
            return  # superseded by a newer epoch's pull: its state is not ours to record
        self.progress.active = False
        self._synced = key
        self.service.local.rebuilding = False
        log.info("epoch %d: caught up (%d keys, %d bytes received)", view.doc.epoch,
                 self.progress.keys, self.progress.bytes)

    async def _pull_range(self, view: View, rng: TokenRange, sources: list[str]) -> None:
        """Merge the range from R live sources; retry until enough have answered."""
        need = needed("quorum", len(sources))
        done: set[str] = set()
        delay = 0.2
        while len(done) < need:
            live = [s for s in sources if s in view.by_name and s not in done]
            for source in live:
                try:
                    await self.service.call(source, "membership", view.doc.to_json())
                    if done:  # the range is here already: fetch only what this source adds
                        await self.sync_buckets(source, rng, self.progress)
                    else:
                        await self.pull(source, rng, self.progress)
                    done.add(source)
                    if len(done) >= need:
                        break
                except Exception as exc:
                    log.info("pulling %s..%s from %s failed (%s); will retry", rng.lo, rng.hi,
                             source, exc)
            if len(done) < need:
                if not live:
                    # Every other base replica of this range is gone: nothing more exists.
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def pull(self, source: str, rng: TokenRange, progress: Progress | None = None) -> int:
        """Stream one range from one source into local storage; LWW merge, never refuse."""
        after: list[Any] | None = None
        merged = 0
        while True:
            async with self.pacer.turn() as turn:
                page = await self.service.call(source, "scan", [rng.lo, rng.hi, after, PAGE])
                records = [Record.from_wire(w) for w in page]
                await self.service.local.apply_repairs(records)
                turn.bytes = size = sum(len(r.key) + len(r.value) for r in records)
            if not page:
                return merged
            merged += len(records)
            if progress is not None:
                progress.keys += len(records)
                progress.bytes += size
                self.service.metrics.rebalance_keys.inc(len(records))
                self.service.metrics.rebalance_bytes.inc(size)
            if len(page) < PAGE:
                return merged
            last = records[-1]
            after = [last.token, last.key]

    async def cleanup(self, epoch: int) -> int:
        """Drop copies of ranges this node no longer replicates (only on a settled epoch)."""
        view = self.service.view
        if not view.doc.settled or view.doc.epoch != epoch or self.cleaned_epoch >= epoch:
            return 0
        keep = view.target.ranges_of(self.service.name)
        dropped = 0
        lo = MIN_LO
        for rng in [*keep, TokenRange(MAX_TOKEN, MAX_TOKEN)]:
            if rng.lo > lo:
                dropped += await self.service.local.run(
                    self.service.local.storage.delete_range, TokenRange(lo, rng.lo)
                )
            lo = max(lo, rng.hi)
        self.cleaned_epoch = epoch
        if dropped:
            log.info("epoch %d settled: dropped %d records of ranges this node no longer holds",
                     epoch, dropped)
        return dropped

    async def sync_buckets(self, peer: str, rng: TokenRange, progress: Progress | None = None) -> int:
        """Compare bucketed digests of a range with a peer; pull only the differing buckets."""
        local = self.service.local
        async with self.pacer.turn():  # a digest scans the range on both nodes
            mine = await local.run(local.storage.digest, rng, DIGEST_BUCKETS)
            theirs = await self.service.call(peer, "digest", [rng.lo, rng.hi, DIGEST_BUCKETS])
        merged = 0
        for bucket, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            if a != b:
                merged += await self.pull(peer, bucket_range(rng, bucket, DIGEST_BUCKETS), progress)
        return merged

    async def anti_entropy_round(self) -> int:
        """Compare digests of every range this node replicates with its co-replicas."""
        view = self.service._view
        if view is None or view.transitioning:
            return 0
        me = self.service.name
        repaired = 0
        for rng, reps in view.target.segments():
            if me not in reps:
                continue
            for peer in reps:
                if peer != me:
                    try:
                        repaired += await self.sync_buckets(peer, rng)
                    except Exception as exc:
                        log.debug("anti-entropy with %s failed: %s", peer, exc)
        self.service.metrics.anti_entropy_repaired.inc(repaired)
        return repaired
