"""Talking to nodes on their internal port: status polls, membership pushes, cleanup.

Both the local launcher and the kopf operator use this adapter; it speaks the same framed
protocol as the nodes (`ringkv.node.transport`), authenticated with the cluster token.
"""

from __future__ import annotations

from typing import Any

from ringkv.node import peerops
from ringkv.node.membership import Document, InvalidDocument, Member
from ringkv.node.peerops import Request
from ringkv.node.security import TlsFiles, client_context
from ringkv.node.transport import PeerLink, StaleEpoch

from .controller import Report


class NodeClient:
    """Implements the reconciler's `Nodes` protocol over one PeerLink per node address."""

    def __init__(self, cluster_token: str, timeout: float = 5.0, caller: str = "controller",
                 tls: TlsFiles | None = None) -> None:
        self._token = cluster_token
        # With TLS on the nodes' peer port, the controller dials like a peer (mutual TLS).
        self._ssl = client_context(tls) if tls is not None and tls.enabled else None
        self._timeout = timeout
        self._caller = caller
        self._links: dict[str, PeerLink] = {}

    def _link(self, member: Member) -> PeerLink:
        link = self._links.get(member.name)
        if link is None or link.address != member.url:
            if link is not None:
                link.close()
            link = PeerLink(member.name, member.url, self._token, self._caller,
                            epoch=lambda: -1, on_stale=lambda _doc: None, timeout=self._timeout,
                            ssl_context=self._ssl)
            self._links[member.name] = link
        return link

    async def _call(self, member: Member, request: Request) -> Any:
        link = self._link(member)
        link.revive()  # the controller must reach a node that just restarted: never wait out suspicion
        return await link.call(request.method, request.args, check_epoch=False)

    async def status(self, member: Member) -> Report:
        s = await self._call(member, peerops.status())
        epoch = int(s["epoch"])
        return Report(
            name=str(s["node"]),  # the node's own word: a reused address cannot speak for another
            epoch=epoch,
            caught_up=bool(s["caught_up"]),
            settled_epoch_acked=int(s.get("settled_epoch_acked", 0)),
            data_id=str(s.get("data_id") or ""),
            waiting=tuple(str(line) for line in s.get("waiting") or ()),
            document=await self._document(member) if epoch > 0 else None,
        )

    async def _document(self, member: Member) -> Document | None:
        """The document the node holds, asked for the way a peer with an old epoch learns it:
        a request sent at an epoch below any a node can hold (-1; 0 means "unchecked") is
        answered "stale epoch" with the node's document. Other calls send 0."""
        link = self._link(member)
        link.revive()
        request = peerops.status()
        try:
            await link.call(request.method, request.args, check_epoch=True)
        except StaleEpoch as stale:
            try:
                return Document.from_json(stale.doc)
            except InvalidDocument:
                return None
        return None

    async def push(self, member: Member, doc: Document) -> None:
        await self._call(member, peerops.membership(doc.to_json()))

    async def cleanup(self, member: Member, epoch: int) -> None:
        await self._call(member, peerops.cleanup(epoch))

    def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()

