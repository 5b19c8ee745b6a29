"""End to end on a real Kafka broker: `cadr worker` as a child process, events in on
cadr.raw, enriched rows in ClickHouse (chdb), stories on cadr.incidents, bad input in
cadr.dlq, and no loss or duplicate when the worker is SIGKILLed mid-stream."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from cadr.scenario import attack_events
from tests.pipeline_harness import Pipeline, consume_until, make_settings, publish, run_query
from tests.streams.benign import benign_events

pytestmark = [pytest.mark.kafka]


@pytest.fixture
def settings(kafka_broker: Any, topic_prefix: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    from cadr.runtime import ensure_topics_sync

    s = make_settings(kafka_broker.bootstrap, topic_prefix, tmp_path / "state")
    ensure_topics_sync(s)
    return s


def test_worker_topics_include_profile_edits_co_partitioned_with_events(settings: Any) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    async def partitions() -> dict[str, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
        await admin.start()
        try:
            names = [settings.topic("events"), settings.topic("profile-edits")]
            return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}
        finally:
            await admin.close()

    # made by the settings fixture's ensure_topics_sync, as `cadr worker` does before it subscribes
    assert asyncio.run(partitions()) == {
        settings.topic("events"): settings.kafka.partitions,
        settings.topic("profile-edits"): settings.kafka.partitions,
    }


def test_event_reaches_clickhouse_enriched_and_its_incident_the_topic(settings: Any) -> None:
    events = attack_events(cluster="")  # cluster is filled in by enrich
    worker = Pipeline(settings).start()
    try:
        asyncio.run(publish(settings, events))
        incidents = asyncio.run(
            consume_until(
                settings, "incidents", lambda recs: any(len(r["alerts"]) >= 3 for r in recs), timeout=180
            )
        )
        latest = max(incidents, key=lambda r: (len(r["alerts"]), r["revision"]))
        assert latest["schema_version"] == 1
        rule_ids = {a["rule_id"] for a in latest["alerts"]}
        assert "CADR-PROC-0001" in rule_ids  # the interactive shell
        assert {"process_tree"} <= set(latest["threads"]) or len(latest["alerts"]) >= 3
        ids = [e.event_id for e in events]

        def stored() -> bool:
            rows = run_query(
                settings, f"SELECT count() AS n FROM cadr.events WHERE event_id IN {tuple(ids)!r}"
            )
            return rows[0]["n"] == len(ids)

        worker.wait_until(stored, 120, "the attack events in ClickHouse")
        rows = run_query(
            settings,
            f"SELECT event_id, cluster, enriched, pod FROM cadr.events WHERE event_id IN {tuple(ids)!r} ORDER BY time",
        )
        assert [r["event_id"] for r in rows] == ids
        assert all(r["cluster"] == "test" and r["enriched"] for r in rows)
        inc_rows = run_query(
            settings,
            f"SELECT max(revision) AS rev FROM cadr.incidents WHERE incident_id = '{latest['incident_id']}'",
        )
        assert inc_rows[0]["rev"] >= 1
    finally:
        worker.stop()


def test_malformed_records_land_in_dlq_and_the_worker_keeps_going(settings: Any) -> None:
    good = benign_events(start_ns=1_600_000_000_000_000_000, count=3)
    bad = [
        b"{this is not json",
        orjson.dumps({"event_id": "w1", "time": "yesterday", "source": "ebpf", "kind": "process_exec"}),
        orjson.dumps(
            {
                "event_id": "big",
                "time": 1,
                "source": "ebpf",
                "kind": "process_exec",
                "process": {"exe": "x" * (5 << 20)},
            }
        ),
        b'{"event_id": "\xff\xfe", "time": 1, "source": "ebpf", "kind": "process_exec"}',
    ]
    worker = Pipeline(settings).start()
    try:
        asyncio.run(publish(settings, [*bad[:2], good[0], *bad[2:], *good[1:]]))
        letters = asyncio.run(consume_until(settings, "dlq", lambda recs: len(recs) >= 4, timeout=180))
        reasons = [d["reason"] for d in letters]
        assert any("invalid JSON" in r for r in reasons[:1])
        assert any("$.time" in r for r in reasons)
        assert any("over the" in r for r in reasons)
        assert any("UTF-8" in r for r in reasons)
        assert all(d["stage"] == "enrich" and d["topic"] == settings.topic("raw") for d in letters)
        assert any(d["payload_b64"] for d in letters)
        events = asyncio.run(consume_until(settings, "events", lambda recs: len(recs) >= 3, timeout=120))
        assert sorted(e["event_id"] for e in events) == sorted(e.event_id for e in good)
    finally:
        worker.stop()


@pytest.mark.slow
def test_sigkill_mid_stream_loses_nothing_and_duplicates_nothing(settings: Any) -> None:
    total = 30_000
    settings.store.batch_size = 2_000  # many inserts, so the kill lands between two of them
    events = benign_events(start_ns=1_650_000_000_000_000_000, count=total)
    asyncio.run(publish(settings, events))
    worker = Pipeline(settings).start()

    def count() -> tuple[int, int]:
        rows = run_query(settings, "SELECT count() AS n, uniqExact(event_id) AS u FROM cadr.events")
        return rows[0]["n"], rows[0]["u"]

    def some_rows() -> bool:
        try:
            return count()[0] > 0
        except AssertionError:  # the store is created by the worker's first start
            return False

    # kill once some, but not all, rows are in
    worker.wait_until(some_rows, 180, "the first rows in ClickHouse", interval=0.3)
    worker.kill()
    first = count()
    assert first[0] == first[1]
    assert 0 < first[0] < total, f"the kill did not land mid-stream ({first[0]} of {total} stored)"
    worker = Pipeline(settings).start()
    try:
        worker.wait_until(lambda: count()[1] == total, 240, "every event in ClickHouse")
        n, unique = count()
        assert (n, unique) == (total, total), f"{n} rows for {unique} events (killed at {first[0]})"
    finally:
        worker.stop()
