#!/usr/bin/env python3
"""`make e2e`: build the image, put it where a real Kubernetes can run it, run tests/e2e.

Where it runs, first match wins:

  (a) `../shared/k8s/cluster` (or $RINGKV_K8S_CLUSTER) exists and we are root: the
      project's own single-node Kubernetes. `cluster up` (a no-op when it is up), `cluster
      image build` (outside `cluster exec`: the build needs PyPI), pytest inside `cluster
      exec`, and `cluster down` at the end only if this script brought the cluster up.
  (b) `kind` and `docker` are on PATH (GitHub Actions): `docker build`, a kind cluster
      (reused if it exists, deleted at the end only if created here), `kind load`.
  (c) neither: pytest still runs and every e2e test reports SKIPPED with the reason, so
      a machine without a cluster never counts the e2e tests as passed.

Arguments, if any, are the tests to run instead of all of tests/e2e (`make e2e-churn`
runs tests/e2e/test_kubernetes.py alone).

A cluster that is there but cannot be used (`cluster up` or `kind create cluster` fails)
is a failure, like a failing image build or a failing test: the e2e tests are skipped only
where there is no cluster at all (and under CI=true the skips fail too, see
tests/ci_skips.py). Standard library only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# RINGKV_K8S_CLUSTER names the script when the checkout is not beside shared/ (a worktree).
SHARED_CLUSTER = Path(os.environ.get("RINGKV_K8S_CLUSTER")
                      or ROOT.parent / "shared" / "k8s" / "cluster")
VENV_PYTEST = ROOT / ".venv" / "bin" / "pytest"
KIND_CLUSTER = "ringkv-e2e"
IMAGE = "ringkv"
PYTEST_ARGS = ["-m", "e2e", "-p", "no:cacheprovider", "-v", "-s", "-rs"]
TESTS = sys.argv[1:] or ["tests/e2e"]


def log(text: str) -> None:
    print(f"[e2e.py {time.strftime('%H:%M:%S')}] {text}", flush=True)


def run(argv: Sequence[str], env: Mapping[str, str] | None = None, what: str = "") -> int:
    """Run a command in the repository root with its output on ours; log its duration."""
    started = time.monotonic()
    log(f"$ {' '.join(argv)}")
    rc = subprocess.run(list(argv), cwd=ROOT, env=None if env is None else dict(env), check=False).returncode
    log(f"{what or argv[0]}: exit {rc} after {time.monotonic() - started:.0f}s")
    return rc


def quiet(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=ROOT, capture_output=True, text=True, check=False)


def image_tag() -> str:
    """`e2e-<short sha>`, `-dirty` when tracked files changed (that tag is rebuilt every run
    anyway), or a timestamp outside a git checkout."""
    sha = quiet(["git", "rev-parse", "--short", "HEAD"])
    if sha.returncode != 0:
        return "e2e-" + time.strftime("%Y%m%d%H%M%S")
    dirty = quiet(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    return f"e2e-{sha.stdout.strip()}" + ("-dirty" if dirty else "")


def pytest(env_extra: Mapping[str, str], prefix: Sequence[str] = ()) -> int:
    """Run the e2e tests (optionally inside `prefix`, e.g. `cluster exec --`)."""
    env = {**os.environ, **env_extra}
    return run([*prefix, str(VENV_PYTEST), *TESTS, *PYTEST_ARGS], env=env,
               what=f"pytest {' '.join(TESTS)}")


def skipped(reason: str) -> int:
    """Run pytest so every e2e test shows SKIPPED with `reason`; its exit code is ours."""
    log(f"e2e skipped: {reason}")
    rc = pytest({"RINGKV_E2E_SKIP_REASON": reason})
    log(f"e2e tests were SKIPPED, not passed: {reason}")
    return rc


def on_shared_cluster() -> int:
    cluster = str(SHARED_CLUSTER)
    was_up = quiet([cluster, "status"]).returncode == 0
    log(f"../shared/k8s cluster is {'already up' if was_up else 'down: bringing it up'}")
    if run([cluster, "up"], what="cluster up") != 0:
        log(f"FAILED: {cluster} is here but `cluster up` failed (see its output above)")
        return 1
    try:
        tag = image_tag()
        # --no-cache: buildah (Debian bookworm's 1.28) reuses the cached layer of a
        # `RUN --mount=type=bind,from=<stage>` even when that stage changed (buildah issue
        # #6609), so the Dockerfile's install step would keep the first build's wheels.
        build = [cluster, "image", "build", ".", f"{IMAGE}:{tag}", "--", "--no-cache"]
        if run(build, what="image build") != 0:
            log(f"FAILED: could not build {IMAGE}:{tag}")
            return 1
        return pytest({"RINGKV_E2E_IMAGE": IMAGE, "RINGKV_E2E_TAG": tag}, prefix=[cluster, "exec", "--"])
    finally:
        if not was_up:
            run([cluster, "down"], what="cluster down")


def on_kind() -> int:
    clusters = quiet(["kind", "get", "clusters"]).stdout.split()
    created = KIND_CLUSTER not in clusters
    tag = image_tag()
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    if run(["docker", "build", "-t", f"{IMAGE}:{tag}", "."], env=env, what="docker build") != 0:
        log(f"FAILED: could not build {IMAGE}:{tag}")
        return 1
    if created and run(["kind", "create", "cluster", "--name", KIND_CLUSTER, "--wait", "180s"],
                       what="kind create cluster") != 0:
        quiet(["kind", "delete", "cluster", "--name", KIND_CLUSTER])
        log(f"FAILED: `kind create cluster --name {KIND_CLUSTER}` failed (see its output above)")
        return 1
    try:
        if run(["kind", "load", "docker-image", f"{IMAGE}:{tag}", "--name", KIND_CLUSTER],
               what="kind load") != 0:
            log(f"FAILED: could not load {IMAGE}:{tag} into kind")
            return 1
        with tempfile.TemporaryDirectory(prefix="ringkv-e2e-") as tmp:
            kubeconfig = Path(tmp) / "kubeconfig"
            got = quiet(["kind", "get", "kubeconfig", "--name", KIND_CLUSTER])
            if got.returncode != 0:
                log(f"FAILED: `kind get kubeconfig` failed: {got.stderr.strip()}")
                return 1
            kubeconfig.write_text(got.stdout)
            return pytest({"KUBECONFIG": str(kubeconfig), "RINGKV_E2E_IMAGE": IMAGE,
                           "RINGKV_E2E_TAG": tag})
    finally:
        if created:
            run(["kind", "delete", "cluster", "--name", KIND_CLUSTER], what="kind delete cluster")


def main() -> int:
    started = time.monotonic()
    if SHARED_CLUSTER.is_file() and os.geteuid() == 0:
        rc = on_shared_cluster()
    elif shutil.which("kind") and shutil.which("docker"):
        rc = on_kind()
    else:
        why = "not root" if SHARED_CLUSTER.is_file() else "no ../shared/k8s cluster"
        rc = skipped(f"{why} and no kind+docker: e2e skipped")
    log(f"done in {time.monotonic() - started:.0f}s, exit {rc}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
