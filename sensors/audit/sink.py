"""Where the audit intake puts what it accepted: Kafka (``cadr.raw`` / ``cadr.dlq``), or memory in tests.

:class:`KafkaSink` publishes a whole webhook batch as one Kafka record batch per partition
(:mod:`sensors.batching`, as the eBPF sensor's publisher does) with ``acks=all`` and returns only when the broker acknowledged
every record; anything else raises :class:`PublishError`, so the webhook answers 5xx and the
API server retries. There is no local spool on purpose: the API server's own retry buffer is the
spool, and a 200 must mean "stored in Kafka".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any, Protocol

from sensors.audit.errors import PublishError
from sensors.batching import Partitioner, by_partition, fold, send_partitions

__all__ = ["KafkaSink", "MemorySink", "Record", "Sink"]

log = logging.getLogger(__name__)

#: (key, value) of one Kafka record
Record = tuple[bytes, bytes]


class Sink(Protocol):
    """What the webhook and the tailer publish to."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, events: Sequence[Record], dead: Sequence[Record]) -> None:
        """Store ``events`` on the raw topic and ``dead`` on the DLQ; return only once both are stored."""
        ...


class MemorySink:
    """A sink that keeps records in lists (unit tests, ``cadr scan``)."""

    def __init__(self) -> None:
        self.events: list[Record] = []
        self.dead: list[Record] = []
        self.fail: Exception | None = None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def publish(self, events: Sequence[Record], dead: Sequence[Record]) -> None:
        if self.fail is not None:
            raise PublishError(str(self.fail)) from self.fail
        self.events.extend(events)
        self.dead.extend(dead)


class KafkaSink:
    """Publish to Kafka with acks=all, one record batch per partition per call."""

    def __init__(
        self,
        bootstrap: str,
        raw_topic: str,
        dlq_topic: str,
        *,
        compression: str = "lz4",
        timeout_s: float = 30.0,
        max_batch_bytes: int = 512 << 10,
        client_id: str = "cadr-audit",
        kafka_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        #: TLS/SASL options of the producer (streams.kafka_access.client_options)
        self.kafka_options = dict(kafka_options or {})
        self.raw_topic = raw_topic
        self.dlq_topic = dlq_topic
        self.compression = None if compression in ("", "none") else compression
        self.timeout_s = timeout_s
        self.max_batch_bytes = max_batch_bytes
        self.client_id = client_id
        self._producer: object | None = None
        self._lock = asyncio.Lock()
        self._partitions: dict[str, list[int]] = {}
        self._partitioner = Partitioner()

    async def start(self) -> None:
        """Connect now; a failure is logged, and the next publish tries again (and fails with 5xx)."""
        try:
            await self._ensure_producer()
        except PublishError as exc:
            log.warning("Kafka not reachable yet (%s); the webhook answers 503 until it is", exc)

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()  # type: ignore[attr-defined]

    async def _ensure_producer(self) -> object:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is not None:
                return self._producer
            from aiokafka import AIOKafkaProducer

            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                **self.kafka_options,
                client_id=self.client_id,
                acks="all",
                compression_type=self.compression,
                max_batch_size=self.max_batch_bytes,
                max_request_size=max(1 << 20, self.max_batch_bytes * 2),
                request_timeout_ms=int(self.timeout_s * 1000),
                linger_ms=0,
            )
            try:
                await asyncio.wait_for(producer.start(), self.timeout_s)
            except Exception as exc:
                await _quiet_stop(producer)
                raise PublishError(f"cannot connect to Kafka at {self.bootstrap}: {exc!r}") from exc
            self._producer = producer
            return producer

    async def publish(self, events: Sequence[Record], dead: Sequence[Record]) -> None:
        if not events and not dead:
            return
        producer = await self._ensure_producer()
        try:
            await asyncio.wait_for(self._publish(producer, events, dead), self.timeout_s)
        except PublishError:
            raise
        except Exception as exc:  # KafkaError, TimeoutError: the batch may be partly stored
            raise PublishError(f"Kafka did not acknowledge the batch: {exc!r}") from exc

    async def _publish(self, producer: object, events: Sequence[Record], dead: Sequence[Record]) -> None:
        futures: list[asyncio.Future[object]] = []
        for topic, records in ((self.raw_topic, events), (self.dlq_topic, dead)):
            if records:
                futures.extend(await self._send_topic(producer, topic, records))
        # acks=all: each future resolves when every in-sync replica has the batch
        await asyncio.gather(*futures)

    async def _send_topic(
        self, producer: object, topic: str, records: Sequence[Record]
    ) -> list[asyncio.Future[object]]:
        partitions = self._partitions.get(topic)
        if partitions is None:
            found = await producer.partitions_for(topic)  # type: ignore[attr-defined]
            if not found:
                raise PublishError(f"topic {topic} has no partitions (does it exist?)")
            partitions = sorted(found)
            self._partitions[topic] = partitions
        # The key (audit id) picks the partition (Kafka's default partitioner), so every stage of one request
        # stays in order. Events of one partition travel as JSON arrays (cadr's event-batch framing on
        # cadr.raw): the worker pays per Kafka record, not per event; dead letters travel one by one.
        folded = {
            partition: fold(
                part_recs,
                key=_key,
                value=_value,
                timestamp=_no_timestamp,
                max_events=_FOLD_EVENTS if topic == self.raw_topic else 1,
                max_bytes=_FOLD_BYTES,
                same_key=False,
            )
            for partition, part_recs in by_partition(records, _key, partitions, self._partitioner).items()
        }
        result = await send_partitions(producer, topic, folded)
        if result.too_large:
            size = len(result.too_large[0].value)
            raise PublishError(f"one record of {size} bytes does not fit a Kafka batch")
        if result.error is not None:
            raise PublishError(f"Kafka did not take the batch: {result.error!r}") from result.error
        return [future for future, _ in result.sent]


#: a folded record on cadr.raw holds at most this many events ...
_FOLD_EVENTS = 256
#: ... and this many bytes of them
_FOLD_BYTES = 512 << 10

_key = itemgetter(0)
_value = itemgetter(1)


def _no_timestamp(rec: Record) -> None:
    return None


async def _quiet_stop(producer: object) -> None:
    try:
        await producer.stop()  # type: ignore[attr-defined]
    except Exception:
        log.debug("stopping a producer that failed to start", exc_info=True)
