"""The e2e tests' client inside the cluster: bulk load, read-back, traffic and metrics.

`support.Workload` runs this file in a pod of the release's image (`kubectl exec`), so
requests take the path real clients take (the client Service through kube-proxy, or a
node pod's own DNS name) and cost no kubectl process each: 20,000 keys load and read back
in seconds, and traffic through the Service sees what an application in the cluster sees.
Standard library and `ringkv.client` only (the image has nothing else); every command
prints one JSON document on stdout. RINGKV_TOKEN is the API token.

The acknowledged versions live in the pod (`--state`, `--live`), so commands run one after
the other check against what the earlier ones were told:

  load N    write k/00000.. once each (quorum) and remember each acknowledged version
  verify    read every remembered key (quorum); with --until FILE, whole passes again and
            again until FILE exists (at --rate reads/s, if given). A read may return the
            acknowledged version or a newer one, never an older one and never "not found"
            (DESIGN.md rule 1)
  traffic   quorum writes to live/NNN and reads of every remembered key at --rate ops/s,
            checked the same way, until FILE exists; the live keys' newest acknowledged
            versions go to --live
  metrics   each node's counters (records moved, hints) every second until FILE exists,
            summed over restarts the way Prometheus' increase() does
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ringkv.client import AsyncClient, NotFound, RingkvError, Unavailable

COUNTERS = ("ringkv_rebalance_keys_received_total", "ringkv_rebalance_bytes_received_total",
            "ringkv_anti_entropy_records_total", "ringkv_hints_replayed_total")
GAUGES = ("ringkv_rebalance_ranges_left", "ringkv_hints_pending")
SAMPLES = 20  # violations and error messages kept as examples


def version_key(version: str) -> tuple[int, str]:
    """`<hlc>.<node>` -> (hlc, node), the order DESIGN.md gives versions."""
    hlc, _, node = version.partition(".")
    return int(hlc), node


def error_name(exc: RingkvError) -> str:
    """The error's code; a transport failure says which kind (the clue for connection
    failures: `refused` means nothing listened, e.g. a Service without endpoints)."""
    if isinstance(exc, Unavailable):
        kind = ("refused" if exc.refused else "dropped" if exc.dropped
                else "timeout" if exc.timed_out else "other")
        return f"unavailable/{kind}"
    return exc.code


@dataclass
class Tally:
    """Outcomes of checked reads (or writes), with examples of what went wrong."""

    ok: int = 0
    missing: int = 0  # 404 for an acknowledged key
    stale: int = 0  # older than the acknowledged version
    wrong: int = 0  # a value never written to that key
    errors: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    first_error: float | None = None
    last_error: float | None = None

    def violation(self, kind: str, text: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        self.note(text)

    def error(self, exc: RingkvError, key: str) -> None:
        self.errors[error_name(exc)] += 1
        now = time.time()
        self.first_error = self.first_error or now
        self.last_error = now
        self.note(f"{key}: {exc}")

    def note(self, text: str) -> None:
        if len(self.examples) < SAMPLES:
            self.examples.append(text)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "missing": self.missing, "stale": self.stale, "wrong": self.wrong,
                "errors": dict(self.errors), "examples": self.examples,
                "first_error": self.first_error, "last_error": self.last_error}


async def checked_get(tally: Tally, client: AsyncClient, key: str, floor: str | None) -> None:
    """Read `key` and count the outcome against the acknowledged version `floor`."""
    try:
        entry = await client.get(key)
    except NotFound:
        if floor is None:
            tally.ok += 1
        else:
            tally.violation("missing", f"{key}: not found, but {floor} was acknowledged")
        return
    except RingkvError as exc:
        tally.error(exc, key)
        return
    if floor is not None and version_key(entry.version) < version_key(floor):
        tally.violation("stale", f"{key}: {entry.version} is older than acknowledged {floor}")
    elif not entry.value.startswith(key.encode() + b"="):
        tally.violation("wrong", f"{key}: value {entry.value[:40]!r} was never written to it")
    else:
        tally.ok += 1


class Pace:
    """Spaces the requests of every worker sharing it at `rate` per second (none: no pacing)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.next_at = time.monotonic()

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        at = max(self.next_at, now)
        self.next_at = at + self.interval
        await asyncio.sleep(at - now)


def clients(urls: list[str], attempts: int | None) -> list[AsyncClient]:
    """One client per URL, each trying its own first and the others after it, so requests
    are coordinated by every node in turn and still fail over."""
    token = os.environ.get("RINGKV_TOKEN")
    return [AsyncClient(urls[i:] + urls[:i], token=token, timeout=5, attempts=attempts)
            for i in range(len(urls))]


def load_floors(*paths: Path) -> dict[str, str]:
    floors: dict[str, str] = {}
    for path in paths:
        if path.exists():
            floors.update(json.loads(path.read_text()))
    return floors


def stopped(until: Path | None) -> bool:
    return until is not None and until.exists()


def value_for(key: str, tag: str, size: int) -> bytes:
    head = f"{key}={tag}:".encode()
    return head + b"x" * max(0, size - len(head))


# -- load ---------------------------------------------------------------------------------

async def load(args: argparse.Namespace) -> dict[str, Any]:
    keys = [f"k/{i:05d}" for i in range(args.keys)]
    acked: dict[str, str] = {}
    tally = Tally()
    queue = iter(keys)
    pool = clients(args.urls, None)

    async def worker(client: AsyncClient) -> None:
        for key in queue:
            for attempt in range(5):
                try:
                    acked[key] = await client.put(key, value_for(key, "0", args.value_size))
                    break
                except RingkvError as exc:
                    tally.error(exc, key)
                    await asyncio.sleep(0.2 * (attempt + 1))

    started = time.monotonic()
    try:
        await asyncio.gather(*(worker(pool[i % len(pool)]) for i in range(args.concurrency)))
    finally:
        for c in pool:
            await c.close()
    seconds = time.monotonic() - started
    args.state.write_text(json.dumps(acked))
    return {"keys": len(acked), "wanted": len(keys), "seconds": round(seconds, 1),
            "per_second": round(len(acked) / seconds), "errors": dict(tally.errors),
            "examples": tally.examples}


# -- verify -------------------------------------------------------------------------------

async def verify(args: argparse.Namespace) -> dict[str, Any]:
    floors = load_floors(args.state, args.live)
    pool = clients(args.urls, args.attempts)
    pace = Pace(args.rate)
    passes: list[dict[str, Any]] = []
    total = Tally()
    try:
        while True:
            tally = Tally()
            started = time.time()
            complete = await verify_pass(pool, floors, tally, pace, args)
            passes.append({"started": started, "ended": time.time(), "complete": complete,
                           **{k: v for k, v in tally.to_json().items() if k != "examples"}})
            merge(total, tally)
            if args.until is None or stopped(args.until):
                break
    finally:
        for c in pool:
            await c.close()
    return {"keys": len(floors), "passes": passes, "total": total.to_json()}


async def verify_pass(pool: list[AsyncClient], floors: dict[str, str], tally: Tally,
                      pace: Pace, args: argparse.Namespace) -> bool:
    """One read of every key; False if stopped part way (`--until` appeared)."""
    queue = iter(sorted(floors))

    async def worker(client: AsyncClient) -> bool:
        for key in queue:
            if stopped(args.until):
                return False
            await pace.wait()
            await checked_get(tally, client, key, floors[key])
        return True

    done = await asyncio.gather(*(worker(pool[i % len(pool)]) for i in range(args.concurrency)))
    return all(done)


def merge(total: Tally, part: Tally) -> None:
    total.ok += part.ok
    total.missing += part.missing
    total.stale += part.stale
    total.wrong += part.wrong
    total.errors.update(part.errors)
    for text in part.examples:
        total.note(text)
    if part.first_error is not None:
        total.first_error = total.first_error or part.first_error
        total.last_error = part.last_error


# -- traffic ------------------------------------------------------------------------------

async def traffic(args: argparse.Namespace) -> dict[str, Any]:
    """Paced quorum writes and reads until `--until` exists. A write's floor rises only
    when it is acknowledged; a read is checked against the floor when it started."""
    floors = load_floors(args.state)
    live = load_floors(args.live)
    live_keys = [f"live/{i:03d}" for i in range(args.live_keys)]
    read_keys = sorted(floors) + live_keys
    pool = clients(args.urls, args.attempts)
    writes, reads = Tally(), Tally()
    rng = random.Random(args.seed)
    seq = 0
    pace = Pace(args.rate or 100.0)
    started = time.time()

    async def one(client: AsyncClient) -> None:
        nonlocal seq
        if rng.random() < args.write_share:
            key = rng.choice(live_keys)
            seq += 1
            try:
                version = await client.put(key, value_for(key, str(seq), args.value_size))
            except RingkvError as exc:
                writes.error(exc, key)  # outcome unknown: it raises no floor
                return
            writes.ok += 1
            if key not in live or version_key(version) > version_key(live[key]):
                live[key] = version
        else:
            key = rng.choice(read_keys)
            floor = live.get(key) or floors.get(key)
            await checked_get(reads, client, key, floor)

    async def worker(i: int) -> None:
        client = pool[i % len(pool)]
        while not stopped(args.until):
            await pace.wait()
            await one(client)

    try:
        await asyncio.gather(*(worker(i) for i in range(args.concurrency)))
    finally:
        for c in pool:
            await c.close()
    args.live.write_text(json.dumps(live))
    seconds = time.time() - started
    return {"seconds": round(seconds, 1), "writes": writes.to_json(), "reads": reads.to_json()}


# -- metrics ------------------------------------------------------------------------------

@dataclass
class NodeCounters:
    """One node's counters as last sampled, and what they added up to over restarts."""

    address: str = ""  # the pod IP its name resolved to: a new pod, a new process
    last: dict[str, float] = field(default_factory=dict)
    total: dict[str, float] = field(default_factory=dict)

    def sample(self, address: str, values: dict[str, float], baseline: bool) -> None:
        """A new process (new address, or a counter that went down) starts from 0; the
        first sample of a node already running when sampling began is only a baseline."""
        restarted = address != self.address or any(
            values.get(name, 0.0) < self.last.get(name, 0.0) for name in COUNTERS)
        for name in COUNTERS:
            now = values.get(name, 0.0)
            if baseline:
                continue
            added = now if restarted else now - self.last.get(name, 0.0)
            self.total[name] = self.total.get(name, 0.0) + added
        self.address, self.last = address, values


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        base = name.partition("{")[0]
        if base in COUNTERS or base in GAUGES:
            out[base] = out.get(base, 0.0) + float(value)
    return out


async def scrape(session: aiohttp.ClientSession, url: str) -> tuple[str, dict[str, float]] | None:
    """(pod IP, values) of one node, None while it does not answer."""
    host = urlsplit(url).hostname or ""
    try:
        address = (await asyncio.get_running_loop().getaddrinfo(host, None))[0][4][0]
        async with session.get(url + "/metrics") as resp:
            if resp.status != 200:
                return None
            return str(address), parse_metrics(await resp.text())
    except (OSError, TimeoutError, aiohttp.ClientError):
        return None  # not there (yet): no address, or not answering


async def metrics(args: argparse.Namespace) -> dict[str, Any]:
    nodes = {url: NodeCounters() for url in args.urls}
    first = True
    catching_up: list[float] = []  # sample times at which some node had ranges left
    peak_hints = 0.0
    started = time.time()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
        while True:
            now = time.time()
            results = await asyncio.gather(*(scrape(session, url) for url in nodes))
            left = hints = 0.0
            for counters, result in zip(nodes.values(), results, strict=True):
                if result is None:
                    continue
                address, values = result
                counters.sample(address, values, baseline=first)
                left += values.get("ringkv_rebalance_ranges_left", 0.0)
                hints += values.get("ringkv_hints_pending", 0.0)
            if left:
                catching_up.append(now)
            peak_hints = max(peak_hints, hints)
            first = False
            if stopped(args.until):
                break
            await asyncio.sleep(max(0.0, now + 1.0 - time.time()))
    totals = {name: sum(c.total.get(name, 0.0) for c in nodes.values()) for name in COUNTERS}
    short = {name: name.removeprefix("ringkv_").removesuffix("_total") for name in COUNTERS}
    return {
        "seconds": round(time.time() - started, 1),
        **{short[name]: int(totals[name]) for name in COUNTERS},
        "per_node": {urlsplit(url).netloc: {short[n]: int(c.total.get(n, 0.0)) for n in COUNTERS}
                     for url, c in nodes.items()},
        "catching_up_s": round(catching_up[-1] - catching_up[0] + 1, 1) if catching_up else 0.0,
        "peak_hints_pending": int(peak_hints),
    }


# -- command line -------------------------------------------------------------------------

COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]]] = {
    "load": load, "verify": verify, "traffic": traffic, "metrics": metrics,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=sorted(COMMANDS))
    p.add_argument("--urls", required=True, type=lambda s: s.split(","),
                   help="node URLs, comma-separated (the Service, or every pod)")
    p.add_argument("--state", type=Path, default=Path("/tmp/acked.json"))
    p.add_argument("--live", type=Path, default=Path("/tmp/live.json"))
    p.add_argument("--until", type=Path, help="stop once this file exists")
    p.add_argument("--keys", type=int, default=20000)
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rate", type=float, help="operations per second (traffic: 100 if not "
                                               "given; verify: unpaced)")
    p.add_argument("--write-share", type=float, default=0.3)
    p.add_argument("--live-keys", type=int, default=100)
    p.add_argument("--attempts", type=int, help="tries per request (the client's default: "
                                                  "one per URL, at least 3)")
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(COMMANDS[args.command](args))
    json.dump(report, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
