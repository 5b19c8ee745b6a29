"""The sensors' one way of putting records on a Kafka topic: partition, fold, pack, send.

Both sensors publish through it: the eBPF/host :class:`~sensors.publisher.Publisher` and the audit
intake's :class:`~sensors.audit.sink.KafkaSink`.

1. **Partition** with Kafka's default partitioner (:class:`Partitioner`: murmur2 of the key, as the Java
   client, Faust and :func:`streams.profiles.workload_partition` compute it), so a key lands where any
   other Kafka producer would put it, and every record of a key stays in one partition, in order.
2. **Fold** runs of records into one Kafka record holding a JSON array of their values (cadr's event-batch
   framing, :func:`schemas.codec.join_batch`): stream stages pay per Kafka record, not per event.
   :func:`fold` takes runs of one key (the eBPF sensor: one workload per record) or runs of whatever
   comes (the audit intake: its keys are request ids, one or two events each).
3. **Pack and send** each partition's folded records as producer record batches
   (``create_batch``/``send_batch``: one compressed batch per partition instead of per-record
   bookkeeping), :func:`send_partitions`, which returns the acknowledgement futures with the records each
   one covers, and what it could not send.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from schemas.codec import join_batch

__all__ = ["Folded", "Partitioner", "SendResult", "by_partition", "fold", "send_partitions"]

M = TypeVar("M")
R = TypeVar("R")


@dataclass(slots=True)
class Folded(Generic[M]):
    """One Kafka record to send and the records (``members``) it carries."""

    key: bytes | None
    value: bytes
    #: record timestamp in ms (None: the producer's clock)
    timestamp: int | None
    members: list[M]


class Partitioner:
    """Kafka's default partitioner (murmur2 of the key), cached per key and partition count: the same keys
    come back all the time, and murmur2 in Python is not free. (Records without a key all go to the one
    partition chosen at random for the first of them.)"""

    def __init__(self, cache_size: int = 100_000) -> None:
        from aiokafka.partitioner import DefaultPartitioner

        self._partitioner = DefaultPartitioner()
        self._cache: dict[tuple[bytes | None, int], int] = {}
        self._cache_size = cache_size

    def __call__(self, key: bytes | None, partitions: list[int]) -> int:
        n = len(partitions)
        found = self._cache.get((key, n))
        if found is None:
            if len(self._cache) > self._cache_size:
                self._cache.clear()
            found = self._cache[(key, n)] = self._partitioner(key, partitions, partitions)
        return found


def by_partition(
    records: Iterable[R], key: Callable[[R], bytes | None], partitions: list[int], partitioner: Partitioner
) -> dict[int, list[R]]:
    """``records`` grouped by the partition of their key, each group in the order given."""
    out: dict[int, list[R]] = {}
    for rec in records:
        out.setdefault(partitioner(key(rec), partitions), []).append(rec)
    return out


def fold(
    records: Sequence[M],
    *,
    key: Callable[[M], bytes | None],
    value: Callable[[M], bytes],
    timestamp: Callable[[M], int | None],
    max_events: int,
    max_bytes: int,
    same_key: bool,
) -> list[Folded[M]]:
    """Runs of up to ``max_events`` records and ``max_bytes`` of values, each as one :class:`Folded` record
    (a JSON array of the values; a run of one keeps its value as it is), in order.

    ``same_key``: a run holds records of one key (runs of different keys interleave as the records do; the
    folded record is placed where its run began); otherwise a run is consecutive records of any key, and
    the folded record takes the first one's key. ``max_events <= 1`` sends every record on its own."""
    if max_events <= 1:
        return [Folded(key(r), value(r), timestamp(r), [r]) for r in records]
    runs: list[tuple[list[M], list[int]]] = []  # members, [size]
    open_run: dict[bytes | None, int] = {}  # key -> index of its open run (same_key), else the last run
    for rec in records:
        k = key(rec) if same_key else None
        size = len(value(rec))
        i = open_run.get(k)
        if i is not None:
            members, total = runs[i]
            if len(members) < max_events and total[0] + size <= max_bytes:
                members.append(rec)
                total[0] += size
                continue
        open_run[k] = len(runs)
        runs.append(([rec], [size]))
    out = []
    for members, _ in runs:
        first = members[0]
        joined = value(first) if len(members) == 1 else join_batch([value(m) for m in members])
        out.append(Folded(key(first), joined, timestamp(first), members))
    return out


@dataclass
class SendResult(Generic[M]):
    """What :func:`send_partitions` did."""

    #: producer batches in flight: each future resolves when Kafka acknowledged the members listed with it
    sent: list[tuple[asyncio.Future[Any], list[M]]] = field(default_factory=list)
    #: members not sent because a send raised: of each failing partition, its rest from the failing batch on
    unsent: list[M] = field(default_factory=list)
    #: records larger than a whole producer batch (never sent)
    too_large: list[Folded[M]] = field(default_factory=list)
    #: the last exception a send raised
    error: BaseException | None = None


async def send_partitions(
    producer: Any, topic: str, folded: Mapping[int, Sequence[Folded[M]]]
) -> SendResult[M]:
    """Pack each partition's records into producer record batches and send them, in order.

    A send that raises leaves that partition's batch and the rest of its records unsent (in order, in
    :attr:`SendResult.unsent`); the other partitions are still sent. The caller awaits the futures
    (``acks`` decide what their resolution means) and decides what an unsent record becomes (spooled,
    refused)."""
    result: SendResult[M] = SendResult()
    for partition, records in folded.items():
        batch = producer.create_batch()
        in_batch: list[M] = []
        i = 0
        try:
            while i < len(records):
                rec = records[i]
                if batch.append(key=rec.key, value=rec.value, timestamp=rec.timestamp) is not None:
                    in_batch.extend(rec.members)
                    i += 1
                    continue
                if not in_batch:  # an empty batch refused it: no batch ever will
                    result.too_large.append(rec)
                    i += 1
                    continue
                result.sent.append((await producer.send_batch(batch, topic, partition=partition), in_batch))
                batch, in_batch = producer.create_batch(), []
            if in_batch:
                result.sent.append((await producer.send_batch(batch, topic, partition=partition), in_batch))
                in_batch = []
        except Exception as exc:
            result.error = exc
            result.unsent.extend(in_batch)
            for rec in records[i:]:
                result.unsent.extend(rec.members)
    return result
