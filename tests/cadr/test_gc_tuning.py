"""The worker's cyclic-GC thresholds: raised for streaming, never lowered."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from cadr.runtime import GC_GEN0_THRESHOLD, relax_cyclic_gc


@pytest.fixture
def restore_thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


@pytest.mark.usefixtures("restore_thresholds")
def test_the_default_thresholds_are_raised() -> None:
    gc.set_threshold(700, 10, 10)
    relax_cyclic_gc()
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD, 20, 100)


@pytest.mark.usefixtures("restore_thresholds")
def test_higher_thresholds_set_by_an_operator_are_kept() -> None:
    gc.set_threshold(GC_GEN0_THRESHOLD * 2, 30, 200)
    relax_cyclic_gc()
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD * 2, 30, 200)


@pytest.mark.usefixtures("restore_thresholds")
def test_a_collector_switched_off_stays_off() -> None:
    gc.set_threshold(0)
    relax_cyclic_gc()
    assert gc.get_threshold()[0] == 0


@pytest.mark.usefixtures("restore_thresholds")
def test_freeze_moves_what_exists_out_of_the_collectors_sight() -> None:
    gc.unfreeze()
    try:
        relax_cyclic_gc(freeze=True)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
