"""`make chaos` end to end, briefly: a real cluster, a real nemesis, the generated table."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from harness import run_to_end

ROOT = Path(__file__).resolve().parents[2]


def test_chaos_writes_a_reliability_table(tmp_path: Path) -> None:
    """The cas workload's row (the register one is the same table of another run)."""
    out = tmp_path / "RELIABILITY.md"
    proc = run_to_end(
        [sys.executable, str(ROOT / "scripts" / "chaos.py"), "--workloads", "cas", "--nemeses", "kill",
         "--duration", "6", "--interval", "2", "--out", str(out), "--work-dir", str(tmp_path / "work")],
        timeout=240, cwd=ROOT,  # below pytest's 300 s
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert "## cas" in text and "## register" not in text
    row = next(line for line in text.splitlines() if line.startswith("| kill |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    faults, ops, acked, refused, violations = (int(cells[1]), int(cells[2]), int(cells[3]),
                                               int(cells[4]), cells[6])
    assert faults >= 1 and ops > acked > 0 and refused > 0, row
    assert violations == "**0**" and cells[9] == "valid", row
    assert re.fullmatch(r"\d+\.\d% \(\d+/\d+\)", cells[7]), row  # availability during faults
    assert cells[10] == "[png](reliability/cas-kill.png)", row  # the check's timeline, beside the table
    assert (tmp_path / "reliability" / "cas-kill.png").read_bytes().startswith(b"\x89PNG")
    history = tmp_path / "work" / "cas-kill" / "history.jsonl"
    assert history.exists() and '"type": "fault"' in history.read_text()
