"""The columnar batch builders: records → Arrow tables shaped like the ClickHouse tables (no ClickHouse)."""

from __future__ import annotations

import msgspec
import orjson
import pyarrow as pa

from schemas.codec import decode_event, encode
from schemas.records import (
    Actor,
    Alert,
    AlertRef,
    Edge,
    Event,
    Incident,
    Network,
    Process,
    Profile,
    Severity,
    TimelineEntry,
    Workload,
)
from streams.store.columns import (
    ALERT_COLUMNS,
    EVENT_COLUMNS,
    INCIDENT_COLUMNS,
    PROFILE_COLUMNS,
    alerts_table,
    alias_columns,
    canonical_raw,
    events_table,
    incidents_table,
    profiles_table,
)
from tests.streams.store.support import event, net_event, payloads


def _col(table: pa.Table, name: str) -> list[object]:
    return table.column(name).to_pylist()


def test_event_columns_follow_the_table_layout() -> None:
    values = payloads(500)
    events = [decode_event(v) for v in values]
    table = events_table(events, values)
    assert table.column_names == EVENT_COLUMNS
    assert table.num_rows == 500
    # raw keeps the payload verbatim (fields a newer producer added survive)
    assert [bytes(b) for b in _col(table, "raw")] == values
    assert _col(table, "event_id") == [e.event_id for e in events]
    assert _col(table, "kind") == [str(e.kind) for e in events]


def test_absent_blocks_read_as_column_defaults() -> None:
    e = event("a", kind="process_exec", file=None, process=Process(pid=5, exe="/bin/sh", args=["sh"]))
    n = net_event("b")
    table = events_table([e, n])
    assert _col(table, "file_path") == ["", ""]
    # the Network defaults apply only where a block exists (net_protocol is computed from raw at query time)
    assert alias_columns([e, n])["net_protocol"] == ["", "tcp"]
    assert _col(table, "dst_port") == [0, 443]
    assert _col(table, "uid") == [-1, -1]  # Process.uid default: unknown
    assert _col(table, "exit_code") == [None, None]
    assert _col(table, "args") == [["sh"], ["cat", "/etc/shadow"]]


def test_out_of_range_integers_are_clamped_not_fatal() -> None:
    big = net_event("big", network=Network(dst_ip="1.2.3.4", dst_port=70000, src_port=2**40))
    ok = net_event("ok")
    table = events_table([big, ok])
    assert _col(table, "dst_port") == [65535, 443]
    assert _col(table, "src_port") == [65535, 0]


def test_replayed_events_keep_a_canonical_raw() -> None:
    e = event("r", replayed=True)
    table = events_table([e], [encode(e)])
    raw = orjson.loads(bytes(_col(table, "raw")[0]))
    assert "replayed" not in raw  # the store holds the event as it happened
    assert _col(table, "replayed") == [True]
    assert canonical_raw(e) == encode(msgspec.structs.replace(e, replayed=False))


def test_workload_labels_become_a_map() -> None:
    e = event("l", workload=Workload(namespace="ns", pod="p", labels={"app": "web", "tier": "front"}))
    assert dict(alias_columns([e])["labels"][0]) == {"app": "web", "tier": "front"}


def _incident(revision: int) -> Incident:
    return Incident(
        incident_id="inc-1",
        revision=revision,
        severity=Severity.HIGH,
        title="shell in shop-api",
        summary="someone ran a shell",
        first_seen=1,
        last_seen=2,
        workloads=[
            Workload(cluster="c", namespace="shop", pod="p1", workload_name="api", workload_kind="Deployment")
        ],
        actors=[Actor(kind="user", name="mallory")],
        alerts=[
            AlertRef(
                alert_id="a1", rule_id="R1", rule_name="shell", severity=Severity.HIGH, time=1, message="m"
            )
        ],
        timeline=[TimelineEntry(time=1, event_id="e1", kind="process_exec", text="bash", node_id="x1")],
        edges=[Edge(src="x0", dst="x1", kind="parent_child")],
    )


def test_incident_columns() -> None:
    table = incidents_table([_incident(1), _incident(2)])
    assert table.column_names == INCIDENT_COLUMNS
    assert _col(table, "revision") == [1, 2]
    assert _col(table, "workloads")[0] == ["c/shop/Deployment/api"]
    assert _col(table, "actors")[0] == ["user:mallory"]
    assert _col(table, "node_ids")[0] == ["x1"]
    assert _col(table, "severity_rank") == [Severity.HIGH.rank] * 2


def test_alert_and_profile_columns() -> None:
    alert = Alert(
        alert_id="a1",
        rule_id="R1",
        rule_name="shell",
        severity=Severity.MEDIUM,
        message="m",
        time=5,
        first_seen=5,
        last_seen=6,
        count=3,
        event=event("e1"),
    )
    table = alerts_table([alert])
    assert table.column_names == ALERT_COLUMNS
    assert _col(table, "event_id") == ["e1"]
    assert _col(table, "exec_id") == ["e1"]
    profile = Profile(
        workload_key="c/ns/Deployment/w", execs={"/bin/sh": ["/usr/bin/python3"]}, listen_ports=[80]
    )
    ptable = profiles_table([profile])
    assert ptable.column_names == PROFILE_COLUMNS
    assert dict(_col(ptable, "execs")[0]) == {"/bin/sh": ["/usr/bin/python3"]}


def test_event_record_round_trips_through_raw() -> None:
    e = event("rt")
    table = events_table([e])
    assert msgspec.json.decode(bytes(_col(table, "raw")[0]), type=Event) == e
