"""Forensics benchmark: ingest N synthetic events from Kafka into the embedded store, then time every named
query.

    .venv/bin/python bench/forensics.py                  # 10M events (the goal: >= 200k ev/s per sink worker,
                                                         # every named query p50 < 100 ms)
    .venv/bin/python bench/forensics.py --events 1000000 # scaled down

Steps: generate a synthetic cluster (namespaces × workloads × replicas, process trees, opens, connections, DNS,
Kubernetes API calls, one attack story) and publish it to a topic; run the store service — the same code as
`cadr worker`'s store stage, one sink worker — until every event is stored; then run each named query
``--runs`` times with parameters that hit the attack story and print p50/p90.

Baselines measured in the same run (the printed ratios): ingest against a bare aiokafka consumer reading the
same topic (no decode, no insert: the Kafka ceiling for one process), and each query against ``SELECT count()``
over the events table (the floor of one round trip through the engine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from cadr.runtime import relax_cyclic_gc
from cadr.topics import ensure_topics
from schemas.settings import Settings
from schemas.topics import topic_specs
from streams.enrich import workload_batches
from streams.forensics.named import bind_params, load_named_queries
from streams.forensics.reader import open_reader
from streams.store.service import StoreService
from tests.streams.forensics.synth import ATTACK, ClusterModel, generate


def _say(msg: str) -> None:
    print(msg, flush=True)


async def publish(
    bootstrap: str, topic: str, n: int, partitions: int, model: ClusterModel, window: int
) -> tuple[float, int]:
    """Publish ``n`` synthetic events keyed by workload, framed as the enrich stage writes ``cadr.events``
    (``window`` > 1: per window of that many events, one event batch per workload; 1: one event per record);
    returns (seconds, records). Uses producer batches (one future per ~1 MiB batch, not per message) so that publishing is
    not what the benchmark measures."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=1, compression_type="lz4", max_batch_size=1 << 20, linger_ms=50
    )
    await producer.start()
    started = time.monotonic()
    batches: dict[int, Any] = {}
    pending: list[Any] = []
    partition_of: dict[bytes, int] = {}
    try:
        records = 0
        for i, (key, value) in enumerate(framed(generate(n, model), window)):
            records += 1
            p = partition_of.get(key)
            if p is None:
                p = partition_of[key] = len(partition_of) % partitions
            batch = batches.get(p)
            if batch is None:
                batch = batches[p] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                pending.append(await producer.send_batch(batch, topic, partition=p))
                batch = batches[p] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
            if len(pending) > 64:
                await asyncio.gather(*pending)
                pending.clear()
            if i and i % 100_000 == 0:
                _say(f"  published {i:,} records ({i / (time.monotonic() - started):,.0f}/s)")
        for p, batch in batches.items():
            if batch.record_count():
                pending.append(await producer.send_batch(batch, topic, partition=p))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.monotonic() - started, records


def framed(events: Iterator[tuple[bytes, bytes]], window: int) -> Iterator[tuple[bytes, bytes]]:
    """Records as the enrich stage frames them: per window of ``window`` events, one event batch per workload,
    in order (:func:`streams.enrich.workload_batches`)."""
    if window <= 1:
        yield from events
        return
    while True:
        chunk = list(itertools.islice(events, window))
        if not chunk:
            return
        by_key: dict[bytes, list[bytes]] = {}
        for key, value in chunk:
            by_key.setdefault(key, []).append(value)
        yield from workload_batches(by_key)


async def consume_only(bootstrap: str, topic: str, records: int, per_record: float) -> float:
    """Baseline: read ``records`` records with a bare consumer (no decode, no insert); returns events/s
    (``per_record``: events per record, as published). Bounded: gives up after 10 minutes."""
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
    started = time.monotonic()
    try:
        while seen < records and time.monotonic() - started < 600:
            got = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            seen += sum(len(v) for v in got.values())
    finally:
        await consumer.stop()
    return seen * per_record / (time.monotonic() - started)


def reset_peak_rss() -> None:
    """Start the peak-RSS count afresh (Linux: "5" to clear_refs resets VmHWM), so the figure is the sink's,
    not the publisher's."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mib() -> float:
    """Peak resident memory since :func:`reset_peak_rss` (VmHWM), in MiB; 0 when unknown."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def ingest(settings: Settings, n: int) -> tuple[float, float, StoreService]:
    """Run the store service until ``n`` events are stored; returns (wall seconds from the first stored batch to
    the last, CPU seconds of this process meanwhile — the engine runs in-process, so that is the sink's whole
    cost — and the service)."""
    relax_cyclic_gc()  # as `cadr worker` does
    service = StoreService(settings, topics=["events"], serve_queries=False)
    await service.start()
    cpu_started = time.process_time()
    last_report = time.monotonic()
    stats = service.stats
    try:
        while stats.inserted + stats.duplicates < n:
            await asyncio.sleep(0.05)
            if time.monotonic() - last_report > 10 and stats.first_fetch is not None:
                last_report = time.monotonic()
                _say(
                    f"  stored {stats.inserted:,} ({stats.inserted / (last_report - stats.first_fetch):,.0f}/s)"
                )
        # from the first record fetched to the last batch stored (the consumer group join is not ingest)
        elapsed = time.monotonic() - (stats.first_fetch or time.monotonic())
        cpu = time.process_time() - cpu_started
    finally:
        await service.stop()
    return elapsed, cpu, service


def query_args(reader: Any) -> dict[str, dict[str, str]]:
    """Parameters for each named query that hit the synthetic attack story."""
    ((pod,),) = reader.rows(
        "SELECT pod FROM cadr.events WHERE event_id = 'attack-2'",
    )
    all_time = {"since": "1970-01-01", "until": "2100-01-01"}
    return {
        "process_tree": {"incident": "bench-incident"},
        "pod_activity": {"namespace": ATTACK.namespace, "pod": str(pod), **all_time},
        "exec_sessions": dict(all_time),
        "service_account_calls": {
            "namespace": ATTACK.namespace,
            "service_account": f"{ATTACK.workload}-sa",
            **all_time,
        },
        "connections_to": {"target": ATTACK.c2_domain, **all_time},
        "first_seen_executables": {"namespace": ATTACK.namespace, "workload": ATTACK.workload},
        "incident_window": {"incident": "bench-incident", "minutes": "5"},
    }


def add_incident(settings: Settings) -> None:
    """One incident row for the incident-scoped queries (the correlator is not part of this benchmark)."""
    from schemas.codec import encode
    from schemas.records import Incident, Severity, TimelineEntry, Workload
    from streams.store.sink import StoreWriter

    with open_reader(settings) as reader:
        times = dict(
            reader.rows(
                "SELECT event_id, toUnixTimestamp64Nano(time) FROM cadr.events WHERE event_id LIKE 'attack-%'"
            )
        )
    incident = Incident(
        incident_id="bench-incident",
        severity=Severity.HIGH,
        title="interactive shell in shop-api",
        summary="bench",
        first_seen=int(times["attack-1"]),
        last_seen=int(times["attack-8"]),
        workloads=[Workload(namespace=ATTACK.namespace, workload_name=ATTACK.workload)],
        timeline=[
            TimelineEntry(
                time=int(times["attack-2"]),
                event_id="attack-2",
                kind="process_exec",
                text="bash",
                node_id=ATTACK.shell_exec_id,
            )
        ],
    )
    with StoreWriter(settings.store_dsn) as writer:
        writer.write_records("incidents", [encode(incident)])


def wait_for_merges(settings: Settings, limit_s: float) -> float:
    """Let the merges a burst of inserts started finish (bounded), so queries are timed on a store at rest
    rather than against its own background rewrite; returns the seconds waited."""
    started = time.monotonic()
    with open_reader(settings) as reader:
        while time.monotonic() - started < limit_s:
            ((running,),) = reader.rows("SELECT count() FROM system.merges WHERE database = 'cadr'")
            if not running:
                break
            time.sleep(1.0)
    return time.monotonic() - started


def time_queries(settings: Settings, runs: int) -> list[tuple[str, float, float, int]]:
    queries = load_named_queries()
    out: list[tuple[str, float, float, int]] = []
    with open_reader(settings) as reader:
        args = query_args(reader)

        def timed(sql: str, params: dict[str, Any]) -> tuple[float, float, int]:
            times = []
            rows = 0
            reader.raw(sql, params)  # warm (marks, caches) like a second hunt in a session
            for _ in range(runs):
                t = time.perf_counter()
                data = reader.raw(sql, params)
                times.append((time.perf_counter() - t) * 1000)
                rows = data.count(b"\n")
            times.sort()
            return statistics.median(times), times[int(0.9 * (len(times) - 1))], rows

        p50, p90, _ = timed("SELECT count() FROM cadr.events", {})
        out.append(("baseline: SELECT count()", p50, p90, 1))
        for name, query in queries.items():
            params = bind_params(query, args[name], database=settings.store.database)
            p50, p90, rows = timed(query.sql, params)
            out.append((name, p50, p90, rows))
    return out


async def main_async(args: argparse.Namespace) -> int:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cadr-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    kafka = None
    bootstrap = args.kafka
    if not bootstrap:
        from cadr.kafka_local import LocalKafka

        kafka = LocalKafka(work / "kafka")
        kafka.start()
        bootstrap = kafka.bootstrap
    prefix = f"bench{os.getpid()}."
    settings = Settings()
    settings.data_dir = str(work / "cadr")
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    settings.kafka.bootstrap = bootstrap
    settings.kafka.topic_prefix = prefix
    settings.kafka.partitions = args.partitions
    settings.worker.app_id = f"bench{os.getpid()}"
    settings.store.batch_size = args.batch_size
    settings.store.batch_bytes = args.batch_mib << 20
    settings.store.flush_interval_s = args.flush_s
    n = args.events
    model = ClusterModel(namespaces=args.namespaces, workloads_per_namespace=args.workloads)
    try:
        await ensure_topics(bootstrap, topic_specs(prefix, args.partitions))
        topic = settings.topic("events")
        _say(
            f"cadr forensics bench: {n:,} events, {args.partitions} partitions, sink batch {args.batch_size:,} records or {args.batch_mib} MiB, "
            f"enrich window {args.window:,}, in {work}"
        )
        seconds, records = await publish(bootstrap, topic, n, args.partitions, model, args.window)
        per_record = n / max(records, 1)
        _say(
            f"published {n:,} events in {records:,} records ({per_record:.1f} events/record) in {seconds:.1f}s "
            f"({n / seconds:,.0f}/s)"
        )
        baseline_n = min(n, args.baseline_events)
        base_rate = await consume_only(bootstrap, topic, int(baseline_n / per_record), per_record)
        _say(
            f"baseline: bare aiokafka consume {base_rate:,.0f} ev/s ({baseline_n:,} events, no decode, no insert)"
        )
        load_before = os.getloadavg()[0]
        reset_peak_rss()
        elapsed, cpu, service = await ingest(settings, n)
        stats = service.stats
        rate = stats.inserted / elapsed
        _say(
            f"ingest: {stats.inserted:,} events in {elapsed:.1f}s = {rate:,.0f} ev/s per sink worker "
            f"({rate / base_rate:.2f}x bare consume; {stats.batches} batches, {stats.duplicates} duplicates, "
            f"{stats.rejected} rejected)  goal >= 200,000 ev/s: {'MET' if rate >= 200_000 else 'NOT MET'}"
        )
        _say(
            f"  cost: {cpu:.1f} CPU-seconds = {cpu / max(stats.inserted, 1) * 1e6:.1f} us/event "
            f"({stats.inserted / max(cpu, 1e-9):,.0f} ev/s per busy core); machine load average "
            f"{load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other processes share them); "
            f"peak RSS while ingesting {peak_rss_mib():,.0f} MiB"
        )
        add_incident(settings)
        settle = wait_for_merges(settings, args.settle_s)
        with open_reader(settings) as reader:
            ((parts, rows),) = reader.rows(
                "SELECT count(), sum(rows) FROM system.parts WHERE database = 'cadr' AND table = 'events' AND active"
            )
        _say(
            f"queries on {int(rows):,} events ({parts} active parts; background merges settled after "
            f"{settle:.0f}s), {args.runs} runs each:"
        )
        results = time_queries(settings, args.runs)
        floor = results[0][1]
        worst = 0.0
        for name, p50, p90, nrows in results:
            ratio = "" if name.startswith("baseline") else f"  {p50 / floor:5.1f}x baseline"
            _say(f"  {name:<26} p50 {p50:8.1f} ms   p90 {p90:8.1f} ms   rows {nrows:>6}{ratio}")
            if not name.startswith("baseline"):
                worst = max(worst, p50)
        _say(f"slowest named query p50 {worst:.1f} ms  goal < 100 ms: {'MET' if worst < 100 else 'NOT MET'}")
    finally:
        if kafka is not None:
            kafka.stop()
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--events", type=int, default=10_000_000, help="events to generate (default: 10,000,000)"
    )
    parser.add_argument(
        "--partitions", type=int, default=4, help="partitions of the events topic (default: 4)"
    )
    defaults = Settings().store
    parser.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help=f"most records per sink insert (default: store.batch_size, {defaults.batch_size:,})",
    )
    parser.add_argument(
        "--batch-mib",
        type=int,
        default=defaults.batch_bytes >> 20,
        help=f"most MiB of events per sink insert (default: store.batch_bytes, {defaults.batch_bytes >> 20})",
    )
    parser.add_argument(
        "--flush-s",
        type=float,
        default=defaults.flush_interval_s,
        help="most seconds a sink batch waits to fill (default: the store.flush_interval_s default)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=2000,
        help="events per enrich window: one event batch per workload per window, as cadr.events carries them "
        "(default: 2000, the worker's batch size); 1 publishes one event per record",
    )
    parser.add_argument("--namespaces", type=int, default=20, help="namespaces in the cluster (default: 20)")
    parser.add_argument("--workloads", type=int, default=10, help="workloads per namespace (default: 10)")
    parser.add_argument("--runs", type=int, default=15, help="timed runs per query (default: 15)")
    parser.add_argument(
        "--settle-s",
        type=float,
        default=120.0,
        help="most seconds to wait for merges before queries (default: 120)",
    )
    parser.add_argument(
        "--baseline-events",
        type=int,
        default=1_000_000,
        help="events read by the consume baseline (default: 1M)",
    )
    parser.add_argument("--kafka", default="", help="use this broker (default: start a local one)")
    parser.add_argument("--workdir", default="", help="keep everything here (default: a temp dir, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (default: remove it)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(main_async(args))
    return 130


if __name__ == "__main__":
    raise SystemExit(main())
