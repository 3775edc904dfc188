"""Node settings that would break the node later are refused when it starts."""

from __future__ import annotations

import pytest

from ringkv.node.config import ConfigError, Settings
from ringkv.node.versions import MAX_CLOCK_SKEW_MS, MAX_HLC, HybridClock


def test_a_clock_skew_beyond_ten_years_is_refused() -> None:
    """A skew of 10^20 ms was accepted, and every write then failed with OverflowError."""
    for skew in (10**20, MAX_CLOCK_SKEW_MS + 1, -MAX_CLOCK_SKEW_MS - 1):
        with pytest.raises(ConfigError, match="clock_skew_ms"):
            Settings(node_name="n", clock_skew_ms=skew).validate()
    for skew in (MAX_CLOCK_SKEW_MS, -MAX_CLOCK_SKEW_MS):
        Settings(node_name="n", clock_skew_ms=skew).validate()
        assert 0 < HybridClock(skew).now() <= MAX_HLC  # versions that SQLite can store


@pytest.mark.parametrize("probe_port", [8080, 9080, -1, 70000])
def test_a_probe_port_must_be_its_own_port(probe_port: int) -> None:
    with pytest.raises(ConfigError, match="probe_port"):
        Settings(node_name="n", probe_port=probe_port).validate()
    assert Settings(node_name="n", probe_port=8081).validate().probe_port == 8081
