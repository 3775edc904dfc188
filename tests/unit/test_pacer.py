"""The handoff budget: when the pacer admits a page, and how the settings reach it.

The pacer's clock and client-request counter are plain callables, so these tests drive
them by hand: no node, no sleeping, no timing assertion.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from ringkv.node.config import ConfigError, Settings, load
from ringkv.node.metrics import RequestStats
from ringkv.node.pacer import FIRST_SAMPLE_S, SAMPLE_S, Pacer, Turn, client_requests


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Node:
    """A clock and a client-request counter the test advances."""

    def __init__(self, **budget: float) -> None:
        self.clock = Clock()
        self.requests = 0
        self.pacer = Pacer(Settings(**budget), lambda: self.requests, self.clock)  # type: ignore[arg-type]

    def serve(self, requests: int, seconds: float) -> None:
        """Clients send `requests` over the next `seconds`, then the pacer samples them."""
        self.pacer.busy()
        self.requests += requests
        self.clock.now += seconds
        self.pacer.busy()

    def page(self, seconds: float, size: int = 0) -> None:
        """A page of work the pacer admitted now, taking `seconds`."""
        throttled = self.pacer.throttled()
        turn = Turn(self.clock.now)
        self.clock.now += seconds
        turn.bytes = size
        self.pacer.finished(turn, throttled)


def test_busy_until_the_first_sample_says_otherwise() -> None:
    node = Node()
    assert node.pacer.throttled()  # no recent sample: assume clients
    node.clock.now += FIRST_SAMPLE_S / 2
    assert node.pacer.throttled()  # still no rate to go by
    node.clock.now += FIRST_SAMPLE_S
    assert not node.pacer.throttled()  # a quick first window: no requests in it
    node.serve(requests=100, seconds=SAMPLE_S)  # 200 requests/s
    assert node.pacer.throttled()
    node.serve(requests=5, seconds=SAMPLE_S)  # 10 requests/s: under the default 20
    assert not node.pacer.throttled()
    node.serve(requests=0, seconds=10 * SAMPLE_S)  # a stale sample counts as busy again
    assert node.pacer.throttled()


def test_quiet_pages_start_at_once() -> None:
    node = Node()
    node.serve(requests=0, seconds=SAMPLE_S)
    node.page(seconds=0.2)
    assert not node.pacer.throttled()
    assert node.pacer.delay(throttled=False) == 0.0


def test_busy_pages_keep_to_their_share_of_the_time() -> None:
    node = Node(handoff_busy_share=0.25)
    node.serve(requests=1000, seconds=SAMPLE_S)
    node.page(seconds=0.1)
    assert node.pacer.delay(throttled=True) == pytest.approx(0.3)  # 0.1 of every 0.4 s
    assert node.pacer.delay(throttled=False) == 0.0  # clients gone: no pause
    node.clock.now += 0.3
    node.page(seconds=0.4)  # slowed by the clients: a longer pause after it
    assert node.pacer.delay(throttled=True) == pytest.approx(1.2)


def test_share_one_never_throttles() -> None:
    node = Node(handoff_busy_share=1.0)
    node.serve(requests=1000, seconds=SAMPLE_S)
    assert node.pacer.busy()
    assert not node.pacer.throttled()


def test_byte_cap_spaces_page_starts() -> None:
    node = Node(handoff_max_mb_per_s=1.0)
    node.serve(requests=0, seconds=SAMPLE_S)
    start = node.clock.now
    node.page(seconds=0.1, size=500_000)
    assert node.clock.now + node.pacer.delay(throttled=False) == pytest.approx(start + 0.5)
    node.clock.now = start + 0.5
    node.page(seconds=0.7, size=500_000)  # slower than the cap allows: no wait after it
    assert node.pacer.delay(throttled=False) == 0.0


async def test_busy_turns_run_one_at_a_time() -> None:
    node = Node(handoff_busy_share=0.5)  # the clock stands still: every pause is 0 s
    node.serve(requests=1000, seconds=SAMPLE_S)
    inside: list[str] = []
    release = asyncio.Event()

    async def page(name: str) -> None:
        async with node.pacer.turn():
            inside.append(name)
            await release.wait()
            inside.remove(name)

    tasks = [asyncio.create_task(page(n)) for n in ("a", "b")]
    for _ in range(5):
        await asyncio.sleep(0)  # let both tasks run as far as they can
    assert inside == ["a"]
    release.set()
    await asyncio.gather(*tasks)
    assert inside == []


async def test_a_failed_page_is_followed_by_no_pause() -> None:
    node = Node(handoff_busy_share=0.25)
    node.serve(requests=1000, seconds=SAMPLE_S)
    with pytest.raises(TimeoutError):
        async with node.pacer.turn():
            node.clock.now += 2.0  # a source that never answered
            raise TimeoutError
    assert node.pacer.delay(throttled=True) == 0.0
    async with node.pacer.turn():
        node.clock.now += 0.1
    assert node.pacer.delay(throttled=True) == pytest.approx(0.3)


async def test_a_cancelled_turn_frees_its_place() -> None:
    node = Node()
    node.serve(requests=1000, seconds=SAMPLE_S)
    entered = asyncio.Event()

    async def stuck() -> None:
        async with node.pacer.turn():
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(stuck())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with node.pacer.turn() as turn:  # a newer epoch's pull is admitted
        assert turn.started == node.clock.now


def test_budget_layers_and_validation(tmp_path: Path) -> None:
    file = tmp_path / "node.json"
    file.write_text(json.dumps({"node_name": "n1", "handoff_ranges": 2,
                                "handoff_busy_share": 0.5}))
    settings = load(str(file), env={"RINGKV_HANDOFF_BUSY_SHARE": "0.1"})
    assert (settings.handoff_ranges, settings.handoff_busy_share) == (2, 0.1)
    assert settings.handoff_max_mb_per_s == 0.0  # default: no cap
    for bad in ({"RINGKV_HANDOFF_BUSY_SHARE": "0"}, {"RINGKV_HANDOFF_BUSY_SHARE": "1.5"},
                {"RINGKV_HANDOFF_RANGES": "0"}, {"RINGKV_HANDOFF_MAX_MB_PER_S": "-1"},
                {"RINGKV_HANDOFF_BUSY_REQUESTS": "nan"}):
        with pytest.raises(ConfigError):
            load(None, env={"RINGKV_NODE_NAME": "n1", **bad})


def test_client_traffic_is_authorized_key_value_requests() -> None:
    """What the pacer counts: /v1/kv requests with any answer but 401 (a client without
    the token must not be able to slow handoff down)."""
    stats = RequestStats()
    for route, status in [("/v1/kv/{key}", 200), ("/v1/kv/{key}", 404), ("/v1/kv", 200),
                          ("/v1/kv/{key}", 401), ("/v1/cluster", 200), ("/metrics", 200)]:
        stats.observe(route, "GET", status, 0.001)
    assert client_requests(stats) == 3
