"""The reconcile loop shared by the local launcher and the kopf operator.

It is level-triggered: every round re-reads the store, re-observes the nodes and re-polls
their status, so a missed event, a failed push or an operator restart costs at most one
interval. The external systems sit behind three small protocols (the ConfigMap or a JSON
file; pods or child processes; the nodes' internal API), so the loop itself has no I/O
dependency and is tested with in-memory fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from ringkv.node.membership import Document, Member, describe

from .controller import (
    Observed,
    Policy,
    Report,
    alive_nodes,
    cleanup_due,
    held_document,
    next_document,
    restore,
    waiting,
)

log = logging.getLogger("ringkv.operator")


class Store(Protocol):
    """Where the membership document lives (ConfigMap, JSON file). Must read its writes."""

    async def load(self) -> Document | None: ...

    async def save(self, doc: Document) -> None: ...

    async def save_status(self, status: dict[str, Any]) -> None:
        """Record what the controller observes beside the document (who is absent since
        when, why the membership waits): not part of the epoch, read by people."""



class MemberSource(Protocol):
    """The nodes that exist (pods, launcher children), and what the source knows of each
    of `members` (the current document's) it has no node for: gone for now, or for good."""

    async def observe(self, members: Sequence[str]) -> list[Observed]: ...


class Nodes(Protocol):
    """The nodes' control endpoints. `status` raises when the node cannot answer."""

    async def status(self, member: Member) -> Report: ...

    async def push(self, member: Member, doc: Document) -> None: ...

    async def cleanup(self, member: Member, epoch: int) -> None: ...


OnChange = Callable[[Document | None, Document, str], Awaitable[None] | None]
OnWaiting = Callable[[list[str]], Awaitable[None] | None]


class Reconciler:
    """Drives the membership from whatever is stored to what the controller computes."""

    def __init__(
        self,
        store: Store,
        source: MemberSource,
        nodes: Nodes,
        policy: Policy,
        on_change: OnChange | None = None,
        *,
        on_waiting: OnWaiting | None = None,
        status_timeout: float = 2.0,
        push_timeout: float = 5.0,
        max_steps: int = 8,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.source = source
        self.nodes = nodes
        self.policy = policy
        self.on_change = on_change
        self.on_waiting = on_waiting
        self._clock = clock
        self._wall_clock = wall_clock
        self.status_timeout = status_timeout
        self.push_timeout = push_timeout
        self.max_steps = max_steps
        # Cleanup is sent once per settled epoch to each member; members whose cleanup
        # failed are retried next round.
        self._cleanup_epoch = 0
        self._push_failed: dict[str, int] = {}  # node -> epoch whose push failure was logged
        self._cleaned: set[str] = set()
        self._saved: Document | None = None  # the document this reconciler saved last
        # For the operator's metrics: rounds of `run` by outcome, and the wall-clock time
        # the last one succeeded (None before the first); for its liveness, the monotonic
        # time the last one ended, whatever its outcome.
        self.rounds = {"ok": 0, "error": 0}
        self.last_success: float | None = None
        self.last_round: float | None = None
        # Since when (this reconciler's clock) each member has been seen not alive. Kept
        # in memory on purpose: an operator that starts (a reinstall, a restart) times a
        # full grace period before it drops anyone, whatever the store says.
        self._absent_since: dict[str, float] = {}
        self._absent_wall: dict[str, float] = {}
        self._status: dict[str, Any] | None = None
        self.waiting: list[str] = []

    async def reconcile_once(self) -> Document | None:
        """One round: load, observe, poll, step the document, publish, re-push, clean up.

        Returns the document in force after the round (None while no node was ever alive).
        """
        doc = await self.store.load()
        observed = await self.source.observe(doc.names if doc is not None else ())
        alive = alive_nodes(observed)
        reports = await self._poll([_as_member(o, doc) for o in alive.values()])
        seed_epoch = max((r.epoch for r in reports.values()), default=0)
        absent = self._time_absences(doc, alive)

        stepped = False
        held = held_document(reports)
        restored = restore(doc, held, seed_epoch, self._saved)
        if held is not None and restored is not None:
            log.warning("the store holds %s, the nodes run epoch %d: re-issuing the nodes' "
                        "document", "nothing valid" if doc is None else f"epoch {doc.epoch} "
                        f"({', '.join(f'{m.name}:{m.state}' for m in doc.members)})", held.epoch)
            # Described against the nodes' document: for the cluster nothing changes.
            await self._publish(held, restored, alive)
            doc, stepped = restored, True
        for _ in range(self.max_steps):
            new = next_document(doc, observed, reports, self.policy, seed_epoch, absent)
            if new is None:
                break
            await self._publish(doc, new, alive)
            doc, stepped = new, True
        if doc is None:
            return None
        await self._report_waiting(waiting(doc, observed, reports, self.policy, absent), doc)

        if not stepped:
            # Nodes that missed a push (down, timed out, restarted on an old data dir) get
            # the current document again; a node ignores an epoch it already holds.
            lagging = [
                m for m in doc.members
                if m.name in alive
                and (m.name not in reports or reports[m.name].epoch < doc.epoch)
            ]
            if lagging:
                await self._push(lagging, doc)

        if cleanup_due(doc, reports, alive):
            await self._cleanup(doc, [m for m in doc.members if m.name in alive
                                      and m.name in reports and reports[m.name].epoch >= doc.epoch])
        return doc

    def _time_absences(self, doc: Document | None, alive: dict[str, Observed]) -> dict[str, float]:
        """Seconds each member has been absent, by this reconciler's watch."""
        now, wall = self._clock(), self._wall_clock()
        members = set(doc.names) if doc is not None else set()
        for name in list(self._absent_since):
            if name in alive or name not in members:
                del self._absent_since[name]
                self._absent_wall.pop(name, None)
        for name in members - alive.keys():
            if name not in self._absent_since:
                log.warning("%s is absent: its replicas keep serving its ranges; its copies "
                            "are restored elsewhere if it stays away %gs", name,
                            self.policy.down_grace)
            self._absent_since.setdefault(name, now)
            self._absent_wall.setdefault(name, wall)
        return {name: now - since for name, since in self._absent_since.items()}

    async def _report_waiting(self, reasons: list[str], doc: Document) -> None:
        """Say (once per change) why the membership cannot move on, and record what is
        observed beside the document."""
        if reasons != self.waiting:
            for line in reasons:
                log.warning("epoch %d waits: %s", doc.epoch, line)
            self.waiting = reasons
            if reasons and self.on_waiting is not None:
                try:
                    result = self.on_waiting(reasons)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("on_waiting callback failed")
        status = {"epoch": doc.epoch, "settled": doc.settled, "waiting": reasons,
                  "absent_since": {n: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
                                   for n, t in sorted(self._absent_wall.items())}}
        if status != self._status:
            try:
                await self.store.save_status(status)
            except Exception as exc:
                log.warning("could not record the observed status: %r", exc)
                return
            self._status = status

    async def run(self, interval: float, wake: asyncio.Event | None = None) -> None:
        """Reconcile every `interval` seconds, or sooner when `wake` is set (pod events).

        A failed round is logged and retried next time; cancel the task to stop.
        """
        while True:
            if wake is not None:
                # Cleared before the round: an event arriving during it triggers another.
                wake.clear()
            try:
                await self.reconcile_once()
            except Exception:
                self.rounds["error"] += 1
                log.exception("reconcile round failed; retrying in %.1fs", interval)
            else:
                self.rounds["ok"] += 1
                self.last_success = time.time()
            self.last_round = time.monotonic()
            if wake is None:
                await asyncio.sleep(interval)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), interval)

    async def _poll(self, members: list[Member]) -> dict[str, Report]:
        """Status of every alive node, concurrently; a failure or timeout is no report."""

        async def one(m: Member) -> Report | None:
            try:
                report = await asyncio.wait_for(self.nodes.status(m), self.status_timeout)
            except Exception as exc:
                log.debug("status of %s failed: %r", m.name, exc)
                return None
            # An address reused by another node must not speak for this one.
            return report if report.name == m.name else None

        results = await asyncio.gather(*(one(m) for m in members))
        return {m.name: r for m, r in zip(members, results, strict=True) if r is not None}

    async def _publish(
        self, old: Document | None, new: Document, alive: dict[str, Observed]
    ) -> None:
        """Save first (the store is the source of truth), then tell every alive member.

        A failed push is only logged: the next round re-pushes to any node still behind.
        """
        await self.store.save(new)
        self._saved = new
        description = describe(old, new)
        log.info("membership %s", description)
        if self.on_change is not None:
            try:
                result = self.on_change(old, new, description)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("on_change callback failed")
        # Members that just left (a settle drops the leaving) hear it too: a node handing
        # off before it stops waits for exactly that.
        members = {m.name: m for m in (*(old.members if old else ()), *new.members)}
        await self._push([m for m in members.values() if m.name in alive], new)

    async def _push(self, members: list[Member], doc: Document) -> None:
        async def one(m: Member) -> None:
            try:
                await asyncio.wait_for(self.nodes.push(m, doc), self.push_timeout)
            except Exception as exc:
                # Re-pushed every round until it lands: warn once per node and epoch.
                first = self._push_failed.get(m.name) != doc.epoch
                self._push_failed[m.name] = doc.epoch
                log.log(logging.WARNING if first else logging.DEBUG,
                        "push of epoch %d to %s failed: %r (retrying every round)",
                        doc.epoch, m.name, exc)
            else:
                self._push_failed.pop(m.name, None)

        await asyncio.gather(*(one(m) for m in members))

    async def _cleanup(self, doc: Document, ready: list[Member]) -> None:
        if self._cleanup_epoch != doc.epoch:
            self._cleanup_epoch, self._cleaned = doc.epoch, set()
        todo = [m for m in ready if m.name not in self._cleaned]

        async def one(m: Member) -> None:
            try:
                await asyncio.wait_for(self.nodes.cleanup(m, doc.epoch), self.push_timeout)
            except Exception as exc:
                log.warning("cleanup of epoch %d on %s failed: %r", doc.epoch, m.name, exc)
                return
            self._cleaned.add(m.name)

        if todo:
            log.info("epoch %d acknowledged by every member: dropping excess copies", doc.epoch)
            await asyncio.gather(*(one(m) for m in todo))


def _as_member(o: Observed, doc: Document | None) -> Member:
    """The Member to address an observed node by: its document entry, at its current address."""
    known = doc.member(o.name) if doc is not None else None
    return Member(o.name, o.url, o.api_url, known.state if known is not None else "joining")
