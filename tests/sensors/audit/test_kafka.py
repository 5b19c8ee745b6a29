"""The audit intake against a real Apache Kafka broker: acks before 200, 503 while Kafka is down, the
tailer's exactly-once delivery across restarts and rotation.

The corpus and tailer tests use the session broker (``kafka_broker``) with their own topic prefix; the
Kafka-down test stops and restarts a broker of its own (the session broker stays up for everyone else).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from cadr.kafka_local import LocalKafka
from cadr.topics import ensure_topics
from schemas.codec import decode_events, split_batch
from schemas.topics import topic_specs
from sensors.audit.sink import KafkaSink
from sensors.audit.tailer import AuditLogTailer
from tests.sensors.audit.support import (
    FALCO,
    TlsFiles,
    audit_settings,
    corpus_body,
    event_list,
    make_tls,
    running_webhook,
)

pytestmark = pytest.mark.kafka


async def _consume(
    bootstrap: str, topic: str, want: int, timeout_s: float = 60.0
) -> list[tuple[bytes, bytes]]:
    """Read ``topic`` from the start until ``want`` records arrived (bounded); returns (key, value)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    out: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + timeout_s
    try:
        # ``want`` counts events: a record may hold a JSON array of several
        while sum(len(split_batch(v)) for _, v in out) < want and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                out.extend((r.key or b"", r.value or b"") for r in records)
        # anything beyond `want` would be a duplicate: give it one more poll to show up
        batches = await consumer.getmany(timeout_ms=1000)
        for records in batches.values():
            out.extend((r.key or b"", r.value or b"") for r in records)
    finally:
        await consumer.stop()
    return out


async def _post(url: str, tls: TlsFiles, body: bytes) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {tls.token}", "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, ssl=tls.client_context(), headers=headers) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


def _audit(i: int, stage: str = "ResponseComplete") -> dict[str, Any]:
    return {
        "kind": "Event",
        "auditID": f"k-{i:06d}",
        "stage": stage,
        "verb": "get",
        "user": {"username": "alice"},
        "objectRef": {"resource": "pods", "namespace": "default", "name": f"web-{i}"},
        "responseStatus": {"code": 200},
        "stageTimestamp": "2019-06-01T00:00:00.000001Z",
    }


async def test_falco_corpus_through_the_tls_webhook_into_kafka(
    kafka_broker: LocalKafka, topic_prefix: str, tmp_path: Path
) -> None:
    await ensure_topics(kafka_broker.bootstrap, topic_specs(topic_prefix, 2))
    tls = make_tls(tmp_path)
    sink = KafkaSink(kafka_broker.bootstrap, f"{topic_prefix}raw", f"{topic_prefix}dlq", timeout_s=30)
    statuses = {}
    async with running_webhook(audit_settings(tls), sink, cluster="minikube", node="intake") as hook:
        for path in sorted(FALCO.glob("*.json")):
            statuses[path.name], _ = await _post(hook.url, tls, corpus_body(path))
    assert statuses.pop("fal_01_003.json") == 400
    assert set(statuses.values()) == {200}
    raw = await _consume(kafka_broker.bootstrap, f"{topic_prefix}raw", 51)
    events = [e for _, v in raw for e in decode_events(v)]
    # 51 events; two pairs of trace files are edited copies sharing an auditID (so 49 distinct ids)
    assert len(events) == 51 and len({e.event_id for e in events}) == 49
    # records fold runs of events into JSON arrays; a record's key is its first event's audit id
    firsts = [decode_events(v)[0] for _, v in raw]
    assert all(
        e.audit is not None and k == e.audit.audit_id.encode() for (k, _), e in zip(raw, firsts, strict=True)
    )
    assert min(e.time for e in events) < 1_600_000_000 * 10**9  # 2018 events are stored, not dropped
    dlq = await _consume(kafka_broker.bootstrap, f"{topic_prefix}dlq", 1)
    assert len(dlq) == 1 and b"data not recognized" in dlq[0][1]


async def test_kafka_down_is_503_and_nothing_answered_200_is_lost(tmp_path: Path) -> None:
    kafka = LocalKafka(tmp_path / "kafka")
    await kafka.astart()
    try:
        await ensure_topics(kafka.bootstrap, topic_specs("down.", 2))
        tls = make_tls(tmp_path)
        sink = KafkaSink(kafka.bootstrap, "down.raw", "down.dlq", timeout_s=5)
        answered_200: set[str] = set()
        async with running_webhook(audit_settings(tls), sink) as hook:
            status, _ = await _post(hook.url, tls, event_list([_audit(i) for i in range(100)]))
            assert status == 200
            answered_200 |= {f"k-{i:06d}" for i in range(100)}

            await kafka.astop()
            status, body = await _post(hook.url, tls, event_list([_audit(i) for i in range(100, 200)]))
            assert status == 503, body
            assert "retry" in body["reason"]

            await kafka.astart()
            # the API server retries the refused batch; so do we, until the broker takes it (bounded)
            deadline = time.monotonic() + 90
            while True:
                status, body = await _post(hook.url, tls, event_list([_audit(i) for i in range(100, 200)]))
                if status == 200 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert status == 200, body
            answered_200 |= {f"k-{i:06d}" for i in range(100, 200)}
        stored = await _consume(kafka.bootstrap, "down.raw", 200)
        stored_ids = {e.audit.audit_id for _, v in stored for e in decode_events(v)}  # type: ignore[union-attr]
        assert answered_200 <= stored_ids
    finally:
        kafka.close()


async def test_tailer_delivers_each_line_once_across_restart_and_rotation(
    kafka_broker: LocalKafka, topic_prefix: str, tmp_path: Path
) -> None:
    await ensure_topics(kafka_broker.bootstrap, topic_specs(topic_prefix, 2))
    log = tmp_path / "audit.log"
    state = tmp_path / "audit.pos"

    def append(numbers: range) -> None:
        with open(log, "ab") as fh:
            for i in numbers:
                fh.write(orjson.dumps(_audit(i)) + b"\n")

    def tailer() -> AuditLogTailer:
        sink = KafkaSink(kafka_broker.bootstrap, f"{topic_prefix}raw", f"{topic_prefix}dlq", timeout_s=30)
        return AuditLogTailer(log, sink, state, batch_lines=64)

    append(range(150))
    first = tailer()
    await first.sink.start()
    assert await first.poll_once() == 150
    first.close()
    await first.sink.stop()
    # while it is down: more lines, a rotation, and lines in the new file
    append(range(150, 200))
    os.rename(log, tmp_path / "audit-2019-06-01T00-00-00.000.log")
    append(range(200, 260))
    second = tailer()
    await second.sink.start()
    assert await second.poll_once() == 110
    second.close()
    await second.sink.stop()
    stored = await _consume(kafka_broker.bootstrap, f"{topic_prefix}raw", 260)
    ids = [e.audit.audit_id for _, v in stored for e in decode_events(v)]  # type: ignore[union-attr]
    assert len(ids) == 260 and set(ids) == {f"k-{i:06d}" for i in range(260)}
