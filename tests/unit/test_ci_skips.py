"""tests/ci_skips.py: a skip fails the run under CI=true, and only then."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
SAMPLE = '''
import pytest

def test_runs():
    pass

@pytest.mark.skipif(True, reason="no frobnicator on PATH")
def test_needs_a_tool():
    pass

def test_skips_itself():
    pytest.skip("no cluster")

@pytest.mark.xfail(reason="known bug", strict=True)
def test_known_bug():
    assert False
'''


def run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "ci_skips", "-p", "no:cacheprovider", "-q", "-rA",
         "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path, env=env)


def test_skips_are_only_skips_outside_ci(tmp_path: Path) -> None:
    proc = run(tmp_path, None)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 2 skipped, 1 xfailed" in proc.stdout


def test_skips_fail_under_ci(tmp_path: Path) -> None:
    proc = run(tmp_path, "true")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "skipped under CI=true, which counts as a failure: no frobnicator on PATH" in proc.stdout
    assert "skipped under CI=true, which counts as a failure: no cluster" in proc.stdout
    assert "1 failed, 1 passed, 1 xfailed, 1 error" in proc.stdout  # the skipif skips in setup
