"""Where the audit intake puts what it accepted: Kafka (``cadr.raw`` / ``cadr.dlq``), or memory in tests.

:class:`KafkaSink` publishes a whole webhook batch as one Kafka record batch per partition
(``create_batch``/``send_batch``) with ``acks=all`` and returns only when the broker acknowledged
every record; anything else raises :class:`PublishError`, so the webhook answers 5xx and the
API server retries. There is no local spool on purpose: the API server's own retry buffer is the
spool, and a 200 must mean "stored in Kafka".
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Sequence
from typing import Protocol

from schemas.codec import join_batch
from sensors.audit.errors import PublishError

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
    ) -> None:
        self.bootstrap = bootstrap
        self.raw_topic = raw_topic
        self.dlq_topic = dlq_topic
        self.compression = None if compression in ("", "none") else compression
        self.timeout_s = timeout_s
        self.max_batch_bytes = max_batch_bytes
        self.client_id = client_id
        self._producer: object | None = None
        self._lock = asyncio.Lock()
        self._partitions: dict[str, list[int]] = {}

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
        by_partition: dict[int, list[Record]] = {}
        n = len(partitions)
        for rec in records:
            # The key (audit id) picks the partition, so every stage of one request stays in order.
            by_partition.setdefault(partitions[zlib.crc32(rec[0]) % n], []).append(rec)
        futures = []
        for partition, part_recs in by_partition.items():
            # events of one partition travel as JSON arrays (cadr's event-batch framing on
            # cadr.raw): the worker pays per Kafka record, not per event
            recs = _fold(part_recs) if topic == self.raw_topic else list(part_recs)
            batch = producer.create_batch()  # type: ignore[attr-defined]
            for key, value in recs:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    futures.append(await producer.send_batch(batch, topic, partition=partition))  # type: ignore[attr-defined]
                    batch = producer.create_batch()  # type: ignore[attr-defined]
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        raise PublishError(f"one record of {len(value)} bytes does not fit a Kafka batch")
            if batch.record_count():
                futures.append(await producer.send_batch(batch, topic, partition=partition))  # type: ignore[attr-defined]
        return futures


_FOLD_EVENTS = 256
_FOLD_BYTES = 512 << 10


def _fold(records: Sequence[Record]) -> list[Record]:
    """Runs of up to 256 events (512 KiB) become one record holding a JSON array, in order."""
    out: list[Record] = []
    run: list[Record] = []
    size = 0
    for rec in records:
        if run and (len(run) >= _FOLD_EVENTS or size + len(rec[1]) > _FOLD_BYTES):
            out.append(_joined(run))
            run, size = [], 0
        run.append(rec)
        size += len(rec[1])
    if run:
        out.append(_joined(run))
    return out


def _joined(run: list[Record]) -> Record:
    if len(run) == 1:
        return run[0]
    return (run[0][0], join_batch([v for _, v in run]))


async def _quiet_stop(producer: object) -> None:
    try:
        await producer.stop()  # type: ignore[attr-defined]
    except Exception:
        log.debug("stopping a producer that failed to start", exc_info=True)
