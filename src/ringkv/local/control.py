"""The control endpoint of `ringkv up` (on base_port-1): an HTTP API over the
:class:`~ringkv.local.supervisor.Supervisor`. Its one client is
:class:`ringkv.local.control_client.ControlClient`.

    GET  /nodes                        every node slot (name, pid, alive, wanted, url, data_dir, ...)
    POST /nodes                        add a node
    POST /nodes/{name}/kill?signal=S   send a signal (default SIGKILL; the supervisor restarts it)
    POST /nodes/{name}/stop            stop it, no restart (still a member, absent)
    POST /nodes/{name}/start           want it again and start it
    POST /nodes/{name}/remove?force=1  take it out of the membership (a scale-in): a
                                       running node hands off, then stops; `force`
                                       drops a stopped one even if that loses copies
    POST /nodes/{name}/restart?clock_skew_ms=N   SIGTERM, then start with a shifted clock
    GET  /net                          {"netns": false} or the namespaces' addresses and rules
    POST /net/partition                {"groups": [[names], ...]}, {"isolate": name}
                                       or {"one_way": [from, to]}
    POST /net/heal                     remove every partition rule

It listens on 127.0.0.1 only, and every request needs the cluster's API token
(``Authorization: Bearer <token>``, the token `ringkv up` prints and keeps in its data
directory): without it any local user could stop, kill or add nodes. Errors are JSON,
``{"error": message}``: 401 without the token, 404 for an unknown node or path, 400 for a
bad request, 409 for a partition without namespaces or a node whose ports are taken.
"""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from ringkv.node.security import has_token
from ringkv.node.versions import MAX_CLOCK_SKEW_MS

from .netns import NetnsError, describe, isolate_rules, one_way_rules, partition_rules
from .supervisor import Child, NoNetwork, PortsTaken, Supervisor

log = logging.getLogger("ringkv.launcher")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_error(status: type[web.HTTPException], message: str) -> web.HTTPException:
    return status(text=json.dumps({"error": message}), content_type="application/json")


UNAUTHORIZED = ("send the cluster's API token: Authorization: Bearer <token> (`ringkv up` "
                "printed it; it is also in the token file of its data directory)")


def _guard(token: str) -> Middleware:
    """The token check, and every failure as JSON (aiohttp's own 404/405 and any bug)."""
    expected = token.encode()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not has_token(request.headers.getall("Authorization", ()), expected):
            return web.json_response({"error": UNAUTHORIZED}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="ringkv up"'})
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400 or exc.content_type == "application/json":
                raise
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return web.json_response({"error": exc.reason}, status=exc.status, headers=allow)
        except Exception:
            log.exception("control request %s %s failed", request.method, request.path)
            return web.json_response({"error": "internal error; see the log of `ringkv up`"},
                                     status=500)

    return guard


def control_app(sup: Supervisor) -> web.Application:
    """The aiohttp application of the control endpoint."""
    app = web.Application(middlewares=[_guard(sup.api_token)])

    def find(request: web.Request) -> Child:
        name = request.match_info["name"]
        child = sup.find(name)
        if child is None:
            raise _json_error(web.HTTPNotFound, f"no node {name}")
        return child

    async def nodes(_request: web.Request) -> web.Response:
        return web.json_response([c.to_json() for c in sup.children])

    async def add(_request: web.Request) -> web.Response:
        try:
            child = await sup.add_node()
        except PortsTaken as exc:
            raise _json_error(web.HTTPConflict, str(exc)) from None
        return web.json_response({"added": child.name, "port": child.port})

    async def kill(request: web.Request) -> web.Response:
        child = find(request)
        try:
            sig = signal.Signals[request.query.get("signal", "SIGKILL")]
        except KeyError:
            raise _json_error(web.HTTPBadRequest, "signal must be a signal name like SIGKILL") from None
        return web.json_response({"signalled": sup.signal_child(child, sig)})

    async def stop(request: web.Request) -> web.Response:
        child = find(request)
        sup.stop_node(child)
        return web.json_response({"stopped": child.name})

    async def start(request: web.Request) -> web.Response:
        child = find(request)
        await sup.start_node(child)
        return web.json_response({"started": child.name})

    async def remove(request: web.Request) -> web.Response:
        child = find(request)
        force = request.query.get("force", "0")
        if force not in ("0", "1"):
            raise _json_error(web.HTTPBadRequest, "force must be 0 or 1")
        sup.remove_node(child, force == "1")
        return web.json_response({"removing": child.name, "force": force == "1"})

    async def restart(request: web.Request) -> web.Response:
        child = find(request)
        raw = request.query.get("clock_skew_ms", "0")
        try:
            skew = int(raw)
        except ValueError:
            skew = MAX_CLOCK_SKEW_MS + 1
        if abs(skew) > MAX_CLOCK_SKEW_MS:
            raise _json_error(web.HTTPBadRequest, "clock_skew_ms must be an integer from "
                              f"{-MAX_CLOCK_SKEW_MS} to {MAX_CLOCK_SKEW_MS}, not {raw[:40]!r}")
        await sup.restart(child, skew)
        return web.json_response({"restarted": child.name, "clock_skew_ms": skew})

    async def net_state(_request: web.Request) -> web.Response:
        return web.json_response(_net_json(sup))

    async def net_partition(request: web.Request) -> web.Response:
        try:
            rules = _partition_rules(await request.json(), [c.name for c in sup.children])
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            raise _json_error(web.HTTPBadRequest, str(exc)) from None
        return await _net_apply(sup, rules)

    async def net_heal(_request: web.Request) -> web.Response:
        return await _net_apply(sup, {})

    app.router.add_get("/nodes", nodes)
    app.router.add_post("/nodes", add)
    app.router.add_post("/nodes/{name}/kill", kill)
    app.router.add_post("/nodes/{name}/stop", stop)
    app.router.add_post("/nodes/{name}/start", start)
    app.router.add_post("/nodes/{name}/restart", restart)
    app.router.add_post("/nodes/{name}/remove", remove)
    app.router.add_get("/net", net_state)
    app.router.add_post("/net/partition", net_partition)
    app.router.add_post("/net/heal", net_heal)
    return app


def _partition_rules(body: Any, names: list[str]) -> dict[str, frozenset[str]]:
    """The rules of a ``POST /net/partition`` body; ValueError when it is malformed."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    if "groups" in body:
        groups = body["groups"]
        if not (isinstance(groups, list) and all(
                isinstance(g, list) and all(isinstance(n, str) for n in g) for g in groups)):
            raise ValueError("groups must be a list of lists of node names")
        return partition_rules(groups)
    if "isolate" in body:
        return isolate_rules(str(body["isolate"]), names)
    if "one_way" in body:
        pair = body["one_way"]
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ValueError("one_way must be [from, to]")
        return one_way_rules(str(pair[0]), str(pair[1]))
    raise ValueError("give groups, isolate or one_way")


def _net_json(sup: Supervisor) -> dict[str, Any]:
    net = sup.network
    if net is None:
        return {"netns": False}
    return {"netns": True, "host": net.host,
            "addresses": {name: net.address(name) for name in net.nodes},
            "dropped": {dst: sorted(srcs) for dst, srcs in net.rules.items()},
            "partition": describe(net.rules)}


async def _net_apply(sup: Supervisor, rules: dict[str, frozenset[str]]) -> web.Response:
    try:
        await sup.partition(rules)
    except NoNetwork as exc:
        raise _json_error(web.HTTPConflict, str(exc)) from None
    except ValueError as exc:
        raise _json_error(web.HTTPBadRequest, str(exc)) from None
    except NetnsError as exc:
        raise _json_error(web.HTTPInternalServerError, str(exc)) from None
    return web.json_response(_net_json(sup))
