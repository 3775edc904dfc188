"""The control endpoint of `ringkv up` (on base_port-1): an HTTP API over the
:class:`~ringkv.local.supervisor.Supervisor`. Its one client is
:class:`ringkv.local.control_client.ControlClient`.

    GET  /nodes                        every node slot (name, pid, alive, wanted, url, data_dir, ...)
    POST /nodes                        add a node
    POST /nodes/{name}/kill?signal=S   send a signal (default SIGKILL; the supervisor restarts it)
    POST /nodes/{name}/stop            stop for good (a scale-down)
    POST /nodes/{name}/start           want it again and start it
    POST /nodes/{name}/restart?clock_skew_ms=N   SIGTERM, then start with a shifted clock
    GET  /net                          {"netns": false} or the namespaces' addresses and rules
    POST /net/partition                {"groups": [[names], ...]}, {"isolate": name}
                                       or {"one_way": [from, to]}
    POST /net/heal                     remove every partition rule

Errors are JSON, ``{"error": message}``: 404 for an unknown node, 400 for a bad request,
409 for a partition without namespaces.
"""

from __future__ import annotations

import json
import signal
from typing import Any

from aiohttp import web

from .netns import NetnsError, describe, isolate_rules, one_way_rules, partition_rules
from .supervisor import Child, NoNetwork, Supervisor


def _json_error(status: type[web.HTTPException], message: str) -> web.HTTPException:
    return status(text=json.dumps({"error": message}), content_type="application/json")


def control_app(sup: Supervisor) -> web.Application:
    """The aiohttp application of the control endpoint."""
    app = web.Application()

    def find(request: web.Request) -> Child:
        name = request.match_info["name"]
        child = sup.find(name)
        if child is None:
            raise _json_error(web.HTTPNotFound, f"no node {name}")
        return child

    async def nodes(_request: web.Request) -> web.Response:
        return web.json_response([c.to_json() for c in sup.children])

    async def add(_request: web.Request) -> web.Response:
        child = await sup.add_node()
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

    async def restart(request: web.Request) -> web.Response:
        child = find(request)
        try:
            skew = int(request.query.get("clock_skew_ms", "0"))
        except ValueError:
            raise _json_error(web.HTTPBadRequest, "clock_skew_ms must be an integer") from None
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
