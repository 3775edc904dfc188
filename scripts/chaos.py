"""`make chaos`: the long version of every nemesis under every workload, and
docs/RELIABILITY.md from the results.

For each workload (`register`, `cas`) and nemesis it starts a fresh local cluster
(`ringkv up`, 5 nodes, rf=3; with `--netns` for partitions, which needs root), runs
`ringkv check` against it for `--duration` seconds, reads the summary the check wrote,
and stops the cluster. Then it writes one table per workload: per fault, the operations
run, acknowledged writes, violations found, and availability (the fraction of operations
that succeeded) while a fault was active and over the whole run. The exit status is 1 if
any run found a violation or did not finish.

    .venv/bin/python scripts/chaos.py                       # every nemesis, 60 s each
    .venv/bin/python scripts/chaos.py --workloads cas --nemeses kill,pause --duration 20 --out /tmp/r.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ringkv.local.check import NEMESES
from ringkv.local.processes import log_tail
from ringkv.local.spawn import UpFailed, spawn_up
from ringkv.local.workloads import WORKLOADS

ROOT = Path(__file__).resolve().parent.parent
NEEDS_ROOT = {"partition"}
NODES, RF = 5, 3


@dataclass
class Outcome:
    """One run of a workload under a nemesis, as read back from its summary."""

    workload: str
    nemesis: str
    ops: int = 0
    acked_writes: int = 0
    refused: int = 0  # cas answered 412
    unknown: int = 0
    violations: int = 0
    faults: int = 0
    during_faults: tuple[int, int] = (0, 0)  # (ok, attempted) of operations begun in a fault
    overall: tuple[int, int] = (0, 0)
    exit_code: int | None = None
    skipped: str = ""
    log: str = ""
    plot: Path | None = None  # the check's timeline PNG, when matplotlib could draw it

    @property
    def passed(self) -> bool:
        """Valid, and a real test: operations were acknowledged and faults were injected."""
        if self.skipped:
            return True
        injected = self.faults > 0 or self.nemesis == "none"
        return self.exit_code == 0 and self.violations == 0 and self.acked_writes > 0 and injected


def plot_path(args: argparse.Namespace, workload: str, nemesis: str) -> Path:
    """Timelines go beside the report: docs/RELIABILITY.md -> docs/reliability/cas-kill.png."""
    out: Path = args.out
    return out.parent / out.stem.lower() / f"{workload}-{nemesis}.png"


def ratio(pair: tuple[int, int]) -> str:
    ok, attempted = pair
    return f"{ok / attempted:.1%} ({ok}/{attempted})" if attempted else "-"


def read_summary(path: Path, outcome: Outcome) -> None:
    """Fill `outcome` from the summary `ringkv check --summary` wrote."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    outcome.ops = doc["operations"]
    outcome.acked_writes = doc["acknowledged_writes"]
    outcome.refused = doc["refused"]
    outcome.unknown = doc["unknown"]
    outcome.violations = doc["violations"]
    outcome.faults = doc["faults"]
    for name in ("during_faults", "overall"):
        ratio_doc = doc[f"availability_{name}"]
        setattr(outcome, name, (ratio_doc["ok"], ratio_doc["attempted"]))


def run_one(workload: str, nemesis: str, args: argparse.Namespace, work: Path) -> Outcome:
    outcome = Outcome(workload, nemesis)
    if nemesis in NEEDS_ROOT and os.geteuid() != 0:
        outcome.skipped = "needs root (network namespaces)"
        return outcome
    run_dir = work / f"{workload}-{nemesis}"
    run_dir.mkdir()
    plot = plot_path(args, workload, nemesis)
    plot.parent.mkdir(parents=True, exist_ok=True)
    try:
        up = spawn_up(run_dir / "data", nodes=NODES, rf=RF, restart_delay=1,
                      netns=nemesis == "partition", log_path=run_dir / "launcher.log")
    except UpFailed as exc:
        outcome.log = str(exc)
        print(f"== {workload} {nemesis}: {exc}", flush=True)
        return outcome
    with up:
        history, summary = run_dir / "history.jsonl", run_dir / "summary.json"
        check_cmd = [sys.executable, "-m", "ringkv.client.cli", "check", "--url", ",".join(up.urls),
                     "--token", up.token, "--control", up.control_url, "--nemesis", nemesis,
                     "--workload", workload,
                     "--duration", str(args.duration), "--interval", str(args.interval),
                     "--fault-duration", str(args.fault_duration), "--workers", str(args.workers),
                     "--keys", str(args.cas_keys if workload == "cas" else args.keys),
                     "--history", str(history), "--summary", str(summary),
                     "--seed", str(args.seed), "--plot", str(plot)]
        print(f"== {workload} {nemesis}: {' '.join(check_cmd[2:])}", flush=True)
        check_log = run_dir / "check.log"
        with check_log.open("wb") as out:
            outcome.exit_code = subprocess.call(check_cmd, stdout=out, stderr=subprocess.STDOUT,
                                                cwd=ROOT)
        outcome.log = str(check_log)
        if summary.exists():
            read_summary(summary, outcome)
        if plot.exists():
            outcome.plot = plot
        print(log_tail(check_log, 12), flush=True)
    return outcome


def table(outcomes: list[Outcome], args: argparse.Namespace) -> list[str]:
    """The rows of one workload's table."""
    rows = [
        "| fault | faults injected | operations | acknowledged writes | refused (412) | "
        "unknown outcome | violations | availability during faults | availability overall | "
        "verdict | timeline |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        if o.skipped:
            rows.append(f"| {o.nemesis} | skipped: {o.skipped} | | | | | | | | | |")
            continue
        verdict = "valid" if o.passed else f"NOT VALID (exit {o.exit_code}, {o.faults} faults; {o.log})"
        timeline = f"[png]({o.plot.relative_to(args.out.parent)})" if o.plot else "-"
        rows.append(f"| {o.nemesis} | {o.faults} | {o.ops} | {o.acked_writes} | {o.refused} | "
                    f"{o.unknown} | **{o.violations}** | {ratio(o.during_faults)} | "
                    f"{ratio(o.overall)} | {verdict} | {timeline} |")
    return rows


WORKLOAD_TEXT = {
    "register": lambda args: (
        f"{args.workers} client threads on {args.keys} keys, half reads and half plain writes, "
        "quorum consistency. The checker verifies, per key: no read older than a write "
        "acknowledged before the read began, no acknowledged write lost (final quorum reads "
        "after healing), sequential writes never reordered, no value read that was never "
        "written or whose write failed."),
    "cas": lambda args: (
        f"{args.workers} client threads on {args.cas_keys} keys (so they contend): half "
        "serial reads, the rest compare-and-sets (`If-Match` on the version the client last "
        "saw, `If-None-Match: *` when it saw the key absent) and one in five a blind serial "
        "write; a client reads a key first when its last operation on it failed. Every "
        "operation is a Paxos round. The checker verifies the register rules above and that "
        "each key's history is linearizable (Wing-Gong search with Lowe's memoisation; a "
        "timed-out or `outcome_unknown` operation may or may not have taken effect). "
        "Acknowledged writes count compare-and-sets that applied."),
}


def report(outcomes: list[Outcome], args: argparse.Namespace) -> str:
    sections: list[str] = []
    for workload in args.workloads:
        sections += [
            f"## {workload}",
            "",
            WORKLOAD_TEXT[workload](args),
            "",
            *table([o for o in outcomes if o.workload == workload], args),
            "",
        ]
    return "\n".join([
        "# Reliability: checked histories under faults",
        "",
        "Generated by `make chaos` (`scripts/chaos.py`); do not edit by hand.",
        "",
        f"Run on {time.strftime('%Y-%m-%d %H:%M %Z')}: "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()} "
        f"{platform.release()}.",
        "",
        f"Each row is a fresh local cluster (`ringkv up`, {NODES} nodes, rf={RF}, SQLite) and one "
        f"`ringkv check` run of a workload: {args.duration:g} s of load, a fault every "
        f"{args.interval:g} s (a paused or partitioned node stays so for {args.fault_duration:g} s), "
        f"seed {args.seed}.",
        "",
        *sections,
        "- *kill*: SIGKILL one node; the launcher restarts it on its data directory.",
        "- *pause*: SIGSTOP one node (a gray failure: its sockets stay open), SIGCONT later.",
        "- *restart-wipe*: stop one node, delete its data directory, start it empty; it rebuilds "
        "from its replicas before serving reads.",
        "- *skew*: restart one node with its clock moved by up to a few minutes.",
        "- *partition*: nodes in their own network namespaces; iptables cuts one node off, "
        "splits the cluster 2|3, or drops one direction of one link, then heals.",
        "- *bounce*: SIGKILL one node and start it again at once.",
        "- *restart-all*: SIGKILL every node, then start them all.",
        f"- *restart-staggered*: SIGKILL every node, then start them one by one, "
        f"{args.fault_duration:g} s apart.",
        "",
        "Availability during faults counts the operations begun while a fault was active "
        "(from the fault until the node was ready again) that succeeded; a 503 for a quorum "
        "that cannot be reached counts against it, as it should; a 412 (a compare-and-set that "
        "lost to another) is an answer, and counts for it. An operation with an unknown "
        "outcome (a timeout) is neither a success nor a violation. Each timeline (`ringkv check "
        "--plot`) draws every operation as a bar per client, green acknowledged, red failed, "
        "orange unknown, with the faults shaded.",
        "",
        f"Reproduce: `make chaos` (about {len(outcomes) * (args.duration + 25) / 60:.0f} minutes; "
        "the partition rows need root). `make test` runs a short version of every nemesis "
        "(tests/integration/test_check_cli.py) and of the cas workload under kill.",
        "",
    ])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help="comma-separated (default: every workload)")
    p.add_argument("--nemeses", default=",".join(n for n in NEMESES if n != "none"),
                   help="comma-separated (default: every nemesis)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load per nemesis")
    p.add_argument("--interval", type=float, default=6.0, help="seconds between faults")
    p.add_argument("--fault-duration", type=float, default=4.0)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--keys", type=int, default=20, help="keys of the register workload")
    p.add_argument("--cas-keys", type=int, default=5, help="keys of the cas workload")
    p.add_argument("--seed", type=int, default=20261126)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "RELIABILITY.md")
    p.add_argument("--work-dir", type=Path, help="keep clusters and histories here (default: temp)")
    args = p.parse_args(argv)
    args.nemeses = [n for n in args.nemeses.split(",") if n]
    args.workloads = [w for w in args.workloads.split(",") if w]
    unknown = sorted(set(args.nemeses) - set(NEMESES))
    if unknown:
        p.error(f"unknown nemeses {unknown}; choose from {', '.join(NEMESES)}")
    unknown = sorted(set(args.workloads) - set(WORKLOADS))
    if unknown:
        p.error(f"unknown workloads {unknown}; choose from {', '.join(WORKLOADS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ringkv-chaos-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        outcomes = [run_one(workload, nemesis, args, work)
                    for workload in args.workloads for nemesis in args.nemeses]
    args.out.write_text(report(outcomes, args), encoding="utf-8")
    print(f"\nwrote {args.out}")
    for o in outcomes:
        status = o.skipped or ("valid" if o.passed else "INVALID")
        print(f"  {o.workload:8s} {o.nemesis:17s} {o.ops:6d} ops  {o.acked_writes:6d} acked writes  "
              f"{o.violations} violations  during faults {ratio(o.during_faults)}  {status}")
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
