"""The membership document and the rings a node derives from it.

The document is the single source of truth about who is in the cluster. Every change
bumps `epoch`; a node ignores a document whose epoch is not higher than the one it holds
and persists the newest. While an epoch is not settled, `base` names the members of the
last settled epoch: coordinators then use two rings (base and target), as correctness
rule 3 requires. Pure but for `load` and `save`, which keep the document in a JSON file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from .ring import RangeChange, Ring, diff

MemberState = Literal["joining", "normal"]
STATES: tuple[str, ...] = ("joining", "normal")
# Consistency levels: how many of a key's replicas (rf of them, fewer in a smaller cluster)
# a request needs, per ring.
LEVELS = ("one", "quorum", "all")


def needed(level: str, replicas: int) -> int:
    """How many of `replicas` must answer at a consistency level (W and R)."""
    if level == "one":
        return min(1, replicas)
    if level == "all":
        return replicas
    return replicas // 2 + 1


class InvalidDocument(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    url: str  # internal address, "host:port"
    api_url: str  # public address, "http://host:port"
    state: MemberState = "normal"

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "url": self.url, "api_url": self.api_url, "state": self.state}


@dataclass(frozen=True, slots=True)
class Document:
    epoch: int
    rf: int
    members: tuple[Member, ...]
    settled: bool = True
    base: tuple[str, ...] = field(default=())  # member names of the last settled epoch

    def __post_init__(self) -> None:
        names = [m.name for m in self.members]
        if self.epoch < 1 or self.rf < 1:
            raise InvalidDocument("epoch and rf must be positive")
        if len(set(names)) != len(names):
            raise InvalidDocument("duplicate member names")
        if any(m.state not in STATES for m in self.members):
            raise InvalidDocument("member state must be joining or normal")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)

    def base_names(self) -> tuple[str, ...]:
        """Members of the last settled epoch (this epoch's, once settled)."""
        return self.names if self.settled or not self.base else self.base

    def member(self, name: str) -> Member | None:
        for m in self.members:
            if m.name == name:
                return m
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "rf": self.rf,
            "settled": self.settled,
            "members": [m.to_json() for m in self.members],
            "base": list(self.base),
        }

    @classmethod
    def from_json(cls, data: Any) -> Document:
        try:
            members = tuple(
                Member(str(m["name"]), str(m["url"]), str(m.get("api_url", "")),
                       m.get("state", "normal"))
                for m in data["members"]
            )
            return cls(
                epoch=int(data["epoch"]),
                rf=int(data["rf"]),
                members=members,
                settled=bool(data.get("settled", True)),
                base=tuple(str(n) for n in data.get("base") or ()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidDocument(f"bad membership document: {exc}") from exc

    @classmethod
    def initial(cls, members: list[Member], rf: int) -> Document:
        """A fresh cluster: every member normal, epoch 1, settled."""
        return cls(1, rf, tuple(Member(m.name, m.url, m.api_url, "normal") for m in members))


class View:
    """Rings and lookups derived from one document (built once per adopted epoch)."""

    def __init__(self, doc: Document, vnodes: int) -> None:
        self.doc = doc
        self.target = Ring(doc.names, doc.rf, vnodes)
        base = doc.base_names()
        self.base = self.target if base == doc.names else Ring(base, doc.rf, vnodes)
        self.by_name = {m.name: m for m in doc.members}
        self.transitioning = self.base is not self.target

    def changes(self) -> list[RangeChange]:
        return diff(self.base, self.target) if self.transitioning else []


def describe(old: Document | None, new: Document) -> str:
    """One line saying what changed, for Kubernetes Events, launcher logs and the node's
    membership history (`GET /v1/cluster/history`)."""
    if old is None:
        return f"epoch {new.epoch}: cluster formed with {', '.join(new.names)} (rf={new.rf})"
    parts: list[str] = []
    before = {m.name: m for m in old.members}
    after = {m.name: m for m in new.members}
    parts += [f"{n} removed" for n in sorted(before.keys() - after.keys())]
    parts += [f"{n} joined ({after[n].state})" for n in sorted(after.keys() - before.keys())]
    for name in sorted(before.keys() & after.keys()):
        b, a = before[name], after[name]
        if b.state != a.state:
            parts.append(f"{name} {'promoted' if a.state == 'normal' else 'demoted'} to {a.state}")
        if (b.url, b.api_url) != (a.url, a.api_url):
            parts.append(f"{name} moved to {a.url}")
    if new.settled and not old.settled:
        parts.append("settled")
    if not parts:
        parts.append(f"re-issued (was epoch {old.epoch})")
    return f"epoch {new.epoch}: {', '.join(parts)}"


def load(path: str) -> Document | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return Document.from_json(json.load(fh))
    except FileNotFoundError:
        return None


def save(path: str, doc: Document) -> None:
    """Write atomically: a crash leaves the old or the new document, never half of one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc.to_json(), fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
