"""The internal peer protocol: length-prefixed msgpack frames over one TCP connection.

Why not HTTP: one HTTP request per replica operation costs about ten times the CPU of the
operation itself here. Instead each peer has one persistent connection, and every replica
operation queued for that peer during one event-loop tick goes out as one `batch` frame and
comes back as one reply frame (the receiver commits all of a batch's writes in one
transaction). Frames are `[u32 length][msgpack]`:

    hello    -> [0, "hello", 0, {"token": ..., "node": ...}]      <- [0, OK, {"node": ...}]
    request  -> [id, method, sender_epoch, args]                   <- [id, status, result]

`status` is OK, ERROR (result = {"code", "message"}) or STALE (the receiver holds a newer
membership epoch; result = its document). A sender epoch of 0 skips the epoch check (pushes
from the operator carry their own document). A peer that keeps failing is suspected: calls
to it fail at once until a backoff expires, so no request waits on a dead node.

Replica operations complete through plain callbacks `done(result, error)`, not futures:
one client request costs several of them, and each future callback costs an extra trip
through the event loop. Batch frames are served inline on the receiving side (no task per
frame); only the other requests (scans, digests, pushes) run as tasks.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, cast

import msgpack

log = logging.getLogger("ringkv.transport")

HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024
MAX_HELLO_FRAME = 64 * 1024  # before the hello is accepted, a peer may send this much
HELLO_TIMEOUT = 10.0
OK, ERROR, STALE = 0, 1, 2
SUSPECT_AFTER = 3  # consecutive failures before a peer is suspected
MAX_BACKOFF = 5.0
MAX_PENDING_HELLOS = 64  # anonymous connections waiting to authenticate, per node
# Accepted peer connections probe an idle link (seconds idle, between probes, probes), so a
# peer that vanished behind a partition does not hold a connection slot forever.
KEEPALIVE = (60, 10, 3)


class PeerError(Exception):
    """A replica operation failed on or on the way to a peer."""


class PeerUnavailable(PeerError):
    pass


class PeerTimeout(PeerError):
    pass


class RemoteError(PeerError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class StaleEpoch(PeerError):
    """The peer holds a newer membership document (already adopted by our side)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        super().__init__("stale epoch")
        self.doc = doc


Done = Callable[[Any, "BaseException | None"], None]
_PACKER = msgpack.Packer(use_bin_type=True)  # reused: only the loop thread packs


def pack(obj: Any) -> bytes:
    body: bytes = _PACKER.pack(obj)
    return HEADER.pack(len(body)) + body


def run_callbacks(callbacks: list[Done], results: list[Any] | None, exc: BaseException | None) -> None:
    """Complete replica operations with the batch's results or its one failure; one failing
    callback must not strand the others."""
    for i, done in enumerate(callbacks):
        try:
            if results is None:
                done(None, exc)
            else:
                res = results[i]
                if isinstance(res, dict):  # a per-op error entry
                    done(None, RemoteError(str(res.get("error")), str(res.get("message"))))
                else:
                    done(res, None)
        except Exception:
            log.exception("a replica operation's callback failed")


def future_done(fut: asyncio.Future[Any]) -> Done:
    """A completion callback that settles `fut`, for callers that await one operation."""
    def done(result: Any, exc: BaseException | None) -> None:
        if not fut.done():
            if exc is None:
                fut.set_result(result)
            else:
                fut.set_exception(exc)

    return done


class Deadlines:
    """Run callbacks a fixed delay after they were added, unless cancelled first.

    One timer serves them all, instead of a timer per request: every request has a
    deadline and almost none reaches it, and a uvloop timer costs a libuv handle to create
    and to cancel. With one fixed delay, insertion order is deadline order, so the timer
    only ever needs the oldest entry; a cancelled entry is gone at once (nothing lingers
    for the garbage collector to walk)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._entries: dict[int, tuple[float, Callable[[], object]]] = {}
        self._next = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, callback: Callable[[], object]) -> int:
        loop = self._loop or self._bind()
        key = self._next
        self._next += 1
        self._entries[key] = (loop.time() + self.delay, callback)
        if self._timer is None:
            self._timer = loop.call_later(self.delay, self._tick)
        return key

    def _bind(self) -> asyncio.AbstractEventLoop:
        """Keep the running loop: `asyncio.get_running_loop()` makes a getpid() system call
        on every call (Python 3.11), and `add` runs once per request."""
        self._loop = asyncio.get_running_loop()
        return self._loop

    def cancel(self, key: int) -> None:
        self._entries.pop(key, None)

    def _tick(self) -> None:
        loop = self._loop or self._bind()
        now = loop.time()
        due = []
        for key, (deadline, _) in self._entries.items():
            if deadline > now:
                break
            due.append(key)
        for key in due:
            entry = self._entries.pop(key, None)
            if entry is not None:
                try:
                    entry[1]()
                except Exception:
                    log.exception("a deadline callback failed")
        first = next(iter(self._entries.values()), None)
        self._timer = None if first is None else loop.call_later(
            max(first[0] - now, 0.001), self._tick)


class FrameProtocol(asyncio.Protocol):
    """Splits a byte stream into msgpack frames; used by both ends."""

    def __init__(self, on_frame: Callable[[FrameProtocol, Any], None],
                 on_lost: Callable[[FrameProtocol], None]) -> None:
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.max_frame = MAX_FRAME
        self.received = 0  # data arrivals: a link that answers nothing while we wait is dead
        self._aborted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream connection's transport is a Transport; asyncio annotates the base class.
        self.transport = cast(asyncio.Transport, transport)
        if self._aborted:  # dropped between accept and here
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.received += 1
        buf = self._buf
        buf += data
        start = 0
        end = len(buf)
        while end - start >= 4:
            (size,) = HEADER.unpack_from(buf, start)
            if size > self.max_frame:
                log.warning("frame of %d bytes from %s: closing", size, self.peer or "peer")
                self.close()
                return
            if end - start - 4 < size:
                break
            try:
                frame = msgpack.unpackb(buf[start + 4 : start + 4 + size], raw=False)
            except Exception:
                log.warning("undecodable frame from %s: closing", self.peer or "peer")
                self.close()
                return
            start += 4 + size
            self._on_frame(self, frame)
            if self.transport is None:
                return
        if start:
            del buf[:start]

    def send(self, obj: Any) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(pack(obj))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection now, without flushing what a dead peer will never take."""
        self._aborted = True
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._on_lost(self)


class _AcceptedProtocol(FrameProtocol):
    """A peer's connection to us: TCP keepalive reaps it if the peer vanished."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and hasattr(socket, "TCP_KEEPIDLE"):
            idle, interval, count = KEEPALIVE
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class PeerLink:
    """The client side of one peer connection, with per-tick batching and suspicion."""

    def __init__(
        self,
        name: str,
        address: str,
        token: str,
        local_name: str,
        epoch: Callable[[], int],
        on_stale: Callable[[dict[str, Any]], None],
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self._ssl = ssl_context
        self.address = address
        self._token = token
        self._local_name = local_name
        self._epoch = epoch
        self._on_stale = on_stale
        self.timeout = timeout
        self._proto: FrameProtocol | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._pending_ops: list[list[Any]] = []
        self._pending_done: list[Done] = []
        self._flush_scheduled = False
        # msg id -> (callbacks, batched, deadline entry, the connection's data arrivals when
        # sent); a batch maps its reply list onto its callbacks
        self._inflight: dict[int, tuple[list[Done], bool, int, int]] = {}
        self._deadlines = Deadlines(timeout)
        self._next_id = 1
        self.failures = 0
        self._retry_at = 0.0
        self._closed = False
        self.last_error = ""  # why the last connection attempt failed, for messages
        self._loop = asyncio.get_running_loop()

    # -- health -------------------------------------------------------------------------
    @property
    def suspected(self) -> bool:
        return self.failures >= SUSPECT_AFTER and self._loop.time() < self._retry_at

    def revive(self) -> None:
        """The peer just connected to us, so it is up: stop suspecting it now rather than
        when the backoff runs out (up to MAX_BACKOFF later), so hints and requests reach a
        restarted node the moment it is back."""
        self.failures = 0  # `suspected` needs SUSPECT_AFTER failures in a row

    def connect(self) -> None:
        """Open the connection now (its hello tells the peer we are up), not on first use."""
        if not self._closed and self._proto is None and not self.suspected:
            self._ensure_connecting()

    def _failed(self) -> None:
        self.failures += 1
        if self.failures >= SUSPECT_AFTER:
            backoff = min(MAX_BACKOFF, 0.1 * 2 ** (self.failures - SUSPECT_AFTER))
            self._retry_at = self._loop.time() + backoff
            if self._proto is not None:
                self._proto.close()

    # -- batched replica operations -----------------------------------------------------
    def send(self, op: list[Any], done: Done) -> None:
        """Queue one replica operation; all queued in this tick go out in one frame.
        `done` is called later, never from inside this call."""
        if self._closed or self.suspected:
            self._loop.call_soon(done, None, PeerUnavailable(f"{self.name} is suspected down"))
            return
        self._pending_ops.append(op)
        self._pending_done.append(done)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def submit(self, op: list[Any]) -> asyncio.Future[Any]:
        """`send` for callers that await one operation."""
        fut: asyncio.Future[Any] = self._loop.create_future()
        self.send(op, future_done(fut))
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending_ops:
            return
        if self._proto is None:
            self._ensure_connecting()
            return  # flushed again once connected
        ops, done = self._pending_ops, self._pending_done
        self._pending_ops, self._pending_done = [], []
        self._send("batch", ops, done, batched=True)

    async def call(self, method: str, args: Any, check_epoch: bool = True) -> Any:
        """One unbatched request (scans, digests, membership pushes)."""
        if self._closed or self.suspected:
            raise PeerUnavailable(f"{self.name} is suspected down")
        if self._proto is None:
            self._ensure_connecting()
            assert self._connecting is not None
            await asyncio.shield(self._connecting)
            if self._proto is None:
                raise PeerUnavailable(f"{self.name}: not connected ({self.last_error})")
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._send(method, args, [future_done(fut)], check_epoch)
        return await fut

    def _send(self, method: str, args: Any, callbacks: list[Done], check_epoch: bool = True,
              batched: bool = False) -> None:
        assert self._proto is not None
        msg_id = self._next_id
        self._next_id += 1
        deadline = self._deadlines.add(partial(self._expire, msg_id))
        self._inflight[msg_id] = (callbacks, batched, deadline, self._proto.received)
        self._proto.send([msg_id, method, self._epoch() if check_epoch else 0, args])

    def _expire(self, msg_id: int) -> None:
        entry = self._inflight.pop(msg_id, None)
        if entry is None:
            return
        self._failed()
        run_callbacks(entry[0], None, PeerTimeout(f"{self.name} did not answer in time"))
        proto = self._proto
        if entry[1] and proto is not None and proto.received == entry[3]:
            # Not one byte arrived in a whole timeout while a batch waited: the path is gone
            # (a partition, a paused or vanished host), not just slow, since the peer's
            # event loop answers batches at once (an unbatched scan or digest may wait on
            # the peer's storage thread, so its silence proves nothing). Drop the
            # connection so the next request reconnects: after a partition heals, a kept
            # connection would stall behind TCP's backed-off retransmissions for many
            # seconds, while a new one works at once.
            log.info("no answer from %s while a request waited: reconnecting", self.name)
            proto.abort()

    def _on_frame(self, proto: FrameProtocol, frame: Any) -> None:
        try:
            msg_id, status, result = frame
        except (TypeError, ValueError):
            proto.close()
            return
        entry = self._inflight.pop(msg_id, None)
        if entry is None:
            return  # answered after its timeout
        callbacks, batched, deadline, _ = entry
        self._deadlines.cancel(deadline)
        self.failures = 0
        if status == OK:
            if not batched:  # one call, one callback (see `call`): the result as it is
                callbacks[0](result, None)
            elif isinstance(result, list) and len(result) == len(callbacks):
                run_callbacks(callbacks, result, None)
            else:
                run_callbacks(callbacks, None, RemoteError("bad_reply", "malformed batch reply"))
            return
        if status == STALE:
            self._on_stale(result)
            exc: PeerError = StaleEpoch(result)
        elif isinstance(result, dict):
            exc = RemoteError(str(result.get("code", "error")), str(result.get("message", "")))
        else:
            exc = RemoteError("bad_reply", "malformed error reply")
        run_callbacks(callbacks, None, exc)

    # -- connection ---------------------------------------------------------------------
    def _ensure_connecting(self) -> None:
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        hello: asyncio.Future[Any] = self._loop.create_future()

        def first_frame(proto: FrameProtocol, frame: Any) -> None:
            if not hello.done():
                hello.set_result(frame)
            else:
                self._on_frame(proto, frame)

        def lost(proto: FrameProtocol) -> None:
            if not hello.done():
                hello.set_exception(PeerUnavailable(f"{self.name} closed the connection"))
            self._lost(proto)

        try:
            host, port = split_address(self.address)
            _, proto = await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: FrameProtocol(first_frame, lost), host, port, ssl=self._ssl,
                    server_hostname=host if self._ssl else None,
                ),
                self.timeout,
            )
            proto.peer = self.name
            proto.send([0, "hello", 0, {"token": self._token, "node": self._local_name}])
            frame = await asyncio.wait_for(hello, self.timeout)
            if frame[1] != OK:
                proto.close()
                raise PeerUnavailable(f"{self.name} refused us: {frame[2]}")
        except (OSError, TimeoutError, PeerError, ValueError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._failed()
            self._fail_pending(PeerUnavailable(f"{self.name} at {self.address}: {exc}"))
            return
        self._proto = proto
        self._flush()

    def _fail_pending(self, exc: PeerError) -> None:
        done, self._pending_done, self._pending_ops = self._pending_done, [], []
        run_callbacks(done, None, exc)

    def _lost(self, proto: FrameProtocol) -> None:
        if self._proto is proto:
            self._proto = None
        inflight, self._inflight = self._inflight, {}
        exc = PeerUnavailable(f"connection to {self.name} lost")
        if inflight:
            self._failed()
        for callbacks, _, deadline, _ in inflight.values():
            self._deadlines.cancel(deadline)
            run_callbacks(callbacks, None, exc)

    def close(self) -> None:
        self._closed = True
        self._fail_pending(PeerUnavailable("link closed"))
        if self._proto is not None:
            self._proto.close()


Handler = Callable[[Any], Awaitable[Any]]
# Serves one batch frame and calls `reply(results, error)` once, at once or after a commit.
BatchServer = Callable[[list[Any], Done], None]


class _Refused(asyncio.Protocol):
    """A connection past the limit: dropped as soon as it is accepted."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).abort()  # a stream connection's (see FrameProtocol)


class InternalServer:
    """The receiving side: authenticates peers, checks epochs, dispatches requests.

    At most `max_connections` are open at once, so nobody exhausts the node's file
    descriptors, and at most MAX_PENDING_HELLOS of them are anonymous (not yet past the
    hello). A new connection past either limit replaces the oldest anonymous one; only when
    every open connection is an authenticated peer is it dropped. So a flood of silent
    connections cannot keep a real peer out: its hello arrives within a round trip, long
    before the flood turns it over (the idea of sshd's MaxStartups).
    """

    def __init__(
        self,
        node_name: str,
        token: str,
        batch: BatchServer,
        handlers: dict[str, Handler],
        epoch: Callable[[], int],
        document: Callable[[], dict[str, Any] | None],
        max_connections: int = 1000,
        on_peer: Callable[[str], None] = lambda name: None,
    ) -> None:
        self.node_name = node_name
        self._token = token.encode()
        self._batch = batch
        self._handlers = handlers
        self._epoch = epoch
        self._document = document
        self.max_connections = max_connections
        self._on_peer = on_peer  # called with a peer's name once its hello is accepted
        self._pending: dict[FrameProtocol, None] = {}  # anonymous, oldest first
        self._authed: set[FrameProtocol] = set()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.refused = 0

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        # The TLS handshake gets the hello's deadline: an anonymous connection has
        # HELLO_TIMEOUT in all to prove it is a peer.
        self._server = await loop.create_server(
            self._new_connection, host, port, reuse_address=True, ssl=ssl_context,
            ssl_handshake_timeout=HELLO_TIMEOUT if ssl_context else None)

    def _new_connection(self) -> asyncio.Protocol:
        """An anonymous connection may send one small hello within HELLO_TIMEOUT."""
        full = len(self._pending) + len(self._authed) >= self.max_connections
        if full and not self._pending:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("refusing peer connections: %d open is the limit (max_connections); "
                            "%d refused so far", self.max_connections, self.refused)
            return _Refused()
        if full or len(self._pending) >= MAX_PENDING_HELLOS:
            oldest = next(iter(self._pending))
            del self._pending[oldest]
            oldest.abort()
        proto = _AcceptedProtocol(self._on_frame, self._forget)
        proto.max_frame = MAX_HELLO_FRAME
        self._pending[proto] = None
        def silent_too_long() -> None:
            if proto not in self._authed:
                proto.close()

        asyncio.get_running_loop().call_later(HELLO_TIMEOUT, silent_too_long)
        return proto

    def _forget(self, proto: FrameProtocol) -> None:
        self._pending.pop(proto, None)
        self._authed.discard(proto)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for proto in [*self._pending, *self._authed]:
                proto.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()

    def _on_frame(self, proto: FrameProtocol, frame: Any) -> None:
        try:
            msg_id, method, epoch, args = frame
        except (TypeError, ValueError):
            proto.close()
            return
        if proto not in self._authed:
            token = args.get("token", "") if isinstance(args, dict) else ""
            if method != "hello" or not hmac.compare_digest(str(token).encode(), self._token):
                proto.send([msg_id, ERROR, {"code": "unauthorized", "message": "bad cluster token"}])
                proto.close()
                return
            self._pending.pop(proto, None)
            self._authed.add(proto)
            proto.max_frame = MAX_FRAME
            proto.peer = str(args.get("node", ""))
            proto.send([msg_id, OK, {"node": self.node_name}])
            try:
                self._on_peer(proto.peer)
            except Exception:
                log.exception("peer hello callback failed for %s", proto.peer)
            return
        if epoch and epoch < self._epoch():
            proto.send([msg_id, STALE, self._document()])
            return
        if method == "batch":  # the hot path: served inline, answered by a callback
            def reply(result: Any, exc: BaseException | None) -> None:
                self._answer(proto, msg_id, method, result, exc)

            if not isinstance(args, list):
                reply(None, RemoteError("bad_request", "a batch is a list of ops"))
                return
            try:
                self._batch(args, reply)
            except Exception as exc:
                reply(None, exc)
            return
        task = asyncio.ensure_future(self._dispatch(proto, msg_id, method, args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self, proto: FrameProtocol, msg_id: int, method: str, args: Any) -> None:
        try:
            if method not in self._handlers:
                raise RemoteError("bad_request", f"unknown method {method!r}")
            result = await self._handlers[method](args)
        except Exception as exc:
            self._answer(proto, msg_id, method, None, exc)
        else:
            self._answer(proto, msg_id, method, result, None)

    @staticmethod
    def _answer(proto: FrameProtocol, msg_id: int, method: str, result: Any,
                exc: BaseException | None) -> None:
        if exc is None:
            proto.send([msg_id, OK, result])
        elif isinstance(exc, RemoteError):
            proto.send([msg_id, ERROR, {"code": exc.code, "message": str(exc)}])
        else:
            log.error("internal request %s failed", method, exc_info=exc)
            proto.send([msg_id, ERROR, {"code": "internal", "message": type(exc).__name__}])
