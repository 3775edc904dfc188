"""The test harness itself: what it starts, it stops, even when starting fails."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from harness import StaticCluster


def test_a_static_cluster_that_cannot_start_stops_the_nodes_it_started(tmp_path: Path) -> None:
    # `cluster = StaticCluster(...).start()` sits before the test's try/finally, so a start
    # that fails must not leave the other nodes running (two once outlived a loaded run).
    cluster = StaticCluster(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", cluster.nodes[0].port))  # node-0 cannot listen: it exits
        taken.listen()
        with pytest.raises(AssertionError, match="node-0"):
            cluster.start()
    assert [node.alive for node in cluster.nodes] == [False] * len(cluster.nodes)
