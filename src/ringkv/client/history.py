"""A Jepsen-style history of client operations and a checker for ringkv's guarantees.

Pure functions over recorded operations, no I/O: ``ringkv check`` records a history
against a live cluster (:mod:`ringkv.local.check`) and hands it here; tests hand-build
histories. Every written value is unique, so a value read names the write that produced
it, and every acknowledged write reports its version, so the checker compares versions
(``(int(hlc), node)``) instead of searching for a linearization.

What it checks per key (DESIGN.md correctness rules 1, 2 and 5):

* ``stale-read``: an ok read returned an older version (or not-found) than an ok write
  that completed before the read was invoked (rule 1).
* ``lost-write``: a final read, taken after every fault healed, returned an older version
  than some acknowledged write (rules 1 and 5).
* ``reordered-writes``: an ok write invoked after another ok write completed got a version
  that is not newer (rule 2).
* ``phantom-read``: an ok read returned a value no write to that key ever invoked, or one
  whose write was invoked only after the read completed.
* ``corrupt-read``: a read paired a value with a version other than the one its ok write
  got (except the note below).
* ``aborted-read``: an ok read returned the value of a write that definitely failed.
* ``bad-version``: a version that does not parse, or is missing where one is required.
* ``missing-final-read``: final reads were given, but a key with acknowledged writes has
  no ok final read, so ``lost-write`` could not be checked for it.

An ``unknown`` write (timeout, dropped connection, 503 after it may have reached replicas)
may take effect at any time after its invocation, or never; the checker constrains it
only through the versions reads report for its value.

A compare-and-set (``cas``: a PUT with ``If-Match`` on a version read, or ``If-None-Match:
*``) is a write for the rules above; one refused with 412 definitely failed. With
``linearizable=True`` (``ringkv check --workload cas``: every write decided by Paxos, every
read serial) each key's history must also be linearizable as a register
(:mod:`ringkv.client.linearizable`), else ``not-linearizable`` names the operation no
order could place in time and the operations around it. A search that gives up (its step
budget spent) is ``unchecked``: a history is never called valid unproven.

Notes are anomalies the design allows, reported without making the history invalid:

* ``superseded-version``: a read that overlapped a write saw the written value at an older
  version than the write's acknowledgement. Rule 2's retry does this: a replica that
  accepted the refused first attempt serves it until the retry's newer version lands.
  A value read at a newer version, or after its write was acknowledged, is corrupt.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Literal, cast

from .linearizable import INFINITY, Step
from .linearizable import check as find_linearization

Kind = Literal["write", "read", "cas"]
Outcome = Literal["ok", "fail", "unknown"]
KINDS: tuple[Kind, ...] = ("write", "read", "cas")
OUTCOMES: tuple[Outcome, ...] = ("ok", "fail", "unknown")
VersionKey = tuple[int, str]

SUMMARY_VIOLATIONS = 10
REFUSED = "precondition_failed"  # the error code of a cas answered 412
# A not-linearizable report shows this many operations that completed before the one no
# order could place (the state it met comes from them) beside the ones that overlap it.
CONTEXT_OPS = 12
SEARCH_BUDGET = 2_000_000  # steps of the linearizability search per key
NOTE_KINDS = frozenset({"superseded-version"})


def parse_version(version: str) -> VersionKey:
    """``<hlc>.<node>`` as its sort key ``(hlc, node)``; raises ValueError otherwise."""
    hlc, dot, node = version.partition(".")
    if not dot or not hlc.isdigit() or not node:
        raise ValueError(f"not a version: {version[:64]!r}")
    return int(hlc), node


@dataclass(frozen=True)
class Op:
    """One client operation.

    Writes and cas: ``value`` is the unique value written, ``version`` what the server
    answered (ok only); a cas compared with ``expected`` (None: the key absent). Reads:
    ``value``/``version`` as read, both None for not-found. ``complete`` is when the
    answer came or the client gave up (None: never); the checker ignores it for unknown
    operations, which may take effect later. ``final`` marks the reads taken after the
    faults healed, which the lost-write check uses. ``error`` is the error code of an
    operation that did not succeed (``precondition_failed``: a cas refused with 412).
    """

    process: int
    kind: Kind
    key: str
    value: str | None
    version: str | None
    invoke: float
    complete: float | None
    outcome: Outcome
    final: bool = False
    expected: str | None = None
    error: str | None = None

    @property
    def refused(self) -> bool:
        """A cas answered 412: it found another value and definitely set nothing."""
        return self.kind == "cas" and self.error == REFUSED

    @property
    def served(self) -> bool:
        """Answered ok, or refused with 412: either way the cluster was there to decide."""
        return self.outcome == "ok" or self.refused

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (one line of a history file)."""
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> Op:
        """The inverse of :meth:`to_json`; raises ValueError on a malformed document."""
        kind, outcome = doc.get("kind"), doc.get("outcome")
        if kind not in KINDS or outcome not in OUTCOMES:
            raise ValueError(f"not an operation: {dict(doc)!r}")
        complete = doc.get("complete")
        missing = {"process", "key", "invoke"} - doc.keys()
        if missing:
            raise ValueError(f"an operation without {', '.join(sorted(missing))}: {dict(doc)!r}")
        return cls(
            process=int(cast(int, doc["process"])),
            kind=kind,
            key=str(doc["key"]),
            value=_opt_str(doc.get("value")),
            version=_opt_str(doc.get("version")),
            invoke=float(cast(float, doc["invoke"])),
            complete=None if complete is None else float(cast(float, complete)),
            outcome=outcome,
            final=bool(doc.get("final", False)),
            expected=_opt_str(doc.get("expected")),
            error=_opt_str(doc.get("error")),
        )

    def describe(self, start: float = 0.0) -> str:
        """One line: who did what, what came back, and when (relative to ``start``)."""
        who = "final" if self.final else f"p{self.process}"
        if self.kind == "write":
            what = f"write {self.key!r} := {self.value!r}"
            result = f" -> {self.version}" if self.version else ""
        elif self.kind == "cas":
            expected = "absent" if self.expected is None else repr(self.expected)
            what = f"cas   {self.key!r} := {self.value!r} if {expected}"
            result = f" -> {self.version}" if self.version else " -> 412" if self.refused else ""
        else:
            what = f"read  {self.key!r}"
            if self.outcome != "ok":
                result = ""
            elif self.value is None:
                result = " -> not found"
            else:
                result = f" -> {self.value!r} @ {self.version}"
        end = "..." if self.complete is None else f"{self.complete - start:.3f}s"
        return f"{who:>5} {what}{result}  [{self.invoke - start:.3f}s .. {end}] {self.outcome}"


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class Violation:
    """One broken guarantee and the operations that show it."""

    kind: str
    key: str
    message: str
    ops: tuple[Op, ...]

    @property
    def time(self) -> float:
        """When the evidence starts (used to order the report)."""
        return min((op.invoke for op in self.ops), default=0.0)


@dataclass
class Verdict:
    """What :func:`check` found: counts, violations, and a readable summary."""

    counts: dict[str, dict[str, int]]
    keys: int
    acknowledged_writes: int
    final_reads: int
    violations: list[Violation]
    notes: list[Violation] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0
    refused: int = 0  # cas answered 412
    by_kind: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.violations.sort(key=lambda v: v.time)
        self.notes.sort(key=lambda v: v.time)
        self.by_kind = dict(Counter(v.kind for v in self.violations))

    @property
    def valid(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        """Counts, the verdict, then the first violations with their operations."""
        total = sum(sum(c.values()) for c in self.counts.values())
        lines = [
            f"history: {total} operations on {self.keys} keys over {self.end - self.start:.1f}s",
        ]
        for kind in KINDS:
            c = self.counts.get(kind, {})
            if kind == "cas" and not any(c.values()):
                continue
            refused = f" ({self.refused} refused with 412)" if kind == "cas" else ""
            lines.append(
                f"  {_PLURAL[kind]:<7}{c.get('ok', 0):>7} ok {c.get('unknown', 0):>6} unknown "
                f"{c.get('fail', 0):>6} failed{refused}"
            )
        lines.append(f"  acknowledged writes: {self.acknowledged_writes}, final reads: {self.final_reads}")
        for note, n in sorted(Counter(v.kind for v in self.notes).items()):
            first = next(v for v in self.notes if v.kind == note)
            lines.append(f"note: {n} x {note} (allowed by the design), first: {first.message}")
        if self.valid:
            lines.append("result: VALID (no violations)")
            return "\n".join(lines)
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(self.by_kind.items()))
        lines.append(f"result: INVALID, {len(self.violations)} violations ({kinds})")
        shown = self.violations[:SUMMARY_VIOLATIONS]
        if len(self.violations) > len(shown):
            lines.append(f"first {len(shown)} violations (times relative to the first operation):")
        for n, v in enumerate(shown, 1):
            lines.append(f"{n:>3}. {v.kind} on {v.key!r}: {v.message}")
            lines.extend(f"       {op.describe(self.start)}" for op in v.ops)
        return "\n".join(lines)


_PLURAL = {"write": "writes", "read": "reads", "cas": "cas"}


def check(ops: Iterable[Op], final_reads: Iterable[Op] | None = None, *,
          linearizable: bool = False) -> Verdict:
    """Check a history. Final reads come flagged ``final`` in ``ops``, or separately in
    ``final_reads`` (then they count as final whatever their flag); without any, the
    lost-write check is skipped. ``linearizable``: also search each key's history for a
    linearization (every operation of it, final reads included, must be atomic)."""
    history: list[Op] = []
    finals: list[Op] = []
    for op in ops:
        (finals if op.final else history).append(op)
    finals.extend(replace(op, final=True) for op in final_reads or ())
    check_final = bool(finals)

    counts: dict[str, dict[str, int]] = {kind: dict.fromkeys(OUTCOMES, 0) for kind in KINDS}
    for op in history:
        counts[op.kind][op.outcome] += 1
    by_key: dict[str, list[Op]] = defaultdict(list)
    final_by_key: dict[str, list[Op]] = defaultdict(list)
    for op in history:
        by_key[op.key].append(op)
    for op in finals:
        final_by_key[op.key].append(op)

    violations: list[Violation] = []
    notes: list[Violation] = []
    for key in sorted(by_key.keys() | final_by_key.keys()):
        for found in _check_key(key, by_key[key], final_by_key[key], check_final):
            (notes if found.kind in NOTE_KINDS else violations).append(found)
        if linearizable:
            violations.extend(_not_linearizable(key, by_key[key] + final_by_key[key]))
    everything = history + finals
    return Verdict(
        counts=counts,
        keys=len(by_key.keys() | final_by_key.keys()),
        acknowledged_writes=counts["write"]["ok"] + counts["cas"]["ok"],
        final_reads=sum(op.outcome == "ok" for op in finals),
        violations=violations,
        notes=notes,
        start=min((op.invoke for op in everything), default=0.0),
        end=max((op.invoke if op.complete is None else op.complete for op in everything), default=0.0),
        refused=sum(op.refused for op in history),
    )


def availability(ops: Iterable[Op], windows: Iterable[tuple[float, float | None]]) -> tuple[int, int]:
    """``(served, attempted)`` over the non-final operations invoked inside any window
    (``start <= invoke <= end``; an end of None is a window still open): how much of
    the load a fault let through (served: ok, or a cas refused with 412)."""
    spans = [(start, float("inf") if end is None else end) for start, end in windows]
    inside = [op for op in ops if not op.final and any(a <= op.invoke <= b for a, b in spans)]
    return sum(op.served for op in inside), len(inside)


@dataclass(frozen=True)
class _Versioned:
    """An ok operation whose version parsed (None: a not-found read)."""

    op: Op
    version: VersionKey | None


def _versioned(key: str, ops: Iterable[Op], out: list[Violation]) -> list[_Versioned]:
    """Parse the versions of ok operations; the malformed ones become violations."""
    good: list[_Versioned] = []
    for op in ops:
        if op.outcome != "ok":
            continue
        if op.version is None:
            if op.kind == "read" and op.value is None:
                good.append(_Versioned(op, None))
            else:
                what = "an acknowledged write" if op.kind == "write" else "a read value"
                out.append(Violation("bad-version", key, f"{what} came without a version", (op,)))
            continue
        if op.kind == "read" and op.value is None:
            out.append(Violation("bad-version", key, f"not-found read carries version {op.version}", (op,)))
            continue
        try:
            good.append(_Versioned(op, parse_version(op.version)))
        except ValueError:
            out.append(Violation("bad-version", key, f"unparseable version {op.version!r}", (op,)))
    return good


def _check_key(key: str, ops: list[Op], finals: list[Op], check_final: bool) -> list[Violation]:
    out: list[Violation] = []
    writes = [op for op in ops if op.kind != "read"]
    ok_writes = _versioned(key, writes, out)
    reads = _versioned(key, (op for op in ops if op.kind == "read"), out)
    final_reads = _versioned(key, (op for op in finals if op.kind == "read"), out)

    out.extend(_stale_reads(key, ok_writes, reads))
    out.extend(_reordered_writes(key, ok_writes))
    out.extend(_bad_values(key, writes, ok_writes, reads + final_reads))
    if check_final:
        out.extend(_lost_writes(key, ok_writes, final_reads))
    return out


def _done(op: Op) -> float:
    """Completion time; an ok write recorded without one never counts as completed."""
    return float("inf") if op.complete is None else op.complete


def _newest_completed_before(
    ok_writes: list[_Versioned], probes: list[_Versioned]
) -> Iterable[tuple[_Versioned, _Versioned]]:
    """For each probe (by invocation time), the newest ok write that completed before the
    probe was invoked: one sweep instead of comparing every pair."""
    done = sorted(ok_writes, key=lambda w: _done(w.op))
    i = 0
    newest: _Versioned | None = None
    for probe in sorted(probes, key=lambda p: p.op.invoke):
        while i < len(done) and _done(done[i].op) < probe.op.invoke:
            if newest is None or cast(VersionKey, done[i].version) > cast(VersionKey, newest.version):
                newest = done[i]
            i += 1
        if newest is not None:
            yield probe, newest


def _older(read: VersionKey | None, write: VersionKey) -> bool:
    return read is None or read < write


def _stale_reads(key: str, ok_writes: list[_Versioned], reads: list[_Versioned]) -> Iterable[Violation]:
    for read, write in _newest_completed_before(ok_writes, reads):
        if _older(read.version, cast(VersionKey, write.version)):
            seen = "not found" if read.version is None else f"version {read.op.version}"
            yield Violation(
                "stale-read",
                key,
                f"read {seen} after the write of {write.op.version} had been acknowledged",
                (write.op, read.op),
            )


def _reordered_writes(key: str, ok_writes: list[_Versioned]) -> Iterable[Violation]:
    for later, earlier in _newest_completed_before(ok_writes, ok_writes):
        if cast(VersionKey, later.version) <= cast(VersionKey, earlier.version):
            yield Violation(
                "reordered-writes",
                key,
                f"write invoked after {earlier.op.version} was acknowledged got the older "
                f"version {later.op.version}",
                (earlier.op, later.op),
            )


def _bad_values(
    key: str, writes: list[Op], ok_writes: list[_Versioned], reads: list[_Versioned]
) -> Iterable[Violation]:
    """Phantom, aborted and corrupt reads: a read value must belong to a write of this key
    that was invoked before the read completed, and carry the version its write got."""
    write_of = {w.value: w for w in writes if w.value is not None}
    version_of = {w.op.value: w for w in ok_writes if w.op.value is not None}
    for read in sorted(reads, key=lambda r: r.op.invoke):
        value = read.op.value
        if value is None:
            continue
        write = write_of.get(value)
        if write is None:
            message = f"read {value!r}, which no write to this key wrote"
            yield Violation("phantom-read", key, message, (read.op,))
            continue
        if write.invoke > _done(read.op):
            yield Violation(
                "phantom-read", key, f"read {value!r} before its write was invoked", (write, read.op)
            )
        if write.outcome == "fail":
            yield Violation(
                "aborted-read", key, f"read {value!r}, whose write definitely failed", (write, read.op)
            )
        acked = version_of.get(value)
        if acked is None or acked.version == read.version:
            continue
        if _older(read.version, cast(VersionKey, acked.version)) and read.op.invoke < _done(write):
            yield Violation(
                "superseded-version",
                key,
                f"read {value!r} at {read.op.version} while its write was in flight; the write "
                f"was acknowledged at {acked.op.version}",
                (write, read.op),
            )
        else:
            yield Violation(
                "corrupt-read",
                key,
                f"read {value!r} at version {read.op.version}, but it was written at {acked.op.version}",
                (write, read.op),
            )


def _lost_writes(key: str, ok_writes: list[_Versioned], finals: list[_Versioned]) -> Iterable[Violation]:
    if not finals:
        if ok_writes:
            yield Violation(
                "missing-final-read",
                key,
                f"no final read succeeded, so {len(ok_writes)} acknowledged writes are unverified",
                (),
            )
        return
    for final in finals:
        newer = [w for w in ok_writes if _older(final.version, cast(VersionKey, w.version))]
        if newer:
            newest = max(newer, key=lambda w: cast(VersionKey, w.version))
            seen = "not found" if final.version is None else f"version {final.op.version}"
            yield Violation(
                "lost-write",
                key,
                f"final read returned {seen}, older than {len(newer)} acknowledged writes "
                f"(newest {newest.op.version})",
                (newest.op, final.op),
            )


def _step(op: Op) -> Step | None:
    """The operation as the linearizability search sees it; None when it constrains
    nothing (a read without an answer, a write or cas that failed other than by 412)."""
    unknown = op.outcome == "unknown" or op.complete is None
    if op.kind == "read" and (op.outcome != "ok" or op.complete is None):
        return None
    if op.outcome == "fail" and not op.refused:
        return None
    complete = INFINITY if unknown else cast(float, op.complete)
    return Step(op.kind, op.value, op.invoke, complete, op.expected, op.refused)


def _not_linearizable(key: str, ops: list[Op]) -> Iterable[Violation]:
    """The linearizability search over one key; a failure reports the operation no order
    could place, the operations that completed just before it and those overlapping it."""
    pairs = [(op, step) for op in ops if (step := _step(op)) is not None]
    result = find_linearization([step for _, step in pairs], SEARCH_BUDGET)
    if result.ok:
        return
    if result.ok is None:
        yield Violation("unchecked", key, f"the linearizability search gave up after {result.steps:,} "
                        f"steps over {len(pairs)} operations: check a shorter history", ())
        return
    assert result.index is not None
    stuck = pairs[result.index][0]
    before = sorted((op for op, _ in pairs if op.complete is not None and op.outcome != "unknown"
                     and op.complete < stuck.invoke), key=_done)[-CONTEXT_OPS:]
    since = before[0].invoke if before else stuck.invoke
    around = [op for op, _ in pairs if op.invoke <= _done(stuck) and op.invoke >= since
              and op not in before]
    state = "absent" if result.state is None else repr(result.state)
    yield Violation(
        "not-linearizable",
        key,
        f"no order of the {len(pairs)} operations explains {stuck.describe().strip()}: the "
        f"longest order placed {result.placed} of them and left the register {state}",
        tuple(sorted({*before, *around}, key=lambda op: op.invoke)),
    )
