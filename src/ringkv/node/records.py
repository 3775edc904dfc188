"""The record: what every replica stores for a key, and its compact wire form."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .ring import key_token
from .versions import MAX_HLC, Version, valid_node_name

WireRecord = tuple[bytes, bytes, str, int, str, bool, int]


def expiry(now_ms: int, ttl: int | None) -> int:
    """The absolute expiry (ms) of a record written now with a TTL in seconds (0: none).
    `now_ms` is the coordinator's wall clock, never its hybrid clock: a peer whose clock
    runs ahead pulls the HLC forward (for up to max_clock_drift), and a TTL is a promise in
    seconds of real time."""
    return now_ms + ttl * 1000 if ttl else 0


@dataclass(slots=True)
class Record:
    """One version of one key. `expires_ms` is 0 for no expiry (absolute ms otherwise)."""

    key: bytes
    value: bytes
    content_type: str
    version: Version
    tombstone: bool = False
    expires_ms: int = 0

    @property
    def token(self) -> int:
        return key_token(self.key)

    def live(self, now_ms: int) -> bool:
        """Neither deleted nor expired: what a client may see."""
        return not self.tombstone and (self.expires_ms == 0 or self.expires_ms > now_ms)

    def to_wire(self) -> WireRecord:
        v = self.version
        return (self.key, self.value, self.content_type, v.hlc, v.node, self.tombstone, self.expires_ms)

    @classmethod
    def from_wire(cls, w: WireRecord | list[Any], trusted: bool = False) -> Record:
        """Decode a record from a peer, checking every field's type and range: a bad record
        must be refused alone, not fail a whole group commit or poison the clock. Records
        from this node's own storage or coordinator are `trusted` (not checked again)."""
        try:
            key, value, ctype, hlc, node, tomb, expires = w
        except (TypeError, ValueError):
            raise ValueError("a record has 7 fields") from None
        if not trusted and not (isinstance(key, bytes) and key and isinstance(value, bytes)
                and isinstance(ctype, str) and isinstance(node, str) and valid_node_name(node)
                and type(hlc) is int and 0 <= hlc <= MAX_HLC
                and type(expires) is int and 0 <= expires <= MAX_HLC
                and isinstance(tomb, bool)):
            raise ValueError("malformed record")
        return cls(key, value, ctype, Version(hlc, node), tomb, expires)
