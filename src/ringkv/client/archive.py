"""The backup archive, format version 1: a directory of parts and a manifest.

    <cluster>-<UTC time>/            one backup, e.g. ringkv-20260101T030000.000Z
        part-00000.rkv ...           the records of one slice of the token space
        manifest.json                written last: a backup without it never completed

A part is a gzip stream of msgpack arrays, one per record:

    [key (bin), value (bin), content_type (str), version (str "<hlc>.<node>"),
     tombstone (bool), expires_ms (int, absolute Unix ms; 0: never)]

The manifest (JSON) names the format and its version, the cluster, the membership epoch
and the times of the backup, the counts, and per part its record count, byte size and
SHA-256. A reader refuses a format version it does not know, so a newer archive is never
half-understood; a later ringkv keeps reading version 1. Fields a reader does not know are
ignored: adding one does not need a new version, changing the meaning of one does.

Why this shape (docs/BACKUP.md has the longer account): parts are written front to back and
never revisited, so they can be streamed to any store, an S3-compatible bucket included, and
written in parallel; a checksum per part names the damaged part; gzip, msgpack and JSON are
read by every language's standard tooling (`gzip -dc part-00000.rkv | python -c ...`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

import msgpack

FORMAT = "ringkv-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RECORD_FIELDS = ("key", "value", "content_type", "version", "tombstone", "expires_ms")
COMPRESSLEVEL = 1  # gzip's fastest: the archive is written as fast as the cluster exports
READ_CHUNK = 1 << 16

Record = list[Any]  # [key, value, content_type, version, tombstone, expires_ms]


class ArchiveError(Exception):
    """The archive cannot be used; the message names the file and what is wrong with it."""


def part_file(part: int) -> str:
    return f"part-{part:05d}.rkv"


@dataclass(frozen=True)
class PartInfo:
    """What the manifest says of one part."""

    file: str
    part: int
    records: int
    tombstones: int
    size: int  # bytes of the file
    sha256: str

    @classmethod
    def from_json(cls, doc: Any) -> PartInfo:
        try:
            info = cls(str(doc["file"]), int(doc["part"]), int(doc["records"]),
                       int(doc["tombstones"]), int(doc["size"]), str(doc["sha256"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArchiveError(f"{MANIFEST}: a part entry is malformed ({exc!r})") from None
        if info.file != part_file(info.part):
            raise ArchiveError(f"{MANIFEST}: part {info.part} is not in {part_file(info.part)}")
        return info


@dataclass(frozen=True)
class Manifest:
    """A complete backup's description (see the module docstring)."""

    cluster: str
    epoch: int  # the membership epoch when the backup began
    started: str  # ISO 8601 UTC: every write acknowledged before this is in the backup
    finished: str
    parts: list[PartInfo]
    created_by: str
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    record_fields: Sequence[str] = RECORD_FIELDS
    compression: str = "gzip"
    encoding: str = "msgpack"
    records: int = field(init=False)
    tombstones: int = field(init=False)
    size: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "records", sum(p.records for p in self.parts))
        object.__setattr__(self, "tombstones", sum(p.tombstones for p in self.parts))
        object.__setattr__(self, "size", sum(p.size for p in self.parts))

    def to_json(self) -> bytes:
        doc = asdict(self)
        doc["record_fields"] = list(self.record_fields)
        return json.dumps(doc, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise ArchiveError(f"{MANIFEST} is not JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ArchiveError(f"{MANIFEST} does not describe a ringkv backup")
        version = doc.get("format_version")
        if version != FORMAT_VERSION:
            raise ArchiveError(f"{MANIFEST}: format version {version!r}; this ringkv reads "
                               f"version {FORMAT_VERSION} (a newer ringkv wrote it?)")
        try:
            parts = [PartInfo.from_json(p) for p in doc["parts"]]
            manifest = cls(str(doc["cluster"]), int(doc["epoch"]), str(doc["started"]),
                           str(doc["finished"]), parts, str(doc["created_by"]))
            totals = (int(doc["records"]), int(doc["tombstones"]), int(doc["size"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArchiveError(f"{MANIFEST} is malformed ({exc!r})") from None
        if totals != (manifest.records, manifest.tombstones, manifest.size):
            raise ArchiveError(f"{MANIFEST}: the totals do not add up over the parts")
        if [p.part for p in parts] != list(range(len(parts))):
            raise ArchiveError(f"{MANIFEST}: the parts are not numbered 0 to {len(parts) - 1}")
        return manifest


class _Hashing:
    """A file wrapper that hashes and counts the bytes going through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def flush(self) -> None:
        self.raw.flush()


class PartWriter:
    """Writes one part front to back: records in, a PartInfo for the manifest out."""

    def __init__(self, out: BinaryIO, part: int) -> None:
        self.part = part
        self._out = _Hashing(out)
        self._gzip = gzip.GzipFile(fileobj=self._out, mode="wb",
                                   compresslevel=COMPRESSLEVEL, mtime=0)
        self._packer = msgpack.Packer()
        self.records = 0
        self.tombstones = 0

    def write(self, records: Sequence[Record]) -> None:
        pack = self._packer.pack
        self._gzip.write(b"".join(pack(r) for r in records))
        self.records += len(records)
        self.tombstones += sum(1 for r in records if r[4])

    def close(self) -> PartInfo:
        self._gzip.close()
        self._out.flush()
        return PartInfo(part_file(self.part), self.part, self.records, self.tombstones,
                        self._out.size, self._out.sha256.hexdigest())


def check_record(rec: Any) -> bool:
    """Whether `rec` has the shape and types of an archived record."""
    return (isinstance(rec, list) and len(rec) == 6 and isinstance(rec[0], bytes) and rec[0] != b""
            and isinstance(rec[1], bytes) and isinstance(rec[2], str) and isinstance(rec[3], str)
            and isinstance(rec[4], bool) and type(rec[5]) is int and rec[5] >= 0)


def read_part(stream: BinaryIO, info: PartInfo, batch: int = 1000) -> Iterator[list[Record]]:
    """The records of one part in batches; ArchiveError naming the part if the file is not
    what the manifest says. The checksum is known only at the end, so a caller that must
    not act on a damaged part reads it through once first (`verify`)."""
    source = _Hashing(stream)
    unpacker = msgpack.Unpacker(gzip.GzipFile(fileobj=source, mode="rb"),
                                read_size=READ_CHUNK)
    count = 0
    records: list[Record] = []
    try:
        for rec in unpacker:
            if not check_record(rec):
                raise ArchiveError(f"{info.file}: corrupt (record {count} is malformed)")
            records.append(rec)
            count += 1
            if len(records) >= batch:
                yield records
                records = []
    except (OSError, EOFError, zlib.error, ValueError, msgpack.UnpackException) as exc:
        # A short file ends the gzip stream early: say which it is when the size tells.
        source.raw.read()  # the rest, for the size
        what = (f"truncated ({source.size} of {info.size} bytes)" if source.size < info.size
                else f"corrupt ({type(exc).__name__}: {exc})")
        raise ArchiveError(f"{info.file}: {what}") from None
    source.raw.read()  # anything after the gzip stream counts too
    if source.size != info.size:
        what = "truncated" if source.size < info.size else "longer than the manifest says"
        raise ArchiveError(f"{info.file}: {what} ({source.size} of {info.size} bytes)")
    if source.sha256.hexdigest() != info.sha256:
        raise ArchiveError(f"{info.file}: checksum mismatch (corrupt)")
    if count != info.records:
        raise ArchiveError(f"{info.file}: holds {count} records; the manifest says {info.records}")
    if records:
        yield records
