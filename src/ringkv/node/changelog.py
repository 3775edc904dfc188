"""The membership changes this node has seen, with times: `GET /v1/cluster/history`.

Each adopted document adds one entry: its epoch, when this node adopted it, and
`membership.describe(old, new)`. The entries are appended to a JSON-lines file in the data
directory, so the timeline survives a restart; the file is compacted to the last `KEEP`
entries when it grows past twice that. A line that cannot be read (a crash mid-append)
is skipped: the history is for people, the membership document is the truth.
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from typing import Any

from .membership import Document, describe

log = logging.getLogger("ringkv.node")

KEEP = 200


def entry(old: Document | None, new: Document, time_ms: int) -> dict[str, Any]:
    """One change as the API shows it."""
    if old is None and new.epoch > 1:
        # This node's first document, in a cluster that already existed.
        change = f"epoch {new.epoch}: first document here ({', '.join(new.names)}, rf={new.rf})"
    else:
        change = describe(old, new)
    return {"epoch": new.epoch, "time_ms": time_ms, "change": change, "settled": new.settled,
            "members": len(new.members)}


class ChangeLog:
    def __init__(self, path: str, keep: int = KEEP) -> None:
        self.path = path
        self.keep = keep
        self.entries: deque[dict[str, Any]] = deque(maxlen=keep)
        self._lines = 0
        try:
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    self._lines += 1
                    try:
                        self.entries.append(json.loads(line))
                    except ValueError:
                        continue
        except FileNotFoundError:
            pass

    def record(self, old: Document | None, new: Document, time_ms: int) -> None:
        item = entry(old, new, time_ms)
        self.entries.append(item)
        try:
            if self._lines >= 2 * self.keep:
                self._rewrite()
            else:
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(item) + "\n")
                self._lines += 1
        except OSError as exc:  # a full disk must not stop an adoption
            log.warning("could not save the membership history: %s", exc)

    def _rewrite(self) -> None:
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(item) + "\n" for item in self.entries)
        os.replace(tmp, self.path)
        self._lines = len(self.entries)

    def to_json(self) -> list[dict[str, Any]]:
        return list(self.entries)
