"""Fixtures for the operator tests; the helpers live in `kube_harness` (next to this file)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import kmock
import pytest

# tests/operator holds `kube_harness`; it cannot be a package (it would be named `operator`).
from kube_harness import (
    NAMESPACE,
    RESOURCES,
    TEST_AGENT,
    VERBS,
    Cluster,
    Emulator,
    Nodes,
    OperatorThread,
    StatusNode,
    chart_role,
    eventually,
)

from ringkv.operator.kube import Config


@pytest.fixture
async def k8s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    """The emulated API server; the operator's requests are held to the chart's Role, and a
    test fails if any was refused (even one the operator only logged)."""
    async with Emulator(role=chart_role()) as emulator, kmock.Server(emulator) as server:
        for name, info in RESOURCES.items():
            emulator.resources[name] = kmock.ResourceInfo(verbs=VERBS, **info)
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": str(server.url).rstrip("/")}}],
            "users": [{"name": "test", "user": {"token": "test-token"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test",
                                                       "namespace": NAMESPACE}}],
        }))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        # A new connection per request: the emulator never holds a test connection open.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(str(server.url), connector=connector,
                                         headers={"User-Agent": TEST_AGENT}) as session:
            yield Cluster(emulator, session, kubeconfig)
        assert emulator.forbidden == [], "the chart's Role refused the operator these requests"


@pytest.fixture
async def operators(k8s: Cluster) -> AsyncIterator[Callable[..., Awaitable[OperatorThread]]]:
    """`await operators(config)` starts an operator and returns once kopf watches the pods
    (`wait=False`: at once); all are stopped, and checked to exit cleanly, at teardown."""
    started: list[OperatorThread] = []

    async def start(config: Config, wait: bool = True) -> OperatorThread:
        watches = k8s.kopf_watches()
        started.append(OperatorThread(config).start())
        if wait:
            await eventually(lambda: k8s.kopf_watches() > watches, 30, "kopf to watch the pods")
        return started[-1]

    yield start
    for op in started:
        await op.stop()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    group = Nodes(tmp_path / "nodes")
    try:
        yield group
    finally:
        group.stop_all()




@pytest.fixture
async def status_node() -> AsyncIterator[Callable[..., Awaitable[StatusNode]]]:
    """`await status_node(name)` starts a `StatusNode` (a node that answers the operator but
    holds no data); all are stopped at teardown."""
    started: list[StatusNode] = []

    async def start(name: str, **kwargs: object) -> StatusNode:
        node = await StatusNode(name, **kwargs).start()  # type: ignore[arg-type]
        started.append(node)
        return node

    yield start
    for node in started:
        await node.stop()
