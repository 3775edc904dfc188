"""The one client of `ringkv up`'s control endpoint (:mod:`ringkv.local.control`), and
`ringkv node`, the command line on it.

    ringkv node list | add | kill NAME [--signal S] | stop NAME | start NAME
    ringkv node remove NAME [--force]
    ringkv node restart NAME [--clock-skew-ms N]
    ringkv node partition --isolate NAME | --groups A,B C,D,E | --one-way FROM TO
    ringkv node heal

The endpoint wants the cluster's API token: `ringkv node` sends --token, else
$RINGKV_TOKEN, else the one in `ringkv up`'s data directory (--data-dir, default
.ringkv-data, as `make run` uses). Used by `ringkv check`'s nemesis, the demo, the
benchmarks and the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

DEFAULT_CONTROL = "http://127.0.0.1:8079"
DEFAULT_DATA_DIR = ".ringkv-data"  # `ringkv up`'s, and `make run`'s
COMMAND_TIMEOUT = 40.0  # a restart waits up to 20 s for the old process to exit


class ControlError(Exception):
    """The control endpoint answered, but not what its API promises."""


class ControlClient:
    """``GET /nodes``, ``POST /nodes/{name}/...``, ``/net`` of a running `ringkv up`.

    Requests are blocking (urllib) and carry the cluster's API token. A refused
    connection or an HTTP error status raises OSError (``urllib.error.HTTPError`` for a
    status; its body is the JSON error); an answer that is not the documented JSON raises
    :class:`ControlError`.
    """

    def __init__(self, url: str = DEFAULT_CONTROL, token: str | None = None,
                 timeout: float = 10.0) -> None:
        parts = urlsplit(url.rstrip("/"))
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the control URL must be an http URL, not {url!r}")
        self.url = url.rstrip("/")
        self.host = parts.hostname
        self.timeout = timeout
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    def __repr__(self) -> str:
        return f"ControlClient({self.url!r})"

    def _call(self, method: str, path: str, body: object = None,
              timeout: float | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else b"" if method == "POST" else None
        req = urllib.request.Request(self.url + path, method=method, data=data,
                                     headers=self._headers)
        with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
            try:
                return json.load(resp)
            except ValueError as exc:
                raise ControlError(f"{method} {self.url}{path} did not answer JSON") from exc

    def _dict(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        doc = self._call(method, path, body, COMMAND_TIMEOUT if method == "POST" else None)
        if not isinstance(doc, dict):
            raise ControlError(f"{method} {self.url}{path} did not answer a JSON object")
        return doc

    # -- nodes -----------------------------------------------------------------------
    def nodes(self) -> list[dict[str, Any]]:
        """Every node slot: name, pid, alive, wanted, host, port, internal_port, url,
        data_dir, restarts, clock_skew_ms."""
        doc = self._call("GET", "/nodes")
        if not (isinstance(doc, list) and all(isinstance(n, dict) for n in doc)):
            raise ControlError(f"{self.url}/nodes did not answer a list of nodes")
        return doc

    def node(self, name: str) -> dict[str, Any]:
        for node in self.nodes():
            if node.get("name") == name:
                return node
        raise ControlError(f"{self.url}/nodes no longer lists {name}")

    def add(self) -> dict[str, Any]:
        return self._dict("POST", "/nodes")

    def kill(self, name: str, signal: str = "SIGKILL") -> dict[str, Any]:
        """Send a signal (SIGKILL: the supervisor restarts the node after its delay)."""
        return self._dict("POST", f"/nodes/{quote(name)}/kill?signal={quote(signal)}")

    def stop(self, name: str) -> dict[str, Any]:
        """SIGTERM, no restart: still a member, absent until started again (its copies
        are restored elsewhere once it has been away the grace period)."""
        return self._dict("POST", f"/nodes/{quote(name)}/stop")

    def remove(self, name: str, force: bool = False) -> dict[str, Any]:
        """Out of the membership, as a scale-in: a running node hands off, then stops."""
        return self._dict("POST", f"/nodes/{quote(name)}/remove?force={int(force)}")

    def start(self, name: str) -> dict[str, Any]:
        return self._dict("POST", f"/nodes/{quote(name)}/start")

    def restart(self, name: str, clock_skew_ms: int = 0) -> dict[str, Any]:
        """SIGTERM, wait for the exit, start again with this clock skew."""
        return self._dict("POST", f"/nodes/{quote(name)}/restart?clock_skew_ms={int(clock_skew_ms)}")

    # -- network (`ringkv up --netns`) ------------------------------------------------
    def net(self) -> dict[str, Any]:
        """``{"netns": false}``, or the namespaces' addresses and partition rules."""
        return self._dict("GET", "/net")

    def partition(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{"isolate": name}``, ``{"groups": [[names], ...]}`` or ``{"one_way": [from, to]}``."""
        return self._dict("POST", "/net/partition", body)

    def heal(self) -> dict[str, Any]:
        return self._dict("POST", "/net/heal")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ringkv node", description="Control a local cluster (`ringkv up`).")
    p.add_argument("--control", default=os.environ.get("RINGKV_CONTROL", DEFAULT_CONTROL))
    p.add_argument("--token", help="the cluster's API token (default: $RINGKV_TOKEN, else "
                   "the token file in --data-dir)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                   help=f"`ringkv up`'s data directory, for its token (default {DEFAULT_DATA_DIR})")
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list")
    sub.add_parser("add")
    for action in ("kill", "stop", "start", "restart", "remove"):
        sp = sub.add_parser(action)
        sp.add_argument("name")
        if action == "kill":
            sp.add_argument("--signal", default="SIGKILL")
        if action == "remove":
            sp.add_argument("--force", action="store_true",
                            help="drop a stopped node even where its ranges then lack a read "
                            "quorum of copies (writes only it and other absent nodes hold are lost)")
        if action == "restart":
            sp.add_argument("--clock-skew-ms", type=int, default=0,
                            help="start it with its clock shifted by this much")
    part = sub.add_parser("partition", help="cut links between nodes (a --netns cluster)")
    how = part.add_mutually_exclusive_group(required=True)
    how.add_argument("--isolate", metavar="NAME", help="cut NAME off from every other node")
    how.add_argument("--groups", nargs="+", metavar="A,B",
                     help="comma-separated groups; nodes in different groups cannot talk")
    how.add_argument("--one-way", nargs=2, metavar=("FROM", "TO"),
                     help="drop packets from FROM to TO (TO -> FROM still flows)")
    sub.add_parser("heal", help="remove every partition rule")
    return p


def _run(control: ControlClient, args: argparse.Namespace) -> object:
    if args.action == "list":
        return control.nodes()
    if args.action == "add":
        return control.add()
    if args.action == "partition":
        return control.partition({"isolate": args.isolate} if args.isolate else
                                 {"one_way": args.one_way} if args.one_way else
                                 {"groups": [g.split(",") for g in args.groups]})
    if args.action == "heal":
        return control.heal()
    if args.action == "kill":
        return control.kill(args.name, args.signal)
    if args.action == "restart":
        return control.restart(args.name, args.clock_skew_ms)
    if args.action == "stop":
        return control.stop(args.name)
    if args.action == "remove":
        return control.remove(args.name, args.force)
    return control.start(args.name)


def _token(args: argparse.Namespace) -> str | None:
    """--token, else $RINGKV_TOKEN, else the token `ringkv up` keeps in its data directory."""
    if args.token or os.environ.get("RINGKV_TOKEN"):
        return str(args.token or os.environ["RINGKV_TOKEN"])
    try:
        return (Path(args.data_dir) / "token").read_text().strip() or None
    except OSError:
        return None


def node_command(argv: list[str] | None = None) -> int:
    """`ringkv node ...`: print the control endpoint's JSON answer; exit 1 on an error
    answer, 4 without the right token, 5 when no `ringkv up` answers."""
    p = _parser()
    args = p.parse_args(argv)
    try:
        control = ControlClient(args.control, _token(args), timeout=30)
    except ValueError as exc:
        p.error(str(exc))
    try:
        print(json.dumps(_run(control, args), indent=2))
        return 0
    except urllib.error.HTTPError as exc:
        print(f"ringkv node: {exc.code}: {exc.read().decode(errors='replace')}", file=sys.stderr)
        if exc.code == 401:
            print("ringkv node: pass --token or set RINGKV_TOKEN (`ringkv up` printed it), or "
                  "--data-dir of that `ringkv up`", file=sys.stderr)
            return 4
        return 1
    except ControlError as exc:
        print(f"ringkv node: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"ringkv node: no launcher at {args.control} ({exc}); start one with `make run`",
              file=sys.stderr)
        return 5
