"""The store stage at run time: consume events, alerts, incidents and profiles; insert; then commit.

Why not a Faust agent per topic? Faust's stream machinery costs three event-loop turns and two tasks per
message: measured here at ~13,000 messages/s per worker with ``stream.take`` doing nothing else — an order of
magnitude under what one sink worker must ingest. So the stage runs inside the Faust worker as a supervised
service (started and stopped with the app) that reads its topics with aiokafka in batches, in a consumer group
of its own (``<app_id>-store``). That also makes the commit rule explicit and simple:

    fetch a batch → insert it (executor thread; blocks, retries while the store is down) → commit its offsets

Up to ``INFLIGHT`` batches are inserted at once (one writer, client and thread each: the engine releases the
GIL, so two inserts use two cores) while commits stay in fetch order: a batch's offsets are committed once it
and every batch fetched before it are stored. Offsets are committed only after ClickHouse accepted the batch,
never before, and never on shutdown for a batch that was not stored (Faust's ``take`` acks its buffer in a ``finally``, which would commit a batch whose
insert was cancelled). Redelivery after a crash or rebalance is made harmless by :mod:`streams.store.dedup`.

The service also owns the embedded store: with a ``chdb://`` DSN it serves the local read-only query endpoint
(:mod:`streams.store.endpoint`) so that ``cadr query`` works while the worker runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from mode import Service

from schemas.settings import Settings
from streams.kafka_access import client_options
from streams.store.client import StoreAccess, parse_dsn
from streams.store.dedup import Coord
from streams.store.endpoint import QueryEndpoint
from streams.store.errors import StoreUnavailableError
from streams.store.limits import QueryLimits
from streams.store.sink import StoreWriter, WriteReport

__all__ = ["STORE_TOPICS", "StoreService", "StoreStats"]

log = logging.getLogger(__name__)

#: logical topics the store consumes (each maps to its table)
STORE_TOPICS = ("events", "alerts", "incidents", "profiles")

#: batches inserted concurrently by one service
INFLIGHT = 2


@dataclass
class StoreStats:
    """Counters a test or the CLI can read (``cadr_app.stages["store"].stats``)."""

    batches: int = 0
    received: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejected: int = 0
    commits: int = 0
    failed_commits: int = 0
    started: float = field(default_factory=time.monotonic)
    #: monotonic time the first non-empty batch was fetched (None before): the start of ingest for rates
    first_fetch: float | None = None
    per_topic: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, topic: str, report: WriteReport) -> None:
        with self._lock:
            self._add(topic, report)

    def _add(self, topic: str, report: WriteReport) -> None:
        self.batches += 1
        self.received += report.received
        self.inserted += report.inserted
        self.duplicates += report.duplicates
        self.rejected += report.rejected
        self.per_topic[topic] = self.per_topic.get(topic, 0) + report.inserted


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, service: StoreService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # Hand partitions over clean: finish and commit what is in flight before another owner takes them.
        await self.service.drain()
        self.service.writer_reset()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.service.writer_reset()


@dataclass
class _Slot:
    """One writer with its own client and thread."""

    writer: StoreWriter
    executor: ThreadPoolExecutor
    reset_pending: bool = False


class StoreService(Service):
    """Consume the store topics and write them to ClickHouse (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        topics: Sequence[str] = STORE_TOPICS,
        serve_queries: bool = True,
        inflight: int = INFLIGHT,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.logical_topics = list(topics)
        self.serve_queries = serve_queries
        self.inflight = max(1, inflight)
        self.stats = StoreStats()
        self._stop = threading.Event()
        self._slots: list[_Slot] = []
        self._next_slot = 0
        self._pending: deque[tuple[asyncio.Future[None], dict[TopicPartition, list[Any]]]] = deque()
        self._consumer: AIOKafkaConsumer | None = None
        self._endpoint: QueryEndpoint | None = None
        self._topic_kind = {settings.topic(t): t for t in self.logical_topics}
        self._stopped_unstored = False
        self._completing = asyncio.Lock()

    @property
    def group_id(self) -> str:
        return f"{self.settings.worker.app_id}-store"

    def writer_reset(self) -> None:
        for slot in self._slots:
            slot.reset_pending = True

    async def on_start(self) -> None:
        settings = self.settings
        self._stop.clear()
        loop = asyncio.get_running_loop()
        for i in range(self.inflight):
            writer = StoreWriter(
                settings.store_dsn,
                database=settings.store.database,
                consumer=self.group_id,
                retention_days=settings.store.retention_days,
                stop=self._stop,
                migrate=i == 0,
                access=StoreAccess.from_store_settings(settings.store),
            )
            slot = _Slot(writer, ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"cadr-store-{i}"))
            await loop.run_in_executor(slot.executor, writer.open)
            self._slots.append(slot)
        target = parse_dsn(settings.store_dsn)
        if self.serve_queries and target.embedded and target.path:
            self._endpoint = await loop.run_in_executor(None, self._start_endpoint)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka.bootstrap,
            **client_options(settings.kafka),
            group_id=self.group_id,
            client_id=f"{self.group_id}-{id(self):x}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 << 20,
            fetch_max_bytes=64 << 20,
            max_poll_records=settings.store.batch_size,
            max_poll_interval_ms=600_000,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            metadata_max_age_ms=5_000,
        )
        await self._consumer.start()
        self._consumer.subscribe(list(self._topic_kind), listener=_Rebalance(self))

    def _start_endpoint(self) -> QueryEndpoint | None:
        store = self.settings.store
        for port in (store.query_port, 0):
            try:
                return QueryEndpoint(
                    self.settings.store_dsn,
                    host=store.query_host,
                    port=port,
                    limits=QueryLimits.from_store_settings(store),
                ).start()
            except OSError as exc:
                log.info("query endpoint port %s unavailable (%s); trying a free port", port, exc)
        log.warning("no query endpoint: `cadr query` cannot reach this store while the worker runs")
        return None

    async def on_stop(self) -> None:
        self._stop.set()
        # In-flight inserts finish (or give up, when the store is down); finished ones are still committed.
        with contextlib.suppress(Exception):
            await self.drain()
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
        loop = asyncio.get_running_loop()
        if self._endpoint is not None:
            await loop.run_in_executor(None, self._endpoint.stop)
        for slot in self._slots:
            with contextlib.suppress(Exception):
                await loop.run_in_executor(slot.executor, slot.writer.close)
            slot.executor.shutdown(wait=False)

    @Service.task
    async def _consume(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        store = self.settings.store
        window_ms = max(1, int(store.flush_interval_s * 1000))
        while not self.should_stop and not self._stopped_unstored:
            try:
                batch = await self._fetch(consumer, store.batch_size, store.batch_bytes, window_ms)
            except KafkaError as exc:
                log.warning("store: fetch failed: %s", exc)
                await self.sleep(1.0)
                continue
            if not batch:
                await self.drain()  # idle: nothing should wait for a full pipeline to be committed
                continue
            if self.stats.first_fetch is None:
                self.stats.first_fetch = time.monotonic()
            self._submit(batch)
            while len(self._pending) >= self.inflight or (self._pending and self._pending[0][0].done()):
                await self._complete_oldest()

    async def _fetch(
        self, consumer: AIOKafkaConsumer, batch_size: int, batch_bytes: int, window_ms: int
    ) -> dict[TopicPartition, list[Any]]:
        # Up to batch_size records or batch_bytes of values: wait up to the flush window for the first, then
        # top up until the batch is full or the window (counted from the first record) is over.
        out: dict[TopicPartition, list[Any]] = {}
        # Small reads (aiokafka buffers whole fetches; a read is cheap) so the byte bound is checked often.
        step = min(batch_size, 1000)
        got = await consumer.getmany(timeout_ms=window_ms, max_records=step)
        count = size = 0
        deadline = time.monotonic() + window_ms / 1000
        while got:
            for tp, records in got.items():
                out.setdefault(tp, []).extend(records)
                count += len(records)
                size += sum(r.serialized_value_size for r in records)
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if count >= batch_size or size >= batch_bytes or remaining_ms <= 0 or self.should_stop:
                break
            got = await consumer.getmany(timeout_ms=remaining_ms, max_records=min(step, batch_size - count))
        return out

    def _submit(self, batch: dict[TopicPartition, list[Any]]) -> None:
        slot = self._slots[self._next_slot % len(self._slots)]
        self._next_slot += 1
        by_kind: dict[str, tuple[list[bytes], list[Coord]]] = {}
        for tp, records in batch.items():
            kind = self._topic_kind[tp.topic]
            payloads, coords = by_kind.setdefault(kind, ([], []))
            topic, partition = tp.topic, tp.partition
            for r in records:
                if r.value is not None:
                    # an events record may be an event batch (a JSON array): the writer keeps it whole
                    payloads.append(r.value)
                    coords.append(Coord(topic, partition, r.offset))
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(slot.executor, self._write, slot, by_kind)
        self._pending.append((future, batch))

    def _write(self, slot: _Slot, by_kind: dict[str, tuple[list[bytes], list[Coord]]]) -> None:
        # Runs on the slot's thread: a writer is only ever used by its own thread.
        writer = slot.writer
        if slot.reset_pending:
            slot.reset_pending = False
            writer.reset_horizons()
        for kind, (payloads, coords) in by_kind.items():
            if kind == "events":
                report = writer.write_events(payloads, coords)
            else:
                report = writer.write_records(kind, payloads)
            self.stats.add(kind, report)

    async def _complete_oldest(self) -> None:
        # The consume loop and a rebalance's drain() can both get here: one completes the oldest batch at a
        # time, or both would await the same future and the second would pop (and commit past) the next,
        # unfinished batch.
        async with self._completing:
            if self._pending and not self._stopped_unstored:
                await self._complete_oldest_locked()

    async def _complete_oldest_locked(self) -> None:
        future, batch = self._pending[0]
        try:
            await future
        except StoreUnavailableError:
            # Stopping while the store is down: this batch and every later one stay uncommitted (redelivered).
            self._stopped_unstored = True
            for other, _ in self._pending:
                other.cancel()
            self._pending.clear()
            return
        self._pending.popleft()
        assert self._consumer is not None
        await self._commit(self._consumer, batch)

    async def drain(self) -> None:
        """Wait for every in-flight batch and commit the stored ones, in order."""
        while self._pending and not self._stopped_unstored:
            await self._complete_oldest()

    async def _commit(self, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[Any]]) -> None:
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items() if records}
        try:
            await consumer.commit(offsets)
            self.stats.commits += 1
        except (CommitFailedError, KafkaError) as exc:
            # Stored but not committed: the next owner gets these again and drops them (dedup horizon).
            self.stats.failed_commits += 1
            log.warning("store: commit failed after a successful insert (will be deduplicated): %s", exc)
