"""Exactly-once rows from at-least-once delivery: which messages of a batch may already be in the store.

The sink commits Kafka offsets only after ClickHouse accepted the batch, so a crash (SIGKILL) between insert
and commit, a lost insert response, or a rebalance redelivers messages that may already be stored — regrouped
into batches of other sizes. Insert-deduplication tokens cannot see through regrouping; checking every batch
against the table would cost a query per batch forever. Instead:

1. *Intents.* Before inserting, the sink records per Kafka partition the offset range it is about to write
   (``sink_log``, a write-ahead note). So the highest recorded offset of a partition bounds everything any
   previous owner of that partition may have stored.
2. *Horizon.* When a partition is (re)assigned, that bound is read once: messages at or below it are
   *suspect*, later ones are new by construction (no one ever attempted them).
3. *Check.* Suspect events (and every replayed event, which is suspect by nature) are looked up by
   ``event_id`` within their time range — exact even if a previous insert landed partly, as one spanning two
   daily partitions can — and the ones found are dropped. A failed insert makes its whole batch suspect for
   the retry (the server may have stored it before the connection broke).

A zombie writer (an old owner still inserting after a rebalance) can race the check; ``events`` is a
ReplacingMergeTree keyed on ``event_id`` (last in the sorting key), so such a duplicate folds away on merge.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Coord", "DedupGuard", "PartitionRange", "offset_ranges"]


@dataclass(frozen=True, slots=True)
class Coord:
    """Where a message came from."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class PartitionRange:
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    rows: int


def offset_ranges(coords: Iterable[Coord | None]) -> list[PartitionRange]:
    """Per-partition offset ranges of a batch (the intents to record before inserting it)."""
    spans: dict[tuple[str, int], list[int]] = {}
    for c in coords:
        if c is None:
            continue
        span = spans.get((c.topic, c.partition))
        if span is None:
            spans[(c.topic, c.partition)] = [c.offset, c.offset, 1]
        else:
            span[0] = min(span[0], c.offset)
            span[1] = max(span[1], c.offset)
            span[2] += 1
    return [PartitionRange(t, p, lo, hi, n) for (t, p), (lo, hi, n) in sorted(spans.items())]


class DedupGuard:
    """Per-partition horizons: the highest offset a previous writer may have stored."""

    def __init__(self) -> None:
        self._horizons: dict[tuple[str, int], int] = {}
        self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    def reset(self) -> None:
        """Forget the horizons (partitions were revoked or assigned: another writer may have written)."""
        self._horizons.clear()
        self._loaded = False

    def load(self, horizons: dict[tuple[str, int], int]) -> None:
        """Install horizons read from ``sink_log`` (partitions absent there have none: nothing is suspect)."""
        self._horizons = dict(horizons)
        self._loaded = True

    def horizon(self, topic: str, partition: int) -> int:
        return self._horizons.get((topic, partition), -1)

    def suspects(self, coords: Sequence[Coord | None], replayed: Sequence[bool]) -> list[int]:
        """Indices of the batch that may already be stored."""
        out: list[int] = []
        horizons = self._horizons
        for i, (c, r) in enumerate(zip(coords, replayed, strict=True)):
            if r or (c is not None and c.offset <= horizons.get((c.topic, c.partition), -1)):
                out.append(i)
        return out
