"""The node's budget for background data movement (handoff, anti-entropy, catch-up).

Paced by client load, as Riak's handoff concurrency and Cassandra's stream throughput
are: full speed while the node serves no client traffic, one page at a time for a share
of the time while it does, so clients keep most of the node's CPU while copies move.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Settings
    from .metrics import RequestStats

SAMPLE_S = 0.5  # seconds over which the client request rate is measured
FIRST_SAMPLE_S = 0.1  # the first window after a stale sample: a quick first answer
KV_ROUTES = "/v1/kv"  # the public key-value routes: what counts as client traffic


def client_requests(stats: RequestStats) -> int:
    """Key-value requests this node has answered (health, metrics and cluster polls aside;
    401s too, so a client without the token cannot slow handoff down)."""
    return sum(n for (route, _method, status), n in stats.counts.items()
               if route.startswith(KV_ROUTES) and status != 401)


@dataclass
class Turn:
    """One admitted page: when it started, and the bytes it brought (set by the puller)."""

    started: float
    bytes: int = 0


class Pacer:
    """The node's handoff budget: admits each page of handoff or anti-entropy work.

    Quiet (fewer than `handoff_busy_requests` client requests a second): pages start as
    soon as the puller asks (`handoff_ranges` ranges at once). Busy: one page at a time,
    each followed by a pause that keeps the pages' share of the wall time at
    `handoff_busy_share`; a page slowed by client load is followed by a longer pause, and
    the share stays above 0, so handoff always finishes. `handoff_max_mb_per_s` (> 0)
    spaces page starts so that bytes / time stays under the cap in either mode.
    """

    def __init__(self, settings: Settings, requests: Callable[[], int],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.share = settings.handoff_busy_share
        self.busy_requests = settings.handoff_busy_requests
        self.max_bytes_per_s = settings.handoff_max_mb_per_s * 1e6
        self._requests = requests
        self._clock = clock
        self._sampled_at = self._next_sample = -math.inf
        self._sampled = 0
        self._busy = True
        self._paused_until = -math.inf  # the duty cycle's pause after a busy page
        self._rate_free_at = -math.inf  # the byte cap's earliest next start
        self._one_at_a_time = asyncio.Lock()

    def busy(self) -> bool:
        """Whether clients are active: their request rate since the last sample.

        A sample more than two windows old says nothing about now (handoff was idle), so
        the node counts as busy until a short first window has been measured: pulling
        fast into a loaded node costs more than pulling slowly for 0.1 s on a quiet one."""
        now = self._clock()
        if now >= self._next_sample:
            count = self._requests()
            elapsed = now - self._sampled_at
            stale = elapsed > 2 * SAMPLE_S
            self._busy = stale or (count - self._sampled) / elapsed >= self.busy_requests
            self._sampled_at, self._sampled = now, count
            self._next_sample = now + (FIRST_SAMPLE_S if stale else SAMPLE_S)
        return self._busy

    def throttled(self) -> bool:
        return self.share < 1 and self.busy()

    def delay(self, throttled: bool) -> float:
        """Seconds until the next page may start."""
        gate = max(self._rate_free_at, self._paused_until if throttled else -math.inf)
        return max(0.0, gate - self._clock())

    def finished(self, turn: Turn, throttled: bool) -> None:
        """Account a finished page against the byte cap and the duty cycle."""
        now = self._clock()
        if self.max_bytes_per_s > 0:
            self._rate_free_at = (max(self._rate_free_at, turn.started)
                                  + turn.bytes / self.max_bytes_per_s)
        if throttled:
            self._paused_until = now + (now - turn.started) * (1 - self.share) / self.share

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[Turn]:
        """Wait until the budget admits a page, then time it (the body does the page)."""
        throttled = self.throttled()
        async with self._one_at_a_time if throttled else contextlib.nullcontext():
            # Pages that wait together start together: a burst of at most handoff_ranges
            # pages, after which the cap's gate has moved past all of them.
            wait = self.delay(throttled)
            if wait > 0:
                await asyncio.sleep(wait)
            turn = Turn(self._clock())
            # A failed page (a source that timed out) did no work: no pause after it, so
            # the next source is tried at once.
            yield turn
            self.finished(turn, throttled)
