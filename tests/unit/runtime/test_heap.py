"""What a process's set-up leaves behind is out of the collector's sight, and it collects less often."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from runtime import heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_freeze_keeps_what_exists_out_of_later_collections_and_collects_less_often() -> None:
    before = gc.get_freeze_count()
    kept = [[i] for i in range(1000)]  # containers made during "set-up"
    heap.freeze()
    assert gc.get_freeze_count() >= before + len(kept)
    assert gc.get_threshold() == heap.THRESHOLDS
    young, _middle, old = heap.THRESHOLDS
    assert young > 700 and old > 10, "fewer collections than CPython's default (700, 10, 10)"


@pytest.mark.usefixtures("restored_gc")
def test_cyclic_garbage_made_after_freezing_is_still_collected() -> None:
    heap.freeze()

    class Node:
        def __init__(self) -> None:
            self.other: Node | None = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    ref_count_before = len([o for o in gc.get_objects() if isinstance(o, Node)])
    del a, b
    gc.collect()
    assert ref_count_before == 2
    assert not [o for o in gc.get_objects() if isinstance(o, Node)]
