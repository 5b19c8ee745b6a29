"""The wire records: round trips, validation errors that name the field, published schemas."""

from __future__ import annotations

import orjson
import pytest

from schemas import jsonschema
from schemas.codec import dead_letter, decode_event, decode_incident, encode
from schemas.errors import RecordError
from schemas.records import SCHEMA_VERSION, Event, EventKind, Incident, Process, Severity


def _event(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "event_id": "e1",
        "time": 1_700_000_000_000_000_000,
        "source": "ebpf",
        "kind": "process_exec",
    }
    base.update(kw)
    return base


def test_event_round_trip_keeps_every_field() -> None:
    e = Event(
        event_id="e1",
        time=5,
        source="ebpf",
        kind=EventKind.PROCESS_EXEC,
        process=Process(pid=3, exe="/bin/sh", args=["sh", "-c", "id"], tty=True, exec_id="x"),
    )
    data = encode(e)
    back = decode_event(data)
    assert back == e
    assert orjson.loads(data)["schema_version"] == SCHEMA_VERSION


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (_event(process={"pid": "3"}), "$.process.pid"),
        (_event(kind="nope"), "$.kind"),
        (_event(time=-1), "$.time"),
        ({"time": 1, "source": "ebpf", "kind": "process_exec"}, "event_id"),
        (_event(process={"args": ["a"] * 2000}), "$.process.args"),
        (_event(file={"flags": 1}), "path"),
    ],
)
def test_validation_names_the_field(payload: dict[str, object], fragment: str) -> None:
    with pytest.raises(RecordError) as info:
        decode_event(orjson.dumps(payload))
    assert fragment in str(info.value)


def test_rejects_invalid_json_utf8_and_oversize() -> None:
    with pytest.raises(RecordError, match="invalid JSON"):
        decode_event(b"{not json")
    with pytest.raises(RecordError, match="invalid JSON"):
        decode_event(b'{"event_id": "\xff\xfe"}')
    big = orjson.dumps(_event(node="x" * (5 << 20)))
    with pytest.raises(RecordError, match="over the"):
        decode_event(big)
    with pytest.raises(RecordError, match="expected a JSON object"):
        decode_event(b"[1,2]")


def test_dead_letter_keeps_binary_payload_safely() -> None:
    letter = dead_letter(b"\xff\x00abc", stage="enrich", reason="bad", time_ns=1)
    assert letter.payload_b64 and letter.payload_bytes == 5
    text = dead_letter(b"x" * 200_000, stage="enrich", reason="big", time_ns=1)
    assert len(text.payload) == 64 * 1024 and text.payload_bytes == 200_000
    assert text.reason == "big (payload cut to the first 65536 of 200000 bytes)"


def test_a_cut_through_a_character_keeps_the_payload_as_text() -> None:
    # "é" is two bytes: after one leading byte, the cut at 65,536 falls inside a character
    payload = b"a" + ("é" * 40_000).encode()
    letter = dead_letter(payload, stage="enrich", reason="big")
    assert not letter.payload_b64
    assert letter.payload == "a" + "é" * 32_767  # the split character's first byte is dropped
    assert letter.payload_bytes == len(payload) and letter.time > 0


def test_dead_letter_takes_text_and_parsed_json() -> None:
    assert dead_letter("plain", stage="audit", reason="r", time_ns=1).payload == "plain"
    parsed = dead_letter({"kind": "Event", "n": [1]}, stage="audit", reason="r", time_ns=1)
    assert parsed.payload == '{"kind":"Event","n":[1]}' and not parsed.payload_b64


def test_incident_decodes_with_enums() -> None:
    inc = Incident(incident_id="i", severity=Severity.HIGH, title="t", summary="s", first_seen=1, last_seen=2)
    back = decode_incident(encode(inc))
    assert back.severity is Severity.HIGH and back.revision == 1


def test_published_json_schemas_match_the_models() -> None:
    assert jsonschema.stale() == [], "run: python -m schemas.jsonschema"
    for name in jsonschema.RECORDS:
        schema = orjson.loads((jsonschema.SCHEMA_DIR / f"{name}.schema.json").read_bytes())
        assert schema["$schema"].endswith("2020-12/schema")
        assert "$defs" in schema


def test_severity_order() -> None:
    assert Severity.LOW.rank < Severity.HIGH.rank
    assert Severity.from_rank(99) is Severity.CRITICAL
