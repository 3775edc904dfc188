"""Version and hybrid-logical-clock tests.

Correctness rule 2 rests on two properties checked here: versions order by (hlc as an
integer, node), and a clock never issues a value at or below one it issued or observed,
whatever its physical clock does (stalls, jumps back, runs ten minutes slow).
"""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.node.versions import COUNTER_BITS, MAX_HLC, HybridClock, Version, valid_node_name

NODE_NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}", fullmatch=True)
HLCS = st.integers(0, MAX_HLC)


class StalledClock(HybridClock):
    """A clock whose physical time stands still: a real HybridClock with a frozen wall."""

    def __init__(self, wall_ms: int) -> None:
        super().__init__()
        self.wall_ms = wall_ms

    def physical_ms(self) -> int:
        return self.wall_ms


# --- Version ---------------------------------------------------------------------------


def test_versions_order_by_hlc_as_integer_then_node() -> None:
    assert Version(9, "z") < Version(10, "a")  # "9.z" > "10.a" as strings: must not matter
    assert Version(5, "node-0") < Version(5, "node-1")
    assert Version(5, "a") == Version(5, "a")
    assert max(Version(7, "b"), Version(7, "a"), Version(6, "z")) == Version(7, "b")


@given(a=st.tuples(HLCS, NODE_NAMES), b=st.tuples(HLCS, NODE_NAMES))
def test_version_order_is_hlc_then_node(a: tuple[int, str], b: tuple[int, str]) -> None:
    va, vb = Version(*a), Version(*b)
    assert (va < vb) == (a[0] < b[0] or (a[0] == b[0] and a[1] < b[1]))
    assert (va == vb) == (a == b)


@settings(max_examples=200)
@given(hlc=HLCS, node=NODE_NAMES)
def test_parse_str_round_trip(hlc: int, node: str) -> None:
    version = Version(hlc, node)
    text = str(version)
    assert text == f"{hlc}.{node}"
    assert Version.parse(text) == version
    assert str(Version.parse(text)) == text


def test_physical_ms_is_the_high_bits() -> None:
    assert Version((1234 << COUNTER_BITS) | 7, "n").physical_ms == 1234


@pytest.mark.parametrize(
    "text",
    [
        "",
        "123",
        "123.",
        ".node",
        "abc",
        "node-0",
        "-1.node",
        "+1.node",
        "1 .node",
        " 1.node",
        "1.node ",
        "1.no de",
        "1.-node",
        "1._node",
        "1..node",
        "1a.node",
        "0x10.node",
        "1.nöde",
        "1.node/x",
        "1.\u00a0node",
        "1" * 21 + ".node",
        "1." + "a" * 254,
        "1.node\x00",
        "\n1.node",
    ],
)
def test_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="not a version"):
        Version.parse(text)


def test_parse_rejects_trailing_newline() -> None:
    with pytest.raises(ValueError):
        Version.parse("1.node\n")


def test_parse_rejects_non_ascii_digits() -> None:
    with pytest.raises(ValueError):
        Version.parse("\u0661\u0662.node")


def test_node_name_rejects_trailing_newline() -> None:
    assert not valid_node_name("node\n")


@given(text=st.text(max_size=40))
def test_parse_accepts_only_canonical_shape(text: str) -> None:
    """Fuzz: whatever parses is `<digits>.<name>`, and prints back to the same version."""
    try:
        version = Version.parse(text)
    except ValueError:
        return
    digits, _, node = text.partition(".")
    assert digits.isascii() and digits.isdigit()
    assert version == Version(int(digits), node)
    assert valid_node_name(node)
    assert Version.parse(str(version)) == version


def test_valid_node_name() -> None:
    assert valid_node_name("node-0")
    assert valid_node_name("ringkv-2.ringkv-peers")
    assert valid_node_name("a" * 253)
    assert not valid_node_name("a" * 254)
    assert not valid_node_name("")
    assert not valid_node_name("-node")
    assert not valid_node_name("node 0")
    assert not valid_node_name("nöde")


# --- HybridClock -----------------------------------------------------------------------


def test_now_is_strictly_increasing_and_tracks_wall_time() -> None:
    clock = HybridClock()
    values = [clock.now() for _ in range(5000)]
    assert all(a < b for a, b in itertools.pairwise(values))
    assert clock.last == values[-1]
    wall_ms = time.time_ns() // 1_000_000
    assert abs((values[-1] >> COUNTER_BITS) - wall_ms) < 5_000


def test_now_keeps_increasing_when_the_physical_clock_stalls() -> None:
    clock = StalledClock(wall_ms=1_700_000_000_000)
    values = [clock.now() for _ in range(70_000)]  # more than the 16-bit counter holds
    assert values[0] == 1_700_000_000_000 << COUNTER_BITS
    assert all(b == a + 1 for a, b in itertools.pairwise(values))


def test_now_keeps_increasing_when_the_physical_clock_goes_back() -> None:
    clock = HybridClock()
    before = [clock.now() for _ in range(100)]
    clock.skew_ms = -3_600_000  # the wall clock jumps an hour back (NTP step)
    after = [clock.now() for _ in range(100)]
    assert after[0] == before[-1] + 1
    assert all(a < b for a, b in itertools.pairwise(after))
    clock.skew_ms = 3_600_000  # and an hour forward: physical time takes over again
    jumped = clock.now()
    assert jumped > after[-1]
    assert jumped >> COUNTER_BITS >= time.time_ns() // 1_000_000 + 3_600_000 - 5_000


def test_observe_pushes_now_past_a_remote_value() -> None:
    clock = HybridClock()
    remote = HybridClock(skew_ms=3_600_000).now()  # a peer an hour ahead
    assert clock.now() < remote
    clock.observe(remote)
    assert clock.last == remote
    issued = clock.now()
    assert issued > remote
    assert issued == remote + 1  # the counter moves; the physical part is the remote's


def test_observe_never_moves_the_clock_back() -> None:
    clock = HybridClock()
    issued = clock.now()
    clock.observe(issued - 1_000_000)
    clock.observe(0)
    assert clock.last == issued
    assert clock.now() > issued


def test_slow_clock_issues_greater_value_after_observing_a_normal_one() -> None:
    """Rule 2 across clocks: a node ten minutes slow still writes a newer version."""
    normal = HybridClock()
    slow = HybridClock(skew_ms=-600_000)
    seen = normal.now()
    assert slow.now() < seen  # without observing, the slow node would lose
    slow.observe(seen)
    newer = slow.now()
    assert newer > seen
    assert Version(newer, "a-slow-node") > Version(seen, "z-normal-node")


def test_parse_rejects_hlc_beyond_int64() -> None:
    """SQLite stores the hlc in a signed 64-bit INTEGER: larger values are not versions."""
    assert Version.parse(f"{MAX_HLC}.n") == Version(MAX_HLC, "n")
    with pytest.raises(ValueError):
        Version.parse(f"{MAX_HLC + 1}.n")
