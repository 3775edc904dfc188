"""Operator faults with real nodes behind the pods (issue 6, point 6).

Each test ends with the membership equal to the truth (the live pods, every member normal,
settled and adopted by every node), every key written readable with `rf` copies at its
newest version, and checks that no document the operator ever tried to store dropped or
demoted a node that stayed live and ready throughout (`assert_never_dropped`).
"""

from __future__ import annotations

import asyncio
import json

from harness import http
from kube_harness import (
    STEADY,
    assert_never_dropped,
    eventually,
    fully_replicated,
    make_config,
    put,
    settled,
)

from ringkv.node.membership import Document


async def write(node, prefix: str, count: int) -> dict[str, str]:
    """`count` keys written through `node`: key -> version."""
    return {f"{prefix}/{i:03d}": await put(node, f"{prefix}/{i:03d}", f"{prefix}{i}".encode())
            for i in range(count)}


async def intact(node, written: dict[str, str], exclude: frozenset[str] = frozenset()) -> None:
    """3 live copies of every key at its newest version (none on `exclude`), and every key
    reads back at that version."""
    await eventually(lambda: fully_replicated(node, written, exclude=exclude), 90,
                     "3 copies of every key")
    for key, version in written.items():
        r = await asyncio.to_thread(http, "GET", f"{node.url}/v1/kv/{key}")
        assert r.status == 200 and r.headers["etag"] == f'"{version}"', (key, r.status)


def adopted(node, epoch: int) -> bool:
    """Whether the node's log says it adopted `epoch`."""
    return f"adopted membership epoch {epoch} (" in node.log_path.read_text()


async def start_cluster(k8s, nodes, operators, names: list[str], spare: tuple[str, ...] = (),
                        finalizers: dict[str, list[str]] | None = None):
    """Nodes and Running pods for `names`, an operator, and 3 copies of 40 keys; `spare`
    nodes are known to the operator's address map but not started."""
    for name in [*names, *spare]:
        nodes.add(name)
    await nodes.start(*names)
    for name in names:
        await k8s.create_pod(name, finalizers=(finalizers or {}).get(name))
    config = make_config(nodes.addresses())
    operator = await operators(config)
    doc = await settled(k8s, nodes, set(names))
    written = await write(nodes.procs["kv-0"], "a", 40)
    await intact(nodes.procs["kv-0"], written)
    return operator, doc, written


async def lose(k8s, nodes, name: str) -> None:
    """A pod deleted as `kubectl delete pod` does it: terminating, stopped, gone."""
    await k8s.terminate_pod(name)
    await nodes.kill(name)
    await k8s.remove_pod(name)


async def come_back(k8s, nodes, *names: str) -> None:
    """The StatefulSet recreates the pods; their nodes restart on their own volumes."""
    for name in names:
        await k8s.create_pod(name)
    await nodes.start(*names)


async def rounds_pass(k8s, count: int = 5) -> None:
    rounds = k8s.operator_rounds()
    await eventually(lambda: k8s.operator_rounds() >= rounds + count, 60,
                     f"{count} reconcile rounds")


async def test_a_pod_deleted_and_back_while_the_operator_is_down(k8s, nodes, operators) -> None:
    """Nobody watches while kv-2's pod is deleted and recreated (its node restarted on its
    volume, having missed writes): the restarted operator finds the truth unchanged and
    changes nothing, and kv-2 gets what it missed."""
    operator, before, written = await start_cluster(k8s, nodes, operators, sorted(STEADY))
    await operator.stop()
    stored = k8s.operator_documents()

    await lose(k8s, nodes, "kv-2")
    written |= await write(nodes.procs["kv-0"], "b", 20)  # kv-2 misses these
    written |= await write(nodes.procs["kv-0"], "a", 10)  # and these overwrites
    await come_back(k8s, nodes, "kv-2")

    await operators(operator.config)
    await rounds_pass(k8s)
    assert await settled(k8s, nodes, set(STEADY)) == before
    assert k8s.operator_documents() == stored  # nothing to change: kv-2 is a member
    await intact(nodes.procs["kv-2"], written)
    assert_never_dropped(k8s)


async def test_two_deletions_in_quick_succession(k8s, nodes, operators) -> None:
    """kv-3 and kv-4 deleted back to back, before their copies could be restored: some
    ranges have only one live copy left, which may lack writes only the two held, so the
    operator never drops both (it says why, in an Event); the StatefulSet brings both
    back and nothing is lost."""
    names = ["kv-0", "kv-1", "kv-2", "kv-3", "kv-4"]
    _, before, written = await start_cluster(k8s, nodes, operators, names)

    await lose(k8s, nodes, "kv-3")
    await lose(k8s, nodes, "kv-4")

    async def waits() -> bool:
        return any(e["reason"] == "EpochWaiting" and "is gone, but dropping it" in e["message"]
                   for e in await k8s.events())

    await eventually(waits, 60, "an EpochWaiting Event")
    await rounds_pass(k8s)
    assert all({"kv-3", "kv-4"} & set(d.names) for d in k8s.operator_documents())

    await come_back(k8s, nodes, "kv-3", "kv-4")
    await settled(k8s, nodes, set(names), above=before.epoch - 1)
    await intact(nodes.procs["kv-3"], written)
    assert_never_dropped(k8s)


async def test_a_pod_stuck_terminating(k8s, nodes, operators) -> None:
    """kv-3's pod is deleted but a finalizer keeps it Terminating, long after its node
    stopped. It leaves the membership at once (while its node can still hand its data
    over), stays out however long the pod lingers, and rejoins as a new pod once the
    finalizer lets go."""
    names = ["kv-0", "kv-1", "kv-2", "kv-3"]
    _, before, written = await start_cluster(k8s, nodes, operators, names,
                                             finalizers={"kv-3": ["example.com/backup"]})

    await k8s.terminate_pod("kv-3")  # the node keeps running through its grace period
    left = await settled(k8s, nodes, set(STEADY), above=before.epoch)
    await intact(nodes.procs["kv-0"], written, exclude=frozenset({"kv-3"}))
    await nodes.kill("kv-3")
    await k8s.remove_pod("kv-3")  # the kubelet is done; the finalizer is not
    await rounds_pass(k8s)
    pod = await k8s.pod("kv-3")
    assert pod is not None and pod["metadata"]["deletionTimestamp"]  # still Terminating
    assert await k8s.document() == left  # and still out, with nothing else changed

    await k8s.drop_finalizers("kv-3")
    await eventually(lambda: _gone(k8s, "kv-3"), 30, "the pod to be gone")
    await come_back(k8s, nodes, "kv-3")
    await settled(k8s, nodes, set(names), above=left.epoch)
    await intact(nodes.procs["kv-3"], written)
    assert_never_dropped(k8s)


async def _gone(k8s, name: str) -> bool:
    return await k8s.pod(name) is None


async def test_a_configmap_edited_by_hand_is_replaced_by_the_nodes_document(
        k8s, nodes, operators) -> None:
    """Wrong members at the same epoch, wrong members at a bogus high epoch, at an epoch
    below the nodes', and text that is no document: each time the operator re-issues what
    the nodes run, above every epoch seen, and never pushes the edited document."""
    names = ["kv-0", "kv-1", "kv-2", "kv-3"]
    _, before, written = await start_cluster(k8s, nodes, operators, names)
    doc = before
    wrong = [m.to_json() for m in doc.members if m.name != "kv-1"]
    wrong.append({"name": "kv-9", "url": "127.0.0.1:1", "api_url": "http://127.0.0.1:1"})

    edits = [
        (doc.epoch, wrong),  # kv-1 dropped, kv-9 added, the epoch untouched
        (doc.epoch + 1000, wrong[:2]),  # the epoch far ahead, two live members dropped
        (1, wrong),  # the epoch far behind
        (0, None),  # not a document at all
    ]
    for epoch, members in edits:
        text = ("{not json" if members is None else
                json.dumps({"epoch": epoch, "rf": 3, "settled": True, "members": members}))
        await k8s.edit_document(text)
        floor = max(epoch, doc.epoch)
        doc = await settled(k8s, nodes, set(names), above=floor)
        assert doc.epoch == floor + 1
        if epoch > before.epoch:  # the bogus epoch was never pushed to a node
            assert not any(adopted(nodes.procs[n], epoch) for n in names)

    await intact(nodes.procs["kv-0"], written)
    assert_never_dropped(k8s, frozenset(names))


async def test_a_configmap_deleted_while_a_node_joins_keeps_it_joining(
        k8s, nodes, operators, status_node) -> None:
    """kv-3's pod is Running and answers, but has pulled nothing yet (a `StatusNode` on
    its address, which never catches up, stands in for its node), so it is a joining
    member that holds no data. The ConfigMap is deleted: the operator re-issues the nodes'
    document, with kv-3 still joining, rather than a fresh one that would make it a
    normal replica with no data. Then kv-3's real node takes over its address and joins."""
    _, before, written = await start_cluster(k8s, nodes, operators, sorted(STEADY),
                                             spare=("kv-3",))
    pulling = await status_node("kv-3", port=nodes.procs["kv-3"].internal_port)
    await k8s.create_pod("kv-3")
    joining = await eventually(lambda: _joining(k8s, "kv-3"), 30, "kv-3 to be joining")
    assert joining.epoch == before.epoch + 1
    assert joining.member("kv-3").data_id == pulling.data_id

    await k8s.call("DELETE", k8s.configmap_url)
    doc = await eventually(k8s.document, 30, "the ConfigMap to be back")
    assert doc == Document(joining.epoch + 1, joining.rf, joining.members, settled=False,
                           base=joining.base)
    await rounds_pass(k8s)
    assert all(d.member("kv-3") is None or d.member("kv-3").state == "joining"
               for d in k8s.operator_documents())  # never normal before it pulled a thing

    await pulling.stop()  # the real node takes its address, with its own data id
    await nodes.start("kv-3")
    await settled(k8s, nodes, {*STEADY, "kv-3"}, above=doc.epoch)
    await intact(nodes.procs["kv-3"], written)
    assert_never_dropped(k8s)


async def _joining(k8s, name: str) -> Document | None:
    doc = await k8s.document()
    member = doc.member(name) if doc is not None else None
    return doc if member is not None and member.state == "joining" else None
