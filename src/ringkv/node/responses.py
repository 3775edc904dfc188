"""Small complete HTTP responses written in one buffer, for the API's hot answers.

aiohttp's `web.Response` builds a header multidict and runs a chain of coroutines per
response (prepare, _start, _prepare_headers, _write_headers, write_eof, each awaiting the
next) before its bytes reach the socket: about a sixth of a quorum read's CPU on a node.
A GET or PUT answer is a status line, five headers and a small body, so `RawResponse`
formats them itself and hands the writer one buffer, through the same `StreamWriter` (its
byte counts, flow control and keep-alive handling stay aiohttp's).
"""

from __future__ import annotations

import time
from email.utils import formatdate

from aiohttp import HttpVersion10, HttpVersion11, web

REASONS = {200: "OK", 201: "Created"}


class _HttpDate:
    """The Date header's value, formatted once per second (RFC 9110, IMF-fixdate)."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = ""

    def __call__(self) -> str:
        now = int(time.time())
        if now != self.second:
            self.second, self.value = now, formatdate(now, usegmt=True)
        return self.value


http_date = _HttpDate()


class RawResponse:
    """What aiohttp's connection handler uses of a response (`prepare`, `write_eof`,
    `keep_alive`) and `status` for the metrics, and nothing more.

    The answer carries an ETag (`etag`, the header's value, quotes included) and a
    Content-Type whose values the caller made safe (no CR or LF: versions and validated content types);
    Content-Length, Date and Connection are added as aiohttp would add them."""

    __slots__ = ("_body", "_content_type", "_etag", "keep_alive", "status")

    def __init__(self, status: int, body: bytes, etag: str, content_type: str) -> None:
        self.status = status
        self.keep_alive = True
        self._body = body
        self._etag = etag
        self._content_type = content_type

    async def prepare(self, request: web.BaseRequest) -> None:
        version = request.version
        self.keep_alive = keep_alive = request.keep_alive
        if keep_alive:
            connection = "Connection: keep-alive\r\n" if version == HttpVersion10 else ""
        else:
            connection = "Connection: close\r\n" if version == HttpVersion11 else ""
        head = (f"HTTP/{version.major}.{version.minor} {self.status} {REASONS[self.status]}\r\n"
                f"ETag: {self._etag}\r\nContent-Type: {self._content_type}\r\n"
                f"Content-Length: {len(self._body)}\r\nDate: {http_date()}\r\n{connection}\r\n")
        await request.writer.write_eof(head.encode() + self._body)

    async def write_eof(self, data: bytes = b"") -> None:
        """Nothing left to send: `prepare` wrote the whole response."""
