"""The emulator freezes what survives a full collection (`freeze_after_full_collections`)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from kestrel_local.emulator.server import freeze_after_full_collections


@pytest.fixture
def thawed() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_a_full_collection_freezes_what_survived_it(thawed: None) -> None:
    stored = [[i] for i in range(10_000)]  # tracked containers, like stored records
    stop = freeze_after_full_collections()
    try:
        gc.collect(1)
        assert gc.get_freeze_count() == 0  # a young collection freezes nothing
        gc.collect(2)
        frozen = gc.get_freeze_count()
        assert frozen >= len(stored)
        assert id(stored[0]) not in {id(x) for x in gc.get_objects(2)}  # out of the old generation
    finally:
        stop()
    gc.unfreeze()
    gc.collect(2)
    assert gc.get_freeze_count() == 0  # stopped: a full collection freezes nothing more


def test_frozen_objects_are_still_freed_when_unreferenced(thawed: None) -> None:
    class Record:
        freed = 0

        def __del__(self) -> None:
            Record.freed += 1

    stored = [Record() for _ in range(100)]
    stop = freeze_after_full_collections()
    try:
        gc.collect(2)
        assert gc.get_freeze_count() > 0
        del stored
        assert Record.freed == 100
    finally:
        stop()
