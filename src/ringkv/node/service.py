"""One ringkv node: storage, clock, membership, peer links, coordinator, background work.

This is the composition root the HTTP layer (`api.py`) and the internal server share.
It knows nothing of aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import Callable
from typing import Any

from . import membership, paxos, peerops
from .backup import Backups
from .changelog import ChangeLog
from .conditional import Proposer
from .config import Settings
from .coordinator import Coordinator
from .membership import Document, InvalidDocument, View
from .metrics import Metrics
from .peerops import Request, write_op
from .rebalance import Rebalancer
from .records import Record
from .replica import LocalReplica
from .ring import TokenRange
from .security import client_context, server_context
from .stats import Handoff, Series, Snapshot, next_tick, wall_ms
from .storage import MemoryStorage, SqliteStorage, Storage
from .transport import InternalServer, PeerLink, RemoteError
from .versions import COUNTER_BITS, HybridClock

log = logging.getLogger("ringkv.node")


class NotReady(RemoteError):
    """This node has no membership document yet: it cannot coordinate."""

    def __init__(self) -> None:
        super().__init__("not_ready", "this node has not joined a cluster yet (no membership)")

HINT_BATCH = 500
COUNTS_TTL = 2.0  # seconds a record count may be reused
# Seconds after start before the first anti-entropy round: a node that was away merges
# what its hints did not bring back (a coordinator that died with them, an expired hint).
FIRST_SYNC_DELAY = 5.0


class NodeService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = settings.node_name
        self.clock = HybridClock(settings.clock_skew_ms)
        self.metrics = Metrics()
        self._view: View | None = None
        self._links: dict[str, PeerLink] = {}
        self._pending_hints: list[tuple[str, int, Record]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.local: LocalReplica
        self.coordinator = Coordinator(self, wait_timeout=settings.replica_timeout * 2 + 1)
        self.proposer = Proposer(self, settings.replica_timeout * 2 + 1, self.coordinator.read,
                                 lambda reason: self.metrics.paxos_restarts.labels(reason).inc())
        self.internal: InternalServer
        self.rebalancer = Rebalancer(self)
        self.backups = Backups(self)
        self._membership_path = os.path.join(settings.data_dir, "membership.json")
        self._counts: tuple[int, int, int] | None = None
        self._counts_at = 0.0
        self._counting: asyncio.Future[tuple[int, int, int]] | None = None
        self._peer_tls = client_context(settings.tls) if settings.tls.enabled else None
        self.started_ms = wall_ms()
        self.series = Series()
        self.changes = ChangeLog(os.path.join(settings.data_dir, "membership-history.jsonl"))
        self._said_untrusted = False
        self._adopted = asyncio.Event()  # set whenever a document is installed
        self._was_member = False  # a membership document was saved here before this start
        self._rebuilt = False  # rebuilt every range it holds (see `caught_up`)
        self._started_at = 0.0  # loop time at `start`
        self._hints_due = asyncio.Event()  # a peer with hints may be back: replay now

    # -- lifecycle ----------------------------------------------------------------------
    def _open_storage(self) -> Storage:
        if self.settings.storage == "memory":
            return MemoryStorage()
        os.makedirs(self.settings.data_dir, exist_ok=True)
        return SqliteStorage(os.path.join(self.settings.data_dir, "ringkv.sqlite3"),
                             self.settings.sqlite_synchronous)

    async def start(self) -> None:
        self._started_at = asyncio.get_running_loop().time()
        self.local = LocalReplica(self._open_storage(), self.clock, self.settings.max_clock_drift)
        self.backups.load()
        persisted = membership.load(self._membership_path)
        self._was_member = persisted is not None
        docs = [persisted]
        if self.settings.membership_file:
            docs.append(membership.load(self.settings.membership_file))
        newest = max((d for d in docs if d is not None), key=lambda d: d.epoch, default=None)
        if newest is not None:
            if newest is not persisted:  # from the membership file: keep it with the data
                membership.save(self._membership_path, newest)
            self._install(newest)
            if not self.changes.entries:
                self.changes.record(None, newest, wall_ms())
        self.internal = InternalServer(
            self.name,
            self.settings.cluster_token,
            self.local.batch,
            self.internal_handlers(),
            epoch=lambda: self.epoch,
            document=lambda: self._view.doc.to_json() if self._view else None,
            max_connections=self.settings.max_connections,
            on_peer=self._peer_up,
        )
        tls = self.settings.tls
        await self.internal.start(
            self.settings.internal_host, self.settings.internal_port,
            server_context(tls, require_client_cert=True) if tls.enabled else None,
        )
        self._tasks = [
            asyncio.create_task(self._hint_loop(), name="hints"),
            asyncio.create_task(self._purge_loop(), name="purge"),
            asyncio.create_task(self._anti_entropy_loop(), name="anti-entropy"),
            asyncio.create_task(self._stats_loop(), name="stats"),
        ]
        self._greet_peers()
        # What exists now (modules, aiohttp, rings) lives as long as the process: keep the
        # garbage collector from walking it again in every full collection under load.
        gc.freeze()
        log.info("node %s started (epoch %s, storage %s)", self.name, self.epoch,
                 self.settings.storage)

    @property
    def leaving(self) -> bool:
        member = self._view.doc.member(self.name) if self._view is not None else None
        return member is not None and member.state == "leaving"

    async def hand_off(self, wait: float, deadline: float) -> None:
        """On SIGTERM: if this node is being removed on purpose (`leaving`, or marked so
        within `wait` seconds), keep serving its ranges to the members that merge them
        until the settled epoch drops it, or the loop's clock reaches `deadline`. A plain
        restart (not leaving) returns after `wait`: the node is then merely absent."""
        loop = asyncio.get_running_loop()
        if not await self._until_adopted(lambda: self.leaving,
                                         min(deadline, loop.time() + wait)):
            return
        log.info("%s is leaving: serving its ranges until the others have merged them",
                 self.name)
        if await self._until_adopted(lambda: not self.leaving, deadline):
            log.info("%s has left the membership", self.name)
        else:
            log.warning("%s: shutdown time is up before the hand-off finished; the others "
                        "merge the rest from the remaining replicas", self.name)

    async def _until_adopted(self, condition: Callable[[], bool], until: float) -> bool:
        """Wait, document by adopted document, until `condition` holds (True) or the loop's
        clock reaches `until` (False)."""
        while not condition():
            if not await self._next_adoption(until):
                return condition()
        return True

    async def _next_adoption(self, until: float) -> bool:
        """Wait for the next adopted document; False once `until` (loop time) passed."""
        self._adopted.clear()
        remaining = until - asyncio.get_running_loop().time()
        if remaining <= 0:
            return False
        try:
            await asyncio.wait_for(self._adopted.wait(), remaining)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.internal.stop()
        for link in self._links.values():
            link.close()
        self._flush_hints()
        await asyncio.sleep(0)
        self.local.close()
        log.info("node %s stopped", self.name)

    # -- membership ---------------------------------------------------------------------
    @property
    def view(self) -> View:
        if self._view is None:
            raise NotReady()
        return self._view

    @property
    def synchronous(self) -> str:
        """The storage's SQLite `synchronous` setting ("n/a" in memory)."""
        return self.local.storage.synchronous

    @property
    def epoch(self) -> int:
        return self._view.doc.epoch if self._view else 0

    @property
    def has_membership(self) -> bool:
        return self._view is not None and self._view.doc.member(self.name) is not None

    @property
    def trusted(self) -> bool:
        """Whether the membership counts on the data this node holds: it is a member that
        holds data (not joining), admitted with exactly this data (`data_id`). A node whose
        volume was replaced, or whose database file was lost, is not, until it has rebuilt
        and the controller has admitted the new data. A document that does not know the
        id yet (a static membership file, a document older than ids) is trusted unless
        the node was a member before and its database is new: then its data is lost."""
        member = self._view.doc.member(self.name) if self._view is not None else None
        if member is None or not member.holds_data:
            return False
        if member.data_id:
            return member.data_id == self.local.storage.data_id
        return self._rebuilt or not (self.local.storage.created and self._was_member)

    def caught_up(self, rebuilt: bool) -> None:
        """The rebalancer merged what the adopted epoch needs. Where no controller admits
        data by id (a static membership file), a node that rebuilt every range it holds
        is trusted again by that alone."""
        member_doc = self._view.doc if self._view is not None else None
        member = member_doc.member(self.name) if member_doc is not None else None
        if (rebuilt and not self.local.trusted and member is not None and not member.data_id
                and member_doc is not None and self.rebalancer.caught_up):
            self._rebuilt = True
            log.info("%s rebuilt its data from its replicas", self.name)
            self._install(member_doc)

    def adopt(self, data: dict[str, Any]) -> bool:
        """Adopt a document if it is newer than ours; persist it first."""
        doc = Document.from_json(data)
        if doc.epoch <= self.epoch:
            return False
        old = self._view.doc if self._view else None
        membership.save(self._membership_path, doc)
        self._install(doc)
        self.changes.record(old, doc, wall_ms())
        log.info("adopted membership epoch %d (%d members, settled=%s)", doc.epoch,
                 len(doc.members), doc.settled)
        return True

    def _install(self, doc: Document) -> None:
        self._view = View(doc, self.settings.vnodes)
        self.metrics.observe_membership(doc.epoch, (m.state for m in doc.members))
        trusted = self.trusted
        member = doc.member(self.name)
        if not trusted and member is not None and member.holds_data and not self._said_untrusted:
            log.warning("%s: epoch %d admitted data %s, this node holds %s (a new volume or a "
                        "lost database file): it serves no replica reads until it has rebuilt "
                        "it", self.name, doc.epoch, member.data_id or "(unknown)",
                        self.local.storage.data_id)
        self._said_untrusted = not trusted
        self.local.trusted = trusted
        if not trusted:
            # Untrusted, it takes part in no Paxos round (LocalReplica.paxos); and should it
            # be trusted again soon, promises it made before with data it no longer holds
            # may still be counted on by rounds that began before this process: it sits
            # out every such round (each ends by its deadline).
            self.local.paxos_from = self._started_at + 2 * self.proposer.timeout
        self.rebalancer.on_adopt(self._view)
        self._adopted.set()
        for name in list(self._links):
            member = doc.member(name)
            if member is None or member.url != self._links[name].address:
                self._links.pop(name).close()

    # -- what the coordinator needs -----------------------------------------------------
    def replica(self, name: str) -> LocalReplica | PeerLink:
        return self.local if name == self.name else self.link(name)

    def link(self, name: str) -> PeerLink:
        """The link to a peer, made on first use."""
        link = self._links.get(name)
        if link is None:
            # A base-ring member that has left has no address: its link fails fast.
            member = self.view.by_name.get(name)
            address = member.url if member else ""
            link = PeerLink(name, address, self.settings.cluster_token, self.name,
                            lambda: self.epoch, self._adopt_quietly, self.settings.replica_timeout,
                            self._peer_tls)
            self._links[name] = link
        return link

    def _adopt_quietly(self, data: dict[str, Any]) -> None:
        try:
            self.adopt(data)
        except InvalidDocument as exc:
            log.warning("peer sent an invalid membership document: %s", exc)

    async def call(self, name: str, request: Request) -> Any:
        """One unbatched RPC (built by `peerops`) to a member; this node serves its own."""
        if name == self.name:
            handler = self.internal_handlers()[request.method]
            return await handler(request.args)
        return await self.link(name).call(request.method, request.args)

    def internal_handlers(self) -> dict[str, Any]:
        """The unbatched RPCs this node serves, one per `peerops.RPCS`."""
        return {peerops.MEMBERSHIP: self._rpc_membership, peerops.LIST: self._rpc_list,
                peerops.STATUS: self._rpc_status, peerops.SCAN: self._rpc_scan,
                peerops.DIGEST: self._rpc_digest, peerops.VERSIONS: self._rpc_versions,
                peerops.FETCH: self._rpc_fetch, peerops.PAXOS_SCAN: self._rpc_paxos_scan,
                peerops.CLEANUP: self._rpc_cleanup, peerops.BACKUP_REPORT: self.backups.rpc_report,
                peerops.STATS: self._rpc_stats}

    def replica_failed(self, name: str, exc: BaseException) -> None:
        self.metrics.replica_errors.labels(name, type(exc).__name__).inc()

    def repaired(self, name: str) -> None:
        self.metrics.read_repairs.inc()

    def store_hint(self, target: str, record: Record) -> None:
        """Queue a hint; all hints of one tick are stored in one transaction."""
        if not self._pending_hints:
            asyncio.get_running_loop().call_soon(self._flush_hints)
        self._pending_hints.append((target, self.clock.physical_ms(), record))

    def _flush_hints(self) -> None:
        hints, self._pending_hints = self._pending_hints, []
        if hints:
            task = asyncio.ensure_future(self.local.run(self.local.storage.add_hints, hints))
            task.add_done_callback(_log_failure("storing hints"))

    # -- internal RPCs ------------------------------------------------------------------
    async def _rpc_membership(self, args: Any) -> dict[str, Any]:
        try:
            adopted = self.adopt(args)
        except InvalidDocument as exc:
            raise RemoteError("bad_request", str(exc)) from exc
        return {"adopted": adopted, "epoch": self.epoch}

    async def _rpc_list(self, args: Any) -> list[Any]:
        prefix, after, limit = peerops.list_args(args)
        infos = self.local.storage.list_keys(prefix, after, limit)
        return [[i.key, i.version.hlc, i.version.node, i.tombstone, i.expires_ms] for i in infos]

    async def _rpc_status(self, args: Any) -> dict[str, Any]:
        return await self.status(fresh=peerops.status_args(args))

    def _source(self) -> None:
        if not self.local.trusted:  # its ranges may be incomplete: never a source
            raise RemoteError("rebuilding", f"{self.name} is rebuilding its data")

    async def _page(self, read: Callable[..., Any], args: Any) -> Any:
        """One page of a range from this node as a source (`peerops.page_args`)."""
        self._source()
        page = peerops.page_args(args)
        return await self.local.run(read, TokenRange(page.lo, page.hi), page.after, page.limit)

    async def _rpc_scan(self, args: Any) -> list[Any]:
        records = await self._page(self.local.storage.scan_range, args)
        return [r.to_wire() for r in records]

    async def _rpc_paxos_scan(self, args: Any) -> list[Any]:
        """A page of the range's Paxos states: [key, *state_row] each (see `paxos`)."""
        rows = await self._page(self.local.storage.scan_paxos, args)
        return [[key, *paxos.state_row(state)] for key, state in rows]

    async def _rpc_digest(self, args: Any) -> list[int]:
        self._source()
        lo, hi, buckets = peerops.digest_args(args)
        return await self.local.run(self.local.storage.digest, TokenRange(lo, hi), buckets)

    async def _rpc_versions(self, args: Any) -> list[Any]:
        rows = await self._page(self.local.storage.key_versions, args)
        return [list(row) for row in rows]

    async def _rpc_fetch(self, keys: Any) -> list[Any]:
        self._source()
        records = await self.local.run(self.local.storage.get_many,
                                       peerops.fetch_args(keys))
        return [r.to_wire() for r in records]

    async def _rpc_cleanup(self, epoch: Any) -> int:
        return await self.rebalancer.cleanup(peerops.cleanup_args(epoch))

    async def _rpc_stats(self, since: Any) -> dict[str, Any]:
        return self.stats(peerops.stats_args(since))

    async def counts(self, fresh: bool = False) -> tuple[int, int, int]:
        """(records, tombstones, hints pending): exact when `fresh`, else at most
        COUNTS_TTL old.

        Counting is a table scan (150 ms at 600k records), so it runs on the storage thread
        and the controller's frequent status polls share cached numbers; `/v1/cluster`, which
        people read, asks for exact ones."""
        loop = asyncio.get_running_loop()
        if not fresh and self._counts is not None and loop.time() - self._counts_at < COUNTS_TTL:
            return self._counts
        if fresh or self._counting is None or self._counting.done():
            self._counting = asyncio.ensure_future(self.local.run(self._count_all))
        self._counts = await asyncio.shield(self._counting)
        self._counts_at = loop.time()
        return self._counts

    def _count_all(self) -> tuple[int, int, int]:
        records, tombstones = self.local.storage.counts()
        return records, tombstones, sum(self.local.storage.hint_counts().values())

    async def status(self, fresh: bool = False) -> dict[str, Any]:
        records, tombstones, hints = await self.counts(fresh)
        self.metrics.keys.set(records)
        caught_up = self.rebalancer.caught_up
        doc = self._view.doc if self._view else None
        return {
            "node": self.name,
            "epoch": self.epoch,
            "ready": self.ready,
            "caught_up": caught_up,
            "data_id": self.local.storage.data_id,
            "trusted": self.local.trusted,
            "waiting": self.rebalancer.waiting,
            "settled_epoch_acked": doc.epoch if doc is not None and doc.settled else 0,
            "records": records,
            "tombstones": tombstones,
            "hints_pending": hints,
            "rebalance": self.rebalancer.progress.to_json(),
            # A member whose own data does not count yet (joining, or a replaced volume).
            "rebuilding": self.has_membership and not self.local.trusted,
            "disk_full": self.local.disk_full,
        }

    def stats(self, since: int | None = None) -> dict[str, Any]:
        """What this node counted since it started, and its recent rates (`stats.py`)."""
        requests = self.metrics.requests
        return {
            "node": self.name,
            "started_ms": self.started_ms,
            "totals": {
                "requests": [{"route": r, "method": m, "status": s, "count": n}
                             for (r, m, s), n in requests.counts.items()],
                "errors": dict(requests.errors),
            },
            "series": self.series.since(since),
        }

    @property
    def ready(self) -> bool:
        """Whether it belongs behind the client Service: it is a member and serves its own
        data. A member that gained ranges keeps coordinating (and stays ready) while it
        merges them; one that is rebuilding (joining, replaced data) is not ready until it
        has: a rolling update then waits for it before taking the next pod down."""
        return self.has_membership and self.local.trusted

    # -- background work ----------------------------------------------------------------
    def _greet_peers(self) -> None:
        """Connect to every member at start: each hello tells that peer we are back (see
        `_peer_up`), so what it holds for us arrives now, not after its backoff."""
        if self._view is not None:
            for name in self._view.by_name:
                if name != self.name:
                    self.link(name).connect()

    def _peer_up(self, name: str) -> None:
        """A peer said hello on our peer port: it is up, whatever our link to it thought."""
        link = self._links.get(name)
        if link is not None and link.failures:
            link.revive()
            self._hints_due.set()

    async def _hint_loop(self) -> None:
        """Replay hints to replicas that answer again (every hint_interval, and at once when
        a peer our link had failed to reach connects: `_peer_up`); drop hints older than
        hint_ttl."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hints_due.wait(), self.settings.hint_interval)
            self._hints_due.clear()
            try:
                await self.replay_hints()
            except Exception:
                log.exception("hint replay failed")

    async def replay_hints(self) -> int:
        storage = self.local.storage
        cutoff = self.clock.physical_ms() - self.settings.hint_ttl * 1000
        await self.local.run(storage.expire_hints, cutoff)
        counts = await self.local.run(storage.hint_counts)
        self.metrics.hints_pending.clear()
        for target, count in counts.items():
            self.metrics.hints_pending.labels(target).set(count)
        delivered = 0
        for target in counts:
            if self._view is None or target not in self._view.by_name:
                continue
            link = self.replica(target)
            while not link.suspected:
                hints = await self.local.run(storage.hints_for, target, HINT_BATCH)
                if not hints:
                    break
                futures = [link.submit(write_op(h.record, False)) for h in hints]
                results = await asyncio.gather(*futures, return_exceptions=True)
                done = [h.id for h, r in zip(hints, results, strict=True)
                        if not isinstance(r, BaseException)]
                if done:
                    await self.local.run(storage.drop_hints, done)
                    delivered += len(done)
                    self.metrics.hints_replayed.inc(len(done))
                if len(done) < len(hints):
                    break
        return delivered

    async def _stats_loop(self) -> None:
        """Snapshot the counters now (what was served before the first tick counts in the
        first sample), then on the wall-clock grid (every member on the same instants)."""
        at = wall_ms()
        while True:
            p = self.rebalancer.progress
            self.series.add(Snapshot.take(at, self.metrics.requests,
                                          Handoff(p.epoch, p.ranges_done, p.keys, p.bytes)))
            at = next_tick(max(wall_ms(), at))  # never the same tick twice (an early wake)
            await asyncio.sleep((at - wall_ms()) / 1000)

    async def _anti_entropy_loop(self) -> None:
        delay = min(FIRST_SYNC_DELAY, self.settings.anti_entropy_interval)
        while True:
            await asyncio.sleep(delay)
            delay = self.settings.anti_entropy_interval
            try:
                repaired = await self.rebalancer.anti_entropy_round()
                if repaired:
                    log.info("anti-entropy merged %d records from co-replicas", repaired)
            except Exception:
                log.exception("anti-entropy round failed")

    async def _purge_loop(self) -> None:
        """Purge tombstones and expired records once they are older than gc_grace."""
        interval = max(1.0, min(3600.0, self.settings.gc_grace / 10))
        while True:
            await asyncio.sleep(interval)
            grace_ms = self.settings.gc_grace * 1000
            bound_ms = self.clock.physical_ms() - grace_ms
            try:
                purged = await self.local.run(
                    self.local.storage.purge, bound_ms << COUNTER_BITS, bound_ms
                )
                if purged:
                    log.info("purged %d tombstones and expired records", purged)
            except Exception:
                log.exception("purge failed")


def _log_failure(what: str) -> Callable[[asyncio.Future[Any]], None]:
    def callback(fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            log.error("%s failed: %s", what, fut.exception())

    return callback
