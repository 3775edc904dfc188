"""When a /v1/cluster document describes a settled cluster (`ringkv status --wait`)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ringkv.client.settle import unsettled

MEMBER = {"name": "n0", "state": "normal", "reachable": True, "ready": True, "epoch": 4}
SETTLED: dict[str, Any] = {
    "epoch": 4, "settled": True, "rebalance": {"active": False, "ranges_left": 0},
    "members": [MEMBER, {**MEMBER, "name": "n1"}, {**MEMBER, "name": "n2"}],
}


def changed(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(SETTLED)
    *parents, last = path
    target = doc
    for key in parents:
        target = target[key]
    target[last] = value
    return doc


def test_a_settled_cluster() -> None:
    assert unsettled(SETTLED) is None


@pytest.mark.parametrize(("path", "value", "reason"), [
    (("settled",), False, "epoch 4 is not settled"),
    (("members", 1, "state"), "joining", "n1 is joining"),
    (("members", 1, "state"), "leaving", "n1 is leaving"),
    (("members", 2, "reachable"), False, "n2 is unreachable"),
    (("members", 0, "ready"), False, "n0 is not ready"),
    (("members", 2, "epoch"), 3, "n2 is at epoch 3, not 4"),
    (("rebalance", "active"), True, "a rebalance is running (0 ranges left)"),
])
def test_what_keeps_a_cluster_unsettled(path: tuple[Any, ...], value: Any, reason: str) -> None:
    assert unsettled(changed(path, value)) == reason
