"""Versions: a hybrid logical clock (HLC) and the `<hlc>.<node>` version strings.

An HLC value packs physical milliseconds and a 16-bit logical counter into one integer,
so versions order like wall-clock time when clocks agree and still move strictly forward
when they do not: `observe()` pulls the clock past any version seen from elsewhere.
Versions order by (hlc, node); the node name breaks ties between equal clocks.
"""

from __future__ import annotations

import re
import time
from typing import NamedTuple

COUNTER_BITS = 16
_NODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")
_VERSION_RE = re.compile(r"([0-9]{1,19})\.([A-Za-z0-9][A-Za-z0-9_.-]{0,252})")
MAX_HLC = (1 << 63) - 1  # versions are stored in SQLite's signed 64-bit INTEGER
# The largest clock shift a node accepts (ten years either way): the skewed clock stays
# far inside what an HLC holds (2^47 ms after 1970) and after 1970.
MAX_CLOCK_SKEW_MS = 10 * 365 * 86_400_000


class Version(NamedTuple):
    """A record version; tuple order is version order."""

    hlc: int
    node: str

    def __str__(self) -> str:
        return f"{self.hlc}.{self.node}"

    @property
    def physical_ms(self) -> int:
        return self.hlc >> COUNTER_BITS

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse `<hlc>.<node>`; raises ValueError on anything else."""
        match = _VERSION_RE.fullmatch(text)
        if match is None or int(match.group(1)) > MAX_HLC:
            raise ValueError(f"not a version: {text[:64]!r}")
        return cls(int(match.group(1)), match.group(2))


ZERO = Version(0, "")


def valid_node_name(name: str) -> bool:
    return _NODE_RE.fullmatch(name) is not None


class HybridClock:
    """Hybrid logical clock of one node.

    `skew_ms` shifts the physical clock; it exists so tests can run one node with a
    deliberately wrong clock and show that correctness rule 2 does not depend on clocks.
    """

    def __init__(self, skew_ms: int = 0) -> None:
        self.skew_ms = skew_ms
        self._last = 0

    def physical_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.skew_ms

    def now(self) -> int:
        """A new HLC value, strictly greater than every value issued or observed."""
        wall = self.physical_ms() << COUNTER_BITS
        self._last = wall if wall > self._last else self._last + 1
        return self._last

    def observe(self, hlc: int) -> None:
        """Move past a value seen elsewhere, so the next `now()` is newer than it."""
        self._last = max(self._last, hlc)

    @property
    def last(self) -> int:
        return self._last
