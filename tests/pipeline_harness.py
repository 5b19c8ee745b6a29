"""Helpers for end-to-end tests: a real `cadr worker` child process against the test broker,
publishing to cadr.raw and reading a topic until a condition holds (bounded by a deadline)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from cadr.runtime import ChildProcess, settings_env, spawn_cadr
from schemas.codec import encode
from schemas.records import Event
from schemas.settings import Settings

__all__ = ["Pipeline", "consume_until", "make_settings", "publish", "run_query"]


def make_settings(bootstrap: str, prefix: str, data_dir: Path, **detect: Any) -> Settings:
    s = Settings()
    s.data_dir = str(data_dir)
    s.cluster = "test"
    s.node = "node-t"
    s.kafka.bootstrap = bootstrap
    s.kafka.topic_prefix = prefix
    s.kafka.partitions = 2
    s.worker.app_id = f"cadr-test-{uuid.uuid4().hex[:8]}"
    s.store.flush_interval_s = 0.5
    for k, v in detect.items():
        setattr(s.detect, k, v)
    return s


async def publish(
    settings: Settings, values: Iterable[bytes | Event], topic: str = "raw", max_request_size: int = 16 << 20
) -> int:
    """Publish events (encoded) or raw bytes to a topic; waits for every ack."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap, acks="all", linger_ms=5, max_request_size=max_request_size
    )
    await producer.start()
    n = 0
    try:
        futures = []
        for v in values:
            if isinstance(v, Event):
                futures.append(
                    await producer.send(settings.topic(topic), key=v.workload.key().encode(), value=encode(v))
                )
            else:
                futures.append(await producer.send(settings.topic(topic), key=b"raw", value=v))
            n += 1
        for f in futures:
            await f
    finally:
        await producer.stop()
    return n


async def consume_until(
    settings: Settings, topic: str, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 120.0
) -> list[dict[str, Any]]:
    """Read ``topic`` from the beginning until ``done(records)``; raises on timeout."""
    consumer = AIOKafkaConsumer(
        settings.topic(topic),
        bootstrap_servers=settings.kafka.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=16 << 20,
        fetch_max_bytes=64 << 20,
    )
    await consumer.start()
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                for m in msgs:
                    if m.value is None:
                        continue
                    value = orjson.loads(m.value)
                    # cadr.raw / cadr.events records may hold a batch (JSON array) of events
                    records.extend(value if isinstance(value, list) else [value])
            if done(records):
                return records
    finally:
        await consumer.stop()
    raise AssertionError(
        f"timed out after {timeout}s on {settings.topic(topic)}; got {len(records)} record(s)"
    )


def run_query(settings: Settings, sql: str, timeout: float = 120.0) -> list[dict[str, Any]]:
    """Run `cadr query --format jsonl SQL` as a user would (through the worker when it runs)."""
    proc = subprocess.run(
        [sys.executable, "-m", "cadr.cli", "query", "--format", "jsonl", sql],
        env=settings_env(settings),
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"cadr query failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return [orjson.loads(line) for line in proc.stdout.splitlines() if line.strip()]


class Pipeline:
    """A `cadr worker` child process for one test."""

    def __init__(self, settings: Settings, name: str = "worker") -> None:
        self.settings = settings
        self.name = name
        self.child: ChildProcess | None = None

    def start(self) -> Pipeline:
        self.child = spawn_cadr(self.name, ["worker"], self.settings)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no final commit."""
        assert self.child is not None
        self.child.proc.kill()
        self.child.proc.wait(10)
        self.child.stop()

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()

    def log(self) -> str:
        return self.child.tail(60) if self.child else ""

    def wait_until(
        self, predicate: Callable[[], bool], timeout: float, what: str, interval: float = 1.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.child is not None and not self.child.alive():
                raise AssertionError(f"worker died while waiting for {what}:\n{self.log()}")
            if predicate():
                return
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; worker log:\n{self.log()}")


def run(coro: Any) -> Any:
    return asyncio.run(coro)
