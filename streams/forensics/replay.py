"""Replay: publish captured or stored events back into the pipeline, marked as replayed.

Use case: a new rule run over last week's events finds the incident it would have found live. Replay reads a
capture file (or a store selection) in time order and publishes each event to ``cadr.raw`` (or a named topic)
keyed by its workload, so every workload's events reach one partition in their original order. Each event is
decoded, marked ``replayed: true`` and re-encoded; times are kept, so windows and baselines see the original
timeline. The store sink checks replayed events against the table by event id (see streams/store/dedup.py):
replayed into the live pipeline they are not stored twice, replayed into a fresh pipeline they are stored.

Rate control is a token bucket (``rate`` events/s, 0 = as fast as Kafka takes them); progress goes to a
callback (the CLI draws a bar on stderr).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from schemas.codec import decode_event, encode
from schemas.errors import CadrError, RecordError

__all__ = ["ReplayError", "ReplayReport", "mark_replayed", "replay", "replay_sync"]


class ReplayError(CadrError):
    """Replay could not publish (Kafka unreachable, topic missing, bad input)."""


@dataclass
class ReplayReport:
    published: int = 0
    skipped: int = 0
    seconds: float = 0.0
    errors: list[str] | None = None

    @property
    def rate(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0


def mark_replayed(value: bytes) -> tuple[bytes, bytes]:
    """``(key, value)`` for one event: its workload key, and the event marked ``replayed``."""
    event = decode_event(value)
    event = msgspec.structs.replace(event, replayed=True)
    return event.workload.key().encode(), encode(event)


class _Bucket:
    """Token bucket: ``rate`` tokens per second, bursts of at most one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.last = time.monotonic()

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        while True:
            now = time.monotonic()
            self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= n or (n > self.rate and self.tokens >= self.rate):
                self.tokens -= n
                return
            await asyncio.sleep(max(0.001, (min(n, self.rate) - self.tokens) / self.rate))


async def replay(
    values: Iterable[bytes],
    *,
    bootstrap: str,
    topic: str,
    kafka_options: Mapping[str, Any] | None = None,
    rate: float = 0.0,
    total: int | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    batch: int = 500,
) -> ReplayReport:
    """Publish ``values`` (event JSON, time order) to ``topic``, marked replayed; returns what happened."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    report = ReplayReport(errors=[])
    bucket = _Bucket(rate)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        **dict(kafka_options or {}),
        acks="all",
        # Idempotence keeps each partition's order across internal retries: per-workload order is the contract.
        enable_idempotence=True,
        linger_ms=10,
        max_batch_size=1 << 20,
        compression_type="lz4",
        max_request_size=8 << 20,
    )
    started = time.monotonic()
    try:
        await producer.start()
    except KafkaError as exc:
        raise ReplayError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        pending: list[asyncio.Future[object]] = []
        chunk: list[bytes] = []

        async def flush() -> None:
            await bucket.take(len(chunk))
            for value in chunk:
                try:
                    key, marked = mark_replayed(value)
                except RecordError as exc:
                    report.skipped += 1
                    if report.errors is not None and len(report.errors) < 20:
                        report.errors.append(str(exc))
                    continue
                pending.append(await producer.send(topic, marked, key=key))
                report.published += 1
            chunk.clear()
            if len(pending) >= 10 * batch:
                await asyncio.gather(*pending)
                pending.clear()
            if progress is not None:
                progress(report.published + report.skipped, total)

        # Small chunks under a low rate, so the bucket paces evenly instead of in bursts.
        size = batch if rate <= 0 else max(1, min(batch, int(rate // 10)))
        for value in values:
            chunk.append(value)
            if len(chunk) >= size:
                await flush()
        if chunk:
            await flush()
        await asyncio.gather(*pending)
    except KafkaError as exc:
        raise ReplayError(f"publishing to {topic}: {exc}") from exc
    finally:
        await producer.stop()
    report.seconds = time.monotonic() - started
    return report


def replay_sync(values: Iterable[bytes], **kwargs: object) -> ReplayReport:
    """:func:`replay` for synchronous callers (the CLI)."""
    return asyncio.run(replay(values, **kwargs))  # type: ignore[arg-type]
