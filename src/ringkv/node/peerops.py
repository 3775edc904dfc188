"""What a peer can be asked: every operation of the peer protocol, named and laid out once.

Pure: no I/O, and no import of the node's other modules, so that the operator (which may
use only a few of them) can use it too: it asks nodes for `STATUS`, `MEMBERSHIP` and
`CLEANUP`. The wire stays plain msgpack lists: the builders are plain functions that
return the list (or the method name and its argument), so building an op costs one call,
as the list literal did. The transport's own frames (`hello`, `batch`) are `transport`'s.

Replica ops travel in batch frames (`transport.PeerLink.send`, served by
`replica.LocalReplica.batch` and `.send`), each a list `[kind, key or record, arg]`:

  write_op(record, refuse)  [WRITE, wire record, refuse]
                            -> None (stored) | [hlc, node] (the newer version it holds;
                               a refusal if `refuse`, else the same as None: a merge)
  read_op(key, full)        [READ, key, full]
                            -> None | wire record (`full`) | [hlc, node, tombstone, expires]
  paxos.prepare_op          [PREPARE, key, [hlc, node, recent]] -> a promise
  paxos.accept_op           [ACCEPT, key, [hlc, node, proposal]] -> None | [hlc, node]
  paxos.commit_op           [COMMIT, key, [hlc, node, proposal]] -> None

The Paxos ops are built and parsed in `paxos` (their argument is a ballot and a proposal,
which that module defines and checks); their kinds are named here.

Unbatched RPCs (`transport.PeerLink.call`, one frame each, served by the handler table of
`service.NodeService.internal_handlers`; `NodeService.call` serves this node itself) are a
`Request`: the method name and its argument. The builders below make them, and the
`*_args` functions are how the handlers read the argument back:

  membership(doc)                      a membership document to adopt
                                       -> {"adopted": bool, "epoch": int}
  status(fresh)                        -> the node's status (`NodeService.status`)
  stats(since)                         -> the node's counters and rates (`NodeService.stats`)
  list_keys(prefix, after, limit)      -> [[key, hlc, node, tombstone, expires], ...]
  scan(lo, hi, after, limit)           a page of a token range's records -> [wire record, ...]
  versions(lo, hi, after, limit)       ... its keys' versions -> [[token, key, hlc, node], ...]
  paxos_scan(lo, hi, after, limit)     ... its Paxos states -> [[key, *paxos.state_row], ...]
  digest(lo, hi, buckets)              a range's bucket digests -> [int, ...]
  fetch(keys)                          -> [wire record, ...] of those it holds
  cleanup(epoch)                       drop copies this node no longer replicates -> count
  backup_report(report)                a finished backup's report -> whether it was kept

A page's `after` is the (token, key) cursor of the last entry of the previous page, or None.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

# -- replica ops (batched) -------------------------------------------------------------------
WRITE, READ = "w", "r"
PREPARE, ACCEPT, COMMIT = "pp", "pa", "pc"
PAXOS_OPS = frozenset({PREPARE, ACCEPT, COMMIT})


class Wired(Protocol):
    """A record, as far as a write op needs it (`records.Record`)."""

    def to_wire(self) -> tuple[Any, ...]: ...


def write_op(record: Wired, refuse: bool) -> list[Any]:
    """Store `record` if it is newer than what the replica holds, which answers with the
    newer version otherwise. With `refuse` (a client write) that answer is a refusal
    (rule 2); without (read repair, hint replay, a restore) the op is a merge and the answer
    counts as an ack. The replica stores the same either way: the flag is for whoever reads
    the answer."""
    return [WRITE, record.to_wire(), refuse]


def read_op(key: bytes, full: bool) -> list[Any]:
    """Read a key: the record itself if `full`, else only its version (a digest read)."""
    return [READ, key, full]


# -- unbatched RPCs --------------------------------------------------------------------------
MEMBERSHIP = "membership"
STATUS = "status"
STATS = "stats"
LIST = "list"
SCAN = "scan"
VERSIONS = "versions"
PAXOS_SCAN = "paxos_scan"
DIGEST = "digest"
FETCH = "fetch"
CLEANUP = "cleanup"
BACKUP_REPORT = "backup_report"
RPCS = frozenset({MEMBERSHIP, STATUS, STATS, LIST, SCAN, VERSIONS, PAXOS_SCAN, DIGEST, FETCH,
                  CLEANUP, BACKUP_REPORT})

# The most entries one page answers, whatever its `limit` asks (scan, versions, paxos_scan,
# fetch), and the most buckets one digest has.
MAX_PAGE = 5000
MAX_BUCKETS = 4096

Cursor = tuple[int, bytes]  # (token, key): where the next page of a range starts


class Request(NamedTuple):
    """One unbatched RPC: its method and its argument, as `PeerLink.call` sends them."""

    method: str
    args: Any


class Page(NamedTuple):
    """The argument of a page of a token range (scan, versions, paxos_scan), as read."""

    lo: int
    hi: int
    after: Cursor | None
    limit: int


def membership(doc: dict[str, Any]) -> Request:
    return Request(MEMBERSHIP, doc)


def status(fresh: bool = False) -> Request:
    """`fresh`: exact counts, not the cached ones (`NodeService.counts`)."""
    return Request(STATUS, {"fresh": True} if fresh else None)


def status_args(args: Any) -> bool:
    """Whether a status request asks for fresh counts."""
    return isinstance(args, dict) and bool(args.get("fresh"))


def stats(since: int | None) -> Request:
    """The rates since `since` (ms since the epoch), or all of them."""
    return Request(STATS, since)


def stats_args(args: Any) -> int | None:
    return args if type(args) is int else None


def list_keys(prefix: bytes, after: bytes | None, limit: int) -> Request:
    return Request(LIST, [prefix, after, limit])


def list_args(args: Any) -> tuple[bytes, bytes | None, int]:
    prefix, after, limit = args
    return prefix, after, int(limit)


def _page(method: str, lo: int, hi: int, after: Cursor | None, limit: int) -> Request:
    return Request(method, [lo, hi, after, limit])


def scan(lo: int, hi: int, after: Cursor | None, limit: int) -> Request:
    return _page(SCAN, lo, hi, after, limit)


def versions(lo: int, hi: int, after: Cursor | None, limit: int) -> Request:
    return _page(VERSIONS, lo, hi, after, limit)


def paxos_scan(lo: int, hi: int, after: Cursor | None, limit: int) -> Request:
    return _page(PAXOS_SCAN, lo, hi, after, limit)


def page_args(args: Any) -> Page:
    """The argument of scan, versions and paxos_scan; `limit` at most MAX_PAGE."""
    lo, hi, after, limit = args
    return Page(lo, hi, None if after is None else (after[0], after[1]),
                min(int(limit), MAX_PAGE))


def digest(lo: int, hi: int, buckets: int) -> Request:
    return Request(DIGEST, [lo, hi, buckets])


def digest_args(args: Any) -> tuple[int, int, int]:
    """(lo, hi, buckets), buckets at most MAX_BUCKETS."""
    lo, hi, buckets = args
    return lo, hi, min(int(buckets), MAX_BUCKETS)


def fetch(keys: list[bytes]) -> Request:
    return Request(FETCH, keys)


def fetch_args(args: Any) -> list[bytes]:
    """The keys asked for, at most MAX_PAGE."""
    return list(args)[:MAX_PAGE]


def cleanup(epoch: int) -> Request:
    """Drop the copies the ring of `epoch` no longer puts on this node."""
    return Request(CLEANUP, epoch)


def cleanup_args(args: Any) -> int:
    return int(args)


def backup_report(report: dict[str, Any]) -> Request:
    """A finished backup's report, as `backup.Report` writes it to JSON."""
    return Request(BACKUP_REPORT, report)
