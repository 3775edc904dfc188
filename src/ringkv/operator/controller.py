"""The membership controller: pure functions from what is observed to the next document.

Both the local launcher and the kopf operator run this same code (through the reconciler),
so every rule about epochs, joining, leaving, promotion and settling lives here and
nowhere else. No I/O and no kopf/aiohttp import: the rules are tested as plain functions.

`next_document` takes one step at a time, in priority order, and the caller loops until
it returns None. One step per call keeps every intermediate document a valid, publishable
epoch (each change bumps the epoch, as DESIGN.md "Epochs" requires) and makes the rules
easy to test one by one.

The rules that keep acknowledged data reachable (issue: never settle without the data):
- A member that vanished stays in the document (its ranges keep their other replicas,
  coordinators store hints for it) until it has been absent for `Policy.down_grace`; a
  restart or a rescheduled pod costs only what it missed. Only then is it dropped, and
  only if every range it replicates keeps a read quorum of live members that hold data
  (`removal_safe`): two members of one replica set gone at once are never dropped by
  themselves; the epoch waits, and says why, until one returns or a person removes one
  explicitly (`Observed.forced`: Cassandra's `removenode`).
- A member the source no longer wants (a StatefulSet scaled in, `ringkv node remove`) that
  is still running becomes `leaving`: out of the target ring, still a source, dropped
  when the epoch settles, so a scale-in hands its data off before the pod goes.
- A member whose data is not the data it was admitted with (`data_id`: a new volume) is
  demoted to `joining` and rebuilds before it counts again.
- A new node (or a removed one back) is added only once it answers a status poll in its
  own name (`admissible`): one observed alive that does not listen yet would be a target
  replica that acknowledges nothing. Only the very first document takes every alive node.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from ringkv.node.membership import Document, Member, View, intersecting


@dataclass(frozen=True)
class Observed:
    """A node as the member source sees it (a launcher child, or a Kubernetes pod).

    `alive` is "Running and not terminating" for a pod, "process running" locally: a pod
    is polled once Running, not Ready, because readiness itself needs membership, and is
    added once its node answers (`admissible`). `expected` is False once the source no
    longer wants the node (an ordinal at or past the StatefulSet's replicas, a launcher
    node being removed): its absence is for good.
    `forced`: a person asked to remove it whatever it costs (Cassandra's `removenode`):
    dropped even where that leaves a range without a read quorum of copies.
    """

    name: str
    url: str
    api_url: str
    alive: bool
    expected: bool = True
    forced: bool = False


@dataclass(frozen=True)
class Report:
    """A live node's answer to a status poll.

    `caught_up`: it has merged every range it must hold for the target ring of `epoch`.
    `settled_epoch_acked`: the highest settled epoch it has acknowledged.
    `data_id`: the identity of the data it serves (see `storage.Storage.data_id`).
    `waiting`: why its catch-up cannot finish (a range with no live replica), in words.
    """

    name: str
    epoch: int
    caught_up: bool
    settled_epoch_acked: int = 0
    # The document the node holds, when it could tell (see `restore`).
    document: Document | None = None
    data_id: str = ""
    waiting: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    """The knobs of the rules: `rf` for a fresh document (an existing one keeps its own),
    `vnodes` as the nodes use them (to find the ranges a member replicates), and how long
    a member may be absent before the survivors restore its copies."""

    rf: int = 3
    vnodes: int = 64
    down_grace: float = 300.0


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


def unwanted(observed: Iterable[Observed]) -> frozenset[str]:
    """Names the source no longer wants (an entry that says `expected=False`)."""
    return frozenset(o.name for o in observed if not o.expected or o.forced)


def forced(observed: Iterable[Observed]) -> frozenset[str]:
    """Names a person asked to remove whatever it costs."""
    return frozenset(o.name for o in observed if o.forced)


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


def _own_reports(reports: Mapping[str, Report]) -> dict[str, Report]:
    """Reports whose node speaks for itself (an address reused by another is ignored)."""
    return {name: r for name, r in reports.items() if r.name == name}


def next_document(
    current: Document | None,
    observed: Sequence[Observed],
    reports: Mapping[str, Report],
    policy: Policy,
    seed_epoch: int = 0,
    absent: Mapping[str, float] | None = None,
) -> Document | None:
    """The next membership document, or None when nothing should change.

    `reports` maps node name to its latest report; `seed_epoch` is the highest epoch any
    live node reports, so a document is never published at an epoch a node would ignore
    (a lost or rolled-back store). `absent` maps a member to the seconds this controller
    has seen it not alive (members it has not timed are not yet overdue).
    """
    alive = alive_nodes(observed)
    if not alive:
        # Never publish an empty membership: keep the last document until someone is back.
        return None
    own = _own_reports(reports)
    # An alive entry speaks for its name (an old terminating pod beside its replacement).
    not_wanted = frozenset(n for n in unwanted(observed) if n not in alive or not alive[n].expected)

    if current is None:
        # The first document takes every alive node, answering or not (unlike an addition,
        # `admissible`): a cluster forming holds no acknowledged write, so a member that
        # listens a few seconds later costs none, while forming from the first to answer
        # would make the others join one by one and stream ranges for nothing. Where the
        # store was lost instead, the nodes' own documents replace this one once they
        # answer (`restore`).
        members = tuple(
            Member(o.name, o.url, o.api_url, "normal",
                   own[o.name].data_id if o.name in own else "")
            for o in sorted(alive.values(), key=lambda o: o.name) if o.expected
        )
        if not members:
            return None
        return Document(max(1, seed_epoch + 1), policy.rf, members, settled=True, base=())

    if seed_epoch > current.epoch:
        # The nodes hold a newer epoch than the store (it was lost or rolled back): nodes
        # ignore anything not newer than what they hold, so re-issue above it first.
        return replace(current, epoch=seed_epoch + 1)

    identified = _identity_change(current, own)
    if identified is not None:
        return identified

    changed = _membership_change(current, alive, not_wanted, own, policy, absent or {},
                                 forced(observed))
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

    if not current.settled and _may_settle(current, alive, fresh, policy):
        staying = tuple(m for m in current.members if m.state != "leaving")
        return Document(current.epoch + 1, current.rf, staying, settled=True, base=())

    return None


def _identity_change(current: Document, own: Mapping[str, Report]) -> Document | None:
    """Record data ids not known yet; demote a member whose data was replaced.

    A node that reports another `data_id` than it was admitted with came back on a new
    volume (or its database file was lost): whatever it holds is not the data the ring
    counts on, so it rejoins as `joining` and rebuilds from its replicas. A leaving member
    with new data has nothing to hand off and goes at once.
    """
    members: list[Member] = []
    replaced = False
    recorded = False
    for m in current.members:
        r = own.get(m.name)
        if r is None or not r.data_id or r.data_id == m.data_id:
            members.append(m)
        elif not m.data_id:
            recorded = True
            members.append(replace(m, data_id=r.data_id))
        else:
            replaced = True
            if m.state != "leaving":
                members.append(replace(m, state="joining", data_id=r.data_id))
    if replaced:
        return Document(current.epoch + 1, current.rf, tuple(members), settled=False,
                        base=current.base_names())
    if recorded:
        return replace(current, epoch=current.epoch + 1, members=tuple(members))
    return None


def _membership_change(
    current: Document,
    alive: Mapping[str, Observed],
    not_wanted: frozenset[str],
    own: Mapping[str, Report],
    policy: Policy,
    absent: Mapping[str, float],
    remove: frozenset[str],
) -> Document | None:
    """Drop members gone for good, hand off the ones leaving on purpose, add new or
    returning ones as joining once they answer (`admissible`), refresh addresses.

    Removals and additions in one call collapse into one document. The base is the last
    settled membership: while unsettled it stays put and only the target moves (rule 3).
    A pure address change (a pod rescheduled with a new IP) moves no range, so it keeps
    the settled flag and base as they are.
    """
    view: View | None = None

    def safe(m: Member) -> bool:
        nonlocal view
        if view is None:
            view = View(current, policy.vnodes)
        return removal_safe(view, m.name, alive.keys())

    kept: list[Member] = []
    moved = False  # a member dropped, leaving or back from leaving
    readdressed = False
    for m in current.members:
        o = alive.get(m.name)
        going = m.name in remove or m.name in not_wanted
        if o is not None:
            if going and m.state == "joining":
                moved = True  # it holds nothing the ring counts on: it goes at once
                continue
            state = ("leaving" if going else "normal" if m.state == "leaving" else m.state)
            moved |= state != m.state
            readdressed |= (o.url, o.api_url) != (m.url, m.api_url)
            kept.append(replace(m, url=o.url, api_url=o.api_url, state=state))
            continue
        if m.name in remove or m.state == "joining":
            drop = going or absent.get(m.name, 0.0) >= policy.down_grace
        elif going:
            drop = safe(m)
        else:
            # Absent but expected back: dropped after the grace, and only where that
            # restores copies (a cluster of rf members has nowhere to put them).
            drop = (absent.get(m.name, 0.0) >= policy.down_grace
                    and len(current.target_names) > current.rf and safe(m))
        if drop:
            moved = True
        else:
            kept.append(m)
    added = [Member(o.name, o.url, o.api_url, "joining", own[o.name].data_id)
             for o in admissible(current, alive, own, remove)]
    if all(m.state == "leaving" for m in kept + added):
        return None  # never hand everything off: someone must stay to hold the data
    if not (moved or added or readdressed):
        return None
    members = tuple(sorted(kept + added, key=lambda m: m.name))
    if moved or added:
        return Document(current.epoch + 1, current.rf, members, settled=False,
                        base=current.base_names())
    return replace(current, epoch=current.epoch + 1, members=members)


def _newcomers(current: Document, alive: Mapping[str, Observed],
               remove: frozenset[str]) -> list[Observed]:
    """Alive nodes the source wants that are not members."""
    names = set(current.names)
    return [o for o in alive.values()
            if o.name not in names and o.expected and o.name not in remove]


def admissible(current: Document, alive: Mapping[str, Observed], own: Mapping[str, Report],
               remove: frozenset[str] = frozenset()) -> list[Observed]:
    """The alive, wanted nodes that are not members and may be added: those that answered
    a status poll in their own name (`own`), so they listen and serve from the epoch that
    admits them (Cassandra adds a node to the ring only once it gossips).

    A node observed alive (a Running pod, a started process) may not listen for seconds
    yet. Admitted then, it would sit in the target ring without answering: a range whose
    target replicas include two such nodes has one replica that can acknowledge a write,
    and every quorum write there fails until both serve (two added at once). A member
    that was removed and comes back is a new node again, under the same rule.
    """
    return [o for o in _newcomers(current, alive, remove) if o.name in own]


def unanswered(current: Document, observed: Sequence[Observed],
               reports: Mapping[str, Report]) -> list[str]:
    """Alive, wanted nodes not added yet because they have not answered in their own name
    (see `admissible`)."""
    own = _own_reports(reports)
    return sorted(o.name for o in _newcomers(current, alive_nodes(observed), forced(observed))
                  if o.name not in own)


def removal_safe(view: View, name: str, alive: Iterable[str]) -> bool:
    """Whether dropping the absent member `name` keeps, for every range it replicates in
    the base ring, enough other base replicas that are alive and hold data to meet every
    write quorum (`intersecting`: R of them for an odd rf).

    Then every acknowledged write (on W of the range's replicas) is on at least one of
    them, and whoever gains the range can merge it before the epoch settles. Fewer, and
    the epoch would settle on copies that may lack acknowledged writes.
    """
    live = set(alive)
    for _rng, reps in view.base.segments():
        if name not in reps:
            continue
        holders = [n for n in view.holders(reps) if n != name and n in live]
        if len(holders) < intersecting(len(reps)):
            return False
    return True


def _may_settle(current: Document, alive: Mapping[str, Observed],
                fresh: Mapping[str, Report], policy: Policy) -> bool:
    """Every target member is normal; every one that is alive has merged what it gained
    for this epoch; and no absent member gained a range (nobody has merged it yet)."""
    absent_gainers: set[str] | None = None
    for m in current.members:
        if m.state == "leaving":
            continue
        if m.state != "normal":
            return False
        if m.name in alive:
            if m.name not in fresh or not fresh[m.name].caught_up:
                return False
            continue
        if absent_gainers is None:
            absent_gainers = gainers(current, policy.vnodes)
        if m.name in absent_gainers:
            return False
    return True


def gainers(doc: Document, vnodes: int) -> set[str]:
    """Members that must merge a range for the target ring (`RangeChange.mergers`)."""
    view = View(doc, vnodes)
    return {n for change in view.changes() for n in change.mergers}


def cleanup_due(doc: Document, reports: Mapping[str, Report], alive: Iterable[str]) -> bool:
    """True once `doc` is settled and every alive member has adopted it (or something newer).

    Only then may nodes drop copies of ranges they no longer own: before that, some member
    may still read from the base ring and need those copies. An absent member adopts the
    newer epoch from the first peer it talks to (a stale-epoch answer), before any read of
    its own counts, and is cleaned up when it reports it.
    """
    if not doc.settled:
        return False
    live = set(alive)
    for name in doc.names:
        if name not in live:
            continue
        r = reports.get(name)
        if r is None or r.name != name or r.epoch < doc.epoch:
            return False
    return True


def waiting(doc: Document, observed: Sequence[Observed], reports: Mapping[str, Report],
            policy: Policy, absent: Mapping[str, float]) -> list[str]:
    """Why the membership cannot move on, in words (for Events, logs and `/v1/cluster`):
    absent members that cannot be dropped without losing a range's last live copies,
    absent members that gained ranges, what live members say blocks their catch-up, and
    new nodes not added because they do not answer yet."""
    alive = alive_nodes(observed)
    not_wanted = unwanted(observed)
    view = View(doc, policy.vnodes)
    out: list[str] = []
    for m in doc.members:
        if m.name in alive:
            continue
        overdue = m.name in not_wanted or absent.get(m.name, 0.0) >= policy.down_grace
        if overdue and m.state != "joining" and not removal_safe(view, m.name, alive):
            out.append(f"{m.name} is gone, but dropping it would leave ranges with fewer live "
                       f"copies than a read quorum: waiting for it to return (or remove it "
                       f"explicitly, accepting the loss of writes only it and other absent "
                       f"members hold)")
    if not doc.settled:
        gained = gainers(doc, policy.vnodes)
        out += [f"{m.name} gained ranges but is absent: waiting for it to return or to be "
                f"dropped" for m in doc.members
                if m.name not in alive and m.name in gained and m.state != "leaving"]
        fresh = _current_reports(doc, reports)
        for m in doc.members:
            if m.name in fresh:
                out += [f"{m.name}: {line}" for line in fresh[m.name].waiting]
    out += [f"{name}: not answering yet (it is added to the membership once it answers a "
            f"status poll in its own name)" for name in unanswered(doc, observed, reports)]
    return out

