"""The store stage in a real `cadr worker` against the test Kafka broker and the embedded engine."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from cadr.runtime import settings_env
from streams.forensics.reader import open_reader
from tests.streams.store.kafka_worker import produce, store_worker
from tests.streams.store.support import payloads

pytestmark = pytest.mark.kafka


def _counts(settings: Any) -> tuple[int, int]:
    with open_reader(settings, wait_s=2) as reader:
        ((total, distinct),) = reader.rows("SELECT count(), uniqExact(event_id) FROM cadr.events")
        return int(total), int(distinct)


def test_worker_stores_events_and_serves_read_only_queries(
    kafka_broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    values = payloads(3000)
    with store_worker(kafka_broker.bootstrap, topic_prefix, tmp_path / "w") as worker:
        produce(kafka_broker.bootstrap, topic_prefix + "events", values)
        worker.wait_until(lambda: _counts(worker.settings)[0] >= 3000, 120, "3000 stored events")
        assert _counts(worker.settings) == (3000, 3000)
        # `cadr query` while the worker owns the directory: through its endpoint, no lock error
        env = settings_env(worker.settings)
        ok = subprocess.run(
            [sys.executable, "-m", "cadr.cli", "query", "-f", "jsonl", "SELECT count() AS n FROM events"],
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert ok.returncode == 0, ok.stderr.decode()
        assert orjson.loads(ok.stdout.splitlines()[0]) == {"n": 3000}
        refused = subprocess.run(
            [sys.executable, "-m", "cadr.cli", "query", "DROP TABLE events"],
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert refused.returncode == 1
        assert b"READONLY" in refused.stderr
        assert _counts(worker.settings) == (3000, 3000)


def test_sigkill_mid_stream_and_restart_stores_each_event_once(
    kafka_broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    """SIGKILL the worker three times while it ingests; after the last restart every event is stored once."""
    values = payloads(12000)
    with store_worker(kafka_broker.bootstrap, topic_prefix, tmp_path / "w") as worker:
        produce(kafka_broker.bootstrap, topic_prefix + "events", values)
        for kill in range(3):
            target = 2000 * (kill + 1)
            worker.wait_until(
                lambda t=target: _counts(worker.settings)[0] >= t, 180, f"{target} stored events"
            )
            worker.kill()  # no shutdown hooks, no final commit: redelivery follows
            worker.start()
        worker.wait_until(lambda: _counts(worker.settings)[0] >= 12000, 300, "all 12000 events")
        time.sleep(1.0)  # a late duplicate would arrive within a batch window: look again
        total, distinct = _counts(worker.settings)
        with open_reader(worker.settings, wait_s=2) as reader:
            ((attempted,),) = reader.rows("SELECT sum(rows) FROM cadr.sink_log")
        assert (total, distinct) == (12000, 12000), f"rows attempted incl. redeliveries: {attempted}"
        assert int(attempted) >= 12000


def test_a_rebalance_drain_and_the_consume_loop_complete_each_batch_once_in_order() -> None:
    """drain() (from a rebalance callback) and the consume loop may both wait on the oldest batch; the second
    must not take the next, unfinished batch off the list and commit past it."""
    import asyncio

    from schemas.settings import Settings
    from streams.store.service import StoreService

    async def scenario() -> list[int]:
        service = StoreService(Settings())
        committed: list[int] = []

        async def commit(consumer: Any, batch: Any) -> None:
            committed.append(batch["id"])

        service._commit = commit  # type: ignore[method-assign]
        service._consumer = object()  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        service._pending.extend([(first, {"id": 1}), (second, {"id": 2})])  # type: ignore[list-item]
        loop_side = asyncio.create_task(service._complete_oldest())
        rebalance_side = asyncio.create_task(service.drain())
        await asyncio.sleep(0.01)
        first.set_result(None)
        await asyncio.sleep(0.01)
        assert committed == [1], "the unfinished second batch was completed"
        assert len(service._pending) == 1
        second.set_result(None)
        await asyncio.wait_for(asyncio.gather(loop_side, rebalance_side), 5)
        return committed

    assert asyncio.run(scenario()) == [1, 2]
