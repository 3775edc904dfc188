"""`controller.restore`: when the stored document gives way to the one the nodes run."""

from __future__ import annotations

from dataclasses import replace

from ringkv.node.membership import Document, Member
from ringkv.operator.controller import Report, held_document, restore


def doc(epoch: int, *names: str, joining: tuple[str, ...] = (), settled: bool = True,
        base: tuple[str, ...] = ()) -> Document:
    members = tuple(Member(n, f"{n}:9080", f"http://{n}:8080",
                           "joining" if n in joining else "normal") for n in names)
    return Document(epoch, 3, members, settled=settled, base=base)


def holding(*docs: Document | None) -> dict[str, Report]:
    """Reports of nodes kv-0, kv-1, ... holding these documents (None: could not tell)."""
    return {f"kv-{i}": Report(f"kv-{i}", d.epoch if d else 0, True, True, document=d)
            for i, d in enumerate(docs)}


RUNNING = doc(7, "kv-0", "kv-1", "kv-2", "kv-3", joining=("kv-3",), settled=False,
              base=("kv-0", "kv-1", "kv-2"))
NODES = holding(RUNNING, RUNNING, replace(RUNNING, epoch=6))
HELD = held_document(NODES)


def test_the_newest_document_a_node_tells_is_held() -> None:
    assert held_document(NODES) == RUNNING
    assert held_document(holding(None, None)) is None
    # A report filed under another node's name speaks for nobody.
    assert held_document({"kv-0": Report("kv-9", 7, True, True, document=RUNNING)}) is None


def test_a_store_that_matches_the_nodes_is_kept() -> None:
    assert restore(RUNNING, HELD, 7, ours=None) is None


def test_a_lost_store_gets_the_nodes_document_above_their_epoch() -> None:
    assert restore(None, HELD, 7, ours=None) == replace(RUNNING, epoch=8)


def test_a_store_edited_at_the_same_epoch_is_replaced() -> None:
    edited = doc(7, "kv-0", "kv-2", "kv-9")
    assert restore(edited, HELD, 7, ours=None) == replace(RUNNING, epoch=8)


def test_a_store_behind_the_nodes_is_replaced_above_them() -> None:
    assert restore(doc(1, "kv-0"), HELD, 7, ours=None) == replace(RUNNING, epoch=8)


def test_a_store_ahead_that_this_controller_wrote_is_kept_until_pushed() -> None:
    ahead = replace(RUNNING, epoch=8, members=tuple(
        replace(m, state="normal") for m in RUNNING.members))
    assert restore(ahead, HELD, 7, ours=ahead) is None


def test_a_store_ahead_that_someone_else_wrote_is_replaced_above_it() -> None:
    bogus = doc(1007, "kv-0", "kv-1")
    assert restore(bogus, HELD, 7, ours=None) == replace(RUNNING, epoch=1008)
    # Even when it was ours once: an edit can keep the epoch and change the members.
    assert restore(bogus, HELD, 7, ours=doc(1007, "kv-0", "kv-1", "kv-2")) == replace(
        RUNNING, epoch=1008)


def test_nothing_to_restore_from_when_no_node_tells() -> None:
    assert restore(None, None, 7, ours=None) is None
    assert restore(doc(3, "kv-0"), None, 0, ours=None) is None
