"""The reconcile loop against in-memory stand-ins for the store, the pod source and the nodes.

The fakes play the external systems only (a ConfigMap, the Kubernetes API, node processes):
a fake node adopts a pushed document only when its epoch is higher, as a real node does, and
reports caught up as soon as it adopted (instant pull) unless told otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest

from ringkv.node.membership import Document, Member
from ringkv.operator.controller import Observed, Policy, Report
from ringkv.operator.reconciler import Reconciler


class Journal(list[tuple[str, ...]]):
    """Every external effect in order, so tests can check what happened before what."""


@dataclass
class FakeStore:
    journal: Journal
    doc: Document | None = None
    fail_loads: int = 0
    status: dict[str, object] = field(default_factory=dict)

    async def load(self) -> Document | None:
        if self.fail_loads:
            self.fail_loads -= 1
            raise ConnectionError("api server unavailable")
        return self.doc

    async def save(self, doc: Document) -> None:
        self.journal.append(("save", str(doc.epoch)))
        self.doc = doc

    async def save_status(self, status: dict[str, object]) -> None:
        self.status = status


@dataclass
class FakeSource:
    alive: dict[str, bool]

    async def observe(self, members: Sequence[str]) -> list[Observed]:
        return [Observed(n, f"{n}:9080", f"http://{n}:8080", up) for n, up in self.alive.items()]


@dataclass
class FakeNode:
    epoch: int = 0
    doc: Document | None = None
    pulls: bool = True  # catches up as soon as it adopts an epoch
    cleaned: list[int] = field(default_factory=list)


@dataclass
class FakeNodes:
    journal: Journal
    nodes: dict[str, FakeNode]
    drop_push: set[str] = field(default_factory=set)  # pushes to these are lost
    unreachable: set[str] = field(default_factory=set)  # status and cleanup fail
    hang: set[str] = field(default_factory=set)  # status never answers

    async def status(self, member: Member) -> Report:
        if member.name in self.hang:
            await asyncio.Event().wait()
        if member.name in self.unreachable:
            raise ConnectionRefusedError(member.name)
        n = self.nodes[member.name]
        return Report(member.name, n.epoch, n.pulls, data_id=f"d-{member.name}")

    async def push(self, member: Member, doc: Document) -> None:
        self.journal.append(("push", str(doc.epoch), member.name))
        if member.name in self.drop_push:
            raise ConnectionResetError(member.name)
        n = self.nodes[member.name]
        if doc.epoch > n.epoch:
            n.epoch, n.doc = doc.epoch, doc

    async def cleanup(self, member: Member, epoch: int) -> None:
        if member.name in self.unreachable:
            raise ConnectionRefusedError(member.name)
        self.journal.append(("cleanup", str(epoch), member.name))
        self.nodes[member.name].cleaned.append(epoch)


@dataclass
class World:
    journal: Journal
    store: FakeStore
    source: FakeSource
    nodes: FakeNodes
    changes: list[str]
    rec: Reconciler

    def pushes(self, epoch: int) -> set[str]:
        return {e[2] for e in self.journal if e[:2] == ("push", str(epoch))}

    def cleanups(self) -> list[tuple[str, ...]]:
        return [e for e in self.journal if e[0] == "cleanup"]

    async def settle(self, rounds: int = 10) -> Document:
        """Reconcile until a round changes nothing and the document is settled."""
        for _ in range(rounds):
            before = self.store.doc
            doc = await self.rec.reconcile_once()
            if doc is not None and doc == before and doc.settled:
                return doc
        raise AssertionError(f"not settled after {rounds} rounds: {self.store.doc}")


def member(name: str) -> Member:
    return Member(name, f"{name}:9080", f"http://{name}:8080", data_id=f"d-{name}")


def make_world(names: list[str], doc: Document | None = None, rf: int = 3,
               node_epoch: int | None = None) -> World:
    journal = Journal()
    epoch = node_epoch if node_epoch is not None else (doc.epoch if doc else 0)
    nodes = {n: FakeNode(epoch, doc) for n in names}
    changes: list[str] = []
    store = FakeStore(journal, doc)
    source = FakeSource(dict.fromkeys(names, True))
    fake_nodes = FakeNodes(journal, nodes)
    rec = Reconciler(store, source, fake_nodes, Policy(rf=rf, vnodes=16, down_grace=0.0),
                     on_change=lambda old, new, text: changes.append(text),
                     status_timeout=0.2, push_timeout=1.0)
    return World(journal, store, source, fake_nodes, changes, rec)


NAMES = ["node-0", "node-1", "node-2", "node-3"]


def settled4(epoch: int = 3) -> Document:
    return Document(epoch, 3, tuple(member(n) for n in NAMES))


async def test_fresh_cluster_is_formed_and_pushed_to_every_node() -> None:
    w = make_world(NAMES[:3])
    doc = await w.rec.reconcile_once()
    assert doc == Document(1, 3, tuple(member(n) for n in NAMES[:3]))
    assert w.store.doc == doc
    assert w.pushes(1) == set(NAMES[:3])
    assert w.changes == ["epoch 1: cluster formed with node-0, node-1, node-2 (rf=3)"]


async def test_removal_is_saved_then_pushed_to_the_survivors_only() -> None:
    w = make_world(NAMES, settled4())
    w.source.alive["node-2"] = False
    doc = await w.rec.reconcile_once()
    assert doc is not None and doc.epoch == 4 and not doc.settled
    assert doc.names == ("node-0", "node-1", "node-3")
    assert doc.base == tuple(NAMES)
    assert w.pushes(4) == {"node-0", "node-1", "node-3"}
    assert w.journal.index(("save", "4")) < min(
        i for i, e in enumerate(w.journal) if e[:2] == ("push", "4"))
    assert w.changes == ["epoch 4: node-2 removed"]

    final = await w.settle()
    assert final.epoch == 5 and final.settled and final.base == ()
    assert all(w.nodes.nodes[n].epoch == 5 for n in final.names)
    assert w.nodes.nodes["node-2"].epoch == 3  # a dead node is never pushed to


async def test_every_publish_saves_before_it_pushes() -> None:
    w = make_world(NAMES[:3], Document(1, 3, tuple(member(n) for n in NAMES[:3])))
    w.source.alive["node-3"] = True
    w.nodes.nodes["node-3"] = FakeNode()
    final = await w.settle()
    assert final.epoch == 4 and final.names == tuple(NAMES)
    saved_at: dict[str, int] = {}
    for i, e in enumerate(w.journal):
        if e[0] == "save":
            saved_at[e[1]] = i
        elif e[0] == "push":
            assert e[1] in saved_at and saved_at[e[1]] < i
    assert w.changes == ["epoch 2: node-3 joined (joining)", "epoch 3: node-3 promoted to normal",
                         "epoch 4: settled"]


async def test_joining_node_waits_until_it_reports_caught_up() -> None:
    w = make_world(NAMES[:3], Document(1, 3, tuple(member(n) for n in NAMES[:3])))
    w.source.alive["node-3"] = True
    w.nodes.nodes["node-3"] = FakeNode(pulls=False)
    for _ in range(3):
        doc = await w.rec.reconcile_once()
    assert doc is not None and doc.epoch == 2
    assert doc.member("node-3") == Member("node-3", "node-3:9080", "http://node-3:8080",
                                          "joining", "d-node-3")
    w.nodes.nodes["node-3"].pulls = True
    final = await w.settle()
    assert final.epoch == 4 and {m.state for m in final.members} == {"normal"}


async def test_node_that_missed_a_push_is_pushed_again() -> None:
    w = make_world(NAMES, settled4())
    w.source.alive["node-3"] = False
    w.nodes.drop_push.add("node-1")
    await w.rec.reconcile_once()
    assert w.nodes.nodes["node-1"].epoch == 3 and w.nodes.nodes["node-0"].epoch == 4

    w.journal.clear()
    doc = await w.rec.reconcile_once()
    # No settle while node-1 is behind; the current document goes to node-1 only.
    assert doc is not None and doc.epoch == 4
    assert [e for e in w.journal if e[0] == "push"] == [("push", "4", "node-1")]

    w.nodes.drop_push.clear()
    await w.rec.reconcile_once()
    assert w.nodes.nodes["node-1"].epoch == 4
    final = await w.settle()
    assert final.epoch == 5 and final.settled


async def test_lost_store_is_reseeded_above_the_highest_reported_epoch() -> None:
    w = make_world(NAMES[:3], None, node_epoch=41)
    w.nodes.nodes["node-2"].epoch = 17
    doc = await w.rec.reconcile_once()
    assert doc == Document(42, 3, tuple(member(n) for n in NAMES[:3]))
    assert all(n.epoch == 42 for n in w.nodes.nodes.values())


async def test_store_behind_the_nodes_is_reissued_so_nodes_adopt_it() -> None:
    w = make_world(NAMES, settled4(3), node_epoch=9)
    doc = await w.rec.reconcile_once()
    assert doc == settled4(10)
    assert all(n.epoch == 10 for n in w.nodes.nodes.values())


async def test_cleanup_is_sent_once_after_every_member_acknowledged_the_settle() -> None:
    w = make_world(NAMES, settled4())
    w.source.alive["node-2"] = False
    await w.rec.reconcile_once()
    await w.rec.reconcile_once()
    assert w.store.doc is not None and w.store.doc.epoch == 5 and w.store.doc.settled
    # The settling round saw reports for the unsettled epoch: nobody has acknowledged 5 yet.
    assert w.cleanups() == []

    await w.rec.reconcile_once()
    assert sorted(w.cleanups()) == [("cleanup", "5", n) for n in ("node-0", "node-1", "node-3")]
    for _ in range(3):
        await w.rec.reconcile_once()
    assert len(w.cleanups()) == 3


async def test_failed_cleanup_is_retried_for_that_node_only() -> None:
    w = make_world(NAMES, settled4())
    w.nodes.unreachable.add("node-1")  # no report, so not due yet
    await w.rec.reconcile_once()
    assert w.cleanups() == []

    class FlakyCleanup(FakeNodes):
        failed = False

        async def cleanup(self, member: Member, epoch: int) -> None:
            if member.name == "node-1" and not self.failed:
                self.failed = True
                raise ConnectionResetError("node-1")
            await super().cleanup(member, epoch)

    flaky = FlakyCleanup(w.journal, w.nodes.nodes)
    w.rec.nodes = flaky
    await w.rec.reconcile_once()
    assert {e[2] for e in w.cleanups()} == {"node-0", "node-2", "node-3"}
    await w.rec.reconcile_once()
    await w.rec.reconcile_once()
    assert sorted(e[2] for e in w.cleanups()) == NAMES


async def test_new_node_that_does_not_answer_yet_is_not_added_and_said_so() -> None:
    w = make_world(NAMES[:3], Document(1, 3, tuple(member(n) for n in NAMES[:3])))
    w.source.alive["node-3"] = True
    w.nodes.nodes["node-3"] = FakeNode()
    w.nodes.unreachable.add("node-3")  # running, not listening yet
    for _ in range(2):
        doc = await w.rec.reconcile_once()
        assert doc is not None and doc.epoch == 1 and "node-3" not in doc.names
    assert w.store.status["waiting"] == [
        "node-3: not answering yet (it is added to the membership once it answers a status "
        "poll in its own name)"]
    w.nodes.unreachable.clear()
    final = await w.settle()
    assert final.names == tuple(NAMES) and w.store.status["waiting"] == []
    assert w.changes[0] == "epoch 2: node-3 joined (joining)"


async def test_unresponsive_node_gives_no_report_and_blocks_only_the_settle() -> None:
    w = make_world(NAMES, settled4())
    w.source.alive["node-0"] = False
    w.nodes.hang.add("node-3")
    doc = await w.rec.reconcile_once()
    assert doc is not None and doc.epoch == 4  # the round finished despite the hang
    for _ in range(2):
        doc = await w.rec.reconcile_once()
    assert doc is not None and doc.epoch == 4 and not doc.settled
    w.nodes.hang.clear()
    assert (await w.settle()).epoch == 5


async def test_report_under_another_name_is_ignored() -> None:
    w = make_world(NAMES[:3])

    class Impostor(FakeNodes):
        async def status(self, member: Member) -> Report:
            report = await super().status(member)
            return Report("node-9", 99, True, True) if member.name == "node-2" else report

    w.rec.nodes = Impostor(w.journal, w.nodes.nodes)
    doc = await w.rec.reconcile_once()
    assert doc is not None and doc.epoch == 1  # node-2's impostor did not seed epoch 99


async def test_async_on_change_and_failing_callback_do_not_break_the_round(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []

    async def record(old: Document | None, new: Document, text: str) -> None:
        seen.append(text)

    w = make_world(NAMES)
    w.rec.on_change = record
    await w.rec.reconcile_once()
    assert seen == ["epoch 1: cluster formed with node-0, node-1, node-2, node-3 (rf=3)"]

    def broken(old: Document | None, new: Document, text: str) -> None:
        raise RuntimeError("events api down")

    w.rec.on_change = broken
    w.source.alive["node-3"] = False
    with caplog.at_level(logging.ERROR, logger="ringkv.operator"):
        doc = await w.rec.reconcile_once()
    assert doc is not None and doc.epoch == 2 and w.pushes(2) == {"node-0", "node-1", "node-2"}
    assert "on_change callback failed" in caplog.text


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition with a generous deadline (no fixed sleeps in tests)."""
    async with asyncio.timeout(timeout):
        while True:
            if cond():
                return
            await asyncio.sleep(0.005)


async def test_run_wakes_on_events_survives_errors_and_cancels(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = make_world(NAMES)
    w.store.fail_loads = 1
    wake = asyncio.Event()
    with caplog.at_level(logging.ERROR, logger="ringkv.operator"):
        task = asyncio.create_task(w.rec.run(interval=3600, wake=wake))
        await wait_for(lambda: "reconcile round failed" in caplog.text)
        wake.set()  # a pod event: reconcile now, not in an hour
        await wait_for(lambda: w.store.doc is not None)
        assert w.store.doc is not None and w.store.doc.epoch == 1

        w.source.alive["node-3"] = False
        wake.set()
        await wait_for(lambda: w.store.doc is not None and w.store.doc.epoch == 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_run_without_wake_reconciles_every_interval() -> None:
    w = make_world(NAMES)
    task = asyncio.create_task(w.rec.run(interval=0.01))
    try:
        await wait_for(lambda: w.store.doc is not None)
        w.source.alive["node-3"] = False
        await wait_for(lambda: w.store.doc is not None and w.store.doc.settled
                       and w.store.doc.names == ("node-0", "node-1", "node-2"))
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_absent_member_is_dropped_only_after_the_grace_period() -> None:
    now = [1000.0]
    w = make_world(NAMES, settled4())
    w.rec.policy = Policy(rf=3, vnodes=16, down_grace=30.0)
    w.rec._clock = lambda: now[0]
    w.source.alive["node-3"] = False
    doc = await w.rec.reconcile_once()
    assert doc == settled4() and "node-3" in w.store.status["absent_since"]  # type: ignore[operator]
    now[0] += 29.0
    assert await w.rec.reconcile_once() == settled4()
    w.source.alive["node-3"] = True  # back within the grace: nothing moved, the timer resets
    assert await w.rec.reconcile_once() == settled4()
    assert w.store.status["absent_since"] == {}
    w.source.alive["node-3"] = False
    await w.rec.reconcile_once()
    now[0] += 30.0
    doc = await w.rec.reconcile_once()
    assert doc is not None and doc.names == tuple(NAMES[:3])
    assert w.changes == ["epoch 4: node-3 removed"]


async def test_a_member_that_cannot_be_dropped_is_said_to_wait_once() -> None:
    said: list[list[str]] = []
    w = make_world(NAMES, settled4())
    w.rec.on_waiting = said.append
    w.source.alive["node-2"] = w.source.alive["node-3"] = False
    for _ in range(3):
        assert await w.rec.reconcile_once() == settled4()
    assert len(said) == 1 and all("is gone, but dropping it" in line for line in said[0])
    assert w.store.status["waiting"] == said[0]


async def test_a_member_that_left_hears_the_settle_and_absent_members_get_no_cleanup() -> None:
    @dataclass
    class Scaling(FakeSource):
        unwanted: set[str] = field(default_factory=set)

        async def observe(self, members: Sequence[str]) -> list[Observed]:
            return [Observed(n, f"{n}:9080", f"http://{n}:8080", up, n not in self.unwanted)
                    for n, up in self.alive.items()]

    w = make_world(NAMES, settled4())
    w.source = w.rec.source = Scaling(w.source.alive, {"node-3"})  # type: ignore[assignment]
    final = await w.settle()
    assert final.names == tuple(NAMES[:3])
    assert w.changes[0] == "epoch 4: node-3 leaving (handing off its ranges)"
    assert "node-3" in w.pushes(final.epoch)  # it learns it may stop
    w.source.alive["node-2"] = False
    w.journal.clear()
    w.rec._cleanup_epoch = 0
    await w.rec.reconcile_once()
    assert {e[2] for e in w.cleanups()} == {"node-0", "node-1"}
