"""The coordinator's quorum logic, in process, with replicas faked behind its `Cluster`
Protocol (`fakecluster`): the corners that real processes reach only by luck. The rule-2
retry, hints, the 503's true counts, a stale epoch, the speculative read, read repair of
late answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from fakecluster import FakeCluster, member, put, put_all, settled

from ringkv.node.coordinator import Coordinator, InsufficientStorage, QuorumUnavailable
from ringkv.node.membership import Document
from ringkv.node.versions import COUNTER_BITS

DEADLINE = 10.0  # seconds a request that should finish at once may take on a busy machine


def coordinator(cluster: FakeCluster, wait_timeout: float = DEADLINE,
                speculative_delay: float = 0.05) -> Coordinator:
    return Coordinator(cluster, wait_timeout=wait_timeout, speculative_delay=speculative_delay)


async def within_deadline(coro: Any) -> Any:
    """A request that should be decided at once (a hang fails the test, not the suite)."""
    return await asyncio.wait_for(coro, DEADLINE)


# -- writes: rule 2 ---------------------------------------------------------------------


async def test_a_write_refused_as_not_newer_is_retried_above_the_stored_version() -> None:
    """Rule 2: two replicas hold a version from a coordinator whose clock runs an hour
    ahead. This coordinator's first attempt is refused; it moves its clock past the
    refused version and writes again, and the new value wins everywhere."""
    cluster = FakeCluster(settled())
    ahead = (cluster.clock.physical_ms() + 3_600_000) << COUNTER_BITS
    r0, r1, r2 = cluster.replicas_of(b"k")
    for r in (r0, r1):
        put(r, b"k", b"from the future", ahead)
    rec = await within_deadline(coordinator(cluster).write(b"k", b"new", "text/plain", "quorum"))
    assert rec.version.hlc > ahead
    assert [len(r.writes()) for r in (r0, r1, r2)] == [2, 2, 2]
    assert all(r.holds(b"k") == rec for r in (r0, r1, r2))


async def test_a_second_refusal_comes_from_a_concurrent_write_and_counts_as_an_ack() -> None:
    """Rule 2 in two attempts: the first attempt's answers covered a quorum, so the second
    one's version is above every write acknowledged before this one began; a replica that
    refuses it again holds a concurrent write, which this one may precede. No third
    attempt, no 503."""
    cluster = FakeCluster(settled())
    r0, r1, r2 = cluster.replicas_of(b"k")
    r0.behaviour = r1.behaviour = "outpaced"  # another writer lands first, every time
    rec = await within_deadline(coordinator(cluster).write(b"k", b"mine", "text/plain", "quorum"))
    assert [len(r.writes()) for r in (r0, r1, r2)] == [2, 2, 2]
    assert r2.holds(b"k") == rec


async def test_a_refusal_without_a_quorum_of_answers_is_not_retried() -> None:
    """One refusal and two replicas down: the answers do not cover a quorum, so they do
    not bound the writes acknowledged before; a retry could not claim rule 2. 503."""
    cluster = FakeCluster(settled())
    r0, r1, r2 = cluster.replicas_of(b"k")
    put(r0, b"k", b"newer", (cluster.clock.physical_ms() + 60_000) << COUNTER_BITS)
    r1.behaviour = r2.behaviour = "down"
    with pytest.raises(QuorumUnavailable) as failed:
        await within_deadline(coordinator(cluster).write(b"k", b"v", "text/plain", "quorum"))
    assert (failed.value.acked, failed.value.needed) == (0, 2)
    assert len(r0.writes()) == 1


# -- writes: hints and the 503 ----------------------------------------------------------


@pytest.mark.parametrize("behaviour", ["down", "timeout"])
async def test_a_replica_that_missed_a_write_gets_a_hint(behaviour: str) -> None:
    cluster = FakeCluster(settled())
    r0, r1, r2 = cluster.replicas_of(b"k")
    r2.behaviour = behaviour
    rec = await within_deadline(coordinator(cluster).write(b"k", b"v", "text/plain", "quorum"))
    # Every answer was in before the write returned (its wake-up was queued after them).
    assert cluster.hints == [(r2.name, rec)]
    assert [name for name, _ in cluster.failed] == [r2.name]
    assert r0.holds(b"k") == rec and r1.holds(b"k") == rec


async def test_a_replica_that_refused_for_another_reason_gets_no_hint() -> None:
    """A per-op refusal (here a version too far ahead of its clock) is an answer: the
    replica is up, and a hint would be refused the same way."""
    cluster = FakeCluster(settled())
    _, _, r2 = cluster.replicas_of(b"k")
    r2.behaviour = "drift"
    await within_deadline(coordinator(cluster).write(b"k", b"v", "text/plain", "quorum"))
    assert [name for name, _ in cluster.failed] == [r2.name]
    assert cluster.hints == []


async def test_a_failed_write_reports_the_true_acked_count() -> None:
    """Two of three replicas are down and fail at once; the third acks later. The write
    waits for every answer, so the 503 says 1 of the 2 needed acked (not 0), and the
    replicas that missed it get hints."""
    cluster = FakeCluster(settled())
    r0, r1, r2 = cluster.replicas_of(b"k")
    r0.behaviour = r1.behaviour = "down"
    r2.behaviour = "late"
    write = asyncio.ensure_future(coordinator(cluster).write(b"k", b"v", "text/plain", "quorum"))
    await _until(lambda: len(cluster.failed) == 2)
    assert not write.done()
    r2.release()
    with pytest.raises(QuorumUnavailable) as failed:
        await within_deadline(write)
    assert (failed.value.acked, failed.value.needed) == (1, 2)
    assert sorted(name for name, _ in cluster.hints) == sorted([r0.name, r1.name])


@pytest.mark.parametrize(("level", "needed"), [("one", 1), ("quorum", 2), ("all", 3)])
async def test_the_503_needs_what_the_level_needs(level: str, needed: int) -> None:
    cluster = FakeCluster(settled())
    for r in cluster.replicas.values():
        r.behaviour = "down"
    with pytest.raises(QuorumUnavailable) as failed:
        await within_deadline(coordinator(cluster).write(b"k", b"v", "text/plain", level))
    assert (failed.value.acked, failed.value.needed) == (0, needed)


async def test_a_silent_replica_fails_the_write_when_the_wait_times_out() -> None:
    """No answer at all (a peer link that never completes the op): the coordinator's own
    deadline ends the wait."""
    cluster = FakeCluster(settled())
    r0, r1, _ = cluster.replicas_of(b"k")
    r0.behaviour = r1.behaviour = "silent"
    with pytest.raises(TimeoutError):
        await within_deadline(coordinator(cluster, wait_timeout=0.2).write(
            b"k", b"v", "text/plain", "quorum"))


async def test_a_full_replica_gets_a_hint_and_fails_the_write_as_507() -> None:
    cluster = FakeCluster(settled())
    _, r1, r2 = cluster.replicas_of(b"k")
    r1.behaviour = r2.behaviour = "full"
    with pytest.raises(InsufficientStorage):
        await within_deadline(coordinator(cluster).write(b"k", b"v", "text/plain", "quorum"))
    assert sorted(name for name, _ in cluster.hints) == sorted([r1.name, r2.name])


async def test_a_stale_epoch_retries_the_write_on_the_newer_rings() -> None:
    """A replica answers "stale epoch" (the link has adopted its newer document, which
    dropped that replica): the write is tried again with the rings now in force."""
    cluster = FakeCluster(settled(4))
    old = cluster.replicas_of(b"k")
    old[0].behaviour = "stale"
    cluster.newer = Document(2, 3, tuple(member(i) for i in range(4) if f"n{i}" != old[0].name))
    rec = await within_deadline(coordinator(cluster).write(b"k", b"v", "text/plain", "all"))
    now = cluster.replicas_of(b"k")
    assert old[0] not in now
    assert all(r.holds(b"k") == rec for r in now)


# -- reads ------------------------------------------------------------------------------


async def test_a_healthy_read_asks_only_r_replicas() -> None:
    cluster = FakeCluster(settled())
    stored = put_all(cluster.replicas_of(b"k"), b"k", b"v", 5)
    assert await within_deadline(coordinator(cluster).read(b"k", "quorum")) == stored
    asked = [len(r.reads()) for r in cluster.replicas_of(b"k")]
    assert sorted(asked) == [0, 1, 1]


async def test_a_silent_replica_is_replaced_after_the_speculative_delay() -> None:
    """The second replica asked never answers: after the speculative delay the third is
    asked, and the read is decided long before its own timeout (an hour)."""
    cluster = FakeCluster(settled())
    r0, r1, r2 = cluster.replicas_of(b"k")  # asked in this order (none is this node)
    stored = put_all([r0, r1, r2], b"k", b"v", 5)
    r1.behaviour = "silent"
    read = coordinator(cluster, wait_timeout=3600, speculative_delay=0.05).read(b"k", "quorum")
    assert await within_deadline(read) == stored
    assert [len(r.reads()) for r in (r0, r1, r2)] == [1, 1, 1]


async def test_a_failed_replica_is_replaced_at_once() -> None:
    """A refused connection asks the next replica at once, without waiting for the
    speculative delay (an hour here)."""
    cluster = FakeCluster(settled())
    r0, r1, r2 = cluster.replicas_of(b"k")
    stored = put_all([r0, r1, r2], b"k", b"v", 5)
    r0.behaviour = "down"
    read = coordinator(cluster, wait_timeout=3600, speculative_delay=3600).read(b"k", "quorum")
    assert await within_deadline(read) == stored
    assert [name for name, _ in cluster.failed] == [r0.name]


async def test_a_read_that_cannot_reach_r_replicas_reports_the_true_count() -> None:
    cluster = FakeCluster(settled())
    r0, r1, r2 = cluster.replicas_of(b"k")
    put(r0, b"k", b"v", 5)
    r1.behaviour = r2.behaviour = "down"
    with pytest.raises(QuorumUnavailable) as failed:
        await within_deadline(coordinator(cluster).read(b"k", "quorum"))
    assert (failed.value.acked, failed.value.needed) == (1, 2)


async def test_a_read_returns_the_newest_and_repairs_the_replica_behind() -> None:
    cluster = FakeCluster(settled())
    cluster.name = "n0"
    replicas = cluster.replicas_of(b"k")
    me = cluster.local
    others = [r for r in replicas if r is not me]
    put(me, b"k", b"old", 5)
    newest = put(others[0], b"k", b"new", 9)
    put(others[1], b"k", b"new", 9)
    assert await within_deadline(coordinator(cluster).read(b"k", "all")) == newest
    assert me.holds(b"k") == newest  # repaired (a merge, never refused)
    assert cluster.repairs == [me.name]
    assert [op[2] for op in me.writes()] == [False]


async def test_a_late_answer_behind_the_decided_read_is_repaired() -> None:
    """The speculative read asked every replica; the slow one answers after the read was
    decided, with an older version: it is repaired all the same."""
    cluster = FakeCluster(settled())
    r0, r1, r2 = replicas = cluster.replicas_of(b"k")
    newest = put(r0, b"k", b"new", 9)
    put(r1, b"k", b"new", 9)
    put(r2, b"k", b"old", 5)
    for r in replicas:
        r.behaviour = "late"
    read = asyncio.ensure_future(coordinator(cluster, speculative_delay=0.01).read(b"k", "quorum"))
    await _until(lambda: all(r.reads() for r in replicas))  # the speculative retry asked all
    for r in (r0, r1):
        r.behaviour = "ok"
        r.release()
    assert await within_deadline(read) == newest
    r2.behaviour = "ok"
    r2.release()
    await _until(lambda: r2.holds(b"k") == newest)
    assert cluster.repairs == [r2.name]


async def test_a_read_of_a_version_only_a_digest_had_fetches_the_record() -> None:
    """The replica asked in full is behind; the one asked for a digest holds the newest
    version: that record is fetched in full, and the first replica is repaired."""
    cluster = FakeCluster(settled())
    r0, r1, _ = cluster.replicas_of(b"k")  # r0 is asked in full, r1 for a digest
    put(r0, b"k", b"old", 5)
    newest = put(r1, b"k", b"new", 9)
    assert await within_deadline(coordinator(cluster).read(b"k", "quorum")) == newest
    assert [op[2] for op in r0.reads()] == [True]
    assert [op[2] for op in r1.reads()] == [False, True]
    await _until(lambda: r0.holds(b"k") == newest)
    assert cluster.repairs == [r0.name]


async def _until(condition: Callable[[], bool]) -> None:
    """Let the loop run until `condition` holds (a generous deadline, no fixed sleep)."""
    async with asyncio.timeout(DEADLINE):
        # The fakes change state in loop callbacks that signal nothing: look every turn.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.001)
