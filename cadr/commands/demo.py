"""``cadr demo``: the whole pipeline on this machine against a scripted attack.

Starts the embedded stack (Kafka, the worker with every stage, the chdb store), publishes
the attack of :mod:`cadr.scenario` to ``cadr.raw`` exactly as the sensors would, prints
the incident story it produces, and stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from pathlib import Path

from schemas.errors import CadrError
from schemas.settings import Settings
from streams.kafka_access import client_options

__all__ = ["register", "run_demo"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run a scripted attack against a local stack and show the story it produces",
        description=(
            "Start the embedded stack (Kafka broker, worker, ClickHouse store under <data-dir>/demo), inject a "
            "scripted attack (kubectl exec, shell, download, drifted binary, token theft, secrets listed through "
            "the API) as sensor events, print the incident story, then stop everything. Exit 0 when a story "
            "was produced."
        ),
    )
    p.add_argument(
        "--json", action="store_true", help="print the final incident record as JSON instead of the story"
    )
    p.add_argument(
        "--timeout", type=float, default=240.0, help="seconds to wait for the story (default: 240)"
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the demo data directory afterwards (default: remove)"
    )
    p.set_defaults(handler=_handle)


def _say(msg: str) -> None:
    print(f"cadr demo: {msg}", file=sys.stderr, flush=True)


async def _publish(settings: Settings, events: list) -> None:
    from aiokafka import AIOKafkaProducer

    from schemas.codec import encode

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap, acks="all", linger_ms=5, **client_options(settings.kafka)
    )
    await producer.start()
    try:
        futures = [
            await producer.send(settings.topic("raw"), key=e.workload.key().encode(), value=encode(e))
            for e in events
        ]
        for f in futures:
            await f
    finally:
        await producer.stop()


async def _await_story(settings: Settings, expected_alerts: int, timeout: float, worker_alive) -> object:
    from aiokafka import AIOKafkaConsumer

    from schemas.codec import decode_incident

    consumer = AIOKafkaConsumer(
        settings.topic("incidents"),
        bootstrap_servers=settings.kafka.bootstrap,
        **client_options(settings.kafka),
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    latest: dict[str, object] = {}
    last_change = time.monotonic()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not worker_alive():
                raise CadrError("the worker stopped unexpectedly")
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for msg in records:
                    inc = decode_incident(msg.value)
                    latest[inc.incident_id] = inc
                    last_change = time.monotonic()
                    _say(f"incident {inc.incident_id} revision {inc.revision}: {len(inc.alerts)} alert(s)")
            if latest:
                best = max(latest.values(), key=lambda i: len(i.alerts))  # type: ignore[attr-defined]
                quiet = time.monotonic() - last_change
                # the story is told once it has every expected step and revisions have settled
                # (or nothing new came for 15 s)
                if (len(best.alerts) >= expected_alerts and quiet > 4.0) or quiet > 15.0:  # type: ignore[attr-defined]
                    return best
        return max(latest.values(), key=lambda i: len(i.alerts)) if latest else None  # type: ignore[attr-defined]
    finally:
        await consumer.stop()


def run_demo(settings: Settings, *, as_json: bool = False, timeout: float = 240.0, keep: bool = False) -> int:
    from cadr.render import render_incident
    from cadr.runtime import embedded_kafka, ensure_topics_sync, spawn_cadr, wait_for
    from cadr.scenario import attack_events
    from schemas.codec import encode

    base = Path(settings.data_dir).resolve() / "demo"
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    settings.data_dir = str(base)
    settings.store.dsn = ""
    # a short inactivity window so the demo also shows the story closing is possible
    settings.correlate.inactivity_close_s = max(settings.correlate.inactivity_close_s, 600.0)
    worker = None
    started = time.monotonic()
    try:
        with embedded_kafka(settings):
            ensure_topics_sync(settings)
            _say("starting the worker (enrich → detect → correlate → store) ...")
            worker = spawn_cadr("worker", ["worker"], settings)
            events = attack_events(cluster=settings.cluster)
            wait_for(lambda: worker.alive() and worker.log_path.stat().st_size >= 0, 5, "the worker to start")
            _say(
                f"injecting the attack: {len(events)} sensor events (eBPF + Kubernetes audit) into {settings.topic('raw')}"
            )
            asyncio.run(_publish(settings, events))
            expected = 6
            incident = asyncio.run(_await_story(settings, expected, timeout, worker.alive))
            if incident is None:
                raise CadrError(
                    f"no incident within {timeout:.0f}s; worker log: {worker.log_path}\n{worker.tail()}"
                )
            if as_json:
                print(encode(incident).decode())
            else:
                print()
                print(render_incident(incident))  # type: ignore[arg-type]
                print()
            _say(f"done in {time.monotonic() - started:.1f}s; stopping the stack")
            return 0
    finally:
        if worker is not None:
            worker.stop()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def _handle(args: argparse.Namespace, settings: Settings) -> int:
    return run_demo(settings, as_json=args.json, timeout=args.timeout, keep=args.keep)
