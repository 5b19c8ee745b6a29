"""The local Apache Kafka (deploy/kafka + cadr.kafka_local) and the cadr topics, against a real broker.

Covers what the rest of cadr relies on: the broker starts and serves metadata; ensure_topics makes the six
pipeline topics of docs/architecture.md with the right configs; aiokafka round-trips lz4 and zstd batches; a Faust agent with a
changelogged table consumes one topic and produces to another; and a broker stopped, killed or paused comes
back on the same data dir and port with its messages.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faust
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from cadr.kafka_local import KafkaStartError, LocalKafka, find_free_port, probe_metadata
from cadr.topics import TopicError, ensure_topics
from schemas.topics import (
    COMPACTED,
    LOGICAL_TOPICS,
    TOPIC_NAMES,
    TopicSpec,
    dead_letter_specs,
    edits_spec,
    forward_dead_letter_topic,
    topic_names,
    topic_specs,
)

pytestmark = [pytest.mark.kafka]

# Record batch attribute bits 0-2 (Kafka message format v2).
CODEC_IDS = {"lz4": 3, "zstd": 4}


# -- helpers -------------------------------------------------------------------------------------------------


async def create_topics(bootstrap: str, *names: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
        assert all(err[1] == 0 for err in response.topic_errors), response
    finally:
        await admin.close()


async def describe_topic_configs(bootstrap: str, names: list[str]) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
        partitions = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}
    finally:
        await admin.close()
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            assert resource["error_code"] == 0, resource
            entries = {e["config_names"]: e["config_value"] for e in resource["config_entries"]}
            entries["_partitions"] = str(partitions[resource["resource_name"]])
            configs[resource["resource_name"]] = entries
    return configs


async def produce(bootstrap: str, topic: str, values: list[bytes], **producer_kwargs: Any) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **producer_kwargs)
    await producer.start()
    try:
        batch = [await producer.send(topic, value=v, key=str(i % 7).encode()) for i, v in enumerate(values)]
        await asyncio.gather(*batch)
    finally:
        await producer.stop()


async def consume(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list[Any]:
    """Read ``count`` records of ``topic`` from the beginning (no group), bounded by ``timeout``."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                records.extend(messages)
    finally:
        await consumer.stop()
    return records


def first_batch_codec(segment: Path) -> int:
    """Compression codec of the first record batch in a log segment (v2 batch header, attributes bits 0-2)."""
    header = segment.read_bytes()[:23]
    (magic,) = struct.unpack_from(">b", header, 16)
    assert magic == 2
    (attributes,) = struct.unpack_from(">h", header, 21)
    return int(attributes & 0x07)


def port_is_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


# -- no broker needed ----------------------------------------------------------------------------------------


def test_topic_names_map_logical_names_under_a_prefix() -> None:
    names = topic_names("t1.")
    assert names.incidents == "t1.incidents"
    assert dict(names) == {n: f"t1.{n}" for n in LOGICAL_TOPICS}
    assert TOPIC_NAMES["raw"] == "cadr.raw" and "dlq" in TOPIC_NAMES and "nope" not in TOPIC_NAMES
    assert len(LOGICAL_TOPICS) == 6


def test_topic_specs_reject_retention_for_compacted_topics() -> None:
    specs = {s.logical: s for s in topic_specs("x.", 3, {"raw": 1000})}
    assert specs["raw"].configs["retention.ms"] == "1000"
    assert specs["events"].configs["retention.ms"] == str(7 * 86_400_000)
    with pytest.raises(ValueError, match="compacted"):
        topic_specs("x.", 3, {"incidents": 1000})


def test_probe_metadata_is_false_when_nothing_listens() -> None:
    assert probe_metadata("127.0.0.1", find_free_port(), timeout=0.5) is False


def test_missing_deploy_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KafkaStartError, match=r"kafka\.sh not found"):
        LocalKafka(tmp_path / "data", deploy_dir=tmp_path / "nowhere").start()


# -- the session broker --------------------------------------------------------------------------------------


async def test_broker_starts_and_serves_metadata(kafka_broker: LocalKafka) -> None:
    assert kafka_broker.running and kafka_broker.bootstrap == f"127.0.0.1:{kafka_broker.port}"
    assert probe_metadata("127.0.0.1", kafka_broker.port)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    assert [(b["host"], b["port"]) for b in cluster["brokers"]] == [("127.0.0.1", kafka_broker.port)]
    assert kafka_broker.server_log.is_file()


async def test_ensure_topics_creates_the_six_topics_idempotently(
    kafka_broker: LocalKafka, topic_prefix: str
) -> None:
    await ensure_topics(kafka_broker.bootstrap, topic_specs(topic_prefix, 3))
    await ensure_topics(kafka_broker.bootstrap, topic_specs(topic_prefix, 3))  # already there: no error

    names = topic_names(topic_prefix)
    configs = await describe_topic_configs(kafka_broker.bootstrap, list(names.values()))
    assert set(configs) == set(names.values())
    for logical, name in names.items():
        cfg = configs[name]
        assert cfg["_partitions"] == "3", name
        assert cfg["cleanup.policy"] == ("compact" if logical in COMPACTED else "delete"), name
        assert cfg["message.timestamp.type"] == "LogAppendTime", name
    assert configs[names.incidents]["max.message.bytes"] == str(8 * 1024 * 1024)
    # Above enrich's 1 MiB record limit, so oversized input reaches the DLQ instead of being refused.
    assert int(configs[names.raw]["max.message.bytes"]) > 5 * 1024 * 1024
    assert int(configs[names.dlq]["max.message.bytes"]) >= 2 * int(configs[names.raw]["max.message.bytes"])
    assert int(configs[names.incidents]["min.compaction.lag.ms"]) > 0
    assert configs[names.raw]["retention.ms"] == str(7 * 86_400_000)
    assert configs[names.events]["retention.ms"] == str(7 * 86_400_000)
    assert configs[names.alerts]["retention.ms"] == str(30 * 86_400_000)
    assert configs[names.dlq]["retention.ms"] == str(30 * 86_400_000)


async def test_edits_topic_takes_the_partition_count_of_the_events_topic(
    kafka_broker: LocalKafka, topic_prefix: str
) -> None:
    await ensure_topics(
        kafka_broker.bootstrap, topic_specs(topic_prefix, 3)
    )  # returns once they have leaders
    await ensure_topics(kafka_broker.bootstrap, [edits_spec(topic_prefix, partitions=5)])
    edits = f"{topic_prefix}profile-edits"
    configs = await describe_topic_configs(kafka_broker.bootstrap, [edits])
    assert configs[edits]["_partitions"] == "3"  # the events topic's, not the default's
    assert configs[edits]["cleanup.policy"] == "delete"
    assert configs[edits]["retention.ms"] == str(30 * 86_400_000)


async def test_an_edits_topic_partitioned_unlike_the_events_topic_is_refused(
    kafka_broker: LocalKafka, topic_prefix: str
) -> None:
    await ensure_topics(kafka_broker.bootstrap, topic_specs(topic_prefix, 2))
    await ensure_topics(kafka_broker.bootstrap, [TopicSpec("edits", f"{topic_prefix}profile-edits", 1, 1)])
    with pytest.raises(TopicError, match=r"profile-edits has 1 partitions but .*events has 2"):
        await ensure_topics(kafka_broker.bootstrap, [edits_spec(topic_prefix, partitions=2)])


async def test_forward_dead_letter_topics_take_records_as_large_as_the_dlq(
    kafka_broker: LocalKafka, topic_prefix: str
) -> None:
    names = [forward_dead_letter_topic(topic_prefix, d) for d in ("splunk", "es")]
    await ensure_topics(kafka_broker.bootstrap, dead_letter_specs(names))
    await ensure_topics(kafka_broker.bootstrap, dead_letter_specs(names))  # already there: no error
    configs = await describe_topic_configs(kafka_broker.bootstrap, names)
    assert set(configs) == {f"{topic_prefix}forward.dlq.splunk", f"{topic_prefix}forward.dlq.es"}
    for cfg in configs.values():
        assert cfg["max.message.bytes"] == str(16 * 1024 * 1024) and cfg["_partitions"] == "1"


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
async def test_round_trip_with_compression(kafka_broker: LocalKafka, topic_prefix: str, codec: str) -> None:
    topic = f"{topic_prefix}{codec}"
    await create_topics(kafka_broker.bootstrap, topic)
    values = [f'{{"n": {i}, "pad": "{"cadr " * (i % 50)}"}}'.encode() for i in range(500)]
    await produce(kafka_broker.bootstrap, topic, values, compression_type=codec, linger_ms=20)

    records = await consume(kafka_broker.bootstrap, topic, len(values))
    assert [r.value for r in records] == values
    assert [r.key for r in records] == [str(i % 7).encode() for i in range(len(values))]
    # The broker kept the producer's batches as they came (compression.type=producer): the codec is on disk.
    segment = kafka_broker.data_dir / "kraft" / f"{topic}-0" / "00000000000000000000.log"
    assert first_batch_codec(segment) == CODEC_IDS[codec]


async def test_faust_agent_forwards_and_changelogs_a_table(
    kafka_broker: LocalKafka, topic_prefix: str, tmp_path: Path
) -> None:
    source, sink = f"{topic_prefix}in", f"{topic_prefix}out"
    # Faust declares only its internal topics; a source topic missing when the group forms is ignored until
    # the next metadata refresh (minutes), so topics exist before the worker starts (ensure_topics, for cadr).
    await create_topics(kafka_broker.bootstrap, source, sink, partitions=2)

    app = faust.App(
        f"{topic_prefix}app",
        broker=f"kafka://{kafka_broker.bootstrap}",
        web_enabled=False,
        datadir=str(tmp_path / "faust"),
        store="memory://",
        topic_partitions=2,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=0.5,
        broker_rebalance_timeout=10.0,
        consumer_auto_offset_reset="earliest",
        producer_compression_type="zstd",
        stream_wait_empty=False,
    )
    in_topic = app.topic(source, key_type=str, value_serializer="json", partitions=2)
    out_topic = app.topic(sink, key_type=str, value_serializer="json", partitions=2)
    counts = app.Table("counts", key_type=str, value_type=int, default=int, partitions=2)

    @app.agent(in_topic)
    async def forward(stream: Any) -> None:
        async for key, value in stream.items():
            counts[key] += 1
            await out_topic.send(key=key, value={**value, "seen": counts[key]})

    await app.start()
    try:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, compression_type="lz4")
        await producer.start()
        try:
            for i in range(30):
                await producer.send_and_wait(
                    source, key=f'"w{i % 3}"'.encode(), value=f'{{"i": {i}}}'.encode()
                )
        finally:
            await producer.stop()
        records = await consume(kafka_broker.bootstrap, sink, 30, timeout=60)
    finally:
        await app.stop()

    out = [orjson.loads(r.value) for r in records]
    assert sorted(v["i"] for v in out) == list(range(30))
    assert max(v["seen"] for v in out) == 10
    # The table's changelog topic was created by Faust and holds the final count per key.
    changelog = f"{topic_prefix}app-counts-changelog"
    logged = await consume(kafka_broker.bootstrap, changelog, 30, timeout=30)
    final = {r.key: r.value for r in logged}
    assert sorted(final.values()) == [b"10", b"10", b"10"], final


# -- a private broker that the tests stop, kill and pause ----------------------------------------------------


@pytest.fixture(scope="module")
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    broker = LocalKafka(tmp_path_factory.mktemp("kafka-private"), stop_timeout=20.0)
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


async def test_stop_and_kill_then_start_keep_messages(private_broker: LocalKafka, topic_prefix: str) -> None:
    kafka = private_broker
    bootstrap, topic = kafka.bootstrap, f"{topic_prefix}keep"
    await create_topics(bootstrap, topic)
    first = [f"before-{i}".encode() for i in range(100)]
    await produce(bootstrap, topic, first)

    await kafka.astop()  # SIGTERM: clean shutdown
    assert not kafka.running and not port_is_open(kafka.port)
    await kafka.astart()
    assert kafka.bootstrap == bootstrap
    assert [r.value for r in await consume(bootstrap, topic, len(first))] == first

    second = [f"after-{i}".encode() for i in range(100)]
    await produce(bootstrap, topic, second)
    await asyncio.to_thread(kafka.kill)  # SIGKILL: a crash; the OS still has the written segments
    await kafka.astart()
    assert kafka.bootstrap == bootstrap
    assert [r.value for r in await consume(bootstrap, topic, len(first) + len(second))] == first + second


async def test_pause_delays_a_produce_until_resume(private_broker: LocalKafka, topic_prefix: str) -> None:
    kafka = private_broker
    topic = f"{topic_prefix}paused"
    await create_topics(kafka.bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all", request_timeout_ms=30_000)
    await producer.start()
    try:
        kafka.pause()
        try:
            assert probe_metadata("127.0.0.1", kafka.port, timeout=0.5) is False
            pending = asyncio.ensure_future(producer.send_and_wait(topic, b"during-pause"))
            done, _ = await asyncio.wait({pending}, timeout=2.0)
            assert not done, "a paused broker acknowledged a produce"
        finally:
            kafka.resume()
        metadata = await asyncio.wait_for(pending, 30)
        assert metadata.offset == 0
    finally:
        await producer.stop()
    assert [r.value for r in await consume(kafka.bootstrap, topic, 1)] == [b"during-pause"]


def test_port_in_use_fails_with_the_broker_log_tail(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = LocalKafka(tmp_path / "data", port=port, startup_timeout=60.0)
        with pytest.raises(KafkaStartError) as error:
            broker.start()
        broker.close()
    message = str(error.value)
    assert "server.log" in message and "kafka.out" in message
    assert "Address already in use" in message
    assert not broker.running
