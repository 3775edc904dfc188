"""`make chaos`: the long version of every nemesis, and docs/RELIABILITY.md from the results.

For each nemesis it starts a fresh local cluster (`ringkv up`, 5 nodes, rf=3; with
`--netns` for partitions, which needs root), runs `ringkv check` against it for
`--duration` seconds, reads the history file the check wrote, and stops the cluster. Then
it writes one table: per fault, the operations run, acknowledged writes, violations found,
and availability (the fraction of operations that succeeded) while a fault was active and
over the whole run. The exit status is 1 if any run found a violation or did not finish.

    .venv/bin/python scripts/chaos.py                       # every nemesis, 60 s each
    .venv/bin/python scripts/chaos.py --nemeses kill,pause --duration 20 --out /tmp/r.md
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

ROOT = Path(__file__).resolve().parent.parent
NEEDS_ROOT = {"partition"}
NODES, RF = 5, 3


@dataclass
class Outcome:
    """One nemesis run, as read back from its history file."""

    nemesis: str
    ops: int = 0
    acked_writes: int = 0
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


def plot_path(args: argparse.Namespace, nemesis: str) -> Path:
    """Timelines go beside the report: docs/RELIABILITY.md -> docs/reliability/kill.png."""
    out: Path = args.out
    return out.parent / out.stem.lower() / f"{nemesis}.png"


def ratio(pair: tuple[int, int]) -> str:
    ok, attempted = pair
    return f"{ok / attempted:.1%} ({ok}/{attempted})" if attempted else "-"


def read_summary(path: Path, outcome: Outcome) -> None:
    """Fill `outcome` from the summary `ringkv check --summary` wrote."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    outcome.ops = doc["operations"]
    outcome.acked_writes = doc["acknowledged_writes"]
    outcome.unknown = doc["unknown"]
    outcome.violations = doc["violations"]
    outcome.faults = doc["faults"]
    for name in ("during_faults", "overall"):
        ratio_doc = doc[f"availability_{name}"]
        setattr(outcome, name, (ratio_doc["ok"], ratio_doc["attempted"]))


def run_one(nemesis: str, args: argparse.Namespace, work: Path) -> Outcome:
    outcome = Outcome(nemesis)
    if nemesis in NEEDS_ROOT and os.geteuid() != 0:
        outcome.skipped = "needs root (network namespaces)"
        return outcome
    run_dir = work / nemesis
    run_dir.mkdir()
    plot = plot_path(args, nemesis)
    plot.parent.mkdir(parents=True, exist_ok=True)
    try:
        up = spawn_up(run_dir / "data", nodes=NODES, rf=RF, restart_delay=1,
                      netns=nemesis == "partition", log_path=run_dir / "launcher.log")
    except UpFailed as exc:
        outcome.log = str(exc)
        print(f"== {nemesis}: {exc}", flush=True)
        return outcome
    with up:
        history, summary = run_dir / "history.jsonl", run_dir / "summary.json"
        check_cmd = [sys.executable, "-m", "ringkv.client.cli", "check", "--url", ",".join(up.urls),
                     "--token", up.token, "--control", up.control_url, "--nemesis", nemesis,
                     "--duration", str(args.duration), "--interval", str(args.interval),
                     "--fault-duration", str(args.fault_duration), "--workers", str(args.workers),
                     "--keys", str(args.keys), "--history", str(history), "--summary", str(summary),
                     "--seed", str(args.seed), "--plot", str(plot)]
        print(f"== {nemesis}: {' '.join(check_cmd[2:])}", flush=True)
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


def report(outcomes: list[Outcome], args: argparse.Namespace) -> str:
    rows = []
    for o in outcomes:
        if o.skipped:
            rows.append(f"| {o.nemesis} | skipped: {o.skipped} | | | | | | | |")
            continue
        verdict = "valid" if o.passed else f"NOT VALID (exit {o.exit_code}, {o.faults} faults; {o.log})"
        timeline = f"[png]({o.plot.relative_to(args.out.parent)})" if o.plot else "-"
        rows.append(f"| {o.nemesis} | {o.faults} | {o.ops} | {o.acked_writes} | {o.unknown} | "
                    f"**{o.violations}** | {ratio(o.during_faults)} | {ratio(o.overall)} | {verdict} | "
                    f"{timeline} |")
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
        f"`ringkv check` run: {args.workers} client threads on {args.keys} keys, half reads and "
        f"half writes, quorum consistency, {args.duration:g} s of load, a fault every "
        f"{args.interval:g} s (a paused or partitioned node stays so for {args.fault_duration:g} s), "
        f"seed {args.seed}. The checker verifies, per key: no read older than a write acknowledged "
        "before the read began, no acknowledged write lost (final quorum reads after healing), "
        "sequential writes never reordered.",
        "",
        "| fault | faults injected | operations | acknowledged writes | unknown outcome | "
        "violations | availability during faults | availability overall | verdict | timeline |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "- *kill*: SIGKILL one node; the launcher restarts it on its data directory.",
        "- *pause*: SIGSTOP one node (a gray failure: its sockets stay open), SIGCONT later.",
        "- *restart-wipe*: stop one node, delete its data directory, start it empty; it rebuilds "
        "from its replicas before serving reads.",
        "- *skew*: restart one node with its clock moved by up to a few minutes.",
        "- *partition*: nodes in their own network namespaces; iptables cuts one node off, "
        "splits the cluster 2|3, or drops one direction of one link, then heals.",
        "",
        "Availability during faults counts the operations begun while a fault was active "
        "(from the fault until the node was ready again) that succeeded; a 503 for a quorum "
        "that cannot be reached counts against it, as it should. An operation with an unknown "
        "outcome (a timeout) is neither a success nor a violation. Each timeline (`ringkv check "
        "--plot`) draws every operation as a bar per client, green acknowledged, red failed, "
        "orange unknown, with the faults shaded.",
        "",
        f"Reproduce: `make chaos` (about {len(outcomes) * (args.duration + 20) / 60:.0f} minutes; "
        "the partition row needs root). `make test` runs a short version of every nemesis "
        "(tests/integration/test_check_cli.py).",
        "",
    ])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--nemeses", default=",".join(n for n in NEMESES if n != "none"),
                   help="comma-separated (default: every nemesis)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load per nemesis")
    p.add_argument("--interval", type=float, default=6.0, help="seconds between faults")
    p.add_argument("--fault-duration", type=float, default=4.0)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--keys", type=int, default=20)
    p.add_argument("--seed", type=int, default=20261126)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "RELIABILITY.md")
    p.add_argument("--work-dir", type=Path, help="keep clusters and histories here (default: temp)")
    args = p.parse_args(argv)
    args.nemeses = [n for n in args.nemeses.split(",") if n]
    unknown = sorted(set(args.nemeses) - set(NEMESES))
    if unknown:
        p.error(f"unknown nemeses {unknown}; choose from {', '.join(NEMESES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ringkv-chaos-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        outcomes = [run_one(nemesis, args, work) for nemesis in args.nemeses]
    args.out.write_text(report(outcomes, args), encoding="utf-8")
    print(f"\nwrote {args.out}")
    for o in outcomes:
        status = o.skipped or ("valid" if o.passed else "INVALID")
        print(f"  {o.nemesis:13s} {o.ops:6d} ops  {o.acked_writes:6d} acked writes  "
              f"{o.violations} violations  during faults {ratio(o.during_faults)}  {status}")
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
