"""What a node has merged for the base ring it catches up from: token intervals, each with
the replicas it was merged from and the target replicas (owners) it was merged for.

A range merged from R base-ring replicas holds every write acknowledged before the merge
(each such write is on W of them, and R + W > rf). A later write reaches W of the range's
target replicas of its time, which this node is one of: a read quorum of those same owners
meets it, a read quorum of other owners may not (a write acked by two owners that are no
longer both owners). So a merge stays good across epochs while the base ring and the
range's owners stay the same; a promotion or a change elsewhere in the ring leaves both
alone and must not make the node pull the range again. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .ring import TokenRange


@dataclass(frozen=True, slots=True)
class Piece:
    lo: int
    hi: int
    sources: frozenset[str]
    owners: frozenset[str]


class Coverage:
    """Merged intervals for one base ring (sorted, disjoint)."""

    def __init__(self, base: tuple[str, ...] = ()) -> None:
        self.base = base
        self._pieces: list[Piece] = []

    def for_base(self, base: tuple[str, ...]) -> Coverage:
        """This coverage if it is about `base`, else an empty one: what was merged from
        another base ring says nothing about this one."""
        return self if base == self.base else Coverage(base)

    def add(self, rng: TokenRange, source: str, owners: Iterable[str]) -> None:
        """Record that `rng` was merged from `source` while `owners` replicated it (what
        was merged of it for other owners no longer counts)."""
        now = frozenset(owners)
        out: list[Piece] = []
        cursor = rng.lo
        for p in self._pieces:
            if p.hi <= rng.lo or p.lo >= rng.hi:
                out.append(p)
                continue
            if p.lo < rng.lo:
                out.append(Piece(p.lo, rng.lo, p.sources, p.owners))
            if cursor < max(p.lo, rng.lo):
                out.append(Piece(cursor, max(p.lo, rng.lo), frozenset([source]), now))
            before = p.sources if p.owners == now else frozenset()
            out.append(Piece(max(p.lo, rng.lo), min(p.hi, rng.hi), before | {source}, now))
            if p.hi > rng.hi:
                out.append(Piece(rng.hi, p.hi, p.sources, p.owners))
            cursor = min(p.hi, rng.hi)
        if cursor < rng.hi:
            out.append(Piece(cursor, rng.hi, frozenset([source]), now))
        out.sort(key=lambda p: p.lo)
        self._pieces = _merged(out)

    def sources(self, rng: TokenRange) -> list[tuple[TokenRange, frozenset[str]]]:
        """`rng` cut into pieces, each with the sources it was merged from (maybe none)."""
        out: list[tuple[TokenRange, frozenset[str]]] = []
        cursor = rng.lo
        for p in self._pieces:
            if p.hi <= rng.lo or p.lo >= rng.hi:
                continue
            if cursor < p.lo:
                out.append((TokenRange(cursor, p.lo), frozenset()))
            out.append((TokenRange(max(p.lo, rng.lo), min(p.hi, rng.hi)), p.sources))
            cursor = min(p.hi, rng.hi)
        if cursor < rng.hi:
            out.append((TokenRange(cursor, rng.hi), frozenset()))
        return out

    def merged_from(self, rng: TokenRange) -> frozenset[str]:
        """The sources all of `rng` was merged from."""
        pieces = self.sources(rng)
        return frozenset.intersection(*(src for _, src in pieces)) if pieces else frozenset()

    def keep(self, owned: Iterable[tuple[TokenRange, Iterable[str]]]) -> None:
        """Keep only what was merged for the owners each range has now (disjoint ranges,
        each with its target replicas, this node among them). A range this node stopped
        replicating missed the writes made meanwhile, and one whose other owners changed
        may miss writes that only those others acknowledged: a merge of either is worth
        nothing."""
        kept: list[Piece] = []
        for rng, owners in owned:
            now = frozenset(owners)
            kept += [Piece(max(p.lo, rng.lo), min(p.hi, rng.hi), p.sources, now)
                     for p in self._pieces
                     if p.owners == now and p.hi > rng.lo and p.lo < rng.hi]
        kept.sort(key=lambda p: p.lo)
        self._pieces = _merged(kept)

    def __len__(self) -> int:
        return len(self._pieces)


def _merged(pieces: list[Piece]) -> list[Piece]:
    """Adjacent pieces with the same sources become one."""
    out: list[Piece] = []
    for p in pieces:
        last = out[-1] if out else None
        if last and last.hi == p.lo and (last.sources, last.owners) == (p.sources, p.owners):
            out[-1] = Piece(last.lo, p.hi, p.sources, p.owners)
        else:
            out.append(p)
    return out
