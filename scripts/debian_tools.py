#!/usr/bin/env python3
"""Install the Debian packages some tests drive, when they are missing (run by `make tools`).

    python scripts/debian_tools.py chromium chromium-driver prometheus

Packages already installed cost one `dpkg-query` and nothing else. Missing ones are
installed with apt-get (`--no-install-recommends`) when this runs as root on a machine
with apt; otherwise it says what is missing and exits 0, and the tests that need them
skip with that reason (under CI=true they fail instead: tests/harness.py `require_tool`,
tests/browser/). Standard library only, like fetch_tools.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def missing(packages: list[str]) -> list[str]:
    """The packages dpkg does not report as installed."""
    out = []
    for package in packages:
        status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                                capture_output=True, text=True, check=False).stdout
        if not status.endswith(" installed"):
            out.append(package)
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    if shutil.which("dpkg-query") is None:
        print(f"debian_tools: not a Debian system; tests needing {', '.join(argv)} will skip")
        return 0
    todo = missing(argv)
    if not todo:
        print(f"debian_tools: {', '.join(argv)} already installed")
        return 0
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(f"debian_tools: {', '.join(todo)} missing and this is not root with apt-get: "
              f"install them (apt-get install {' '.join(todo)}) or their tests will skip")
        return 0
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *todo],
                   check=True, env=env)
    print(f"debian_tools: installed {', '.join(todo)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
