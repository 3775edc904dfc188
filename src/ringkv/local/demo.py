"""`ringkv demo`: the seed store's scenario, narrated, on a real local 5-node cluster.

Create five keys through random nodes, kill one node, read all five back through the
survivors, watch the membership epoch change and re-replication run (a progress bar),
watch the node return and catch up, and end on the settled ring. Everything it starts,
it stops.
"""

from __future__ import annotations

import argparse
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from ringkv.client import Client, RingkvError, Unavailable

from .control_client import ControlError
from .ports import free_port_block
from .spawn import UpProcess, spawn_up

BAR = 30
T = TypeVar("T")
DOWN_GRACE = 5.0  # seconds a node may be away before its copies are restored (short, for the story)


def say(text: str = "") -> None:
    print(text, flush=True)


def target_replicas(client: Client, key: str) -> list[str]:
    """The nodes that hold `key` in the target ring, from `GET /v1/replicas` (JSON)."""
    entries = cast(list[dict[str, Any]], client.replicas(key)["replicas"])
    return [r["node"] for r in entries if r["in_target"]]


class Demo:
    def __init__(self, data_dir: Path, base_port: int, bulk: int, pace: float) -> None:
        self.data_dir = data_dir
        self.base_port = base_port
        self.bulk = bulk
        self.pace = pace
        self.token = secrets.token_hex(16)
        self.up: UpProcess | None = None
        self.keys = 0  # how many keys the demo wrote

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.base_port + i}"

    def pause(self) -> None:
        time.sleep(self.pace)

    def cluster(self, via: list[str]) -> dict[str, Any]:
        with Client(via, token=self.token, timeout=5) as client:
            return client.cluster()

    def wait(self, what: str, check: Callable[[], T | None], timeout: float = 120) -> T:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.up is not None and not self.up.running():
                raise RuntimeError(f"the local cluster exited ({self.up.proc.returncode}) while "
                                   f"waiting for {what}:\n{self.launcher_log()}")
            try:
                result = check()
                if result:
                    return result
            except (RingkvError, Unavailable, OSError, ControlError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gave up waiting for {what}:\n{self.launcher_log()}")

    def launcher_log(self) -> str:
        """The end of `ringkv up`'s log, for a failure message (the directory goes away)."""
        return self.up.log_tail(30) if self.up is not None else "(no launcher log)"

    def start(self) -> UpProcess:
        self.up = spawn_up(self.data_dir / "data", nodes=5, rf=3, base_port=self.base_port,
                           token=self.token, restart_delay=3, down_grace=DOWN_GRACE,
                           log_path=self.data_dir / "launcher.log")
        return self.up

    def stop(self) -> None:
        if self.up is not None:
            self.up.stop()

    def settled(self, members: int, via: list[str], after: int = 0) -> dict[str, Any] | None:
        info = self.cluster(via)
        ok = (info["settled"] and info["epoch"] > after and len(info["members"]) == members
              and all(m.get("ready") and m["state"] == "normal" for m in info["members"]))
        return info if ok else None

    def show_ring(self, info: dict[str, Any]) -> None:
        say(f"  epoch {info['epoch']}, settled={info['settled']}, "
            f"{info['replicas_per_key']} copies of every key")
        for m in info["members"]:
            say(f"    {m['name']:<8} {m['state']:<8} {m.get('records', '?'):>6} records  "
                f"owns {m.get('ownership', 0) * 100:5.1f}% of the ring")

    def watch_transition(self, via: list[str], members: int, after: int) -> dict[str, Any]:
        """Print each epoch as it passes and a progress bar of the ranges being pulled."""
        seen = after
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                info = self.cluster(via)
            except (RingkvError, Unavailable):
                time.sleep(0.1)
                continue
            if info["epoch"] > seen:
                seen = info["epoch"]
                states = ", ".join(f"{m['name']}={m['state']}" for m in info["members"])
                sys.stdout.write("\r" + " " * 78 + "\r")
                say(f"  epoch {info['epoch']}: settled={info['settled']}  [{states}]")
            progress = info.get("rebalance", {})
            total = sum(m.get("rebalance", {}).get("ranges_total", 0) for m in info["members"])
            left = progress.get("ranges_left", 0)
            done = total - left
            filled = BAR * done // total if total else BAR
            sys.stdout.write(
                f"\r  re-replication [{'#' * filled}{'.' * (BAR - filled)}] "
                f"{done}/{total} ranges, {progress.get('keys_received', 0)} records copied "
            )
            sys.stdout.flush()
            if self.settled(members, via, after):
                sys.stdout.write("\n")
                return self.wait("excess copies to be dropped", lambda: self.cleaned(via))
            time.sleep(0.2)
        raise RuntimeError("the cluster did not settle")

    def cleaned(self, via: list[str]) -> dict[str, Any] | None:
        """Once settled, nodes drop copies of ranges they no longer hold: wait for that, so
        the record counts shown are exactly copies x keys."""
        info = self.cluster(via)
        held = sum(m.get("records", 0) for m in info["members"])
        return info if held == info["replicas_per_key"] * self.keys else None

    def run(self) -> None:
        say("ringkv demo: the seed store's scenario on a real local cluster")
        say(f"  starting 5 node processes (rf=3) on ports {self.base_port}..{self.base_port + 4} ...")
        up = self.start()
        everyone = [self.url(i) for i in range(5)]
        info = self.wait("the cluster to form", lambda: self.settled(5, everyone))
        self.show_ring(info)
        self.pause()

        say("\n1. Create five keys, each through a random node (quorum writes: 2 of 3 acks)")
        rnd = random.Random()
        keys = {f"seed/{name}": f"hello from {name}" for name in
                ("alpha", "bravo", "charlie", "delta", "echo")}
        for key, value in keys.items():
            i = rnd.randrange(5)
            with Client(self.url(i), token=self.token) as client:
                version = client.put(key, value)
                replicas = target_replicas(client, key)
            say(f"  PUT {key:<14} via node-{i}  version {version}  replicas {', '.join(replicas)}")
        if self.bulk:
            with Client(everyone, token=self.token) as client:
                for n in range(self.bulk):
                    client.put(f"bulk/{n:06d}", b"x" * 100)
            say(f"  (and {self.bulk} more keys of 100 bytes, so re-replication has work to do)")
        self.keys = len(keys) + self.bulk
        self.pause()

        victim = rnd.randrange(5)
        name = f"node-{victim}"
        survivors = [self.url(i) for i in range(5) if i != victim]
        say(f"\n2. Take {name} away, as when its pod is deleted and does not come back")
        up.control.stop(name)
        say(f"  {name} is gone: its ranges keep two live copies; after {DOWN_GRACE:g}s away "
            f"(the grace period: 300s by default, so a restarted pod costs nothing) the "
            f"controller removes it and the survivors restore the third copy")
        info = self.watch_transition(survivors, 4, info["epoch"])
        self.pause()

        say("\n3. Read all five keys back through the survivors")
        for key, value in keys.items():
            url = rnd.choice(survivors)
            with Client(url, token=self.token) as client:
                got = client.get(key).value.decode()
                replicas = target_replicas(client, key)
            mark = "ok" if got == value else "WRONG"
            say(f"  GET {key:<14} via {url.rsplit(':', 1)[1]}: {got!r} [{mark}]  "
                f"replicas now {', '.join(replicas)}")
        self.show_ring(info)
        self.pause()

        say(f"\n3b. {name} returns on its old data directory: it catches up by difference "
            f"(only what it missed moves) and takes its share")
        up.control.start(name)
        info = self.watch_transition(everyone, 5, info["epoch"])

        say("\n4. The final, settled ring")
        self.show_ring(info)
        say("\nEvery key kept 3 copies throughout; nothing was lost. Stopping the cluster.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ringkv demo", description=__doc__.splitlines()[0])
    p.add_argument("--base-port", type=int, default=0, help="default: a free block of ports")
    p.add_argument("--bulk", type=int, default=2000, help="extra keys to load before the kill")
    p.add_argument("--pace", type=float, default=1.0, help="seconds to pause between acts")
    args = p.parse_args(argv)
    base = args.base_port or free_port_block(8)
    with tempfile.TemporaryDirectory(prefix="ringkv-demo-") as tmp:
        demo = Demo(Path(tmp), base, args.bulk, args.pace)
        try:
            demo.run()
        except (RuntimeError, RingkvError, Unavailable) as exc:
            print(f"ringkv demo: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        finally:
            demo.stop()
    return 0
