"""Debian tools some features and tests need, found where Debian puts them and installed
with apt-get.

`ip` and `iptables` (`ringkv up --netns`, the partition tests) live in /usr/sbin, which a
non-login shell's PATH often lacks even for root; `etcd` (the benchmark's comparison),
`openssl` (the TLS tests' certificates), `prometheus`/`promtool` (the monitoring tests) and
`chromium`/`chromedriver` (the console's browser tests) are ordinary packages. `make test`
runs `python -m ringkv.local.system_tools` to install whichever is missing, as it fetches
helm; without root or apt-get it says what is missing and the tests that need it skip
(which `CI=true` turns into failures, see tests/ci_skips.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable

SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
# tool -> the Debian package that provides it
PACKAGES = {"ip": "iproute2", "iptables": "iptables", "etcd": "etcd-server", "openssl": "openssl",
            "prometheus": "prometheus", "promtool": "prometheus",
            "chromium": "chromium", "chromedriver": "chromium-driver"}


class ToolMissing(RuntimeError):
    """A tool is not installed and could not be installed here."""


def find(name: str) -> str | None:
    """The tool's path: on PATH, else in the sbin directories."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_DIRS))


def resolve(argv: list[str]) -> list[str]:
    """`argv` with its program as a full path, so it runs whatever PATH the caller has."""
    path = find(argv[0])
    if path is None:
        raise ToolMissing(f"{argv[0]} not found on PATH or in {', '.join(SBIN_DIRS)}")
    return [path, *argv[1:]]


def install(names: Iterable[str]) -> list[str]:
    """Install the Debian packages of the missing tools; returns the tools still missing.

    Only as root with apt-get; otherwise nothing is tried."""
    missing = [name for name in names if find(name) is None]
    if not missing or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return missing
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    packages = sorted({PACKAGES[name] for name in missing})
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"system_tools: {' '.join(cmd)} failed:\n{done.stderr.strip()}", file=sys.stderr)
            break
    return [name for name in missing if find(name) is None]


def main(argv: list[str] | None = None) -> int:
    """`python -m ringkv.local.system_tools [TOOL...]`: install what is missing (default: all)."""
    names = (argv if argv is not None else sys.argv[1:]) or list(PACKAGES)
    unknown = [name for name in names if name not in PACKAGES]
    if unknown:
        print(f"system_tools: unknown tool(s) {', '.join(unknown)}; known: {', '.join(PACKAGES)}",
              file=sys.stderr)
        return 2
    before = [name for name in names if find(name) is None]
    still = install(names)
    for name in before:
        if name not in still:
            print(f"system_tools: installed {name} ({PACKAGES[name]}): {find(name)}")
    if still:
        why = "not root" if os.geteuid() != 0 else "apt-get failed or is missing"
        print(f"system_tools: missing {', '.join(still)} ({why}); the tests that need "
              f"{'it' if len(still) == 1 else 'them'} will skip. Debian: apt-get install "
              f"{' '.join(sorted({PACKAGES[n] for n in still}))}")
    elif not before:
        print(f"system_tools: {', '.join(names)} already installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
