"""Typed errors for the ringkv client, mapped from the server's JSON error ``code``.

The node answers every error as ``{"error": {"code": ..., "message": ...}}``; callers catch
the subclass for the condition they can act on instead of parsing status codes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence


class RingkvError(Exception):
    """Base of every error the client raises; ``status`` is None when no HTTP answer came."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def __str__(self) -> str:
        where = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.code}{where}: {self.message}"


class BadRequest(RingkvError):
    """400: the request was malformed (bad key, TTL, consistency level...)."""


class Unauthorized(RingkvError):
    """401: missing or wrong bearer token."""


class NotFound(RingkvError):
    """404: the key is absent, deleted or expired."""


class PreconditionFailed(RingkvError):
    """412: ``If-Match`` named another version, or ``If-None-Match: *`` found the key."""


class PayloadTooLarge(RingkvError):
    """413: the value exceeds the server's limit."""


class QuorumUnavailable(RingkvError):
    """503: fewer replicas answered than the consistency level needs.

    For a write, some replicas may still have applied it.
    """

    def __init__(
        self,
        code: str,
        message: str,
        status: int | None = None,
        acked: int | None = None,
        needed: int | None = None,
    ) -> None:
        super().__init__(code, message, status)
        self.acked = acked
        self.needed = needed


class ConflictRetryExhausted(RingkvError):
    """503: concurrent conditional writers of the key kept this one from being decided (or
    ``update`` kept meeting other writers until its deadline); nothing was written, retrying
    later is safe."""


class OutcomeUnknown(RingkvError):
    """503: a conditional write reached some replicas, and whether it took effect cannot be
    told (contention, or the deadline passed); read the key to find out."""


class InsufficientStorage(RingkvError):
    """507: a replica's disk is full."""


class InternalError(RingkvError):
    """500 (``internal``): a server bug; the node logs the details."""


class Unavailable(RingkvError):
    """No usable HTTP answer: connection refused, timeout, reset, or a gateway error.

    ``urls`` lists the nodes tried; ``timed_out`` tells a slow node from an absent one.
    ``maybe_applied`` is True when a write was sent but its outcome is unknown. Of the
    last attempt: ``refused`` when nothing listened at the address, ``dropped`` when the
    connection was accepted and then closed without an answer (as a ``kubectl
    port-forward`` whose pod is gone does).
    """

    def __init__(
        self,
        message: str,
        urls: Sequence[str] = (),
        *,
        timed_out: bool = False,
        maybe_applied: bool = False,
        status: int | None = None,
        refused: bool = False,
        dropped: bool = False,
    ) -> None:
        super().__init__("unavailable", message, status)
        self.urls = tuple(urls)
        self.timed_out = timed_out
        self.maybe_applied = maybe_applied
        self.refused = refused
        self.dropped = dropped


_BY_CODE: dict[str, type[RingkvError]] = {
    "bad_request": BadRequest,
    "unauthorized": Unauthorized,
    "not_found": NotFound,
    "precondition_failed": PreconditionFailed,
    "payload_too_large": PayloadTooLarge,
    "quorum_unavailable": QuorumUnavailable,
    "conflict_retry_exhausted": ConflictRetryExhausted,
    "outcome_unknown": OutcomeUnknown,
    "insufficient_storage": InsufficientStorage,
    "internal": InternalError,
}

# Used when the body is not ringkv's JSON (a HEAD answer, a proxy's HTML page).
_BY_STATUS: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "unauthorized",
    404: "not_found",
    412: "precondition_failed",
    413: "payload_too_large",
    500: "internal",
    507: "insufficient_storage",
}


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def error_from_response(status: int, headers: Mapping[str, str], body: bytes) -> RingkvError:
    """Build the typed error for a non-2xx answer (``headers`` keys are lower case)."""
    detail: dict[str, object] = {}
    if body and "json" in headers.get("content-type", ""):
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
            detail = doc["error"]
    code = detail.get("code")
    message = detail.get("message")
    if not isinstance(message, str):
        message = f"HTTP {status} without a ringkv error body"
    if not isinstance(code, str):
        if status in (502, 503, 504):
            return Unavailable(message, status=status)
        code = _BY_STATUS.get(status, "http_error")
    cls = _BY_CODE.get(code, RingkvError)
    if cls is QuorumUnavailable:
        return QuorumUnavailable(
            code,
            message,
            status,
            acked=_int_or_none(detail.get("acked")),
            needed=_int_or_none(detail.get("needed")),
        )
    return cls(code, message, status)
