"""The CLI as README's Kubernetes walkthrough uses it: through `kubectl port-forward` kept
in the documented loop, `ringkv status --wait` until settled, across the deletion of the
pod the port-forward was forwarding to; and what the CLI says through a port-forward
that was not in a loop when its pod went away."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest
from e2e.support import Release, free_port, installed, say

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def small(tools: tuple[str, str], request: pytest.FixtureRequest) -> Iterator[Release]:
    with installed(tools, request, "ringkv-cli", 3, 3) as rel:
        yield rel


class Forward:
    """`kubectl port-forward TARGET PORT:8080`, alone or in README's `while true` loop;
    stopped by its process group (the shell and the kubectl it runs)."""

    def __init__(self, release: Release, target: str, loop: bool) -> None:
        self.port = free_port()
        command = (f"{release.kube.kubectl_bin} --namespace {release.kube.namespace} "
                   f"port-forward {target} {self.port}:8080")
        script = f"while true; do {command}; sleep 1; done" if loop else f"exec {command}"
        log = (release.log_dir / f"cli-forward-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(["sh", "-c", script], stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(30)


def cli(release: Release, url: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ringkv.client.cli", *args, "--url", url,
                           "--token", release.token], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_status_wait_through_the_port_forward_loop_across_a_pod_deletion(small: Release) -> None:
    loop = Forward(small, f"svc/{small.name}", loop=True)
    try:
        settled = cli(small, loop.url, "status", "--wait", "600", "--json")
        assert settled.returncode == 0, settled.stderr
        with urllib.request.urlopen(loop.url + "/healthz", timeout=30) as resp:
            pod = json.load(resp)["node"]  # the pod this port-forward reaches (node name = pod name)
        plain = Forward(small, f"pod/{pod}", loop=False)
        try:
            assert cli(small, plain.url, "status", "--wait", "120").returncode == 0
            say(f"deleting {pod}, the pod both port-forwards reach")
            small.kube.kubectl("delete", "pod", pod, timeout=300)
            gone = cli(small, plain.url, "status", timeout=120)
            assert gone.returncode == 5 and "port-forward" in gone.stderr, gone.stderr
            say(f"without the loop: {gone.stderr.strip()}")
        finally:
            plain.close()
        back = cli(small, loop.url, "status", "--wait", "600", "--json")
        assert back.returncode == 0, back.stderr
        doc = json.loads(back.stdout)
        assert sorted(m["name"] for m in doc["members"]) == [f"{small.name}-{i}" for i in range(3)]
        say(f"through the loop: settled again at epoch {doc['epoch']}; it waited for: "
            f"{[line for line in back.stderr.splitlines() if line.startswith('waiting')]}")
    finally:
        loop.close()
