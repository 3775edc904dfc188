"""The backup archive, its directory target and the backup tool's pure helpers, without a
node: what is written reads back, and every kind of damage is named by part."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.client.archive import (
    FORMAT_VERSION,
    ArchiveError,
    Manifest,
    PartInfo,
    PartWriter,
    read_part,
)
from ringkv.client.backup import BATCH_RECORDS, batches, page_limit, prune, retrying
from ringkv.client.errors import BadRequest, QuorumUnavailable, Unavailable
from ringkv.client.progress import Progress
from ringkv.client.targets import DirectoryTarget, locate

records_strategy = st.lists(
    st.tuples(st.binary(min_size=1, max_size=40), st.binary(max_size=300), st.text(max_size=20),
              st.integers(0, 2**40).map(lambda h: f"{h}.node-1"), st.booleans(),
              st.integers(0, 2**45)).map(list),
    max_size=300)


def write_part(records: list[list[Any]], part: int = 0) -> tuple[bytes, PartInfo]:
    out = io.BytesIO()
    writer = PartWriter(out, part)
    for start in range(0, len(records), 7):
        writer.write(records[start:start + 7])
    info = writer.close()
    return out.getvalue(), info


def read_all(data: bytes, info: PartInfo) -> list[list[Any]]:
    return [rec for batch in read_part(io.BytesIO(data), info, batch=50) for rec in batch]


@settings(max_examples=40, deadline=None)
@given(records_strategy)
def test_a_part_reads_back_what_was_written(records: list[list[Any]]) -> None:
    data, info = write_part(records, 3)
    assert (info.file, info.records, info.size) == ("part-00003.rkv", len(records), len(data))
    assert info.tombstones == sum(1 for r in records if r[4])
    assert read_all(data, info) == records


def test_damage_is_named_by_part() -> None:
    records = [[b"k%d" % i, b"v" * (i % 50), "text/plain", f"{i}.n", i % 7 == 0, 0]
               for i in range(2000)]
    data, info = write_part(records, 7)

    def refused(damaged: bytes, manifest: PartInfo = info) -> str:
        with pytest.raises(ArchiveError) as caught:
            read_all(damaged, manifest)
        assert str(caught.value).startswith("part-00007.rkv: ")
        return str(caught.value)

    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 1
    assert "corrupt" in refused(bytes(flipped))
    assert "truncated" in refused(data[: len(data) // 3])
    assert "truncated" in refused(data[:-1])
    assert "longer" in refused(data + b"\0")
    assert "checksum" in refused(data, PartInfo(info.file, 7, info.records, info.tombstones,
                                                 info.size, "0" * 64))
    assert "holds 2000 records" in refused(data, PartInfo(info.file, 7, 1999, 0, info.size,
                                                          info.sha256))


def test_a_malformed_record_is_refused() -> None:
    data, info = write_part([[b"k", b"v", "t", "1.n", "not a bool", 0]])
    with pytest.raises(ArchiveError, match=r"corrupt \(record 0 is malformed\)"):
        read_all(data, info)


def manifest(parts: int = 2) -> Manifest:
    infos = [write_part([[b"k%d" % p, b"v", "t", "1.n", False, 0]], p)[1] for p in range(parts)]
    return Manifest("ringkv", 4, "2026-01-01T03:00:00.000Z", "2026-01-01T03:00:01.000Z", infos,
                    "ringkv test")


def test_the_manifest_round_trips_and_is_checked() -> None:
    m = manifest()
    assert Manifest.from_json(m.to_json()) == m
    doc = json.loads(m.to_json())
    assert (doc["format"], doc["format_version"], doc["records"]) == ("ringkv-backup", FORMAT_VERSION, 2)

    def refused(change: dict[str, Any], said: str) -> None:
        with pytest.raises(ArchiveError, match=said):
            Manifest.from_json(json.dumps({**doc, **change}).encode())

    refused({"format_version": FORMAT_VERSION + 1}, "format version 2; this ringkv reads version 1")
    refused({"format": "tarball"}, "does not describe a ringkv backup")
    refused({"records": 3}, "totals do not add up")
    refused({"parts": doc["parts"][1:], "records": 1, "size": doc["parts"][1]["size"]}, "not numbered")
    refused({"epoch": "four"}, "malformed")
    with pytest.raises(ArchiveError, match="not JSON"):
        Manifest.from_json(b"{")
    # A field this version does not know is ignored: later versions may add some.
    assert Manifest.from_json(json.dumps({**doc, "added_later": 1}).encode()) == m


def test_directory_target_marks_complete_backups_by_their_manifest(tmp_path: Path) -> None:
    target = DirectoryTarget(str(tmp_path))
    name = "ringkv-20260101T030000.000Z"
    with target.create(name, "part-00000.rkv") as fh:
        fh.write(b"data")
    assert target.backups() == {name: False}
    with pytest.raises(ArchiveError, match="never completed"):
        locate(str(tmp_path / (name + ".partial")), latest=False)
    with pytest.raises(ArchiveError, match="no complete backup"):
        locate(str(tmp_path), latest=True)
    where = target.commit(name, manifest().to_json())
    assert where == str(tmp_path / name) and target.backups() == {name: True}
    with target.open(name, "part-00000.rkv") as fh:
        assert fh.read() == b"data"
    assert locate(str(tmp_path / name), latest=False)[1] == name
    with pytest.raises(ArchiveError, match="pass --latest"):
        locate(str(tmp_path), latest=False)
    target.delete(name)
    assert target.backups() == {} and list(tmp_path.iterdir()) == []


def test_prune_keeps_the_newest_of_this_cluster_only(tmp_path: Path) -> None:
    target = DirectoryTarget(str(tmp_path))

    def make(name: str, complete: bool = True) -> None:
        with target.create(name, "part-00000.rkv"):
            pass
        if complete:
            target.commit(name, b"{}")

    times = [f"2026010{d}T030000.000Z" for d in range(1, 6)]
    for t in times:
        make(f"ringkv-{t}")
    make("other-cluster-20260101T030000.000Z")
    make("ringkv-20260102T120000.000Z", complete=False)  # a run that was killed
    make("ringkv-20260106T030000.000Z", complete=False)  # one running now, newer
    deleted = prune(target, "ringkv", 2, f"ringkv-{times[-1]}")
    assert deleted == [f"ringkv-{t}" for t in times[:3]] + ["ringkv-20260102T120000.000Z"]
    assert target.backups() == {f"ringkv-{times[3]}": True, f"ringkv-{times[4]}": True,
                                "other-cluster-20260101T030000.000Z": True,
                                "ringkv-20260106T030000.000Z": False}
    assert locate(str(tmp_path), latest=True)[1] == "ringkv-20260105T030000.000Z"


def test_import_batches_bound_records_and_bytes() -> None:
    small = [[b"k%d" % i, b"v", "t", "1.n", False, 0] for i in range(2500)]
    assert [len(b) for b in batches([small[:1200], small[1200:]])] == [BATCH_RECORDS, BATCH_RECORDS, 500]
    big = [[b"k%d" % i, b"v" * 700_000, "t", "1.n", False, 0] for i in range(3)]
    assert [len(b) for b in batches([big])] == [1, 1, 1]  # each alone: none fits beside another
    assert page_limit([]) == 1000 and page_limit(big) == 5 and page_limit(small) == 1000


def test_retrying_asks_again_only_while_the_cluster_is_unavailable() -> None:
    answers: list[Exception | str] = [Unavailable("down"), QuorumUnavailable("q", "1 of 2"), "ok"]

    async def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert asyncio.run(retrying(call, wait=30)) == "ok"
    answers[:] = [BadRequest("bad_request", "no"), "never"]
    with pytest.raises(BadRequest):
        asyncio.run(retrying(call, wait=30))
    answers[:] = [Unavailable("down")] * 10
    with pytest.raises(Unavailable):
        asyncio.run(retrying(call, wait=0))


def test_progress_is_a_bar_on_a_terminal_and_json_lines_otherwise() -> None:
    now = [0.0]
    log = io.StringIO()
    shown = Progress("backup", log, tty=False, clock=lambda: now[0])
    shown.update(0.25, 10, 1000)
    shown.update(0.5, 20, 2000)  # within the interval: not shown
    now[0] = 10.0
    shown.finish(40, 4000)
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [(x["event"], x["done"], x["records"]) for x in lines] == [
        ("progress", 0.25, 10), ("done", 1.0, 40)]
    screen = io.StringIO()
    bar = Progress("restore", screen, tty=True, clock=lambda: now[0])
    now[0] = 12.0
    bar.update(0.5, 20, 2_000_000)
    assert screen.getvalue().startswith("\rrestore [###############...............]  50.0%")
    assert "1.0 MB/s  ETA 2s" in screen.getvalue()
