"""Benchmark suite plumbing: CPU sampling, cluster facts, a tiny end-to-end report."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ringkv.bench.suite import _find_storage_sync, main, tree_cpu_seconds
from ringkv.local import system_tools


def test_tree_cpu_counts_descendants() -> None:
    # A child that burns CPU until its parent stops it: its time must show in the tree.
    child = subprocess.Popen(
        [sys.executable, "-c", "import time\nt=time.process_time()\n"
         "while time.process_time()-t<0.3: pass\nprint('done', flush=True)\ninput()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"done"
        assert tree_cpu_seconds([child.pid]) >= 0.25
        assert tree_cpu_seconds([os.getpid()]) >= tree_cpu_seconds([child.pid])
    finally:
        child.kill()
        child.wait()
    assert tree_cpu_seconds([child.pid]) == 0.0  # gone: nothing to charge


def test_storage_synchronous_found_top_level_or_per_node() -> None:
    assert _find_storage_sync({"storage": {"engine": "sqlite", "synchronous": "FULL"}}) == "FULL"
    nested = {"members": [{"name": "n0"}, {"name": "n1", "storage": {"synchronous": "NORMAL"}}]}
    assert _find_storage_sync(nested) == "NORMAL"
    assert _find_storage_sync({"members": []}) is None


def test_suite_against_the_dict_server_writes_a_report(tmp_path: Path) -> None:
    argv = [
        "--systems", "dict,dictfast", "--workloads", "write,read", "-d", "0.5", "--warmup", "0",
        "-c", "4", "--keyspace", "50", "--out-dir", str(tmp_path), "--work-dir", str(tmp_path),
        "--name", "run-a",
    ]
    assert main(argv) == 0
    (md,) = tmp_path.glob("*.md")
    assert md.name == "run-a.md"  # --name keeps several runs of one day apart
    text = md.read_text()
    assert "| ceiling (dict server) | write |" in text
    assert "| ceiling (dict server) | read |" in text
    assert "| ceiling on ringkv's HTTP path | read |" in text
    assert "synchronous=NORMAL" in text
    raw = json.loads(md.with_suffix(".json").read_text())
    assert [(r["system"], r["config"]["workload"]) for r in raw] == [
        ("dict", "write"), ("dict", "read"), ("dictfast", "write"), ("dictfast", "read")]
    assert all(r["ops"] > 0 and r["error_count"] == 0 for r in raw)
    has_plot = importlib.util.find_spec("matplotlib") is not None
    assert md.with_suffix(".png").exists() == has_plot
    # Its temporary work directory is gone; only the report files remain.
    assert sorted(p.suffix for p in tmp_path.iterdir()) == sorted(
        [".md", ".json", *([".png"] if has_plot else [])]
    )


@pytest.mark.skipif(system_tools.find("etcd") is None,
                    reason="etcd not installed (Debian etcd-server; `make tools` installs it as root)")
def test_suite_sets_uncontended_cas_beside_plain_writes(tmp_path: Path) -> None:
    argv = [
        "--systems", "ringkv,etcd,dict", "--workloads", "write,cas", "-d", "1", "--warmup", "0.2",
        "-c", "4", "--keyspace", "40", "--out-dir", str(tmp_path), "--work-dir", str(tmp_path),
        "--name", "cas",
    ]
    assert main(argv) == 0  # a refused compare-and-set fails the run
    raw = json.loads((tmp_path / "cas.json").read_text())
    assert [(r["system"], r["config"]["workload"]) for r in raw] == [
        ("ringkv", "write"), ("ringkv", "cas"), ("etcd", "write"), ("etcd", "cas"),
        ("dict", "write")]  # the dict server has no compare-and-set
    for row in raw:
        assert row["ops"] > 0, row
        # Each connection writes only keys it owns: any 412 (etcd: a Txn that did not
        # succeed) is a compare-and-set refused without cause, i.e. a bug.
        assert row["errors"] == {}, row
    assert [sorted(r["by_op"]) for r in raw if r["config"]["workload"] == "cas"] == [["cas"]] * 2
    text = (tmp_path / "cas.md").read_text()
    assert "| ringkv | cas |" in text
    assert "| etcd | cas |" in text
    assert "## Compare-and-set against plain writes (same run)" in text
    assert "Issue 13's targets: ringkv's CAS at >= 0.33x of its plain quorum writes: **" in text
    protocol = text.split("protocol: **", 1)[1].split("**", 1)[0]
    assert protocol in ("Paxos round per key", "quorum read, then a plain write (before Paxos)")
