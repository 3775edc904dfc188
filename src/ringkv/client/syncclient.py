"""Blocking ringkv client on the standard library's ``http.client``.

It needs no event loop and imports nothing heavy, so the CLI starts fast. One keep-alive
connection per node is reused; not thread-safe (use one Client per thread). Retries follow
the rule in :mod:`ringkv.client.wire`.
"""

from __future__ import annotations

import http.client
import random
import select
import ssl
import time
from collections.abc import Callable, Iterator
from types import TracebackType

from ringkv.client import wire
from ringkv.client.errors import NotFound, PreconditionFailed
from ringkv.client.wire import Base, Call, Entry, Meta, Page, Reply, TransportFailure


class Client:
    """Talks to any of ``urls``; every method raises a :class:`RingkvError` subclass."""

    def __init__(
        self,
        urls: list[str] | str = wire.DEFAULT_URL,
        token: str | None = None,
        timeout: float = wire.DEFAULT_TIMEOUT,
        attempts: int | None = None,
        ca_file: str | None = None,
    ) -> None:
        self._targets = wire.Targets(urls, attempts)
        self._auth = wire.auth_headers(token)
        self._timeout = timeout
        self._conns: dict[str, http.client.HTTPConnection] = {}
        # https:// URLs are verified against the system CAs, or against `ca_file`.
        self._ssl = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self._rng = random.Random()

    @property
    def urls(self) -> list[str]:
        """The node URLs, in the order given."""
        return [b.url for b in self._targets.bases]

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the kept-alive connections."""
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def put(
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
        return wire.version_of(self._call(call))

    def get(self, key: str, *, consistency: str | None = None) -> Entry:
        """Read a key; raises NotFound when it is absent, deleted or expired."""
        return wire.entry_of(key, self._call(wire.read_call("GET", key, consistency)))

    def head(self, key: str, *, consistency: str | None = None) -> Meta:
        """Version and content type of a key without its value; raises NotFound."""
        return wire.meta_of(key, self._call(wire.read_call("HEAD", key, consistency)))

    def delete(self, key: str, *, consistency: str | None = None, if_match: str | None = None) -> str:
        """Delete a key (also when absent, unless ``if_match`` is given); returns the
        tombstone's version."""
        call = wire.delete_call(key, consistency, if_match)
        return wire.version_of(self._call(call))

    def incr(self, key: str, by: int = 1, *, ttl: int | None = None,
             consistency: str | None = None) -> int:
        """Add ``by`` to the key's decimal integer value (absent: 0) atomically, in one Paxos
        round on the node (``POST ?op=incr``); returns the new value. PreconditionFailed
        when the value is not an integer."""
        return wire.counter_of(self._call(wire.incr_call(key, by, ttl, consistency)))

    def update(self, key: str, fn: Callable[[bytes | None], bytes | str], *,
               content_type: str | None = None, ttl: int | None = None,
               timeout: float = 10.0) -> tuple[str, bytes | str]:
        """Read-modify-write without lost updates: read the key, write ``fn(value)`` (value
        None: absent) on condition that the key still holds what was read (If-Match the
        version read, If-None-Match when absent), and on 412 (another writer came first)
        read again and retry after a random pause, for up to ``timeout`` seconds. Returns
        the version written and the value. ``fn`` may run several times.

        Raises ConflictRetryExhausted when other writers kept winning until the timeout."""
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            try:
                current: Entry | None = self.get(key)
            except NotFound:
                current = None
            step = wire.update_step(current, fn)
            try:
                return self.put(key, step.value, content_type=content_type, ttl=ttl,
                                if_match=step.if_match, if_none_match=step.if_match is None
                                ), step.value
            except PreconditionFailed:
                attempt += 1
            # Outside the except: a ConflictRetryExhausted is not raised "during" the 412.
            time.sleep(wire.update_pause(attempt, self._rng, deadline - time.monotonic(), key, timeout))

    def list(self, prefix: str = "", limit: int | None = None, cursor: str | None = None) -> Page:
        """One page of keys, sorted bytewise; pass ``page.cursor`` back for the next."""
        return wire.page_of(self._call(wire.list_call(prefix, limit, cursor)))

    def pages(self, prefix: str = "", limit: int | None = None) -> Iterator[Page]:
        """Every page under ``prefix``; ``limit`` is the page size."""
        cursor: str | None = None
        while True:
            page = self.list(prefix, limit, cursor)
            yield page
            if page.cursor is None:
                return
            cursor = page.cursor

    def cluster(self) -> dict[str, object]:
        """``GET /v1/cluster``: membership, epoch, settled, per-node state, rebalance."""
        return wire.json_object(self._call(wire.CLUSTER_CALL))

    def replicas(self, key: str) -> dict[str, object]:
        """``GET /v1/replicas/{key}``: the nodes that should hold it and their versions."""
        return wire.json_object(self._call(wire.replicas_call(key)))

    def stats(self, since: int | None = None) -> dict[str, object]:
        """``GET /v1/stats``: each member's counters since it started and its recent rates
        (samples newer than ``since``, ms since the epoch)."""
        return wire.json_object(self._call(wire.stats_call(since)))

    def history(self) -> dict[str, object]:
        """``GET /v1/cluster/history``: the membership changes the node has seen, with times."""
        return wire.json_object(self._call(wire.HISTORY_CALL))

    def ready(self, url: str | None = None) -> bool:
        """Whether the node at ``url`` (default: the first URL) answers /readyz with 200."""
        base = wire.parse_base(url) if url else self._targets.bases[0]
        try:
            reply = self._send(base, Call("GET", "/readyz"), auth=False)
        except TransportFailure:
            return False
        return reply.status == 200

    def _call(self, call: Call) -> Reply:
        tried: list[str] = []
        outcome: Reply | TransportFailure
        for attempt, base in enumerate(self._targets.plan()):
            if attempt:
                time.sleep(wire.backoff(attempt))
            tried.append(base.url)
            try:
                outcome = self._send(base, call)
            except TransportFailure as failure:
                outcome = failure
            if wire.node_failed(outcome):
                self._targets.failed(base)
            if not wire.worth_retrying(call, outcome):
                break
        return wire.give_up(call, outcome, tried)

    def _connection(self, base: Base) -> http.client.HTTPConnection:
        conn = self._conns.pop(base.url, None)
        if conn is not None and not _still_open(conn):
            conn.close()
            conn = None
        if conn is None:
            if base.scheme == "https":
                conn = http.client.HTTPSConnection(base.host, base.port, timeout=self._timeout,
                                                   context=self._ssl)
            else:
                conn = http.client.HTTPConnection(base.host, base.port, timeout=self._timeout)
            try:
                conn.connect()
            except OSError as exc:
                conn.close()
                raise TransportFailure(
                    base.url, exc, sent=False, timed_out=isinstance(exc, TimeoutError),
                    refused=isinstance(exc, ConnectionRefusedError),
                ) from exc
        return conn

    def _send(self, base: Base, call: Call, *, auth: bool = True) -> Reply:
        conn = self._connection(base)
        headers = {**self._auth, **call.headers} if auth else dict(call.headers)
        try:
            conn.request(call.method, base.prefix + call.target, body=call.body, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise TransportFailure(base.url, exc, sent=True, timed_out=isinstance(exc, TimeoutError)) from exc
        if resp.will_close:
            conn.close()
        else:
            self._conns[base.url] = conn
        headers_lc = {name.lower(): value for name, value in resp.getheaders()}
        return Reply(resp.status, headers_lc, body)


def _still_open(conn: http.client.HTTPConnection) -> bool:
    """A kept-alive socket the node has closed reads as ready (EOF): reusing it would fail
    a write after sending it, so it is replaced before the request instead."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable
