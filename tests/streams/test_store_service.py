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
from tests.streams.store_kafka import produce, store_worker
from tests.streams.store_support import payloads

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
