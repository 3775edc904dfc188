"""The membership store of a local cluster: one JSON file, replaced atomically (the
ConfigMap's role on Kubernetes)."""

from __future__ import annotations

from pathlib import Path

from ringkv.node import membership
from ringkv.node.membership import Document


class FileStore:
    """The reconciler's `Store` on a file: ``load`` and ``save`` a membership document."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def load(self) -> Document | None:
        return membership.load(str(self.path))

    async def save(self, doc: Document) -> None:
        membership.save(str(self.path), doc)
