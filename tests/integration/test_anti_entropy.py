"""A replica that missed writes, and whose hints are lost, converges with no client reads."""

from __future__ import annotations

from pathlib import Path

from harness import StaticCluster, http, wait_for


def test_anti_entropy_converges_without_reads(tmp_path: Path) -> None:
    cluster = StaticCluster(tmp_path, extra_env={
        "RINGKV_HINT_TTL": "0",  # every hint expires before a replay round could send it
        "RINGKV_ANTI_ENTROPY_INTERVAL": "0.5",
    })
    cluster.start()
    try:
        down = cluster.nodes[1]
        down.kill()
        versions = {}
        for i in range(80):
            r = http("PUT", f"{cluster.url(0)}/v1/kv/ae-{i}", f"v{i}".encode())
            assert r.status == 200
            versions[f"ae-{i}"] = r.json()["version"]
        # node-0's hints for node-1 expire unsent: as if they were lost.
        down.start()
        cluster.wait_ready(down)

        def converged() -> bool:
            for key, version in versions.items():
                reps = http("GET", f"{cluster.url(2)}/v1/replicas/{key}").json()["replicas"]
                if next(r for r in reps if r["node"] == down.name).get("version") != version:
                    return False
            return True

        wait_for(converged, 90, "anti-entropy to bring node-1 up to date")
        metrics = http("GET", down.url + "/metrics", token=None).body.decode()
        merged = [line for line in metrics.splitlines()
                  if line.startswith("ringkv_anti_entropy_records_total")]
        assert merged and float(merged[0].split()[-1]) >= len(versions)
    finally:
        cluster.stop()
