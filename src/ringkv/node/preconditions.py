"""Conditional requests (RFC 9110 §13.1): `If-Match` and `If-None-Match` as one value.

An ETag is the quoted version, `"<hlc>.<node>"`. Each header takes `*` or a
comma-separated list of entity-tags, strong (`"v"`) or weak (`W/"v"`), with optional
whitespace and empty list elements; any other value is refused (400). Only what a
comparison can use is kept:

- `If-Match` compares strongly (§13.1.1): a weak tag never matches, so it is dropped;
  a list that holds only weak tags (or tags no version has) fails on every key (412).
- `If-None-Match` compares weakly (§13.1.2): `W/"v"` counts as `"v"`.
- Tags compare as strings, character for character: `"0012.node-0"` is not `"12.node-0"`.

A header present twice counts as one list (§5.3). Evaluation follows §13.2.2: `If-Match`
first, then `If-None-Match`. The key's *current version* is the version of its live
record; a key that is absent, deleted or expired has none, so `*` does not match it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .versions import Version

# The grammar, as the OpenAPI document states it (an ECMA-262 regex that means the same in
# Python): optional whitespace around the value (RFC 9110 §5.5), then `*` or a list of
# entity-tags with optional empty elements; etagc (§8.8.3) is a visible ASCII character
# but DQUOTE, or any non-ASCII one. Each whitespace run has exactly one place it can go,
# so no input makes the match backtrack.
_ETAG = r'(W/)?"[^\x00-\x20"\x7f]*"'
TAG_LIST_PATTERN = rf"^[ \t]*(\*[ \t]*|(,[ \t]*)*{_ETAG}[ \t]*(,[ \t]*({_ETAG}[ \t]*)?)*)$"
_TAG_LIST = re.compile(TAG_LIST_PATTERN)
_TAG = re.compile(r'(W/)?"([^"]*)"')


@dataclass(frozen=True, slots=True)
class Tags:
    """One header's value: `*` (`any`), or the opaque parts of the tags that can match."""

    any: bool = False
    opaque: frozenset[str] = frozenset()

    def match(self, current: Version | None) -> bool:
        """Whether the key's current version (None: no live record) is named here."""
        return current is not None and (self.any or str(current) in self.opaque)


@dataclass(frozen=True, slots=True)
class Failure:
    """A precondition that does not hold: which header, and why (for the 412 message).

    A failed `If-None-Match` on GET or HEAD is a 304, not a 412 (§13.1.2)."""

    header: str
    message: str


@dataclass(frozen=True, slots=True)
class Preconditions:
    """The request's `If-Match` and `If-None-Match`; None where the header is absent."""

    if_match: Tags | None = None
    if_none_match: Tags | None = None

    @property
    def given(self) -> bool:
        return self.if_match is not None or self.if_none_match is not None

    def failure(self, current: Version | None) -> Failure | None:
        """What fails for a key whose current version is `current`, or None if all hold."""
        if self.if_match is not None and not self.if_match.match(current):
            return Failure("If-Match", "the key does not exist (If-Match)" if current is None
                           else f"the current version is {current} (If-Match)")
        if self.if_none_match is not None and self.if_none_match.match(current):
            return Failure("If-None-Match", f"the key exists, version {current} (If-None-Match)")
        return None


NONE = Preconditions()


def parse(if_match: Sequence[str], if_none_match: Sequence[str]) -> Preconditions:
    """The preconditions of a request from each header's field lines (none: absent).

    Raises ValueError, with a message for the client, when a value breaks the grammar."""
    return Preconditions(_tags("If-Match", if_match, weak_matches=False),
                         _tags("If-None-Match", if_none_match, weak_matches=True))


def _tags(header: str, lines: Sequence[str], *, weak_matches: bool) -> Tags | None:
    if not lines:
        return None
    value = ", ".join(lines)
    if _TAG_LIST.fullmatch(value) is None:
        raise ValueError(f'{header} takes * or a list of entity-tags, e.g. {header}: '
                         '"1234.node-0", "1240.node-2"')
    if value.strip(" \t") == "*":
        return Tags(any=True)
    return Tags(opaque=frozenset(opaque for weak, opaque in _TAG.findall(value)
                                 if weak_matches or not weak))
