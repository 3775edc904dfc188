#!/usr/bin/env python3
"""Install Debian's `chromium` and `chromium-driver` for the console's browser tests (run
by `make tools`, as helm and kubectl are fetched).

Idempotent: when both binaries are on PATH it returns at once. Otherwise, as root on a
Debian-like machine, `apt-get install` (after one `apt-get update`). Anywhere else it says
why it could not, and exits 0: the browser tests then skip with that reason, except under
CI=true, where a missing browser fails them (tests/browser/conftest.py).
Standard library only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

PACKAGES = ("chromium", "chromium-driver")
BINARIES = ("chromium", "chromedriver")


def missing() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def main() -> int:
    if not missing():
        return 0
    if shutil.which("apt-get") is None:
        print(f"install_browser: no apt-get here; install {' and '.join(PACKAGES)} to run the "
              "browser tests", file=sys.stderr)
        return 0
    if os.geteuid() != 0:
        print(f"install_browser: not root; run `sudo apt-get install {' '.join(PACKAGES)}` to run "
              "the browser tests", file=sys.stderr)
        return 0
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"install_browser: apt-get install {' '.join(PACKAGES)}", file=sys.stderr)
    for argv in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        if subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=False).returncode != 0:
            print(f"install_browser: `{' '.join(argv)}` failed; the browser tests will say so",
                  file=sys.stderr)
            return 0
    if missing():
        print(f"install_browser: still missing {', '.join(missing())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
