"""`ringkv status --watch`: the console's members and re-replication bars in a terminal.

Drawn from the same two documents the console polls (`GET /v1/cluster` and `GET
/v1/stats`); `render` is pure, `watch` redraws it every `interval` seconds until Ctrl-C.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

BAR = 28
CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen


def _num(value: object, digits: int = 0) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    return f"{value:,.{digits}f}"


def _ms(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:.1f}ms" if value < 100 else f"{value:,.0f}ms"


def _bytes(n: float) -> str:
    unit = "B"
    for bigger in ("KB", "MB", "GB"):
        if n < 1000:
            break
        n, unit = n / 1000, bigger
    return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _state(member: Mapping[str, Any]) -> str:
    return "unreachable" if member.get("reachable") is False else str(member.get("state", "-"))


def _flags(member: Mapping[str, Any]) -> str:
    flags = [name for name, on in (("disk-full", member.get("disk_full")),
                                   ("rebuilding", member.get("rebuilding"))) if on]
    if member.get("reachable") is not False and member.get("ready") is False:
        flags.append("catching-up")
    return ",".join(flags)


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) if i in right else c.ljust(w)
                      for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in rows]


def recent(samples: Sequence[Mapping[str, Any]], field: str, count: int) -> float | None:
    """The mean of `field` over the last `count` samples (None without samples)."""
    tail = [s.get(field) or 0 for s in samples[-count:]]
    return sum(tail) / len(tail) if tail else None


def progress_line(name: str, progress: Mapping[str, Any], samples: Sequence[Mapping[str, Any]]) -> str:
    """One member's re-replication as a bar with ranges, records, bytes/s and ETA."""
    total = int(progress.get("ranges_total") or 0)
    left = int(progress.get("ranges_left") or 0)
    done = total - left
    filled = round(BAR * done / total) if total else BAR
    parts = [f"{done}/{total} ranges", f"{_num(progress.get('keys_received'))} records"]
    if progress.get("active"):
        keys = progress.get("keys_received") or 0
        if done and done >= total / 10:
            parts.append(f"~{_num(keys / done * left)} left")
        rate = recent(samples, "handoff_bytes_per_s", 3)
        parts.append("-/s" if rate is None else f"{_bytes(rate)}/s")
        per_s = recent(samples, "handoff_ranges_per_s", 5)
        parts.append(f"ETA {_duration(left / per_s)}" if per_s else "ETA -")
    else:
        parts.append("done")
    pct = 100 * done / total if total else 100
    return f"  {name:<12} [{'#' * filled}{'.' * (BAR - filled)}] {pct:5.1f}%  " + " · ".join(parts)


def render(cluster: Mapping[str, Any], series: Mapping[str, Sequence[Mapping[str, Any]]],
           now: str = "") -> str:
    """The screen: epoch line, members with rates, and a bar per member with work to do."""
    members = sorted(cluster.get("members") or [], key=lambda m: str(m.get("name")))
    head = (f"epoch {cluster.get('epoch')}  {'settled' if cluster.get('settled') else 'REBALANCING'}"
            f"  rf {cluster.get('rf')}  {len(members)} members  via {cluster.get('node')}")
    rows = [["NAME", "STATE", "ADDRESS", "EPOCH", "RECORDS", "HINTS", "REQ/S", "P99 R", "P99 W",
             "FLAGS"]]
    for m in members:
        last = (series.get(str(m.get("name"))) or [{}])[-1]
        reachable = m.get("reachable") is not False
        rows.append([
            str(m.get("name")), _state(m), str(m.get("api_url") or m.get("url") or "-"),
            _num(m.get("epoch")), _num(m.get("records")), _num(m.get("hints_pending")),
            _num((last.get("reads") or 0) + (last.get("writes") or 0), 1) if reachable and last else "-",
            _ms(last.get("read_p99_ms")) if reachable else "-",
            _ms(last.get("write_p99_ms")) if reachable else "-",
            _flags(m)])
    lines = [f"{head}{('   ' + now) if now else ''}", "", *_table(rows, {3, 4, 5, 6, 7, 8}), ""]
    bars = [progress_line(str(m.get("name")), m["rebalance"], series.get(str(m.get("name"))) or [])
            for m in members if isinstance(m.get("rebalance"), dict) and m["rebalance"].get("ranges_total")]
    lines.append("re-replication:" if bars else "re-replication: nothing to move")
    lines.extend(bars)
    return "\n".join(lines)


def merge(series: dict[str, list[dict[str, Any]]], stats: Mapping[str, Any], keep: int = 300) -> None:
    """Add the samples of one `/v1/stats` answer to what was already fetched."""
    for member in stats.get("members") or []:
        have = series.setdefault(str(member.get("node")), [])
        last = have[-1]["t"] if have else -1
        have.extend(s for s in member.get("series") or [] if s["t"] > last)
        del have[:-keep]


def watch(cluster: Callable[[], Mapping[str, Any]],
          stats: Callable[[int | None], Mapping[str, Any]], interval: float,
          out: TextIO = sys.stdout) -> None:
    """Redraw every `interval` seconds until interrupted (Ctrl-C ends it quietly)."""
    series: dict[str, list[dict[str, Any]]] = {}
    clear = CLEAR if out.isatty() else ""
    try:
        while True:
            since = min((s[-1]["t"] for s in series.values() if s), default=None)
            merge(series, stats(since))
            screen = render(cluster(), series, time.strftime("%H:%M:%S"))
            out.write(f"{clear}{screen}\n{'' if clear else chr(10)}")
            out.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
