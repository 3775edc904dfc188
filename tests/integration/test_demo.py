"""`ringkv demo` runs the seed scenario end to end on real processes and cleans up."""

from __future__ import annotations

import sys

from harness import run_to_end


def test_demo_tells_the_seed_story() -> None:
    out = run_to_end([sys.executable, "-m", "ringkv.client.cli", "demo", "--pace", "0",
                      "--bulk", "200"], timeout=240)  # below pytest's 300 s
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert text.count("[ok]") == 5 and "WRONG" not in text
    assert "settled=False" in text and "joining" in text and "settled=True" in text
    assert "Every key kept 3 copies" in text
