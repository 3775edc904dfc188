"""The public HTTP listener: aiohttp's server behind a bound on concurrent connections.

aiohttp already bounds the request line (``max_line_size``), the number and size of headers
(``max_headers``, ``max_field_size``) and, through its keep-alive timer, which runs from the
moment a connection opens until a request's headers are parsed and again whenever the
connection is idle, how long a client may take to send headers (``idle_timeout`` here);
``api.py`` bounds the body's size and its arrival (``body_timeout``, 408). What aiohttp does
not bound is how many connections a node holds open: without a limit a client could open
sockets until the process runs out of file descriptors and refuse every other client.
Past ``max_connections``, a new connection gets one 503 JSON answer and is closed.

aiohttp also answers a request its parser refuses with a text/plain 400 that echoes the
offending bytes, and logs them at ERROR with a traceback, so a malformed Authorization
header would put a token in the log. `_Handler` answers those with the API's JSON error
shape and logs one line that names the kind of error and never the bytes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from typing import cast

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler

from .api import error_response

log = logging.getLogger("ringkv.node.http")

_BUSY_BODY = json.dumps({"error": {
    "code": "too_many_connections",
    "message": "this node holds its maximum number of client connections; retry shortly "
               "or through another node",
}}).encode()
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY
)
# How long a refused connection may stay open for its 503 to be read before it is closed.
REFUSED_LINGER = 2.0
WARN_EVERY = 10.0


class _Refused(asyncio.Protocol):
    """Answers 503 at once, then closes once the client is done sending or after a linger.

    Closing while the client's request is still unread would make the kernel send a reset,
    which can destroy the 503 before the client reads it; so the write side is shut first
    and the socket closed when the client closes its side.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        transport.write(BUSY_RESPONSE)
        if transport.can_write_eof():
            transport.write_eof()
        self.timer = asyncio.get_running_loop().call_later(REFUSED_LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # the request is not read: it is refused whatever it is

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()


_PARSER_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (http_exceptions.LineTooLong, "the request line or a header is too long"),
    (http_exceptions.InvalidURLError, "the request target has characters HTTP does not allow"),
    (http_exceptions.BadHttpMethod, "not an HTTP/1.1 request (bad method)"),
    (http_exceptions.BadStatusLine, "not an HTTP/1.1 request (bad request line)"),
    (http_exceptions.InvalidHeader, "a header name or value HTTP does not allow"),
)


class _Handler(RequestHandler):
    """aiohttp's connection handler, with JSON errors that never echo the request."""

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        what = next((text for kind, text in _PARSER_ERRORS if isinstance(exc, kind)),
                    "a malformed HTTP request")
        log.info("refused %s from %s: %s", type(exc).__name__ if exc else "a request",
                 request.remote, what)
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started; the connection is dropped")
        resp = error_response(status, "bad_request", what)
        resp.force_close()
        return resp


class ConnectionLimit:
    """The protocol factory for the listener: aiohttp's handler while under the limit.

    Connections count once aiohttp registers them; a TLS connection still in its handshake
    is not counted, and is bounded by asyncio's ``ssl_handshake_timeout`` instead.
    """

    def __init__(self, server: web.Server, max_connections: int) -> None:
        self.server = server
        self.max_connections = max_connections
        self.refused = 0
        self._warned_at = float("-inf")

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self.server.connections) < self.max_connections:
            # The same arguments aiohttp's own Server.__call__ passes (aiohttp is pinned).
            return _Handler(self.server, loop=self.server._loop, **self.server._kwargs)
        self.refused += 1
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning("refusing client connections: %d open is the limit (max_connections); "
                        "%d refused so far", self.max_connections, self.refused)
        return _Refused()


async def listen(runner: web.BaseRunner, host: str, port: int, max_connections: int,
                 ssl_context: ssl.SSLContext | None) -> asyncio.AbstractServer:
    """Start accepting on ``host:port``; the caller closes the server before the runner."""
    assert runner.server is not None, "runner.setup() first"
    loop = asyncio.get_running_loop()
    return await loop.create_server(ConnectionLimit(runner.server, max_connections), host, port,
                                    ssl=ssl_context, reuse_address=True)
