"""The worker's producer knows every topic it writes to before any agent runs.

A Faust table with ``use_partitioner`` (the correlate stage's stories and links) picks the changelog
partition of each write *synchronously*, from the producer's cached metadata (``eager_partitioning``).
aiokafka's producer keeps metadata only for the topics it was asked about: a forced refresh (Faust forces
one after creating each changelog topic) asks for exactly those topics and drops the rest. A changelog
topic the producer had never sent to was then unknown, and the table write raised ``TypeError: 'NoneType'
object is not iterable`` inside aiokafka's ``_partition``: the correlate agent crash-looped from its first
alert and no story was told (the same run passed when no refresh came in between).

Two parts, both installed by :class:`streams.recovery.CadrFaustApp`:

- :func:`warm_producer` asks the producer for the partitions of every changelog and every cadr topic
  (waiting for them, so a missing topic fails the start loudly) at the end of each table recovery, before
  the stream partitions resume: from then on every metadata refresh includes them;
- :class:`CadrProducer` partitions a key over the partition count it learnt for the topic when a later
  refresh still comes back without it (a leader election can leave a topic out for a moment), the way
  Kafka's default partitioner would, instead of crashing the agent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from aiokafka.partitioner import murmur2
from faust.transport.drivers.aiokafka import Producer
from faust.types import TP

__all__ = ["CadrProducer", "warm_producer"]

log = logging.getLogger(__name__)


class CadrProducer(Producer):
    """Faust's aiokafka producer with partition counts remembered per topic (see the module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: topic -> partition count, learnt by :func:`warm_producer`
        self.partition_counts: dict[str, int] = {}

    def key_partition(self, topic: str, key: bytes) -> TP:
        producer = self._ensure_producer()
        known = producer.client.cluster.partitions_for_topic(topic)
        count = self.partition_counts.get(topic, 0)
        if known is None and count and key is not None:
            log.warning(
                "producer metadata lost %s for a moment: partitioning by its %d partitions", topic, count
            )
            return TP(topic, (murmur2(key) & 0x7FFFFFFF) % count)
        return super().key_partition(topic, key)


async def warm_producer(producer: Any, topics: Iterable[str]) -> dict[str, int]:
    """Have ``producer`` (Faust's) fetch and keep the partitions of ``topics``; returns their counts.

    Raises aiokafka's ``UnknownTopicOrPartitionError`` when a topic does not exist after the request
    timeout: a worker must not start with a topic it will write to missing."""
    client = producer._ensure_producer().client
    counts: dict[str, int] = {}
    for topic in sorted(set(topics)):
        partitions = await client._wait_on_metadata(topic)  # adds the topic to every later refresh
        counts[topic] = len(partitions)
    if isinstance(producer, CadrProducer):
        producer.partition_counts.update(counts)
    return counts
