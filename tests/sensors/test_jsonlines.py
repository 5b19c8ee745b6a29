"""The one JSON-lines sink, through each sensor's sink protocol."""

from __future__ import annotations

from pathlib import Path

import orjson

from schemas.records import Event, EventKind, Source, Workload
from sensors.ebpf.batch import JsonBatch
from sensors.jsonlines import JsonLinesSink
from sensors.publisher import encode_event


def _event(n: int) -> Event:
    return Event(
        event_id=f"e{n}",
        time=n,
        node="n",
        source=Source.EBPF,
        kind=EventKind.PROCESS_EXIT,
        workload=Workload(),
    )


async def test_ebpf_protocol_writes_one_event_a_line(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    sink = JsonLinesSink(str(out))
    await sink.send([(_event(1), b"k"), (_event(2), b"k")])
    await sink.send_batch(JsonBatch.from_items([(encode_event(_event(3)), b"k", 0, 0)]))
    await sink.aclose()
    assert [orjson.loads(line)["event_id"] for line in out.read_bytes().splitlines()] == ["e1", "e2", "e3"]
    assert sink.counters() == {"written": 3}


async def test_audit_protocol_marks_dead_letters_and_reopens_after_stop(tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    sink = JsonLinesSink(str(out))
    await sink.start()
    await sink.publish([(b"a", b'{"n":1}')], [(b"", b'{"reason":"bad"}')])
    await sink.stop()
    await sink.publish([(b"a", b'{"n":2}')], [])  # appended to the same file
    await sink.stop()
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert lines == [{"n": 1}, {"dead_letter": {"reason": "bad"}}, {"n": 2}]
    assert sink.written == 2  # events, not dead letters
