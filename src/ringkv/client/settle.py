"""Whether a cluster has settled, and waiting until it has (`ringkv status --wait`).

Settled means what `helm install --wait` and a pod's readiness do not: the membership
epoch is settled, every member is `normal`, reachable, ready and on that epoch, and no
rebalance is running, so every key has its `rf` copies where the ring puts them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from ringkv.client.errors import RingkvError, Unavailable

Cluster = Mapping[str, Any]  # the /v1/cluster document


class NotSettled(Exception):
    """The cluster did not settle in time: why, and the last document seen (if any)."""

    def __init__(self, reason: str, last: Cluster | None) -> None:
        super().__init__(reason)
        self.last = last


def unsettled(doc: Cluster) -> str | None:
    """Why the cluster described by `doc` is not settled, or None if it is."""
    epoch = doc.get("epoch")
    if not doc.get("settled"):
        return f"epoch {epoch} is not settled"
    for m in doc.get("members") or ():
        name = m.get("name")
        if m.get("state") != "normal":
            return f"{name} is {m.get('state')}"
        if not m.get("reachable", True):
            return f"{name} is unreachable"
        if not m.get("ready"):
            return f"{name} is not ready"
        if m.get("epoch") != epoch:
            return f"{name} is at epoch {m.get('epoch')}, not {epoch}"
    rebalance = doc.get("rebalance") or {}
    if rebalance.get("active"):
        return f"a rebalance is running ({rebalance.get('ranges_left')} ranges left)"
    return None


def wait(fetch: Callable[[], Cluster], seconds: float, report: Callable[[str], None],
         interval: float = 1.0) -> Cluster:
    """Poll `fetch` until the cluster is settled; its document. Nodes that cannot answer
    yet (down, not ready, a port-forward being restarted) are waited for like the rest;
    other errors (a wrong token) are raised at once. `report` hears each new reason to
    wait. Raises NotSettled after `seconds`."""
    deadline = time.monotonic() + seconds
    last: Cluster | None = None
    said = None
    reason: str | None
    while True:
        try:
            doc = fetch()
        except RingkvError as exc:
            if not (isinstance(exc, Unavailable) or exc.status in (502, 503, 504)):
                raise
            reason = str(exc)
        else:
            last, reason = doc, unsettled(doc)
            if reason is None:
                return doc
        if reason != said:
            report(reason)
            said = reason
        if time.monotonic() + interval > deadline:
            raise NotSettled(reason, last)
        time.sleep(interval)
