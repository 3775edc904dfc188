"""The membership document and the rings a node derives from it.

The document is the single source of truth about who is in the cluster. Every change
bumps `epoch`; a node ignores a document whose epoch is not higher than the one it holds
and persists the newest. While an epoch is not settled, `base` names the members of the
last settled epoch: coordinators then use two rings (base and target), as correctness
rule 3 requires.

A member's `state` says what its data is worth: `normal` holds its ranges, `joining` may
hold nothing yet (new, or back with a replaced volume) and counts for no read until it has
caught up, `leaving` is being removed on purpose (a scale-in): it is out of the target ring
but still serves its base-ring ranges as a source until the epoch settles, when it leaves
the document. A member that simply vanished is not marked here: the controller keeps it
until its absence outlasts a grace period, then drops it from `members` (it stays in
`base` until the settle). `data_id` names the data the member was admitted with (see
`storage.Storage.data_id`): a node whose data is not the one the document names is not
trusted with reads or as a source. Pure but for `load` and `save`, which keep the document in a JSON file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from .ring import RangeChange, Ring, diff

MemberState = Literal["joining", "normal", "leaving"]
STATES: tuple[str, ...] = ("joining", "normal", "leaving")
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


def intersecting(replicas: int) -> int:
    """How many of a range's `replicas` every quorum write reaches at least one of:
    n - W + 1 (2 of 3, 1 of 2, 3 of 5). Merging from that many, or keeping that many
    alive, keeps every acknowledged write."""
    return replicas - needed("quorum", replicas) + 1


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    url: str  # internal address, "host:port"
    api_url: str  # public address, "http://host:port"
    state: MemberState = "normal"
    data_id: str = ""  # the identity of the data it was admitted with; "" until known

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "url": self.url, "api_url": self.api_url, "state": self.state,
                "data_id": self.data_id}

    @property
    def holds_data(self) -> bool:
        """Whether its copy of its base-ring ranges counts (for reads and as a source)."""
        return self.state != "joining"


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
            raise InvalidDocument("member state must be joining, normal or leaving")
        if self.settled and any(m.state == "leaving" for m in self.members):
            raise InvalidDocument("a settled document has no leaving members")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)

    @property
    def target_names(self) -> tuple[str, ...]:
        """The members of the target ring: everyone but the leaving."""
        return tuple(m.name for m in self.members if m.state != "leaving")

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
                       m.get("state", "normal"), str(m.get("data_id") or ""))
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
        return cls(1, rf, tuple(Member(m.name, m.url, m.api_url, "normal", m.data_id)
                                for m in members))


class View:
    """Rings and lookups derived from one document (built once per adopted epoch)."""

    def __init__(self, doc: Document, vnodes: int) -> None:
        self.doc = doc
        self.target = Ring(doc.target_names, doc.rf, vnodes)
        base = doc.base_names()
        self.base = self.target if base == doc.target_names else Ring(base, doc.rf, vnodes)
        self.by_name = {m.name: m for m in doc.members}
        self.transitioning = self.base is not self.target

    def holders(self, replicas: tuple[str, ...]) -> list[str]:
        """Of a range's base-ring replicas, those whose copy counts: still members (one
        dropped from the document is gone) and not joining (it may hold nothing yet)."""
        by_name = self.by_name
        return [n for n in replicas if (m := by_name.get(n)) is not None and m.holds_data]

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
    for n in sorted(before.keys() - after.keys()):
        parts.append(f"{n} left" if before[n].state == "leaving" else f"{n} removed")
    parts += [f"{n} joined ({after[n].state})" for n in sorted(after.keys() - before.keys())]
    recorded = []
    for name in sorted(before.keys() & after.keys()):
        b, a = before[name], after[name]
        if b.data_id != a.data_id:
            if b.data_id:
                parts.append(f"{name} came back with new data: rebuilding")
            else:
                recorded.append(name)
        if b.state != a.state and not (b.data_id and b.data_id != a.data_id):
            parts.append({"normal": f"{name} promoted to normal" if b.state == "joining"
                          else f"{name} stays (no longer leaving)",
                          "leaving": f"{name} leaving (handing off its ranges)",
                          "joining": f"{name} demoted to joining"}[a.state])
        if (b.url, b.api_url) != (a.url, a.api_url):
            parts.append(f"{name} moved to {a.url}")
    if recorded:
        parts.append(f"data ids recorded for {', '.join(recorded)}")
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
