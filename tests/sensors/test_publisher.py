"""The bounded on-disk spool, and the Kafka publisher's ordering across outages.

Three layers: the spool alone; the publisher against a scripted producer (outages on
demand, no broker) to pin the ordering rules; and the publisher against a real Apache
Kafka broker, including a 30-second outage while events keep coming.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.codec import decode_event, decode_events, split_batch
from schemas.records import Event, EventKind, Process, Workload
from sensors.publisher import Publisher
from sensors.spool import Spool

# ----------------------------------------------------------------------------------- spool


def recs(n: int, start: int = 0, key: bytes | None = b"k") -> list[tuple[bytes | None, bytes, int]]:
    return [(key, f"v{i}".encode() * 10, i) for i in range(start, start + n)]


def test_spool_round_trip_in_order(tmp_path: Path) -> None:
    sp = Spool(tmp_path, 1 << 20)
    sp.append(5, recs(3))
    sp.append(2, recs(2, 100, key=None))
    assert sp.head_seq() == 2 and sp.events == 5 and len(sp) == 2
    assert sp.read(2) == recs(2, 100, key=None)
    sp.remove(2)
    assert sp.head_seq() == 5 and sp.read(5) == recs(3)
    # survives a restart, numbering included
    again = Spool(tmp_path, 1 << 20)
    assert again.head_seq() == 5 and again.last_seq() == 5 and again.read(5) == recs(3)


def test_full_spool_drops_oldest_and_counts(tmp_path: Path) -> None:
    one = len(Spool.encode(recs(10, 100)))  # every batch below has 3-digit values: same size
    sp = Spool(tmp_path, one * 3 + 10)
    for seq in range(1, 6):
        sp.append(seq, recs(10, seq * 100))
    assert sp.dropped == 20 and len(sp) == 3 and sp.head_seq() == 3
    assert sp.bytes <= sp.max_bytes
    # a batch bigger than the whole spool keeps its newest records
    big = recs(200)
    sp.append(9, big)
    assert len(sp) == 1 and sp.read(9) == big[-len(sp.read(9)) :]
    assert sp.dropped == 20 + 30 + (200 - len(sp.read(9)))


def test_corrupt_segment_is_dropped_and_counted(tmp_path: Path) -> None:
    sp = Spool(tmp_path, 1 << 20)
    sp.append(1, recs(4))
    path = next(tmp_path.glob("*.seg"))
    data = bytearray(path.read_bytes())
    data[20] ^= 0xFF
    path.write_bytes(bytes(data))
    assert sp.read(1) == [] and sp.dropped == 4 and len(sp) == 0


# ------------------------------------------------------------------ scripted producer


class FakeBatch:
    def __init__(self, limit: int) -> None:
        self.records: list[tuple[bytes | None, bytes, int]] = []
        self.limit = limit

    def append(self, *, key: bytes | None, value: bytes, timestamp: int | None) -> object | None:
        if len(self.records) >= self.limit:
            return None
        self.records.append((key, value, timestamp or 0))
        return object()


class FakeProducer:
    """Stands in for AIOKafkaProducer: ``broker.up`` decides whether sends succeed."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker

    async def start(self) -> None:
        if not self.broker.up:
            raise ConnectionError("broker down")

    async def stop(self) -> None:
        return None

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.broker.batch_limit)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.broker.up:
            self.broker.log[partition].extend(batch.records)
            fut.set_result(None)
        else:
            fut.set_exception(ConnectionError("broker down"))
        return fut


class FakeBroker:
    def __init__(self) -> None:
        self.up = True
        self.batch_limit = 50
        self.log: dict[int, list[tuple[bytes | None, bytes, int]]] = defaultdict(list)

    def factory(self, **_: Any) -> FakeProducer:
        return FakeProducer(self)

    def values_by_key(self) -> dict[bytes | None, list[bytes]]:
        out: dict[bytes | None, list[bytes]] = defaultdict(list)
        for part in sorted(self.log):
            for key, value, _ in self.log[part]:
                # a record is one event or a JSON array of one key's events (batch framing)
                out[key].extend(split_batch(value))
        return out


async def wait_until(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def publisher(tmp_path: Path, broker: FakeBroker, **kw: Any) -> Publisher:
    opts: dict[str, Any] = dict(batch_events=20, linger_s=0.01, retry_backoff_s=0.02, max_backoff_s=0.05)
    opts.update(kw)
    return Publisher(
        "fake:9092", "cadr.raw", str(tmp_path / "spool"), producer_factory=broker.factory, **opts
    )


async def test_outage_spools_and_drains_in_order(tmp_path: Path) -> None:
    broker = FakeBroker()
    keys = [b"a", b"b", b"c", b"d"]
    async with publisher(tmp_path, broker) as pub:
        for i in range(200):
            await pub.publish(b"%d" % i, key=keys[i % 4])
        await wait_until(lambda: pub.acked == 200)
        broker.up = False
        for i in range(200, 600):
            await pub.publish(b"%d" % i, key=keys[i % 4])
            if i % 50 == 0:
                await asyncio.sleep(0.01)
        await wait_until(lambda: pub.spool.events > 0)
        assert pub.counters()["kafka_up"] is False
        broker.up = True
        assert await pub.flush(10)
    by_key = broker.values_by_key()
    for k, key in enumerate(keys):
        got = [int(v) for v in by_key[key]]
        expected = list(range(k, 600, 4))
        # at-least-once: a unit may repeat, never reorder or vanish
        assert sorted(set(got)) == expected
        firsts = list(dict.fromkeys(got))
        assert firsts == expected
    assert pub.spool.events == 0 and pub.spooled > 0


async def test_memory_bound_spills_to_spool_then_drains(tmp_path: Path) -> None:
    broker = FakeBroker()
    broker.up = False
    pub = publisher(tmp_path, broker, max_memory_events=50)
    await pub.start()
    for i in range(1000):
        pub.publish_nowait(b"%d" % i, key=b"k")
    await wait_until(
        lambda: pub.spool.events + pub.counters()["memory_events"] == 1000 and pub.spool.events > 900
    )
    broker.up = True
    assert await pub.flush(10)
    await pub.close()
    assert list(dict.fromkeys(int(v) for v in broker.values_by_key()[b"k"])) == list(range(1000))


async def test_close_while_down_keeps_events_for_the_next_run(tmp_path: Path) -> None:
    broker = FakeBroker()
    broker.up = False
    pub = publisher(tmp_path, broker)
    await pub.start()
    for i in range(100):
        await pub.publish(b"%d" % i, key=b"k")
    await pub.close(timeout_s=1)
    assert pub.spool.events == 100 and not broker.log
    broker.up = True
    async with publisher(tmp_path, broker) as again:
        await again.publish(b"100", key=b"k")
        assert await again.flush(10)
    assert [int(v) for v in broker.values_by_key()[b"k"]] == list(range(101))


async def test_full_spool_drops_oldest_and_reports(tmp_path: Path) -> None:
    broker = FakeBroker()
    broker.up = False
    pub = publisher(tmp_path, broker, spool_max_bytes=4000, batch_events=10)
    await pub.start()
    for i in range(500):
        await pub.publish(b"x" * 50 + b"%d" % i, key=b"k")
    await pub.close(timeout_s=1)
    c = pub.counters()
    assert c["spool_dropped"] > 0
    assert c["spool_dropped"] + pub.spool.events == 500
    assert pub.spool.bytes <= 4000


async def test_events_are_keyed_by_workload(tmp_path: Path) -> None:
    broker = FakeBroker()
    wl = Workload(cluster="c", namespace="shop", pod="web-1", workload_kind="Deployment", workload_name="web")
    ev = Event(
        event_id="e1", time=1_700_000_000_123_456_789, source="ebpf", kind=EventKind.PROCESS_EXEC, workload=wl
    )
    async with publisher(tmp_path, broker) as pub:
        await pub.publish(ev)
        assert await pub.flush(5)
    [(key, value, ts)] = [r for part in broker.log.values() for r in part]
    assert key == b"c/shop/Deployment/web" and ts == 1_700_000_000_123
    assert decode_event(value) == ev and orjson.loads(value)["schema_version"] == 1


# ----------------------------------------------------------------------- real Kafka


def event(i: int, wl: Workload) -> Event:
    return Event(
        event_id=f"test:{i}",
        time=time.time_ns(),
        node="n",
        source="ebpf",
        kind=EventKind.PROCESS_EXEC,
        workload=wl,
        process=Process(pid=i, comm="x", args=["x", str(i)]),
    )


async def consume_all(
    bootstrap: str, topic: str, expect: int, timeout: float = 60
) -> list[tuple[bytes, Event]]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out: list[tuple[bytes, Event]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(out) < expect and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for msgs in batches.values():
                out.extend((m.key, e) for m in msgs for e in decode_events(m.value))
    finally:
        await consumer.stop()
    return out


@pytest.mark.kafka
async def test_publish_to_kafka_lz4_keyed(kafka_broker, topic_prefix: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from cadr.topics import ensure_topics
    from schemas.topics import topic_specs

    await ensure_topics(kafka_broker.bootstrap, topic_specs(topic_prefix))
    topic = f"{topic_prefix}raw"
    wls = [
        Workload(cluster="c", namespace="ns", pod=f"p{i}", workload_kind="Deployment", workload_name=f"w{i}")
        for i in range(3)
    ]
    async with Publisher(kafka_broker.bootstrap, topic, str(tmp_path / "spool"), compression="lz4") as pub:
        for i in range(3000):
            await pub.publish(event(i, wls[i % 3]))
        assert await pub.flush(30)
        assert pub.acked == 3000 and pub.spooled == 0
    got = await consume_all(kafka_broker.bootstrap, topic, 3000)
    assert len(got) == 3000
    for key, ev in got:
        assert key == ev.workload.key().encode()


@pytest.mark.kafka
@pytest.mark.slow
async def test_kafka_outage_of_30s_loses_nothing_and_keeps_order(tmp_path: Path) -> None:
    """Kafka stopped for 30 s while events keep coming: when it returns, every event
    arrives, in order per workload."""
    from cadr.kafka_local import LocalKafka
    from cadr.topics import ensure_topics
    from schemas.topics import topic_specs

    kafka = LocalKafka(tmp_path / "kafka")
    await kafka.astart()
    try:
        await ensure_topics(kafka.bootstrap, topic_specs("outage."))
        topic = "outage.raw"
        wls = [
            Workload(
                cluster="c", namespace="ns", pod=f"p{i}", workload_kind="Deployment", workload_name=f"w{i}"
            )
            for i in range(4)
        ]
        pub = Publisher(
            kafka.bootstrap, topic, str(tmp_path / "spool"), request_timeout_s=3.0, max_backoff_s=2.0
        )
        await pub.start()
        sent = 0

        async def produce(seconds: float, rate: int = 500) -> None:
            nonlocal sent
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                for _ in range(rate // 20):
                    await pub.publish(event(sent, wls[sent % 4]))
                    sent += 1
                await asyncio.sleep(0.05)

        await produce(2)
        stop = asyncio.create_task(kafka.astop())
        await produce(30)  # the broker is going down, then down
        await stop
        assert pub.spool.events > 0, "events were spooled during the outage"
        restart = asyncio.create_task(kafka.astart())
        await produce(2)
        await restart
        await produce(2)
        assert await pub.flush(60)
        await pub.close()
        got = await consume_all(kafka.bootstrap, topic, sent)
    finally:
        await kafka.astop()
        kafka.close()
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for key, ev in got:
        by_key[key].append(int(ev.event_id.split(":")[1]))
    seen = {i for ids in by_key.values() for i in ids}
    assert seen == set(range(sent)), f"missing {len(set(range(sent)) - seen)} of {sent}"
    for k, wl in enumerate(wls):
        ids = by_key[wl.key().encode()]
        firsts = list(dict.fromkeys(ids))  # at-least-once: repeats allowed, reordering not
        assert firsts == list(range(k, sent, 4))
    assert pub.counters()["spool_dropped"] == 0
