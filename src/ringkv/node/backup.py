"""The node's side of backup and restore: range export, import merged by version, and the
report of the last backup.

**Export.** The token space is cut into `parts` equal slices, whatever the ring looks
like, so an archive fits a cluster of any size. A page of a part is read from R
replicas of the base ring that are not joining (the replicas a quorum read asks),
segment by segment, and merged per key at the newest version. Every page is read after
the backup began, so each key in it is, in effect, a quorum read made after that moment:
by rule 1 it holds every write acknowledged before the backup began, at that version or
a newer one. Tombstones are exported (a restore must not bring deleted keys back), except
those the purge would drop anyway (older than gc_grace), and so are expired records.

**Import.** Each record keeps its version and goes to its replicas in the base and the
target ring as a repair does (`Coordinator.merge`): a replica keeps the newer of the two,
nothing is refused, so importing twice is importing once and a newer write is never
overwritten. A batch succeeds once W replicas of each ring hold each record (or a newer
version of its key).

Both are paced by the node's handoff budget (`rebalance.Pacer`), so clients keep most of
the node while a backup or a restore runs.

**Report.** The backup tool reports a finished backup to one node, which hands it to
every member; each keeps the newest in `<data_dir>/last-backup.json` and exports it as
metrics, so "no backup for a day" can be alerted on from any node's metrics.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import msgpack

from . import peerops
from .coordinator import QuorumUnavailable
from .membership import View, needed
from .records import Record
from .ring import MAX_TOKEN, MIN_LO, TokenRange
from .transport import PeerError, RemoteError, StaleEpoch
from .versions import MAX_HLC, Version

if TYPE_CHECKING:
    from .config import Settings
    from .service import NodeService

log = logging.getLogger("ringkv.backup")

MAX_PARTS = 65536
MAX_PAGE = 1000  # records per export page
MAX_IMPORT_RECORDS = 10_000  # records per import request
IMPORT_SLACK_BYTES = 4 * 1024 * 1024  # an import body: one largest value plus this much
STALE_RETRIES = 3  # a page read again with a newer membership at most this often
REPORT_FILE = "last-backup.json"

# Where an export stands: every record at or before it is exported. (token, key) is a
# record's place in scan order; (token, None) means every key of every token <= token.
Position = tuple[int, bytes | None]


def part_range(part: int, parts: int) -> TokenRange:
    """The token slice of part `part` of `parts` equal slices of the whole token space."""
    span = MAX_TOKEN - MIN_LO
    return TokenRange(MIN_LO + span * part // parts, MIN_LO + span * (part + 1) // parts)


def encode_cursor(position: Position) -> str:
    return base64.urlsafe_b64encode(msgpack.packb(list(position))).rstrip(b"=").decode()


def decode_cursor(text: str, rng: TokenRange) -> Position:
    """A cursor this node handed out for the part `rng`; ValueError for anything else."""
    try:
        raw = base64.urlsafe_b64decode(text.encode() + b"=" * (-len(text) % 4))
        token, key = msgpack.unpackb(raw)
    except (binascii.Error, ValueError, TypeError, msgpack.UnpackException):
        raise ValueError("the cursor is not one this API returned") from None
    if type(token) is not int or not rng.lo <= token <= rng.hi or not (
            key is None or isinstance(key, bytes)):
        raise ValueError("the cursor does not belong to this part")
    return token, key


def to_public(rec: Record) -> list[Any]:
    """The record as the backup endpoints carry it: [key, value, content type, version,
    tombstone, expires_ms], the version as the API writes it (`<hlc>.<node>`)."""
    return [rec.key, rec.value, rec.content_type, str(rec.version), rec.tombstone, rec.expires_ms]


def from_public(item: Any, settings: Settings, now_ms: int) -> Record:
    """Validate one imported record as the public API would a write; ValueError says why."""
    if not isinstance(item, list | tuple) or len(item) != 6:
        raise ValueError("a record is [key, value, content_type, version, tombstone, expires_ms]")
    key, value, ctype, version, tombstone, expires = item
    if not isinstance(key, bytes) or not 1 <= len(key) <= settings.max_key_bytes:
        raise ValueError(f"the key must be 1 to {settings.max_key_bytes} bytes")
    try:
        key.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the key is not valid UTF-8") from None
    if not isinstance(value, bytes) or len(value) > settings.max_value_bytes:
        raise ValueError(f"the value must be bytes, at most {settings.max_value_bytes}")
    if not isinstance(ctype, str) or len(ctype) > 255 or not (ctype.isascii() and ctype.isprintable()):
        raise ValueError("the content type must be printable ASCII of at most 255 characters")
    if not isinstance(version, str):
        raise ValueError("the version must be a string <hlc>.<node>")
    parsed = Version.parse(version)
    if type(tombstone) is not bool or type(expires) is not int or not 0 <= expires <= MAX_HLC:
        raise ValueError("tombstone must be a boolean and expires_ms a non-negative integer")
    ahead_s = (parsed.physical_ms - now_ms) / 1000
    if ahead_s > settings.max_clock_drift:
        raise ValueError(f"the version is {ahead_s:.0f}s ahead of this node's clock "
                         f"(max_clock_drift is {settings.max_clock_drift:g}s)")
    return Record(key, value, ctype, parsed, tombstone, expires)


def merge_answers(answers: Sequence[Sequence[Record]], limit: int
                  ) -> tuple[list[Record], Position | None]:
    """The newest version of each key among replicas' scans of the same range, and how far
    that is complete: up to the smallest last position of any full answer (past it, a
    full answer may be missing keys another one has), or the whole range (None)."""
    bound = min(((a[-1].token, a[-1].key) for a in answers if len(a) >= limit), default=None)
    newest: dict[bytes, tuple[tuple[int, bytes], Record]] = {}
    for answer in answers:
        for rec in answer:
            pos = (rec.token, rec.key)
            if bound is not None and pos > bound:
                break
            seen = newest.get(rec.key)
            if seen is None or rec.version > seen[1].version:
                newest[rec.key] = (pos, rec)
    return [rec for _, rec in sorted(newest.values(), key=lambda item: item[0])], bound


@dataclass(frozen=True)
class ExportPage:
    records: list[Record]
    after: Position | None  # where the next page starts; None: the part is complete
    done: float  # the share of the part's tokens exported so far


@dataclass(frozen=True)
class Report:
    """A finished backup, as the backup tool reports it (times in Unix seconds)."""

    name: str
    started: float
    finished: float
    records: int
    bytes: int

    @classmethod
    def from_json(cls, doc: Any) -> Report:
        if not isinstance(doc, dict) or set(doc) != {"name", "started", "finished", "records", "bytes"}:
            raise ValueError("a backup report is {name, started, finished, records, bytes}")
        name, started, finished = doc["name"], doc["started"], doc["finished"]
        counts = (doc["records"], doc["bytes"])
        if not isinstance(name, str) or not 1 <= len(name) <= 255:
            raise ValueError("name must be a string of 1 to 255 characters")
        if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in (started, finished)) \
                or not 0 <= started <= finished:
            raise ValueError("started and finished must be Unix times, started first")
        if not all(type(n) is int and n >= 0 for n in counts):
            raise ValueError("records and bytes must be non-negative integers")
        return cls(name, float(started), float(finished), *counts)


class Backups:
    """Export and import for the backup tool, and the last backup's report."""

    def __init__(self, service: NodeService) -> None:
        self.service = service
        self._path = os.path.join(service.settings.data_dir, REPORT_FILE)
        self._segments: tuple[View, list[int], list[tuple[TokenRange, tuple[str, ...]]]] | None = None
        self.last: Report | None = None

    # -- export -------------------------------------------------------------------------
    async def export(self, rng: TokenRange, after: Position | None, limit: int) -> ExportPage:
        """The next page of the part `rng`: at least one record, unless the part is done."""
        position: Position | None = after or (rng.lo, None)
        records: list[Record] = []
        while position is not None and not records:
            records, position = await self._page(rng, position, limit)
        done = 1.0 if position is None else (position[0] - rng.lo) / rng.width
        return ExportPage(records, position, done)

    async def _page(self, rng: TokenRange, position: Position, limit: int
                    ) -> tuple[list[Record], Position | None]:
        """Records after `position` within one base-ring segment, merged from R replicas."""
        token, key = position
        for _attempt in range(STALE_RETRIES):
            view = self.service.view
            seg, reps = self._segment(view, token if key is not None else token + 1)
            hi = min(seg.hi, rng.hi)
            scan, after = ((TokenRange(token, hi), None) if key is None
                           else (TokenRange(max(seg.lo, rng.lo), hi), (token, key)))
            voters = self.service.coordinator.read_voters(view, reps)
            async with self.service.rebalancer.pacer.turn() as turn:
                try:
                    answers = await self._scan(voters, needed("quorum", len(reps)), scan, after, limit)
                except StaleEpoch:
                    continue  # the newer membership is adopted: read the page with its rings
                turn.bytes = sum(len(r.key) + len(r.value) for a in answers for r in a)
            records, bound = merge_answers(answers, limit)
            records = self._unpurged(records)
            if bound is not None:
                return records, bound
            return records, None if hi >= rng.hi else (hi, None)
        raise QuorumUnavailable(0, 1, "export")  # the membership kept changing under it

    def _segment(self, view: View, token: int) -> tuple[TokenRange, tuple[str, ...]]:
        """The base-ring segment (a range with one replica set) that holds `token`."""
        if self._segments is None or self._segments[0] is not view:
            segments = view.base.segments()
            self._segments = (view, [rng.hi for rng, _ in segments], segments)
        _, his, segments = self._segments
        return segments[bisect.bisect_left(his, token)]

    async def _scan(self, voters: list[str], need: int, scan: TokenRange,
                    after: peerops.Cursor | None, limit: int) -> list[list[Record]]:
        """The range from `need` of the voters, in order: one that fails is replaced by the
        next (a rebuilding replica refuses, a dead one times out)."""
        answers: list[list[Record]] = []
        rest = list(voters)
        while len(answers) < need and len(rest) >= need - len(answers):
            ask, rest = rest[: need - len(answers)], rest[need - len(answers):]
            results = await asyncio.gather(
                *(self.service.call(name, peerops.scan(scan.lo, scan.hi, after, limit)) for name in ask),
                return_exceptions=True)
            for name, result in zip(ask, results, strict=True):
                if isinstance(result, StaleEpoch):
                    raise result
                if isinstance(result, PeerError):
                    self.service.replica_failed(name, result)
                elif isinstance(result, BaseException):
                    raise result
                else:
                    answers.append([Record.from_wire(w) for w in result])
        if len(answers) < need:
            raise QuorumUnavailable(len(answers), need, "export")
        return answers

    def _unpurged(self, records: list[Record]) -> list[Record]:
        """Drop what the purge would (see NodeService._purge_loop): tombstones and expired
        records older than gc_grace. Restored, they would only be purged again."""
        bound_ms = self.service.clock.physical_ms() - self.service.settings.gc_grace * 1000
        return [r for r in records
                if not (r.tombstone and r.version.physical_ms < bound_ms)
                and not 0 < r.expires_ms < bound_ms]

    # -- import -------------------------------------------------------------------------
    async def import_records(self, records: list[Record]) -> None:
        """Merge every record into its replicas; raises the first failure once all ended."""
        async with self.service.rebalancer.pacer.turn() as turn:
            results = await asyncio.gather(
                *(self.service.coordinator.merge(r) for r in records), return_exceptions=True)
            turn.bytes = sum(len(r.key) + len(r.value) for r in records)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    # -- the last backup ----------------------------------------------------------------
    def load(self) -> None:
        """The report kept from before a restart, if any (a bad file is ignored, said so)."""
        try:
            with open(self._path, encoding="utf-8") as fh:
                self._remember(Report.from_json(json.load(fh)))
        except FileNotFoundError:
            pass
        except ValueError as exc:
            log.warning("ignoring %s: %s", self._path, exc)

    async def report(self, report: Report) -> list[str]:
        """Hand a finished backup's report to every member; the names that took it."""
        names = list(self.service.view.by_name)
        results = await asyncio.gather(
            *(asyncio.wait_for(self.service.call(n, peerops.backup_report(asdict(report))), 5.0)
              for n in names),
            return_exceptions=True)
        return [n for n, r in zip(names, results, strict=True) if not isinstance(r, BaseException)]

    async def rpc_report(self, args: Any) -> bool:
        """Keep a report if it is newer than the one kept."""
        try:
            report = Report.from_json(args)
        except ValueError as exc:
            raise RemoteError("bad_request", str(exc)) from exc
        if self.last is not None and report.finished <= self.last.finished:
            return False
        await asyncio.to_thread(_save_json, self._path, asdict(report))
        self._remember(report)
        return True

    def _remember(self, report: Report) -> None:
        self.last = report
        metrics = self.service.metrics
        metrics.backup_last_success.set(report.finished)
        metrics.backup_last_duration.set(report.finished - report.started)
        metrics.backup_last_records.set(report.records)
        metrics.backup_last_bytes.set(report.bytes)


def _save_json(path: str, doc: dict[str, Any]) -> None:
    """Write atomically: a crash leaves the old file or the new one."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
