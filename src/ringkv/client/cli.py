"""``ringkv``: the command line for a ringkv cluster.

Data commands talk to the public HTTP API through the blocking client:

    ringkv put KEY [VALUE | -]    write (VALUE absent or '-' reads stdin); prints the version
    ringkv get KEY                write the raw value to stdout (or --output FILE)
    ringkv head KEY               print the version, content type and size
    ringkv delete KEY             delete; prints the tombstone's version
    ringkv incr KEY [BY]          add BY (default 1) to a counter atomically; prints the value
    ringkv list                   keys, one a line (--prefix, --limit, --cursor, --all)
    ringkv status                 epoch, members and rebalance progress (--json for raw,
                                  --wait [SECONDS]: first wait until the cluster is settled;
                                  --watch: live rates and progress bars)
    ringkv replicas KEY           which nodes should hold KEY and what each holds (JSON)

Backup, local cluster and tooling (implemented in other modules, arguments passed through):

    ringkv backup --to DIR        the whole cluster into DIR/<cluster>-<UTC time>
    ringkv restore BACKUP         verify a backup, then merge it into the cluster by version
    ringkv up ...                 run a local cluster (one process per node)
    ringkv node ...               control a running `ringkv up` (stop or add a node)
    ringkv bench ...              the load generator

Global options: --url (default http://127.0.0.1:8080; a comma-separated list is tried in
order), --token (default $RINGKV_TOKEN), --timeout SECONDS.

Exit codes (stable, for scripts):
    0  ok
    1  not found (get, head)
    2  usage error: invalid arguments, also when a node refuses them (400 bad request)
    3  precondition failed (--if-match / --if-none-match on put, --if-match on delete; incr
       of a value that is not an integer)
    4  authentication failed (token missing or wrong)
    5  unavailable: no node answered, quorum not reached or conflicting writers; retry
       later (a conditional write may also have an unknown outcome: read the key first;
       status --wait: not settled in time)
    6  other error: value too large, disk full, server error, a refused backup archive
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlsplit

from ringkv.client import dashboard, settle
from ringkv.client.errors import (
    BadRequest,
    ConflictRetryExhausted,
    InsufficientStorage,
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
from ringkv.client.wire import (
    BINARY_TYPE,
    CONSISTENCY_LEVELS,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    MAX_LIST_LIMIT,
    MAX_TTL,
    TEXT_TYPE,
)

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_PRECONDITION = 3
EXIT_AUTH = 4
EXIT_UNAVAILABLE = 5
EXIT_ERROR = 6

# Subcommands owned by other modules: (module, function, help). They get the rest of argv
# untouched, so their own options (even ones named like ours) reach them.
DELEGATES: dict[str, tuple[str, str, str]] = {
    "backup": ("ringkv.client.backup", "backup_main", "back the whole cluster up into an archive"),
    "restore": ("ringkv.client.backup", "restore_main", "verify a backup and merge it into the cluster"),
    "up": ("ringkv.local.up", "main", "run a local cluster (one process per node)"),
    "node": ("ringkv.local.control_client", "node_command", "control a running `ringkv up`"),
    "bench": ("ringkv.bench.loadgen", "main", "run the load generator"),
    "check": ("ringkv.local.check", "main", "check consistency under faults (Jepsen-style)"),
    "demo": ("ringkv.local.demo", "main", "watch a 5-node cluster lose a node and recover"),
}

_GLOBAL_WITH_VALUE = ("--url", "--token", "--timeout", "--cacert")


def exit_code(exc: RingkvError) -> int:
    """The documented exit code for an error."""
    if isinstance(exc, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, PreconditionFailed):
        return EXIT_PRECONDITION
    if isinstance(exc, Unauthorized):
        return EXIT_AUTH
    if isinstance(exc, BadRequest):  # the node refused an argument it was given
        return EXIT_USAGE
    if isinstance(exc, Unavailable | QuorumUnavailable | ConflictRetryExhausted | OutcomeUnknown):
        return EXIT_UNAVAILABLE
    return EXIT_ERROR


# Where a token comes from, for the 401 hint. A loopback --url may be a local `ringkv up`
# or a `kubectl port-forward`, so both are named there; any other address is not `ringkv up`.
LOCAL_TOKEN = ("a local `ringkv up` (`make run`) prints it and keeps it in its data "
               "directory (`.ringkv-data/token`)")
KUBE_TOKEN = ("on Kubernetes it is the Secret <release>-tokens: kubectl get secret "
              "ringkv-tokens -o jsonpath='{.data.api-token}' | base64 -d")
PORT_FORWARD = ("a `kubectl port-forward` exits, or drops connections, once the pod it "
                "forwards to is gone: start it again, or keep it in a loop (docs/KUBERNETES.md)")


def describe(exc: RingkvError, key: str | None = None, url: str = DEFAULT_URL) -> str:
    """One line saying what went wrong and what to do, fitting where the CLI is pointed
    (`url`, the --url given); never the token or a value."""
    what = f" {key!r}" if key is not None else ""
    if isinstance(exc, NotFound):
        return f"not found:{what} is absent, deleted or expired"
    if isinstance(exc, PreconditionFailed):
        return (f"precondition failed:{what}: {exc.message}; read it again "
                "(`ringkv head KEY`) and retry")
    if isinstance(exc, Unauthorized):
        return "unauthorized: set RINGKV_TOKEN or pass --token; " + (
            f"{LOCAL_TOKEN}; {KUBE_TOKEN}" if _is_local(url) else KUBE_TOKEN)
    if isinstance(exc, QuorumUnavailable):
        return (f"quorum unavailable: {exc.message}; retry when nodes are back "
                "(`ringkv status`) or pass --consistency one")
    if isinstance(exc, ConflictRetryExhausted):
        return f"conflict: concurrent writers to{what} kept winning; retry the write"
    if isinstance(exc, OutcomeUnknown):
        return (f"outcome unknown: {exc.message}; read{what} to see whether the write took "
                "effect before retrying")
    if isinstance(exc, Unavailable):
        return _describe_unavailable(exc, _is_local(url))
    if isinstance(exc, PayloadTooLarge):
        return "value too large: the node's limit is RINGKV_MAX_VALUE_BYTES (default 1 MiB)"
    if isinstance(exc, InsufficientStorage):
        return "a replica's disk is full: free space on the nodes or add a node"
    if isinstance(exc, BadRequest):
        return f"bad request: {exc.message}"
    return f"server error ({exc}); see the node's log"


def _is_local(url: str) -> bool:
    """Whether every URL of --url is on this machine's loopback."""
    try:
        hosts = [urlsplit(u.strip()).hostname or "" for u in url.split(",") if u.strip()]
    except ValueError:
        return False
    return bool(hosts) and all(h == "localhost" or _loopback_ip(h) for h in hosts)


def _loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _describe_unavailable(exc: Unavailable, local: bool) -> str:
    url = exc.urls[0] if len(exc.urls) == 1 else ", ".join(exc.urls) or "the node"
    if exc.maybe_applied:
        return (
            f"no answer from {url}: the write may or may not have been applied; "
            "read the key to check before retrying"
        )
    if exc.timed_out:
        return f"no answer in time from {url}: check `ringkv status` or raise --timeout"
    if exc.status is not None:
        return f"{url} answered HTTP {exc.status}: {exc.message}; retry later"
    if exc.refused:
        if local:
            return (f"nothing listens at {url}: start the local cluster (`make run`), or, "
                    f"if it is a port-forward, {PORT_FORWARD}")
        return f"nothing listens at {url}: check --url (a node's address and API port)"
    if exc.dropped:
        if local:
            return f"{url} closed the connection without an answer: {PORT_FORWARD}"
        return (f"{url} closed the connection without an answer: is it a node's API port, "
                "and does it want https://?")
    return f"cannot reach {url} ({exc.message}): check --url and the network"


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Global options, accepted before or after the subcommand (``ringkv get k --url X``)."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--url",
        default=default(DEFAULT_URL),
        help=f"node URL, or several comma-separated, tried in order (default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token",
        default=default(None),
        help="API bearer token (default: $RINGKV_TOKEN)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=default(DEFAULT_TIMEOUT),
        help=f"seconds to wait for each node (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--cacert",
        default=default(None),
        help="CA certificate (PEM) to verify https:// nodes (default: $RINGKV_CACERT, else "
        "the system CAs)",
    )


def _int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from `low` to `high` (out of range: a usage error)."""

    def parse(text: str) -> int:
        value = int(text)  # a ValueError is argparse's "invalid value"
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, not {value}")
        return value

    return parse


def _consistency(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--consistency",
        choices=CONSISTENCY_LEVELS,
        help="replicas that must answer: one, quorum (server default) or all; serial: "
        "decided by a Paxos round (linearizable with conditional writes)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (delegated subcommands appear in help; main() routes them)."""
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        prog="ringkv",
        description="Command line for a ringkv cluster.",
        epilog=doc[doc.index("Exit codes") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("put", parents=[common], help="write a value; prints its version")
    p.add_argument("key")
    p.add_argument("value", nargs="?", default="-", help="the value; '-' or absent: stdin")
    p.add_argument(
        "--content-type",
        help="stored Content-Type (default: text for VALUE, application/octet-stream for stdin)",
    )
    p.add_argument("--ttl", type=_int_in(1, MAX_TTL), help="expire after this many seconds")
    p.add_argument(
        "--if-match",
        metavar="VERSION",
        help="write only if this is the version stored ('*': only if the key exists)",
    )
    p.add_argument("--if-none-match", action="store_true", help="write only if the key is absent")
    _consistency(p)

    p = sub.add_parser("get", parents=[common], help="write a value's raw bytes to stdout")
    p.add_argument("key")
    p.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    _consistency(p)

    p = sub.add_parser("head", parents=[common], help="print version, content type and size")
    p.add_argument("key")
    _consistency(p)

    p = sub.add_parser("delete", parents=[common], help="delete a key; prints the tombstone version")
    p.add_argument("key")
    p.add_argument(
        "--if-match",
        metavar="VERSION",
        help="delete only if this is the version stored ('*': only if the key exists)",
    )
    _consistency(p)

    p = sub.add_parser("incr", parents=[common],
                       help="add to a decimal integer value atomically; prints the new value")
    p.add_argument("key")
    p.add_argument("by", nargs="?", type=int, default=1, help="the amount (default 1; may be negative)")
    p.add_argument("--ttl", type=_int_in(1, MAX_TTL), help="expire after this many seconds")
    _consistency(p)

    p = sub.add_parser("list", parents=[common], help="list keys, one a line")
    p.add_argument("--prefix", default="", help="only keys starting with this")
    p.add_argument("--limit", type=_int_in(1, MAX_LIST_LIMIT),
                   help=f"page size (server default 100, max {MAX_LIST_LIMIT})")
    p.add_argument("--cursor", help="continue from a previous page")
    p.add_argument("--all", action="store_true", help="follow cursors to the last page")

    p = sub.add_parser("status", parents=[common], help="cluster membership and rebalance")
    p.add_argument("--json", action="store_true", help="print /v1/cluster as JSON")
    p.add_argument("--wait", nargs="?", type=float, const=300.0, metavar="SECONDS",
                   help="first wait until the cluster is settled (the epoch settled, every "
                   "member normal, reachable, ready and on it, no rebalance), at most SECONDS "
                   "(default 300); exit 5 if it is not by then")
    p.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                   help="redraw every SECONDS (default 2) with request rates, p99 latency and "
                   "re-replication bars, until Ctrl-C")

    p = sub.add_parser("replicas", parents=[common], help="where a key lives (JSON)")
    p.add_argument("key")

    for name, (_module, _func, text) in DELEGATES.items():
        p = sub.add_parser(name, help=f"{text} (see `ringkv {name} --help`)", add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _delegated(argv: Sequence[str]) -> tuple[str, list[str]] | None:
    """If the first positional word names a delegated subcommand: it, and its arguments.

    Global options given before the subcommand (`ringkv --url X check`) are passed on
    ahead of its own (so its own win when both are given): a subcommand that takes them
    gets them, and one that does not says so instead of silently ignoring them.
    """
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in _GLOBAL_WITH_VALUE:
            i += 2
        elif word in ("-h", "--help"):
            return None
        elif word.startswith("-"):
            i += 1
        else:
            return (word, [*argv[:i], *argv[i + 1 :]]) if word in DELEGATES else None
    return None


def _run_delegate(name: str, argv: list[str]) -> int:
    module_name, func_name, _text = DELEGATES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name):
            raise
        print(f"ringkv {name}: {module_name} is not installed", file=sys.stderr)
        return EXIT_ERROR
    func: Callable[[list[str]], int | None] = getattr(module, func_name)
    return int(func(argv) or 0)


def _read_value(args: argparse.Namespace) -> tuple[bytes, str]:
    """The value's bytes exactly as given (argv bytes via the filesystem encoding, so an
    undecodable argument is stored as typed) and the Content-Type to store."""
    if args.value != "-":
        return os.fsencode(args.value), args.content_type or TEXT_TYPE
    if sys.stdin.isatty():
        print("reading the value from stdin (end with Ctrl-D)", file=sys.stderr)
    return sys.stdin.buffer.read(), args.content_type or BINARY_TYPE


def _cmd_put(client: Client, args: argparse.Namespace) -> None:
    value, content_type = _read_value(args)
    version = client.put(
        args.key,
        value,
        content_type=content_type,
        consistency=args.consistency,
        ttl=args.ttl,
        if_match=args.if_match,
        if_none_match=args.if_none_match,
    )
    print(version)


def _cmd_get(client: Client, args: argparse.Namespace) -> None:
    entry = client.get(args.key, consistency=args.consistency)
    if args.output:
        with open(args.output, "wb") as f:
            f.write(entry.value)
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(entry.value)
        sys.stdout.buffer.flush()


def _cmd_head(client: Client, args: argparse.Namespace) -> None:
    meta = client.head(args.key, consistency=args.consistency)
    size = "-" if meta.size is None else str(meta.size)
    print(f"{meta.version}\t{meta.content_type or '-'}\t{size}")


def _cmd_delete(client: Client, args: argparse.Namespace) -> None:
    print(client.delete(args.key, consistency=args.consistency, if_match=args.if_match))


def _cmd_incr(client: Client, args: argparse.Namespace) -> None:
    print(client.incr(args.key, args.by, ttl=args.ttl, consistency=args.consistency))


def _cmd_list(client: Client, args: argparse.Namespace) -> None:
    if args.all:
        for page in client.pages(args.prefix, args.limit):
            for key in page.keys:
                print(key)
        return
    page = client.list(args.prefix, args.limit, args.cursor)
    for key in page.keys:
        print(key)
    if page.cursor is not None:
        print(f"more keys: pass --cursor {page.cursor} or --all", file=sys.stderr)


def _cmd_status(client: Client, args: argparse.Namespace) -> int:
    if args.watch is not None:
        if args.watch <= 0:
            raise ValueError("--watch takes a positive number of seconds")
        dashboard.watch(client.cluster, client.stats, args.watch)
        return EXIT_OK
    doc: Mapping[str, object]
    if args.wait is None:
        doc = client.cluster()
    else:
        try:
            doc = settle.wait(client.cluster, args.wait,
                              lambda why: print(f"waiting: {why}", file=sys.stderr))
        except settle.NotSettled as exc:
            if exc.last is not None:
                print(json.dumps(exc.last, indent=2, sort_keys=True) if args.json
                      else format_status(exc.last))
            print(f"ringkv status: not settled after {args.wait:g}s: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
    print(json.dumps(doc, indent=2, sort_keys=True) if args.json else format_status(doc))
    return EXIT_OK


def _cmd_replicas(client: Client, args: argparse.Namespace) -> None:
    print(json.dumps(client.replicas(args.key), indent=2, sort_keys=True))


_COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int | None]] = {
    "put": _cmd_put,
    "get": _cmd_get,
    "head": _cmd_head,
    "delete": _cmd_delete,
    "incr": _cmd_incr,
    "list": _cmd_list,
    "status": _cmd_status,
    "replicas": _cmd_replicas,
}


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _ready_cell(member: dict[str, object]) -> str:
    if member.get("reachable") is False:
        return "unreachable"
    return _cell(member.get("ready"))


def _share_cell(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value * 100:.1f}%"
    return _cell(value)


def format_status(doc: Mapping[str, object]) -> str:
    """A readable table of ``/v1/cluster``.

    Reads ``epoch``, ``settled``, ``rf`` and ``members`` (each ``name``, ``state``,
    ``reachable``/``ready``, ``api_url`` or ``url``, ``keys`` or ``records``, and
    ``ownership`` as a fraction of the ring) and, when present, ``rebalance`` (a mapping
    shown as ``name: value`` lines); anything else is left to ``--json``.
    """
    lines = [
        f"epoch {_cell(doc.get('epoch'))}   settled {_cell(doc.get('settled'))}   rf {_cell(doc.get('rf'))}",
        "",
    ]
    rows = [["NAME", "STATE", "READY", "URL", "KEYS", "OWNS"]]
    members = doc.get("members")
    for m in members if isinstance(members, list) else []:
        if isinstance(m, dict):
            keys = m.get("keys", m.get("records"))
            rows.append(
                [
                    _cell(m.get("name")),
                    _cell(m.get("state")),
                    _ready_cell(m),
                    _cell(m.get("api_url") or m.get("url")),
                    _cell(keys),
                    _share_cell(m.get("ownership")),
                ]
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)
    rebalance = doc.get("rebalance")
    if isinstance(rebalance, dict) and rebalance:
        lines.append("")
        lines.append("rebalance:")
        lines.extend(f"  {name}: {_cell(value)}" for name, value in rebalance.items())
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code documented in this module's docstring."""
    argv = list(sys.argv[1:] if argv is None else argv)
    delegated = _delegated(argv)
    if delegated is not None:
        return _run_delegate(*delegated)
    args = build_parser().parse_args(argv)  # exits 2 on a usage error
    token = args.token if args.token is not None else os.environ.get("RINGKV_TOKEN")
    try:
        cacert = args.cacert or os.environ.get("RINGKV_CACERT") or None
        with Client(args.url, token=token or None, timeout=args.timeout, ca_file=cacert) as client:
            code = _COMMANDS[args.command](client, args)
    except RingkvError as exc:
        print(f"ringkv {args.command}: {describe(exc, getattr(args, 'key', None), args.url)}",
              file=sys.stderr)
        return exit_code(exc)
    except ValueError as exc:  # a bad --url or key, found before any request
        print(f"ringkv {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `ringkv list --all | head`: the reader is gone, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # quiet exit flush
        return EXIT_OK
    except OSError as exc:  # --output FILE could not be written
        print(f"ringkv {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK if code is None else code


if __name__ == "__main__":
    sys.exit(main())
