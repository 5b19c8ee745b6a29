"""The store goes away and comes back: nothing lost, nothing stored twice.

Uses the ClickHouse HTTP stand-in (tests/streams/clickhouse_http.py): clickhouse-connect over HTTP to a chdb
directory served by a child process that is stopped and started again on the same port.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import OperationalError

from streams.store.client import open_client
from streams.store.raw_insert import MemfdInserter, open_raw_inserter
from streams.store.sink import Backoff, StoreWriter, WriteReport
from tests.streams.store.clickhouse_http import ClickHouseHttp
from tests.streams.store.support import coords, payloads, store_counts


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_writer_blocks_through_an_http_outage_then_stores_everything_once(tmp_path: Path) -> None:
    server = ClickHouseHttp(tmp_path / "ch").start()
    values = payloads(3000)
    try:
        writer = StoreWriter(server.dsn, consumer="g", backoff=Backoff(initial_s=0.05, maximum_s=0.5)).open()
        writer.write_events(values[:1000], coords(1000))
        server.stop()
        result: list[WriteReport] = []
        thread = threading.Thread(
            target=lambda: result.append(writer.write_events(values[1000:], coords(2000, start=1000)))
        )
        thread.start()
        _wait(lambda: writer.failures >= 3, 60, "the writer to hit the outage")
        assert thread.is_alive(), "the write returned while the store was down"
        server.start()
        thread.join(120)
        assert not thread.is_alive()
        assert result[0].inserted == 2000
        writer.close()
        assert store_counts(server.dsn) == (3000, 3000)
    finally:
        server.stop()


class _LostAnswer:
    """A client (and raw inserter) whose first events insert lands but whose answer is lost (connection reset
    after the write)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.lost = 0

    def insert_arrow(self, table: str, data: Any, **kw: Any) -> Any:
        return self._lose_answer(table, self._client.insert_arrow(table, data, **kw))

    def raw_insert(self, table: str, *args: Any, **kw: Any) -> Any:
        return self._lose_answer(table, self._client.raw_insert(table, *args, **kw))

    def _lose_answer(self, table: str, result: Any) -> Any:
        if table.endswith((".events", ".events_ingest")) and self.lost == 0:
            self.lost += 1
            raise OperationalError("connection reset by peer after the request was sent")
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class _LostInserterAnswer:
    """The fast path's raw inserter (for a chdb directory: an in-memory file read by the engine), losing the
    answer of its client's first events insert."""

    def __init__(self, client: _LostAnswer, dsn: str) -> None:
        self._proxy = client
        self._inserter = open_raw_inserter(client, dsn)

    def insert(self, client: Any, table: str, *args: Any) -> int:
        return int(self._proxy._lose_answer(table, self._inserter.insert(client, table, *args)))

    def close(self) -> None:
        self._inserter.close()


@pytest.mark.parametrize("fast_path", [True, False])
def test_a_lost_insert_answer_does_not_duplicate(dsn: str, fast_path: bool) -> None:
    proxies: list[_LostAnswer] = []

    def factory(d: str) -> Any:
        proxies.append(_LostAnswer(open_client(d)))
        return proxies[-1]

    values = payloads(500)
    with StoreWriter(
        dsn,
        client_factory=factory,
        inserter_factory=_LostInserterAnswer,
        backoff=Backoff(initial_s=0.01),
        fast_path=fast_path,
    ) as writer:
        report = writer.write_events(values, coords(500))
        assert proxies[0].lost == 1
        assert (report.inserted, report.duplicates) == (0, 500)  # landed the first time; the retry found it
        assert store_counts(dsn) == (500, 500)


def test_the_fast_path_feeds_an_embedded_store_from_memory(dsn: str) -> None:
    with StoreWriter(dsn) as writer:
        assert isinstance(writer.inserter, MemfdInserter)
        report = writer.write_events(payloads(300), coords(300))
        assert (report.received, report.inserted) == (300, 300)
    assert store_counts(dsn) == (300, 300)


@pytest.mark.slow
@pytest.mark.kafka
def test_pipeline_store_outage_of_60s(kafka_broker: Any, topic_prefix: str, tmp_path: Path) -> None:
    """The must-show scenario: `cadr worker` (store stage) writing to an HTTP ClickHouse that disappears for
    60 s while events keep arriving; afterwards every event is stored exactly once."""
    from tests.streams.store.kafka_worker import produce, store_worker

    server = ClickHouseHttp(tmp_path / "ch").start()
    try:
        values = payloads(6000)
        with store_worker(kafka_broker.bootstrap, topic_prefix, tmp_path / "w", dsn=server.dsn) as worker:
            produce(kafka_broker.bootstrap, topic_prefix + "events", values[:2000])
            worker.wait_until(lambda: store_counts(server.dsn)[0] >= 2000, 120, "the first 2000 events")
            server.stop()
            outage_ends = time.monotonic() + 60
            produce(kafka_broker.bootstrap, topic_prefix + "events", values[2000:])
            while time.monotonic() < outage_ends:
                assert worker.alive(), worker.log()
                time.sleep(1)
            server.start()
            worker.wait_until(lambda: store_counts(server.dsn)[0] >= 6000, 180, "all 6000 events")
            time.sleep(2)  # a late duplicate would land within a batch interval; look again
        assert store_counts(server.dsn) == (6000, 6000)
    finally:
        server.stop()
