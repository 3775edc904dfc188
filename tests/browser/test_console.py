"""The console (`/ui/`) in a real Chromium against a real `ringkv up` cluster.

What a person would do: open the page, type the token, watch the members; kill a node and
watch it leave, the survivors' progress bars fill and the epoch settle; inspect a key;
store keys that are HTML and see them as text. Every wait is for a condition on the page,
with a generous deadline; nothing here sleeps a fixed time.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import consolepage as page
import pytest
from consolepage import members, progress, run, summary, timeline
from harness import API_TOKEN, LocalCluster, http, wait_for

NODES = 4
NOTHING = "\u2013"  # what the page shows for a number it does not have
XSS_KEYS = ('<img src=x onerror="window.__xss=1">', "<script>window.__xss=1</script>",
            '"><svg onload="window.__xss=1">', "a/<b>bold</b>/&amp;")


class Load:
    """A light, steady client load (reads and writes through every node) while a test runs,
    so the charts have something to draw. Bounded: it stops by itself after `seconds`."""

    def __init__(self, urls: list[str], seconds: float = 300, per_second: float = 25) -> None:
        self.urls = urls
        self.deadline = time.monotonic() + seconds
        self.pause = 1 / per_second
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self.done.is_set() and time.monotonic() < self.deadline:
            url = self.urls[i % len(self.urls)]
            try:
                if i % 3 == 0:
                    http("PUT", f"{url}/v1/kv/load-{i % 200}", f"value {i}".encode(), timeout=5)
                else:
                    http("GET", f"{url}/v1/kv/load-{(i * 7) % 200}", timeout=5)
            except OSError:
                pass  # a node being killed: the next request goes elsewhere
            i += 1
            self.done.wait(self.pause)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Four nodes, rf=3. Handoff is capped at 0.1 MB/s, so re-replicating a few MB takes
    long enough to watch; a killed node is not restarted during the module, and is removed
    at once (no grace period) so its copies are restored while the page watches."""
    local = LocalCluster(tmp_path_factory.mktemp("console"), nodes=NODES, rf=3,
                         restart_delay=3600, down_grace=0,
                         extra_env={"RINGKV_HANDOFF_MAX_MB_PER_S": "0.1"})
    try:
        yield local.start()
    finally:
        local.stop()


# -- driving the page ---------------------------------------------------------------------
def open_console(browser: Any, url: str, token: str = API_TOKEN) -> None:
    page.open_console(browser, url, token)


def shoot(browser: Any, where: Path | None, name: str) -> None:
    """Save the whole page as `name`.png when screenshots were asked for."""
    if where is not None:
        width = run(browser, "return window.outerWidth")
        height = run(browser, """return document.querySelector('footer').getBoundingClientRect().bottom
            + window.scrollY + window.outerHeight - window.innerHeight""")
        browser.set_window_size(width, int(height) + 4)
        browser.save_screenshot(str(where / f"{name}.png"))


def inspect(browser: Any, key: str) -> None:
    field = browser.find_element("id", "inspect-key")
    field.clear()
    field.send_keys(key)
    browser.find_element("css selector", "#inspect-form button").click()


def put(url: str, key: str, body: bytes, content_type: str = "application/octet-stream") -> str:
    r = http("PUT", f"{url}/v1/kv/{quote(key, safe='')}", body, {"Content-Type": content_type})
    assert r.status == 200, r.body
    return r.json()["version"]


# -- tests ----------------------------------------------------------------------------------
def test_a_wrong_token_gets_a_clear_message(cluster: LocalCluster, browser: Any) -> None:
    open_console(browser, cluster.url(0), token="not-the-token")
    message = wait_for(lambda: run(browser, """const e = document.getElementById('gate-error');
        return e.hidden ? null : e.textContent"""), 30, "the error under the token field")
    assert "refused this token" in message and "401" in message
    assert run(browser, "return document.getElementById('console').hidden")
    assert run(browser, "return sessionStorage.getItem('ringkv.token')") is None


def test_the_page_lists_every_member_and_draws_the_traffic(
        cluster: LocalCluster, browser: Any, screenshots: Path | None) -> None:
    urls = [cluster.url(i) for i in range(NODES)]
    for i in range(200):  # the keys the load reads
        put(urls[i % NODES], f"load-{i}", b"first")
    with Load(urls):
        open_console(browser, urls[0])
        names = {f"node-{i}" for i in range(NODES)}
        wait_for(lambda: members(browser) == dict.fromkeys(names, "normal"), 30, "every member")
        epoch, settled = summary(browser)
        assert epoch == cluster.cluster_info()["epoch"] and settled == "settled"
        # The token is kept for the tab, and it never appears in a URL the page asked for.
        assert run(browser, "return sessionStorage.getItem('ringkv.token')") == API_TOKEN
        asked = run(browser, "return performance.getEntriesByType('resource').map(e => e.name)")
        assert asked and not any(API_TOKEN in u for u in asked)
        # The nodes' counters, as rates: reads and writes per second show up in the chart.
        legend = """return Object.fromEntries([...document.querySelectorAll(
            '#chart-throughput .legend li')].map(li => [li.querySelector('.legend-name').textContent,
            li.querySelector('.legend-value').textContent]))"""
        wait_for(lambda: all(v not in ("0", NOTHING) for v in run(browser, legend).values()), 60,
                 "reads and writes in the throughput chart")
        rates = run(browser, """return [...document.querySelectorAll('tr.member')].map(
            r => r.children[6].textContent)""")
        assert any(r not in ("0", NOTHING) for r in rates), rates
        assert run(browser, "return document.querySelectorAll('#ring path.band').length") > NODES
        wait_for(lambda: run(browser, "return document.querySelectorAll('#timeline li.change').length"),
                 30, "the membership timeline")
        if screenshots is not None:
            wait_for(lambda: run(browser, """return document.querySelectorAll(
                '#chart-throughput path.line')[0]?.getTotalLength() > 150"""), 120, "a longer line")
        shoot(browser, screenshots, "overview")


def test_the_key_inspector_shows_three_replicas_with_versions(
        cluster: LocalCluster, browser: Any, screenshots: Path | None) -> None:
    url = cluster.url(1)
    document = {"user": "ada", "roles": ["admin", "ops"], "visits": 42}
    version = put(url, "user/ada", json.dumps(document).encode(), "application/json")
    open_console(browser, cluster.url(0))
    wait_for(lambda: members(browser), 30, "the members")
    inspect(browser, "user/ada")
    rows = """return [...document.querySelectorAll('#inspector tr.replica')].map(r => [
        r.dataset.node, r.querySelector('.version').textContent, r.children[5].textContent,
        r.children[6].textContent])"""
    found = wait_for(lambda: len(run(browser, rows)) == 3 and run(browser, rows), 30, "three replicas")
    assert all(v == version for _, v, _, _ in found), found
    assert all(size.strip() == f"{len(json.dumps(document))} B" for _, _, size, _ in found), found
    assert all(ctype == "application/json" for _, _, _, ctype in found), found
    replicas = http("GET", f"{url}/v1/replicas/user%2Fada").json()["replicas"]
    assert {n for n, _, _, _ in found} == {r["node"] for r in replicas}
    preview = wait_for(lambda: run(browser, """const p = document.querySelector('#preview pre');
        return p && p.textContent"""), 30, "the value preview")
    assert json.loads(preview) == document
    shoot(browser, screenshots, "key-inspector")


def test_keys_and_values_that_are_html_stay_text(cluster: LocalCluster, browser: Any) -> None:
    url = cluster.url(2)
    for key in XSS_KEYS:
        put(url, key, f"<img src=x onerror=\"window.__xss=1\"> for {key}".encode(), "text/html")
    open_console(browser, cluster.url(0))
    wait_for(lambda: members(browser), 30, "the members")
    run(browser, """window.__xss = 0; window.__violations = 0;
        document.addEventListener('securitypolicyviolation', () => window.__violations += 1);""")
    shown = """const k = document.querySelector('#inspector .key');
        const p = document.querySelector('#preview pre');
        return k && p ? [k.textContent, p.textContent] : null"""
    for key in XSS_KEYS:
        inspect(browser, key)
        expected = [key, f"<img src=x onerror=\"window.__xss=1\"> for {key}"]
        wait_for(lambda expected=expected: run(browser, shown) == expected, 30,
                 f"the key {key!r} and its value shown as text")
        # Nothing was parsed as markup: the only image is the logo, no script, no svg element
        # outside the drawings, no handler ran, and the CSP had nothing to block.
        assert run(browser, "return document.images.length") == 1
        assert run(browser, "return document.querySelectorAll('#inspector script, #inspector img, "
                            "#inspector svg, #inspector b').length") == 0
        assert run(browser, "return window.__xss") == 0
        assert run(browser, "return window.__violations") == 0


def test_a_killed_node_leaves_and_the_survivors_restore_the_copies(
        cluster: LocalCluster, browser: Any, screenshots: Path | None) -> None:
    url = cluster.url(0)
    value = b"x" * 1000
    for i in range(3000):  # ~3 MB: at the 0.1 MB/s cap each survivor pulls for seconds
        http("PUT", f"{url}/v1/kv/bulk-{i}", value)
    before = cluster.cluster_info()["epoch"]
    open_console(browser, url)
    names = {f"node-{i}" for i in range(NODES)}
    wait_for(lambda: set(members(browser)) == names, 30, "every member")

    cluster.control.kill("node-3")
    seen_states: set[str] = set()
    bars: dict[str, set[float]] = {}
    shot = False

    def left_and_settled() -> bool:
        nonlocal shot
        seen_states.add(members(browser).get("node-3", "gone"))
        for name, (done, top, active) in progress(browser).items():
            if active:
                bars.setdefault(name, set()).add(done)
                if not shot and done >= top / 3:  # a few samples in: rates and estimates shown
                    shoot(browser, screenshots, "rebalance")
                    shot = True
        epoch, settled = summary(browser)
        return "node-3" not in members(browser) and epoch > before and settled == "settled"

    wait_for(left_and_settled, 180, "node-3 to leave and the epoch to settle", interval=0.1)
    moved = {name: sorted(values) for name, values in bars.items() if len(values) > 1}
    assert moved, f"no progress bar moved while active: {bars}"
    assert "gone" in seen_states
    final = progress(browser)
    assert all(done == top for done, top, _ in final.values()), final
    # The timeline is fetched when the page sees a new epoch: it may trail the header a poll.
    wait_for(lambda: any("node-3 removed" in line for line in timeline(browser))
             and any(line.endswith("settled") for line in timeline(browser)), 30,
             "the timeline to tell the removal and the settle")
