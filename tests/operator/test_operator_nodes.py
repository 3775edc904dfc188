"""The real kopf operator driving real `ringkv-node` processes through the emulated API.

Each pod in the emulator has a node process on 127.0.0.1 behind it (the operator's address
hook maps pod names to their ports, where the cluster would use the peer Service's DNS).
Deleting a pod here also kills its process, as the kubelet would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from importlib.metadata import entry_points
from pathlib import Path

from harness import API_TOKEN, CLUSTER_TOKEN, free_ports, http
from kube_harness import (
    CONFIGMAP,
    NAMESPACE,
    SELECTOR,
    STEADY,
    assert_never_dropped,
    eventually,
    fully_replicated,
    make_config,
    node_get,
    put,
    replicas,
    settled,
)

from ringkv.operator import kube


async def test_a_lost_pod_is_removed_and_its_data_re_replicated(k8s, nodes, operators) -> None:
    names = ["kv-0", "kv-1", "kv-2", "kv-3"]
    for name in names:
        nodes.add(name)
    await nodes.start(*names)
    for name in names:
        await k8s.create_pod(name)
    await operators(make_config(nodes.addresses()))
    doc = await settled(k8s, nodes, set(names))
    assert doc.epoch == 1

    entry = nodes.procs["kv-0"]
    written = {f"k/{i:03d}": await put(entry, f"k/{i:03d}", f"v{i}".encode()) for i in range(60)}

    await eventually(lambda: fully_replicated(entry, written), 90, "3 copies of every key")
    held_by_kv3 = [k for k in written if "kv-3" in {r["node"] for r in await replicas(entry, k)}]
    assert held_by_kv3, "kv-3 should replicate some keys"

    await k8s.terminate_pod("kv-3")  # the kubelet stops the container...
    await nodes.kill("kv-3")
    await k8s.remove_pod("kv-3")  # ...and the pod is gone
    doc = await settled(k8s, nodes, {"kv-0", "kv-1", "kv-2"}, above=doc.epoch)
    await eventually(lambda: fully_replicated(entry, written, exclude=frozenset({"kv-3"})), 90,
                     "3 live copies of every key on the survivors")
    events = [e["reason"] for e in await k8s.events()]
    assert {"ClusterFormed", "NodeRemoved", "EpochSettled"} <= set(events)
    assert k8s.foreign_pod_writes() == []


async def test_a_configmap_deleted_by_hand_is_reissued_above_the_nodes_epoch(
        k8s, nodes, operators) -> None:
    names = ["kv-0", "kv-1", "kv-2", "kv-3"]
    for name in names:
        nodes.add(name)
    await nodes.start(*names)
    for name in names[:3]:
        await k8s.create_pod(name)
    await operators(make_config(nodes.addresses()))
    await settled(k8s, nodes, set(names[:3]))
    # A join walks the nodes through several epochs (joining, promoted, settled).
    await k8s.create_pod("kv-3")
    before = await settled(k8s, nodes, set(names), above=1)
    assert before.epoch >= 4

    await k8s.call("DELETE", k8s.configmap_url)
    doc = await settled(k8s, nodes, set(names), above=before.epoch)
    assert doc.epoch == before.epoch + 1  # the first epoch every node will adopt
    for name in names:
        assert (await node_get(nodes.procs[name], "/v1/cluster"))["epoch"] == doc.epoch
    assert_never_dropped(k8s, STEADY)


async def test_the_console_script_runs_the_operator(k8s, nodes, tmp_path: Path) -> None:
    """`ringkv-operator` as its own process, configured by the environment as in the chart,
    logging in with the kubeconfig; it serves its metrics and stops cleanly on SIGTERM."""
    node = nodes.add("kv-0")
    await nodes.start("kv-0")
    await k8s.create_pod("kv-0", ip="127.0.0.1")
    (metrics_port,) = free_ports(1)
    script = Path(sys.executable).with_name("ringkv-operator")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "ringkv.operator.kube"]
    env = {**os.environ, "KUBECONFIG": str(k8s.kubeconfig), "RINGKV_NAMESPACE": NAMESPACE,
           "RINGKV_POD_SELECTOR": SELECTOR, "RINGKV_CONFIGMAP": CONFIGMAP,
           "RINGKV_PEER_SERVICE": "kv-peers", "RINGKV_CLUSTER_TOKEN": CLUSTER_TOKEN,
           "RINGKV_ADDRESS_TEMPLATE": "{pod_ip}",
           "RINGKV_INTERNAL_PORT": str(node.internal_port), "RINGKV_API_PORT": str(node.port),
           "RINGKV_RECONCILE_INTERVAL": "0.5", "RINGKV_LOG_FORMAT": "json",
           "RINGKV_METRICS_PORT": str(metrics_port)}
    log_path = tmp_path / "operator.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(*command, env=env, stdout=log, stderr=log)
    try:
        doc = await settled(k8s, nodes, {"kv-0"}, timeout=90)
        assert doc.members[0].url == f"127.0.0.1:{node.internal_port}"
        await eventually(k8s.kopf_watches, 60, "kopf to watch the pods")
        ready = await asyncio.to_thread(http, "GET", node.url + "/readyz", None, None, None)
        assert ready.status == 200  # the node got its membership from the operator
        metrics = await asyncio.to_thread(http, "GET", f"http://127.0.0.1:{metrics_port}/metrics",
                                          None, None, None)
        assert b"ringkv_operator_last_reconcile_success_timestamp_seconds" in metrics.body
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = log_path.read_text()
    assert '"msg": "operator for ringkv-test/ringkv-membership' in text, text[-3000:]
    assert '"msg": "operator stopped"' in text, text[-3000:]
    assert API_TOKEN not in text and CLUSTER_TOKEN not in text


async def test_the_console_script_refuses_an_incomplete_environment() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGKV_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ringkv.operator.kube", env={**env, "RINGKV_NAMESPACE": "x"},
        stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert b"RINGKV_POD_SELECTOR is required" in err


def test_the_console_script_entry_point_is_main() -> None:
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "ringkv-operator"]
    assert script.load() is kube.main
