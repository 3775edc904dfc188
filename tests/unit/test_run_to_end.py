"""harness.run_to_end: a command that overruns its timeout is stopped, with its output shown."""

from __future__ import annotations

import pytest
from harness import run_to_end


def test_output_of_a_command_that_hangs_is_kept() -> None:
    with pytest.raises(AssertionError, match=r"(?s)still running after 1s, stopped:.*started"):
        run_to_end(["sh", "-c", "echo started; exec sleep 120"], timeout=1)


def test_a_command_that_finishes_returns_its_result() -> None:
    done = run_to_end(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
