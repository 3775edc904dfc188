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
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

log = logging.getLogger("ringkv.transport")

HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024
MAX_HELLO_FRAME = 64 * 1024  # before the hello is accepted, a peer may send this much
HELLO_TIMEOUT = 10.0
OK, ERROR, STALE = 0, 1, 2
SUSPECT_AFTER = 3  # consecutive failures before a peer is suspected
MAX_BACKOFF = 5.0


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


def pack(obj: Any) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return HEADER.pack(len(body)) + body


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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
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

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._on_lost(self)


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
        self._pending: list[tuple[list[Any], asyncio.Future[Any]]] = []
        self._flush_scheduled = False
        # msg id -> (futures, batched, timer); a batch maps its reply list onto its futures
        self._inflight: dict[int, tuple[list[asyncio.Future[Any]], bool, asyncio.TimerHandle]] = {}
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

    def _failed(self) -> None:
        self.failures += 1
        if self.failures >= SUSPECT_AFTER:
            backoff = min(MAX_BACKOFF, 0.1 * 2 ** (self.failures - SUSPECT_AFTER))
            self._retry_at = self._loop.time() + backoff
            if self._proto is not None:
                self._proto.close()

    # -- batched replica operations -----------------------------------------------------
    def submit(self, op: list[Any]) -> asyncio.Future[Any]:
        """Queue one replica operation; all queued in this tick go out in one frame."""
        fut: asyncio.Future[Any] = self._loop.create_future()
        if self._closed or self.suspected:
            fut.set_exception(PeerUnavailable(f"{self.name} is suspected down"))
            return fut
        self._pending.append((op, fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        if self._proto is None:
            self._ensure_connecting()
            return  # flushed again once connected
        batch, self._pending = self._pending, []
        self._send("batch", [op for op, _ in batch], [f for _, f in batch], batched=True)

    async def call(self, method: str, args: Any, timeout: float | None = None,
                   check_epoch: bool = True) -> Any:
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
        self._send(method, args, [fut], timeout, check_epoch)
        return await fut

    def _send(self, method: str, args: Any, futures: list[asyncio.Future[Any]],
              timeout: float | None = None, check_epoch: bool = True,
              batched: bool = False) -> None:
        assert self._proto is not None
        msg_id = self._next_id
        self._next_id += 1
        timer = self._loop.call_later(timeout or self.timeout, self._expire, msg_id)
        self._inflight[msg_id] = (futures, batched, timer)
        self._proto.send([msg_id, method, self._epoch() if check_epoch else 0, args])

    def _expire(self, msg_id: int) -> None:
        entry = self._inflight.pop(msg_id, None)
        if entry is None:
            return
        for fut in entry[0]:
            if not fut.done():
                fut.set_exception(PeerTimeout(f"{self.name} did not answer in time"))
        self._failed()

    def _on_frame(self, proto: FrameProtocol, frame: Any) -> None:
        try:
            msg_id, status, result = frame
        except (TypeError, ValueError):
            proto.close()
            return
        entry = self._inflight.pop(msg_id, None)
        if entry is None:
            return  # answered after its timeout
        futures, batched, timer = entry
        timer.cancel()
        self.failures = 0
        if status == OK:
            for fut, res in zip(futures, result if batched else [result], strict=False):
                if fut.done():
                    continue
                if batched and isinstance(res, dict):  # a per-op error entry
                    fut.set_exception(RemoteError(str(res.get("error")), str(res.get("message"))))
                else:
                    fut.set_result(res)
            return
        if status == STALE:
            self._on_stale(result)
            exc: PeerError = StaleEpoch(result)
        else:
            exc = RemoteError(str(result.get("code", "error")), str(result.get("message", "")))
        for fut in futures:
            if not fut.done():
                fut.set_exception(exc)

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
        pending, self._pending = self._pending, []
        for _, fut in pending:
            if not fut.done():
                fut.set_exception(exc)

    def _lost(self, proto: FrameProtocol) -> None:
        if self._proto is proto:
            self._proto = None
        inflight, self._inflight = self._inflight, {}
        exc = PeerUnavailable(f"connection to {self.name} lost")
        for futures, _, timer in inflight.values():
            timer.cancel()
            for fut in futures:
                if not fut.done():
                    fut.set_exception(exc)
        if inflight:
            self._failed()

    def close(self) -> None:
        self._closed = True
        self._fail_pending(PeerUnavailable("link closed"))
        if self._proto is not None:
            self._proto.close()


Handler = Callable[[Any], Awaitable[Any]]


class InternalServer:
    """The receiving side: authenticates peers, checks epochs, dispatches requests."""

    def __init__(
        self,
        node_name: str,
        token: str,
        batch: Callable[[list[Any]], Awaitable[list[Any]]],
        handlers: dict[str, Handler],
        epoch: Callable[[], int],
        document: Callable[[], dict[str, Any] | None],
    ) -> None:
        self.node_name = node_name
        self._token = token.encode()
        self._batch = batch
        self._handlers = handlers
        self._epoch = epoch
        self._document = document
        self._authed: set[FrameProtocol] = set()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._new_connection, host, port,
                                                reuse_address=True, ssl=ssl_context)

    def _new_connection(self) -> FrameProtocol:
        """An anonymous connection may send one small hello within HELLO_TIMEOUT."""
        proto = FrameProtocol(self._on_frame, self._authed.discard)
        proto.max_frame = MAX_HELLO_FRAME
        loop = asyncio.get_running_loop()
        loop.call_later(HELLO_TIMEOUT, lambda: proto in self._authed or proto.close())
        return proto

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for proto in list(self._authed):
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
            self._authed.add(proto)
            proto.max_frame = MAX_FRAME
            proto.peer = str(args.get("node", ""))
            proto.send([msg_id, OK, {"node": self.node_name}])
            return
        if epoch and epoch < self._epoch():
            proto.send([msg_id, STALE, self._document()])
            return
        task = asyncio.ensure_future(self._dispatch(proto, msg_id, method, args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self, proto: FrameProtocol, msg_id: int, method: str, args: Any) -> None:
        try:
            if method == "batch":
                result = await self._batch(args)
            elif method in self._handlers:
                result = await self._handlers[method](args)
            else:
                raise RemoteError("bad_request", f"unknown method {method!r}")
            proto.send([msg_id, OK, result])
        except RemoteError as exc:
            proto.send([msg_id, ERROR, {"code": exc.code, "message": str(exc)}])
        except Exception as exc:
            log.exception("internal request %s failed", method)
            proto.send([msg_id, ERROR, {"code": "internal", "message": type(exc).__name__}])
