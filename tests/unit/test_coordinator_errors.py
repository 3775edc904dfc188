"""The 503 a coordinator reports: the ring that fell short with its own counts, and a read
that could ask nobody. In process, with replicas faked behind the coordinator's `Cluster`
and `Replica` Protocols."""

from __future__ import annotations

import pytest
from fakecluster import VNODES, FakeCluster, a_key, member

from ringkv.node.coordinator import Coordinator, QuorumUnavailable
from ringkv.node.membership import Document, View
from ringkv.node.ring import key_token


def cluster_with(doc: Document, down: set[str]) -> FakeCluster:
    """A coordinator outside the key's replica set; the replicas named in `down` refuse
    connections."""
    cluster = FakeCluster(doc)
    for name in down:
        cluster.replicas[name].behaviour = "down"
    return cluster


async def test_a_write_short_in_the_target_ring_reports_that_ring() -> None:
    # Epoch 2 adds n3, n4 to a settled n0..n2: writes need 2 of 3 in both rings.
    doc = Document(2, 3, (member(0), member(1), member(2), member(3, "joining"), member(4, "joining")),
                   settled=False, base=("n0", "n1", "n2"))
    view = View(doc, VNODES)
    key = a_key(view, lambda base, target: len(target - base) == 2)
    target = set(view.target.replicas_for_token(key_token(key)))
    cluster = cluster_with(doc, down=target - {"n0", "n1", "n2"})  # the two new replicas
    with pytest.raises(QuorumUnavailable) as failed:
        await Coordinator(cluster, wait_timeout=5).write(key, b"v", "text/plain", "quorum")
    # Every base replica acked (3 of 2 needed there); the target ring got 1 of its 2.
    assert (failed.value.acked, failed.value.needed, failed.value.ring) == (1, 2, "target")
    assert str(failed.value).startswith("only 1 of the 2 replicas needed in the target ring "
                                        "answered the write")


async def test_a_write_short_in_a_settled_ring_names_no_ring() -> None:
    doc = Document(1, 3, (member(0), member(1), member(2)))
    cluster = cluster_with(doc, down={"n1", "n2"})
    with pytest.raises(QuorumUnavailable) as failed:
        await Coordinator(cluster, wait_timeout=5).write(b"k", b"v", "text/plain", "quorum")
    assert (failed.value.acked, failed.value.needed, failed.value.ring) == (1, 2, None)
    assert "ring" not in str(failed.value)


async def test_a_read_with_every_candidate_joining_says_nobody_was_asked() -> None:
    # n3 and n4 came back (joining: they may have lost their data), still in the base ring.
    doc = Document(3, 3, (member(0), member(1), member(2), member(3, "joining"), member(4, "joining")),
                   settled=False, base=("n0", "n1", "n2", "n3", "n4"))
    view = View(doc, VNODES)
    key = a_key(view, lambda base, target: {"n3", "n4"} <= base)
    cluster = cluster_with(doc, down=set())
    with pytest.raises(QuorumUnavailable) as failed:
        await Coordinator(cluster, wait_timeout=5).read(key, "quorum")
    assert (failed.value.acked, failed.value.needed) == (0, 2)
    message = str(failed.value)
    assert message.startswith("no replica was asked: the read needs 2 of the key's replicas and "
                              "only 1 of 3 may serve reads"), message
    assert "n3 joining" in message and "n4 joining" in message
    assert sum(len(r.ops) for r in cluster.replicas.values()) == 0
