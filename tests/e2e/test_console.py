"""The console on a real Kubernetes: opened through `kubectl port-forward svc/<release>`
as a user would, it shows a node pod's deletion (the member away, then back, and the
cluster settled) while it happens."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from consolepage import chromium, find_chromium, members, open_console, summary, timeline
from e2e.support import PortForward, Release, installed, say, wait_for

from ringkv.client import Client

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

NODES = 3
RF = 3


@pytest.fixture(scope="module")
def release(tools: tuple[str, str], request: pytest.FixtureRequest) -> Iterator[Release]:
    with installed(tools, request, "ringkv-console", NODES, RF) as rel:
        yield rel


def test_the_console_through_port_forward_sees_a_pod_deletion(release: Release) -> None:
    browser_tools = find_chromium()
    forward = PortForward(release.kube, f"svc/{release.name}", log_dir=release.log_dir).start()
    try:
        with Client(forward.url, token=release.token, timeout=10) as client:
            serving = client.cluster()["node"]
        # The port-forward holds one pod: delete another, as the page is served through it.
        victim = next(n for n in reversed(release.node_names) if n != serving)
        with chromium(*browser_tools) as browser:
            open_console(browser, forward.url, release.token)
            wait_for(lambda: members(browser) == dict.fromkeys(release.node_names, "normal"), 120,
                     "the console to list every node pod as a normal member", interval=0.5)
            epoch_before, _ = summary(browser)
            release.kube.kubectl("delete", "pod", victim, "--wait=false")
            say(f"deleted pod {victim}; the console is served by {serving}")
            seen: list[str] = []

            def back_and_settled() -> bool:
                state = members(browser).get(victim, "gone")
                if not seen or seen[-1] != state:
                    seen.append(state)
                _epoch, settled = summary(browser)
                return len(seen) > 1 and state == "normal" and settled == "settled"

            wait_for(back_and_settled, 600, f"the console to show {victim} away and back, settled",
                     interval=0.2)
            say(f"the console showed {victim} as {' -> '.join(seen)}")
            assert seen[0] == "normal" and set(seen[1:-1]) - {"normal"}, seen
            epoch_after, _ = summary(browser)
            if epoch_after > epoch_before:  # the membership changed: its timeline says how
                wait_for(lambda: any(victim in line for line in timeline(browser)), 60,
                         f"the timeline to name {victim}", interval=0.5)
    finally:
        forward.close()
