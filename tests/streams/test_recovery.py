"""The end of a table recovery keeps the stream partitions paused until their seek is done and the agents'
queues are cleared, and a fetch asks for the partitions active when it starts (streams.recovery): no record
read after the seek can be thrown away."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from streams.recovery import CadrTableManager, SeekFirstRecovery, SnapshotFetchConsumer
from streams.worker import create_app
from tests.pipeline_harness import make_settings


class _Consumer:
    """The part of Faust's consumer the end of a recovery uses, recording the calls in order."""

    def __init__(self, assignment: set[TopicPartition], calls: list[Any]) -> None:
        self._assignment = assignment
        self.calls = calls

    def assignment(self) -> set[TopicPartition]:
        return set(self._assignment)

    async def perform_seek(self) -> None:
        self.calls.append("seek started")
        await asyncio.sleep(0)  # a broker round trip: the loop runs other tasks meanwhile
        self.calls.append("seek done")

    def resume_partitions(self, tps: Any) -> None:
        self.calls.append(("resume", frozenset(tps)))

    def resume_flow(self) -> None:
        self.calls.append("resume_flow")


class _Client:
    def __init__(self, calls: list[Any]) -> None:
        self.calls = calls

    async def _wait_on_metadata(self, topic: str) -> set[int]:
        self.calls.append(("producer knows", topic))
        return {0, 1}


class _Producer:
    """Faust's producer as streams.producer.warm_producer reaches aiokafka's client."""

    def __init__(self, calls: list[Any]) -> None:
        self.client = _Client(calls)

    def _ensure_producer(self) -> _Producer:
        return self


class _Fetcher:
    def __init__(self, calls: list[Any]) -> None:
        self.calls = calls

    async def maybe_start(self) -> None:
        self.calls.append("fetcher")


def _app(tmp_path: Path, calls: list[Any]) -> tuple[Any, set[TopicPartition], set[TopicPartition]]:
    settings = make_settings("127.0.0.1:9", "t.", tmp_path)
    app = create_app(settings).app
    changelog = sorted(app.tables.changelog_topics)[0]
    streams = {TopicPartition(settings.topic("raw"), 0), TopicPartition(settings.topic("events"), 1)}
    changelogs = {TopicPartition(changelog, 0)}
    app.consumer = _Consumer(streams | changelogs, calls)  # type: ignore[assignment]
    app.__dict__["_fetcher"] = _Fetcher(calls)
    app.producer = _Producer(calls)  # type: ignore[assignment]
    flow_resume = app.flow_control.resume

    def resume() -> None:
        calls.append("flow_control.resume (clears the agents' queues)")
        flow_resume()

    app.flow_control.resume = resume  # type: ignore[method-assign]
    app.consumer_generation_id = 3
    return app, streams, changelogs


def _check_order(calls: list[Any], streams: set[TopicPartition]) -> None:
    # the producer knows every changelog and output topic before any record may reach an agent
    warmed = [i for i, c in enumerate(calls) if isinstance(c, tuple) and c[0] == "producer knows"]
    known = {calls[i][1] for i in warmed}
    assert {"t.raw", "t.events", "t.alerts", "t.incidents"} <= known, calls
    assert any(t.endswith("-changelog") for t in known), calls
    first_resume = min(i for i, c in enumerate(calls) if isinstance(c, tuple) and c[0] == "resume")
    assert max(warmed) < first_resume, calls
    calls[:] = [c for c in calls if not (isinstance(c, tuple) and c[0] == "producer knows")]
    resumed = [i for i, c in enumerate(calls) if isinstance(c, tuple) and c[1] & streams]
    assert resumed, f"the stream partitions were never resumed: {calls}"
    assert len(resumed) == 1 and calls[resumed[0]][1] == streams, calls
    order = [c if isinstance(c, str) else "resume streams" for c in calls]
    clear = order.index("flow_control.resume (clears the agents' queues)")
    assert order.index("seek done") < clear < order.index("resume streams") < order.index("fetcher"), calls


def test_the_worker_app_uses_the_seek_first_recovery(tmp_path: Path) -> None:
    app = create_app(make_settings("127.0.0.1:9", "t.", tmp_path)).app
    assert isinstance(app.tables, CadrTableManager)
    assert isinstance(app.tables.recovery, SeekFirstRecovery)


# The app is made inside the running loop: Faust's services bind the loop current when they are created.


async def test_recovery_end_resumes_the_stream_partitions_after_the_seek_and_the_queue_clear(
    tmp_path: Path,
) -> None:
    calls: list[Any] = []
    app, streams, changelogs = _app(tmp_path, calls)
    await app.tables.recovery.on_recovery_completed(generation_id=3)
    _check_order(calls, streams)
    assert not any(isinstance(c, tuple) and c[1] & changelogs for c in calls), calls
    assert app.tables.recovery.completed.is_set()


async def test_streams_without_tables_resume_after_the_seek_and_the_queue_clear(tmp_path: Path) -> None:
    calls: list[Any] = []
    app, streams, _ = _app(tmp_path, calls)
    await app.tables.recovery._resume_streams(generation_id=3)
    _check_order(calls, streams)


async def test_a_newer_generation_resumes_nothing(tmp_path: Path) -> None:
    calls: list[Any] = []
    app, _, _ = _app(tmp_path, calls)
    await app.tables.recovery.on_recovery_completed(generation_id=2)  # another rebalance began
    assert calls == []


class _Thread:
    def __init__(self) -> None:
        self.asked: list[Any] = []

    async def getmany(self, active_partitions: Any, timeout: float) -> dict[Any, Any]:
        self.asked.append(active_partitions)
        return {}


async def test_a_fetch_asks_for_the_partitions_active_when_it_starts(tmp_path: Path) -> None:
    app = create_app(make_settings("127.0.0.1:9", "t.", tmp_path)).app
    consumer = app.consumer
    assert isinstance(consumer, SnapshotFetchConsumer)
    thread = _Thread()
    consumer._thread = thread  # type: ignore[assignment]
    live = {TopicPartition("t.raw", 0)}
    await consumer._getmany(live, timeout=0.01)
    (asked,) = thread.asked
    assert asked == {TopicPartition("t.raw", 0)} and asked is not live
    live.clear()  # paused while the fetch waits: it must not turn into "every partition"
    assert asked == {TopicPartition("t.raw", 0)}
    assert await consumer._getmany(set(), timeout=0.01) == {}
    assert len(thread.asked) == 1  # nothing fetched for an empty set (aiokafka: empty = all)
