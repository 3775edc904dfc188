"""The consistent-hash ring: virtual nodes on a fixed hash, preference lists, ring diffs.

Tokens are 63-bit integers (xxh3-64 shifted right by one) so they fit SQLite's signed
INTEGER column and can be range-scanned there. A token range is half-open on the left,
`(lo, hi]`; a key belongs to the first virtual node at or clockwise after its token, and
its preference list is the first `rf` distinct members from there on.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import xxhash

TOKEN_BITS = 63
MAX_TOKEN = (1 << TOKEN_BITS) - 1
MIN_LO = -1  # `lo` of the range that starts at token 0 (ranges are (lo, hi])


def key_token(key: bytes) -> int:
    """The ring position of a key: stable across processes and machines."""
    return xxhash.xxh3_64_intdigest(key) >> 1


def vnode_token(member: str, index: int) -> int:
    return xxhash.xxh3_64_intdigest(f"{member}#{index}".encode()) >> 1


@dataclass(frozen=True, slots=True)
class TokenRange:
    """Keys whose token t satisfies lo < t <= hi."""

    lo: int
    hi: int

    def __contains__(self, token: object) -> bool:
        return isinstance(token, int) and self.lo < token <= self.hi

    @property
    def width(self) -> int:
        return self.hi - self.lo


@dataclass(frozen=True, slots=True)
class RangeChange:
    """A range whose replica set differs between two rings."""

    range: TokenRange
    old: tuple[str, ...]
    new: tuple[str, ...]

    @property
    def gained(self) -> frozenset[str]:
        return frozenset(self.new) - frozenset(self.old)

    @property
    def mergers(self) -> frozenset[str]:
        """Who must merge the range: those that gained it, and where it has fewer replicas
        than before (the cluster shrinks below rf members) every one left, so that each
        acknowledged write stays on W of the fewer (W of 1 is 1: the one left needs all)."""
        return self.gained | (frozenset(self.new) if len(self.new) < len(self.old) else frozenset())

    @property
    def lost(self) -> frozenset[str]:
        return frozenset(self.old) - frozenset(self.new)


class Ring:
    """An immutable ring over a set of member names."""

    def __init__(self, members: Iterable[str], rf: int, vnodes: int = 64) -> None:
        self.members: tuple[str, ...] = tuple(sorted(set(members)))
        self.rf = rf
        self.vnodes = vnodes
        points = sorted(
            (vnode_token(m, i), m) for m in self.members for i in range(vnodes)
        )
        self._tokens = [t for t, _ in points]
        owners = [m for _, m in points]
        width = min(rf, len(self.members))
        # Preference lists are precomputed per virtual node: a lookup is one bisect.
        self._replicas: list[tuple[str, ...]] = []
        count = len(owners)
        for start in range(count):
            chosen: list[str] = []
            index = start
            while len(chosen) < width:
                owner = owners[index % count]
                if owner not in chosen:
                    chosen.append(owner)
                index += 1
            self._replicas.append(tuple(chosen))

    def __len__(self) -> int:
        return len(self.members)

    def replicas_for_token(self, token: int) -> tuple[str, ...]:
        if not self._tokens:
            return ()
        index = bisect.bisect_left(self._tokens, token)
        return self._replicas[index % len(self._tokens)]

    def replicas(self, key: bytes) -> tuple[str, ...]:
        """The preference list of a key: `min(rf, len(members))` distinct members."""
        return self.replicas_for_token(key_token(key))

    def boundaries(self) -> list[int]:
        return list(self._tokens)

    def segments(self, extra_boundaries: Sequence[int] = ()) -> list[tuple[TokenRange, tuple[str, ...]]]:
        """The whole token space as (range, replicas) pieces, split at every boundary given.

        The range that wraps past MAX_TOKEN is returned as two pieces, so every range is a
        plain `lo < t <= hi` interval.
        """
        if not self._tokens:
            return []
        cuts = sorted(set(self._tokens) | set(extra_boundaries))
        pieces: list[tuple[TokenRange, tuple[str, ...]]] = []
        lo = MIN_LO
        for hi in cuts:
            if hi > lo:
                pieces.append((TokenRange(lo, hi), self.replicas_for_token(hi)))
            lo = hi
        if lo < MAX_TOKEN:
            pieces.append((TokenRange(lo, MAX_TOKEN), self.replicas_for_token(MAX_TOKEN)))
        return pieces

    def ranges_of(self, member: str) -> list[TokenRange]:
        """Every range for which `member` is a replica, adjacent ranges merged."""
        return _merge([r for r, reps in self.segments() if member in reps])

    def ownership(self) -> dict[str, float]:
        """The fraction of the token space each member replicates (sums to min(rf, n))."""
        share = dict.fromkeys(self.members, 0.0)
        total = float(MAX_TOKEN + 1)
        for rng, reps in self.segments():
            for member in reps:
                share[member] += rng.width / total
        return share


def diff(old: Ring, new: Ring) -> list[RangeChange]:
    """Exactly the token ranges whose replica sets differ between two rings.

    Both rings are cut at the union of their boundaries; inside each piece both replica
    sets are constant, so comparing one token per piece is exact. Adjacent pieces with the
    same change are merged.
    """
    cuts = sorted(set(old.boundaries()) | set(new.boundaries()))
    changes: list[RangeChange] = []
    pieces = new.segments(cuts) if len(new) else [(r, ()) for r, _ in old.segments(cuts)]
    for rng, new_reps in pieces:
        old_reps = old.replicas_for_token(rng.hi)
        if frozenset(old_reps) == frozenset(new_reps):
            continue
        last = changes[-1] if changes else None
        if last and last.range.hi == rng.lo and last.old == old_reps and last.new == new_reps:
            changes[-1] = RangeChange(TokenRange(last.range.lo, rng.hi), old_reps, new_reps)
        else:
            changes.append(RangeChange(rng, old_reps, new_reps))
    return changes


def _merge(ranges: list[TokenRange]) -> list[TokenRange]:
    merged: list[TokenRange] = []
    for rng in ranges:
        if merged and merged[-1].hi == rng.lo:
            merged[-1] = TokenRange(merged[-1].lo, rng.hi)
        else:
            merged.append(rng)
    return merged


SPACE = MAX_TOKEN + 1


def _fraction(token: int) -> float:
    return round((token + 1) / SPACE, 7)


def layout(ring: Ring) -> dict[str, object]:
    """The ring for drawing: each segment `(lo, hi]` as fractions of the token space
    [start, end), with its replicas (the first is the owner of the vnode at `hi`)."""
    return {"members": list(ring.members), "segments": [
        {"start": _fraction(r.lo), "end": _fraction(r.hi), "replicas": list(reps)}
        for r, reps in ring.segments()]}


def moving(changes: Sequence[RangeChange]) -> list[dict[str, object]]:
    """The ranges of a ring diff, as fractions of the token space, with both replica sets."""
    return [{"start": _fraction(c.range.lo), "end": _fraction(c.range.hi), "old": list(c.old),
             "new": list(c.new)} for c in changes]
