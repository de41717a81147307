"""The stream handlers let the collector's young generation grow (`collect_less_often`)."""

from __future__ import annotations

import gc

import pytest
from handler_doubles import _load_handler

from kestrel.stream_batch import GC_YOUNG_THRESHOLD


@pytest.mark.parametrize("name", ["transactions", "labels", "clickstream"])
def test_stream_handler_module_sets_the_young_threshold(name: str) -> None:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        _load_handler(name)
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
    finally:
        gc.set_threshold(*before)
