"""The consume -> deliver -> commit loop: one Kafka consumer group per destination.

Each destination reads ``cadr.incidents`` (or ``cadr.alerts``) in its own consumer
group with auto-commit off. A fetched batch is decoded, filtered and delivered; only
when every record of it is acknowledged by the destination (or stored on the
destination's dead-letter topic) are its offsets committed. So:

- a destination that is down holds its own group back (its lag grows) and nothing
  else: the records wait in Kafka, not in memory, and none is dropped;
- a forwarder killed at any point resumes from the last commit, sending again at most
  the batch that was in flight (duplicates carry id + revision);
- order per incident holds because incidents are keyed by id (one partition each)
  and one incident's records share a delivery lane.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from schemas.errors import RecordError
from schemas.settings import Settings
from schemas.topics import TopicSpec, dead_letter_specs
from streams.forward.base import Destination, Status
from streams.forward.config import DestinationConfig, ForwardConfig
from streams.forward.deadletter import DeadLetters
from streams.forward.delivery import Deliverer
from streams.forward.destinations import build_destination
from streams.forward.errors import DeliveryError
from streams.forward.metrics import DestinationMetrics, ForwardMetrics, serve_metrics
from streams.forward.payload import Item, decode_record, make_item, matches, sample_incident
from streams.forward.retry import Backoff
from streams.kafka_access import client_options

__all__ = ["DestinationRunner", "Forwarder", "TestResult", "send_test"]

log = logging.getLogger(__name__)

Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


class DestinationRunner:
    """Runs one destination: its consumer group, its sender, its delivery loop."""

    def __init__(
        self,
        settings: Settings,
        cfg: DestinationConfig,
        fcfg: ForwardConfig,
        metrics: DestinationMetrics,
        dead_letters: DeadLetters,
        *,
        destination: Destination | None = None,
    ) -> None:
        self.settings = settings
        self.cfg = cfg
        self.fcfg = fcfg
        self.metrics = metrics
        self.topic = settings.topic(cfg.records)
        self.dest = destination or build_destination(cfg, node=settings.node)
        self.dead_letters = dead_letters
        self.deliverer = Deliverer(self.dest, metrics, dead_letters.for_destination(cfg, self.topic))
        self.consumer: AIOKafkaConsumer | None = None
        self._committed: dict[TopicPartition, int] = {}
        #: the batch being delivered and the offsets to commit once it is
        self._in_flight: tuple[asyncio.Task[None], dict[TopicPartition, int]] | None = None

    def _consumer(self) -> AIOKafkaConsumer:
        session_ms = int(self.fcfg.session_timeout_s * 1000)
        return AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.settings.kafka.bootstrap,
            **client_options(self.settings.kafka),
            group_id=self.cfg.group_id,
            client_id=f"cadr-forward-{self.cfg.name}",
            enable_auto_commit=False,
            auto_offset_reset=self.cfg.start,
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(100, session_ms // 5),
            # Delivery to a destination that is down blocks the loop for as long as it is
            # down; the group must not evict us for that.
            max_poll_interval_ms=int(self.fcfg.max_poll_interval_s * 1000),
            rebalance_timeout_ms=max(session_ms * 3, 30_000),
            isolation_level="read_committed",
            max_partition_fetch_bytes=8 << 20,
        )

    async def run(self) -> None:
        """Forward until cancelled. Uncommitted work is simply sent again after a restart."""
        backoff = Backoff(self.cfg.retry)
        self.consumer = await self._start_consumer(backoff)
        lag_task = asyncio.create_task(self._lag_loop(), name=f"forward-lag-{self.cfg.name}")
        failures = 0
        try:
            while True:
                try:
                    await self._step()
                    failures = 0
                except (asyncio.CancelledError, KeyboardInterrupt):
                    raise
                except Exception as exc:
                    # A bug or an unexpected library error: rewind to the last commit and
                    # go again; nothing was committed for the batches in hand.
                    await self._drop_in_flight()
                    failures += 1
                    self.metrics.error(f"{type(exc).__name__}: {exc}")
                    log.exception("%s: forwarding step failed; rewinding to the last commit", self.cfg.name)
                    await asyncio.sleep(backoff.delay(failures))
                    with contextlib.suppress(Exception):
                        await self.consumer.seek_to_committed()
        finally:
            await self._drop_in_flight()
            lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await lag_task
            with contextlib.suppress(Exception):
                await self.consumer.stop()
            with contextlib.suppress(Exception):
                await self.dest.close()

    async def _start_consumer(self, backoff: Backoff) -> AIOKafkaConsumer:
        """Join the group, waiting (with backoff) for Kafka to be reachable."""
        attempt = 0
        while True:
            consumer = self._consumer()
            try:
                await consumer.start()
                return consumer
            except KafkaError as exc:
                attempt += 1
                with contextlib.suppress(Exception):
                    await consumer.stop()
                self.metrics.error(f"Kafka: {exc}")
                log.warning(
                    "%s: cannot reach Kafka at %s (%s); retrying",
                    self.cfg.name,
                    self.settings.kafka.bootstrap,
                    exc,
                )
                await asyncio.sleep(backoff.delay(attempt))

    async def _step(self) -> None:
        """Fetch and prepare the next batch while the previous one is being delivered.

        Decoding and shaping (CPU) overlap the previous batch's requests (I/O); a batch is
        sent only after the previous one is acknowledged and committed, so order and
        commit-after-ack hold as if the batches went one by one.
        """
        assert self.consumer is not None
        batch = await self._fetch()
        items = await self._prepare(batch) if batch else []
        if self._in_flight is not None:
            task, offsets = self._in_flight
            await task
            self._in_flight = None
            await self._commit(offsets)
        if not batch:
            return
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items() if records}
        if items:
            task = asyncio.create_task(self.deliverer.deliver(items), name=f"forward-deliver-{self.cfg.name}")
            self._in_flight = (task, offsets)
        else:
            await self._commit(offsets)

    async def _drop_in_flight(self) -> None:
        if self._in_flight is not None:
            task, _ = self._in_flight
            self._in_flight = None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _fetch(self) -> Batch:
        """Up to ``batch_size * concurrency`` records, waiting ``linger_s`` for a batch to fill."""
        assert self.consumer is not None
        limit = self.cfg.batch_size * self.cfg.concurrency
        batch: Batch = await self.consumer.getmany(timeout_ms=500, max_records=limit)
        count = sum(len(v) for v in batch.values())
        if not count:
            return batch
        deadline = time.monotonic() + self.cfg.linger_s
        while count < limit:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            more = await self.consumer.getmany(timeout_ms=int(remaining * 1000), max_records=limit - count)
            if not more:
                break
            for tp, records in more.items():
                batch.setdefault(tp, []).extend(records)
                count += len(records)
        return batch

    async def _prepare(self, batch: Batch) -> list[Item]:
        items: list[Item] = []
        for tp, records in batch.items():
            for rec in records:
                self.metrics.consumed += 1
                if rec.value is None:  # a tombstone on the compacted topic
                    self.metrics.skipped += 1
                    continue
                try:
                    record = decode_record(rec.value, self.cfg.records)
                except RecordError as exc:
                    await self.dead_letters.write(
                        self.cfg,
                        raw=rec.value,
                        key=rec.key,
                        reason=f"undecodable record: {exc}",
                        reply=None,
                        source={"topic": tp.topic, "partition": tp.partition, "offset": rec.offset},
                    )
                    self.metrics.dead_lettered += 1
                    continue
                if not matches(record, self.cfg.min_severity, self.cfg.filter):
                    self.metrics.skipped += 1
                    continue
                items.append(
                    make_item(record, self.cfg, raw=rec.value, partition=tp.partition, offset=rec.offset)
                )
        return items

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert self.consumer is not None
        try:
            await self.consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
        except (CommitFailedError, KafkaError) as exc:
            # The group rebalanced while we delivered: whoever owns these partitions now
            # starts from the previous commit and sends this batch again (duplicates, no loss).
            self.metrics.commit_failures += 1
            log.warning("%s: commit refused (%s); the batch will be sent again", self.cfg.name, exc)
            return
        self.metrics.commits += 1
        self._committed.update(offsets)

    async def _lag_loop(self, interval: float = 2.0) -> None:
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(KafkaError, OSError, AssertionError):
                await self.update_lag()

    async def update_lag(self) -> None:
        """Refresh ``metrics.lag_by_partition`` (end offset minus this group's commit)."""
        assert self.consumer is not None
        assigned = sorted(self.consumer.assignment(), key=lambda tp: tp.partition)
        if not assigned:
            self.metrics.lag_by_partition = {}
            return
        ends = await self.consumer.end_offsets(assigned)
        lag: dict[int, int] = {}
        for tp in assigned:
            committed = self._committed.get(tp)
            if committed is None:
                committed = await self.consumer.committed(tp)
                if committed is None:
                    committed = (await self.consumer.beginning_offsets([tp]))[tp]
                self._committed[tp] = committed
            lag[tp.partition] = max(0, ends[tp] - committed)
        self.metrics.lag_by_partition = lag


class Forwarder:
    """Every enabled destination of the config, run concurrently in one process."""

    def __init__(self, settings: Settings, config: ForwardConfig, *, only: Sequence[str] = ()) -> None:
        if not settings.kafka.bootstrap:
            raise DeliveryError("the forwarder needs Kafka: set kafka.bootstrap or pass --kafka")
        self.settings = settings
        self.config = config
        chosen = (
            [config.destination(n) for n in only] if only else [d for d in config.destinations if d.enabled]
        )
        if not chosen:
            raise DeliveryError("no forward destinations configured ([[forward.destinations]])")
        self.metrics = ForwardMetrics()
        self.dead_letters = DeadLetters(
            settings.kafka.bootstrap, kafka_options=client_options(settings.kafka)
        )
        self.runners = [
            DestinationRunner(
                settings, d, config, self.metrics.for_destination(d.name, d.type), self.dead_letters
            )
            for d in chosen
        ]
        self.metrics_runner: Any = None

    def dead_letter_specs(self) -> list[TopicSpec]:
        """The dead-letter topics of the chosen destinations, as ``cadr.topics.ensure_topics`` takes them."""
        return dead_letter_specs(
            [r.cfg.dead_letter_topic for r in self.runners],
            replication_factor=self.config.dead_letter_replication,
        )

    async def run(self) -> None:
        """Run until cancelled; a destination whose loop dies takes the process down. The dead-letter
        topics (:meth:`dead_letter_specs`) are created beforehand by the caller."""
        if self.config.metrics_port:
            self.metrics_runner = await serve_metrics(
                self.metrics, self.config.metrics_host, self.config.metrics_port
            )
        progress = asyncio.create_task(self._progress()) if self.config.log_interval_s > 0 else None
        try:
            async with asyncio.TaskGroup() as tg:
                for r in self.runners:
                    tg.create_task(r.run(), name=f"forward-{r.cfg.name}")
        finally:
            if progress is not None:
                progress.cancel()
            if self.metrics_runner is not None:
                await self.metrics_runner.cleanup()
            await self.dead_letters.close()

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(self.config.log_interval_s)
            for m in self.metrics.destinations.values():
                log.info(
                    "%s: sent=%d lag=%d failed=%d retried=%d dead_lettered=%d skipped=%d up=%s",
                    m.name,
                    m.sent,
                    m.lag,
                    m.failed,
                    m.retried,
                    m.dead_lettered,
                    m.skipped,
                    m.up,
                )


class TestResult:
    """What ``cadr forward --test`` reports."""

    __test__ = False  # not a pytest class

    def __init__(self, ok: bool, message: str, reply: Any = None, payload: Any = None) -> None:
        self.ok = ok
        self.message = message
        self.reply = reply
        self.payload = payload


async def send_test(cfg: DestinationConfig, *, node: str = "") -> TestResult:
    """Send one synthetic incident straight to the destination (no Kafka, one attempt)."""
    dest = build_destination(cfg, node=node)
    incident = sample_incident()
    item = make_item(incident, cfg)
    try:
        results = await dest.send([item])
    except DeliveryError as exc:
        return TestResult(False, f"not delivered: {exc}", exc.reply, item.payload)
    finally:
        await dest.close()
    if results and results[0].status is Status.REJECT:
        return TestResult(False, "rejected by the destination", results[0].reply, item.payload)
    if results and results[0].status in (Status.RETRY, Status.RESEND):
        return TestResult(False, "not delivered (destination asks to retry)", results[0].reply, item.payload)
    return TestResult(
        True, f"delivered test incident {item.dedup_id} to {dest.describe()}", None, item.payload
    )
