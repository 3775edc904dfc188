"""Scale benchmark plumbing: a tiny re-replication run end to end, and window selection.

No timing assertions: the numbers depend on the machine; the smoke run checks that the
report has its parts, that a node loss re-replicated something, and that nothing the run
started outlives it.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness import processes_mentioning

from ringkv.bench.loadgen import LoadConfig, LoadResult
from ringkv.bench.scale import Slice, _phase, main


def test_rereplication_smoke_writes_a_report(tmp_path: Path) -> None:
    # 3 nodes at rf=2: losing one leaves 2 = rf, so the lost node's ranges need new copies.
    # Consistency `one` keeps the client load answering while a base replica is gone.
    out = tmp_path / "out"
    argv = [
        "--scenarios", "rereplication,rss", "--nodes", "3", "--rf", "2", "--keys", "2000",
        "--consistency", "one", "--load-connections", "16", "--connections", "8",
        "--warmup", "0.3", "--baseline", "1.5", "--tail", "0.5", "--slice", "0.5",
        "--out-dir", str(out), "--work-dir", str(tmp_path), "--name", "smoke",
    ]
    assert main(argv) == 0
    text = (out / "smoke.md").read_text()
    for heading in ("## Re-replication after a node loss", "## Node memory and disk",
                    "## Versions"):
        assert heading in text
    report = json.loads((out / "smoke.json").read_text())
    assert report["notes"] == []
    r = report["scenarios"]["rereplication"]
    assert r["transferred"]["keys"] > 0 and r["transferred"]["bytes"] > 0
    assert r["victim_records"] > 0 and r["ideal"]["keys"] == r["victim_records"]
    assert r["epochs"]["settled"] > r["epochs"]["before"]
    for phase in ("baseline", "during", "after"):
        assert r["client"][phase]["ops"] > 0
        assert set(r["client"][phase]["latency_ms"]) >= {"p50", "p99", "p999"}
    assert r["replicas_after"]["expected_per_key"] == 2
    rss = report["scenarios"]["rss"]
    assert sorted(rss["nodes"]) == ["node-0", "node-1", "node-2"]
    assert all(n["records"] > 0 and n["rss_after_mb"] > 0 for n in rss["nodes"].values())
    # Every process the run started is gone, and so is its work directory.
    assert processes_mentioning(str(tmp_path)) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _slice(t0: float, t1: float, ops: int) -> Slice:
    result = LoadResult(
        config=LoadConfig(urls=["http://127.0.0.1:1"]), window_s=t1 - t0, ops=ops,
        ops_per_s=ops / (t1 - t0), errors={}, latency_us={}, by_op={}, loadgen_cpu_s=0.0,
        loadgen_cpu_user_s=0.0, loadgen_cpu_sys_s=0.0,
    )
    return Slice(t0, t1, result, server_cpu_s=0.5)


def test_phase_picks_windows_by_overlap() -> None:
    slices = [_slice(0, 1, 100), _slice(1, 2, 200), _slice(2, 3, 300), _slice(3, 4, 400)]
    # Whole windows only: [0.5, 3.2) holds the 2nd and 3rd.
    assert _phase(slices, 0.5, 3.2, whole=True)["ops"] == 500
    # At least half inside: the 1st (half) and the 4th (a fifth) differ.
    assert _phase(slices, 0.5, 3.2, whole=False)["ops"] == 600
    # Shorter than half a window: the most overlapping one stands in.
    picked = _phase(slices, 2.1, 2.3, whole=False)
    assert (picked["windows"], picked["ops"], picked["ops_per_s"]) == (1, 300, 300.0)
    assert _phase(slices, 5, 6, whole=False)["windows"] == 0


def test_throughput_smoke_writes_a_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [
        "--scenarios", "throughput", "--throughput-nodes", "3", "--throughput-duration", "0.5",
        "--throughput-keyspace", "200", "--throughput-connections", "8",
        "--out-dir", str(out), "--work-dir", str(tmp_path), "--name", "tp",
    ]
    assert main(argv) == 0
    report = json.loads((out / "tp.json").read_text())
    assert report["notes"] == []
    rows = report["scenarios"]["throughput"]
    assert [(r["nodes"], r["workload"]) for r in rows] == [(3, "write"), (3, "read")]
    assert all(r["ops_per_s"] > 0 and r["errors"] == {} for r in rows)
    assert "## Throughput" in (out / "tp.md").read_text()
    assert processes_mentioning(str(tmp_path)) == []


def test_backup_smoke_writes_a_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [
        "--scenarios", "backup", "--nodes", "3", "--rf", "3", "--keys", "2000",
        "--load-connections", "16", "--connections", "8", "--warmup", "0.3", "--baseline", "1.5",
        "--tail", "0.5", "--slice", "0.5", "--backup-parallel", "2",
        "--out-dir", str(out), "--work-dir", str(tmp_path), "--name", "bk",
    ]
    assert main(argv) == 0
    report = json.loads((out / "bk.json").read_text())
    assert report["notes"] == []
    r = report["scenarios"]["backup"]
    assert r["backup"]["records"] == r["restore"]["records"] == 2000
    assert r["backup"]["mb_per_s"] > 0 and r["restore"]["keys_per_s"] > 0
    assert r["client"]["baseline"]["ops"] > 0 and r["client"]["during"]["ops"] > 0
    assert "## Backup and restore" in (out / "bk.md").read_text()
    assert processes_mentioning(str(tmp_path)) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
