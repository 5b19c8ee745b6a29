"""The sensors' Kafka publisher: batched, compressed, keyed, and never losing events silently.

::

    async with Publisher(bootstrap, "cadr.raw", spool_dir) as pub:
        await pub.publish(event)              # key = the event's workload key
        await pub.publish(raw_bytes, key=b"k")
    pub.counters()                            # published, acked, spooled, spool_dropped ...

Records are cut into *units* (up to ``batch_events`` records or ``linger_s`` old), each
numbered in publish order. One unit is in flight at a time, sent as one compressed batch
per partition; the next unit waits for its acknowledgement. That is what keeps order per
key across an outage: when a unit fails (Kafka unreachable), it goes to the on-disk
:class:`~sensors.spool.Spool` under its own number, every later unit goes to the spool
behind it, and sending resumes with the lowest-numbered unit (spool or memory) once a
probe succeeds. Units also spill to the spool when more than ``max_memory_events`` wait
in memory. A full spool drops its oldest segments and counts them (``spool_dropped``).
Delivery is at-least-once: a unit whose acknowledgement was lost in the outage is sent
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import msgspec

from schemas.records import Event
from sensors.batching import Partitioner, by_partition, fold, send_partitions
from sensors.spool import Record, Spool

__all__ = ["Publisher", "PublisherError", "encode_event"]

log = logging.getLogger(__name__)

_ENCODER = msgspec.json.Encoder()


def encode_event(event: Event) -> bytes:
    """JSON bytes of an event, ``schema_version`` included (omit_defaults would drop it)."""
    body = _ENCODER.encode(event)
    return b'{"schema_version":%d,' % event.schema_version + body[1:]


class PublisherError(Exception):
    """Raised by a unit send when Kafka did not take it (internal: triggers spooling)."""


@dataclass
class _Unit:
    seq: int
    records: list[Record]
    from_spool: bool = False


ProducerFactory = Callable[..., Any]


class Publisher:
    """Batched aiokafka producer with an ordered on-disk spool."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        spool_dir: str,
        *,
        spool_max_bytes: int = 512 << 20,
        compression: str | None = "lz4",
        batch_events: int = 5000,
        linger_s: float = 0.05,
        max_memory_events: int = 200_000,
        request_timeout_s: float = 5.0,
        retry_backoff_s: float = 0.5,
        max_backoff_s: float = 5.0,
        client_id: str = "cadr-sensor",
        producer_factory: ProducerFactory | None = None,
        group_events: int = 256,
        group_bytes: int = 512 << 10,
        kafka_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        #: TLS/SASL options of the producer (streams.kafka_access.client_options)
        self.kafka_options = dict(kafka_options or {})
        self.topic = topic
        self.spool = Spool(spool_dir, spool_max_bytes)
        self.compression = compression or None
        self.batch_events = batch_events
        self.linger_s = linger_s
        self.max_memory_events = max_memory_events
        self.request_timeout_s = request_timeout_s
        self.retry_backoff_s = retry_backoff_s
        self.max_backoff_s = max_backoff_s
        self.client_id = client_id
        #: events of one workload folded into one Kafka record (a JSON array); 1 = no folding
        self.group_events = group_events
        self.group_bytes = group_bytes
        self._factory = producer_factory
        self._producer: Any = None
        self._partitioner: Partitioner | None = None
        # Spool sequence numbers continue after what an earlier run left behind.
        self._next_seq = (self.spool.last_seq() or 0) + 1
        self._pending: list[Record] = []
        self._pending_since = 0.0
        self._units: deque[_Unit] = deque()
        self._memory_events = 0
        self._up = False
        self._backoff = retry_backoff_s
        self._next_probe = 0.0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._runner: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.published = 0
        self.acked = 0
        self.spooled = 0
        self.send_failures = 0
        self.dropped_memory = 0
        self.last_error = ""

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the background sender (Kafka may still be down: events then spool)."""
        if self._runner is None:
            await self._connect()
            self._runner = asyncio.create_task(self._run(), name="cadr-publisher")

    async def close(self, timeout_s: float = 10.0) -> None:
        """Send what is buffered if Kafka is up (for at most ``timeout_s``), spool the rest."""
        self._closing = True
        self._wakeup.set()
        if self._runner is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._runner), timeout_s)
            except TimeoutError:
                self._runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._runner
            self._runner = None
        # Whatever is still in memory goes to disk for the next run.
        self._cut(force=True)
        while self._units:
            await self._spill(self._units.popleft())
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._producer.stop(), 5.0)
            self._producer = None

    # -- publishing ---------------------------------------------------------------------

    def publish_nowait(
        self, value: Event | bytes, key: bytes | str | None = None, timestamp_ms: int | None = None
    ) -> None:
        """Queue one record (never blocks; memory is bounded by spilling to the spool)."""
        if isinstance(value, Event):
            if key is None:
                key = value.workload.key()
            if timestamp_ms is None:
                timestamp_ms = value.time // 1_000_000
            value = encode_event(value)
        if isinstance(key, str):
            key = key.encode()
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(
            (key, value, timestamp_ms if timestamp_ms is not None else time.time_ns() // 1_000_000)
        )
        self.published += 1
        if len(self._pending) >= self.batch_events:
            self._wakeup.set()

    async def publish(
        self, value: Event | bytes, key: bytes | str | None = None, timestamp_ms: int | None = None
    ) -> None:
        self.publish_nowait(value, key, timestamp_ms)
        if len(self._pending) >= self.batch_events:
            await asyncio.sleep(0)

    async def publish_many(self, items: Iterable[tuple[bytes | None, bytes, int]]) -> None:
        """Queue pre-encoded (key, value, timestamp_ms) records."""
        if not self._pending:
            self._pending_since = time.monotonic()
        before = len(self._pending)
        self._pending.extend(items)
        self.published += len(self._pending) - before
        if len(self._pending) >= self.batch_events:
            self._wakeup.set()
            await asyncio.sleep(0)

    async def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything published so far is acknowledged or spooled-and-drained;
        False on timeout (e.g. Kafka still down)."""
        deadline = time.monotonic() + timeout_s
        self._pending_since = 0.0  # make the current pending unit due
        self._wakeup.set()
        while time.monotonic() < deadline:
            if not self._pending and not self._units and not len(self.spool) and self._idle.is_set():
                return True
            self._wakeup.set()
            await asyncio.sleep(0.01)
        return False

    def counters(self) -> dict[str, int | str | bool]:
        return {
            "published": self.published,
            "acked": self.acked,
            "spooled": self.spooled,
            "spool_dropped": self.spool.dropped,
            "spool_segments": len(self.spool),
            "spool_bytes": self.spool.bytes,
            "memory_events": self._memory_events + len(self._pending),
            "send_failures": self.send_failures,
            "kafka_up": self._up,
            "last_error": self.last_error,
        }

    # -- Kafka --------------------------------------------------------------------------

    def _make_producer(self) -> Any:
        if self._factory is not None:
            return self._factory(bootstrap_servers=self.bootstrap, **self.kafka_options)
        from aiokafka import AIOKafkaProducer

        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            **self.kafka_options,
            client_id=self.client_id,
            compression_type=self.compression,
            acks="all",
            linger_ms=0,
            max_batch_size=1 << 20,
            max_request_size=4 << 20,
            request_timeout_ms=int(self.request_timeout_s * 1000),
            retry_backoff_ms=100,
        )

    async def _connect(self) -> bool:
        if self._producer is not None:
            return True
        producer = self._make_producer()
        try:
            await asyncio.wait_for(producer.start(), self.request_timeout_s + 1)
        except Exception as exc:  # unreachable, unknown topic, auth ... all mean "spool"
            self.last_error = f"connect: {exc!r}"
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 2.0)
            return False
        self._producer = producer
        if self._partitioner is None:
            self._partitioner = Partitioner()
        self._up = True
        return True

    async def _send(self, unit: _Unit) -> list[Record]:
        """Send a unit; returns the records Kafka did not take (in order)."""
        if not await self._connect():
            return unit.records
        producer = self._producer
        try:
            parts = sorted(
                await asyncio.wait_for(producer.partitions_for(self.topic), self.request_timeout_s)
            )
        except Exception as exc:
            self.last_error = f"metadata: {exc!r}"
            return unit.records
        assert self._partitioner is not None
        folded = {
            part: fold(
                recs,
                key=_key,
                value=_value,
                timestamp=_timestamp,
                max_events=self.group_events,
                max_bytes=self.group_bytes,
                same_key=True,
            )
            for part, recs in by_partition(unit.records, _key, parts, self._partitioner).items()
        }
        result = await send_partitions(producer, self.topic, folded)
        for rec in result.too_large:
            log.error("record of %d bytes is larger than a Kafka batch; dropped", len(rec.value))
            self.dropped_memory += len(rec.members)
        if result.error is not None:
            self.last_error = f"send: {result.error!r}"
        futures, failed = result.sent, result.unsent
        for fut, recs in futures:
            try:
                await asyncio.wait_for(fut, self.request_timeout_s * 2)
            except Exception as exc:
                self.last_error = f"send: {exc!r}"
                failed.extend(recs)
            else:
                self.acked += len(recs)
        if failed:
            # keep publish order within the failed subset (each key stays in one partition)
            order = {id(r): i for i, r in enumerate(unit.records)}
            failed.sort(key=lambda r: order[id(r)])
        return failed

    # -- the sender loop ----------------------------------------------------------------

    def _cut(self, force: bool = False) -> None:
        """Turn pending records into numbered units (full ones, or all when due)."""
        while len(self._pending) >= self.batch_events:
            self._add_unit(self._pending[: self.batch_events])
            self._pending = self._pending[self.batch_events :]
        if self._pending and (force or time.monotonic() - self._pending_since >= self.linger_s):
            self._add_unit(self._pending)
            self._pending = []

    def _add_unit(self, records: list[Record]) -> None:
        self._units.append(_Unit(self._next_seq, records))
        self._next_seq += 1
        self._memory_events += len(records)

    async def _spill(self, unit: _Unit) -> None:
        if not unit.from_spool:
            self._memory_events -= len(unit.records)
        await asyncio.to_thread(self.spool.append, unit.seq, unit.records)
        self.spooled += len(unit.records)

    def _next_unit(self) -> _Unit | None:
        """The lowest-numbered unit, from memory or the spool."""
        head = self.spool.head_seq()
        if self._units and (head is None or self._units[0].seq < head):
            return self._units.popleft()
        if head is not None:
            return _Unit(head, [], from_spool=True)
        return None

    async def _run(self) -> None:
        inflight: asyncio.Task[list[Record]] | None = None
        current: _Unit | None = None
        while True:
            self._cut(force=self._closing)
            now = time.monotonic()
            # Kafka down: memory units go to disk rather than piling up.
            if self._units and (not self._up or self._memory_events > self.max_memory_events):
                while self._units:
                    await self._spill(self._units.popleft())
            if inflight is None and (self._up or now >= self._next_probe):
                current = self._next_unit()
                if current is not None:
                    if current.from_spool:
                        current.records = await asyncio.to_thread(self.spool.read, current.seq)
                    self._idle.clear()
                    inflight = asyncio.create_task(self._send(current))
            if inflight is None:
                if self._closing and not self._units and not self._pending and not len(self.spool):
                    self._idle.set()
                    return
                if self._closing and not self._up:
                    return
                self._idle.set()
            wait_s = self.linger_s if self._up else max(0.01, min(self.linger_s, self._next_probe - now))
            waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._wakeup.wait())}
            if inflight is not None:
                waiters.add(inflight)
            _done, _ = await asyncio.wait(waiters, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                if w is not inflight and not w.done():
                    w.cancel()
            self._wakeup.clear()
            if inflight is not None and inflight.done():
                assert current is not None
                try:
                    failed = inflight.result()
                except Exception as exc:  # a bug in _send must not lose the unit
                    log.exception("publisher send failed")
                    self.last_error = repr(exc)
                    failed = current.records
                inflight = None
                await self._finish(current, failed)
                current = None
                if self._closing and not self._up:
                    return

    async def _finish(self, unit: _Unit, failed: list[Record]) -> None:
        if not failed:
            if unit.from_spool:
                self.spool.remove(unit.seq)
            else:
                self._memory_events -= len(unit.records)
            if not self._up:
                log.info("Kafka is back; draining %d spooled events", self.spool.events)
            self._up = True
            self._backoff = self.retry_backoff_s
            return
        self.send_failures += 1
        if self._up:
            log.warning("Kafka unreachable (%s); spooling to %s", self.last_error, self.spool.dir)
        self._up = False
        self._next_probe = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.max_backoff_s)
        if unit.from_spool:
            if len(failed) != len(unit.records):
                # part went through: keep only the rest, under the same number
                self.spool.remove(unit.seq)
                await asyncio.to_thread(self.spool.append, unit.seq, failed)
        else:
            self._memory_events -= len(unit.records)
            await asyncio.to_thread(self.spool.append, unit.seq, failed)
            self.spooled += len(failed)


# C-level accessors of a spool Record (key, value, timestamp): the fold runs once per published event
_key = itemgetter(0)
_value = itemgetter(1)
_timestamp = itemgetter(2)
