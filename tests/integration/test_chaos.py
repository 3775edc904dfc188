"""Lose a node, lose nothing: SIGKILL nodes one at a time under continuous load, check the
recorded history (no stale read, no lost or reordered acknowledged write), and after
every settle check that every key has exactly rf copies."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
from harness import API_TOKEN, LocalCluster, http, wait_for

from ringkv.client.history import Op, check
from ringkv.local.workloads import Workload, final_reads, run_worker


def exact_copies(cluster: LocalCluster, keys: list[str], copies: int, members: int) -> None:
    """Each key: `copies` target replicas, all holding one live version; and cluster-wide
    exactly copies x keys records (no excess copies left behind)."""
    def ok() -> bool:
        info = cluster.cluster_info()
        if not info["settled"] or len(info["members"]) != members:
            return False
        for key in keys:
            reps = http("GET", f"{cluster.urls()[0]}/v1/replicas/{key}").json()["replicas"]
            target = [r for r in reps if r["in_target"]]
            if len(target) != copies or not all(r["status"] == "ok" for r in target):
                return False
        return sum(m["records"] for m in info["members"]) == copies * len(keys)

    wait_for(ok, 90, f"{copies} copies of every key")


@pytest.mark.parametrize("down_grace", [0.0, None], ids=["replaced", "within-grace"])
def test_sigkill_one_at_a_time_under_load(tmp_path: Path, down_grace: float | None) -> None:
    """Replaced: a killed node is dropped at once, its copies restored, and it rejoins.
    Within the grace period (the default): it is restarted and nothing moves."""
    rounds = 3
    cluster = LocalCluster(tmp_path, nodes=5, rf=3, restart_delay=1.0,
                           down_grace=down_grace).start()
    keys = [f"chaos/{i}" for i in range(12)]
    ops: list[Op] = []
    work = Workload(urls=[cluster.url(i) for i in range(5)], token=API_TOKEN, timeout=5.0,
                    keys=keys, read_ratio=0.5, consistency="quorum", seed=7, t0=time.monotonic())
    workers = [threading.Thread(target=run_worker, args=(work, p, ops)) for p in range(6)]
    rng = random.Random(11)
    try:
        for t in workers:
            t.start()
        wait_for(lambda: sum(o.kind == "write" and o.outcome == "ok" for o in ops) >= 50, 60,
                 "the workload to get going")
        epoch = cluster.cluster_info()["epoch"]
        for _ in range(rounds):
            victim = f"node-{rng.randrange(5)}"
            old_pid = cluster.control.node(victim)["pid"]
            cluster.control.kill(victim)
            if down_grace == 0:
                # Removed, re-replicated, restarted on its data, rejoined, caught up, settled.
                info = cluster.wait_settled(5, epoch + 2)
                epoch = info["epoch"]
            else:
                # Restarted on its data and serving again; the membership never changed.
                wait_for(lambda v=victim, p=old_pid: cluster.control.node(v)["pid"] != p, 60,
                         f"{victim} restarted")
                cluster.wait_ready_url(cluster.url(int(victim[-1])))
                assert cluster.wait_settled(5)["epoch"] == epoch
            exact_copies(cluster, keys, 3, 5)
            acked = sum(o.kind == "write" and o.outcome == "ok" for o in ops)
            wait_for(lambda acked=acked: sum(o.kind == "write" and o.outcome == "ok" for o in ops)
                     > acked + 20, 60, "writes to go on after the node returned")
    except BaseException:
        cluster.stop()  # every process a test starts is stopped, also when it fails here
        raise
    finally:
        work.stop.set()
        for t in workers:
            t.join(60)
    try:
        finals = final_reads(work, 60)
        verdict = check(ops, finals)
        assert verdict.valid, verdict.summary()
        ok_writes = sum(o.kind == "write" and o.outcome == "ok" for o in ops)
        ok_reads = sum(o.kind == "read" and o.outcome == "ok" for o in ops)
        assert ok_writes > 100 and ok_reads > 100, verdict.summary()
        exact_copies(cluster, keys, 3, 5)
    finally:
        cluster.stop()
