"""Helpers of the forwarder's Kafka tests: settings, producing and reading topics, running a Forwarder."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from cadr.kafka_local import LocalKafka
from cadr.topics import ensure_topics
from schemas.codec import encode
from schemas.records import Incident
from schemas.settings import Settings
from streams.forward.consumer import Forwarder
from streams.forward.parse import parse_forward_config
from tests.streams.forward.servers import HecServer

__all__ = [
    "FAST",
    "assert_complete_and_ordered",
    "committed",
    "end_offsets",
    "forward_config",
    "hec_ids",
    "produce",
    "read_topic",
    "running",
    "settings_for",
    "wait_for",
]

FAST = {"initial_backoff_s": 0.05, "max_backoff_s": 0.5}


def settings_for(broker: LocalKafka, prefix: str) -> Settings:
    s = Settings()
    s.kafka.bootstrap = broker.bootstrap
    s.kafka.topic_prefix = prefix
    s.node = "node-1"
    return s


async def produce(bootstrap: str, topic: str, incidents: list[Incident | bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        futures = []
        for inc in incidents:
            if isinstance(inc, bytes):
                futures.append(await producer.send(topic, key=b"garbage", value=inc))
            else:
                futures.append(await producer.send(topic, key=inc.incident_id.encode(), value=encode(inc)))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, count: int, timeout: float = 60) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                out.extend(records)
    finally:
        await consumer.stop()
    return out


async def committed(bootstrap: str, group: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items()}


async def end_offsets(consumer: AIOKafkaConsumer, topic: str) -> dict[int, int]:
    parts = consumer.partitions_for_topic(topic) or set()
    ends = await consumer.end_offsets([TopicPartition(topic, p) for p in parts])
    return {tp.partition: o for tp, o in ends.items()}


async def wait_for(cond: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(forwarder: Forwarder) -> AsyncIterator[Forwarder]:
    # as `cadr forward` does before it runs the forwarder
    await ensure_topics(forwarder.settings.kafka.bootstrap, forwarder.dead_letter_specs())
    task = asyncio.create_task(forwarder.run())
    try:
        yield forwarder
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def forward_config(prefix: str, *destinations: dict[str, Any]) -> Any:
    raw = {
        "group_prefix": prefix + "fw.",
        "session_timeout_s": 3,
        "log_interval_s": 0,
        "destinations": [{"retry": FAST, "linger_s": 0.02, **d} for d in destinations],
    }
    return parse_forward_config(raw, topic_prefix=prefix)


def hec_ids(hec: HecServer) -> list[str]:
    return [f"{e['fields']['incident_id']}:{e['fields']['revision']}" for e in hec.events]


def assert_complete_and_ordered(ids: list[str], expected: set[str]) -> None:
    assert set(ids) == expected, (
        f"missing {sorted(expected - set(ids))[:5]} extra {sorted(set(ids) - expected)[:5]}"
    )
    last: dict[str, int] = {}
    for dedup in dict.fromkeys(ids):
        key, rev = dedup.rsplit(":", 1)
        assert int(rev) > last.get(key, 0), f"{dedup} arrived after revision {last.get(key)}"
        last[key] = int(rev)
