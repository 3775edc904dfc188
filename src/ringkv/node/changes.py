"""What a conditional request does to a key: its preconditions (`If-Match`,
`If-None-Match`), checked against the current record, and the record it writes (a put or
delete, a serial write without preconditions, `incr`).

Pure: a Paxos round (`conditional.Proposer`) reads the current record from a quorum of
promises, asks the change for the record to propose under the round's version, and
proposes it; a refusal becomes a 412.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .preconditions import NONE, Preconditions
from .records import Record, expiry
from .versions import Version

INT64 = (-(1 << 63), (1 << 63) - 1)
COUNTER_TYPE = "text/plain; charset=utf-8"


class Refused(Exception):
    """The condition does not hold for the current record (HTTP 412)."""


class Change(Protocol):
    def apply(self, current: Record | None, version: Version, now_ms: int) -> Record:
        """The record to write over `current` at `version`; raises Refused."""
        ...


def _live(current: Record | None, now_ms: int) -> Record | None:
    return current if current is not None and current.live(now_ms) else None


def _check(preconditions: Preconditions, live: Record | None) -> None:
    failure = preconditions.failure(None if live is None else live.version)
    if failure is not None:
        raise Refused(failure.message)


@dataclass(frozen=True, slots=True)
class Write:
    """Put a value (or delete: a tombstone) if the preconditions hold (none: a serial write,
    which always applies)."""

    key: bytes
    value: bytes
    content_type: str
    preconditions: Preconditions = NONE
    ttl: int | None = None
    tombstone: bool = False

    def apply(self, current: Record | None, version: Version, now_ms: int) -> Record:
        _check(self.preconditions, _live(current, now_ms))
        return Record(self.key, self.value, self.content_type, version, self.tombstone,
                      expiry(now_ms, self.ttl))


@dataclass(frozen=True, slots=True)
class Increment:
    """Add `by` to a decimal integer value (an absent key counts as 0)."""

    key: bytes
    by: int
    ttl: int | None = None
    preconditions: Preconditions = NONE

    def apply(self, current: Record | None, version: Version, now_ms: int) -> Record:
        live = _live(current, now_ms)
        _check(self.preconditions, live)
        number = 0 if live is None else parse_int(live.value)
        if number is None:
            raise Refused("the current value is not a decimal integer")
        total = number + self.by
        if not INT64[0] <= total <= INT64[1]:
            raise Refused("the result does not fit in a signed 64-bit integer")
        return Record(self.key, str(total).encode(), COUNTER_TYPE, version, False,
                      expiry(now_ms, self.ttl))


def parse_int(raw: bytes | str) -> int | None:
    """A decimal integer with an optional sign within int64, as `incr` reads and `by` takes."""
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    digits = text[1:] if text[:1] in ("-", "+") else text
    if not digits or len(digits) > 19 or not digits.isascii() or not digits.isdigit():
        return None
    number = int(text)
    return number if INT64[0] <= number <= INT64[1] else None
