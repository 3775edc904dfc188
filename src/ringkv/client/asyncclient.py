"""Asyncio ringkv client on aiohttp, with the same methods as the blocking ``Client``.

Use it as ``async with AsyncClient(urls) as c:`` (or call ``await c.close()``); the aiohttp
session is created on first use, inside the running loop. Retries follow the rule in
:mod:`ringkv.client.wire`.

aiohttp itself re-sends a PUT or DELETE once on the same node when a kept-alive connection
drops mid-request (RFC 9112 section 9.3.1); the client cannot switch that off. It never
re-sends a write to another node unless no byte of it was sent, which it learns from
aiohttp's request-headers-sent trace signal.
"""

from __future__ import annotations

import asyncio
import builtins  # `list` in AsyncClient's annotations is its method
import random
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from types import SimpleNamespace, TracebackType

import aiohttp
from yarl import URL

from ringkv.client import wire
from ringkv.client.errors import NotFound, PreconditionFailed, RingkvError
from ringkv.client.wire import Base, Call, Entry, Meta, Page, Reply, TransportFailure


class _Attempt:
    """Per-request trace context: did any request headers leave for the node?"""

    sent = False


async def _on_headers_sent(
    _session: aiohttp.ClientSession,
    ctx: SimpleNamespace,
    _params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    if isinstance(ctx.trace_request_ctx, _Attempt):
        ctx.trace_request_ctx.sent = True


class AsyncClient:
    """Talks to any of ``urls``; every method raises a :class:`RingkvError` subclass."""

    def __init__(
        self,
        urls: list[str] | str = wire.DEFAULT_URL,
        token: str | None = None,
        timeout: float = wire.DEFAULT_TIMEOUT,
        attempts: int | None = None,
        *,
        connection_limit: int = 100,
        ca_file: str | None = None,
    ) -> None:
        self._ssl: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_file) if ca_file else True
        )
        self._targets = wire.Targets(urls, attempts)
        self._auth = wire.auth_headers(token)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._limit = connection_limit
        self._session: aiohttp.ClientSession | None = None
        self._rng = random.Random()

    @property
    def urls(self) -> list[str]:
        """The node URLs, in the order given."""
        return [b.url for b in self._targets.bases]

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the aiohttp session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def put(
        self,
        key: str,
        value: bytes | str,
        *,
        content_type: str | None = None,
        consistency: str | None = None,
        ttl: int | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        """Write ``value``; returns the version written."""
        call = wire.put_call(
            key,
            value,
            content_type=content_type,
            consistency=consistency,
            ttl=ttl,
            if_match=if_match,
            if_none_match=if_none_match,
        )
        return wire.version_of(await self._call(call))

    async def get(self, key: str, *, consistency: str | None = None) -> Entry:
        """Read a key; raises NotFound when it is absent, deleted or expired."""
        return wire.entry_of(key, await self._call(wire.read_call("GET", key, consistency)))

    async def head(self, key: str, *, consistency: str | None = None) -> Meta:
        """Version and content type of a key without its value; raises NotFound."""
        return wire.meta_of(key, await self._call(wire.read_call("HEAD", key, consistency)))

    async def delete(self, key: str, *, consistency: str | None = None, if_match: str | None = None) -> str:
        """Delete a key (also when absent, unless ``if_match`` is given); returns the
        tombstone's version."""
        call = wire.delete_call(key, consistency, if_match)
        return wire.version_of(await self._call(call))

    async def incr(self, key: str, by: int = 1, *, ttl: int | None = None,
                   consistency: str | None = None) -> int:
        """Add ``by`` to the key's decimal integer value (absent: 0) atomically, in one Paxos
        round on the node (``POST ?op=incr``); returns the new value. PreconditionFailed
        when the value is not an integer."""
        return wire.counter_of(await self._call(wire.incr_call(key, by, ttl, consistency)))

    async def update(self, key: str, fn: Callable[[bytes | None], bytes | str], *,
                     content_type: str | None = None, ttl: int | None = None,
                     timeout: float = 10.0) -> tuple[str, bytes | str]:
        """Read-modify-write without lost updates, as ``Client.update``: a compare-and-set
        loop with random growing pauses, for up to ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        attempt = 0
        while True:
            try:
                current: Entry | None = await self.get(key)
            except NotFound:
                current = None
            step = wire.update_step(current, fn)
            try:
                return await self.put(key, step.value, content_type=content_type, ttl=ttl,
                                      if_match=step.if_match,
                                      if_none_match=step.if_match is None), step.value
            except PreconditionFailed:
                attempt += 1
            # Outside the except: a ConflictRetryExhausted is not raised "during" the 412.
            await asyncio.sleep(wire.update_pause(attempt, self._rng, deadline - loop.time(), key, timeout))

    async def list(self, prefix: str = "", limit: int | None = None, cursor: str | None = None) -> Page:
        """One page of keys, sorted bytewise; pass ``page.cursor`` back for the next."""
        return wire.page_of(await self._call(wire.list_call(prefix, limit, cursor)))

    async def pages(self, prefix: str = "", limit: int | None = None) -> AsyncIterator[Page]:
        """Every page under ``prefix``; ``limit`` is the page size."""
        cursor: str | None = None
        while True:
            page = await self.list(prefix, limit, cursor)
            yield page
            if page.cursor is None:
                return
            cursor = page.cursor

    async def cluster(self) -> dict[str, object]:
        """``GET /v1/cluster``: membership, epoch, settled, per-node state, rebalance."""
        return wire.json_object(await self._call(wire.CLUSTER_CALL))

    async def replicas(self, key: str) -> dict[str, object]:
        """``GET /v1/replicas/{key}``: the nodes that should hold it and their versions."""
        return wire.json_object(await self._call(wire.replicas_call(key)))

    async def export_page(self, part: int, parts: int, cursor: str | None = None,
                          limit: int | None = None) -> wire.ExportPage:
        """One page of a backup: records of part ``part`` of ``parts`` after ``cursor``."""
        return wire.export_page_of(await self._call(wire.export_call(part, parts, cursor, limit)))

    async def import_records(self, records: Sequence[Sequence[object]]) -> int:
        """Merge records (as ``export_page`` gives them) into the cluster by version."""
        merged = wire.json_object(await self._call(wire.import_call(records))).get("merged")
        if not isinstance(merged, int):
            raise RingkvError("bad_response", "the import answer has no 'merged' count")
        return merged

    async def report_backup(self, report: dict[str, object]) -> builtins.list[str]:
        """Report a finished backup; the names of the members that stored it."""
        stored = wire.json_object(await self._call(wire.report_call(report))).get("stored_on")
        return [str(n) for n in stored] if isinstance(stored, list) else []

    async def last_backup(self) -> dict[str, object] | None:
        """The newest backup reported to the cluster, or None."""
        last = wire.json_object(await self._call(wire.LAST_BACKUP_CALL)).get("last")
        return last if isinstance(last, dict) else None

    async def stats(self, since: int | None = None) -> dict[str, object]:
        """``GET /v1/stats``: each member's counters since it started and its recent rates
        (samples newer than ``since``, ms since the epoch)."""
        return wire.json_object(await self._call(wire.stats_call(since)))

    async def history(self) -> dict[str, object]:
        """``GET /v1/cluster/history``: the membership changes the node has seen, with times."""
        return wire.json_object(await self._call(wire.HISTORY_CALL))

    async def ready(self, url: str | None = None) -> bool:
        """Whether the node at ``url`` (default: the first URL) answers /readyz with 200."""
        base = wire.parse_base(url) if url else self._targets.bases[0]
        try:
            reply = await self._send(base, Call("GET", "/readyz"), auth=False)
        except TransportFailure:
            return False
        return reply.status == 200

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            trace = aiohttp.TraceConfig()
            trace.on_request_headers_sent.append(_on_headers_sent)
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=self._limit, ssl=self._ssl),
                trace_configs=[trace],
            )
        return self._session

    async def _call(self, call: Call) -> Reply:
        tried: list[str] = []
        outcome: Reply | TransportFailure
        for attempt, base in enumerate(self._targets.plan()):
            if attempt:
                await asyncio.sleep(wire.backoff(attempt))
            tried.append(base.url)
            try:
                outcome = await self._send(base, call)
            except TransportFailure as failure:
                outcome = failure
            if wire.node_failed(outcome):
                self._targets.failed(base)
            if not wire.worth_retrying(call, outcome):
                break
        return wire.give_up(call, outcome, tried)

    async def _send(self, base: Base, call: Call, *, auth: bool = True) -> Reply:
        attempt = _Attempt()
        headers = {**self._auth, **call.headers} if auth else dict(call.headers)
        try:
            async with self._get_session().request(
                call.method,
                URL(base.url + call.target, encoded=True),
                data=call.body,
                headers=headers,
                allow_redirects=False,
                trace_request_ctx=attempt,
            ) as resp:
                body = await resp.read()
                headers_lc = {name.lower(): value for name, value in resp.headers.items()}
                return Reply(resp.status, headers_lc, body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            not_sent = isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
            timed_out = isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError)
            refused = (isinstance(exc, aiohttp.ClientConnectorError)
                       and isinstance(exc.os_error, ConnectionRefusedError))
            raise TransportFailure(
                base.url, exc, sent=attempt.sent or not not_sent, timed_out=timed_out,
                refused=refused,
            ) from exc
