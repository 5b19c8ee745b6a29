"""Benchmark: one worker through raw → events → ClickHouse and raw → incidents.

Prints events/s on the full path, the ceiling measured in the same run (a bare aiokafka
consume + orjson decode of the same topic), their ratio, and p50/p99 latency from publish
to incident. Runs against a real local Kafka broker and the embedded chdb store.

    python bench/pipeline.py [--events 200000] [--workloads 200] [--stories 40]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cadr.kafka_local import LocalKafka
from cadr.runtime import ensure_topics_sync
from cadr.scenario import attack_events
from schemas.codec import encode, join_batch
from schemas.records import Dns, Event, EventKind, File, Network, Process, Source, Workload
from tests.pipeline_harness import Pipeline, make_settings, run_query


def generate(n: int, workloads: int, start_ns: int) -> list[bytes]:
    """Realistic routine traffic: opens, execs, connects and lookups across many workloads."""
    rng = random.Random(7)
    wls = [
        Workload(
            cluster="bench",
            namespace=f"ns{i % 20}",
            pod=f"app{i}-6d8f-{i:05d}",
            container="app",
            container_id=f"{i:064x}",
            workload_kind="Deployment",
            workload_name=f"app{i}",
            pod_ip=f"10.1.{i // 250}.{i % 250}",
        )
        for i in range(workloads)
    ]
    out = []
    for j in range(n):
        wl = wls[rng.randrange(workloads)]
        t = start_ns + j * 10_000
        proc = Process(
            pid=100 + j % 50,
            exe="/usr/local/bin/app",
            comm="app",
            exec_id=f"{wl.pod}-x{j % 50}",
            args=["app", "--serve"],
        )
        r = rng.random()
        if r < 0.6:
            e = Event(
                event_id=f"b{j}",
                time=t,
                node="n1",
                source=Source.EBPF,
                kind=EventKind.FILE_OPEN,
                workload=wl,
                process=proc,
                file=File(path=f"/app/data/{rng.randrange(20)}.json"),
            )
        elif r < 0.8:
            e = Event(
                event_id=f"b{j}",
                time=t,
                node="n1",
                source=Source.EBPF,
                kind=EventKind.PROCESS_EXEC,
                workload=wl,
                process=Process(
                    pid=200 + j % 100,
                    exe="/usr/bin/python3",
                    comm="python3",
                    exec_id=f"e{j}",
                    parent_exec_id=proc.exec_id,
                    args=["python3", "/app/job.py", str(j)],
                ),
            )
        elif r < 0.95:
            e = Event(
                event_id=f"b{j}",
                time=t,
                node="n1",
                source=Source.EBPF,
                kind=EventKind.NET_CONNECT,
                workload=wl,
                process=proc,
                network=Network(
                    src_ip=wl.pod_ip, src_port=40000 + j % 20000, dst_ip="10.96.0.10", dst_port=5432
                ),
            )
        else:
            e = Event(
                event_id=f"b{j}",
                time=t,
                node="n1",
                source=Source.EBPF,
                kind=EventKind.DNS_QUERY,
                workload=wl,
                process=proc,
                dns=Dns(query="db.default.svc.cluster.local"),
            )
        out.append(encode(e))
    return out


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=1 << 20, compression_type="lz4"
    )
    await producer.start()
    t0 = time.perf_counter()
    try:
        # as the sensors publish: runs of one workload's events folded into one record (a JSON
        # array), up to 256 events per record
        runs: dict[bytes, list[bytes]] = {}
        futures = []
        for v in values:
            key = orjson.loads(v)["workload"].get("pod", "").encode()
            run = runs.setdefault(key, [])
            run.append(v)
            if len(run) >= 256:
                futures.append(await producer.send(topic, key=key, value=join_batch(run)))
                runs[key] = []
        for key, run in runs.items():
            if run:
                futures.append(await producer.send(topic, key=key, value=join_batch(run)))
        for f in futures:
            await f
    finally:
        await producer.stop()
    return time.perf_counter() - t0


async def bare_consume(bootstrap: str, topic: str, n: int) -> float:
    """The ceiling: aiokafka consume + orjson decode, nothing else."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=64 << 20,
    )
    await consumer.start()
    seen = 0
    t0 = 0.0
    try:
        while seen < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if batch and not t0:
                t0 = time.perf_counter()
            for msgs in batch.values():
                for m in msgs:
                    seen += len(orjson.loads(m.value))
    finally:
        await consumer.stop()
    return time.perf_counter() - t0


async def watch_topic(bootstrap: str, topic: str, n: int, timeout: float) -> tuple[float, float]:
    """(first arrival, last arrival) wall times of ``n`` records on ``topic``."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=64 << 20,
    )
    await consumer.start()
    seen, first, last = 0, 0.0, 0.0
    deadline = time.monotonic() + timeout
    try:
        while seen < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            # records are event batches (JSON arrays): count events, not records
            got = sum(m.value.count(b'"event_id"') for msgs in batch.values() for m in msgs)
            if got:
                now = time.perf_counter()
                first = first or now
                last = now
                seen += got
    finally:
        await consumer.stop()
    if seen < n:
        raise SystemExit(f"only {seen}/{n} records reached {topic} within {timeout}s")
    return first, last


async def story_latency(settings, bootstrap: str, stories: int) -> list[float]:  # type: ignore[no-untyped-def]
    """Publish attack sequences one by one; latency = publish of the shell → its first incident revision."""
    consumer = AIOKafkaConsumer(
        settings.topic("incidents"),
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="latest",
        enable_auto_commit=False,
    )
    await consumer.start()
    await consumer.getmany(timeout_ms=1000)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=0)
    await producer.start()
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    try:
        for i in range(stories):
            pod = f"victim-{i}"
            events = [
                e
                for e in attack_events(
                    cluster="bench",
                    namespace=f"victim{i}",
                    pod=pod,
                    pod_ip=f"10.9.0.{i % 250}",
                    tag=f"lat{i}",
                )
                if e.kind is EventKind.PROCESS_EXEC
            ][:1]
            for e in events:
                await producer.send_and_wait(
                    settings.topic("raw"), key=e.workload.key().encode(), value=encode(e)
                )
            sent[pod] = time.perf_counter()
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                for m in msgs:
                    inc = orjson.loads(m.value)
                    for w in inc["workloads"]:
                        seen.setdefault(w.get("pod", ""), time.perf_counter())
        deadline = time.monotonic() + 60
        while len(set(sent) & set(seen)) < len(sent) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                for m in msgs:
                    inc = orjson.loads(m.value)
                    for w in inc["workloads"]:
                        seen.setdefault(w.get("pod", ""), time.perf_counter())
    finally:
        await producer.stop()
        await consumer.stop()
    return [seen[p] - sent[p] for p in sent if p in seen]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000, help="events to push through (default: 200000)")
    ap.add_argument("--workloads", type=int, default=200, help="distinct workloads (default: 200)")
    ap.add_argument(
        "--stories", type=int, default=40, help="attack sequences for the latency figure (default: 40)"
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cadr-bench-"))
    kafka = LocalKafka(work / "kafka")
    kafka.start()
    try:
        settings = make_settings(kafka.bootstrap, "bench.", work / "state")
        settings.kafka.partitions = 4
        settings.detect.learning_window_s = (
            1.0  # profiles complete almost at once: detection runs at full cost
        )
        ensure_topics_sync(settings)
        values = generate(args.events, args.workloads, 1_700_000_000_000_000_000)
        produce_s = asyncio.run(produce(kafka.bootstrap, settings.topic("raw"), values))
        print(f"published {len(values):,} events in {produce_s:.1f}s")
        bare_s = asyncio.run(bare_consume(kafka.bootstrap, settings.topic("raw"), len(values)))
        ceiling = len(values) / bare_s
        print(f"ceiling  bare aiokafka consume + orjson decode: {ceiling:,.0f} events/s")

        worker = Pipeline(settings).start()
        try:
            first, last = asyncio.run(
                watch_topic(kafka.bootstrap, settings.topic("events"), len(values), timeout=900)
            )
            events_rate = len(values) / max(last - first, 1e-6)
            deadline = time.monotonic() + 900
            stored = 0
            while time.monotonic() < deadline:
                stored = run_query(settings, "SELECT count() AS n FROM cadr.events")[0]["n"]
                if stored >= len(values):
                    break
                time.sleep(0.5)
            store_done = time.perf_counter()
            store_rate = stored / max(store_done - first, 1e-6)
            lat = asyncio.run(story_latency(settings, kafka.bootstrap, args.stories))
        finally:
            worker.stop()
        print(
            f"full     raw → enrich → cadr.events (+ detect, correlate, store running): {events_rate:,.0f} events/s"
        )
        print(f"full     raw → ClickHouse (rows stored {stored:,}): {store_rate:,.0f} events/s")
        print(
            f"ratio    full path / ceiling: {events_rate / ceiling:.2f} (events topic), {store_rate / ceiling:.2f} (ClickHouse)"
        )
        if lat:
            lat.sort()
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            print(
                f"latency  publish → incident over {len(lat)} stories: p50 {statistics.median(lat) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
            )
        else:
            print("latency  no incident observed")
    finally:
        kafka.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
