"""Progress of a long command on stderr: a bar redrawn in place on a terminal, one JSON
object a line otherwise (a CronJob's log, a CI log), so a person and a log reader each get
what they can use."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from typing import TextIO

BAR = 30
TTY_INTERVAL = 0.2  # seconds between redraws of the bar
LOG_INTERVAL = 5.0  # seconds between JSON lines


class Progress:
    def __init__(self, phase: str, stream: TextIO | None = None, *, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.phase = phase
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = TTY_INTERVAL if self.tty else LOG_INTERVAL
        self._clock = clock
        self.started = clock()
        self._shown = -math.inf

    def update(self, done: float, records: int, nbytes: int) -> None:
        """`done`: the share of the work behind us (0..1); shown at most every interval."""
        now = self._clock()
        if now - self._shown >= self.interval:
            self._shown = now
            self._show(done, records, nbytes, now, final=False)

    def finish(self, records: int, nbytes: int) -> None:
        self._show(1.0, records, nbytes, self._clock(), final=True)

    def _show(self, done: float, records: int, nbytes: int, now: float, final: bool) -> None:
        elapsed = now - self.started
        if not self.tty:
            line = {"event": "done" if final else "progress", "phase": self.phase,
                    "done": round(done, 4), "records": records, "bytes": nbytes,
                    "elapsed_s": round(elapsed, 1)}
            self.stream.write(json.dumps(line) + "\n")
        else:
            filled = min(BAR, int(done * BAR))
            rate = nbytes / elapsed / 1e6 if elapsed > 0 else 0.0
            eta = "" if final or done <= 0 else f"  ETA {_duration(elapsed * (1 - done) / done)}"
            self.stream.write(
                f"\r{self.phase:<8}[{'#' * filled}{'.' * (BAR - filled)}] {done * 100:5.1f}%  "
                f"{records:,} records  {nbytes / 1e6:,.1f} MB  {rate:.1f} MB/s{eta}\x1b[K"
                + ("\n" if final else ""))
        self.stream.flush()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
