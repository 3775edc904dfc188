"""The membership controller: pure functions from what is observed to the next document.

Both the local launcher and the kopf operator run this same code (through the reconciler),
so every rule about epochs, joining, promotion and settling lives here and nowhere else.
No I/O and no kopf/aiohttp import: the rules are tested as plain functions.

`next_document` takes one step at a time, in priority order, and the caller loops until
it returns None. One step per call keeps every intermediate document a valid, publishable
epoch (each change bumps the epoch, as DESIGN.md "Epochs" requires) and makes the rules
easy to test one by one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from ringkv.node.membership import Document, Member


@dataclass(frozen=True)
class Observed:
    """A node as the member source sees it (a launcher child, or a Kubernetes pod).

    `alive` is "Running and not terminating" for a pod, "process running" locally: a pod
    joins once Running, not Ready, because readiness itself needs membership.
    """

    name: str
    url: str
    api_url: str
    alive: bool


@dataclass(frozen=True)
class Report:
    """A live node's answer to a status poll.

    `caught_up`: it has pulled every range it gained in the target ring of `epoch`.
    `handoff_done`: it has finished streaming for `epoch` (equal to caught_up for a pull
    design; kept separate so a push design needs no API change).
    `settled_epoch_acked`: the highest settled epoch it has acknowledged.
    """

    name: str
    epoch: int
    caught_up: bool
    handoff_done: bool
    settled_epoch_acked: int = 0
    # The document the node holds, when it could tell (see `restore`).
    document: Document | None = None


def alive_nodes(observed: Iterable[Observed]) -> dict[str, Observed]:
    """The alive observed nodes by name.

    A name seen twice (an old terminating pod next to its replacement) counts as alive if
    any entry is alive; among alive entries the last one wins (the newest address).
    """
    out: dict[str, Observed] = {}
    for o in observed:
        if o.alive:
            out[o.name] = o
    return out


def held_document(reports: Mapping[str, Report]) -> Document | None:
    """The newest document any reporting node holds: what the cluster actually runs."""
    docs = [r.document for name, r in reports.items()
            if r.name == name and r.document is not None]
    return max(docs, key=lambda d: d.epoch, default=None)


def restore(stored: Document | None, held: Document | None, seed_epoch: int,
            ours: Document | None) -> Document | None:
    """The nodes' own document (`held`, see `held_document`) re-issued above every epoch
    seen, when the store cannot be trusted; None when it can.

    The nodes only ever adopt what the controller published, so the newest document they
    hold is the membership the cluster runs. A stored document that differs from it was
    lost, rolled back or edited by hand (wrong members, a bogus epoch) unless it is the one
    this controller saved last and the nodes have not all caught up with it yet (a push
    still on its way). Stepping from an edited document could demote or drop a live member
    or promote one that holds no data; re-issuing the nodes' document cannot. The epoch
    goes above the stored one too, so no epoch is ever published with two contents.
    """
    if held is None or stored == held:
        return None
    if stored is not None and stored == ours and stored.epoch >= held.epoch:
        return None
    top = max(seed_epoch, held.epoch, stored.epoch if stored is not None else 0)
    return replace(held, epoch=top + 1)


def _current_reports(doc: Document, reports: Mapping[str, Report]) -> dict[str, Report]:
    """Reports from members of `doc` for exactly its epoch: anything else counts for nothing."""
    members = set(doc.names)
    return {
        name: r
        for name, r in reports.items()
        if name in members and r.name == name and r.epoch == doc.epoch
    }


def next_document(
    current: Document | None,
    observed: Sequence[Observed],
    reports: Mapping[str, Report],
    rf: int,
    seed_epoch: int = 0,
) -> Document | None:
    """The next membership document, or None when nothing should change.

    `reports` maps node name to its latest report; `seed_epoch` is the highest epoch any
    live node reports, so a document is never published at an epoch a node would ignore
    (a lost or rolled-back store). `rf` is only used for a fresh document: an existing
    document keeps its own rf.
    """
    alive = alive_nodes(observed)
    if not alive:
        # Never publish an empty membership: keep the last document until someone is back.
        return None

    if current is None:
        members = tuple(
            Member(o.name, o.url, o.api_url, "normal") for o in sorted(alive.values(),
                                                                      key=lambda o: o.name)
        )
        return Document(max(1, seed_epoch + 1), rf, members, settled=True, base=())

    if seed_epoch > current.epoch:
        # The nodes hold a newer epoch than the store (it was lost or rolled back): nodes
        # ignore anything not newer than what they hold, so re-issue above it first.
        return replace(current, epoch=seed_epoch + 1)

    changed = _membership_change(current, alive)
    if changed is not None:
        return changed

    fresh = _current_reports(current, reports)

    promoted = [
        m.name for m in current.members
        if m.state == "joining" and m.name in fresh and fresh[m.name].caught_up
    ]
    if promoted:
        members = tuple(
            replace(m, state="normal") if m.name in promoted else m for m in current.members
        )
        return Document(current.epoch + 1, current.rf, members, settled=False,
                        base=current.base_names())

    if not current.settled and all(
        m.state == "normal"
        and m.name in fresh
        and fresh[m.name].caught_up
        and fresh[m.name].handoff_done
        for m in current.members
    ):
        return Document(current.epoch + 1, current.rf, current.members, settled=True, base=())

    return None


def _membership_change(current: Document, alive: Mapping[str, Observed]) -> Document | None:
    """Remove dead members, add new or returning ones as joining, refresh addresses.

    Removals and additions in one call collapse into one document. The base is the last
    settled membership: while unsettled it stays put and only the target moves (rule 3).
    A pure address change (a pod rescheduled with a new IP) moves no range, so it keeps
    the settled flag and base as they are.
    """
    kept: list[Member] = []
    readdressed = False
    for m in current.members:
        o = alive.get(m.name)
        if o is None:
            continue
        if (o.url, o.api_url) == (m.url, m.api_url):
            kept.append(m)
        else:
            readdressed = True
            kept.append(replace(m, url=o.url, api_url=o.api_url))
    names = set(current.names)
    added = [Member(o.name, o.url, o.api_url, "joining") for o in alive.values()
             if o.name not in names]
    removed = len(kept) != len(current.members)
    if not (removed or added or readdressed):
        return None
    members = tuple(sorted(kept + added, key=lambda m: m.name))
    if removed or added:
        return Document(current.epoch + 1, current.rf, members, settled=False,
                        base=current.base_names())
    return replace(current, epoch=current.epoch + 1, members=members)


def cleanup_due(doc: Document, reports: Mapping[str, Report]) -> bool:
    """True once `doc` is settled and every member has adopted it (or something newer).

    Only then may nodes drop copies of ranges they no longer own: before that, some member
    may still read from the base ring and need those copies.
    """
    if not doc.settled:
        return False
    for name in doc.names:
        r = reports.get(name)
        if r is None or r.name != name or r.epoch < doc.epoch:
            return False
    return True
