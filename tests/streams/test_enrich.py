"""Enrich stage, pure: validation to the DLQ, workload keys, peer workloads."""

from __future__ import annotations

import orjson

from schemas.codec import decode, decode_events, encode, encode_batch
from schemas.records import DeadLetter, Event, EventKind, Network, Workload
from streams.enrich import Enricher


class StaticLookup:
    def __init__(self, table: dict[str, Workload]) -> None:
        self.table = table

    def resolve(self, container_id: str) -> Workload | None:
        return self.table.get(container_id)


def _raw(**kw: object) -> bytes:
    base: dict[str, object] = {"event_id": "e", "time": 1, "source": "ebpf", "kind": "process_exec"}
    base.update(kw)
    return orjson.dumps(base)


def test_bad_records_become_dead_letters_with_reason_and_position() -> None:
    en = Enricher(cluster="c1", max_record_bytes=1 << 20)
    values = [
        b"{nope",
        _raw(process={"pid": "x"}),
        _raw(node="n" * (5 << 20)),
        b'{"event_id":"\xff"}',
        _raw(event_id="good"),
    ]
    sources = [("cadr.raw", 0, i) for i in range(len(values))]
    out = en.process(values, sources)
    assert len(out.events) == 1 and len(out.dead) == 4
    letters = [decode(v, DeadLetter) for _, v in out.dead]
    assert "invalid JSON" in letters[0].reason
    assert "$.process.pid" in letters[1].reason
    assert "over the" in letters[2].reason and letters[2].payload_bytes > 5 << 20
    assert letters[3].payload_b64
    assert [dl.offset for dl in letters] == [0, 1, 2, 3]
    assert {k: en.counters[k] for k in ("in", "out", "dead")} == {"in": 5, "out": 1, "dead": 4}


def test_events_are_keyed_by_workload_and_filled_in() -> None:
    wl = Workload(
        namespace="shop", pod="cart-1", container="app", workload_kind="Deployment", workload_name="cart"
    )
    en = Enricher(cluster="prod", max_record_bytes=1 << 20, lookup=StaticLookup({"abc": wl}))
    out = en.process([_raw(workload={"container_id": "abc"})])
    key, value = out.events[0]
    (event,) = decode_events(value)
    assert key == b"prod/shop/Deployment/cart"
    assert event.enriched and event.workload.pod == "cart-1" and event.workload.container_id == "abc"
    assert event.workload.cluster == "prod"


def test_connection_learns_peer_workload_from_pod_ips() -> None:
    en = Enricher(cluster="c", max_record_bytes=1 << 20)
    db = Event(
        event_id="1",
        time=1,
        source="ebpf",
        kind=EventKind.PROCESS_EXEC,
        workload=Workload(
            namespace="db", pod="db-0", workload_kind="StatefulSet", workload_name="db", pod_ip="10.0.0.9"
        ),
    )
    web = Event(
        event_id="2",
        time=2,
        source="ebpf",
        kind=EventKind.NET_CONNECT,
        workload=Workload(namespace="web", pod="web-1", pod_ip="10.0.0.3"),
        network=Network(dst_ip="10.0.0.9", dst_port=5432),
    )
    out = en.process([encode(db), encode(web)])
    assert out.decoded[1].network is not None
    assert out.decoded[1].network.peer_workload == "c/db/StatefulSet/db"


def test_batches_are_split_validated_per_element_and_regrouped_by_workload() -> None:
    a = Event(
        event_id="a1",
        time=1,
        source="ebpf",
        kind=EventKind.PROCESS_EXEC,
        workload=Workload(namespace="x", pod="a"),
    )
    b = Event(
        event_id="b1",
        time=2,
        source="ebpf",
        kind=EventKind.PROCESS_EXEC,
        workload=Workload(namespace="x", pod="b"),
    )
    a2 = Event(
        event_id="a2",
        time=3,
        source="ebpf",
        kind=EventKind.PROCESS_EXEC,
        workload=Workload(namespace="x", pod="a"),
    )
    bad = b'{"event_id": 5, "time": 1, "source": "ebpf", "kind": "process_exec"}'
    value = encode_batch([a, b])[:-1] + b"," + bad + b"," + encode(a2) + b"]"
    en = Enricher(cluster="c", max_record_bytes=1 << 20)
    out = en.process([value, b"[1, 2"], [("raw", 0, 7), ("raw", 0, 8)])
    by_key = {k: [e.event_id for e in decode_events(v)] for k, v in out.events}
    assert by_key == {b"c/x/Pod/a": ["a1", "a2"], b"c/x/Pod/b": ["b1"]}
    letters = [decode(v, DeadLetter) for _, v in out.dead]
    assert "element 2 of the batch" in letters[0].reason and "$.event_id" in letters[0].reason
    assert letters[0].offset == 7 and letters[1].offset == 8 and "invalid JSON" in letters[1].reason
