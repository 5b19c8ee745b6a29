"""The store writer on the embedded engine: exact dedup of redelivered batches, replay marks, bad records."""

from __future__ import annotations

from pathlib import Path

import msgspec
import orjson
import pytest

from schemas.codec import encode, join_batch
from schemas.records import Alert, Incident, Profile, Severity
from streams.store.columns import events_table
from streams.store.dedup import Coord
from streams.store.raw_insert import ingest_body
from streams.store.sink import StoreWriter
from tests.streams.store.support import coords, event, payloads, rows, store_counts


def test_events_are_stored_with_their_columns(dsn: str) -> None:
    values = payloads(2000)
    with StoreWriter(dsn) as writer:
        report = writer.write_events(values, coords(2000))
        assert (report.inserted, report.duplicates, report.rejected) == (2000, 0, 0)
        assert store_counts(dsn) == (2000, 2000)
        ((exe, args, tty, parent),) = rows(
            dsn, "SELECT exe, args, tty, parent_exec_id FROM cadr.events WHERE event_id = 'attack-2'"
        )
        assert (exe, args, tty) == ("/bin/bash", ["bash", "-i"], True)
        assert parent.endswith(":1")  # the container's entrypoint
        ((raw,),) = rows(dsn, "SELECT raw FROM cadr.events WHERE event_id = 'attack-7'")
        assert orjson.loads(raw)["network"]["dst_ip"] == "203.0.113.66"


def test_redelivery_after_a_crash_stores_nothing_twice_even_regrouped(dsn: str) -> None:
    """A worker inserted offsets 0..999 and died before committing (SIGKILL between insert and commit).
    The next owner gets them again, regrouped with new messages, and must store each event exactly once."""
    values = payloads(3000)
    with StoreWriter(dsn, consumer="g") as first:
        first.write_events(values[:600], coords(600))
        first.write_events(values[600:1000], coords(400, start=600))
    # restart: a new writer (fresh horizons) receives everything from the last commit (offset 0), regrouped
    with StoreWriter(dsn, consumer="g") as second:
        r1 = second.write_events(values[:250], coords(250))
        r2 = second.write_events(values[250:1700], coords(1450, start=250))
        r3 = second.write_events(values[1700:], coords(1300, start=1700))
        assert r1.duplicates + r2.duplicates + r3.duplicates == 1000
        assert r1.inserted + r2.inserted + r3.inserted == 2000
        assert store_counts(dsn) == (3000, 3000)


def test_partly_landed_insert_is_completed_exactly(dsn: str) -> None:
    """An insert spanning two daily partitions can land one part and not the other before a crash."""
    values = payloads(1000)
    decoded = [msgspec.json.decode(v, type=type(event("x"))) for v in values]
    with StoreWriter(dsn, consumer="g") as first:
        first.write_events(values[:10], coords(10))  # creates the tables and a first intent
        # simulate: the intent for offsets 10..999 was written, then only every other row landed
        first._record_intents(coords(990, start=10))
        half = [i for i in range(10, 1000) if i % 2]
        first.client.insert_arrow(
            "cadr.events", events_table([decoded[i] for i in half], [values[i] for i in half])
        )
    with StoreWriter(dsn, consumer="g") as second:
        report = second.write_events(values[10:], coords(990, start=10))
        assert report.duplicates == len(half)
        assert store_counts(dsn) == (1000, 1000)


def test_new_messages_past_the_horizon_are_not_checked(dsn: str) -> None:
    values = payloads(400)
    with StoreWriter(dsn, consumer="g") as first:
        first.write_events(values[:200], coords(200))
    with StoreWriter(dsn, consumer="g") as second:
        second.write_events(values[200:], coords(200, start=200))
        assert second.guard.horizon("t.events", 0) == 199
        assert second.guard.suspects([Coord("t.events", 0, 300)], [False]) == []
        assert store_counts(dsn) == (400, 400)


def test_replayed_events_are_not_stored_twice_but_fill_a_fresh_store(tmp_path: Path) -> None:
    originals = [event(f"e{i}", t=1_790_000_000_000_000_000 + i) for i in range(50)]
    replayed = [encode(msgspec.structs.replace(e, replayed=True)) for e in originals]
    live = f"chdb://{tmp_path / 'live'}"
    with StoreWriter(live) as writer:
        writer.write_events([encode(e) for e in originals])
        report = writer.write_events(replayed, [Coord("t.raw", 0, i) for i in range(50)])
        assert (report.inserted, report.duplicates) == (0, 50)
        assert store_counts(live) == (50, 50)
    fresh = f"chdb://{tmp_path / 'fresh'}"
    with StoreWriter(fresh) as writer:
        report = writer.write_events(replayed)
        assert report.inserted == 50
        stored = rows(fresh, "SELECT raw, replayed FROM cadr.events ORDER BY event_id")
        assert all(flag for _, flag in stored)
        assert {orjson.loads(raw)["event_id"] for raw, _ in stored} == {e.event_id for e in originals}
        assert all("replayed" not in orjson.loads(raw) for raw, _ in stored)


@pytest.mark.parametrize("fast", [True, False])
def test_repeats_within_a_batch_are_stored_once(dsn: str, fast: bool) -> None:
    e = encode(event("same"))
    with StoreWriter(dsn, fast_path=fast) as writer:
        writer.write_events([e, e, encode(event("other")), e])
        assert store_counts(dsn) == (2, 2)


def test_bad_records_are_rejected_with_the_field_named_on_the_typed_path(dsn: str) -> None:
    good = encode(event("ok"))
    bad = orjson.dumps(
        {"event_id": "bad", "time": 1, "source": "x", "kind": "file_open", "process": {"pid": "x"}}
    )
    with StoreWriter(dsn, fast_path=False) as writer:
        report = writer.write_events([bad, good, b"not json"])
        assert (report.inserted, report.rejected) == (1, 2)
        assert "$.process.pid" in report.rejects[0][1]


def test_unparseable_records_land_in_events_rejected_on_the_fast_path(dsn: str) -> None:
    good = encode(event("ok"))
    with StoreWriter(dsn) as writer:
        writer.write_events([b"not json", good, b'{"time": 1}', b'"a string"'])
        assert rows(dsn, "SELECT event_id FROM cadr.events") == [("ok",)]
        assert sorted(rows(dsn, "SELECT reason, raw FROM cadr.events_rejected")) == [
            ("no event_id", '{"time": 1}'),
            ("not JSON", "not json"),
            ("not a JSON object", '"a string"'),
        ]


def test_a_batch_with_bad_elements_stores_the_good_ones_and_rejects_the_rest_with_the_field(dsn: str) -> None:
    good = [encode(event(f"ok-{i}")) for i in range(3)]
    bad = orjson.dumps(
        {"event_id": "bad", "time": 1, "source": "x", "kind": "file_open", "process": {"pid": "x"}}
    )
    with StoreWriter(dsn) as writer:
        report = writer.write_events([join_batch([good[0], b"1", bad]), join_batch(good[1:]), b"[1, 2"])
        assert sorted(rows(dsn, "SELECT event_id FROM cadr.events")) == [("ok-0",), ("ok-1",), ("ok-2",)]
        rejected = sorted(rows(dsn, "SELECT raw, reason FROM cadr.events_rejected"))
        assert [raw for raw, _ in rejected] == ["1", "[1, 2", bad.decode()]
        assert "$.process.pid" in rejected[2][1] and "invalid" in rejected[1][1]
        assert (report.inserted, report.rejected) == (3, 3)


def test_incident_revisions_and_latest_view(dsn: str) -> None:
    def incident(revision: int, title: str) -> bytes:
        return encode(
            Incident(
                incident_id="inc-1",
                revision=revision,
                severity=Severity.HIGH,
                title=title,
                summary="s",
                first_seen=1,
                last_seen=2 + revision,
            )
        )

    alert = Alert(
        alert_id="a1",
        rule_id="R",
        rule_name="r",
        severity=Severity.LOW,
        message="m",
        time=1,
        first_seen=1,
        last_seen=1,
    )
    with StoreWriter(dsn) as writer:
        writer.write_records("incidents", [incident(1, "first"), incident(2, "second")])
        writer.write_records("incidents", [incident(2, "second")])  # redelivered revision
        writer.write_records(
            "alerts", [encode(alert), encode(msgspec.structs.replace(alert, count=4, last_seen=9))]
        )
        writer.write_records("profiles", [encode(Profile(workload_key="k", revision=1))] * 2)
        assert rows(dsn, "SELECT revision, title FROM cadr.incidents_latest") == [(2, "second")]
        assert rows(dsn, "SELECT count() FROM cadr.incidents FINAL") == [(2,)]
        assert rows(dsn, "SELECT alert_id, count FROM cadr.alerts_latest") == [("a1", 4)]
        assert rows(dsn, "SELECT count() FROM cadr.profiles_latest") == [(1,)]


def _joined(values: list[bytes]) -> tuple[bytes, str]:
    body, fmt = ingest_body(values)
    return b"".join(body), fmt


def test_ingest_body_frames_single_events_as_lines_and_batches_as_one_array() -> None:
    a, b, c = (encode(event(x)) for x in "abc")
    pretty = b'{\n  "event_id": "p"\n}'
    assert _joined([a, pretty]) == (a + b'\n{   "event_id": "p" }', "LineAsString")
    assert _joined([join_batch([a, b]), b"[]", b"[ ]", b" [ ]", b"[\n" + a + b"\n]", c]) == (
        b"[" + a + b"," + b + b"," + a + b"," + c + b"]",
        "JSONAsString",
    )
    assert _joined([b"[]", b" [ ] "]) == (b"[]", "JSONAsString")


def test_event_batches_and_single_events_are_stored_on_the_fast_path(dsn: str) -> None:
    values = [encode(event(f"e{i}")) for i in range(7)]
    with StoreWriter(dsn) as writer:
        report = writer.write_events([join_batch(values[:3]), values[3], join_batch(values[4:])], coords(3))
        assert (report.received, report.inserted, report.rejected) == (7, 7, 0)
        assert store_counts(dsn) == (7, 7)
        assert rows(dsn, "SELECT count() FROM cadr.events_rejected") == [(0,)]
