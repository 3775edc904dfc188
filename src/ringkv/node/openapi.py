"""The OpenAPI 3 document of the public API, built from the node's own limits."""

from __future__ import annotations

from typing import Any

from .config import Settings
from .preconditions import TAG_LIST_PATTERN

_ERROR = {"$ref": "#/components/responses/Error"}


CONSISTENCY = (
    "How many of the key's replicas must answer: `quorum` (default, rf/2+1), `all`, or `one`. "
    "With quorum writes and reads, W + R > rf: every read meets a replica that has every "
    "acknowledged write. `one` gives that up (W + R <= rf): a write acknowledged at `one` may "
    "be on one replica only, so a later read, even at quorum and through another node, can "
    "return an older value or not found until hints, read repair or anti-entropy copy it "
    "(usually milliseconds on a healthy cluster; for as long as that replica is unreachable "
    "otherwise); it is lost if that replica's disk is lost first; and a later write at `one` "
    "is not guaranteed to win over an earlier one when clocks disagree. A read at `one` "
    "answers from one replica, which may be behind. `serial`: the request is decided by a "
    "Paxos round among the key's replicas, linearizable with conditional writes (GET and "
    "HEAD read as of a round; PUT and DELETE write unconditionally through one). On a "
    "conditional write (always a Paxos round) the level says how many replicas must apply "
    "the decision before the answer (`serial`: a quorum).")

CONDITIONAL = (
    " Conditional writes are linearizable per key: a Paxos round among the key's replicas "
    "decides each (as Cassandra's lightweight transactions), so of concurrent conditional "
    "writers exactly one wins a round and the rest get 412. A plain write that completed "
    "before a conditional one began is seen by it; one that overlaps it may be ordered "
    "either way (mixing plain and conditional writes on one key gives up linearizability "
    "while they overlap). While the membership changes, each phase of a round needs a quorum "
    "of the key's replicas in the base ring and in the target ring. 412: the condition did "
    "not hold (nothing was written). 503 `quorum_unavailable`: too few replicas took part "
    "(nothing was written); `conflict_retry_exhausted`: other conditional writers of the key "
    "kept this one from winning a round until its deadline (nothing was written; retry after "
    "a pause); `outcome_unknown`: the write reached some replicas and whether it took effect "
    "cannot be told; read the key (`consistency=serial` finishes whatever is pending).")


def _params(*names: str) -> list[dict[str, Any]]:
    return [{"$ref": f"#/components/parameters/{n}"} for n in names]


def _with_head(paths: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every path that answers GET answers HEAD: the same status and headers, no body
    (RFC 9110 §9.3.2), as probes and monitors expect."""
    for item in paths.values():
        get = item.get("get")
        if get is not None and "head" not in item:
            others = {k: v for k, v in get.items() if k != "operationId"}  # ids are unique
            item["head"] = {**others, "summary": f"{get['summary']} (HEAD: headers only)",
                            "responses": {status: {"description": answer.get("description", "As GET")}
                                          for status, answer in get["responses"].items()}}
    return paths


def _links(*operation_ids: str) -> dict[str, Any]:
    """OpenAPI links from a kv response to the operations on the same key."""
    return {op: {"operationId": op, "parameters": {"key": "$request.path.key"}}
            for op in operation_ids}


def document(settings: Settings) -> dict[str, Any]:
    security: list[dict[str, list[str]]] = [{"bearer": []}] if settings.api_token else []
    errors = {"400": _ERROR, "401": _ERROR, "503": _ERROR}
    written = _links("getValue", "headValue", "deleteKey", "getReplicas")
    kv_path = {
        "parameters": _params("key"),
        "put": {
            "operationId": "putValue",
            "summary": "Create or replace a value",
            "description": "`If-None-Match: *` creates only; `If-Match` replaces only the "
            "given versions (RFC 9110 §13.1; 412 when a precondition fails). A conditional "
            "(or `serial`) write answers 201 when it created the key; a plain one is a blind "
            "write and answers 200 either way." + CONDITIONAL,
            "parameters": _params("consistency", "ttl", "ifMatch", "ifNoneMatch"),
            "requestBody": {"required": False, "content": {"*/*": {"schema": {
                "type": "string", "format": "binary", "maxLength": settings.max_value_bytes}}}},
            "responses": {
                "200": {"description": "Written", "headers": {"ETag": {"$ref": "#/components/headers/ETag"}},
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WriteResult"}}},
                        "links": written},
                "201": {"description": "Created: a conditional write found no live record",
                        "headers": {"ETag": {"$ref": "#/components/headers/ETag"}},
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WriteResult"}}},
                        "links": written},
                "408": _ERROR, "412": _ERROR, "413": _ERROR, "507": _ERROR, **errors,
            },
        },
        "get": {
            "operationId": "getValue",
            "summary": "Read a value",
            "description": "`If-None-Match` naming the current version answers 304; "
            "`If-Match` not naming it, 412. Both are ignored when the key is absent (404).",
            "parameters": _params("consistency", "ifMatch", "ifNoneMatch"),
            "responses": {
                "200": {"description": "The stored value with its stored Content-Type",
                        "headers": {"ETag": {"$ref": "#/components/headers/ETag"}},
                        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
                "304": {"description": "Not modified: If-None-Match names the current version",
                        "headers": {"ETag": {"$ref": "#/components/headers/ETag"}}},
                "404": _ERROR, "412": _ERROR, **errors,
            },
        },
        "head": {
            "operationId": "headValue",
            "summary": "Read a value's metadata",
            "parameters": _params("consistency", "ifMatch", "ifNoneMatch"),
            "responses": {"200": {"description": "As GET, without a body"},
                          "304": {"description": "As GET"},
                          "400": {"description": "Bad request"},
                          "401": {"description": "Unauthorized"},
                          "404": {"description": "Absent or deleted"},
                          "412": {"description": "As GET"},
                          "503": {"description": "Not enough replicas answered"}},
        },
        "delete": {
            "operationId": "deleteKey",
            "summary": "Delete a key (writes a tombstone); idempotent",
            "description": "`If-Match` and `If-None-Match` as on PUT." + CONDITIONAL,
            "parameters": _params("consistency", "ifMatch", "ifNoneMatch"),
            "responses": {"204": {"description": "Deleted; ETag holds the tombstone's version",
                                  "headers": {"ETag": {"$ref": "#/components/headers/ETag"}},
                                  "links": _links("getValue", "headValue")},
                          "412": _ERROR, "507": _ERROR, **errors},
        },
        "post": {
            "operationId": "incrValue",
            "summary": "Add to a counter atomically (op=incr)",
            "description": "Adds `by` to the key's value read as a decimal integer (an absent, "
            "deleted or expired key counts as 0) and stores the sum as text, in one Paxos "
            "round: concurrent increments never lose one another. 412 when the value is not "
            "a decimal integer, the sum does not fit in 64 bits, or a precondition fails. "
            "No body." + CONDITIONAL,
            "parameters": [
                {"name": "op", "in": "query", "required": True,
                 "schema": {"type": "string", "enum": ["incr"]}},
                {"name": "by", "in": "query",
                 "schema": {"type": "integer", "format": "int64", "default": 1}},
                *_params("consistency", "ttl", "ifMatch", "ifNoneMatch")],
            "responses": {
                "200": {"description": "The new value",
                        "headers": {"ETag": {"$ref": "#/components/headers/ETag"}},
                        "content": {"application/json": {"schema": {
                            "$ref": "#/components/schemas/Counter"}}}},
                "412": _ERROR, "507": _ERROR, **errors,
            },
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "ringkv", "version": "1",
                 "description": "A replicated, leaderless key-value store. Consistency `one` "
                 "gives up the guarantees of quorums: see the `consistency` parameter."},
        "security": security,
        "paths": _with_head({
            "/v1/kv/{key}": kv_path,
            "/v1/kv": {"get": {
                "summary": "List keys by prefix (eventually consistent)",
                "parameters": [
                    {"name": "prefix", "in": "query",
                     "description": f"Keys starting with these bytes (percent-decoded, at most {settings.max_key_bytes}; they need not be valid UTF-8: `%F0%9F` matches keys that start with an emoji of that lead)",
                     "schema": {"type": "string", "maxLength": settings.max_key_bytes}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                    {"name": "cursor", "in": "query",
                     "description": "The `cursor` of the previous page (unpadded base64url)",
                     "schema": {"type": "string", "maxLength": 2048,
                                "pattern": "^([A-Za-z0-9_-]{4})*([A-Za-z0-9_-]{2,3})?$"}},
                ],
                "responses": {"200": {"description": "A page of keys", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/KeyPage"}}}}, **errors},
            }},
            "/v1/cluster": {"get": {"summary": "Membership, epoch, per-node state",
                                    "responses": {"200": {"description": "Cluster status", "content": {
                                        "application/json": {"schema": {"type": "object"}}}}, **errors}}},
            "/v1/replicas/{key}": {"get": {
                "operationId": "getReplicas",
                "summary": "Which nodes should hold the key and which version each holds",
                "parameters": _params("key"),
                "responses": {"200": {"description": "Replica versions", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Replicas"}}}}, **errors}}},
            "/v1/backup/export": {"get": {
                "summary": "One page of a backup: records of one part of the token space, each key once at the newest version among a read quorum of its replicas (tombstones within gc_grace included)",
                "description": "The token space is cut into `parts` equal slices; a backup reads every part from cursor to cursor until `cursor` is null. Paced like handoff. The body is msgpack: {records: [[key (bin), value (bin), content_type, version, tombstone, expires_ms]], cursor: str or null, done: share of the part exported}.",
                "parameters": [
                    {"name": "parts", "in": "query", "required": True, "schema": {"type": "integer", "minimum": 1, "maximum": 65536}},
                    {"name": "part", "in": "query", "required": True, "schema": {"type": "integer", "minimum": 0, "maximum": 65535}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string", "maxLength": 4096}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1000}},
                ],
                "responses": {"200": {"description": "A page of records", "content": {"application/vnd.msgpack": {"schema": {
                    "type": "string", "format": "binary"}}}}, **errors}}},
            "/v1/backup/import": {"post": {
                "summary": "Merge records into the cluster by version (restore): a replica keeps the newer of what it holds and the record, so importing twice is importing once and a newer write is never overwritten",
                "requestBody": {"required": True, "content": {"application/vnd.msgpack": {"schema": {
                    "type": "string", "format": "binary",
                    "description": "A msgpack array of 1 to 10000 records [key, value, content_type, version, tombstone, expires_ms], as export gives them"}}}},
                "responses": {"200": {"description": "Every record is on W replicas of its key (or a newer version is)",
                                      "content": {"application/json": {"schema": {"type": "object", "required": ["merged"], "properties": {
                                          "merged": {"type": "integer"}}}}}},
                              "408": _ERROR, "413": _ERROR, "507": _ERROR, **errors}}},
            "/v1/backup/last": {
                "get": {"summary": "The newest complete backup reported to this node",
                        "responses": {"200": {"description": "The report, or null", "content": {"application/json": {"schema": {
                            "type": "object", "required": ["last"], "properties": {"last": {
                                "allOf": [{"$ref": "#/components/schemas/BackupReport"}], "nullable": True}}}}}}, **errors}},
                "put": {"summary": "Report a complete backup (the backup tool does): every member keeps the newest and exports it as metrics",
                        "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BackupReport"}}}},
                        "responses": {"200": {"description": "The members that stored it", "content": {"application/json": {"schema": {
                            "type": "object", "required": ["stored_on"], "properties": {"stored_on": {"type": "array", "items": {"type": "string"}}}}}}},
                                      "408": _ERROR, "413": _ERROR, **errors}}},
            "/v1/cluster/history": {"get": {
                "summary": "The membership changes this node has seen, oldest first, with times",
                "description": "One entry per membership document this node adopted (the last 200, kept "
                "across restarts): its epoch, when, and one line saying what changed.",
                "responses": {"200": {"description": "Membership history", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/History"}}}}, **errors}}},
            "/v1/stats": {"get": {
                "summary": "Every member's request counters since it started, and its recent rates",
                "description": "Each member samples its counters every `interval_s` seconds on the wall-clock "
                "grid (all members on the same instants) and keeps ten minutes of samples: reads and writes "
                "per second, p50/p99 latency, errors per second by code, handoff bytes, keys and ranges per "
                "second. `since` (ms) returns only newer samples. An unreachable member is listed with "
                "`reachable: false`.",
                "parameters": [{"name": "since", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                                          "maximum": 9999999999999999}}],
                "responses": {"200": {"description": "Counters and rates", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Stats"}}}}, **errors}}},
            "/v1/ring": {"get": {
                "summary": "The token ring for drawing: segments, replica sets, and the ranges moving",
                "description": "Positions are fractions of the token space. While the epoch is unsettled, "
                "`base` is the ring of the last settled epoch and `moving` the ranges whose replica set "
                "differs between base and target.",
                "responses": {"200": {"description": "Ring layout", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/RingLayout"}}}}, **errors}}},
            "/ui/": {"get": {"summary": "The console: a page that draws this API (static and public; "
                                        "it asks for the token)", "security": [],
                             "responses": {"200": {"description": "HTML", "content": {"text/html": {
                                 "schema": {"type": "string"}}}}}}},
            "/healthz": {"get": {"summary": "Liveness", "security": [],
                                 "responses": {"200": {"description": "Alive", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/readyz": {"get": {"summary": "Readiness: has membership and has caught up", "security": [],
                                "responses": {"200": {"description": "Ready", "content": {"application/json": {"schema": {"type": "object"}}}},
                                              "503": _ERROR}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "security": [],
                                 "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [],
                                      "responses": {"200": {"description": "OpenAPI 3", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        }),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "parameters": {
                "key": {"name": "key", "in": "path", "required": True,
                        "description": f"UTF-8, 1..{settings.max_key_bytes} bytes after URL decoding; may contain '/'",
                        "schema": {"type": "string", "minLength": 1}},
                "consistency": {"name": "consistency", "in": "query",
                                "description": CONSISTENCY,
                                "schema": {"type": "string", "enum": ["one", "quorum", "all", "serial"], "default": "quorum"}},
                "ttl": {"name": "ttl", "in": "query",
                        "description": "Seconds until the key expires, from the wall clock of "
                                       "the node that coordinates the write",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 315360000}},
                "ifMatch": {"name": "If-Match", "in": "header",
                            "description": "* (the key exists) or entity-tags, e.g. "
                            '"1234.node-0", "1240.node-2": the current version is one of them '
                            "(strong comparison: a weak tag W/\"...\" never matches)",
                            "schema": {"type": "string", "pattern": TAG_LIST_PATTERN}},
                "ifNoneMatch": {"name": "If-None-Match", "in": "header",
                                "description": "* (the key does not exist) or entity-tags: the "
                                "current version is none of them (weak comparison: W/\"v\" is \"v\")",
                                "schema": {"type": "string", "pattern": TAG_LIST_PATTERN}},
            },
            "headers": {"ETag": {"description": "The quoted version", "schema": {"type": "string"}}},
            "responses": {"Error": {"description": "An error", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Error"}}}}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message"], "properties": {
                        "code": {"type": "string", "enum": [
                            "bad_request", "unauthorized", "not_found", "method_not_allowed",
                            "request_timeout", "precondition_failed", "payload_too_large",
                            "expectation_failed", "quorum_unavailable", "conflict_retry_exhausted",
                            "outcome_unknown", "not_ready", "too_many_connections", "internal",
                            "insufficient_storage"]},
                        "message": {"type": "string"},
                        "acked": {"type": "integer"}, "needed": {"type": "integer"},
                        "ring": {"type": "string", "enum": ["base", "target"],
                                 "description": "While an epoch is unsettled: the ring whose "
                                 "quorum the write missed (acked and needed are its own)"}}}}},
                "BackupReport": {"type": "object", "additionalProperties": False,
                                 "required": ["name", "started", "finished", "records", "bytes"], "properties": {
                                     "name": {"type": "string", "minLength": 1, "maxLength": 255},
                                     "started": {"type": "number", "minimum": 0, "description": "Unix time"},
                                     "finished": {"type": "number", "minimum": 0, "description": "Unix time, not before started"},
                                     "records": {"type": "integer", "minimum": 0},
                                     "bytes": {"type": "integer", "minimum": 0}}},
                "Counter": {"type": "object", "required": ["key", "version", "value"],
                            "properties": {"key": {"type": "string"}, "version": {"type": "string"},
                                           "value": {"type": "integer", "format": "int64"}}},
                "WriteResult": {"type": "object", "required": ["key", "version"], "properties": {
                    "key": {"type": "string"}, "version": {"type": "string"}}},
                "KeyPage": {"type": "object", "required": ["keys", "cursor"], "properties": {
                    "keys": {"type": "array", "items": {"type": "string"}},
                    "cursor": {"type": "string", "nullable": True}}},
                "Replicas": {"type": "object", "required": ["key", "replicas"], "properties": {
                    "key": {"type": "string"},
                    "replicas": {"type": "array", "items": {"type": "object", "properties": {
                        "node": {"type": "string"}, "state": {"type": "string"},
                        "status": {"type": "string", "enum": ["ok", "missing", "unavailable"]},
                        "version": {"type": "string"}, "live": {"type": "boolean"},
                        "in_target": {"type": "boolean"}, "in_base": {"type": "boolean"},
                        "tombstone": {"type": "boolean"}, "size": {"type": "integer"},
                        "content_type": {"type": "string"},
                        "expires_ms": {"type": "integer", "description": "0: never"}}}}}},
                "History": {"type": "object", "required": ["node", "epoch", "changes"], "properties": {
                    "node": {"type": "string"}, "epoch": {"type": "integer"},
                    "changes": {"type": "array", "items": {"type": "object", "required": [
                        "epoch", "time_ms", "change"], "properties": {
                        "epoch": {"type": "integer"}, "time_ms": {"type": "integer"},
                        "change": {"type": "string"}, "settled": {"type": "boolean"},
                        "members": {"type": "integer"}}}}}},
                "Stats": {"type": "object", "required": ["node", "time_ms", "interval_s", "members"], "properties": {
                    "node": {"type": "string"}, "time_ms": {"type": "integer"}, "interval_s": {"type": "integer"},
                    "members": {"type": "array", "items": {"type": "object", "required": ["node", "reachable"], "properties": {
                        "node": {"type": "string"}, "reachable": {"type": "boolean"},
                        "started_ms": {"type": "integer"},
                        "totals": {"type": "object", "properties": {
                            "requests": {"type": "array", "items": {"type": "object", "properties": {
                                "route": {"type": "string"}, "method": {"type": "string"},
                                "status": {"type": "integer"}, "count": {"type": "integer"}}}},
                            "errors": {"type": "object", "additionalProperties": {"type": "integer"}}}},
                        "series": {"type": "array", "items": {"$ref": "#/components/schemas/Sample"}}}}}}},
                "Sample": {"type": "object", "required": ["t", "reads", "writes", "errors"], "properties": {
                    "t": {"type": "integer", "description": "ms since the epoch, end of the interval"},
                    "reads": {"type": "number"}, "writes": {"type": "number"},
                    "errors": {"type": "object", "additionalProperties": {"type": "number"}},
                    "read_p50_ms": {"type": "number", "nullable": True},
                    "read_p99_ms": {"type": "number", "nullable": True},
                    "write_p50_ms": {"type": "number", "nullable": True},
                    "write_p99_ms": {"type": "number", "nullable": True},
                    "handoff_bytes_per_s": {"type": "number"}, "handoff_keys_per_s": {"type": "number"},
                    "handoff_ranges_per_s": {"type": "number"}}},
                "RingLayout": {"type": "object", "required": ["epoch", "rf", "target", "moving"], "properties": {
                    "epoch": {"type": "integer"}, "rf": {"type": "integer"}, "vnodes": {"type": "integer"},
                    "settled": {"type": "boolean"},
                    "target": {"$ref": "#/components/schemas/Ring"},
                    "base": {"allOf": [{"$ref": "#/components/schemas/Ring"}], "nullable": True},
                    "moving": {"type": "array", "items": {"type": "object", "properties": {
                        "start": {"type": "number"}, "end": {"type": "number"},
                        "old": {"type": "array", "items": {"type": "string"}},
                        "new": {"type": "array", "items": {"type": "string"}}}}},
                    "moving_fraction": {"type": "number"}}},
                "Ring": {"type": "object", "required": ["members", "segments"], "properties": {
                    "members": {"type": "array", "items": {"type": "string"}},
                    "segments": {"type": "array", "items": {"type": "object", "properties": {
                        "start": {"type": "number"}, "end": {"type": "number"},
                        "replicas": {"type": "array", "items": {"type": "string"}}}}}}},
            },
        },
    }
