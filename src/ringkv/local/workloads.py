"""What the clients of ``ringkv check`` do: the operations, timed, and how an error
becomes an outcome the checker understands (:mod:`ringkv.client.history`).

Two workloads, one worker loop (:func:`run_worker`):

* ``register``: reads and plain writes at the chosen consistency, checked against
  ringkv's rules for quorum reads and writes (no stale read, no lost or reordered write).
* ``cas``: a Jepsen-style register per key with read, write and compare-and-set, checked
  for linearizability. Every operation goes through a Paxos round
  (docs/ARCHITECTURE.md, "A conditional write"): reads and blind writes at
  ``consistency=serial``, compare-and-sets as ``PUT`` with ``If-Match`` on the version
  this worker last saw of the key, or ``If-None-Match: *`` when it last saw it absent.
  Quorum reads are left out of this model: their read repair is asynchronous, so two
  quorum reads during a commit may see the new record and then the old one (allowed by
  rule 1, not linearizable); and plain writes are left out because a plain write
  concurrent with conditional ones may be ordered either way (the documented mixing
  rule). The register workload checks both.

A thread stamps ``time.monotonic()`` right around one call and does nothing else, so an
operation's interval is the call plus scheduling noise; noise only widens intervals,
which can hide a violation but never invent one.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ringkv.client.errors import (
    BadRequest,
    ConflictRetryExhausted,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    RingkvError,
    Unauthorized,
    Unavailable,
)
from ringkv.client.history import Kind, Op, Outcome
from ringkv.client.syncclient import Client

WORKLOADS = ("register", "cas")
SERIAL = "serial"
# Of the cas workload's writes, the share that are compare-and-sets (the rest are blind
# serial writes, so a cas often meets a value it did not read).
CAS_SHARE = 0.8
FAILURE_PAUSE = 0.05

# Errors after which the server definitely did not apply a write: a 4xx, and a conditional
# write that won no Paxos round before its deadline ("nothing was written").
_NOT_APPLIED = (BadRequest, Unauthorized, PayloadTooLarge, PreconditionFailed, NotFound,
                ConflictRetryExhausted)

# What a worker last saw of a key: (value, version); (None, None) when it was absent.
Seen = tuple[str | None, str | None]


def classify(kind: Kind, exc: RingkvError) -> Outcome:
    """The outcome of an operation that raised ``exc``.

    Only an answer that rules the write out is ``fail``: a 4xx, a request that never left
    the client, or ``conflict_retry_exhausted``. A 503 (quorum unavailable, outcome
    unknown), a 5xx, a timeout or a dropped connection may have left the write on some
    replica: ``unknown``.
    """
    if isinstance(exc, _NOT_APPLIED):
        return "fail"
    if isinstance(exc, Unavailable):
        if kind != "read":
            return "unknown" if exc.maybe_applied or exc.status is not None else "fail"
        return "unknown" if exc.timed_out else "fail"
    return "unknown"


def _error(exc: RingkvError) -> str:
    """The error code recorded in the history (``timeout`` told from other transport failures)."""
    return "timeout" if isinstance(exc, Unavailable) and exc.timed_out else exc.code


@dataclass
class Workload:
    """What the workers do and where. ``cas_share`` > 0 makes that share of the writes
    compare-and-sets (the cas workload)."""

    urls: list[str]
    token: str | None
    timeout: float
    keys: list[str]
    read_ratio: float
    consistency: str | None
    seed: int
    t0: float
    cas_share: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)

    def clients(self) -> list[Client]:
        """One single-attempt client per node. Each operation goes to a random node, so
        every node coordinates all along; a client's own failover would settle on the
        nodes that never failed and spare the faulted one once it is back."""
        return [Client(url, token=self.token, timeout=self.timeout, attempts=1) for url in self.urls]


def read_op(
    client: Client, process: int, key: str, consistency: str | None, t0: float, final: bool = False,
    on_error: Callable[[RingkvError], None] | None = None,
) -> Op:
    """One GET, timed around the call; ``on_error`` sees the error of one that failed."""
    value: str | None = None
    version: str | None = None
    outcome: Outcome = "ok"
    error: str | None = None
    invoke = time.monotonic()
    try:
        entry = client.get(key, consistency=consistency)
    except NotFound:
        pass
    except RingkvError as exc:
        outcome, error = classify("read", exc), _error(exc)
        if on_error is not None:
            on_error(exc)
    else:
        value, version = entry.value.decode("utf-8", "replace"), entry.version or None
    complete = time.monotonic()
    return Op(process, "read", key, value, version, invoke - t0, complete - t0, outcome, final,
              error=error)


def write_op(
    client: Client, process: int, key: str, value: str, consistency: str | None, t0: float,
    on_error: Callable[[RingkvError], None] | None = None,
) -> Op:
    """One PUT of a unique value, timed around the call; ``on_error`` as for reads."""
    version: str | None = None
    outcome: Outcome = "ok"
    error: str | None = None
    invoke = time.monotonic()
    try:
        version = client.put(key, value, consistency=consistency)
    except RingkvError as exc:
        outcome, error = classify("write", exc), _error(exc)
        if on_error is not None:
            on_error(exc)
    complete = time.monotonic()
    return Op(process, "write", key, value, version, invoke - t0, complete - t0, outcome, error=error)


def cas_op(client: Client, process: int, key: str, value: str, seen: Seen, t0: float) -> Op:
    """One compare-and-set of a unique value, timed around the call: ``If-Match`` the
    version seen, or ``If-None-Match: *`` when the key was seen absent."""
    expected, etag = seen
    version: str | None = None
    outcome: Outcome = "ok"
    error: str | None = None
    invoke = time.monotonic()
    try:
        version = client.put(key, value, if_match=etag, if_none_match=etag is None)
    except RingkvError as exc:
        outcome, error = classify("cas", exc), _error(exc)
    complete = time.monotonic()
    return Op(process, "cas", key, value, version, invoke - t0, complete - t0, outcome,
              expected=expected, error=error)


def run_worker(work: Workload, process: int, out: list[Op]) -> None:
    """Random reads and writes of unique values ``<worker>-<seq>`` until ``work.stop``.
    With ``cas_share``, a write is a compare-and-set against what this worker last saw of
    the key, and a key it has no current sight of (never read, or its last operation on
    it failed) is read first, as a client doing read-modify-write would."""
    rng = random.Random(f"{work.seed}-{process}")
    seq = 0
    seen: dict[str, Seen] = {}
    clients = work.clients()
    try:
        while not work.stop.is_set():
            client, key = rng.choice(clients), rng.choice(work.keys)
            if rng.random() < work.read_ratio or (work.cas_share and key not in seen):
                op = read_op(client, process, key, work.consistency, work.t0)
            else:
                seq += 1
                value = f"{process}-{seq}"
                if rng.random() < work.cas_share:
                    op = cas_op(client, process, key, value, seen[key], work.t0)
                else:
                    op = write_op(client, process, key, value, work.consistency, work.t0)
            out.append(op)
            if op.outcome == "ok":
                seen[key] = (op.value, op.version)
            else:
                seen.pop(key, None)
                if not op.refused:  # a refused connection fails at once: do not spin
                    work.stop.wait(FAILURE_PAUSE)
    finally:
        for client in clients:
            client.close()


def final_reads(work: Workload, timeout: float) -> list[Op]:
    """A read of every key (serial in the cas workload, else quorum), each retried until
    it answers or ``timeout`` passes."""
    level = SERIAL if work.consistency == SERIAL else "quorum"
    deadline = time.monotonic() + timeout
    ops: list[Op] = []
    with Client(work.urls, token=work.token, timeout=work.timeout) as client:
        for key in work.keys:
            while True:
                op = read_op(client, -1, key, level, work.t0, final=True)
                if op.outcome == "ok" or time.monotonic() >= deadline:
                    break
                time.sleep(0.2)
            ops.append(op)
    return ops
