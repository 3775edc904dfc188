"""`ringkv backup` and `ringkv restore`: the whole cluster into one archive and back, through
the public API only.

A backup reads the token space in `--parts` equal parts, `--parallel` at a time, each page
from a read quorum of the replicas (GET /v1/backup/export), and writes each part as it
comes (archive.py). Every write acknowledged before the backup began is in it: each page
is read after that moment from R replicas, as a quorum read would be. Pages are paced by
the nodes like handoff, so clients keep most of the cluster. The manifest is written last;
a backup that fails is deleted, so nothing that looks complete is left behind.

A restore reads the manifest, then every part through (sizes, checksums, records) before
it writes anything, so a damaged archive is refused with the damaged part named. Then it
merges the records by version (POST /v1/backup/import): into a fresh cluster of any size
and rf, or a running one, where a newer write always stays; a restore repeated is a
restore done once.

Both retry what the cluster answers "unavailable" (a node down, a quorum missing while a
replica is being replaced) for up to `--wait` seconds, since repeating a page or a merge
changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from ringkv.client.archive import (
    MANIFEST,
    ArchiveError,
    Manifest,
    PartInfo,
    PartWriter,
    Record,
    part_file,
    read_part,
)
from ringkv.client.asyncclient import AsyncClient
from ringkv.client.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, describe, exit_code
from ringkv.client.errors import QuorumUnavailable, RingkvError, Unavailable
from ringkv.client.progress import Progress
from ringkv.client.targets import Target, backup_cluster, backup_time, locate, open_target
from ringkv.client.wire import DEFAULT_URL, parse_urls

T = TypeVar("T")

DEFAULT_PARTS = 64
DEFAULT_PARALLEL = 4
DEFAULT_WAIT = 120.0
DEFAULT_TIMEOUT = 60.0  # a page may wait its turn behind the nodes' handoff budget
PAGE_BYTES = 4 * 1024 * 1024  # aimed-at key+value bytes per export page
MAX_PAGE = 1000
BATCH_BYTES = 1024 * 1024  # key+value bytes per import request (a larger record goes alone)
BATCH_RECORDS = 1000


@dataclass
class Totals:
    records: int = 0
    bytes: int = 0  # keys and values

    def add(self, records: Sequence[Record]) -> None:
        self.records += len(records)
        self.bytes += sum(len(r[0]) + len(r[1]) for r in records)


def retryable(exc: RingkvError) -> bool:
    """What the cluster answers while it cannot serve for now: worth asking again."""
    return isinstance(exc, Unavailable | QuorumUnavailable) or exc.status == 503


async def retrying(call: Callable[[], Awaitable[T]], wait: float) -> T:
    """`call()`, asked again while the cluster answers "unavailable", for up to `wait` s."""
    deadline: float | None = None
    delay = 0.5
    while True:
        try:
            return await call()
        except RingkvError as exc:
            now = time.monotonic()
            deadline = now + wait if deadline is None else deadline
            if not retryable(exc) or now >= deadline:
                raise
            await asyncio.sleep(min(delay, deadline - now))
            delay = min(delay * 2, 5.0)


def page_limit(records: Sequence[Record]) -> int:
    """Records to ask for next, so that a page stays near PAGE_BYTES (large values)."""
    if not records:
        return MAX_PAGE
    size = sum(len(r[0]) + len(r[1]) for r in records) / len(records)
    return max(1, min(MAX_PAGE, int(PAGE_BYTES / max(size, 1))))


def batches(parts: Iterable[list[Record]]) -> Iterator[list[Record]]:
    """Records regrouped into import requests of at most BATCH_RECORDS and BATCH_BYTES."""
    batch: list[Record] = []
    size = 0
    for chunk in parts:
        for rec in chunk:
            n = len(rec[0]) + len(rec[1])
            if batch and (len(batch) >= BATCH_RECORDS or size + n > BATCH_BYTES):
                yield batch
                batch, size = [], 0
            batch.append(rec)
            size += n
    if batch:
        yield batch


def _iso(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def backup_name(cluster: str, started: dt.datetime) -> str:
    return f"{cluster}-{started:%Y%m%dT%H%M%S}.{started.microsecond // 1000:03d}Z"


def ringkv_version() -> str:
    try:
        return importlib.metadata.version("ringkv")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


Job = Callable[[AsyncClient], Awaitable[None]]


async def _run_all(jobs: Iterable[Job], clients: Sequence[AsyncClient]) -> None:
    """Run the jobs with one worker per client; the first failure cancels the rest and is
    raised."""
    pending = iter(list(jobs))

    async def worker(client: AsyncClient) -> None:
        for job in pending:  # shared: each job is taken by one worker
            await job(client)

    try:
        async with asyncio.TaskGroup() as group:
            for client in clients:
                group.create_task(worker(client))
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None


# -- backup ---------------------------------------------------------------------------------
async def backup(clients: Sequence[AsyncClient], target: Target, *, parts: int = DEFAULT_PARTS,
                 wait: float = DEFAULT_WAIT, retain: int | None = None,
                 progress: Callable[[str], Progress] = Progress) -> dict[str, Any]:
    """Back the cluster up into `target`; one worker per client (each starts at another
    node). Returns the summary printed by `ringkv backup`."""
    started = dt.datetime.now(dt.UTC)  # every write acknowledged before now is in the backup
    began = time.monotonic()
    info = await retrying(clients[0].cluster, wait)
    cluster, epoch = str(info.get("cluster", "ringkv")), info.get("epoch")
    epoch = epoch if isinstance(epoch, int) else 0
    name = backup_name(cluster, started)
    shown = progress("backup")
    totals = Totals()
    done = [0.0] * parts
    written: list[PartInfo | None] = [None] * parts

    def export(part: int) -> Job:
        async def run(client: AsyncClient) -> None:
            with target.create(name, part_file(part)) as fh:
                writer = PartWriter(fh, part)
                cursor: str | None = None
                limit: int | None = None
                while True:
                    page = await retrying(
                        partial(client.export_page, part, parts, cursor, limit), wait)
                    writer.write(page.records)
                    totals.add(page.records)
                    done[part] = page.done
                    shown.update(sum(done) / parts, totals.records, totals.bytes)
                    if page.cursor is None:
                        break
                    cursor, limit = page.cursor, page_limit(page.records)
                written[part] = writer.close()
        return run

    try:
        await _run_all((export(p) for p in range(parts)), clients)
        finished = dt.datetime.now(dt.UTC)
        manifest = Manifest(cluster, epoch, _iso(started), _iso(finished),
                            [p for p in written if p is not None], f"ringkv {ringkv_version()}")
        where = target.commit(name, manifest.to_json())
    except BaseException:
        target.delete(name)  # never leave a backup behind that could pass for complete
        raise
    shown.finish(totals.records, totals.bytes)
    seconds = time.monotonic() - began
    summary: dict[str, Any] = {
        "backup": where, "cluster": cluster, "epoch": epoch, "started": manifest.started,
        "records": manifest.records, "tombstones": manifest.tombstones, "bytes": totals.bytes,
        "size": manifest.size, "parts": parts, "seconds": round(seconds, 3),
        "records_per_s": round(manifest.records / seconds, 1),
        "mb_per_s": round(totals.bytes / seconds / 1e6, 3),
    }
    report = {"name": name, "started": started.timestamp(), "finished": finished.timestamp(),
              "records": manifest.records, "bytes": manifest.size}
    try:
        summary["reported_to"] = await retrying(lambda: clients[0].report_backup(report), wait)
    except RingkvError as exc:
        summary["reported_to"] = []
        print(f"ringkv backup: the backup is complete, but reporting it to the cluster failed "
              f"({_describe('backup', exc)}): the ringkv_backup_* metrics still show the previous one",
              file=sys.stderr)
    if retain is not None:
        summary["deleted"] = prune(target, cluster, retain, name)
    return summary


def prune(target: Target, cluster: str, keep: int, current: str) -> list[str]:
    """Delete this cluster's complete backups past the newest `keep`, and its unfinished
    ones older than `current` (left by runs that were killed). The names deleted."""
    mine = {n: complete for n, complete in target.backups().items() if backup_cluster(n) == cluster}
    complete = sorted((n for n, c in mine.items() if c), key=lambda n: backup_time(n) or "")
    now = backup_time(current) or ""
    doomed = complete[: max(0, len(complete) - keep)] + sorted(
        n for n, c in mine.items() if not c and (backup_time(n) or "") < now)
    for name in doomed:
        target.delete(name)
    return doomed


# -- restore --------------------------------------------------------------------------------
def read_manifest(target: Target, name: str) -> Manifest:
    try:
        with target.open(name, MANIFEST) as fh:
            return Manifest.from_json(fh.read())
    except FileNotFoundError:
        raise ArchiveError(f"{name}: no {MANIFEST}: not a complete backup") from None


def verify(target: Target, name: str, manifest: Manifest, progress: Progress) -> None:
    """Read every part through; ArchiveError naming the first one that is not as the
    manifest says (missing, truncated, corrupt)."""
    totals = Totals()
    for info in manifest.parts:
        try:
            with target.open(name, info.file) as fh:
                for records in read_part(fh, info):
                    totals.add(records)
                    progress.update(totals.records / max(manifest.records, 1), totals.records,
                                    totals.bytes)
        except FileNotFoundError:
            raise ArchiveError(f"{info.file}: missing") from None
    progress.finish(totals.records, totals.bytes)


async def restore(clients: Sequence[AsyncClient], target: Target, name: str, *,
                  dry_run: bool = False, wait: float = DEFAULT_WAIT,
                  progress: Callable[[str], Progress] = Progress) -> dict[str, Any]:
    """Verify the backup, then (unless `dry_run`) merge it into the cluster; one worker per
    client. Returns the summary printed by `ringkv restore`."""
    began = time.monotonic()
    manifest = read_manifest(target, name)
    verify(target, name, manifest, progress("verify"))
    summary: dict[str, Any] = {
        "backup": name, "cluster": manifest.cluster, "started": manifest.started,
        "records": manifest.records, "tombstones": manifest.tombstones, "size": manifest.size,
        "parts": len(manifest.parts), "verified": True,
    }
    if dry_run:
        return summary
    shown = progress("restore")
    totals = Totals()

    def merge(info: PartInfo) -> Job:
        async def run(client: AsyncClient) -> None:
            with target.open(name, info.file) as fh:
                for batch in batches(read_part(fh, info)):
                    await retrying(partial(client.import_records, batch), wait)
                    totals.add(batch)
                    shown.update(totals.records / max(manifest.records, 1), totals.records,
                                 totals.bytes)
        return run

    await _run_all((merge(info) for info in manifest.parts), clients)
    shown.finish(totals.records, totals.bytes)
    seconds = time.monotonic() - began
    summary.update(merged=totals.records, bytes=totals.bytes, seconds=round(seconds, 3),
                   records_per_s=round(totals.records / seconds, 1),
                   mb_per_s=round(totals.bytes / seconds / 1e6, 3))
    return summary


# -- command line ---------------------------------------------------------------------------
def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--url", default=DEFAULT_URL,
                   help="node URLs, comma-separated; the workers start at different ones "
                   f"(default {DEFAULT_URL})")
    p.add_argument("--token", help="API bearer token (default: $RINGKV_TOKEN)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds to wait for one answer (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--cacert", help="CA certificate (PEM) for https:// nodes (default: $RINGKV_CACERT)")
    p.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL,
                   help=f"parts in flight at once (default {DEFAULT_PARALLEL})")
    p.add_argument("--wait", type=float, default=DEFAULT_WAIT,
                   help="seconds to keep retrying while the cluster answers 'unavailable' "
                   f"(default {DEFAULT_WAIT:g})")
    return p


def _clients(args: argparse.Namespace) -> list[AsyncClient]:
    """`--parallel` clients, each with the URLs rotated to start at another node."""
    urls = [b.url for b in parse_urls(args.url)]
    token = args.token if args.token is not None else os.environ.get("RINGKV_TOKEN") or None
    cacert = args.cacert or os.environ.get("RINGKV_CACERT") or None
    return [AsyncClient(urls[i % len(urls):] + urls[: i % len(urls)], token=token,
                        timeout=args.timeout, ca_file=cacert) for i in range(args.parallel)]


async def _with_clients(args: argparse.Namespace,
                        run: Callable[[list[AsyncClient]], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    clients = _clients(args)
    try:
        return await run(clients)
    finally:
        for client in clients:
            await client.close()


def _main(command: str, args: argparse.Namespace,
          run: Callable[[list[AsyncClient]], Awaitable[dict[str, Any]]]) -> int:
    if args.parallel < 1:
        print(f"ringkv {command}: --parallel must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        summary = asyncio.run(_with_clients(args, run))
    except ArchiveError as exc:
        print(f"ringkv {command}: refused: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except RingkvError as exc:
        print(f"ringkv {command}: {_describe(command, exc)}", file=sys.stderr)
        return exit_code(exc)
    except ValueError as exc:  # a bad --url
        print(f"ringkv {command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # the target directory cannot be written or read
        print(f"ringkv {command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(summary))
    return EXIT_OK


def _describe(command: str, exc: RingkvError) -> str:
    if not isinstance(exc, QuorumUnavailable):
        return describe(exc)
    if command == "backup":
        return (f"quorum unavailable: {exc.message}; every key needs a read quorum of its "
                "replicas (`ringkv status`). Nothing was kept: run the backup again")
    return (f"quorum unavailable: {exc.message}; what was merged so far stays: run the "
            "restore again once the nodes are back (`ringkv status`)")


def backup_main(argv: Sequence[str] | None = None) -> int:
    p = _parser("ringkv backup", "Back the whole cluster up into a directory of archives.")
    p.add_argument("--to", required=True, metavar="DIR",
                   help="directory of backups; this one goes to DIR/<cluster>-<UTC time>")
    p.add_argument("--parts", type=int, default=DEFAULT_PARTS,
                   help=f"slices of the token space, each one file (default {DEFAULT_PARTS})")
    p.add_argument("--retain", type=int, metavar="N",
                   help="after success keep only this cluster's newest N backups in DIR")
    args = p.parse_args(argv)
    if not 1 <= args.parts <= 65536 or (args.retain is not None and args.retain < 1):
        p.error("--parts must be 1 to 65536 and --retain at least 1")
    target = open_target(args.to)
    return _main("backup", args, lambda clients: backup(
        clients, target, parts=args.parts, wait=args.wait, retain=args.retain))


def restore_main(argv: Sequence[str] | None = None) -> int:
    p = _parser("ringkv restore", "Verify a backup, then merge it into the cluster by version.")
    p.add_argument("path", help="a backup directory (or, with --latest, a directory of backups)")
    p.add_argument("--latest", action="store_true",
                   help="restore the newest complete backup found in PATH")
    p.add_argument("--dry-run", action="store_true", help="verify the backup; write nothing")
    args = p.parse_args(argv)
    try:
        target, name = locate(args.path, args.latest)
    except ArchiveError as exc:
        print(f"ringkv restore: refused: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return _main("restore", args, lambda clients: restore(
        clients, target, name, dry_run=args.dry_run, wait=args.wait))
