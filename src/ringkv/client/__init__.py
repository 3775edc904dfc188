"""Python client and CLI for ringkv.

``Client`` (blocking, stdlib ``http.client``) and ``AsyncClient`` (aiohttp) share one set of
methods: put, get, head, delete, incr, update, list, pages, cluster, replicas, ready.
``AsyncClient`` also speaks the backup endpoints (export_page, import_records, report_backup,
last_backup). ``AsyncClient`` is
imported on first use so that the CLI, which only needs ``Client``, does not load aiohttp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ringkv.client.errors import (
    BadRequest,
    ConflictRetryExhausted,
    InsufficientStorage,
    InternalError,
    NotFound,
    OutcomeUnknown,
    PayloadTooLarge,
    PreconditionFailed,
    QuorumUnavailable,
    RingkvError,
    Unauthorized,
    Unavailable,
)
from ringkv.client.syncclient import Client
from ringkv.client.wire import Entry, Meta, Page, encode_key

if TYPE_CHECKING:
    from ringkv.client.asyncclient import AsyncClient

__all__ = [
    "AsyncClient",
    "BadRequest",
    "Client",
    "ConflictRetryExhausted",
    "Entry",
    "InsufficientStorage",
    "InternalError",
    "Meta",
    "NotFound",
    "OutcomeUnknown",
    "Page",
    "PayloadTooLarge",
    "PreconditionFailed",
    "QuorumUnavailable",
    "RingkvError",
    "Unauthorized",
    "Unavailable",
    "encode_key",
]


def __getattr__(name: str) -> object:
    if name == "AsyncClient":
        from ringkv.client.asyncclient import AsyncClient  # noqa: PLC0415 - lazy on purpose

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
