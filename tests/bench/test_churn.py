"""The churn scenario: a tiny run end to end, and the pure parts of its measurements.

No timing assertions: the smoke run checks that the report has its parts and the checker's
verdict, and that nothing the run started outlives it.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness import processes_mentioning

from ringkv.bench.churn import chained, cost, pulled
from ringkv.bench.churnclient import Keyspace, check_history
from ringkv.bench.scale import main
from ringkv.client.history import Op

KS = Keyspace(keys=10, key_size=4, bulk_value="bulk")


def write(key: str, value: str, version: str, t: float) -> Op:
    return Op(0, "write", key, value, version, t, t + 0.1, "ok")


def read(key: str, value: str | None, version: str | None, t: float, final: bool = False) -> Op:
    return Op(1, "read", key, value, version, t, t + 0.1, "ok", final)


def test_reads_of_the_bulk_value_are_valid_until_a_newer_write_is_acknowledged() -> None:
    ops = [read("k001", "bulk", "100.node-0", 0.0), write("k001", "v1", "200.node-1", 1.0),
           read("k001", "v1", "200.node-1", 2.0)]
    assert check_history(KS, ops, [read("k001", "v1", "200.node-1", 3.0)]).valid
    stale = check_history(KS, [*ops, read("k001", "bulk", "100.node-0", 4.0)], [])
    assert stale.by_kind == {"stale-read": 1}


def test_a_loaded_key_not_found_is_a_stale_read_or_a_lost_write() -> None:
    verdict = check_history(KS, [read("k002", None, None, 0.0)],
                            [read("k003", None, None, 1.0, final=True)])
    assert verdict.by_kind == {"stale-read": 1, "lost-write": 1}
    # A client write acknowledged, then a final read without it: one lost write, not two.
    lost = check_history(KS, [write("k004", "v", "300.node-0", 0.0)],
                         [read("k004", None, None, 1.0, final=True)])
    assert lost.by_kind == {"lost-write": 1}


def test_pulled_counts_a_restarted_node_from_zero_and_hints_go_to_the_returning() -> None:
    before = {"node-0": (10, {"ringkv_rebalance_keys_received_total": 50.0,
                              "ringkv_hints_replayed_total": 5.0}),
              "node-1": (11, {"ringkv_anti_entropy_records_total": 7.0})}
    after = {"node-0": (10, {"ringkv_rebalance_keys_received_total": 80.0,
                             "ringkv_hints_replayed_total": 6.0,
                             "ringkv_rebalance_bytes_received_total": 1000.0}),
             "node-1": (12, {"ringkv_anti_entropy_records_total": 3.0})}
    rows = pulled(before, after)
    assert rows["node-0"] == {"catch_up": 30, "catch_up_bytes": 1000, "anti_entropy": 0,
                              "hints": 1}
    assert rows["node-1"] == {"catch_up": 0, "catch_up_bytes": 0, "anti_entropy": 3, "hints": 0}
    assert cost(rows, record_bytes=100) == {"catch_up": 30, "anti_entropy": 3, "hints": 1,
                                            "records": 34, "bytes": 1000 + 400}
    # node-1 was away: its own anti-entropy and node-0's hint.
    assert cost(rows, 100, ["node-1"]) == {"catch_up": 0, "anti_entropy": 3, "hints": 1,
                                           "records": 4, "bytes": 400}


def test_chained_snapshots_keep_what_a_node_counted_before_its_restart() -> None:
    hints = "ringkv_hints_replayed_total"
    marks = [{"node-0": (10, {hints: 0.0})},
             {"node-0": (10, {hints: 40.0})},  # just before node-0 is restarted
             {"node-0": (11, {hints: 5.0})}]  # its new process replayed 5 more
    assert chained(marks)["node-0"]["hints"] == 45
    assert pulled(marks[0], marks[2])["node-0"]["hints"] == 5  # what one pair would see


def test_churn_smoke_writes_a_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cases = ["outage", "kill-all", "add-two", "remove-one"]
    argv = [
        "--scenarios", "churn", "--nodes", "4", "--rf", "3", "--churn-keys", "300",
        "--churn-cases", ",".join(cases), "--churn-outage", "0.5", "--churn-baseline", "0.3",
        "--churn-tail", "0.3", "--churn-rate", "40", "--churn-remove", "node-1",
        "--churn-settle-timeout", "120", "--churn-count-for", "0", "--load-connections", "8",
        "--out-dir", str(out), "--work-dir", str(tmp_path), "--name", "churn",
    ]
    assert main(argv) == 0
    text = (out / "churn.md").read_text()
    for part in ("## Churn (4 nodes, rf=3, 300 keys)", "Issue 12's targets:", "After the last case"):
        assert part in text
    report = json.loads((out / "churn.json").read_text())
    assert report["notes"] == []
    r = report["scenarios"]["churn"]
    assert list(r["cases"]) == cases
    for name, case in r["cases"].items():
        assert "error" not in case, name
        assert case["verdict"]["valid"] is True, (name, case["verdict"])
        assert case["verdict"]["acknowledged_writes"] > 0
        assert case["client"]["ops"] > 0
        assert case["pulled"]["records"] >= sum(s["pulled"]["records"] for s in case["steps"])
        assert case["targets"] and all("met" in t for t in case["targets"])
        for step in case["steps"]:
            assert set(step["pulled"]) == {"catch_up", "anti_entropy", "hints", "records", "bytes"}
            assert step["ideal"] >= 0
            assert step["settled_after_fault_s"] is not None
    assert set(r["cases"]["kill-all"]["reads_back"]) >= {"first_ok_read_s", "last_failed_read_s"}
    assert r["cases"]["add-two"]["steps"][0]["nodes"] == ["node-4", "node-5"]
    assert r["cases"]["add-two"]["steps"][0]["pulled"]["records"] > 0
    assert r["end"]["bulk_lost"] == 0 and r["end"]["client_lost_writes"] == 0
    assert r["end"]["bulk_answers"] == {"200": 300}
    # Every process the run started is gone, and so is its work directory.
    assert processes_mentioning(str(tmp_path)) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
