"""Columnar batch builders: lists of typed records → pyarrow tables shaped like the ClickHouse tables.

Columns are built one at a time from the whole batch (a C-level ``map(attrgetter)`` per field), never row
by row as dicts: ``pa.Table.from_pylist`` runs at ~125k rows/s, which would make the builder the bottleneck of
the sink. Absent blocks (an exec event has no ``file``) read as an "empty" block whose fields are the column
defaults, so every column is built the same way. Integers that do not fit their ClickHouse type are clamped
(a hostile ``dst_port`` must not fail a batch of 20,000 good events).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

import msgspec
import pyarrow as pa

from schemas.codec import encode
from schemas.records import (
    Alert,
    Audit,
    Dns,
    Event,
    File,
    Incident,
    Network,
    Privilege,
    Process,
    Profile,
    Severity,
    Workload,
)

__all__ = [
    "ALERT_COLUMNS",
    "EVENT_ALIAS_FIELDS",
    "EVENT_COLUMNS",
    "INCIDENT_COLUMNS",
    "PROFILE_COLUMNS",
    "alerts_table",
    "alias_columns",
    "canonical_raw",
    "events_table",
    "incidents_table",
    "profiles_table",
]

_TS = pa.timestamp("ns", tz="UTC")
_STR = pa.string()
_STRS = pa.list_(pa.string())
_BOOL = pa.bool_()

# "Empty" blocks standing in for absent ones; their defaults are what the columns hold for other kinds.
_NO_WORKLOAD = Workload()
_NO_PROCESS = Process()
_NO_FILE = File(path="")
_NO_NETWORK = Network(protocol="", family="", direction="")
_NO_DNS = Dns(query="", qtype="")
_NO_PRIVILEGE = Privilege(op="")
_NO_AUDIT = Audit(audit_id="", stage="")

_INT_RANGES: dict[pa.DataType, tuple[int, int]] = {
    pa.uint8(): (0, 2**8 - 1),
    pa.uint16(): (0, 2**16 - 1),
    pa.uint32(): (0, 2**32 - 1),
    pa.uint64(): (0, 2**64 - 1),
    pa.int32(): (-(2**31), 2**31 - 1),
    pa.int64(): (-(2**63), 2**63 - 1),
}


def _ints(values: list[Any], type_: pa.DataType) -> pa.Array:
    try:
        return pa.array(values, type=type_)
    except (pa.ArrowInvalid, OverflowError):
        lo, hi = _INT_RANGES[type_]
        return pa.array([None if v is None else min(max(int(v), lo), hi) for v in values], type=type_)


def _col(blocks: Sequence[Any], field: str, type_: pa.DataType) -> pa.Array:
    values = list(map(attrgetter(field), blocks))
    if pa.types.is_integer(type_):
        return _ints(values, type_)
    return pa.array(values, type=type_)


# (column, block, field, arrow type) for every stored Event column, in table order.
_EVENT_FIELDS: list[tuple[str, str, str, pa.DataType]] = [
    ("node", "", "node", _STR),
    ("source", "", "source", _STR),
    ("cluster", "workload", "cluster", _STR),
    ("namespace", "workload", "namespace", _STR),
    ("pod", "workload", "pod", _STR),
    ("container", "workload", "container", _STR),
    ("workload_kind", "workload", "workload_kind", _STR),
    ("workload_name", "workload", "workload_name", _STR),
    ("image", "workload", "image", _STR),
    ("service_account", "workload", "service_account", _STR),
    ("pid", "process", "pid", pa.uint32()),
    ("ppid", "process", "ppid", pa.uint32()),
    ("uid", "process", "uid", pa.int64()),
    ("comm", "process", "comm", _STR),
    ("exe", "process", "exe", _STR),
    ("args", "process", "args", _STRS),
    ("cwd", "process", "cwd", _STR),
    ("exec_id", "process", "exec_id", _STR),
    ("parent_exec_id", "process", "parent_exec_id", _STR),
    ("parent_exe", "process", "parent_exe", _STR),
    ("exit_code", "process", "exit_code", pa.int32()),
    ("tty", "process", "tty", _BOOL),
    ("file_path", "file", "path", _STR),
    ("file_flags", "file", "flags", pa.int64()),
    ("file_write", "file", "write", _BOOL),
    ("src_ip", "network", "src_ip", _STR),
    ("src_port", "network", "src_port", pa.uint16()),
    ("dst_ip", "network", "dst_ip", _STR),
    ("dst_port", "network", "dst_port", pa.uint16()),
    ("net_direction", "network", "direction", _STR),
    ("dns_query", "dns", "query", _STR),
    ("dns_answers", "dns", "answers", _STRS),
    ("priv_op", "privilege", "op", _STR),
    ("priv_new_uid", "privilege", "new_uid", pa.int64()),
    ("audit_id", "audit", "audit_id", _STR),
    ("audit_verb", "audit", "verb", _STR),
    ("audit_user", "audit", "user", _STR),
    ("audit_groups", "audit", "groups", _STRS),
    ("audit_resource", "audit", "resource", _STR),
    ("audit_subresource", "audit", "subresource", _STR),
    ("audit_namespace", "audit", "namespace", _STR),
    ("audit_name", "audit", "name", _STR),
    ("audit_source_ips", "audit", "source_ips", _STRS),
    ("audit_user_agent", "audit", "user_agent", _STR),
    ("audit_response_code", "audit", "response_code", pa.int32()),
]

#: the rest of the record: ALIAS columns of the events table, computed from ``raw`` at query time (never
#: inserted); listed here so tests can check the table's expressions against these typed defaults
EVENT_ALIAS_FIELDS: list[tuple[str, str, str, pa.DataType]] = [
    ("schema_version", "", "schema_version", pa.uint16()),
    ("enriched", "", "enriched", _BOOL),
    ("container_id", "workload", "container_id", _STR),
    ("pod_ip", "workload", "pod_ip", _STR),
    ("labels", "workload", "labels", pa.map_(_STR, _STR)),
    ("tid", "process", "tid", pa.uint32()),
    ("euid", "process", "euid", pa.int64()),
    ("gid", "process", "gid", pa.int64()),
    ("egid", "process", "egid", pa.int64()),
    ("start_time", "process", "start_time", pa.uint64()),
    ("stdio_socket", "process", "stdio_socket", _BOOL),
    ("cgroup_id", "process", "cgroup_id", pa.uint64()),
    ("mnt_ns", "process", "mnt_ns", pa.uint64()),
    ("pid_ns", "process", "pid_ns", pa.uint64()),
    ("file_mode", "file", "mode", pa.uint32()),
    ("file_target", "file", "target", _STR),
    ("net_protocol", "network", "protocol", _STR),
    ("net_family", "network", "family", _STR),
    ("dns_qtype", "dns", "qtype", _STR),
    ("dns_server", "dns", "server_ip", _STR),
    ("priv_old_uid", "privilege", "old_uid", pa.int64()),
    ("priv_old_gid", "privilege", "old_gid", pa.int64()),
    ("priv_new_gid", "privilege", "new_gid", pa.int64()),
    ("priv_caps", "privilege", "caps", pa.uint64()),
    ("priv_target_pid", "privilege", "target_pid", pa.uint32()),
    ("priv_flags", "privilege", "flags", pa.int64()),
    ("priv_detail", "privilege", "detail", _STR),
    ("priv_result", "privilege", "result", pa.int64()),
    ("audit_stage", "audit", "stage", _STR),
    ("audit_impersonated_user", "audit", "impersonated_user", _STR),
    ("audit_api_group", "audit", "api_group", _STR),
    ("audit_request_uri", "audit", "request_uri", _STR),
    ("audit_decision", "audit", "decision", _STR),
]

_EMPTY_BLOCKS: dict[str, Any] = {
    "workload": _NO_WORKLOAD,
    "process": _NO_PROCESS,
    "file": _NO_FILE,
    "network": _NO_NETWORK,
    "dns": _NO_DNS,
    "privilege": _NO_PRIVILEGE,
    "audit": _NO_AUDIT,
}

#: the events table's columns this builder fills (``ingested`` takes its default)
EVENT_COLUMNS = [
    "time",
    "event_id",
    "kind",
    "replayed",
    *[c for c, _, _, _ in _EVENT_FIELDS],
    "raw",
]


def canonical_raw(event: Event) -> bytes:
    """The JSON kept in ``raw``: the event as it happened, without the replay transport mark."""
    if event.replayed:
        event = msgspec.structs.replace(event, replayed=False)
    return encode(event)


def alias_columns(events: Sequence[Event]) -> dict[str, list[Any]]:
    """The values the ALIAS columns must show for ``events`` (a test oracle for the table's expressions)."""
    blocks = _blocks(events)
    return {c: _col(blocks[b], f, t).to_pylist() for c, b, f, t in EVENT_ALIAS_FIELDS}


def _blocks(events: Sequence[Event]) -> dict[str, Sequence[Any]]:
    blocks: dict[str, Sequence[Any]] = {"": events}
    for name, empty in _EMPTY_BLOCKS.items():
        values = list(map(attrgetter(name), events))
        if name != "workload":
            values = [empty if v is None else v for v in values]
        blocks[name] = values
    return blocks


def events_table(events: Sequence[Event], raws: Sequence[bytes] | None = None) -> pa.Table:
    """The Arrow table for ``events``; ``raws`` are their original JSON payloads (kept verbatim, so fields a
    newer sensor added survive) or ``None`` to encode them. Replayed events always get a canonical ``raw``."""
    n = len(events)
    columns: dict[str, pa.Array] = {
        "time": pa.array(list(map(attrgetter("time"), events)), type=pa.int64()).cast(_TS),
        "event_id": pa.array(list(map(attrgetter("event_id"), events)), type=_STR),
        "kind": pa.array([str(k) for k in map(attrgetter("kind"), events)], type=_STR),
    }
    replayed = list(map(attrgetter("replayed"), events))
    columns["replayed"] = pa.array(replayed, type=_BOOL)
    blocks = _blocks(events)
    for column, block, field, type_ in _EVENT_FIELDS:
        columns[column] = _col(blocks[block], field, type_)
    if raws is None:
        raw_values = [canonical_raw(e) for e in events]
    else:
        if len(raws) != n:
            raise ValueError(f"{len(raws)} raw payloads for {n} events")
        raw_values = list(raws)
        if any(replayed):
            raw_values = [
                canonical_raw(e) if r else p for e, r, p in zip(events, replayed, raw_values, strict=True)
            ]
    # Arrow's binary → ClickHouse String needs no UTF-8 validation pass in Python.
    columns["raw"] = pa.array(raw_values, type=pa.binary())
    return pa.table(columns)


def _workload_cols(workloads: Sequence[Workload]) -> dict[str, pa.Array]:
    return {
        name: _col(workloads, name, _STR)
        for name in ("cluster", "namespace", "pod", "container", "workload_kind", "workload_name", "image")
    }


def _ts(values: list[int]) -> pa.Array:
    return _ints(values, pa.int64()).cast(_TS)


def _severity_rank(values: Sequence[Any]) -> pa.Array:
    return pa.array([Severity(v).rank for v in values], type=pa.uint8())


def _encoded(records: Sequence[msgspec.Struct], raws: Sequence[bytes] | None) -> pa.Array:
    values = list(raws) if raws is not None else [encode(r) for r in records]
    return pa.array(values, type=pa.binary())


ALERT_COLUMNS = [
    "alert_id",
    "rule_id",
    "rule_name",
    "severity",
    "severity_rank",
    "mitre",
    "message",
    "time",
    "first_seen",
    "last_seen",
    "count",
    "dedup_key",
    "cluster",
    "namespace",
    "pod",
    "container",
    "workload_kind",
    "workload_name",
    "image",
    "actors",
    "event_id",
    "event_kind",
    "exec_id",
    "tags",
    "raw",
]


def alerts_table(alerts: Sequence[Alert], raws: Sequence[bytes] | None = None) -> pa.Table:
    get: Callable[[str], list[Any]] = lambda f: list(map(attrgetter(f), alerts))  # noqa: E731
    events = [a.event for a in alerts]
    columns: dict[str, pa.Array] = {
        "alert_id": pa.array(get("alert_id"), type=_STR),
        "rule_id": pa.array(get("rule_id"), type=_STR),
        "rule_name": pa.array(get("rule_name"), type=_STR),
        "severity": pa.array([str(s) for s in get("severity")], type=_STR),
        "severity_rank": _severity_rank(get("severity")),
        "mitre": pa.array(get("mitre"), type=_STRS),
        "message": pa.array(get("message"), type=_STR),
        "time": _ts(get("time")),
        "first_seen": _ts(get("first_seen")),
        "last_seen": _ts(get("last_seen")),
        "count": _ints(get("count"), pa.uint64()),
        "dedup_key": pa.array(get("dedup_key"), type=_STR),
        **_workload_cols(get("workload")),
        "actors": pa.array([[f"{a.kind}:{a.name}" for a in al.actors] for al in alerts], type=_STRS),
        "event_id": pa.array([e.event_id if e else "" for e in events], type=_STR),
        "event_kind": pa.array([str(e.kind) if e else "" for e in events], type=_STR),
        "exec_id": pa.array([e.process.exec_id if e and e.process else "" for e in events], type=_STR),
        "tags": pa.array(get("tags"), type=_STRS),
        "raw": _encoded(alerts, raws),
    }
    return pa.table(columns)


INCIDENT_COLUMNS = [
    "incident_id",
    "revision",
    "status",
    "severity",
    "severity_rank",
    "title",
    "summary",
    "first_seen",
    "last_seen",
    "updated",
    "workloads",
    "namespaces",
    "pods",
    "actors",
    "mitre",
    "alert_ids",
    "rule_ids",
    "event_ids",
    "node_ids",
    "raw",
]


def incidents_table(incidents: Sequence[Incident], raws: Sequence[bytes] | None = None) -> pa.Table:
    get: Callable[[str], list[Any]] = lambda f: list(map(attrgetter(f), incidents))  # noqa: E731

    def uniq(values: list[str]) -> list[str]:
        return sorted({v for v in values if v})

    columns: dict[str, pa.Array] = {
        "incident_id": pa.array(get("incident_id"), type=_STR),
        "revision": _ints(get("revision"), pa.uint32()),
        "status": pa.array([str(s) for s in get("status")], type=_STR),
        "severity": pa.array([str(s) for s in get("severity")], type=_STR),
        "severity_rank": _severity_rank(get("severity")),
        "title": pa.array(get("title"), type=_STR),
        "summary": pa.array(get("summary"), type=_STR),
        "first_seen": _ts(get("first_seen")),
        "last_seen": _ts(get("last_seen")),
        "updated": _ts(get("updated")),
        "workloads": pa.array([uniq([w.key() for w in i.workloads]) for i in incidents], type=_STRS),
        "namespaces": pa.array([uniq([w.namespace for w in i.workloads]) for i in incidents], type=_STRS),
        "pods": pa.array([uniq([w.pod for w in i.workloads]) for i in incidents], type=_STRS),
        "actors": pa.array([[f"{a.kind}:{a.name}" for a in i.actors] for i in incidents], type=_STRS),
        "mitre": pa.array(get("mitre"), type=_STRS),
        "alert_ids": pa.array([[a.alert_id for a in i.alerts] for i in incidents], type=_STRS),
        "rule_ids": pa.array([uniq([a.rule_id for a in i.alerts]) for i in incidents], type=_STRS),
        "event_ids": pa.array([[t.event_id for t in i.timeline] for i in incidents], type=_STRS),
        "node_ids": pa.array([uniq([t.node_id for t in i.timeline]) for i in incidents], type=_STRS),
        "raw": _encoded(incidents, raws),
    }
    return pa.table(columns)


PROFILE_COLUMNS = [
    "workload_key",
    "container",
    "revision",
    "status",
    "learning_started",
    "learning_until",
    "updated",
    "execs",
    "files",
    "egress",
    "dns",
    "listen_ports",
    "privileges",
    "raw",
]


def profiles_table(profiles: Sequence[Profile], raws: Sequence[bytes] | None = None) -> pa.Table:
    get: Callable[[str], list[Any]] = lambda f: list(map(attrgetter(f), profiles))  # noqa: E731
    columns: dict[str, pa.Array] = {
        "workload_key": pa.array(get("workload_key"), type=_STR),
        "container": pa.array(get("container"), type=_STR),
        "revision": _ints(get("revision"), pa.uint32()),
        "status": pa.array([str(s) for s in get("status")], type=_STR),
        "learning_started": _ts(get("learning_started")),
        "learning_until": _ts(get("learning_until")),
        "updated": _ts(get("updated")),
        "execs": pa.array(get("execs"), type=pa.map_(_STR, _STRS)),
        "files": pa.array(get("files"), type=_STRS),
        "egress": pa.array(get("egress"), type=_STRS),
        "dns": pa.array(get("dns"), type=_STRS),
        "listen_ports": pa.array(
            [[min(max(int(p), 0), 65535) for p in ports] for ports in get("listen_ports")],
            type=pa.list_(pa.uint16()),
        ),
        "privileges": pa.array(get("privileges"), type=_STRS),
        "raw": _encoded(profiles, raws),
    }
    return pa.table(columns)
