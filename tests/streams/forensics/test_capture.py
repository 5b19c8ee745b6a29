"""Capture files and replay: store → capture → replay → a fresh pipeline stores the same events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.codec import decode_event
from schemas.settings import Settings
from streams.forensics.capture import (
    Selection,
    capture_from_store,
    capture_from_topic,
    read_capture,
    store_selection,
)
from streams.forensics.reader import open_reader
from streams.forensics.replay import mark_replayed, replay_sync
from streams.store.sink import StoreWriter
from tests.streams.store.kafka_worker import produce, store_worker
from tests.streams.store.support import payloads

ALL = Selection(since_ns=0, until_ns=2**62)


def _settings(data_dir: Path) -> Settings:
    s = Settings()
    s.data_dir = str(data_dir)
    return s


@pytest.fixture
def live(tmp_path: Path) -> Settings:
    settings = _settings(tmp_path / "live")
    with StoreWriter(settings.store_dsn) as writer:
        writer.write_events(payloads(3000))
    return settings


def _stored(settings: Settings, wait_s: float = 10) -> dict[str, bytes]:
    with open_reader(settings, wait_s=wait_s) as reader:
        return {orjson.loads(raw)["event_id"]: raw for raw in store_selection(reader, ALL)}


@pytest.mark.parametrize("name", ["cap.jsonl", "cap.jsonl.zst"])
def test_capture_from_store_is_time_ordered_json_lines(live: Settings, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with open_reader(live) as reader:
        assert capture_from_store(reader, ALL, path) == 3000
    if name.endswith(".zst"):
        assert path.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    lines = list(read_capture(path))
    events = [decode_event(line) for line in lines]
    assert len({e.event_id for e in events}) == 3000
    assert [e.time for e in events] == sorted(e.time for e in events)


def test_capture_selection_filters(live: Settings, tmp_path: Path) -> None:
    selection = Selection(since_ns=0, until_ns=2**62, namespace="shop", kinds=["process_exec", "dns_query"])
    with open_reader(live) as reader:
        count = capture_from_store(reader, selection, tmp_path / "sel.jsonl")
        where = Selection(since_ns=0, until_ns=2**62, where="exe = '/bin/bash'")
        assert [orjson.loads(v)["event_id"] for v in store_selection(reader, where)] == ["attack-2"]
    events = [decode_event(line) for line in read_capture(tmp_path / "sel.jsonl")]
    assert count == len(events) > 0
    assert {e.workload.namespace for e in events} == {"shop"}
    assert {str(e.kind) for e in events} <= {"process_exec", "dns_query"}


def test_mark_replayed_keeps_the_event_and_keys_by_workload() -> None:
    value = payloads(1)[0]
    key, marked = mark_replayed(value)
    event = decode_event(marked)
    assert event.replayed and event.event_id == decode_event(value).event_id
    assert key == event.workload.key().encode()


@pytest.mark.kafka
def test_capture_replay_into_a_fresh_pipeline_stores_the_same_events(
    kafka_broker: Any, topic_prefix: str, live: Settings, tmp_path: Path
) -> None:
    capture = tmp_path / "last-week.jsonl.zst"
    with open_reader(live) as reader:
        capture_from_store(reader, ALL, capture)
    original = _stored(live)
    with store_worker(kafka_broker.bootstrap, topic_prefix, tmp_path / "fresh") as fresh:
        report = replay_sync(
            read_capture(capture), bootstrap=kafka_broker.bootstrap, topic=topic_prefix + "events", rate=0
        )
        assert (report.published, report.skipped) == (3000, 0)
        fresh.wait_until(lambda: len(_stored(fresh.settings, 2)) >= 3000, 180, "the replayed events")
        replayed = _stored(fresh.settings, 2)
        with open_reader(fresh.settings) as reader:
            ((total, flagged),) = reader.rows("SELECT count(), countIf(replayed) FROM cadr.events")
    assert (total, flagged) == (3000, 3000)
    # the same events (raw keeps the event as it happened, without the replay mark)
    assert replayed.keys() == original.keys()
    assert all(decode_event(replayed[k]) == decode_event(original[k]) for k in original)
    assert not any(b'"replayed"' in raw for raw in replayed.values())


@pytest.mark.kafka
def test_replay_into_the_live_store_adds_nothing(
    kafka_broker: Any, topic_prefix: str, live: Settings, tmp_path: Path
) -> None:
    capture = tmp_path / "cap.jsonl"
    with open_reader(live) as reader:
        capture_from_store(reader, ALL, capture)
    # a worker owning the live store, consuming the topic the replay publishes to
    with store_worker(kafka_broker.bootstrap, topic_prefix, Path(live.data_dir)) as worker:
        replay_sync(
            read_capture(capture), bootstrap=kafka_broker.bootstrap, topic=topic_prefix + "events", rate=0
        )
        # a marker published after the replay: once it is stored, the replay has been fully processed
        marker = payloads(3001, attack_at=None)[-1]
        produce(
            kafka_broker.bootstrap,
            topic_prefix + "events",
            [marker.replace(b'"event_id":"', b'"event_id":"zz-')],
        )
        worker.wait_until(lambda: len(_stored(worker.settings, 2)) >= 3001, 180, "the marker event")
        with open_reader(worker.settings) as reader:
            ((total, distinct),) = reader.rows("SELECT count(), uniqExact(event_id) FROM cadr.events")
    assert (total, distinct) == (3001, 3001)


@pytest.mark.kafka
def test_capture_from_a_topic(kafka_broker: Any, topic_prefix: str, tmp_path: Path) -> None:
    from cadr.runtime import ensure_topics_sync

    settings = _settings(tmp_path)
    settings.kafka.bootstrap = kafka_broker.bootstrap
    settings.kafka.topic_prefix = topic_prefix
    settings.kafka.partitions = 2
    ensure_topics_sync(settings)
    values = payloads(500)
    produce(kafka_broker.bootstrap, topic_prefix + "events", values)
    path = tmp_path / "topic.jsonl"
    assert capture_from_topic(kafka_broker.bootstrap, topic_prefix + "events", path) == 500
    assert sorted(read_capture(path)) == sorted(values)
    # per-workload order is preserved (the topic is keyed by workload)
    by_workload: dict[str, list[int]] = {}
    for line in read_capture(path):
        e = orjson.loads(line)
        by_workload.setdefault(e["workload"].get("workload_name", ""), []).append(e["time"])
    assert all(times == sorted(times) for times in by_workload.values())


@pytest.mark.kafka
def test_capture_and_replay_commands(
    kafka_broker: Any, topic_prefix: str, live: Settings, tmp_path: Path
) -> None:
    """`cadr capture` from the store, `cadr replay` of the file and of a store selection, as a user runs them."""
    import subprocess
    import sys

    from cadr.runtime import ensure_topics_sync, settings_env

    live.kafka.bootstrap = kafka_broker.bootstrap
    live.kafka.topic_prefix = topic_prefix
    live.kafka.partitions = 2
    ensure_topics_sync(live)
    env = settings_env(live)

    def cadr(*args: str) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            [sys.executable, "-m", "cadr.cli", *args], env=env, capture_output=True, timeout=180, check=False
        )
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        return proc

    capture = tmp_path / "shop.jsonl.zst"
    out = cadr("capture", str(capture), "--since", "1970-01-01", "--namespace", "shop")
    assert b"wrote" in out.stderr
    shop = list(read_capture(capture))
    assert shop and all(orjson.loads(v)["workload"]["namespace"] == "shop" for v in shop)
    cadr("replay", str(capture), "--rate", "5000")
    cadr("replay", "--from-store", "--since", "1970-01-01", "--kind", "process_exec", "--topic", "events")
    raw = capture_from_topic(kafka_broker.bootstrap, topic_prefix + "raw", tmp_path / "raw.jsonl")
    assert raw == len(shop)
    assert all(decode_event(v).replayed for v in read_capture(tmp_path / "raw.jsonl"))
    n_exec = capture_from_topic(kafka_broker.bootstrap, topic_prefix + "events", tmp_path / "ev.jsonl")
    assert n_exec == sum(1 for v in payloads(3000) if orjson.loads(v)["kind"] == "process_exec")
