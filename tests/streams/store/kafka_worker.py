"""Kafka helpers for the store tests: publish payloads, run `cadr worker --agents store` as a child."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from cadr.runtime import ChildProcess, spawn_cadr
from cadr.topics import ensure_topics
from schemas.settings import Settings
from schemas.topics import topic_specs

__all__ = ["StoreWorker", "produce", "store_settings", "store_worker"]


def produce(
    bootstrap: str, topic: str, values: Sequence[bytes], *, partitions_by_workload: bool = True
) -> None:
    """Publish ``values`` keyed by their workload (as the pipeline does), waiting for every ack."""

    async def run() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=5,
            max_batch_size=1 << 20,
            compression_type="lz4",
        )
        await producer.start()
        try:
            futures = []
            for value in values:
                key = None
                if partitions_by_workload:
                    w = orjson.loads(value).get("workload", {})
                    key = f"{w.get('namespace', '')}/{w.get('workload_name', '')}".encode()
                futures.append(await producer.send(topic, value, key=key))
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(run())


def store_settings(bootstrap: str, prefix: str, data_dir: Path, dsn: str = "") -> Settings:
    s = Settings()
    s.data_dir = str(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    s.kafka.bootstrap = bootstrap
    s.kafka.topic_prefix = prefix
    s.kafka.partitions = 2
    s.worker.app_id = f"{prefix}store-{uuid.uuid4().hex[:6]}"
    s.store.dsn = dsn
    s.store.batch_size = 500
    s.store.flush_interval_s = 0.3
    return s


class StoreWorker:
    def __init__(self, settings: Settings, name: str = "store-worker") -> None:
        self.settings = settings
        self.name = name
        self.child: ChildProcess | None = None

    def start(self) -> StoreWorker:
        asyncio.run(
            ensure_topics(self.settings.kafka.bootstrap, topic_specs(self.settings.kafka.topic_prefix, 2))
        )
        self.child = spawn_cadr(self.name, ["worker", "--agents", "store"], self.settings)
        return self

    def alive(self) -> bool:
        return self.child is not None and self.child.alive()

    def log(self) -> str:
        return self.child.tail(60) if self.child else ""

    def kill(self) -> None:
        assert self.child is not None
        self.child.proc.kill()
        self.child.proc.wait(10)
        self.child.stop()

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()

    def wait_until(
        self, predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.5
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"store worker died while waiting for {what}:\n{self.log()}")
            with contextlib.suppress(Exception):
                if predicate():
                    return
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; worker log:\n{self.log()}")


@contextlib.contextmanager
def store_worker(bootstrap: str, prefix: str, data_dir: Path, dsn: str = "") -> Iterator[StoreWorker]:
    worker = StoreWorker(store_settings(bootstrap, prefix, data_dir, dsn)).start()
    try:
        yield worker
    finally:
        worker.stop()
