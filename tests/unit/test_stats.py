"""The node's recent rates (`ringkv.node.stats`): quantiles from latency histograms, rates
between snapshots, the wall-clock grid, and the membership history's file."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from ringkv.node.changelog import ChangeLog
from ringkv.node.membership import Document, Member
from ringkv.node.metrics import LATENCY_BUCKETS, RequestStats
from ringkv.node.ring import MAX_TOKEN, Ring, diff, layout, moving
from ringkv.node.stats import Handoff, Series, Snapshot, next_tick, quantile, rates


def buckets(**at: int) -> list[int]:
    """Counts per latency bucket, given as {bound_in_ms: count}; 'inf' for the last."""
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    for bound, n in at.items():
        index = len(LATENCY_BUCKETS) if bound == "inf" else LATENCY_BUCKETS.index(int(bound[1:]) / 1000)
        counts[index] = n
    return counts


def test_quantile_interpolates_inside_the_bucket_as_prometheus_does() -> None:
    # 100 requests between 10 and 20 ms: p50 half-way, p99 near the top.
    counts = buckets(b20=100)
    assert quantile(0.5, counts) == pytest.approx(0.015)
    assert quantile(0.99, counts) == pytest.approx(0.0199)
    # 99 fast requests and one slow: the p99 is still in the fast bucket, the max is not.
    mixed = buckets(b1=99, b1000=1)
    assert quantile(0.99, mixed) <= 0.001
    assert quantile(1.0, mixed) == pytest.approx(1.0)


def test_quantile_of_nothing_is_none_and_of_inf_the_top_bound() -> None:
    assert quantile(0.99, buckets()) is None
    assert quantile(0.99, buckets(inf=5)) == LATENCY_BUCKETS[-1]


def stats_with(requests: list[tuple[str, str, int, float]]) -> RequestStats:
    stats = RequestStats()
    for route, method, status, seconds in requests:
        stats.observe(route, method, status, seconds)
    return stats


def test_rates_split_reads_writes_and_errors_per_second() -> None:
    stats = RequestStats()
    first = Snapshot.take(10_000, stats, Handoff())
    for _ in range(40):
        stats.observe("/v1/kv/{key}", "GET", 200, 0.002)
    for _ in range(10):
        stats.observe("/v1/kv/{key}", "PUT", 200, 0.004)
    stats.observe("/v1/kv", "GET", 200, 0.001)  # a list is a read
    stats.observe("/v1/cluster", "GET", 200, 0.3)  # not client traffic
    stats.observe("/v1/kv/{key}", "PUT", 503, 0.5)
    stats.error("quorum_unavailable")
    second = Snapshot.take(12_000, stats, Handoff(7, 3, 900, 2_000_000))
    sample = rates(first, second)
    assert sample["t"] == 12_000
    assert sample["reads"] == pytest.approx(41 / 2)
    assert sample["writes"] == pytest.approx(11 / 2)
    assert sample["errors"] == {"quorum_unavailable": 0.5}
    assert 1 < sample["read_p99_ms"] <= 2
    assert 250 < sample["write_p99_ms"] <= 500  # the slow failed PUT is the 99th percentile
    # Handoff counters of a new pull count from zero.
    assert sample["handoff_bytes_per_s"] == 1_000_000
    assert sample["handoff_ranges_per_s"] == 1.5


def test_handoff_rates_within_one_pull_and_across_a_new_one() -> None:
    stats = RequestStats()
    a = Snapshot.take(0, stats, Handoff(5, 2, 100, 1000))
    b = Snapshot.take(2000, stats, Handoff(5, 6, 300, 5000))
    assert rates(a, b)["handoff_keys_per_s"] == 100
    c = Snapshot.take(4000, stats, Handoff(6, 1, 50, 400))  # the next epoch's pull
    assert rates(b, c)["handoff_keys_per_s"] == 25
    assert rates(b, c)["reads"] == 0 and rates(b, c)["read_p99_ms"] is None


def test_series_keeps_the_newest_samples_and_answers_since() -> None:
    stats = RequestStats()
    series = Series(keep=3)
    for t in range(0, 12_000, 2000):
        series.add(Snapshot.take(t, stats, Handoff()))
    assert [s["t"] for s in series.since()] == [6000, 8000, 10_000]
    assert [s["t"] for s in series.since(8000)] == [10_000]
    series.add(Snapshot.take(10_000, stats, Handoff()))  # not later: no sample
    assert len(series.since(8000)) == 1


def test_next_tick_is_on_the_grid() -> None:
    assert next_tick(10_000) == 12_000
    assert next_tick(10_001) == 12_000
    assert next_tick(11_999) == 12_000


def doc(epoch: int, names: list[str], settled: bool = True, joining: tuple[str, ...] = (),
        base: tuple[str, ...] = ()) -> Document:
    members = tuple(Member(n, f"127.0.0.1:{9000 + i}", f"http://127.0.0.1:{8000 + i}",
                           "joining" if n in joining else "normal") for i, n in enumerate(names))
    return Document(epoch, 3, members, settled, base)


def test_changelog_records_describe_and_survives_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "history.jsonl")
    log = ChangeLog(path)
    three = ["a", "b", "c"]
    log.record(None, doc(1, three), 1000)
    log.record(doc(1, three), doc(2, ["a", "b"], settled=False, base=tuple(three)), 2000)
    assert [e["change"] for e in log.to_json()] == [
        "epoch 1: cluster formed with a, b, c (rf=3)", "epoch 2: c removed"]
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"epoch": 3, "time_ms": 30')  # a crash mid-append
    again = ChangeLog(path)
    assert [e["epoch"] for e in again.to_json()] == [1, 2]
    assert again.to_json()[1] == {"epoch": 2, "time_ms": 2000, "change": "epoch 2: c removed",
                                  "settled": False, "members": 2}


def test_changelog_first_document_of_a_node_joining_later(tmp_path: Path) -> None:
    log = ChangeLog(str(tmp_path / "h.jsonl"))
    log.record(None, doc(9, ["a", "b", "d"], settled=False, joining=("d",)), 5)
    assert log.to_json()[0]["change"] == "epoch 9: first document here (a, b, d, rf=3)"


def test_changelog_file_is_compacted_to_what_it_keeps(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    log = ChangeLog(str(path), keep=5)
    for epoch in range(1, 30):
        log.record(None if epoch == 1 else doc(epoch - 1, ["a"]), doc(epoch, ["a"]), epoch)
    lines = path.read_text().splitlines()
    assert len(lines) <= 10
    assert [json.loads(line)["epoch"] for line in lines][-5:] == [25, 26, 27, 28, 29]
    assert [e["epoch"] for e in ChangeLog(str(path), keep=5).to_json()] == [25, 26, 27, 28, 29]


def test_ring_layout_covers_the_token_space_in_order() -> None:
    ring = Ring(["a", "b", "c", "d"], 3, vnodes=16)
    segments = layout(ring)["segments"]
    assert segments[0]["start"] == 0 and segments[-1]["end"] == 1
    for before, after in itertools.pairwise(segments):
        assert before["end"] == after["start"]
        assert len(after["replicas"]) == 3
    assert layout(ring)["members"] == ["a", "b", "c", "d"]


def test_moving_is_the_ring_diff_as_fractions() -> None:
    base, target = Ring(["a", "b", "c", "d"], 3, 16), Ring(["a", "b", "c"], 3, 16)
    changes = diff(base, target)
    out = moving(changes)
    assert len(out) == len(changes)
    total = sum(c.range.width for c in changes) / (MAX_TOKEN + 1)
    assert sum(m["end"] - m["start"] for m in out) == pytest.approx(total, abs=1e-5)
    assert all("d" in m["old"] and "d" not in m["new"] for m in out)
