"""The membership store of a local cluster: one JSON file, replaced atomically (the
ConfigMap's role on Kubernetes)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ringkv.node import membership
from ringkv.node.membership import Document


class FileStore:
    """The reconciler's `Store` on a file: ``load`` and ``save`` a membership document;
    what the controller observes goes to ``status.json`` beside it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.status_path = path.with_name("status.json")

    async def load(self) -> Document | None:
        return membership.load(str(self.path))

    async def save(self, doc: Document) -> None:
        membership.save(str(self.path), doc)

    async def save_status(self, status: dict[str, Any]) -> None:
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, indent=2))
        os.replace(tmp, self.status_path)
