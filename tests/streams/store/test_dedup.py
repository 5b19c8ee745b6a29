"""Dedup bookkeeping: intents per partition and which redelivered messages are suspect (no ClickHouse)."""

from __future__ import annotations

from streams.store.dedup import Coord, DedupGuard, PartitionRange, offset_ranges


def test_offset_ranges_per_partition() -> None:
    coords = [Coord("t", 1, 7), Coord("t", 0, 3), Coord("t", 1, 5), None, Coord("u", 0, 9)]
    assert offset_ranges(coords) == [
        PartitionRange("t", 0, 3, 3, 1),
        PartitionRange("t", 1, 5, 7, 2),
        PartitionRange("u", 0, 9, 9, 1),
    ]


def test_messages_up_to_the_horizon_are_suspect() -> None:
    guard = DedupGuard()
    guard.load({("t", 0): 100})
    coords: list[Coord | None] = [Coord("t", 0, 99), Coord("t", 0, 100), Coord("t", 0, 101), Coord("t", 1, 0)]
    assert guard.suspects(coords, [False] * 4) == [0, 1]


def test_replayed_events_are_always_suspect() -> None:
    guard = DedupGuard()
    guard.load({})
    assert guard.suspects([Coord("t", 0, 5), None], [True, True]) == [0, 1]
    assert guard.suspects([Coord("t", 0, 5), None], [False, False]) == []


def test_reset_forgets_horizons() -> None:
    guard = DedupGuard()
    guard.load({("t", 0): 10})
    assert guard.loaded
    guard.reset()
    assert not guard.loaded
    assert guard.horizon("t", 0) == -1
